from __future__ import annotations

import asyncio
import json
import logging
import re
from typing import TYPE_CHECKING, Any

import pytest

from streamkit import (
    ErrorReport,
    HookError,
    Hooks,
    Run,
    StateUpdate,
    collect,
    config_hash,
    constant,
    filter_,
    flat_map,
    map_,
    stage,
    take,
    tap,
    with_retry,
)
from streamkit.testing import (
    SourceError,
    TrackedSource,
    assert_no_pending_tasks,
    virtual_clock,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from streamkit._metrics import RunStatistics


def inc(x: int) -> int:
    return x + 1


def odd(x: int) -> bool:
    return x % 2 == 1


def double(x: int) -> int:
    return x * 2


def boom(x: int) -> int:
    if x == 2:
        raise KeyError(x)
    return x


@stage
async def pairs(items: AsyncIterator[int]) -> AsyncIterator[int]:
    async for item in items:
        yield item
        yield item


# --------------------------------------------------------------------------- basics


async def test_collect_and_metrics_of_fused_steps() -> None:
    run = Run(map_(inc) | filter_(odd) | map_(double), range(10))
    assert run.status == "pending"
    assert await run.collect() == [2, 6, 10, 14, 18]
    stats = run.statistics()
    assert stats.status == "succeeded"
    assert stats.items_out == 5
    assert [(s.key, s.kind, s.items_in, s.items_out, s.filtered) for s in stats.stages] == [
        ("map_(inc)", "map", 10, 10, 0),
        ("filter_(odd)", "filter", 10, 5, 5),
        ("map_(double)", "map", 5, 5, 0),
    ]
    assert all(s.status == "succeeded" for s in stats.stages)
    assert stats.stages[0].timed_calls == 1  # the 1st call of 10 (one in 16 is timed)
    assert stats.stages[0].time_p50 is not None


async def test_async_for_and_async_with() -> None:
    async with Run(map_(inc), [1, 2]) as run:
        got = [item async for item in run]
    assert got == [2, 3]
    assert run.status == "succeeded"


async def test_drain_returns_final_statistics() -> None:
    stats = await Run(map_(inc) | take(3), range(100)).drain()
    assert stats.status == "succeeded"
    assert stats.items_out == 3


async def test_single_use() -> None:
    run = Run(map_(inc), [1])
    await run.collect()
    with pytest.raises(RuntimeError, match="single-use"):
        await run.collect()
    with pytest.raises(RuntimeError, match="single-use"):
        run.__aiter__()


async def test_identity_fields() -> None:
    first = Run(map_(inc), [1], name="nightly", version="2.1")
    second = Run(map_(inc), [1])
    assert re.fullmatch(r"[0-9]{8}T[0-9]{12}Z-nightly-[0-9a-f]{8}", first.id)
    assert first.id != second.id
    assert first.name == "nightly"
    assert first.version == "2.1"
    assert second.version == "0"
    assert first.config_hash == second.config_hash == config_hash(map_(inc))
    assert re.fullmatch(r"[0-9a-f]{16}", first.config_hash)
    assert first.started_at is None
    await first.collect()
    assert isinstance(first.started_at, float)
    ids = [Run(map_(inc), [1]).id for _ in range(50)]
    assert len(set(ids)) == 50


def test_config_hash_sees_options() -> None:
    assert config_hash(map_(inc, concurrency=2)) != config_hash(map_(inc, concurrency=4))
    assert config_hash(map_(inc) | filter_(odd)) != config_hash(filter_(odd) | map_(inc))


def test_bad_arguments_name_the_parameter() -> None:
    with pytest.raises(TypeError, match="pipeline"):
        Run(inc, [1])  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    with pytest.raises(TypeError, match="source"):
        Run(map_(inc), 3)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    with pytest.raises(TypeError, match="metrics"):
        Run(map_(inc), [1], metrics=1)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    with pytest.raises(TypeError, match="version"):
        Run(map_(inc), [1], version=2)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    with pytest.raises(TypeError, match="hooks"):
        Run(map_(inc), [1], hooks=print)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    with pytest.raises(ValueError, match="hooks"):
        Run(map_(inc), [1], hooks={"on_itme": print})
    with pytest.raises(TypeError, match="on_item"):
        Hooks(on_item=3)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    with pytest.raises(TypeError, match="state_history"):
        Run(map_(inc), [1], state_history=3)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    with pytest.raises(TypeError, match="rate"):
        Run(map_(inc), [1]).events(rate="4")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    with pytest.raises(ValueError, match="rate"):
        Run(map_(inc), [1]).events(rate=0)


@pytest.mark.parametrize(
    "name", ["../x", "a/b", "/etc/passwd", "..", ".hidden", "a\\b", "", "x" * 65]
)
def test_hostile_names_are_rejected(name: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="name"):
        Run(map_(inc), [1], name=name, state_history=tmp_path)


async def test_duplicate_labels_get_an_index() -> None:
    run = Run(map_(inc) | map_(inc) | filter_(odd), range(4))
    await run.collect()
    keys = [s.key for s in run.statistics().stages]
    assert keys == ["map_(inc)#0", "map_(inc)#1", "filter_(odd)"]
    assert run.statistics().stage("map_(inc)#1").items_in == 4


# --------------------------------------------------------------------------- kinds of step


async def test_stage_generators_and_taps_are_counted() -> None:
    seen: list[int] = []
    run = Run(pairs() | tap(seen.append) | take(3), TrackedSource(range(10)))
    assert await run.collect() == [0, 0, 1]
    stats = run.statistics()
    assert [(s.kind, s.items_in, s.items_out) for s in stats.stages] == [
        ("transform", 2, 3),
        ("tap", 3, 3),
        ("transform", 3, 3),
    ]


async def test_concurrent_steps_count_calls_in_flight() -> None:
    peak = 0
    run: Run[int]

    async def slow(x: int) -> int:
        nonlocal peak
        peak = max(peak, run.statistics().stages[0].in_flight)
        await asyncio.sleep(0)
        return x * 10

    run = Run(map_(slow, concurrency=4), range(20))
    assert sorted(await run.collect()) == [x * 10 for x in range(20)]
    stats = run.statistics().stages[0]
    assert stats.kind == "map"
    assert (stats.items_in, stats.items_out, stats.in_flight) == (20, 20, 0)
    assert stats.timed_calls == 20
    assert 2 <= peak <= 4
    assert_no_pending_tasks()


async def test_concurrent_filter_and_flat_map() -> None:
    async def keep(x: int) -> bool:
        return x % 3 == 0

    run = Run(filter_(keep, concurrency=3) | flat_map(lambda x: [x, x]), range(9))
    assert sorted(await run.collect()) == [0, 0, 3, 3, 6, 6]
    first, second = run.statistics().stages
    assert (first.kind, first.items_in, first.items_out, first.filtered) == ("filter", 9, 3, 6)
    assert (second.kind, second.items_in, second.items_out) == ("flat_map", 3, 6)


async def test_async_item_functions() -> None:
    async def ainc(x: int) -> int:
        return x + 1

    async def aodd(x: int) -> bool:
        return x % 2 == 1

    run = Run(map_(ainc) | filter_(aodd), range(6))
    assert await run.collect() == [1, 3, 5]
    first, second = run.statistics().stages
    assert (first.items_in, first.items_out, first.in_flight) == (6, 6, 0)
    assert (second.items_in, second.items_out, second.filtered) == (6, 3, 3)


async def test_functions_returning_awaitables_are_classified() -> None:
    async def later(x: int) -> int:
        return x * 3

    def returns_awaitable(x: int) -> Any:
        return later(x)

    run = Run(map_(returns_awaitable), range(3))
    assert await run.collect() == [0, 3, 6]
    assert run.statistics().stages[0].items_out == 3


async def test_guarded_steps_read_the_error_report() -> None:
    attempts: dict[int, int] = {}

    def flaky(x: int) -> int:
        attempts[x] = attempts.get(x, 0) + 1
        if x % 4 == 0:
            raise ValueError(x)
        if attempts[x] < 2:
            raise ConnectionError(x)
        return x

    report = ErrorReport()
    guarded = with_retry(
        map_(flaky), attempts=3, backoff=constant(0), on_error="collect", report=report
    )
    # The report already counted another run: the run shows only its own counts.
    await collect(range(4, 5) | guarded)
    attempts.clear()
    run = Run(guarded, range(8))
    assert await run.collect() == [1, 2, 3, 5, 6, 7]
    stats = run.statistics().stages[0]
    assert stats.kind == "map"
    assert (stats.items_in, stats.items_out, stats.errors) == (8, 6, 2)
    assert stats.retries == 6 + 2 * 2
    assert stats.collected == 2
    assert stats.filtered == 0


async def test_guarded_concurrent_step_and_skips() -> None:
    def fails_on_three(x: int) -> int:
        if x == 3:
            raise ValueError(x)
        return x

    guarded = with_retry(
        map_(fails_on_three, concurrency=2), attempts=2, backoff=constant(0), on_error="skip"
    )
    run = Run(guarded, range(5))
    assert sorted(await run.collect()) == [0, 1, 2, 4]
    stats = run.statistics().stages[0]
    assert (stats.items_in, stats.items_out, stats.skipped, stats.retries) == (5, 4, 1, 1)
    assert stats.timed_calls == 6  # attempts
    assert stats.errors == 1


async def test_envelope_steps_keep_their_semantics() -> None:
    from streamkit import envelop, set_state

    pipeline = envelop() | set_state("n", lambda x: x) | map_(inc) | filter_(odd)
    plain = await collect(range(5) | pipeline)
    run = Run(pipeline, range(5))
    got = await run.collect()
    assert [(e.value, dict(e.state.items())) for e in got] == [
        (e.value, dict(e.state.items())) for e in plain
    ]
    assert run.statistics().stages[-1].items_out == len(plain)


async def test_metrics_off_passes_the_stage_through() -> None:
    pipeline = map_(inc) | filter_(odd)
    run = Run(pipeline, range(10), metrics=False)
    assert run._flow.stage is pipeline  # pyright: ignore[reportPrivateUsage]
    assert await run.collect() == [1, 3, 5, 7, 9]
    stats = run.statistics()
    assert (stats.status, stats.items_out) == ("succeeded", 5)
    assert stats.stages[0].items_in == 0
    with pytest.raises(RuntimeError, match="observed"):
        Run(pipeline, range(3), metrics=False).pause()
    other = Run(pipeline, range(4), metrics=False)
    assert [x async for x in other] == [1, 3]
    assert other.status == "succeeded"


# --------------------------------------------------------------------------- ends


async def test_failure_propagates_and_names_the_stage() -> None:
    errors: list[tuple[str | None, BaseException]] = []

    hooks = Hooks(on_error=lambda s, e: errors.append((None if s is None else s.key, e)))
    source = TrackedSource(range(5))
    run = Run(map_(inc) | map_(boom) | map_(double), source, hooks=hooks)
    with pytest.raises(KeyError):
        await run.collect()
    stats = run.statistics()
    assert stats.status == "failed"
    assert [s.status for s in stats.stages] == ["cancelled", "failed", "cancelled"]
    assert stats.stage("map_(boom)").errors == 1
    assert [(key, type(exc)) for key, exc in errors] == [("map_(boom)", KeyError)]
    source.assert_closed()


async def test_failure_of_a_stage_generator_and_of_the_source() -> None:
    @stage
    async def explode(items: AsyncIterator[int]) -> AsyncIterator[int]:
        async for item in items:
            if item == 1:
                raise OSError("disk")
            yield item

    run = Run(map_(inc) | explode(), range(5))
    with pytest.raises(OSError, match="disk"):
        await run.collect()
    assert [s.status for s in run.statistics().stages] == ["cancelled", "failed"]
    assert run.statistics().stages[1].errors == 1

    broken = TrackedSource(range(5), fail_at=1)
    run = Run(explode() | map_(inc), broken)
    with pytest.raises(SourceError):
        await run.collect()
    assert run.status == "failed"
    assert [s.status for s in run.statistics().stages] == ["cancelled", "cancelled"]
    assert run.statistics().stages[0].errors == 0


async def test_cancellation() -> None:
    started = asyncio.Event()
    closed: list[bool] = []

    async def forever() -> AsyncIterator[int]:
        i = 0
        try:
            while True:
                yield i
                i += 1
                if i == 3:
                    started.set()
                await asyncio.sleep(0.001)
        finally:
            closed.append(True)

    source = forever()
    run = Run(map_(inc, concurrency=2) | filter_(odd), source)
    task = asyncio.create_task(run.drain())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert run.status == "cancelled"
    assert {s.status for s in run.statistics().stages} == {"cancelled"}
    assert closed == [True]
    assert_no_pending_tasks()


async def test_early_exit_from_async_with_cancels() -> None:
    source = TrackedSource(range(100))
    async with Run(map_(inc), source) as run:
        async for item in run:
            if item == 3:
                break
    assert run.status == "cancelled"
    source.assert_closed()


@pytest.mark.parametrize("concurrency", [1, 2])
async def test_closing_an_unstarted_run(concurrency: int) -> None:
    source = TrackedSource(range(3))
    run = Run(map_(inc, concurrency=concurrency), source)
    await run.aclose()
    assert run.status == "cancelled"
    assert {s.status for s in run.statistics().stages} == {"cancelled"}
    source.assert_closed()
    with pytest.raises(RuntimeError, match="single-use"):
        await run.collect()


# --------------------------------------------------------------------------- pause


async def test_pause_holds_the_source_not_items_in_flight() -> None:
    with virtual_clock() as clock:
        source = TrackedSource(range(10))
        run = Run(map_(inc), source)
        got: list[tuple[float, int]] = []

        async def consume() -> None:
            async for item in run:
                got.append((clock.now(), item))
                if item == 3:
                    run.pause()

        async def resume_later() -> None:
            await clock.sleep(5)
            assert run.status == "paused"
            assert source.pulls == 3
            await run.resume()
            assert run.status == "running"

        await asyncio.gather(consume(), resume_later())
    assert [item for _, item in got] == list(range(1, 11))
    assert [t for t, item in got if item <= 3] == [0.0, 0.0, 0.0]
    assert [t for t, item in got if item > 3] == [5.0] * 7
    assert run.status == "succeeded"


async def test_pause_before_start_and_cancel_while_paused() -> None:
    with virtual_clock():
        source = TrackedSource(range(10))
        run = Run(map_(inc), source)
        run.pause()
        assert run.status == "paused"
        task = asyncio.create_task(run.collect())
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert source.pulls == 0
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert run.status == "cancelled"
        source.assert_closed()
        assert_no_pending_tasks()


# --------------------------------------------------------------------------- hooks


async def test_hooks_order_sync_and_async() -> None:
    calls: list[str] = []

    async def on_run_end(stats: RunStatistics) -> None:
        await asyncio.sleep(0)
        calls.append(f"run_end {stats.status} {stats.items_out}")

    hooks = Hooks(
        on_run_start=lambda s: calls.append(f"run_start {s.status}"),
        on_stage_start=lambda s: calls.append(f"stage_start {s.key} {s.status}"),
        on_item=lambda item: calls.append(f"item {item}"),
        on_stage_end=lambda s: calls.append(f"stage_end {s.key} {s.status}"),
        on_run_end=on_run_end,
    )
    await Run(map_(inc) | filter_(odd), range(4), hooks=hooks).collect()
    assert calls == [
        "run_start running",
        "stage_start map_(inc) executing",
        "stage_start filter_(odd) executing",
        "item 1",
        "item 3",
        "stage_end map_(inc) succeeded",
        "stage_end filter_(odd) succeeded",
        "run_end succeeded 2",
    ]


async def test_hooks_as_a_mapping() -> None:
    ends: list[str] = []
    await Run(map_(inc), [1], hooks={"on_run_end": lambda s: ends.append(s.status)}).collect()
    assert ends == ["succeeded"]


async def test_raising_hooks_are_reported_never_fatal(caplog: pytest.LogCaptureFixture) -> None:
    async def bad_async(item: object) -> None:
        raise RuntimeError(f"async {item}")

    def bad(*args: object) -> None:
        raise ValueError("sync")

    hooks = Hooks(on_run_start=bad, on_item=bad_async, on_stage_end=bad, on_run_end=bad)
    with caplog.at_level(logging.ERROR, logger="streamkit.run"):
        run = Run(map_(inc) | map_(double), range(3), hooks=hooks)
        assert await run.collect() == [2, 4, 6]
    assert run.status == "succeeded"
    names = [error.hook for error in run.hook_errors]
    assert names == ["on_run_start", "on_item", "on_item", "on_item"] + ["on_stage_end"] * 2 + [
        "on_run_end"
    ]
    assert all(isinstance(error, HookError) for error in run.hook_errors)
    assert isinstance(run.hook_errors[1].exception, RuntimeError)
    assert len([r for r in caplog.records if r.name == "streamkit.run"]) == 7


# --------------------------------------------------------------------------- events


async def ticking(n: int, every: float) -> AsyncIterator[int]:
    from streamkit import current_clock

    clock = current_clock()
    for i in range(n):
        await clock.sleep(every)
        yield i


async def test_events_are_throttled_exactly_under_the_virtual_clock() -> None:
    with virtual_clock():
        run = Run(map_(inc) | filter_(odd), ticking(7, 0.125))
        updates: list[StateUpdate] = []

        async def watch() -> None:
            async for update in run.events(rate=4.0):
                updates.append(update)

        watcher = asyncio.create_task(watch())
        await asyncio.sleep(0)
        await run.collect()
        await watcher
    stamps = [update["timestamp"] for update in updates]
    # Ticks every 0.25 s, then the final state at once when the run ends (at 0.875).
    assert stamps == [0.0, 0.25, 0.5, 0.75, 0.875]
    assert updates[0]["payload"]["run.status"] == "pending"
    assert updates[1]["payload"]["stages.map_(inc).items_in"] == 2
    assert updates[-1]["payload"]["run.status"] == "succeeded"
    assert "stages.map_(inc).items_in" in updates[-1]["update_mask"]
    for update in updates:
        assert update["event_type"] == "state_update"
        assert set(update["update_mask"]) == set(update["payload"])
        json.dumps(update)
    # Field-level diffs: unchanged fields are not repeated.
    assert "run.id" in updates[0]["update_mask"]
    assert all("run.id" not in update["update_mask"] for update in updates[1:])
    assert_no_pending_tasks()


async def test_events_at_another_rate() -> None:
    with virtual_clock():
        run = Run(map_(inc), ticking(5, 1.0))
        watcher = asyncio.create_task(collect(run.events(rate=0.5)))
        await asyncio.sleep(0)
        await run.drain()
        updates = await watcher
    assert [u["timestamp"] for u in updates] == [0.0, 2.0, 4.0, 5.0]


async def test_statistics_during_a_run() -> None:
    with virtual_clock() as clock:
        run = Run(map_(inc) | filter_(odd), ticking(8, 1.0))
        seen: list[tuple[float, str, int, int]] = []
        async for item in run:
            stats = run.statistics()
            seen.append((clock.now(), stats.status, stats.items_out, stats.stages[0].items_in))
            assert item % 2 == 1
    assert seen == [
        (1.0, "running", 1, 1),
        (3.0, "running", 2, 3),
        (5.0, "running", 3, 5),
        (7.0, "running", 4, 7),
    ]
    final = run.statistics()
    assert final.wall_time == 8.0
    assert final.stages[1].throughput == 0.5


# --------------------------------------------------------------------------- history


async def test_state_history_layout(tmp_path: Path) -> None:
    def check(x: int) -> int:
        if x in (2, 5):
            raise ValueError(f"bad {x}")
        return x

    guarded = with_retry(map_(check), attempts=1, on_error="collect")
    run = Run(guarded | map_(inc), range(7), name="hist", version="3", state_history=tmp_path)
    assert await run.collect() == [1, 2, 4, 5, 7]
    folder = tmp_path / run.id
    assert run.history_path == folder
    assert sorted(p.name for p in folder.iterdir()) == [
        "final.json",
        "run_start.json",
        "stage_0_failures.json",
        "timeline.jsonl",
    ]
    start = json.loads((folder / "run_start.json").read_text())
    assert start["id"] == run.id
    assert start["name"] == "hist"
    assert start["version"] == "3"
    assert start["config_hash"] == run.config_hash
    assert [s["key"] for s in start["stages"]] == [s.key for s in run.statistics().stages]
    failures = json.loads((folder / "stage_0_failures.json").read_text())
    assert [r["item"] for r in failures["records"]] == [2, 5]
    assert failures["records"][0]["exception"]["type"] == "builtins.ValueError"
    final = json.loads((folder / "final.json").read_text())
    assert final["status"] == "succeeded"
    assert final["statistics"] == json.loads(run.statistics().to_json())
    assert not list(folder.glob(".*"))  # no temporary file left


async def test_state_history_of_a_failed_run(tmp_path: Path) -> None:
    run = Run(map_(lambda x: 1 // x), [1, 0], state_history=str(tmp_path))
    with pytest.raises(ZeroDivisionError):
        await run.drain()
    folder = tmp_path / run.id
    failures = json.loads((folder / "stage_0_failures.json").read_text())
    assert failures["fatal"]["type"] == "builtins.ZeroDivisionError"
    final = json.loads((folder / "final.json").read_text())
    assert final["status"] == "failed"
    assert final["error"]["type"] == "builtins.ZeroDivisionError"


async def test_state_history_write_errors_are_reported(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    run = Run(map_(inc), [1], state_history=blocker)
    assert await run.collect() == [2]
    # run_start.json, the timeline and final.json: each failed write is reported once.
    assert [error.hook for error in run.hook_errors] == ["state_history"] * 3
    assert all(isinstance(error.exception, NotADirectoryError) for error in run.hook_errors)


async def test_pause_holds_the_source_of_a_concurrent_pipeline() -> None:
    with virtual_clock() as clock:
        source = TrackedSource(range(20))

        async def slow(x: int) -> int:
            await clock.sleep(1)
            return x

        run = Run(map_(slow, concurrency=4), source)
        got: list[tuple[float, int]] = []

        async def consume() -> None:
            async for item in run:
                got.append((clock.now(), item))

        async def pause_then_resume() -> None:
            await clock.sleep(2.5)
            run.pause()
            pulled = source.pulls
            assert run.status == "paused"
            await clock.sleep(10)
            # Items in flight finished; nothing was pulled while paused.
            assert source.pulls == pulled
            assert run.statistics().stages[0].in_flight == 0
            run.resume()

        await asyncio.gather(consume(), pause_then_resume())
    assert [item for _, item in got] == list(range(20))
    times = [t for t, _ in got]
    assert max(times) > 12.5
    assert run.status == "succeeded"
    assert_no_pending_tasks()


async def test_events_of_an_unobserved_run() -> None:
    run = Run(map_(inc), range(3), metrics=False)
    await run.drain()
    updates = await collect(run.events())
    assert len(updates) == 1
    assert updates[0]["payload"]["run.items_out"] == 3
