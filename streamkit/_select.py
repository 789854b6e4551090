"""Select operators: which items go on."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, TypeVar, overload

from ._barrier import CONTROL
from ._core import (
    Passthrough,
    Stage,
    aclose,
    check_callable,
    check_count,
    describe,
    is_async_callable,
    is_envelope,
    item_error,
    stage_label,
    transform_stage,
)
from ._transform import item_level_stage

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Hashable

    from returns.result import Result

    from ._barrier import RunFunction, Slot
    from ._failures import DeadLetterSink, ErrorRecord, ErrorReport, OnError
    from ._records import Envelope, State

    Handled: TypeAlias = Literal["fail", "skip", "collect", "split"]

T = TypeVar("T")


@overload
def filter_(
    fn: Callable[[T, State], object] | Callable[[T, State], Awaitable[object]],
    /,
    *,
    with_state: Literal[True],
    concurrency: int = 1,
    ordered: bool = True,
    window: int | None = None,
    timeout: float | None = None,
    on_error: Handled = "fail",
    dead_letter: DeadLetterSink | None = None,
    report: ErrorReport | None = None,
    name: str | None = None,
) -> Stage[Envelope[T], Envelope[T]]: ...
@overload
def filter_(
    fn: Callable[[T], object] | Callable[[T], Awaitable[object]],
    /,
    *,
    with_state: Literal[False] = False,
    concurrency: int = 1,
    ordered: bool = True,
    window: int | None = None,
    timeout: float | None = None,
    on_error: Literal["result"],
    report: ErrorReport | None = None,
    name: str | None = None,
) -> Stage[T, Result[T, ErrorRecord[T]]]: ...
@overload
def filter_(
    fn: Callable[[T], object] | Callable[[T], Awaitable[object]],
    /,
    *,
    with_state: Literal[False] = False,
    concurrency: int = 1,
    ordered: bool = True,
    window: int | None = None,
    timeout: float | None = None,
    on_error: Handled = "fail",
    dead_letter: DeadLetterSink | None = None,
    report: ErrorReport | None = None,
    name: str | None = None,
) -> Stage[T, T]: ...
def filter_(
    fn: Callable[..., object],
    /,
    *,
    with_state: bool = False,
    concurrency: int = 1,
    ordered: bool = True,
    window: int | None = None,
    timeout: float | None = None,
    on_error: OnError = "fail",
    dead_letter: DeadLetterSink | None = None,
    report: ErrorReport | None = None,
    name: str | None = None,
) -> Stage[Any, Any]:
    """Keep the items for which ``fn`` returns a truthy value.

    ``fn`` may be sync or async. Consecutive `map_`, `filter_` and `tap`
    stages run fused in a single loop. With ``concurrency=N > 1``, up to
    ``N`` predicate calls run at once, as for `map_` (see
    docs/concurrency.md).

    On a stream of `Envelope` items ``fn`` receives each value (and, with
    ``with_state=True``, its state too: ``fn(value, state)``).

    Args:
        fn: The predicate.
        with_state: Call ``fn(value, state)`` (envelope streams only).
        concurrency: The most calls in flight at once.
        ordered: Keep the input order (with ``concurrency > 1``).
        window: How many finished results may wait for an earlier, slower
            call; ``16 * concurrency`` by default.
        timeout: Seconds one call may take (see `map_`).
        on_error: What a failed call does (see `map_`).
        dead_letter: Where ``on_error="split"`` sends error records.
        report: The `ErrorReport` that counts this stage's failures.
        name: The stage's label in statistics, events, errors and the
            history (see `map_`).

    Examples:
        >>> import asyncio
        >>> from streamkit import collect, filter_
        >>> asyncio.run(collect(range(6) | filter_(lambda x: x % 3 == 0)))
        [0, 3]
        >>> asyncio.run(collect(range(6) | filter_(lambda x: x % 3 == 0, concurrency=4)))
        [0, 3]
    """
    return item_level_stage(
        "filter",
        fn,
        with_state=with_state,
        concurrency=concurrency,
        ordered=ordered,
        window=window,
        timeout=timeout,
        on_error=on_error,
        dead_letter=dead_letter,
        report=report,
        name=name,
    )


def take(n: int, /, *, name: str | None = None) -> Passthrough:
    """Yield the first ``n`` items, then stop and close the upstream.

    The upstream is closed as soon as the ``n``-th item has been pulled, so a
    source's ``finally`` has run before that item reaches the consumer.

    Args:
        n: How many items to take (0 or more).
        name: The stage's label in statistics, events, errors and the
            history (see `map_`).

    Examples:
        >>> import asyncio
        >>> from streamkit import collect, take
        >>> asyncio.run(collect(range(10) | take(3)))
        [0, 1, 2]
    """
    check_count(n, "n", minimum=0)

    def run(upstream: AsyncIterator[Any]) -> AsyncIterator[Any]:
        return _take(upstream, n, None)

    def restorable(slot: Slot) -> RunFunction:
        def checkpointed(upstream: AsyncIterator[Any]) -> AsyncIterator[Any]:
            return _take(upstream, slot.restore(n), slot)

        return checkpointed

    return Passthrough(
        transform_stage(stage_label(name, f"take({n})"), run, restorable=restorable).steps
    )


async def _take(upstream: AsyncIterator[Any], n: int, slot: Slot | None) -> AsyncIterator[Any]:
    # ``n``: the items still to take (the state a checkpoint keeps).
    try:
        if n == 0:
            return
        remaining = n
        async for item in upstream:
            if type(item) is CONTROL:
                if slot is not None and item.kind == "barrier":
                    slot.save(item, remaining)
                yield item
                continue
            remaining -= 1
            if remaining == 0:
                await aclose(upstream)
                yield item
                return
            yield item
    finally:
        await aclose(upstream)


def skip(n: int, /, *, name: str | None = None) -> Passthrough:
    """Drop the first ``n`` items, yield the rest.

    Args:
        n: How many items to drop (0 or more).
        name: The stage's label in statistics, events, errors and the
            history (see `map_`).

    Examples:
        >>> import asyncio
        >>> from streamkit import collect, skip
        >>> asyncio.run(collect(range(5) | skip(3)))
        [3, 4]
    """
    check_count(n, "n", minimum=0)

    def run(upstream: AsyncIterator[Any]) -> AsyncIterator[Any]:
        return _skip(upstream, n, None)

    def restorable(slot: Slot) -> RunFunction:
        def checkpointed(upstream: AsyncIterator[Any]) -> AsyncIterator[Any]:
            return _skip(upstream, slot.restore(n), slot)

        return checkpointed

    return Passthrough(
        transform_stage(stage_label(name, f"skip({n})"), run, restorable=restorable).steps
    )


async def _skip(upstream: AsyncIterator[Any], n: int, slot: Slot | None) -> AsyncIterator[Any]:
    try:
        remaining = n
        async for item in upstream:
            if type(item) is CONTROL:
                if slot is not None and item.kind == "barrier":
                    slot.save(item, remaining)
                yield item
                continue
            if remaining:
                remaining -= 1
                continue
            yield item
    finally:
        await aclose(upstream)


def take_while(
    fn: Callable[[T], object] | Callable[[T], Awaitable[object]], /, *, name: str | None = None
) -> Stage[T, T]:
    """Yield items while ``fn`` holds; stop at the first item where it fails.

    The failing item is not yielded, and the upstream is closed at once. On
    a stream of `Envelope` items ``fn`` receives each value, and the items
    pass on as the same envelopes.

    Args:
        fn: The predicate (sync or async).
        name: The stage's label in statistics, events, errors and the
            history (see `map_`).

    Examples:
        >>> import asyncio
        >>> from streamkit import collect, take_while
        >>> asyncio.run(collect([1, 2, 5, 1] | take_while(lambda x: x < 3)))
        [1, 2]
    """
    return _while_stage("take_while", fn, name, taking=True)


def skip_while(
    fn: Callable[[T], object] | Callable[[T], Awaitable[object]], /, *, name: str | None = None
) -> Stage[T, T]:
    """Drop items while ``fn`` holds; yield everything from the first failure on.

    On a stream of `Envelope` items ``fn`` receives each value, and the items
    pass on as the same envelopes.

    Args:
        fn: The predicate (sync or async); not called again once it fails.
        name: The stage's label in statistics, events, errors and the
            history (see `map_`).

    Examples:
        >>> import asyncio
        >>> from streamkit import collect, skip_while
        >>> asyncio.run(collect([1, 2, 5, 1] | skip_while(lambda x: x < 3)))
        [5, 1]
    """
    return _while_stage("skip_while", fn, name, taking=False)


def _while_stage(
    operator: str, fn: Callable[[Any], Any], name: str | None, *, taking: bool
) -> Stage[Any, Any]:
    check_callable(fn, "fn")
    label = stage_label(name, f"{operator}({describe(fn)})")
    known_async = is_async_callable(fn)

    def run(upstream: AsyncIterator[Any]) -> AsyncIterator[Any]:
        return _while(upstream, fn, known_async, label, taking=taking, slot=None)

    def restorable(slot: Slot) -> RunFunction:
        def checkpointed(upstream: AsyncIterator[Any]) -> AsyncIterator[Any]:
            return _while(upstream, fn, known_async, label, taking=taking, slot=slot)

        return checkpointed

    return transform_stage(label, run, restorable=restorable)


async def _while(
    upstream: AsyncIterator[Any],
    fn: Callable[[Any], Any],
    known_async: bool,
    label: str,
    *,
    taking: bool,
    slot: Slot | None,
) -> AsyncIterator[Any]:
    """`take_while` (``taking``) or `skip_while`: up to the first item where ``fn`` fails.

    The state a checkpoint keeps is whether that item has come (for
    `skip_while`: everything after it passes unchecked).
    """
    awaits: bool | None = True if known_async else None
    enveloped: bool | None = None  # decided by the first item, once per run
    index = -1
    try:
        if slot is not None and slot.restore(False):
            async for item in upstream:  # skip_while past its first failing item
                if type(item) is CONTROL and item.kind == "barrier":
                    slot.save(item, True)
                yield item
            return
        async for item in upstream:
            if type(item) is CONTROL:
                if slot is not None and item.kind == "barrier":
                    slot.save(item, False)
                yield item
                continue
            index += 1
            value = item
            if enveloped is not False:  # never true again after a plain first item
                if enveloped is None:
                    enveloped = bool(is_envelope(item))
                if enveloped:
                    try:
                        value = item.value
                    except AttributeError as exc:
                        raise item_error(exc, item, enveloped, label, index) from exc
            try:
                holds = fn(value)
                if awaits is None:
                    awaits = inspect.isawaitable(holds)
                if awaits:
                    holds = await holds
            except Exception as exc:
                raised = item_error(exc, item, enveloped, label, index)
                if raised is not exc:
                    raise raised from exc
                raise
            if holds:
                if taking:
                    yield item
                continue
            if taking:
                return
            yield item  # the first item skip_while keeps; the rest pass unchecked
            break
        else:
            return
        if slot is None:
            async for item in upstream:
                yield item
        else:
            async for item in upstream:
                if type(item) is CONTROL and item.kind == "barrier":
                    slot.save(item, True)
                yield item
    finally:
        await aclose(upstream)


def distinct(
    *, key: Callable[[Any], Hashable] | None = None, name: str | None = None
) -> Passthrough:
    """Yield each item the first time it (or its ``key``) is seen.

    Memory grows with the number of distinct keys: every key seen is kept
    until the flow ends. On a stream of `Envelope` items the values (or
    ``key(value)``) are compared, not the envelopes, and the first envelope
    of each is yielded.

    Args:
        key: Maps an item to the hashable value compared (sync only); the
            item itself when omitted.
        name: The stage's label in statistics, events, errors and the
            history (see `map_`).

    Examples:
        >>> import asyncio
        >>> from streamkit import collect, distinct
        >>> asyncio.run(collect(["a", "B", "b", "A", "c"] | distinct(key=str.lower)))
        ['a', 'B', 'c']
    """
    if key is not None:
        check_callable(key, "key")
        if is_async_callable(key):
            raise TypeError("key must be a synchronous function")
    label = stage_label(name, "distinct()" if key is None else f"distinct(key={describe(key)})")

    def run(upstream: AsyncIterator[Any]) -> AsyncIterator[Any]:
        return _distinct(upstream, key, label, set(), None)

    def restorable(slot: Slot) -> RunFunction:
        def checkpointed(upstream: AsyncIterator[Any]) -> AsyncIterator[Any]:
            return _distinct(upstream, key, label, set(slot.restore([])), slot)

        return checkpointed

    return Passthrough(transform_stage(label, run, restorable=restorable).steps)


async def _distinct(
    upstream: AsyncIterator[Any],
    key: Callable[[Any], Hashable] | None,
    label: str,
    seen: set[Hashable],
    slot: Slot | None,
) -> AsyncIterator[Any]:
    # A checkpoint keeps every key seen, as a list (see "Limits" in docs/persistence.md).
    add = seen.add
    enveloped: bool | None = None  # decided by the first item, once per run
    index = -1
    try:
        async for item in upstream:
            if type(item) is CONTROL:
                if slot is not None and item.kind == "barrier":
                    slot.save(item, list(seen))
                yield item
                continue
            index += 1
            value = item
            if enveloped is not False:  # never true again after a plain first item
                if enveloped is None:
                    enveloped = bool(is_envelope(item))
                if enveloped:
                    try:
                        value = item.value
                    except AttributeError as exc:
                        raise item_error(exc, item, enveloped, label, index) from exc
            try:
                marker = value if key is None else key(value)
                if marker in seen:
                    continue
                add(marker)
            except Exception as exc:
                raised = item_error(exc, item, enveloped, label, index)
                if raised is not exc:
                    raise raised from exc
                raise
            yield item
    finally:
        await aclose(upstream)
