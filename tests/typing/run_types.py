"""Static checks for runs and their metrics (mypy --strict and pyright strict).

Nothing here runs: pytest does not collect this file and the functions are
never called. ``assert_type`` fails the type checkers when a type drifts.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any, assert_type

from streamkit import (
    HookError,
    Hooks,
    Run,
    RunStatus,
    StateUpdate,
    config_hash,
    filter_,
    map_,
    take,
)
from streamkit._metrics import QuantileSketch, RunStatistics, StageStatistics, to_prometheus


def parse(text: str) -> int:
    return int(text)


def valid(value: int) -> bool:
    return value > 0


async def check_run_item_types() -> None:
    run = Run(map_(parse) | filter_(valid), ["1", "2"])
    assert_type(run, Run[int])
    assert_type(await run.collect(), list[int])
    async for item in run:
        assert_type(item, int)
    async with Run(map_(str), range(3)) as texts:
        assert_type(texts, Run[str])
    assert_type(Run(take(2), range(3)), Run[Any])


async def check_run_surface() -> None:
    run = Run(
        map_(parse),
        ["1"],
        name="nightly",
        hooks=Hooks(on_item=print),
        metrics=True,
        state_history=Path("runs"),
        version="1.0",
    )
    assert_type(run.id, str)
    assert_type(run.name, str | None)
    assert_type(run.version, str)
    assert_type(run.config_hash, str)
    assert_type(run.started_at, float | None)
    assert_type(run.status, RunStatus)
    assert_type(run.history_path, Path | None)
    assert_type(run.hook_errors, tuple[HookError, ...])
    assert_type(run.pause(), None)
    assert_type(run.resume(), Awaitable[None])
    assert_type(await run.drain(), RunStatistics)
    assert_type(run.events(rate=2.0), AsyncIterator[StateUpdate])
    assert_type(config_hash(map_(parse)), str)


def check_statistics(stats: RunStatistics) -> None:
    assert_type(stats.stages, tuple[StageStatistics, ...])
    assert_type(stats.stage("map_(parse)"), StageStatistics)
    assert_type(stats.stages[0].time_p99, float | None)
    assert_type(stats.to_dict(), dict[str, Any])
    assert_type(stats.to_json(), str)
    assert_type(to_prometheus(stats), str)
    sketch = QuantileSketch(relative_accuracy=0.02)
    assert_type(sketch.quantile(0.5), float | None)


def check_hooks_accept_sync_and_async() -> None:
    async def on_end(stats: RunStatistics) -> None:
        del stats

    def on_error(stage: StageStatistics | None, error: BaseException) -> None:
        del stage, error

    Hooks(on_run_end=on_end, on_error=on_error, on_stage_start=lambda stage: stage.key)
