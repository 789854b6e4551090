"""Tools for testing stages: tracked sources, cleanup assertions, virtual time.

Use them to test your own stages the way streamkit tests its operators::

    source = TrackedSource(range(10))
    assert await collect(source | take(3)) == [0, 1, 2]
    source.assert_closed()
    assert source.pulls == 3

    await check_stage(lambda: my_stage(3))      # break, errors, cancellation

    with virtual_clock() as clock:              # exact time, in milliseconds
        ...
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import weakref
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Callable,
    Coroutine,
    Generator,
    Iterable,
    Sequence,
)
from typing import Any, Generic, TypeVar

from ._core import Stage, aclose
from ._runtime import current_clock, use_clock

T = TypeVar("T")

__all__ = [
    "SourceError",
    "StageCheckError",
    "TrackedSource",
    "VirtualClock",
    "assert_no_pending_tasks",
    "check_flow",
    "check_stage",
    "current_clock",
    "use_clock",
    "virtual_clock",
]


class SourceError(Exception):
    """The error a `TrackedSource` raises when told to fail."""


class TrackedSource(AsyncIterator[T], Generic[T]):
    """An async source that records how it is used.

    It yields ``items`` one by one, counting pulls, and records whether it was
    closed (by `aclose`, as every streamkit operator does when it stops) and
    whether it ran to exhaustion. It can fail on purpose: ``fail_at=k`` raises
    ``error`` (a `SourceError` by default) instead of yielding item ``k``.

    Args:
        items: The items to yield.
        fail_at: The index at which to raise instead of yielding.
        error: The exception to raise at ``fail_at``.
        delay: Seconds to sleep before each item, on the current clock (so
            virtual under `virtual_clock`).

    Examples:
        >>> import asyncio
        >>> from streamkit import collect, take
        >>> source = TrackedSource(range(100))
        >>> asyncio.run(collect(source | take(2)))
        [0, 1]
        >>> source.pulls, source.closed, source.exhausted
        (2, True, False)
    """

    def __init__(
        self,
        items: Iterable[T],
        *,
        fail_at: int | None = None,
        error: BaseException | None = None,
        delay: float = 0.0,
    ) -> None:
        self._items = list(items)
        self._fail_at = fail_at
        self.error = error if error is not None else SourceError(f"source failed at {fail_at}")
        """What the source raises at ``fail_at``."""
        self._delay = delay
        self._position = 0
        self.pulls = 0
        """How many times the next item was requested."""
        self.yielded = 0
        """How many items were handed out."""
        self.closed = False
        """Whether `aclose` was called."""
        self.exhausted = False
        """Whether the items ran out (StopAsyncIteration was raised)."""

    def __aiter__(self) -> TrackedSource[T]:
        return self

    async def __anext__(self) -> T:
        if self.closed:
            raise StopAsyncIteration
        self.pulls += 1
        if self._delay:
            await current_clock().sleep(self._delay)
        if self._fail_at is not None and self._position == self._fail_at:
            self._position += 1
            raise self.error
        if self._position >= len(self._items):
            self.exhausted = True
            raise StopAsyncIteration
        item = self._items[self._position]
        self._position += 1
        self.yielded += 1
        return item

    async def aclose(self) -> None:
        """Record the close; later pulls end the iteration."""
        self.closed = True

    @property
    def finished(self) -> bool:
        """Closed or exhausted: nothing more will be pulled."""
        return self.closed or self.exhausted

    def assert_closed(self) -> None:
        """Fail unless the source was closed or ran to its end."""
        assert self.finished, f"source was left open after {self.pulls} pulls"

    def __repr__(self) -> str:
        return (
            f"TrackedSource(pulls={self.pulls}, yielded={self.yielded}, "
            f"closed={self.closed}, exhausted={self.exhausted})"
        )


def assert_no_pending_tasks() -> None:
    """Fail if any task other than the current one is still pending.

    Call it at the end of a test, after a flow has stopped, to prove that
    every task a stage started was awaited. The driver task of a
    `VirtualClock` is not counted.

    Examples:
        >>> import asyncio
        >>> from streamkit import first, map_
        >>> async def main() -> int:
        ...     async def slow_double(x: int) -> int:
        ...         await asyncio.sleep(0)
        ...         return 2 * x
        ...     result = await first(range(100) | map_(slow_double, concurrency=8))
        ...     assert_no_pending_tasks()  # the 7 other calls were cancelled and awaited
        ...     return result
        >>> asyncio.run(main())
        0
    """
    current = asyncio.current_task()
    leftover = [
        task
        for task in asyncio.all_tasks()
        if task is not current and not task.done() and task not in _CLOCK_DRIVERS
    ]
    assert not leftover, f"pending tasks left behind: {leftover}"


# --------------------------------------------------------------------------- virtual time

_CLOCK_DRIVERS: weakref.WeakSet[asyncio.Task[None]] = weakref.WeakSet()
"""The virtual clocks' driver tasks (ignored by `assert_no_pending_tasks`)."""


class VirtualClock:
    """A `streamkit.Clock` whose time moves only when everything waits on it.

    ``sleep(s)`` registers a timer at ``now() + s``. While timers are
    pending, a small driver task lets the event loop run until nothing is
    ready to run (every task is waiting), then jumps the time to the earliest
    timer and wakes its sleepers ("autojump", like trio's
    ``MockClock(autojump_threshold=0)``). Time tests are therefore exact and
    take milliseconds. Install it with ``with virtual_clock():`` or
    ``with use_clock(VirtualClock()):``; operators read the current clock
    when they start.

    Limits: only sleeps on this clock are virtual. Code waiting on real I/O,
    a thread, a subprocess or the loop's own timers (``asyncio.sleep(1)``,
    ``asyncio.wait_for``) does not hold the virtual time back: the clock may
    jump while such a wait is pending. A task that polls in a loop of
    ``asyncio.sleep(0)`` keeps the loop busy: time then moves only once
    every 100,000 loop passes.

    Args:
        start: The time `now` returns before any jump.

    Examples:
        >>> import asyncio
        >>> async def main() -> float:
        ...     clock = VirtualClock()
        ...     await asyncio.gather(clock.sleep(5), clock.sleep(3600))
        ...     return clock.now()
        >>> asyncio.run(main())
        3600.0
    """

    __slots__ = ("__weakref__", "_now", "_order", "_timers")

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)
        self._timers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def __repr__(self) -> str:
        return f"VirtualClock(now={self._now:g}, timers={len(self._timers)})"

    def now(self) -> float:
        """The virtual time in seconds."""
        return self._now

    def sleep(self, seconds: float) -> Coroutine[Any, Any, None]:
        """Wait until the virtual time has advanced by ``seconds``."""
        return self._sleep(seconds)

    async def _sleep(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        timer: asyncio.Future[None] = loop.create_future()
        heapq.heappush(self._timers, (self._now + seconds, next(self._order), timer))
        _Driver.of(loop).clocks.add(self)
        await timer

    def advance(self, seconds: float) -> None:
        """Move the time forward by ``seconds`` now, waking the timers due."""
        if seconds < 0:
            raise ValueError(f"seconds must be >= 0, got {seconds}")
        self._now += seconds
        self._fire()

    def _fire(self) -> None:
        timers = self._timers
        while timers and timers[0][0] <= self._now:
            _, _, timer = heapq.heappop(timers)
            if not timer.done():
                timer.set_result(None)

    def has_sleepers(self) -> bool:
        """Whether any task is sleeping on this clock (cancelled sleeps excluded)."""
        timers = self._timers
        while timers and timers[0][2].done():
            heapq.heappop(timers)
        return bool(timers)

    def jump(self) -> None:
        """Move the time to the earliest pending timer, waking its sleepers."""
        if self.has_sleepers():
            self._now = max(self._now, self._timers[0][0])
            self._fire()


class _Driver:
    """The one task per event loop that moves every virtual clock in use.

    A single driver (rather than one per clock) matters: two drivers would
    each see the other's wake-up in the loop's run queue and never find the
    loop idle.
    """

    __slots__ = ("clocks", "task")

    def __init__(self) -> None:
        self.clocks: weakref.WeakSet[VirtualClock] = weakref.WeakSet()
        self.task: asyncio.Task[None] | None = None

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> _Driver:
        driver = _DRIVER_OF_LOOP.get(loop)
        if driver is None:
            driver = _DRIVER_OF_LOOP[loop] = cls()
        if driver.task is None or driver.task.done():
            driver.task = loop.create_task(driver.run(), name="streamkit-virtual-clock")
            _CLOCK_DRIVERS.add(driver.task)
        return driver

    def busy(self) -> bool:
        waiting = False
        for clock in list(self.clocks):
            waiting = clock.has_sleepers() or waiting
        return waiting

    async def run(self) -> None:
        while True:
            await _settle(self.busy)
            waiting = [clock for clock in list(self.clocks) if clock.has_sleepers()]
            if not waiting:
                self.clocks.clear()
                return
            for clock in waiting:
                clock.jump()


_DRIVER_OF_LOOP: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Driver] = (
    weakref.WeakKeyDictionary()
)


async def _settle(busy: Callable[[], bool]) -> None:
    """Let the loop run until nothing else is ready to run (or no one sleeps)."""
    loop = asyncio.get_running_loop()
    ready = getattr(loop, "_ready", None)  # asyncio's run queue, when available
    quiet = 0
    for passes in range(100_000):
        await asyncio.sleep(0)
        if not busy():
            return
        if ready is None:
            if passes >= 64:
                return
            continue
        quiet = quiet + 1 if not ready else 0
        if quiet >= 2:
            return


@contextlib.contextmanager
def virtual_clock(start: float = 0.0) -> Generator[VirtualClock]:
    """Run the block with a new `VirtualClock` as the current clock.

    Args:
        start: The initial virtual time.

    Examples:
        >>> import asyncio
        >>> from streamkit import chunk, collect
        >>> async def ticks():
        ...     for i in range(5):
        ...         await current_clock().sleep(1.0)
        ...         yield i
        >>> async def main() -> list[list[int]]:
        ...     with virtual_clock():
        ...         return await collect(ticks() | chunk(10, within=2.5))
        >>> asyncio.run(main())
        [[0, 1, 2], [3, 4]]
    """
    clock = VirtualClock(start)
    with use_clock(clock):
        yield clock


# --------------------------------------------------------------------------- check_stage


class StageCheckError(AssertionError):
    """`check_stage` found a stage misbehaving; the message says where."""


class _ConsumerError(Exception):
    """Raised by `check_stage`'s consumer inside ``async with``."""


async def check_stage(
    make_stage: Callable[[], Stage[Any, Any]] | Stage[Any, Any],
    items: Iterable[Any] = range(10),
    *,
    expected: Sequence[Any] | None = None,
    points: Iterable[int] = (0, 1, 2, 5),
    ordered: bool = True,
    virtual_time: bool = True,
) -> list[Any]:
    """Run a stage through every way a flow can stop; check it cleans up.

    The scenarios, each on a fresh `TrackedSource` over ``items``:

    * a normal run (compared with ``expected`` when given);
    * an early ``break`` after output item ``k``, for each ``k`` in ``points``;
    * the source raising `SourceError` at input ``k``: the same error must
      come out, unless the stage had stopped pulling before ``k``;
    * the consumer raising inside ``async with`` after ``k`` items: that
      error must come out unchanged;
    * the consuming task cancelled while it waits for item ``k`` (it cancels
      itself) and after ``k + 1`` event-loop passes (cancelled from outside).

    After each one the source must be closed or exhausted and no task may be
    left pending. With ``virtual_time`` every scenario runs under a new
    `VirtualClock`, so time operators run instantly.

    Args:
        make_stage: A stage, or a function returning one.
        items: What the tracked source yields.
        expected: The output of the normal run, if known.
        points: The positions at which to break, fail and cancel.
        ordered: Whether output is deterministic, so that every partial run
            must produce a prefix of the normal run.
        virtual_time: Run the scenarios under a virtual clock.

    Returns:
        The output of the normal run.

    Raises:
        StageCheckError: A scenario went wrong.

    Examples:
        >>> import asyncio
        >>> from streamkit import map_, take
        >>> asyncio.run(check_stage(lambda: map_(abs) | take(3), [-1, -2, -3, -4]))
        [1, 2, 3]
    """
    if isinstance(make_stage, Stage):
        stage = make_stage

        def make_flow(source: TrackedSource[Any]) -> AsyncIterable[Any]:
            return source | stage
    else:
        factory = make_stage

        def make_flow(source: TrackedSource[Any]) -> AsyncIterable[Any]:
            return source | factory()

    return await check_flow(
        make_flow,
        items,
        expected=expected,
        points=points,
        ordered=ordered,
        virtual_time=virtual_time,
    )


async def check_flow(
    make_flow: Callable[[TrackedSource[Any]], AsyncIterable[Any]],
    items: Iterable[Any] = range(10),
    *,
    expected: Sequence[Any] | None = None,
    points: Iterable[int] = (0, 1, 2, 5),
    ordered: bool = True,
    virtual_time: bool = True,
) -> list[Any]:
    """`check_stage` for anything built around one source (combinators).

    ``make_flow(source)`` returns what to iterate, e.g.
    ``lambda s: merge(s, [10, 11])``; the scenarios and checks are those of
    `check_stage`, applied to the tracked source passed in.

    Examples:
        >>> import asyncio
        >>> from streamkit import concat
        >>> asyncio.run(check_flow(lambda source: concat(source, [9]), [1, 2]))
        [1, 2, 9]
    """
    values = list(items)
    spots = sorted({k for k in points if 0 <= k < max(len(values), 1)})
    clock: Callable[[], contextlib.AbstractContextManager[Any]] = (
        virtual_clock if virtual_time else contextlib.nullcontext
    )

    def fail(scenario: str, message: str) -> StageCheckError:
        return StageCheckError(f"{scenario}: {message}")

    def check_clean(scenario: str, source: TrackedSource[Any]) -> None:
        if not source.finished:
            raise fail(scenario, f"the source was left open ({source!r})")
        try:
            assert_no_pending_tasks()
        except AssertionError as exc:
            raise fail(scenario, str(exc)) from None

    def check_prefix(scenario: str, got: list[Any], full: list[Any]) -> None:
        if ordered and got != full[: len(got)]:
            raise fail(scenario, f"yielded {got!r}, not a prefix of the normal run {full!r}")

    # Normal run.
    source = TrackedSource(values)
    with clock():
        flow = make_flow(source)
        async with _closing(flow) as iterator:
            normal = [item async for item in iterator]
    check_clean("normal run", source)
    if expected is not None and normal != list(expected):
        raise fail("normal run", f"yielded {normal!r}, expected {list(expected)!r}")

    for k in spots:
        # Early break after output item k.
        if k < len(normal):
            scenario = f"break after item {k}"
            source = TrackedSource(values)
            got: list[Any] = []
            with clock():
                async with _closing(make_flow(source)) as iterator:
                    async for item in iterator:
                        got.append(item)
                        if len(got) > k:
                            break
            check_prefix(scenario, got, normal)
            check_clean(scenario, source)

        # Upstream exception at input k.
        scenario = f"source failing at input {k}"
        source = TrackedSource(values, fail_at=k)
        got = []
        raised: BaseException | None = None
        with clock():
            try:
                async with _closing(make_flow(source)) as iterator:
                    async for item in iterator:
                        got.append(item)
            except Exception as exc:
                raised = exc
        if raised is None:
            if source.pulls > k:
                raise fail(scenario, "the source error was swallowed")
        elif raised is not source.error:
            raise fail(scenario, f"raised {raised!r} instead of the source's {source.error!r}")
        check_prefix(scenario, got, normal)
        check_clean(scenario, source)

        # Downstream exception after k items.
        if k < len(normal):
            scenario = f"consumer raising after item {k}"
            source = TrackedSource(values)
            error = _ConsumerError(f"consumer failed after item {k}")
            raised = None
            with clock():
                try:
                    async with _closing(make_flow(source)) as iterator:
                        seen = 0
                        async for _ in iterator:
                            seen += 1
                            if seen > k:
                                raise error
                except Exception as exc:
                    raised = exc
            if raised is not error:
                raise fail(scenario, f"raised {raised!r} instead of the consumer's error")
            check_clean(scenario, source)

        # Cancellation while waiting for item k (the consumer cancels itself).
        scenario = f"cancelled while waiting for item {k}"
        source = TrackedSource(values)
        with clock():
            task = asyncio.create_task(_consume(make_flow(source), cancel_after=k))
            await _finish(task, scenario, fail)
        check_clean(scenario, source)

        # Cancellation from outside after k + 1 event-loop passes.
        scenario = f"cancelled after {k + 1} loop passes"
        source = TrackedSource(values)
        with clock():
            task = asyncio.create_task(_consume(make_flow(source), cancel_after=None))
            for _ in range(k + 1):
                await asyncio.sleep(0)
            task.cancel()
            await _finish(task, scenario, fail)
        check_clean(scenario, source)
    return normal


@contextlib.asynccontextmanager
async def _closing(flow: AsyncIterable[Any]) -> AsyncGenerator[AsyncIterator[Any]]:
    iterator = aiter(flow)
    try:
        yield iterator
    finally:
        await aclose(iterator)
        if iterator is not flow:
            await aclose(flow)


async def _consume(flow: AsyncIterable[Any], cancel_after: int | None) -> list[Any]:
    got: list[Any] = []
    task = asyncio.current_task()
    assert task is not None
    if cancel_after == 0:
        task.cancel()
    async with _closing(flow) as iterator:
        async for item in iterator:
            got.append(item)
            if len(got) == cancel_after:
                task.cancel()
    return got


async def _finish(
    task: asyncio.Task[list[Any]],
    scenario: str,
    fail: Callable[[str, str], StageCheckError],
) -> None:
    if not task.done():
        await asyncio.wait((task,))
    if task.cancelled():
        return
    error = task.exception()
    if error is not None:
        raise fail(scenario, f"the cancelled consumer raised {error!r}") from error
