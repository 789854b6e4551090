"""Per-step counts of a run add up, whatever fails, however concurrent.

The invariant (docs/observability.md, "Statistics"), for every step once the
run has ended (``in_flight == 0``):

* ``map_``, ``filter_``: ``items_in == items_out + filtered + errors + abandoned``
* ``flat_map`` (``items_out`` counts inner elements): ``items_in >= errors +
  abandoned``, and with nothing failed or abandoned, ``items_out`` is the sum
  of the inner lengths.

``errors`` counts items given up on (an item retried and then succeeded is no
error); ``skipped`` is part of ``errors``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamkit import Run, constant, filter_, flat_map, map_, to_prometheus, with_retry

if TYPE_CHECKING:
    from streamkit import Stage, StageStatistics


class Boom(Exception):
    """The error the test functions raise."""


@dataclass
class Flaky:
    """Fails item ``x`` its first ``failures[x]`` calls, then succeeds."""

    failures: dict[int, int]

    def __post_init__(self) -> None:
        self.calls: dict[int, int] = {}

    async def check(self, x: int) -> None:
        await asyncio.sleep(0)
        seen = self.calls.get(x, 0)
        self.calls[x] = seen + 1
        if seen < self.failures.get(x, 0):
            raise Boom(x)

    async def double(self, x: int) -> int:
        await self.check(x)
        return 2 * x

    async def even(self, x: int) -> bool:
        await self.check(x)
        return x % 2 == 0

    async def pair(self, x: int) -> list[int]:
        await self.check(x)
        return [x] * (x % 3)


Kind = Literal["map", "filter", "flat_map"]
Strategy = Literal["fail", "skip", "retry-fail", "retry-skip"]


def build(flaky: Flaky, kind: Kind, concurrency: int, ordered: bool, strategy: Strategy) -> Any:
    on_error: Literal["fail", "skip"] = "skip" if strategy.endswith("skip") else "fail"
    inner = on_error if not strategy.startswith("retry") else "fail"
    options: dict[str, Any] = {"concurrency": concurrency, "ordered": ordered}
    if kind == "map":
        stage: Stage[int, Any] = map_(flaky.double, on_error=inner, **options)
    elif kind == "filter":
        stage = filter_(flaky.even, on_error=inner, **options)
    elif concurrency > 1:
        stage = flat_map(flaky.pair, on_error=inner, **options)
    else:
        stage = flat_map(flaky.pair, on_error=inner)
    if strategy.startswith("retry"):
        stage = with_retry(stage, attempts=2, backoff=constant(0), on_error=on_error)
    return stage


def assert_consistent(stats: StageStatistics) -> None:
    assert stats.in_flight == 0, stats
    assert stats.errors >= stats.skipped, stats
    if stats.kind == "flat_map":
        assert stats.items_in >= stats.errors + stats.abandoned, stats
    else:
        done = stats.items_out + stats.filtered + stats.errors + stats.abandoned
        assert stats.items_in == done, stats


async def drive(stage: Any, items: list[int], stop_after: int | None) -> list[StageStatistics]:
    run = Run(stage, items)
    try:
        if stop_after is None:
            await run.collect()
            return list(run.statistics().stages)
        async with run:
            got = 0
            async for _ in run:
                got += 1
                if got >= stop_after:
                    break
    except Boom:
        pass
    return list(run.statistics().stages)


@settings(max_examples=150, deadline=None)
@given(
    n=st.integers(0, 16),
    failures=st.dictionaries(st.integers(0, 15), st.integers(1, 3), max_size=6),
    kind=st.sampled_from(["map", "filter", "flat_map"]),
    concurrency=st.integers(1, 8),
    ordered=st.booleans(),
    strategy=st.sampled_from(["fail", "skip", "retry-fail", "retry-skip"]),
    stop_after=st.none() | st.integers(1, 6),
    fused_after=st.booleans(),
)
def test_counts_add_up_for_every_step(
    n: int,
    failures: dict[int, int],
    kind: Kind,
    concurrency: int,
    ordered: bool,
    strategy: Strategy,
    stop_after: int | None,
    fused_after: bool,
) -> None:
    flaky = Flaky(failures)
    stage = build(flaky, kind, concurrency, ordered, strategy)
    if fused_after:
        # A fused step behind it, failing on its own items.
        stage = stage | map_(Flaky(dict.fromkeys(failures, 1)).double)
    # A deadlock fails the example (and hypothesis shrinks it) instead of hanging the suite.
    stages = asyncio.run(asyncio.wait_for(drive(stage, list(range(n)), stop_after), 30))
    for stats in stages:
        assert_consistent(stats)
    first = stages[0]
    if strategy.startswith("retry"):
        # Items retried and then recovered are not errors.
        gave_up = sum(1 for x in range(first.items_in) if failures.get(x, 0) >= 2)
        assert first.errors <= gave_up, first
    if strategy.endswith("skip") and stop_after is None and not fused_after:
        assert first.items_in == n
        assert first.abandoned == 0
        limit = 1 if strategy.startswith("retry") else 0
        assert first.errors == sum(1 for x in range(n) if failures.get(x, 0) > limit)
        assert first.skipped == first.errors


@pytest.mark.parametrize("ordered", [True, False])
@pytest.mark.parametrize("kind", ["map", "filter", "flat_map"])
async def test_failing_concurrent_step_counts_each_error_once(ordered: bool, kind: Kind) -> None:
    """Every item fails: 4 items in (the concurrency), so at most 4 errors, not 5."""
    flaky = Flaky(dict.fromkeys(range(10), 99))
    stage = build(flaky, kind, 4, ordered, "fail")
    stats = (await drive(stage, list(range(10)), None))[0]
    assert (stats.items_in, stats.items_out, stats.errors) == (4, 0, 4)
    assert stats.status == "failed"
    assert_consistent(stats)


async def test_concurrent_filter_counts_only_rejected_items_as_filtered() -> None:
    flaky = Flaky({3: 99})
    stats = (await drive(filter_(flaky.even, concurrency=3), list(range(10)), None))[0]
    assert stats.errors == 1
    # Flaky.check records a call only as it ends (no await after), so calls = ended calls.
    rejected = [x for x in flaky.calls if x % 2 == 1 and x != 3]
    assert stats.filtered == len(rejected)
    assert_consistent(stats)


async def test_items_left_unfinished_by_a_failure_are_abandoned() -> None:
    flaky = Flaky({0: 99})
    stats = (await drive(map_(flaky.double, concurrency=3), list(range(10)), None))[0]
    assert stats.items_out == 0
    assert stats.errors == 1
    assert stats.abandoned == stats.items_in - 1 > 0


async def test_abandoned_items_are_exported() -> None:
    flaky = Flaky({0: 99})
    run = Run(map_(flaky.double, concurrency=3, name="double"), list(range(10)))
    with pytest.raises(Boom):
        await run.collect()
    stats = run.statistics()
    abandoned = stats.stages[0].abandoned
    assert abandoned > 0
    lines = to_prometheus(stats).splitlines()
    assert any(
        line.startswith("streamkit_stage_abandoned_total{")
        and 'stage="double"' in line
        and line.endswith(f" {abandoned}")
        for line in lines
    ), lines
    assert stats.to_dict()["stages"][0]["abandoned"] == abandoned
