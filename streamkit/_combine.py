"""Combine operators: several sources into one flow."""

from __future__ import annotations

import asyncio
import operator
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar, cast, overload

from ._barrier import CONTROL
from ._core import (
    _IDENTITY,  # pyright: ignore[reportPrivateUsage] - the identity stage of a plain flow
    Flow,
    Source,
    Stage,
    aclose,
    check_bool,
    check_count,
    close_all,
    cooperate,
    is_stage,
    is_sync_source,
    open_async,
)
from ._runtime import (
    Cancelled,
    cancel_and_wait,
    signal_maker,
    spawn,
    stop_all,
    wait_for_signal,
)

if TYPE_CHECKING:
    from ._barrier import Slot

T = TypeVar("T")
R = TypeVar("R")
T1 = TypeVar("T1")
T2 = TypeVar("T2")
T3 = TypeVar("T3")
T4 = TypeVar("T4")


def _check_sources(sources: tuple[object, ...], name: str) -> None:
    for position, source in enumerate(sources):
        if not hasattr(source, "__aiter__") and not hasattr(source, "__iter__"):
            raise TypeError(
                f"{name}() takes iterables or async iterables; argument {position} is "
                f"{type(source).__name__}"
            )


# --------------------------------------------------------------------------- combined sources


class Combined(Generic[T]):
    """The source of a flow made of other sources (`concat`, `merge`, `zip_`, `broadcast`).

    Iterating it combines its sources. A checkpointed run looks inside:
    it prepares every source (resumable sources send barriers, stages get
    their slots) and calls ``combine`` with the prepared ones and a slot
    for the combinator's own state.
    """

    __slots__ = ("combine", "label", "sources", "stages")

    def __init__(
        self,
        label: str,
        sources: tuple[Source[Any], ...],
        combine: Callable[[Sequence[Source[Any]], Slot | None], AsyncIterator[T]],
        stages: tuple[Stage[Any, Any], ...] = (),
    ) -> None:
        self.label = label
        self.sources = sources
        self.combine = combine
        self.stages = stages
        """The stages applied to the sources inside (`broadcast`), for a checkpointed run."""

    def __aiter__(self) -> AsyncIterator[T]:
        return self.combine(self.sources, None)


def _combined(
    label: str,
    sources: tuple[Source[Any], ...],
    combine: Callable[[Sequence[Source[Any]], Slot | None], AsyncIterator[T]],
    stages: tuple[Stage[Any, Any], ...] = (),
) -> Flow[T]:
    return Flow(Combined(label, sources, combine, stages), _IDENTITY)


# --------------------------------------------------------------------------- concat


def concat(*sources: Source[T]) -> Flow[T]:
    """Yield every item of the first source, then of the second, and so on.

    Each source is opened only when the previous one is exhausted. If the
    flow stops early, the sources not yet reached are closed too when they
    are iterators or flows (plain iterables have nothing to close).

    Examples:
        >>> import asyncio
        >>> from streamkit import collect, concat
        >>> asyncio.run(collect(concat([1, 2], range(3, 5))))
        [1, 2, 3, 4]
    """
    _check_sources(sources, "concat")
    return _combined("concat()", sources, _concat)


async def _concat(sources: Sequence[Source[Any]], slot: Slot | None) -> AsyncIterator[Any]:
    # Stateless: in a checkpointed run every source keeps its own position.
    remaining = list(sources)
    try:
        while remaining:
            iterator = open_async(remaining.pop(0))
            try:
                async for item in iterator:
                    yield item
            finally:
                await aclose(iterator)
    finally:
        await close_all([s for s in remaining if isinstance(s, Flow | AsyncIterator | Iterator)])


# --------------------------------------------------------------------------- merge


async def _pull(iterator: AsyncIterator[T]) -> T:
    return await anext(iterator)


def merge(*sources: Source[T]) -> Flow[T]:
    """Interleave several sources, yielding items as they arrive.

    Every source is pulled concurrently, with at most one pending item per
    source: a source is pulled again only after its previous item has been
    yielded. The flow ends when every source is exhausted. If a source
    raises, the others are cancelled and closed, and the error propagates.

    In a checkpointed run a barrier goes on once it has come from every
    source still open; what a source yields after its barrier waits until
    then (see docs/persistence.md).

    Examples:
        >>> import asyncio
        >>> from streamkit import collect, merge
        >>> sorted(asyncio.run(collect(merge([1, 3], [2, 4]))))
        [1, 2, 3, 4]
    """
    _check_sources(sources, "merge")
    return _combined("merge()", sources, _merge_sources)


def _merge_sources(sources: Sequence[Source[Any]], slot: Slot | None) -> AsyncIterator[Any]:
    return merge_flows(sources)


class _Failed:
    """What a merge source's pull raised, handed to the merge by its producer."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


_SOURCE_ENDED: Any = object()


async def merge_flows(sources: Sequence[Source[Any]]) -> AsyncIterator[Any]:
    """`merge` over given sources, aligning checkpoint barriers.

    Each source has a producer task, which pulls one item whenever the merge
    asks for it and hands it over in ``arrived`` (waking the merge); there is
    no task per item. Each source also has a queue of what it yielded and the
    merge has not passed on yet: at most one item, pulled again once it is
    passed on, while the merge is not aligning a barrier. A source whose
    barrier has come is *blocked*: its barrier waits for the others', and
    what it yields after it keeps being pulled (so that no upstream waits on
    the merge) and waits in its queue. Once every open source has given the
    barrier, the barrier goes on, then the sources' queues.
    """
    loop = asyncio.get_running_loop()
    iterators = [open_async(source) for source in sources]
    count = len(iterators)
    queues: list[deque[Any]] = [deque() for _ in range(count)]
    ended = [False] * count
    blocked = [False] * count
    busy = [False] * count
    arrived: deque[tuple[int, Any]] = deque()
    gates: list[asyncio.Future[None] | None] = [None] * count
    wake: list[asyncio.Future[None] | None] = [None]
    aligning: Any = None
    reason: Exception | None = None
    woken = False  # a producer was woken (or started) since the merge last waited

    def hand_over(position: int, outcome: Any) -> None:
        arrived.append((position, outcome))
        waiter = wake[0]
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def produce(position: int) -> None:
        iterator = iterators[position]
        while True:
            try:
                item = await anext(iterator)
            except StopAsyncIteration:
                hand_over(position, _SOURCE_ENDED)
                return
            except Exception as exc:
                hand_over(position, _Failed(exc))
                return
            gate = gates[position] = loop.create_future()
            hand_over(position, item)
            await gate

    producers: list[asyncio.Task[None]] = []

    def pull(position: int) -> None:
        nonlocal woken
        woken = True
        busy[position] = True
        if len(producers) == position:  # its first pull starts it (in source order)
            producers.append(spawn(produce(position)))
            return
        gate = gates[position]
        assert gate is not None
        gates[position] = None
        gate.set_result(None)

    try:
        for position in range(count):
            pull(position)
        while True:
            moved = True
            while moved:
                moved = False
                for position in range(count):
                    queue = queues[position]
                    while queue and not blocked[position]:
                        item = queue.popleft()
                        moved = True
                        if type(item) is CONTROL and item.kind == "barrier":
                            aligning = item
                            blocked[position] = True
                            if not busy[position] and not ended[position]:
                                pull(position)
                            break
                        yield item
                        if not queue and not busy[position] and not ended[position]:
                            pull(position)
                if aligning is not None and all(
                    blocked[p] or (ended[p] and not queues[p]) for p in range(count)
                ):
                    barrier, aligning = aligning, None
                    blocked = [False] * count
                    yield barrier
                    for position in range(count):
                        if not queues[position] and not busy[position] and not ended[position]:
                            pull(position)
                    moved = True
            if not any(busy):
                return
            if not arrived and woken:
                # The producers just woken are ahead in the event loop's queue:
                # one bare yield lets them run first, so a source that has its
                # next item at hand hands it over in the same loop turn, with
                # no wake-up future and no second turn.
                woken = False
                await cooperate()
            if not arrived:
                woken = False
                waiter = wake[0] = loop.create_future()
                try:
                    await waiter
                finally:
                    wake[0] = None
            # Among the items ready together, yield in source order, so that a
            # run whose sources are all ready is reproducible.
            ready = sorted(arrived, key=_POSITION) if len(arrived) > 1 else list(arrived)
            arrived.clear()
            for index, (position, outcome) in enumerate(ready):
                busy[position] = False
                if outcome is _SOURCE_ENDED:
                    ended[position] = True
                    continue
                if type(outcome) is _Failed:
                    arrived.extend(ready[index + 1 :])  # (their failures are noted)
                    raise outcome.error
                queues[position].append(outcome)
                if blocked[position]:
                    pull(position)
    except Exception as exc:
        reason = exc
        raise
    finally:
        try:
            # Waits for every pull, even if cancelled again.
            others = await stop_all(producers)
        finally:
            await close_all(iterators)
        if reason is not None:
            # Never lost: other sources that failed too. (After the consumer
            # stops, pulls it never asked for are discarded, failed or not.)
            others += [o.error for _, o in arrived if type(o) is _Failed]
            for error in others:
                if not isinstance(error, StopAsyncIteration):
                    reason.add_note(f"streamkit: another merge() source also failed: {error!r}")


_POSITION: Final = operator.itemgetter(0)
"""The source position of an arrival (a ``(position, outcome)`` pair)."""


# --------------------------------------------------------------------------- zip


@overload
def zip_(s1: Source[T1], /, *, strict: bool = False) -> Flow[tuple[T1]]: ...
@overload
def zip_(s1: Source[T1], s2: Source[T2], /, *, strict: bool = False) -> Flow[tuple[T1, T2]]: ...
@overload
def zip_(
    s1: Source[T1], s2: Source[T2], s3: Source[T3], /, *, strict: bool = False
) -> Flow[tuple[T1, T2, T3]]: ...
@overload
def zip_(
    s1: Source[T1], s2: Source[T2], s3: Source[T3], s4: Source[T4], /, *, strict: bool = False
) -> Flow[tuple[T1, T2, T3, T4]]: ...
@overload
def zip_(*sources: Source[Any], strict: bool = False) -> Flow[tuple[Any, ...]]: ...
def zip_(*sources: Source[Any], strict: bool = False) -> Flow[tuple[Any, ...]]:
    """Yield tuples of the next item of every source; stop at the shortest.

    Async sources are pulled concurrently for each tuple, so one slow source
    does not delay the pulls of the others. When the shortest source ends,
    the items already pulled from the others in that round are discarded and
    every source is closed. With ``strict=True`` sources of different lengths
    raise `ValueError` instead.

    In a checkpointed run a barrier goes on once it has come from every
    source; a checkpoint keeps the items pulled before it and not yet zipped.

    Args:
        *sources: The sources to zip.
        strict: Require every source to have the same length.

    Examples:
        >>> import asyncio
        >>> from streamkit import collect, zip_
        >>> asyncio.run(collect(zip_("ab", range(5))))
        [('a', 0), ('b', 1)]
    """
    _check_sources(sources, "zip_")
    check_bool(strict, "strict")

    def combine(given: Sequence[Source[Any]], slot: Slot | None) -> AsyncIterator[Any]:
        if slot is None and all(is_sync_source(source) for source in given):
            return _zip_sync(given, strict)
        return zip_flows(given, strict=strict, slot=slot)

    return _combined("zip_()", sources, combine)


async def _zip_sync(sources: Sequence[Any], strict: bool) -> AsyncIterator[tuple[Any, ...]]:
    iterators = [iter(source) for source in sources]
    try:
        for row in zip(*iterators, strict=strict):
            yield row
    finally:
        for iterator in iterators:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()


class _Ended:
    __slots__ = ()


_ENDED = _Ended()


async def _pull_or_end(iterator: AsyncIterator[Any]) -> Any:
    try:
        return await anext(iterator)
    except StopAsyncIteration:
        return _ENDED


async def _zip_round(iterators: list[AsyncIterator[Any]]) -> tuple[Any, ...]:
    """Pull one item from every iterator concurrently.

    The first failure (in source order) propagates with its own type; the
    pulls still pending are cancelled, and any other failure is attached to
    it as a note rather than lost.
    """
    if len(iterators) == 1:
        return (await _pull_or_end(iterators[0]),)
    tasks = [spawn(_pull_or_end(iterator)) for iterator in iterators]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        await stop_all(tasks)
    failures = [
        error for task in tasks if not task.cancelled() and (error := task.exception()) is not None
    ]
    if failures:
        for other in failures[1:]:
            failures[0].add_note(f"streamkit: another zip_ source also failed: {other!r}")
        raise failures[0]
    return tuple(task.result() for task in tasks)


async def zip_flows(
    sources: Sequence[Source[Any]], *, strict: bool, slot: Slot | None
) -> AsyncIterator[Any]:
    """`zip_` over given sources, aligning checkpoint barriers.

    Each source has a queue of items pulled and not yet zipped; a tuple goes
    out whenever every queue has one. When a barrier comes from one source,
    the others are pulled until theirs comes too (their items queue up, and
    can still be zipped with what the first had queued before its barrier);
    the barrier then goes on and saves the items still queued, which a
    resumed run zips first.
    """
    iterators = [open_async(source) for source in sources]
    count = len(iterators)
    queues: list[deque[Any]] = [deque() for _ in range(count)]
    if slot is not None:
        restored: list[list[Any]] = slot.restore([[] for _ in range(count)])
        for queue, kept in zip(queues, restored, strict=True):
            queue.extend(kept)
    ended = [False] * count
    reached = [False] * count
    aligning: Any = None
    try:
        if not count:
            return
        while True:
            while all(queues):
                yield tuple(queue.popleft() for queue in queues)
            if aligning is None:
                if any(ended[p] and not queues[p] for p in range(count)):
                    if strict:
                        await _check_all_ended(iterators, queues, ended)
                    return
                wanted = [p for p in range(count) if not queues[p]]
            elif all(reached[p] or ended[p] for p in range(count)):
                barrier, aligning = aligning, None
                reached = [False] * count
                if slot is not None:
                    slot.save(barrier, [list(queue) for queue in queues])
                yield barrier
                continue
            else:
                wanted = [p for p in range(count) if not reached[p] and not ended[p]]
            row = await _zip_round([iterators[p] for p in wanted])
            for position, value in zip(wanted, row, strict=True):
                if value is _ENDED:
                    ended[position] = True
                elif type(value) is CONTROL:
                    if value.kind == "barrier":
                        aligning = value
                        reached[position] = True
                    else:
                        yield value
                else:
                    queues[position].append(value)
    finally:
        await close_all(iterators)


async def _check_all_ended(
    iterators: list[AsyncIterator[Any]], queues: list[deque[Any]], ended: list[bool]
) -> None:
    """``strict=True``: a source has ended; every other must end too, with nothing queued."""
    while True:
        early = [p for p in range(len(iterators)) if ended[p] and not queues[p]]
        if any(queues) or all(ended):
            if any(queues):
                raise ValueError(f"zip_(strict=True): source(s) {early} ended before the others")
            return
        wanted = [p for p in range(len(iterators)) if not ended[p]]
        row = await _zip_round([iterators[p] for p in wanted])
        for position, value in zip(wanted, row, strict=True):
            if value is _ENDED:
                ended[position] = True
            elif type(value) is not CONTROL:
                queues[position].append(value)


# --------------------------------------------------------------------------- tee, broadcast


class _Tee:
    """The state shared by the branches of one `tee`.

    ``buffer`` holds the items some branch has not yet taken, ``base`` is
    the index of ``buffer[0]`` and ``positions[i]`` the index of the next
    item branch ``i`` takes (None once it is closed). The source is pulled
    in a task, one item at a time, by whichever branch needs the next item
    first; a branch waits while it is ``max_lag`` items ahead of the
    slowest open branch, so the buffer never holds more than ``max_lag``.
    """

    __slots__ = (
        "base",
        "buffer",
        "changed",
        "end",
        "iterator",
        "max_lag",
        "positions",
        "pull",
        "source",
    )

    def __init__(self, source: Source[Any], n: int, max_lag: int) -> None:
        self.iterator: AsyncIterator[Any] | None = None
        self.source = source
        self.max_lag = max_lag
        self.buffer: deque[Any] = deque()
        self.base = 0
        self.positions: list[int | None] = [0] * n
        self.end: BaseException | None = None
        self.pull: asyncio.Task[Any] | None = None
        self.changed: asyncio.Future[None] | None = None

    def _notify(self) -> None:
        changed, self.changed = self.changed, None
        if changed is not None and not changed.done():
            changed.set_result(None)

    def _trim(self) -> None:
        open_positions = [p for p in self.positions if p is not None]
        low = min(open_positions) if open_positions else self.base + len(self.buffer)
        while self.base < low and self.buffer:
            self.buffer.popleft()
            self.base += 1

    def _pulled(self, task: asyncio.Task[Any]) -> None:
        self.pull = None
        if task.cancelled():
            self.end = Cancelled("the tee's source pull was cancelled")
        elif (error := task.exception()) is not None:
            self.end = error
        else:
            self.buffer.append(task.result())
        self._notify()

    async def next(self, branch: int) -> Any:
        while True:
            position = self.positions[branch]
            if position is None:
                raise StopAsyncIteration
            offset = position - self.base
            if offset < len(self.buffer):
                item = self.buffer[offset]
                self.positions[branch] = position + 1
                if offset == 0:
                    self._trim()
                    self._notify()
                return item
            if self.end is not None:
                raise self.end
            open_positions = [p for p in self.positions if p is not None]
            if self.pull is None and position - min(open_positions) < self.max_lag:
                if self.iterator is None:
                    self.iterator = open_async(self.source)
                self.pull = spawn(_pull(self.iterator))
                self.pull.add_done_callback(self._pulled)
            if self.changed is None:
                self.changed = signal_maker()()
            # Wait without cancelling the shared future if this branch is cancelled.
            await wait_for_signal(self.changed)

    async def release(self, branch: int) -> None:
        if self.positions[branch] is None:
            return
        self.positions[branch] = None
        self._trim()
        self._notify()
        if any(p is not None for p in self.positions):
            return
        try:
            if self.pull is not None:
                pull, self.pull = self.pull, None
                pull.remove_done_callback(self._pulled)
                await cancel_and_wait(pull)
        finally:
            if self.iterator is not None:
                await aclose(self.iterator)
            elif isinstance(self.source, Flow | AsyncIterator):
                await aclose(self.source)


class _Branch(AsyncIterator[T]):
    __slots__ = ("index", "shared")

    def __init__(self, shared: _Tee, index: int) -> None:
        self.shared = shared
        self.index = index

    def __aiter__(self) -> _Branch[T]:
        return self

    async def __anext__(self) -> T:
        return cast("T", await self.shared.next(self.index))

    async def aclose(self) -> None:
        await self.shared.release(self.index)


def tee(source: Source[T], n: int = 2, /, *, max_lag: int = 64) -> tuple[Flow[T], ...]:
    """Split one source into ``n`` flows that each yield every item.

    The source is opened when the first branch asks for an item and pulled
    once per item, whichever branch asks first. A branch more than
    ``max_lag`` items ahead of the slowest open branch waits for it, so at
    most ``max_lag`` items are buffered: consume the branches concurrently
    (in tasks, or through `merge`/`zip_`), or a branch read to its end
    before the others are started will wait forever once it is ``max_lag``
    ahead. A branch that is closed (or never iterated, then closed) stops
    holding the others back; closing the last one closes the source. An
    error from the source reaches every branch that asks for the next item.

    Args:
        source: The source to split.
        n: How many flows (1 or more).
        max_lag: How far the fastest branch may run ahead of the slowest.

    Examples:
        >>> import asyncio
        >>> from streamkit import collect, tee, zip_
        >>> evens, odds = tee(range(6))
        >>> asyncio.run(collect(zip_(evens, odds)))
        [(0, 0), (1, 1), (2, 2), (3, 3), (4, 4), (5, 5)]
    """
    _check_sources((source,), "tee")
    check_count(n, "n", minimum=1)
    check_count(max_lag, "max_lag", minimum=1)
    shared = _Tee(source, n, max_lag)
    return tuple(Flow(_Branch[T](shared, index), _IDENTITY) for index in range(n))


def broadcast(source: Source[T], /, *stages: Stage[T, R], max_lag: int = 64) -> Flow[R]:
    """Run every stage over all the items of ``source``; merge their outputs.

    Each stage gets its own `tee` branch; the outputs are interleaved as
    they come, like `merge`. A stage more than ``max_lag`` items behind the
    fastest pauses the source rather than letting a buffer grow. If one
    stage fails, the others are cancelled and closed and the error
    propagates; a stage that ends early (``take``) no longer holds the
    others back.

    Args:
        source: The items every stage receives.
        *stages: The stages (one or more).
        max_lag: How far the fastest stage may run ahead of the slowest.

    Examples:
        >>> import asyncio
        >>> from streamkit import broadcast, collect, map_
        >>> flow = broadcast([1, 2], map_(lambda x: x * 10), map_(lambda x: -x))
        >>> sorted(asyncio.run(collect(flow)))
        [-2, -1, 10, 20]
    """
    _check_sources((source,), "broadcast")
    if not stages:
        raise TypeError("broadcast() needs at least one stage")
    for position, each in enumerate(stages):
        if not is_stage(each):
            raise TypeError(
                f"broadcast() takes stages; argument {position + 1} is {type(each).__name__}"
            )
    check_count(max_lag, "max_lag", minimum=1)

    def combine(given: Sequence[Source[Any]], slot: Slot | None) -> AsyncIterator[Any]:
        branches = tee(given[0], len(stages), max_lag=max_lag)
        if slot is None:
            each_stage = list(stages)
        else:  # a checkpointed run: every stage's steps get slots of their own
            each_stage = [slot.bind(each, str(n)) for n, each in enumerate(stages)]
        return merge_flows(
            [branch | each for branch, each in zip(branches, each_stage, strict=True)]
        )

    return _combined("broadcast()", (source,), combine, tuple(stages))
