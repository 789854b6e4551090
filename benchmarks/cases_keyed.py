"""Case (y): a sub-pipeline per key (`group_by`) against a hand-written dict of states."""

from __future__ import annotations

from typing import TYPE_CHECKING

from benchmarks.common import arange, checksum, drain_sum, mismatch
from benchmarks.harness import (
    DIVIDE,
    TIMES,
    TIMING_HEADERS,
    CaseResult,
    Competitor,
    Runner,
    Settings,
    Target,
    case,
    partial_result,
    streamkit_over,
    time_competitors,
    timing_rows,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterable, AsyncIterator

KEYS = 1_000


def key(x: int) -> int:
    return x % KEYS


def add(total: int, x: int) -> int:
    return total + x


def expected(n: int) -> tuple[int, ...]:
    totals: dict[int, int] = {}
    out: list[int] = []
    for x in range(n):
        totals[x % KEYS] = totals.get(x % KEYS, 0) + x
        out.append(totals[x % KEYS])
    return checksum(out, ordered=False)


def _group_by() -> Runner:
    from streamkit import group_by, scan

    stage = group_by(key, scan(add, 0))

    async def run(n: int) -> object:
        return await drain_sum(arange(n) | stage)

    return run


def _scan_by() -> Runner:
    from streamkit import scan_by

    stage = scan_by(key, add, 0)

    async def run(n: int) -> object:
        return await drain_sum(arange(n) | stage)

    return run


async def dict_of_states(source: AsyncIterable[int]) -> AsyncIterator[int]:
    """The running total of each item's key, kept in a dict: what a user writes by hand."""
    totals: dict[int, int] = {}
    async for x in source:
        k = x % KEYS
        total = totals[k] = totals.get(k, 0) + x
        yield total


def _handwritten() -> Runner:
    async def run(n: int) -> object:
        return await drain_sum(dict_of_states(arange(n)))

    return run


@case(
    "y",
    f"`group_by` over {KEYS:,} keys with a per-key `scan` sub-pipeline",
    Target(
        f"streamkit `group_by` within 20{TIMES} of a hand-written dict-of-states loop",
        f"streamkit {DIVIDE} dict of states",
        streamkit_over("handwritten"),
        20.0,
    ),
)
def keyed_group_by(settings: Settings) -> CaseResult:
    n = settings.size(100_000, 2_000)

    def verify(size: int, result: object) -> str | None:
        return mismatch(result, expected(size))

    competitors = [
        Competitor(
            "streamkit", "streamkit `group_by(key, scan(add, 0))`", _group_by, reference=True
        ),
        Competitor(
            "scan_by", "streamkit `scan_by(key, add, 0)` (one step, no sub-pipeline)", _scan_by
        ),
        Competitor(
            "handwritten", "hand-written: one async generator, a dict of totals", _handwritten
        ),
    ]
    rows = timing_rows(time_competitors(competitors, n, settings, verify))
    return partial_result(
        f"{n:,} ints from an async generator over {KEYS:,} keys (round robin), each key's "
        "running total, consumed one item at a time. `group_by` runs a `scan` per key, each "
        "in a task of its own fed through the key's inbox, and hands the outputs over "
        "through one bounded queue: its cost is that of the task switches per item, which "
        "buy a sub-pipeline of any stage per key (with its own order, closing and "
        "checkpoint). `scan_by` is the one-step operator for a per-key fold.",
        f"n = {n:,}, {KEYS:,} keys",
        TIMING_HEADERS,
        rows,
    )
