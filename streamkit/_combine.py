"""Combine operators: several sources into one flow."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Iterator
from typing import Any, TypeVar, cast, overload

from ._core import (
    _IDENTITY,  # pyright: ignore[reportPrivateUsage] - the identity stage of a plain flow
    Flow,
    Source,
    Stage,
    aclose,
    check_bool,
    check_count,
    close_all,
    generated,
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

    async def run() -> AsyncIterator[T]:
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
            await close_all(
                [s for s in remaining if isinstance(s, Flow | AsyncIterator | Iterator)]
            )

    return generated("concat()", run)


# --------------------------------------------------------------------------- merge


async def _pull(iterator: AsyncIterator[T]) -> T:
    return await anext(iterator)


def merge(*sources: Source[T]) -> Flow[T]:
    """Interleave several sources, yielding items as they arrive.

    Every source is pulled concurrently, with at most one pending item per
    source: a source is pulled again only after its previous item has been
    yielded. The flow ends when every source is exhausted. If a source
    raises, the others are cancelled and closed, and the error propagates.

    Examples:
        >>> import asyncio
        >>> from streamkit import collect, merge
        >>> sorted(asyncio.run(collect(merge([1, 3], [2, 4]))))
        [1, 2, 3, 4]
    """
    _check_sources(sources, "merge")

    def factory() -> AsyncIterator[T]:
        return _merge(sources)

    return generated("merge()", factory)


async def _merge(sources: tuple[Source[T], ...]) -> AsyncIterator[T]:
    iterators = [open_async(source) for source in sources]
    pending: dict[asyncio.Task[T], int] = {}
    reason: Exception | None = None
    try:
        for position, iterator in enumerate(iterators):
            pending[spawn(_pull(iterator))] = position
        while pending:
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            # Among the items ready together, yield in source order, so that a
            # run whose sources are all ready is reproducible.
            for task in sorted(done, key=pending.__getitem__):
                position = pending.pop(task)
                try:
                    item = task.result()
                except StopAsyncIteration:
                    continue
                yield item
                pending[spawn(_pull(iterators[position]))] = position
    except Exception as exc:
        reason = exc
        raise
    finally:
        try:
            # Waits for every pull, even if cancelled again.
            others = await stop_all(list(pending))
        finally:
            await close_all(iterators)
        if reason is not None:
            # Never lost: other sources that failed too. (After the consumer
            # stops, pulls it never asked for are discarded, failed or not.)
            for error in others:
                if not isinstance(error, StopAsyncIteration):
                    reason.add_note(f"streamkit: another merge() source also failed: {error!r}")


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

    def factory() -> AsyncIterator[tuple[Any, ...]]:
        if all(is_sync_source(source) for source in sources):
            return _zip_sync(sources, strict)
        return _zip(sources, strict)

    return generated("zip_()", factory)


async def _zip_sync(sources: tuple[Any, ...], strict: bool) -> AsyncIterator[tuple[Any, ...]]:
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


async def _zip(sources: tuple[Source[Any], ...], strict: bool) -> AsyncIterator[tuple[Any, ...]]:
    iterators = [open_async(source) for source in sources]
    try:
        if not iterators:
            return
        while True:
            row = await _zip_round(iterators)
            ended = [position for position, value in enumerate(row) if value is _ENDED]
            if not ended:
                yield row
                continue
            if strict and len(ended) != len(row):
                raise ValueError(f"zip_(strict=True): source(s) {ended} ended before the others")
            return
    finally:
        await close_all(iterators)


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

    def factory() -> AsyncIterator[R]:
        branches = tee(source, len(stages), max_lag=max_lag)
        return _merge(tuple(branch | each for branch, each in zip(branches, stages, strict=True)))

    return generated("broadcast()", factory)
