"""``name=`` labels a stage: statistics, events, errors, error records and the history show it."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest

from streamkit import (
    BRANCH,
    Checkpoint,
    CheckpointError,
    ErrorReport,
    Hooks,
    Key,
    MemoryStore,
    Run,
    StageStatistics,
    branch,
    buffer,
    chunk,
    collect,
    debounce,
    distinct,
    enumerate_,
    envelop,
    failures,
    filter_,
    flat_map,
    flatten,
    fork,
    map_,
    pairwise,
    reduce_point,
    resumable,
    scan,
    scan_state,
    set_state,
    skip,
    skip_while,
    spaced,
    successes,
    take,
    take_while,
    tap,
    throttle,
    timeout,
    unwrap,
    window,
    with_retry,
)

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from streamkit import Stage

TOTAL = Key[int]("total")


def parse(text: str) -> int:
    return int(text)


def keep(n: int) -> bool:
    return n % 3 != 0


def add(total: int, n: int) -> int:
    return total + n


def fails_at_3(n: int) -> int:
    if n == 3:
        raise ValueError("no 3")
    return n


NAMED: list[tuple[Callable[..., Stage[Any, Any]], str]] = [
    (lambda name: map_(parse, name=name), "map_(parse)"),
    (lambda name: map_(parse, concurrency=2, name=name), "map_(parse, concurrency=2)"),
    (lambda name: filter_(keep, name=name), "filter_(keep)"),
    (lambda name: filter_(keep, concurrency=2, name=name), "filter_(keep, concurrency=2)"),
    (lambda name: tap(print, name=name), "tap(print)"),
    (lambda name: flat_map(range, name=name), "flat_map(range)"),
    (lambda name: flat_map(range, concurrency=2, name=name), "flat_map(range, concurrency=2)"),
    (lambda name: map_(parse, on_error="skip", name=name), "map_(parse, on_error='skip')"),
    (lambda name: scan(add, 0, name=name), "scan(add)"),
    (lambda name: take(2, name=name), "take(2)"),
    (lambda name: skip(2, name=name), "skip(2)"),
    (lambda name: chunk(2, name=name), "chunk(2)"),
    (lambda name: chunk(2, within=1.0, name=name), "chunk(2, within=1)"),
    (lambda name: window(2, name=name), "window(2, step=1)"),
    (lambda name: pairwise(name=name), "pairwise()"),
    (lambda name: reduce_point(TOTAL, add, 0, name=name), "reduce_point('total', add)"),
    (lambda name: scan_state(TOTAL, add, 0, name=name), "scan_state('total', add)"),
    (lambda name: set_state(TOTAL, parse, name=name), "set_state('total', parse)"),
    (lambda name: envelop(name=name), "envelop()"),
    (lambda name: unwrap(name=name), "unwrap()"),
    (lambda name: flatten(name=name), "flatten()"),
    (lambda name: enumerate_(name=name), "enumerate_(0)"),
    (lambda name: take_while(keep, name=name), "take_while(keep)"),
    (lambda name: skip_while(keep, name=name), "skip_while(keep)"),
    (lambda name: distinct(name=name), "distinct()"),
    (lambda name: buffer(2, name=name), "buffer(2)"),
    (lambda name: throttle(2, name=name), "throttle(2, 1)"),
    (lambda name: spaced(1, name=name), "spaced(1)"),
    (lambda name: debounce(1, name=name), "debounce(1)"),
    (lambda name: timeout(1, name=name), "timeout(1)"),
    (lambda name: with_retry(map_(parse), name=name), "with_retry(map_(parse), attempts=3)"),
    (lambda name: successes(name=name), "successes()"),
    (lambda name: failures(name=name), "failures()"),
    (lambda name: fork(map_(parse), take(2), name=name), "fork(0=map_(parse), 1=take(2))"),
    (
        lambda name: branch(totals=scan(add, 0), name=name, combine="zip"),
        "branch(totals=scan(add))",
    ),
]


async def test_a_branch_called_name_is_given_in_the_mapping() -> None:
    split = branch({"name": map_(parse)}, other=map_(parse), name="split")
    assert split.label == "split"
    items = await collect(["1"] | split)
    assert sorted(item.state[BRANCH] for item in items) == ["name", "other"]


@pytest.mark.parametrize(("build", "default"), NAMED)
def test_name_is_the_stage_label(build: Callable[..., Stage[Any, Any]], default: str) -> None:
    assert build(None).label == default
    assert build("my step").label == "my step"
    assert repr(build("my step")) == "<Stage my step>"


@pytest.mark.parametrize(("build", "default"), NAMED)
@pytest.mark.parametrize(
    ("name", "error"), [(3, TypeError), ("", ValueError), ("a\nb", ValueError)]
)
def test_a_bad_name_is_refused_when_the_stage_is_built(
    build: Callable[..., Stage[Any, Any]], default: str, name: object, error: type[Exception]
) -> None:
    with pytest.raises(error, match=r"^name must be"):
        build(name)


async def test_names_show_in_the_run_statistics_and_events() -> None:
    ended: list[StageStatistics] = []
    pipeline = (
        map_(parse, name="parse")
        | filter_(keep, name="drop threes")
        | reduce_point(TOTAL, add, 0, name="grand total")
        | chunk(2, name="pairs")
    )
    run = Run(pipeline, ["1", "2", "3", "4"], hooks=Hooks(on_stage_end=ended.append))
    batches = await run.collect()
    assert [list(batch.value) for batch in batches] == [[1, 2], [4]]
    stages = run.statistics().stages
    assert [(s.key, s.label) for s in stages] == [
        ("parse", "parse"),
        ("drop threes", "drop threes"),
        ("grand total", "grand total"),
        ("pairs", "pairs"),
    ]
    assert run.statistics().stage("drop threes").filtered == 1
    assert sorted(s.label for s in ended) == ["drop threes", "grand total", "pairs", "parse"]


async def test_the_same_name_twice_gets_an_index() -> None:
    run = Run(map_(parse, name="step") | map_(fails_at_3, name="step"), ["1", "2"])
    await run.drain()
    assert [s.key for s in run.statistics().stages] == ["step#0", "step#1"]


@pytest.mark.parametrize("concurrency", [1, 2])
async def test_an_error_note_names_the_stage(concurrency: int) -> None:
    stage = map_(fails_at_3, concurrency=concurrency, name="validate")
    with pytest.raises(ValueError, match="no 3") as caught:
        await collect(range(5) | stage)
    assert caught.value.__notes__ == ["streamkit: raised by validate on item 3 of its input"]


async def test_error_records_and_the_report_use_the_name() -> None:
    report = ErrorReport()
    stage = map_(fails_at_3, on_error="collect", report=report, name="validate")
    assert await collect(range(5) | stage) == [0, 1, 2, 4]
    (record,) = report.records
    assert record.stage == "validate"
    assert report.statistics("validate").failed == 1


async def test_the_history_shows_the_names(tmp_path: Path) -> None:
    pipeline = map_(parse, name="parse") | map_(fails_at_3, name="validate")
    run = Run(pipeline, ["1", "3"], state_history=tmp_path)
    with pytest.raises(ValueError, match="no 3"):
        await run.drain()
    folder = tmp_path / run.id
    start = json.loads((folder / "run_start.json").read_text())
    assert [s["label"] for s in start["stages"]] == ["parse", "validate"]
    failures = json.loads((folder / "stage_1_failures.json").read_text())
    assert failures["stage"] == "validate"
    final = json.loads((folder / "final.json").read_text())
    assert [s["label"] for s in final["statistics"]["stages"]] == ["parse", "validate"]


async def test_a_retried_stage_is_named_in_its_error_records() -> None:
    report = ErrorReport()
    stage = with_retry(
        map_(fails_at_3), attempts=2, on_error="collect", report=report, name="checked"
    )
    assert await collect(range(5) | stage) == [0, 1, 2, 4]
    (record,) = report.records
    assert (record.stage, record.attempts) == ("checked", 2)


async def test_named_stages_behave_as_unnamed_ones() -> None:
    items = [[1, 2], [3]]
    named = flatten(name="a") | enumerate_(name="b") | unwrap(name="c")
    plain = flatten() | enumerate_() | unwrap()
    assert await collect(items | envelop(name="d") | named) == await collect(
        items | envelop() | plain
    )


async def test_renaming_a_stage_is_a_shape_change_that_migrate_can_accept() -> None:
    # The shape of a checkpoint holds the steps' labels: a name is part of it.
    store = MemoryStore()
    first = Run(
        scan(add, 0, name="total"), resumable([1, 2, 3, 4]), name="r", checkpoint=store, every=1
    )
    first_items: list[int] = []
    async with first:
        async for running in first:
            first_items.append(running)
            if running == 3:
                break
    saved = first.last_checkpoint
    assert saved is not None
    assert "0 total" in saved.shape
    renamed = scan(add, 0, name="running total")
    with pytest.raises(CheckpointError, match="another shape: it has '0 total'"):
        await Run(renamed, resumable([1, 2, 3, 4]), name="r", checkpoint=store).collect()

    def rename(old: Checkpoint) -> Checkpoint:
        shape = tuple(line.replace("0 total", "0 running total") for line in old.shape)
        return old.replace(shape=shape)

    resumed = Run(renamed, resumable([1, 2, 3, 4]), name="r", checkpoint=store, migrate=rename)
    rest = await resumed.collect()
    assert first_items[: saved.items] + rest == [1, 3, 6, 10]
