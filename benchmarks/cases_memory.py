"""Case (e): peak memory of streaming versus collecting 1 KiB items."""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from typing import TYPE_CHECKING

from benchmarks.common import amap_sync_source
from benchmarks.harness import (
    DIVIDE,
    UNAVAILABLE_ERRORS,
    CaseResult,
    Row,
    Runner,
    Settings,
    Target,
    case,
    describe_error,
    format_bytes,
    format_ratio,
    partial_result,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterable, Callable

PAYLOAD = 1024
FULL_SIZES = (100_000, 1_000_000)
QUICK_SIZES = (1_000, 10_000)
#: "Independent of N": the peak may grow by at most this much from the small to the large N
#: (64 payloads, while collecting grows by more than a payload per extra item).
FLAT_TOLERANCE = 64 * PAYLOAD


def payload(i: int) -> bytes:
    return bytes(PAYLOAD)  # a fresh 1 KiB object per item (bytes(n) is never shared)


async def drain_len(iterable: AsyncIterable[bytes]) -> int:
    total = 0
    async for chunk in iterable:
        total += len(chunk)
    return total


def _streamkit_drain() -> Runner:
    from streamkit import map_

    map_(payload)

    async def run(n: int) -> object:
        return await drain_len(range(n) | map_(payload))

    return run


def _streamkit_collect() -> Runner:
    from streamkit import collect, map_

    map_(payload)

    async def run(n: int) -> object:
        items = await collect(range(n) | map_(payload))
        return sum(map(len, items))

    return run


def _handwritten_drain() -> Runner:
    async def run(n: int) -> object:
        return await drain_len(amap_sync_source(payload, range(n)))

    return run


def _handwritten_collect() -> Runner:
    async def run(n: int) -> object:
        items = [chunk async for chunk in amap_sync_source(payload, range(n))]
        return sum(map(len, items))

    return run


def measure_peak(runner: Runner, n: int, limit: float) -> int:
    """Peak traced memory above the starting level while ``runner`` processes ``n`` items."""

    async def traced() -> tuple[int, object]:
        async with asyncio.timeout(limit):
            gc.collect()
            tracemalloc.reset_peak()
            baseline, _ = tracemalloc.get_traced_memory()
            result = await runner(n)
            _, peak = tracemalloc.get_traced_memory()
            return peak - baseline, result

    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    try:
        peak, result = asyncio.run(traced())
    finally:
        if started:
            tracemalloc.stop()
    if result != n * PAYLOAD:
        raise AssertionError(f"processed {result!r} bytes, expected {n * PAYLOAD}")
    return peak


def _growth(result: CaseResult, key: str) -> float | None:
    row = result.row(key)
    return None if row is None else row.values.get("growth_bytes")


@case(
    "e",
    "peak memory: streaming versus collecting 1 KiB items",
    Target(
        "streamkit's streaming peak is independent of N",
        "growth of the peak",
        lambda result: _growth(result, "streamkit_drain"),
        FLAT_TOLERANCE,
        unit="bytes",
    ),
)
def memory(settings: Settings) -> CaseResult:
    small, large = QUICK_SIZES if settings.quick else FULL_SIZES
    modes: list[tuple[str, str, Callable[[], Runner]]] = [
        ("streamkit_drain", "streamkit `map_`, drained one item at a time", _streamkit_drain),
        ("streamkit_collect", "streamkit `map_`, `collect()`ed into a list", _streamkit_collect),
        ("handwritten_drain", "hand-written async generator, drained", _handwritten_drain),
        (
            "handwritten_collect",
            "hand-written async generator, `[x async for x in ...]`",
            _handwritten_collect,
        ),
    ]
    rows: list[Row] = []
    for key, label, factory in modes:
        try:
            runner = factory()
            # Warm-up (not kept): first-use allocations such as caches are not per-item costs.
            measure_peak(runner, max(small // 100, 1), settings.run_timeout)
            peaks = [measure_peak(runner, size, settings.run_timeout) for size in (small, large)]
        except UNAVAILABLE_ERRORS as exc:
            note = f"n/a: {describe_error(exc)}"
        except TimeoutError:
            note = f"error: a run took longer than {settings.run_timeout:g} s"
        except Exception as exc:
            note = f"error: {describe_error(exc)}"
        else:
            growth = peaks[1] - peaks[0]
            rows.append(
                Row(
                    key,
                    label,
                    (
                        format_bytes(peaks[0]),
                        format_bytes(peaks[1]),
                        format_bytes(growth),
                        f"{round(growth / (large - small), 1) + 0.0:,.1f} B",
                        format_ratio(peaks[1] / peaks[0]) if peaks[0] > 0 else "-",
                    ),
                    values={
                        "peak_small_bytes": peaks[0],
                        "peak_large_bytes": peaks[1],
                        "growth_bytes": growth,
                    },
                    ratio=peaks[1] / peaks[0] if peaks[0] > 0 else None,
                )
            )
            continue
        settings.log(f"    {label}: {note}")
        rows.append(Row(key, label, ("-",) * 5, note=note))

    return partial_result(
        f"`map_(payload)` over `range(N)` where `payload` returns a fresh `bytes({PAYLOAD})`, "
        f"for N = {small:,} and N = {large:,}. Peak memory is tracemalloc's peak of traced "
        "Python allocations above the level at the start of the run (fresh event loop, after "
        "`gc.collect()`), measured once per mode and size after a small warm-up run. "
        "tracemalloc slows allocation down, so nothing in this case is timed. Draining keeps "
        "one item alive at a time, so its peak should not depend on N; collecting must hold "
        "all N items.",
        f"N = {small:,} and {large:,}, {PAYLOAD} B per item",
        (
            "mode",
            f"peak, N = {small:,}",
            f"peak, N = {large:,}",
            "growth",
            "growth per extra item",
            f"large {DIVIDE} small",
        ),
        rows,
        f"Target: the streaming peak grows by at most {format_bytes(FLAT_TOLERANCE)} "
        f"({FLAT_TOLERANCE // PAYLOAD} items' worth) from N = {small:,} to N = {large:,}.",
    )
