"""Cases (c) and (d): ``map_`` over a coroutine function with bounded concurrency."""

from __future__ import annotations

import asyncio
import heapq
import statistics
import time
from collections import deque
from typing import TYPE_CHECKING, TypeVar, cast

from benchmarks.common import checksum, drain_ordered, drain_sum, mismatch
from benchmarks.harness import (
    DIVIDE,
    TIMES,
    TIMING_HEADERS,
    CaseResult,
    Competitor,
    Row,
    Runner,
    Settings,
    Target,
    case,
    format_ms,
    format_ratio,
    partial_result,
    streamkit_over,
    time_competitors,
    timing_rows,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence

    from aiostream.core import Stream
    from aiostream.stream.combine import MapCallable

T = TypeVar("T")
U = TypeVar("U")

LIMIT = 8


# ------------------------------------------------------------------ hand-rolled asyncio loops


async def deque_of_tasks(
    fn: Callable[[T], Awaitable[U]], source: Iterable[T], limit: int
) -> AsyncIterator[U]:
    """Ordered: keep up to ``limit`` tasks in a deque and always await the head."""
    pending: deque[asyncio.Task[U]] = deque()
    try:
        for x in source:
            if len(pending) >= limit:
                yield await pending.popleft()
            pending.append(asyncio.ensure_future(fn(x)))
        while pending:
            yield await pending.popleft()
    finally:
        for task in pending:
            task.cancel()


async def wait_first_completed(
    fn: Callable[[T], Awaitable[U]], source: Iterable[T], limit: int
) -> AsyncIterator[U]:
    """Unordered: a set of up to ``limit`` tasks, ``asyncio.wait(FIRST_COMPLETED)`` on it."""
    pending: set[asyncio.Future[U]] = set()
    try:
        for x in source:
            if len(pending) >= limit:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    yield task.result()
            pending.add(asyncio.ensure_future(fn(x)))
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                yield task.result()
    finally:
        for task in pending:
            task.cancel()


async def semaphore_all_tasks(
    fn: Callable[[T], Awaitable[U]], source: Iterable[T], limit: int
) -> AsyncIterator[U]:
    """Ordered with an unbounded reorder window: a task per item up front, at most ``limit``
    inside ``fn`` at once (asyncio.Semaphore wakes waiters first come, first served)."""
    semaphore = asyncio.Semaphore(limit)

    async def guarded(x: T) -> U:
        async with semaphore:
            return await fn(x)

    tasks = [asyncio.ensure_future(guarded(x)) for x in source]
    try:
        for task in tasks:
            yield await task
    finally:
        for task in tasks:
            task.cancel()


def _aiostream_runner(fn: Callable[[int], Awaitable[int]], *, ordered: bool) -> Runner:
    from aiostream import pipe, stream

    drain = drain_ordered if ordered else drain_sum

    async def run(n: int) -> object:
        # aiostream types map's function as taking *args and returning U or Awaitable[U].
        func = cast("MapCallable[int, int]", fn)
        xs: Stream[int] = stream.iterate(range(n)) | pipe.map(
            func, task_limit=LIMIT, ordered=ordered
        )
        result: object = None
        async with xs.stream() as streamer:
            result = await drain(streamer)
        return result

    return run


def _streamkit_runner(
    fn: Callable[[int], Awaitable[int]], *, ordered: bool, **options: int
) -> Runner:
    from streamkit import map_

    # A TypeError here means the feature is not there (yet): the row becomes "n/a".
    map_(fn, concurrency=LIMIT, ordered=ordered, **options)
    drain = drain_ordered if ordered else drain_sum

    async def run(n: int) -> object:
        return await drain(range(n) | map_(fn, concurrency=LIMIT, ordered=ordered, **options))

    return run


def _handrolled_runner(
    loop: Callable[[Callable[[int], Awaitable[int]], Iterable[int], int], AsyncIterator[int]],
    fn: Callable[[int], Awaitable[int]],
    *,
    ordered: bool,
) -> Runner:
    drain = drain_ordered if ordered else drain_sum

    async def run(n: int) -> object:
        return await drain(loop(fn, range(n), LIMIT))

    return run


# ------------------------------------------------------------------ (c) trivial coroutines


async def trivial(x: int) -> int:
    await asyncio.sleep(0)
    return x * 2


def _verify_c(n: int, result: object) -> str | None:
    # Ordered runners return (count, sum, position-weighted sum), unordered ones (count, sum).
    outputs = range(0, 2 * n, 2)
    ordered, unordered = checksum(outputs, ordered=True), checksum(outputs, ordered=False)
    if result in (ordered, unordered):
        return None
    return f"got {result!r}, expected {ordered!r} (ordered) or {unordered!r} (unordered)"


@case(
    "c",
    f"concurrent map, {LIMIT} at a time, over trivial coroutines",
    Target(
        f"ordered: streamkit within 1.2{TIMES} of the hand-rolled deque of tasks",
        f"streamkit {DIVIDE} deque of tasks",
        streamkit_over("deque", reference="streamkit_ordered"),
        1.2,
    ),
    Target(
        f"unordered: streamkit within 1.2{TIMES} of the hand-rolled asyncio.wait loop",
        f"streamkit {DIVIDE} asyncio.wait loop",
        streamkit_over("wait", reference="streamkit_unordered"),
        1.2,
    ),
    Target(
        f"ordered: streamkit at least 10{TIMES} faster than aiostream",
        f"streamkit {DIVIDE} aiostream",
        streamkit_over("aiostream_ordered", reference="streamkit_ordered"),
        0.1,
    ),
    Target(
        f"unordered: streamkit at least 10{TIMES} faster than aiostream",
        f"streamkit {DIVIDE} aiostream",
        streamkit_over("aiostream_unordered", reference="streamkit_unordered"),
        0.1,
    ),
)
def concurrent_trivial(settings: Settings) -> CaseResult:
    n = settings.size(100_000, 500)
    competitors = [
        Competitor(
            "streamkit_ordered",
            f"ordered: streamkit `map_(f, concurrency={LIMIT})`",
            lambda: _streamkit_runner(trivial, ordered=True),
            group="ordered",
            reference=True,
        ),
        Competitor(
            "deque",
            f"ordered: hand-rolled deque of {LIMIT} tasks, await the head",
            lambda: _handrolled_runner(deque_of_tasks, trivial, ordered=True),
            group="ordered",
        ),
        Competitor(
            "aiostream_ordered",
            f"ordered: aiostream `pipe.map(f, task_limit={LIMIT})`",
            lambda: _aiostream_runner(trivial, ordered=True),
            group="ordered",
        ),
        Competitor(
            "streamkit_unordered",
            f"unordered: streamkit `map_(f, concurrency={LIMIT}, ordered=False)`",
            lambda: _streamkit_runner(trivial, ordered=False),
            group="unordered",
            reference=True,
        ),
        Competitor(
            "wait",
            f"unordered: hand-rolled set of {LIMIT} tasks + `asyncio.wait(FIRST_COMPLETED)`",
            lambda: _handrolled_runner(wait_first_completed, trivial, ordered=False),
            group="unordered",
        ),
        Competitor(
            "aiostream_unordered",
            f"unordered: aiostream `pipe.map(f, task_limit={LIMIT}, ordered=False)`",
            lambda: _aiostream_runner(trivial, ordered=False),
            group="unordered",
        ),
    ]
    rows = timing_rows(time_competitors(competitors, n, settings, _verify_c))
    return partial_result(
        f"An `async def f(x)` that does `await asyncio.sleep(0)` and returns `x * 2`, mapped "
        f"over `range({n:,})` with at most {LIMIT} calls in flight, in input order and in "
        "completion order. The work per item is one task switch, so this is the cost of the "
        "scheduling machinery itself. Each streamkit row is compared with the rows of the same "
        "mode. asyncstdlib and aioitertools have no bounded-concurrency streaming map "
        "(aioitertools' `gather(limit=...)` materialises every result), so they are not in "
        "this table.",
        f"n = {n:,}, concurrency = {LIMIT}",
        TIMING_HEADERS,
        rows,
    )


# ------------------------------------------------------------------ (d) head-of-line blocking


def ideal_makespan(durations: Sequence[float], slots: int) -> float:
    """Finish time of greedy list scheduling in input order on ``slots`` workers.

    Each item starts the moment the earliest slot is free; with an unbounded reorder buffer,
    emitting results in input order never delays a start, so the last result is out at the
    latest finish time.
    """
    free = [0.0] * slots
    finish = 0.0
    for duration in durations:
        end = heapq.heappop(free) + duration
        heapq.heappush(free, end)
        finish = max(finish, end)
    return finish


def _measure_sleeps(fast: float, slow: float, count: int) -> tuple[float, float]:
    """Median wall time of one ``asyncio.sleep(fast)`` and one ``asyncio.sleep(slow)``."""

    async def measure(seconds: float, times: int) -> float:
        samples: list[float] = []
        for _ in range(times):
            start = time.perf_counter()
            await asyncio.sleep(seconds)
            samples.append(time.perf_counter() - start)
        return statistics.median(samples)

    async def both() -> tuple[float, float]:
        return await measure(fast, count), await measure(slow, max(count // 4, 1))

    return asyncio.run(both())


@case(
    "d",
    f"ordered concurrent map ({LIMIT} at a time) with stragglers",
    Target(
        f"streamkit within 1.3{TIMES} of the ideal schedule",
        f"streamkit {DIVIDE} ideal",
        lambda result: result.ratio("streamkit"),
        1.3,
    ),
)
def concurrent_stragglers(settings: Settings) -> CaseResult:
    n = settings.size(1_000, 100)
    every, fast, slow = 50, 0.001, 0.020

    def duration(i: int) -> float:
        return slow if i % every == 0 else fast

    async def work(i: int) -> int:
        await asyncio.sleep(duration(i))
        return i

    def verify(size: int, result: object) -> str | None:
        return mismatch(result, checksum(range(size), ordered=True))

    competitors = [
        Competitor(
            "streamkit",
            f"streamkit `map_(f, concurrency={LIMIT})` (default options)",
            lambda: _streamkit_runner(work, ordered=True),
        ),
        Competitor(
            "streamkit_window",
            f"streamkit `map_(f, concurrency={LIMIT}, window={n})` (window option, not the target)",
            lambda: _streamkit_runner(work, ordered=True, window=n),
        ),
        Competitor(
            "aiostream",
            f"aiostream `pipe.map(f, task_limit={LIMIT}, ordered=True)`",
            lambda: _aiostream_runner(work, ordered=True),
        ),
        Competitor(
            "semaphore",
            f"hand-rolled: a task per item + `Semaphore({LIMIT})` (unbounded reorder window)",
            lambda: _handrolled_runner(semaphore_all_tasks, work, ordered=True),
        ),
        Competitor(
            "deque",
            f"hand-rolled deque of {LIMIT} tasks (reorder window = {LIMIT})",
            lambda: _handrolled_runner(deque_of_tasks, work, ordered=True),
        ),
    ]
    timings = time_competitors(competitors, n, settings, verify)

    durations = [duration(i) for i in range(n)]
    ideal = ideal_makespan(durations, LIMIT)
    measured_fast, measured_slow = _measure_sleeps(fast, slow, 40 if not settings.quick else 8)
    calibrated = ideal_makespan(
        [measured_slow if d == slow else measured_fast for d in durations], LIMIT
    )

    rows = [
        Row(
            "ideal",
            f"ideal schedule: greedy list scheduling on {LIMIT} slots (computed)",
            (format_ms(ideal * 1e3), "-", "1.00 (reference)"),
            values={"median_ms": ideal * 1e3},
            ratio=1.0,
        )
    ]
    for t in timings:
        comp = t.competitor
        if not t.ok:
            rows.append(Row(comp.key, comp.label, ("-", "-", "-"), note=t.note))
            continue
        spread = f"{format_ms(min(t.samples) * 1e3)} to {format_ms(max(t.samples) * 1e3)}"
        rows.append(
            Row(
                comp.key,
                comp.label,
                (format_ms(t.median * 1e3), spread, format_ratio(t.median / ideal)),
                values={"median_ms": t.median * 1e3, "runs": len(t.samples)},
                ratio=t.median / ideal,
            )
        )

    total = sum(durations)
    return partial_result(
        f"{n:,} items through an ordered map with at most {LIMIT} calls in flight; item `i` "
        f"sleeps {slow * 1e3:g} ms when `i % {every} == 0` and {fast * 1e3:g} ms otherwise "
        f"({len(range(0, n, every))} stragglers, {slow / fast:g}{TIMES} the normal duration). "
        "An implementation that only keeps "
        f"{LIMIT} tasks and waits for the oldest one stalls behind every straggler: the "
        "other slots finish and sit idle because their results may not overtake it. The "
        "ideal is the schedule that never leaves a slot idle while input is waiting:\n\n"
        f"    free = [0] * {LIMIT}                       # when each slot is next free\n"
        "    for d in durations:                  # items in input order\n"
        "        start = pop_min(free); end = start + d; push(free, end)\n"
        "    ideal = max(end over all items)\n\n"
        "That is greedy list scheduling: each item starts as soon as any slot frees up. "
        "Results leave in input order, item `i` at `max(end_j for j <= i)`, so the last "
        "result leaves at the latest `end`: with an unbounded reorder buffer the ordering "
        "never delays a start, and no scheduler that starts items in input order with "
        f"{LIMIT} slots can finish earlier. For these durations it is "
        f"{format_ms(ideal * 1e3)} ms (the trivial bound sum(d) / {LIMIT} is "
        f"{format_ms(total / LIMIT * 1e3)} ms). It uses the nominal sleep times; ratios are "
        "measured wall time divided by it.",
        f"n = {n:,}, concurrency = {LIMIT}, durations {fast * 1e3:g} ms / {slow * 1e3:g} ms",
        ("competitor", "median ms", "fastest to slowest ms", f"wall time {DIVIDE} ideal"),
        rows,
        f"`asyncio.sleep({fast:g})` takes {measured_fast * 1e3:.3f} ms and "
        f"`asyncio.sleep({slow:g})` {measured_slow * 1e3:.3f} ms on this machine (medians); "
        f"the same formula with those durations gives {format_ms(calibrated * 1e3)} ms "
        f"({format_ratio(calibrated / ideal)} the nominal ideal), which is the floor for any "
        "real implementation here.",
    )
