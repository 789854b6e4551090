"""Case (w): keyed 1-minute tumbling windows with a watermark lag, and their peak memory."""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import tracemalloc
from typing import TYPE_CHECKING, Any

from benchmarks.harness import (
    DIVIDE,
    TIMING_HEADERS,
    UNAVAILABLE_ERRORS,
    CaseResult,
    Competitor,
    Row,
    Runner,
    Settings,
    Target,
    case,
    describe_error,
    format_bytes,
    format_ratio,
    partial_result,
    streamkit_over,
    time_competitors,
    timing_rows,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

WINDOW = 60.0
LAG = 10.0
RATE = 100.0
"""Events per second of event time (so 10⁶ events span about 2.8 hours)."""
EPOCH = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)

Event = tuple[str, float]


def events(n: int, keys: int) -> Iterator[Event]:
    """``n`` events over ``keys`` keys, out of order by up to ``LAG`` seconds (never late)."""
    for i in range(n):
        # A deterministic jitter in [0, LAG): the watermark (max - LAG) never passes an event.
        jitter = (i * 7919 % 1000) / 1000 * LAG
        yield f"k{i * 31 % keys}", max(0.0, i / RATE - jitter)


def expected(n: int, keys: int) -> tuple[int, int]:
    """(windows, events) the windowing must produce."""
    return len({(key, t // WINDOW) for key, t in events(n, keys)}), n


def _count(total: int, _: Any) -> int:
    return total + 1


def _time(event: Event) -> float:
    return event[1]


def _key(event: Event) -> str:
    return event[0]


def _streamkit(lists: dict[int, list[Event]]) -> Runner:
    from streamkit import Tumbling, windowed

    def stage() -> Any:
        return windowed(
            Tumbling(WINDOW), time=_time, key=_key, aggregate=_count, initial=int, out_of_order=LAG
        )

    stage()

    async def run(n: int) -> object:
        windows = total = 0
        async for window in lists[n] | stage():
            windows += 1
            total += window.value
        return windows, total

    return run


def _bytewax(lists: dict[int, list[Event]]) -> Runner:
    import bytewax.operators as op
    import bytewax.operators.windowing as win
    from bytewax.dataflow import Dataflow
    from bytewax.testing import TestingSink, TestingSource, run_main

    dated = {
        n: [(key, EPOCH + dt.timedelta(seconds=t)) for key, t in items]
        for n, items in lists.items()
    }

    def stamp(event: tuple[str, dt.datetime]) -> dt.datetime:
        return event[1]

    def build(items: list[tuple[str, dt.datetime]], out: list[Any]) -> Dataflow:
        flow = Dataflow("windows")
        stream = op.input("in", flow, TestingSource(items))
        keyed = op.key_on("key", stream, lambda event: event[0])
        clock = win.EventClock(
            ts_getter=stamp,
            wait_for_system_duration=dt.timedelta(seconds=LAG),
            # Event time only, as for streamkit: the watermark does not move with the wall
            # clock, and no timer wakes the flow up.
            now_getter=lambda: EPOCH,
            to_system_utc=lambda _: None,
        )
        windower = win.TumblingWindower(length=dt.timedelta(seconds=WINDOW), align_to=EPOCH)
        counted = win.fold_window("count", keyed, clock, windower, int, _count, lambda a, b: a + b)
        op.output("out", counted.down, TestingSink(out))
        return flow

    async def run(n: int) -> object:
        out: list[Any] = []
        run_main(build(dated[n], out))
        return len(out), sum(value for _, (_, value) in out)

    return run


def measure_peak(n: int, keys: int, limit: float) -> int:
    """Peak traced memory while streamkit windows ``n`` generated events (no list held)."""
    from streamkit import Tumbling, windowed

    async def traced() -> int:
        async with asyncio.timeout(limit):
            gc.collect()
            tracemalloc.reset_peak()
            baseline, _ = tracemalloc.get_traced_memory()
            stage = windowed(
                Tumbling(WINDOW),
                time=_time,
                key=_key,
                aggregate=_count,
                initial=int,
                out_of_order=LAG,
            )
            async for _ in events(n, keys) | stage:
                pass
            _, peak = tracemalloc.get_traced_memory()
            return peak - baseline

    tracemalloc.start()
    try:
        return asyncio.run(traced())
    finally:
        tracemalloc.stop()


def _growth(result: CaseResult) -> float | None:
    small, large = result.row("memory_small"), result.row("memory_large")
    if small is None or large is None or not small.values or not large.values:
        return None
    return large.values["peak_bytes"] / small.values["peak_bytes"]


@case(
    "w",
    "1-minute tumbling windows over 10⁴ keys with a watermark lag",
    Target(
        "streamkit no slower than bytewax on one worker",
        f"streamkit {DIVIDE} bytewax",
        streamkit_over("bytewax"),
        1.0,
    ),
    Target(
        "peak memory follows open windows, not events (ten times the events, under twice the peak)",
        f"peak at 10 N {DIVIDE} peak at N",
        _growth,
        2.0,
    ),
)
def windows(settings: Settings) -> CaseResult:
    n = settings.size(1_000_000, 5_000)
    keys = 10_000 if not settings.quick else 100
    lists = {size: list(events(size, keys)) for size in (n, max(n // 10, 1))}
    want = {size: expected(size, keys) for size in lists}

    def verify(size: int, result: object) -> str | None:
        return None if result == want[size] else f"got {result!r}, expected {want[size]!r}"

    competitors = [
        Competitor(
            "streamkit",
            "streamkit `windowed(Tumbling(60), key=, aggregate=)`",
            lambda: _streamkit(lists),
            reference=True,
        ),
        Competitor(
            "bytewax",
            "bytewax 0.21 `fold_window` (`run_main`, one worker)",
            lambda: _bytewax(lists),
        ),
    ]
    rows = timing_rows(time_competitors(competitors, n, settings, verify))
    lists.clear()
    # Memory: the same stream generated on the fly, at N/10 and N events over the same keys.
    first_peak: float | None = None
    for key, size in (("memory_small", max(n // 10, 1)), ("memory_large", n)):
        label = f"streamkit peak memory, {size:,} generated events"
        try:
            peak = measure_peak(size, keys, settings.run_timeout * 10)
        except UNAVAILABLE_ERRORS as exc:
            rows.append(Row(key, label, ("-",) * 3, note=f"n/a: {describe_error(exc)}"))
            continue
        except Exception as exc:
            rows.append(Row(key, label, ("-",) * 3, note=f"error: {describe_error(exc)}"))
            continue
        first_peak = first_peak or float(max(peak, 1))
        ratio = peak / first_peak
        rows.append(
            Row(
                key,
                label,
                (format_bytes(peak), "-", f"{format_ratio(ratio)} the peak at N/10"),
                values={"peak_bytes": float(peak)},
                ratio=ratio,
            )
        )
    windows_open = keys * (1 + LAG / WINDOW)
    return partial_result(
        f"{n:,} events `(key, seconds)` over {keys:,} keys, {RATE:g} events per second of "
        f"event time, out of order by up to {LAG:g} s, counted per key in {WINDOW:g}-second "
        f"tumbling windows with a watermark lag of {LAG:g} s (no event is late). Both "
        "competitors get a prepared list (bytewax's timestamps as UTC datetimes, made before "
        "timing) and their output is checked (number of windows and events counted). bytewax "
        "runs its event clock without the wall clock (`now_getter` fixed), so both watermarks "
        "follow event time only. Peak memory is tracemalloc's peak for streamkit over events "
        f"generated on the fly, at N/10 and N: about {windows_open:,.0f} windows are open at "
        "a time in both runs.",
        f"n = {n:,}, {keys:,} keys",
        TIMING_HEADERS,
        rows,
    )
