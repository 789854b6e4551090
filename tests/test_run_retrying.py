"""A guarded step's "retrying" status and the `on_retry` hook; several `Hooks` at once."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import pytest

from streamkit import Hooks, RetryEvent, Run, constant, map_, with_retry
from streamkit.testing import virtual_clock

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from streamkit import StageStatistics


def failing_first(times: int) -> Any:
    tries: dict[int, int] = {}

    def flaky(x: int) -> int:
        tries[x] = tries.get(x, 0) + 1
        if x % 2 == 1 and tries[x] <= times:
            raise ConnectionError(f"down {x}")
        return x * 10

    return flaky


async def ticking(items: list[int], every: float) -> AsyncIterator[int]:
    from streamkit import current_clock

    for item in items:
        await current_clock().sleep(every)
        yield item


@pytest.mark.parametrize("concurrency", [1, 2])
async def test_status_reads_retrying_while_a_backoff_waits(concurrency: int) -> None:
    with virtual_clock() as clock:
        guarded = with_retry(
            map_(failing_first(1), concurrency=concurrency), attempts=2, backoff=constant(5.0)
        )
        # Item 1 arrives at t=1, fails and waits 5 s (t=1..6); all is done by t=8.
        run = Run(guarded, ticking([1, 2], 1.0))
        seen: list[tuple[float, str]] = []

        async def watch() -> None:
            for moment in (0.5, 3.0, 8.0):
                await clock.sleep(moment - clock.now())
                seen.append((clock.now(), run.statistics().stages[0].status))

        watcher = asyncio.create_task(watch())
        assert await run.collect() == [10, 20]
        await watcher
    assert seen == [(0.5, "executing"), (3.0, "retrying"), (8.0, "succeeded")]
    stats = run.statistics().stages[0]
    assert (stats.status, stats.retries, stats.items_in, stats.items_out) == (
        "succeeded",
        1,
        2,
        2,
    )


async def test_events_show_retrying_then_executing() -> None:
    with virtual_clock() as clock:
        guarded = with_retry(map_(failing_first(1)), attempts=2, backoff=constant(2.0))
        run = Run(guarded, ticking([1, 2, 4], 1.0))
        key = run.statistics().stages[0].key
        changes: list[tuple[float, str]] = []

        async def watch() -> None:
            async for update in run.events(rate=2.0):
                status = update["payload"].get(f"stages.{key}.status")
                if status is not None:
                    changes.append((update["timestamp"], status))

        watcher = asyncio.create_task(watch())
        await asyncio.sleep(0)
        statuses: list[tuple[float, str]] = []
        async for _ in run:
            statuses.append((clock.now(), run.statistics().stages[0].status))
        await watcher
    # Item 1 comes at t=1, fails, is retried at t=3; items 2 and 4 at t=4 and t=5.
    assert statuses == [(3.0, "executing"), (4.0, "executing"), (5.0, "executing")]
    assert changes == [
        (0.0, "pending"),
        (0.5, "executing"),
        (1.0, "retrying"),
        (3.0, "executing"),
        (5.0, "succeeded"),
    ]


async def test_on_retry_gets_the_stage_and_a_retry_event() -> None:
    events: list[tuple[str, RetryEvent]] = []

    def on_retry(stage: StageStatistics, retry: RetryEvent) -> None:
        events.append((stage.status, retry))

    with virtual_clock():
        guarded = with_retry(map_(failing_first(2)), attempts=3, backoff=constant(1.5))
        run = Run(guarded, [0, 1, 2, 3], hooks=Hooks(on_retry=on_retry))
        assert await run.collect() == [0, 10, 20, 30]
    key = run.statistics().stages[0].key
    assert [status for status, _ in events] == ["retrying"] * 4
    assert [(e.stage, e.index, e.attempt, e.delay) for _, e in events] == [
        (key, 1, 1, 1.5),
        (key, 1, 2, 1.5),
        (key, 3, 1, 1.5),
        (key, 3, 2, 1.5),
    ]
    assert all(isinstance(e.error, ConnectionError) for _, e in events)
    assert str(events[0][1].error) == "down 1"
    with pytest.raises(AttributeError):
        events[0][1].attempt = 9  # type: ignore[misc]  # pyright: ignore[reportAttributeAccessIssue]


async def test_async_on_retry_and_a_raising_one_never_lose_the_item() -> None:
    calls: list[int] = []

    async def slow_hook(stage: StageStatistics, retry: RetryEvent) -> None:
        await asyncio.sleep(0)
        calls.append(retry.index)

    def broken(stage: StageStatistics, retry: RetryEvent) -> None:
        raise RuntimeError("broken hook")

    with virtual_clock():
        guarded = with_retry(map_(failing_first(1)), attempts=2, backoff=constant(1.0))
        run = Run(guarded, range(4), hooks=[Hooks(on_retry=slow_hook), {"on_retry": broken}])
        assert await run.collect() == [0, 10, 20, 30]
    assert calls == [1, 3]
    assert [(e.hook, str(e.exception)) for e in run.hook_errors] == [
        ("on_retry", "broken hook"),
        ("on_retry", "broken hook"),
    ]
    assert run.status == "succeeded"


async def test_hooks_in_a_sequence_are_called_in_order() -> None:
    calls: list[str] = []

    def first_end(stats: object) -> None:
        calls.append("first")
        raise ValueError("first")

    async def second_end(stats: object) -> None:
        calls.append("second")
        raise KeyError("second")

    hooks = [
        Hooks(on_run_end=first_end, on_run_start=lambda s: calls.append("start")),
        {"on_run_end": second_end},
        Hooks(on_item=lambda item: calls.append(f"item {item}")),
    ]
    run = Run(map_(str), range(2), hooks=hooks)
    assert await run.collect() == ["0", "1"]
    assert calls == ["start", "item 0", "item 1", "first", "second"]
    assert [(e.hook, type(e.exception)) for e in run.hook_errors] == [
        ("on_run_end", ValueError),
        ("on_run_end", KeyError),
    ]
    single = Run(map_(str), range(1), hooks=(Hooks(on_run_start=print),))
    assert single.status == "pending"
    assert await Run(map_(str), range(1), hooks=[]).collect() == ["0"]


def test_bad_hooks_name_the_parameter() -> None:
    with pytest.raises(TypeError, match=r"hooks\[1\]"):
        Run(map_(str), [1], hooks=[Hooks(), print])  # type: ignore[list-item]  # pyright: ignore[reportArgumentType]
    with pytest.raises(ValueError, match=r"hooks\[0\]: unknown hook names \['on_retyr'\]"):
        Run(map_(str), [1], hooks=[{"on_retyr": print}])
    with pytest.raises(TypeError, match="hooks"):
        Run(map_(str), [1], hooks="on_item")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    with pytest.raises(TypeError, match="on_retry"):
        Hooks(on_retry=3)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
