"""Transform operators: one item in, some items out."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, TypeVar, cast, overload

from ._barrier import CONTROL
from ._core import (
    COOPERATE_EVERY,
    ConcurrentOp,
    FlattenStage,
    IndexedStage,
    Stage,
    aclose,
    check_bool,
    check_callable,
    check_concurrency,
    check_int,
    cooperate,
    describe,
    is_async_callable,
    is_async_iterable,
    is_envelope,
    is_iterable,
    item_error,
    item_stage,
    open_async,
    stage_label,
    transform_stage,
)
from ._initial import Factory, initial_maker
from ._records import Envelope

if TYPE_CHECKING:
    from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable

    from returns.result import Result

    from ._barrier import RunFunction, Slot
    from ._failures import DeadLetterSink, ErrorRecord, ErrorReport, OnError
    from ._records import State

    Handled: TypeAlias = Literal["fail", "skip", "collect", "split"]

T = TypeVar("T")
R = TypeVar("R")
A = TypeVar("A")


def item_level_stage(
    kind: Literal["map", "filter"],
    fn: Callable[..., Any],
    *,
    with_state: bool,
    concurrency: int,
    ordered: bool,
    window: int | None,
    timeout: float | None,
    on_error: OnError,
    dead_letter: DeadLetterSink | None,
    report: ErrorReport | None,
    name: str | None,
) -> Stage[Any, Any]:
    """Build `map_` or `filter_`: fused when sequential, tasks when concurrent.

    Validates every option (errors name the parameter), then applies the
    failure options.
    """
    check_callable(fn, "fn")
    check_bool(with_state, "with_state")
    operator = f"{kind}_"
    if check_concurrency(concurrency, ordered, window):
        label = stage_label(name, f"{operator}({describe(fn)})")
        built = item_stage(kind, fn, label, with_state=with_state)
    else:
        from ._concurrency import concurrent_stage  # only concurrent stages need it

        label = stage_label(name, f"{operator}({describe(fn)}, concurrency={concurrency})")
        built = concurrent_stage(
            kind,
            fn,
            label,
            concurrency=concurrency,
            ordered=ordered,
            window=window,
            with_state=with_state,
        )
    return with_failure_options(
        built,
        label,
        timeout=timeout,
        on_error=on_error,
        dead_letter=dead_letter,
        report=report,
        named=name is not None,
    )


def with_failure_options(
    stage: Stage[Any, Any],
    label: str,
    *,
    timeout: float | None,
    on_error: OnError,
    dead_letter: DeadLetterSink | None,
    report: ErrorReport | None,
    named: bool = False,
) -> Stage[Any, Any]:
    """Apply the per-item failure options shared by every item-level operator.

    With the defaults the stage is returned untouched: no wrapper, no cost.
    Otherwise its per-item function is guarded (see docs/errors.md): a
    per-call ``timeout``, and what ``on_error`` does with a call that failed.
    """
    if timeout is None and on_error == "fail" and dead_letter is None and report is None:
        return stage
    # Failure handling builds on the operators; only a stage that asks for
    # it loads it.
    from ._failures import guard_stage, make_guard

    if on_error != "fail" and not named:
        # `map_(parse)` becomes `map_(parse, on_error='skip')`; a given name stays.
        label = f"{label[:-1]}, on_error={on_error!r})"
    guard = make_guard(
        label,
        timeout=timeout,
        on_error=on_error,
        dead_letter=dead_letter,
        report=report,
    )
    return guard_stage(stage, guard)


@overload
def map_(
    fn: Callable[[T, State], Awaitable[Envelope[R]]],
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
) -> Stage[Envelope[T], Envelope[R]]: ...
@overload
def map_(
    fn: Callable[[T, State], Envelope[R]],
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
) -> Stage[Envelope[T], Envelope[R]]: ...
@overload
def map_(
    fn: Callable[[T, State], Awaitable[R]],
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
) -> Stage[Envelope[T], Envelope[R]]: ...
@overload
def map_(
    fn: Callable[[T, State], R],
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
) -> Stage[Envelope[T], Envelope[R]]: ...
@overload
def map_(
    fn: Callable[[T], Awaitable[R]],
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
) -> Stage[T, Result[R, ErrorRecord[T]]]: ...
@overload
def map_(
    fn: Callable[[T], R],
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
) -> Stage[T, Result[R, ErrorRecord[T]]]: ...
@overload
def map_(
    fn: Callable[[T], Awaitable[R]],
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
) -> Stage[T, R]: ...
@overload
def map_(
    fn: Callable[[T], R],
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
) -> Stage[T, R]: ...
def map_(
    fn: Callable[..., Any],
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
    """Apply ``fn`` to every item.

    ``fn`` may be sync or async (a coroutine function, an object with an
    async ``__call__``, or any function returning an awaitable); async
    results are awaited. Consecutive `map_`, `filter_` and `tap` stages run
    fused in a single loop.

    With ``concurrency=N > 1``, up to ``N`` calls run at once as tasks (see
    docs/concurrency.md): results come in input order, or in completion
    order with ``ordered=False``, and at most ``N + window`` items are held.

    On a stream of `Envelope` items ``fn`` receives each value and its
    result is re-wrapped with that item's state; with ``with_state=True`` it
    is called as ``fn(value, state)`` and may return a plain value (the state
    is kept) or an `Envelope` (the state is replaced).

    Args:
        fn: The function applied to each item.
        with_state: Call ``fn(value, state)`` (envelope streams only).
        concurrency: The most calls in flight at once.
        ordered: Keep the input order (with ``concurrency > 1``).
        window: How many finished results may wait for an earlier, slower
            call before no new call starts; ``16 * concurrency`` by default.
        timeout: Seconds one call may take before it is cancelled and fails
            with `TimeoutError`.
        on_error: What a failed call does: ``"fail"`` (raise), ``"skip"``,
            ``"collect"`` (into ``report``), ``"split"`` (to
            ``dead_letter``) or ``"result"`` (yield `returns` results); see
            docs/errors.md.
        dead_letter: Where ``on_error="split"`` sends error records.
        report: The `ErrorReport` that counts (and, for ``"collect"``,
            keeps) this stage's failures.
        name: The stage's label in statistics, events, errors and the
            history (``map_(fn)`` by default).

    Examples:
        >>> import asyncio
        >>> from streamkit import collect, map_
        >>> asyncio.run(collect(["1", "22"] | map_(len)))
        [1, 2]
        >>> async def double(x: int) -> int:
        ...     await asyncio.sleep(0)
        ...     return 2 * x
        >>> asyncio.run(collect(range(5) | map_(double, concurrency=3)))
        [0, 2, 4, 6, 8]
    """
    return item_level_stage(
        "map",
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


@overload
def tap(
    fn: Callable[[T, State], object],
    /,
    *,
    with_state: Literal[True],
    timeout: float | None = None,
    on_error: Handled = "fail",
    dead_letter: DeadLetterSink | None = None,
    report: ErrorReport | None = None,
    name: str | None = None,
) -> Stage[Envelope[T], Envelope[T]]: ...
@overload
def tap(
    fn: Callable[[T], object],
    /,
    *,
    with_state: Literal[False] = False,
    timeout: float | None = None,
    on_error: Literal["result"],
    report: ErrorReport | None = None,
    name: str | None = None,
) -> Stage[T, Result[T, ErrorRecord[T]]]: ...
@overload
def tap(
    fn: Callable[[T], object],
    /,
    *,
    with_state: Literal[False] = False,
    timeout: float | None = None,
    on_error: Handled = "fail",
    dead_letter: DeadLetterSink | None = None,
    report: ErrorReport | None = None,
    name: str | None = None,
) -> Stage[T, T]: ...
def tap(
    fn: Callable[..., object],
    /,
    *,
    with_state: bool = False,
    timeout: float | None = None,
    on_error: OnError = "fail",
    dead_letter: DeadLetterSink | None = None,
    report: ErrorReport | None = None,
    name: str | None = None,
) -> Stage[Any, Any]:
    """Call ``fn`` on every item for its side effect; pass the item on.

    Args:
        fn: Called with each item (sync or async); its result is ignored.
        with_state: Call ``fn(value, state)`` (envelope streams only).
        timeout: Seconds one call may take (see `map_`).
        on_error: What a failed call does (see `map_`).
        dead_letter: Where ``on_error="split"`` sends error records.
        report: The `ErrorReport` that counts this stage's failures.
        name: The stage's label in statistics, events, errors and the
            history (see `map_`).

    Examples:
        >>> import asyncio
        >>> from streamkit import collect, tap
        >>> seen = []
        >>> asyncio.run(collect([1, 2] | tap(seen.append)))
        [1, 2]
        >>> seen
        [1, 2]
    """
    check_callable(fn, "fn")
    check_bool(with_state, "with_state")
    label = stage_label(name, f"tap({describe(fn)})")
    return with_failure_options(
        item_stage("tap", fn, label, with_state=with_state),
        label,
        timeout=timeout,
        on_error=on_error,
        dead_letter=dead_letter,
        report=report,
        named=name is not None,
    )


@overload
def flat_map(
    fn: Callable[[T], Awaitable[Iterable[R]]],
    /,
    *,
    concurrency: int = 1,
    ordered: bool = True,
    window: int | None = None,
    timeout: float | None = None,
    on_error: Handled = "fail",
    dead_letter: DeadLetterSink | None = None,
    report: ErrorReport | None = None,
    name: str | None = None,
) -> Stage[T, R]: ...
@overload
def flat_map(
    fn: Callable[[T], AsyncIterable[R]],
    /,
    *,
    concurrency: int = 1,
    ordered: bool = True,
    window: int | None = None,
    timeout: float | None = None,
    on_error: Handled = "fail",
    dead_letter: DeadLetterSink | None = None,
    report: ErrorReport | None = None,
    name: str | None = None,
) -> Stage[T, R]: ...
@overload
def flat_map(
    fn: Callable[[T], Iterable[R]],
    /,
    *,
    concurrency: int = 1,
    ordered: bool = True,
    window: int | None = None,
    timeout: float | None = None,
    on_error: Handled = "fail",
    dead_letter: DeadLetterSink | None = None,
    report: ErrorReport | None = None,
    name: str | None = None,
) -> Stage[T, R]: ...
def flat_map(
    fn: Callable[[Any], Any],
    /,
    *,
    concurrency: int = 1,
    ordered: bool = True,
    window: int | None = None,
    timeout: float | None = None,
    on_error: OnError = "fail",
    dead_letter: DeadLetterSink | None = None,
    report: ErrorReport | None = None,
    name: str | None = None,
) -> Stage[Any, Any]:
    """Apply ``fn`` to every item and yield the elements of each result.

    ``fn`` may return an iterable, an async iterable, or an awaitable of an
    iterable. An inner async iterator is closed if the flow stops part way.

    With ``concurrency=N > 1``, up to ``N`` calls (inner streams) run at
    once, and their elements stream out as they arrive (see
    docs/concurrency.md): with ``ordered=True`` every element of item ``i``
    before any of item ``i + 1``, the later inner streams running ahead into
    bounded buffers meanwhile; with ``ordered=False`` in arrival order.

    On a stream of `Envelope` items ``fn`` receives each value, and every
    element comes out as ``Envelope(element, state)`` with its item's state.

    Args:
        fn: Maps one item to an iterable of output items.
        concurrency: The most calls in flight at once.
        ordered: Keep the input order (with ``concurrency > 1``).
        window: How many elements may wait: those of the inner stream at the
            head, and those of all the others (ordered), or of all of them
            (unordered); ``16 * concurrency`` by default.
        timeout: Seconds one call may take (see `map_`).
        on_error: What a failed call does (see `map_`); a retried or failed
            call never yields part of its elements.
        dead_letter: Where ``on_error="split"`` sends error records.
        report: The `ErrorReport` that counts this stage's failures.
        name: The stage's label in statistics, events, errors and the
            history (see `map_`).

    Examples:
        >>> import asyncio
        >>> from streamkit import collect, flat_map
        >>> asyncio.run(collect([1, 3] | flat_map(range)))
        [0, 0, 1, 2]
        >>> asyncio.run(collect([1, 3] | flat_map(range, concurrency=2)))
        [0, 0, 1, 2]
    """
    check_callable(fn, "fn")
    sequential = check_concurrency(concurrency, ordered, window)
    if not sequential:
        from ._concurrency import concurrent_stage

        label = stage_label(name, f"flat_map({describe(fn)}, concurrency={concurrency})")
        built = concurrent_stage(
            "flat_map", fn, label, concurrency=concurrency, ordered=ordered, window=window
        )
    else:
        label = stage_label(name, f"flat_map({describe(fn)})")
        known_async = is_async_callable(fn)
        op = ConcurrentOp("flat_map", fn, label, known_async, 1, True, 1)

        def run(upstream: AsyncIterator[Any]) -> AsyncIterator[Any]:
            return _flat_map(upstream, fn, known_async, label)

        built = transform_stage(label, run, op, barriers=True)
    return with_failure_options(
        built,
        label,
        timeout=timeout,
        on_error=on_error,
        dead_letter=dead_letter,
        report=report,
        named=name is not None,
    )


async def _flat_map(
    upstream: AsyncIterator[Any], fn: Callable[[Any], Any] | None, known_async: bool, label: str
) -> AsyncIterator[Any]:
    # ``fn=None`` is `flatten()`: the items themselves are the iterables.
    awaits: bool | None = True if known_async else None
    enveloped: bool | None = None  # decided by the first item, once per run
    index = -1
    try:
        async for item in upstream:
            if type(item) is CONTROL:
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
                if fn is None:
                    result = value
                    if not is_iterable(result):
                        raise TypeError(
                            f"flatten() needs iterable items, got {type(result).__name__}: "
                            f"{result!r}"
                        )
                else:
                    result = fn(value)
                    if awaits is None:
                        # Some async iterables are awaitable too (aiostream's
                        # streams): iterate those, never await them.
                        awaits = inspect.isawaitable(result) and not hasattr(
                            type(result), "__aiter__"
                        )
                    if awaits:
                        result = await result
                    if not is_iterable(result):
                        raise TypeError(
                            f"{label} must return an iterable or an async iterable, "
                            f"got {type(result).__name__}"
                        )
            except Exception as exc:
                raised = item_error(exc, item, enveloped, label, index)
                if raised is not exc:
                    raise raised from exc
                raise
            # Inlined rather than delegated to a helper generator, so that an
            # early stop closes the inner iterator at once.
            if is_async_iterable(result):
                inner = open_async(result)
                try:
                    if enveloped:
                        state = item.state
                        async for element in inner:
                            yield Envelope(element, state)
                    else:
                        async for element in inner:
                            yield element
                finally:
                    await aclose(inner)
            elif enveloped:
                state = item.state
                for count, element in enumerate(cast("Iterable[Any]", result), 1):
                    yield Envelope(element, state)
                    if not count % COOPERATE_EVERY:
                        await cooperate()
            else:
                for count, element in enumerate(cast("Iterable[Any]", result), 1):
                    yield element
                    if not count % COOPERATE_EVERY:
                        await cooperate()
            if not (index + 1) % COOPERATE_EVERY:  # (an upstream of empty iterables)
                await cooperate()
    finally:
        await aclose(upstream)


def flatten(*, name: str | None = None) -> FlattenStage:
    """Yield the elements of every item; items are iterables or async iterables.

    On a stream of `Envelope` items each value is the iterable, and every
    element comes out as ``Envelope(element, state)`` with its item's state.

    Args:
        name: The stage's label in statistics, events, errors and the
            history (see `map_`).

    Examples:
        >>> import asyncio
        >>> from streamkit import collect, flatten
        >>> asyncio.run(collect([[1, 2], [], [3]] | flatten()))
        [1, 2, 3]
    """
    if name is None:
        return FlattenStage(_flatten_steps)
    label = stage_label(name, "flatten()")

    def run(upstream: AsyncIterator[Any]) -> AsyncIterator[Any]:
        return _flat_map(upstream, None, False, label)

    return FlattenStage(transform_stage(label, run, barriers=True).steps)


def _run_flatten(upstream: AsyncIterator[Any]) -> AsyncIterator[Any]:
    return _flat_map(upstream, None, False, "flatten()")


_flatten_steps = transform_stage("flatten()", _run_flatten, barriers=True).steps


@overload
def scan(
    fn: Callable[[A, T], Awaitable[A]], initial: A | Factory[A], /, *, name: str | None = None
) -> Stage[T, A]: ...
@overload
def scan(
    fn: Callable[[A, T], A], initial: A | Factory[A], /, *, name: str | None = None
) -> Stage[T, A]: ...
def scan(
    fn: Callable[[Any, Any], Any], initial: Any, /, *, name: str | None = None
) -> Stage[Any, Any]:
    """Yield the running accumulation ``acc = fn(acc, item)`` after each item.

    The initial value itself is not yielded; the accumulator type may differ
    from the item type. On a stream of `Envelope` items ``fn`` receives each
    value, and each accumulator comes out as ``Envelope(acc, state)`` with the
    state of the item that produced it.

    Args:
        fn: Combines the accumulator with the next item (sync or async).
        initial: The accumulator before the first item: an immutable value, or
            a `Factory` that makes a new one for each run (``Factory(list)``);
            a mutable value such as ``[]`` raises `ValueError`.
        name: The stage's label in statistics, events, errors and the
            history (see `map_`).

    Examples:
        >>> import asyncio
        >>> from streamkit import collect, scan
        >>> asyncio.run(collect([1, 2, 3] | scan(lambda total, x: total + x, 0)))
        [1, 3, 6]
    """
    check_callable(fn, "fn")
    label = stage_label(name, f"scan({describe(fn)})")
    known_async = is_async_callable(fn)
    make = initial_maker(initial, label)

    def run(upstream: AsyncIterator[Any]) -> AsyncIterator[Any]:
        return _scan(upstream, fn, make(), known_async, label, None)

    def restorable(slot: Slot) -> RunFunction:
        def checkpointed(upstream: AsyncIterator[Any]) -> AsyncIterator[Any]:
            return _scan(upstream, fn, slot.restore(make()), known_async, label, slot)

        return checkpointed

    return transform_stage(label, run, restorable=restorable)


async def _scan(
    upstream: AsyncIterator[Any],
    fn: Callable[[Any, Any], Any],
    accumulator: Any,
    known_async: bool,
    label: str,
    slot: Slot | None,
) -> AsyncIterator[Any]:
    awaits: bool | None = True if known_async else None
    enveloped: bool | None = None  # decided by the first item, once per run
    index = -1
    try:
        async for item in upstream:
            if type(item) is CONTROL:
                if slot is not None and item.kind == "barrier":
                    slot.save(item, accumulator)
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
                result = fn(accumulator, value)
                if awaits is None:
                    awaits = inspect.isawaitable(result)
                if awaits:
                    result = await result
            except Exception as exc:
                raised = item_error(exc, item, enveloped, label, index)
                if raised is not exc:
                    raise raised from exc
                raise
            accumulator = result
            yield Envelope(accumulator, item.state) if enveloped else accumulator
    finally:
        await aclose(upstream)


def enumerate_(start: int = 0, *, name: str | None = None) -> IndexedStage:
    """Pair every item with its index: ``(start, a), (start + 1, b), ...``.

    On a stream of `Envelope` items the pairs hold the values and keep each
    item's state: ``Envelope((i, value), state)``.

    Args:
        start: The first index.
        name: The stage's label in statistics, events, errors and the
            history (see `map_`).

    Examples:
        >>> import asyncio
        >>> from streamkit import collect, enumerate_
        >>> asyncio.run(collect("ab" | enumerate_(1)))
        [(1, 'a'), (2, 'b')]
    """
    check_int(start, "start")

    def run(upstream: AsyncIterator[Any]) -> AsyncIterator[Any]:
        return _enumerate(upstream, start)

    def restorable(slot: Slot) -> RunFunction:
        def checkpointed(upstream: AsyncIterator[Any]) -> AsyncIterator[Any]:
            return _enumerate_checkpointed(upstream, slot.restore(start), slot)

        return checkpointed

    label = stage_label(name, f"enumerate_({start})")
    return IndexedStage(transform_stage(label, run, restorable=restorable).steps)


async def _enumerate(upstream: AsyncIterator[Any], start: int) -> AsyncIterator[Any]:
    index = start
    try:
        try:
            first = await anext(upstream)
        except StopAsyncIteration:
            return
        # The first item decides the stream's kind; each kind has its own loop.
        if is_envelope(first):
            yield Envelope((index, first.value), first.state)
            index += 1
            async for item in upstream:
                yield Envelope((index, item.value), item.state)
                index += 1
        else:
            yield index, first
            index += 1
            async for item in upstream:
                yield index, item
                index += 1
    finally:
        await aclose(upstream)


async def _enumerate_checkpointed(
    upstream: AsyncIterator[Any], index: int, slot: Slot
) -> AsyncIterator[Any]:
    # The index is the state: the next index a resumed run gives.
    try:
        async for item in upstream:
            if type(item) is CONTROL:
                if item.kind == "barrier":
                    slot.save(item, index)
                yield item
            elif is_envelope(item):
                yield Envelope((index, item.value), item.state)
                index += 1
            else:
                yield index, item
                index += 1
    finally:
        await aclose(upstream)
