"""Aggregate operators (groups of items) and terminal helpers (one result)."""

from __future__ import annotations

import inspect
from collections import deque
from typing import TYPE_CHECKING, Any, Final, TypeVar, cast, overload

from ._barrier import CONTROL
from ._core import (
    ListStage,
    PairStage,
    Segment,
    Source,
    Transform,
    TupleStage,
    aclose,
    annotate,
    check_callable,
    check_count,
    check_seconds,
    describe,
    is_async_callable,
    is_envelope,
    is_flow,
    is_sync_source,
    open_async,
    run_segment_to_list,
    stage_label,
    transform_stage,
)
from ._records import Envelope

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Sequence

    from ._barrier import RunFunction, Slot
    from ._records import State

T = TypeVar("T")
A = TypeVar("A")
D = TypeVar("D")


class _NoDefault:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<no default>"


_NO_DEFAULT: Final = _NoDefault()


# --------------------------------------------------------------------------- grouping


def merged_state(group: Iterable[Envelope[Any]]) -> State:
    """The states of a non-empty group of envelopes, merged left to right.

    Later items win on conflicting keys. A state shared by consecutive items
    is merged once, so a group that shares one state object (the common
    case: `envelop`'s initial state) gets that very object back, unmerged.
    """
    envelopes = iter(group)
    merged = previous = next(envelopes).state
    for envelope in envelopes:
        state = envelope.state
        if state is not previous:
            # Merging the state just merged again would change nothing.
            merged = merged.set_many(state)
            previous = state
    return merged


def enveloped_list(batch: Sequence[Envelope[Any]]) -> Envelope[list[Any]]:
    """One envelope for a group: the list of values, with the merged state."""
    return Envelope([envelope.value for envelope in batch], merged_state(batch))


def chunk(size: int, /, *, within: float | None = None, name: str | None = None) -> ListStage:
    """Group items into lists of up to ``size`` items.

    Without ``within``, every list has ``size`` items except possibly the
    last. With ``within=seconds``, a partial list is also emitted once its
    oldest item has waited that long (count-or-time batching); this reads the
    current clock, so it runs exactly under `streamkit.testing.VirtualClock`.

    On a stream of `Envelope` items each group comes out as one envelope:
    the list of values, with the items' states merged (later items win on a
    conflicting key).

    Args:
        size: The largest number of items in a list (1 or more).
        within: The longest an item may wait in a partial list, in seconds.
        name: The stage's label in statistics, events, errors and the
            history (see `map_`).

    Examples:
        >>> import asyncio
        >>> from streamkit import chunk, collect
        >>> asyncio.run(collect(range(5) | chunk(2)))
        [[0, 1], [2, 3], [4]]
    """
    check_count(size, "size", minimum=1)
    if within is None:

        def run(upstream: AsyncIterator[Any]) -> AsyncIterator[Any]:
            return _chunk(upstream, size, [], None)

        def restorable(slot: Slot) -> RunFunction:
            def checkpointed(upstream: AsyncIterator[Any]) -> AsyncIterator[Any]:
                return _chunk(upstream, size, slot.restore([]), slot)

            return checkpointed

        return ListStage(
            transform_stage(stage_label(name, f"chunk({size})"), run, restorable=restorable).steps
        )

    seconds = check_seconds(within, "within")

    def run_within(upstream: AsyncIterator[Any]) -> AsyncIterator[Any]:
        from ._time import chunk_within

        return chunk_within(upstream, size, seconds, None)

    def restorable_within(slot: Slot) -> RunFunction:
        def checkpointed(upstream: AsyncIterator[Any]) -> AsyncIterator[Any]:
            from ._time import chunk_within

            return chunk_within(upstream, size, seconds, slot)

        return checkpointed

    return ListStage(
        transform_stage(
            stage_label(name, f"chunk({size}, within={seconds:g})"),
            run_within,
            restorable=restorable_within,
        ).steps
    )


async def _chunk(
    upstream: AsyncIterator[Any], size: int, batch: list[Any], slot: Slot | None
) -> AsyncIterator[Any]:
    # ``batch``: the partial batch (the state a checkpoint keeps, items and all).
    # Decided by the first item (the first of the first batch), once per run;
    # checked once per batch, never per item.
    enveloped: bool | None = None
    try:
        async for item in upstream:
            if type(item) is CONTROL:
                if slot is not None and item.kind == "barrier":
                    slot.save(item, batch)
                yield item
                continue
            batch.append(item)
            if len(batch) == size:
                if enveloped is None:
                    enveloped = is_envelope(batch[0])
                yield enveloped_list(batch) if enveloped else batch
                batch = []
        if batch:
            if enveloped is None:
                enveloped = is_envelope(batch[0])
            yield enveloped_list(batch) if enveloped else batch
    finally:
        await aclose(upstream)


def window(size: int, /, *, step: int = 1, name: str | None = None) -> TupleStage:
    """Yield sliding windows: tuples of ``size`` consecutive items.

    A window starts every ``step`` items. Only full windows are yielded: a
    stream shorter than ``size`` yields none. On a stream of `Envelope` items
    each window comes out as one envelope: the tuple of values, with the
    items' states merged (later items win on a conflicting key).

    Args:
        size: Items per window (1 or more).
        step: Items between the starts of two windows (1 or more).
        name: The stage's label in statistics, events, errors and the
            history (see `map_`).

    Examples:
        >>> import asyncio
        >>> from streamkit import collect, window
        >>> asyncio.run(collect(range(5) | window(3)))
        [(0, 1, 2), (1, 2, 3), (2, 3, 4)]
        >>> asyncio.run(collect(range(7) | window(2, step=3)))
        [(0, 1), (3, 4)]
    """
    check_count(size, "size", minimum=1)
    check_count(step, "step", minimum=1)

    def run(upstream: AsyncIterator[Any]) -> AsyncIterator[Any]:
        return _window(upstream, size, step, None)

    def restorable(slot: Slot) -> RunFunction:
        def checkpointed(upstream: AsyncIterator[Any]) -> AsyncIterator[Any]:
            return _window(upstream, size, step, slot)

        return checkpointed

    return TupleStage(
        transform_stage(
            stage_label(name, f"window({size}, step={step})"), run, restorable=restorable
        ).steps
    )


async def _window(
    upstream: AsyncIterator[Any], size: int, step: int, slot: Slot | None
) -> AsyncIterator[Any]:
    buffer: deque[Any] = deque(maxlen=size)
    to_skip = 0
    if slot is not None:
        # The state a checkpoint keeps: the items of the next window so far,
        # and how many to skip before it starts.
        restored: tuple[list[Any], int] = slot.restore(([], 0))
        kept, to_skip = restored
        buffer.extend(kept)
    # Decided by the first item (the first of the first window), once per
    # run; checked once per window, never per item.
    enveloped: bool | None = None
    try:
        async for item in upstream:
            if type(item) is CONTROL:
                if slot is not None and item.kind == "barrier":
                    slot.save(item, (list(buffer), to_skip))
                yield item
                continue
            if to_skip:
                to_skip -= 1
                continue
            buffer.append(item)
            if len(buffer) == size:
                if enveloped is None:
                    enveloped = is_envelope(buffer[0])
                if enveloped:
                    yield Envelope(
                        tuple([envelope.value for envelope in buffer]), merged_state(buffer)
                    )
                else:
                    yield tuple(buffer)
                if step >= size:
                    buffer.clear()
                    to_skip = step - size
                else:
                    for _ in range(step):
                        buffer.popleft()
    finally:
        await aclose(upstream)


def pairwise(*, name: str | None = None) -> PairStage:
    """Yield each item paired with the next: ``(a, b), (b, c), ...``.

    On a stream of `Envelope` items each pair comes out as one envelope: the
    pair of values, with the two states merged (the later item wins on a
    conflicting key).

    Args:
        name: The stage's label in statistics, events, errors and the
            history (see `map_`).

    Examples:
        >>> import asyncio
        >>> from streamkit import collect, pairwise
        >>> asyncio.run(collect("abc" | pairwise()))
        [('a', 'b'), ('b', 'c')]
    """
    if name is None:
        return PairStage(_pairwise_steps)
    label = stage_label(name, "pairwise()")
    return PairStage(transform_stage(label, _run_pairwise, restorable=_restorable_pairwise).steps)


def _run_pairwise(upstream: AsyncIterator[Any]) -> AsyncIterator[Any]:
    return _pairwise(upstream)


def _restorable_pairwise(slot: Slot) -> RunFunction:
    def checkpointed(upstream: AsyncIterator[Any]) -> AsyncIterator[Any]:
        return _pairwise_checkpointed(upstream, slot)

    return checkpointed


async def _pairwise_checkpointed(upstream: AsyncIterator[Any], slot: Slot) -> AsyncIterator[Any]:
    # The state a checkpoint keeps: the previous item, in a list (empty before the first).
    previous: list[Any] = slot.restore([])
    try:
        async for item in upstream:
            if type(item) is CONTROL:
                if item.kind == "barrier":
                    slot.save(item, previous)
                yield item
                continue
            if previous:
                before = previous[0]
                if is_envelope(item):
                    state = item.state
                    merged = before.state if state is before.state else before.state.set_many(state)
                    yield Envelope((before.value, item.value), merged)
                else:
                    yield before, item
            previous = [item]
    finally:
        await aclose(upstream)


async def _pairwise(upstream: AsyncIterator[Any]) -> AsyncIterator[Any]:
    try:
        try:
            previous = await anext(upstream)
        except StopAsyncIteration:
            return
        # The first item decides the stream's kind; each kind has its own loop.
        if is_envelope(previous):
            before = previous.state
            async for item in upstream:
                state = item.state
                yield Envelope(
                    (previous.value, item.value),
                    before if state is before else before.set_many(state),
                )
                previous = item
                before = state
        else:
            async for item in upstream:
                yield previous, item
                previous = item
    finally:
        await aclose(upstream)


_pairwise_steps = transform_stage(
    "pairwise()", _run_pairwise, restorable=_restorable_pairwise
).steps


# --------------------------------------------------------------------------- terminals


def _sync_plan(source: object) -> tuple[Iterable[Any], Segment | None] | None:
    """The parts of a flow that can run as a plain loop, if it is one.

    A flow qualifies when it was never iterated, its source is a plain
    iterable and its stage is empty or a single fused segment.
    """
    if not is_flow(source):
        return None
    flow = source
    inner = flow.source
    parts = flow.stage._plan  # pyright: ignore[reportPrivateUsage]
    if not is_sync_source(inner) or len(parts) > 1:
        return None
    segment = parts[0] if parts else None
    if isinstance(segment, Transform) or not flow._claim():  # pyright: ignore[reportPrivateUsage]
        return None
    return cast("Iterable[Any]", inner), segment


async def collect(source: Source[T], /) -> list[T]:
    """Run the flow to the end and return its items in a list.

    A flow that is synchronous from end to end (a plain iterable through
    synchronous `map_`/`filter_`/`tap` stages) runs as a plain loop.

    Args:
        source: A flow, or any iterable or async iterable.

    Examples:
        >>> import asyncio
        >>> from streamkit import collect, map_
        >>> asyncio.run(collect(range(3) | map_(str)))
        ['0', '1', '2']
    """
    fast = _sync_plan(source)
    if fast is not None:
        items, segment = fast
        if segment is None:
            return list(items)
        in_memory = type(items) in (list, tuple, range)
        return await run_segment_to_list(segment.ops, iter(items), in_memory=in_memory)
    iterator = open_async(source)
    try:
        return [item async for item in iterator]
    finally:
        await aclose(iterator)


@overload
def fold(
    source: Source[T], fn: Callable[[A, T], Awaitable[A]], initial: A, /
) -> Coroutine[Any, Any, A]: ...
@overload
def fold(source: Source[T], fn: Callable[[A, T], A], initial: A, /) -> Coroutine[Any, Any, A]: ...
def fold(
    source: Source[Any], fn: Callable[[Any, Any], Any], initial: Any, /
) -> Coroutine[Any, Any, Any]:
    """Combine all items into one value: ``acc = fn(acc, item)``, from ``initial``.

    A bad ``fn`` raises `TypeError` at once, before anything is awaited.

    Args:
        source: A flow, or any iterable or async iterable.
        fn: Combines the accumulator with the next item (sync or async).
        initial: The accumulator before the first item; returned for an
            empty stream.

    Returns:
        A coroutine that runs the flow to the end and returns the result.

    Examples:
        >>> import asyncio
        >>> from streamkit import fold
        >>> asyncio.run(fold(["a", "bb", "ccc"], lambda total, s: total + len(s), 0))
        6
    """
    check_callable(fn, "fn")
    return _fold(source, fn, initial)


async def _fold(source: Source[Any], fn: Callable[[Any, Any], Any], initial: Any) -> Any:
    label = f"fold({describe(fn)})"
    awaits: bool | None = True if is_async_callable(fn) else None
    accumulator = initial
    index = -1
    iterator = open_async(source)
    try:
        async for item in iterator:
            index += 1
            try:
                result = fn(accumulator, item)
                if awaits is None:
                    awaits = inspect.isawaitable(result)
                if awaits:
                    result = await result
            except Exception as exc:
                annotate(exc, label, index)
                raise
            accumulator = result
    finally:
        await aclose(iterator)
    return accumulator


@overload
async def first(source: Source[T], /) -> T: ...
@overload
async def first(source: Source[T], /, *, default: D) -> T | D: ...
async def first(source: Source[Any], /, *, default: Any = _NO_DEFAULT) -> Any:
    """Return the first item and close the flow at once.

    Args:
        source: A flow, or any iterable or async iterable.
        default: Returned for an empty stream; without it an empty stream
            raises `ValueError`.

    Examples:
        >>> import asyncio
        >>> from streamkit import first
        >>> asyncio.run(first(range(5, 10)))
        5
        >>> asyncio.run(first([], default=None)) is None
        True
    """
    iterator = open_async(source)
    try:
        async for item in iterator:
            return item
    finally:
        await aclose(iterator)
    if default is _NO_DEFAULT:
        raise ValueError("first() of an empty stream; pass default= to allow it")
    return default


@overload
async def last(source: Source[T], /) -> T: ...
@overload
async def last(source: Source[T], /, *, default: D) -> T | D: ...
async def last(source: Source[Any], /, *, default: Any = _NO_DEFAULT) -> Any:
    """Run the flow to the end and return its last item.

    Args:
        source: A flow, or any iterable or async iterable.
        default: Returned for an empty stream; without it an empty stream
            raises `ValueError`.

    Examples:
        >>> import asyncio
        >>> from streamkit import last
        >>> asyncio.run(last(range(5)))
        4
    """
    missing = result = object()
    iterator = open_async(source)
    try:
        async for item in iterator:
            result = item
    finally:
        await aclose(iterator)
    if result is missing:
        if default is _NO_DEFAULT:
            raise ValueError("last() of an empty stream; pass default= to allow it")
        return default
    return result


async def count(source: Source[Any], /) -> int:
    """Run the flow to the end and return how many items it yielded.

    Examples:
        >>> import asyncio
        >>> from streamkit import count, filter_
        >>> asyncio.run(count(range(10) | filter_(lambda x: x % 2)))
        5
    """
    total = 0
    iterator = open_async(source)
    try:
        async for _ in iterator:
            total += 1
    finally:
        await aclose(iterator)
    return total


async def drain(source: Source[Any], /) -> None:
    """Run the flow to the end for its side effects, discarding the items.

    Examples:
        >>> import asyncio
        >>> from streamkit import drain, tap
        >>> seen = []
        >>> asyncio.run(drain(range(3) | tap(seen.append)))
        >>> seen
        [0, 1, 2]
    """
    iterator = open_async(source)
    try:
        async for _ in iterator:
            pass
    finally:
        await aclose(iterator)
