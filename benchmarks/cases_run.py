"""Case (j): the cost of watching a run, against consuming the bare flow the same way."""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Any

from benchmarks.cases_pipeline import PIPELINE
from benchmarks.common import (
    arange,
    checksum,
    double,
    drain_sum,
    expected_pipeline,
    inc,
    mismatch,
    not_multiple_of_3,
)
from benchmarks.harness import (
    DIVIDE,
    CaseResult,
    Competitor,
    Row,
    Runner,
    Settings,
    Target,
    case,
    partial_result,
    time_competitors,
    timing_rows,
)

if TYPE_CHECKING:
    from collections.abc import Callable

CONSUMERS = {
    "async_for": "`async for`, async-generator source",
    "collect": "`collect()`, `range` source",
    "drain": "`drain()`, async-generator source",
}
#: mode key -> (label, `Run` keyword arguments; None for the bare flow)
MODES: dict[str, tuple[str, dict[str, Any] | None]] = {
    "bare": ("bare flow", None),
    "disabled": ("`Run(metrics=False)`", {"metrics": False}),
    "enabled": ("`Run(metrics=True)`", {"metrics": True}),
    "full": ('`Run(timing="full")`', {"metrics": True, "timing": "full"}),
}
DISABLED_LIMIT = 1.02
ENABLED_LIMIT = 1.20


@cache
def _expected(n: int) -> tuple[int, ...]:
    return checksum(expected_pipeline(n), ordered=False)


def _verify(n: int, result: object) -> str | None:
    # drain() keeps nothing to check: it returns the number of items out.
    if isinstance(result, int):
        return mismatch(result, _expected(n)[0])
    return mismatch(result, _expected(n))


def _runner(consumer: str, options: dict[str, Any] | None) -> Callable[[], Runner]:
    def factory() -> Runner:
        from streamkit import Run, collect, filter_, map_

        pipeline = map_(inc) | filter_(not_multiple_of_3) | map_(double)
        if options is not None:
            Run(pipeline, [], **options)  # unknown options make the competitor "n/a"

        async def bare(n: int) -> object:
            if consumer == "async_for":
                return await drain_sum(arange(n) | pipeline)
            if consumer == "collect":
                items = await collect(range(n) | pipeline)
                return len(items), sum(items)
            count = 0
            async for _ in arange(n) | pipeline:  # what streamkit.drain does, counted
                count += 1
            return count

        async def watched(n: int) -> object:
            assert options is not None
            source = range(n) if consumer == "collect" else arange(n)
            run = Run(pipeline, source, **options)
            if consumer == "async_for":
                return await drain_sum(run)
            if consumer == "collect":
                items = await run.collect()
                return len(items), sum(items)
            return (await run.drain()).items_out

        return bare if options is None else watched

    return factory


def _targets() -> list[Target]:
    targets: list[Target] = []
    for consumer, label in CONSUMERS.items():
        targets.append(
            Target(
                f"metrics disabled within 2 % of the bare flow ({label})",
                f"disabled {DIVIDE} bare",
                lambda result, key=f"{consumer}_disabled": result.ratio(key),
                DISABLED_LIMIT,
            )
        )
    for consumer, label in CONSUMERS.items():
        targets.append(
            Target(
                f"metrics enabled within 20 % of the bare flow ({label})",
                f"enabled {DIVIDE} bare",
                lambda result, key=f"{consumer}_enabled": result.ratio(key),
                ENABLED_LIMIT,
            )
        )
    return targets


@case("j", "the cost of watching a run (`Run`) of map → filter → map", *_targets())
def run_overhead(settings: Settings) -> CaseResult:
    n = settings.size(1_000_000, 2_000)
    rows: list[Row] = []
    for consumer, consumer_label in CONSUMERS.items():
        competitors = [
            Competitor(
                f"{consumer}_{mode}",
                f"{consumer_label}: {label}",
                _runner(consumer, options),
                group=consumer,
                reference=mode == "bare",
            )
            for mode, (label, options) in MODES.items()
        ]
        rows += timing_rows(
            time_competitors(competitors, n, settings, _verify), over_reference=True
        )
    return partial_result(
        f"{PIPELINE} over {n:,} ints, consumed three ways, each timed bare (the flow "
        "itself) and through a `Run`: with metrics disabled (no hooks, no history: the stage "
        "runs untouched), enabled (per-step counts from the fused segment's own counters, "
        'call times sampled) and with `timing="full"` (every call timed). The ratio is the '
        f"run's median {DIVIDE} the bare flow's median for the same consumer (above 1 = the "
        "run costs more).",
        f"n = {n:,}",
        ("consumer: mode", "median ms", "fastest to slowest ms", f"run {DIVIDE} bare flow"),
        rows,
    )
