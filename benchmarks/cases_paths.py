"""Cases (p) and (q): a selective filter before a map, and the peak RSS of a watched run."""

from __future__ import annotations

import subprocess
import sys
from typing import TYPE_CHECKING

from benchmarks.common import arange, double
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
    describe_error,
    format_bytes,
    format_ratio,
    partial_result,
    streamkit_over,
    time_competitors,
    timing_rows,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterable, Callable

# ------------------------------------------------------------ (p) selective filter, then map


def _selector(n: int) -> Callable[[int], bool]:
    """Keeps one item in ``n // 10`` (the first after ``n // 10 - 1`` dropped ones)."""
    modulus = max(n // 10, 1)

    def selective(x: int) -> bool:
        return x % modulus == modulus - 1

    return selective


async def _drain_sum(iterable: AsyncIterable[int]) -> int:
    total = 0
    async for x in iterable:
        total += x
    return total


def _streamkit_p(with_map: bool) -> Runner:
    from streamkit import filter_, map_

    async def run(n: int) -> object:
        stage = filter_(_selector(n))
        if with_map:
            return await _drain_sum(arange(n) | stage | map_(double))
        return 2 * await _drain_sum(arange(n) | stage)

    return run


def _handwritten_p() -> Runner:
    async def run(n: int) -> object:
        selective = _selector(n)

        async def kept(source: AsyncIterable[int]) -> AsyncIterable[int]:
            async for x in source:
                if selective(x):
                    yield x

        async def doubled(source: AsyncIterable[int]) -> AsyncIterable[int]:
            async for x in source:
                yield double(x)

        return await _drain_sum(doubled(kept(arange(n))))

    return run


@case(
    "p",
    "a selective filter before a map",
    Target(
        f"`filter_(selective) | map_(f)` within 1.1{TIMES} of "
        "`filter_(selective)` alone (the items the filter drops take the fused path)",
        f"filter then map {DIVIDE} filter alone",
        streamkit_over("streamkit_filter_alone"),
        1.1,
    ),
)
def selective_filter(settings: Settings) -> CaseResult:
    n = settings.size(1_000_000, 2_000)

    def verify(size: int, result: object) -> str | None:
        selective = _selector(size)
        expected = sum(2 * x for x in range(size) if selective(x))
        return None if result == expected else f"got {result!r}, expected {expected}"

    competitors = [
        Competitor(
            "streamkit",
            "streamkit `filter_(selective) | map_(f)`",
            lambda: _streamkit_p(True),
            reference=True,
        ),
        Competitor(
            "streamkit_filter_alone",
            "streamkit `filter_(selective)` alone (the consumer doubles the sum)",
            lambda: _streamkit_p(False),
        ),
        Competitor(
            "handwritten",
            "hand-written: an async generator for the filter, one for the map",
            _handwritten_p,
        ),
    ]
    rows = timing_rows(time_competitors(competitors, n, settings, verify))
    return partial_result(
        f"A filter that keeps one item in {max(n // 10, 1):,} (the first kept item is number "
        f"{max(n // 10, 1) - 1:,}), then `map_(f)` with a plain `def f`, over {n:,} ints from "
        "an async generator, drained by a consumer that adds the items up. A fused segment "
        "learns whether each function is synchronous from its first call, and until every "
        "function has been called once it sends items through its slower probing path; the "
        "map is first called only when the filter keeps an item, so before that a segment "
        "could stay on the probing path for every item the filter drops. The target compares "
        "the segment with the same filter alone, which is decided at its first item.",
        f"n = {n:,}",
        TIMING_HEADERS,
        rows,
    )


# ------------------------------------------------------------ (q) peak RSS of a watched run

RSS_LIMIT = 50_000_000
"""50 MB: the most resident memory a watched run of 10⁶ items through five stages may take."""

_RSS_SCRIPT = """
import asyncio, resource, sys
from streamkit import Run, filter_, map_, scan, tap

def inc(x): return x + 1
def keep(x): return x % 3 != 0
def double(x): return x * 2
def noop(x): return None
def add(acc, x): return acc + x

async def main(n):
    pipeline = map_(inc) | filter_(keep) | map_(double) | tap(noop) | scan(add, 0)
    count = last = 0
    async with Run(pipeline, range(n), name="memory", metrics=True) as run:
        async for item in run:
            count += 1
            last = item
    return count, last

def peak_rss():
    # VmHWM: this process's own peak (ru_maxrss would keep the peak of the parent's
    # memory, which the child shared between fork and exec).
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

before = peak_rss()
count, last = asyncio.run(main(int(sys.argv[1])))
peak = peak_rss()
print(before, peak, count, last)
"""


def _expected_rss_run(n: int) -> tuple[int, int]:
    kept = [2 * (x + 1) for x in range(n) if (x + 1) % 3 != 0]
    return len(kept), sum(kept)


def _measure_rss(n: int, timeout: float) -> tuple[int, int]:
    """RSS before the run and the peak RSS, of a fresh interpreter that runs it once."""
    completed = subprocess.run(
        [sys.executable, "-c", _RSS_SCRIPT, str(n)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
    )
    before, peak, count, last = (int(word) for word in completed.stdout.split())
    if (count, last) != _expected_rss_run(n):
        raise AssertionError(f"the run gave {count} items ending in {last}")
    return before, peak


def _rss(result: CaseResult) -> float | None:
    row = result.row("streamkit_peak")
    return None if row is None else row.values.get("rss_bytes")


@case(
    "q",
    "peak resident memory of a watched run of 10⁶ items through five stages",
    Target(
        f"peak RSS under {RSS_LIMIT / 1e6:.0f} MB (`Run(metrics=True)`, 1,000,000 items, "
        "five stages)",
        "peak RSS",
        _rss,
        RSS_LIMIT,
        unit="bytes",
    ),
)
def watched_run_rss(settings: Settings) -> CaseResult:
    n = settings.size(1_000_000, 2_000)
    try:
        before, peak = _measure_rss(n, settings.run_timeout)
    except Exception as exc:
        note = f"error: {describe_error(exc)}"
        settings.log(f"    peak RSS: {note}")
        rows = [
            Row("streamkit_before", "RSS after the imports, before the run", ("-", "-"), note=note),
            Row("streamkit_peak", "peak RSS of the process", ("-", "-"), note=note),
        ]
    else:
        rows = [
            Row(
                "streamkit_before",
                "RSS after the imports, before the run",
                (format_bytes(before), "1.00 (reference)"),
                values={"rss_bytes": before},
                ratio=1.0,
            ),
            Row(
                "streamkit_peak",
                "peak RSS of the process (the run included)",
                (format_bytes(peak), format_ratio(peak / before)),
                values={"rss_bytes": peak},
                ratio=peak / before,
            ),
        ]
    return partial_result(
        f"`map_(inc) | filter_(keep) | map_(double) | tap(noop) | scan(add, 0)` over "
        f"`range({n:,})` in a `Run(..., metrics=True)`, consumed with `async for`, in a fresh "
        "interpreter (`python -c`), so that nothing else this harness did counts. The figures "
        "are the process's peak resident set size (`VmHWM` in `/proc/self/status`, else "
        "`ru_maxrss`) after the imports and after the run; the run's item count and last "
        "item are checked. Nothing here is timed.",
        f"n = {n:,}",
        ("measurement", "RSS", f"{DIVIDE} before the run"),
        rows,
    )
