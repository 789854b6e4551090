from __future__ import annotations

import json
import math
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamkit import filter_, map_
from streamkit._metrics import QuantileSketch, RunStatistics, StageStatistics, to_prometheus
from streamkit._run import Run

values = st.floats(min_value=1e-6, max_value=1e6, allow_nan=False, allow_infinity=False)
quantiles = st.sampled_from([0.0, 0.01, 0.25, 0.5, 0.9, 0.95, 0.99, 1.0]) | st.floats(0, 1)


@given(st.lists(values, min_size=1, max_size=500), quantiles, st.sampled_from([0.01, 0.02, 0.05]))
def test_sketch_is_within_its_relative_error(data: list[float], q: float, alpha: float) -> None:
    sketch = QuantileSketch(relative_accuracy=alpha)
    for value in data:
        sketch.add(value)
    exact = sorted(data)[math.floor(q * (len(data) - 1))]
    estimate = sketch.quantile(q)
    assert estimate is not None
    assert abs(estimate - exact) <= alpha * exact * (1 + 1e-9)
    assert sketch.count == len(data)


@given(st.lists(st.floats(0, 1e-10) | values, min_size=1, max_size=200), quantiles)
def test_sketch_counts_tiny_values_as_zero(data: list[float], q: float) -> None:
    sketch = QuantileSketch()
    for value in data:
        sketch.add(value)
    exact = sorted(data)[math.floor(q * (len(data) - 1))]
    estimate = sketch.quantile(q)
    assert estimate is not None
    if exact <= 1e-9:
        assert estimate == 0.0
    else:
        assert abs(estimate - exact) <= 0.01 * exact * (1 + 1e-9)


def test_sketch_memory_is_bounded() -> None:
    sketch = QuantileSketch(max_buckets=16)
    for k in range(-40, 40):
        sketch.add(10.0**k / 10**20 + 1e-8)
    assert len(sketch._buckets) <= 16  # pyright: ignore[reportPrivateUsage]
    assert sketch.count == 80
    top = sketch.quantile(1.0)
    assert top is not None
    assert abs(top - (10.0**39 / 10**20 + 1e-8)) <= 0.01 * top * 1.001


def test_sketch_arguments() -> None:
    assert QuantileSketch().quantile(0.5) is None
    with pytest.raises(ValueError, match="relative_accuracy"):
        QuantileSketch(relative_accuracy=1.5)
    with pytest.raises(TypeError, match="relative_accuracy"):
        QuantileSketch(relative_accuracy="0.1")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    with pytest.raises(ValueError, match="max_buckets"):
        QuantileSketch(max_buckets=2)
    with pytest.raises(ValueError, match="non-negative"):
        QuantileSketch().add(-1.0)
    with pytest.raises(ValueError, match="q must"):
        QuantileSketch().quantile(2)


async def finished_statistics() -> RunStatistics:
    run = Run(map_(int) | filter_(bool), ["0", "1", "2"], name="demo")
    await run.collect()
    return run.statistics()


async def test_snapshots_are_frozen_and_round_trip_through_json() -> None:
    stats = await finished_statistics()
    assert isinstance(stats.stages, tuple)
    with pytest.raises(AttributeError):
        stats.status = "x"  # type: ignore[misc]  # pyright: ignore[reportAttributeAccessIssue]
    data = stats.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert json.loads(stats.to_json()) == data
    rebuilt = RunStatistics(
        **{**data, "stages": tuple(StageStatistics(**entry) for entry in data["stages"])}
    )
    assert rebuilt == stats
    with pytest.raises(KeyError):
        stats.stage("nope")


PROMETHEUS_LINE = re.compile(
    r"# HELP [a-z_]+ .+|# TYPE [a-z_]+ (counter|gauge|summary)"
    r'|[a-z_]+\{run_id="[^"]+"(,stage="(\\.|[^"\\])*")?(,quantile="[0-9.]+")?\} '
    r"(-?[0-9.e+-]+|NaN)"
)


async def test_prometheus_text_format() -> None:
    stats = await finished_statistics()
    text = to_prometheus(stats)
    assert text.endswith("\n")
    lines = text.splitlines()
    for line in lines:
        assert PROMETHEUS_LINE.fullmatch(line), line
    run_label = f'run_id="{stats.run_id}"'
    assert f"streamkit_run_items_out_total{{{run_label}}} 2" in lines
    assert f'streamkit_stage_filtered_total{{{run_label},stage="filter_(bool)"}} 1' in lines
    assert f'streamkit_stage_items_in_total{{{run_label},stage="map_(int)"}} 3' in lines
    assert f"streamkit_run_status{{{run_label}}} 3" in lines
    summary = [line for line in lines if line.startswith("streamkit_stage_call_seconds{")]
    assert len(summary) == 6  # 3 quantiles x 2 stages
    # Every metric family is declared once, before its samples.
    declared = [line.split()[2] for line in lines if line.startswith("# TYPE")]
    assert len(declared) == len(set(declared))
    assert to_prometheus(stats, prefix="app").startswith("# HELP app_run_items_out_total")


def test_prometheus_escapes_labels() -> None:
    stage = StageStatistics(key='odd "x"\\', label="x", kind="map", status="pending")
    stats = RunStatistics(
        run_id="r",
        name=None,
        version="0",
        config_hash="h",
        status="pending",
        started_at=None,
        wall_time=0.0,
        items_out=0,
        stages=(stage,),
    )
    assert 'stage="odd \\"x\\"\\\\"' in to_prometheus(stats)
    with pytest.raises(TypeError, match="stats"):
        to_prometheus({})  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
