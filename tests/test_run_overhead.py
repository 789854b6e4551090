"""Runs watched at little cost: counts from the fused segments, no relay when unneeded.

No timing here: these tests pin what the cheaper paths must keep (statuses,
counts, sampled timing); benchmarks/cases_run.py measures the cost.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import pytest

from streamkit import (
    Hooks,
    Run,
    collect,
    envelop,
    filter_,
    map_,
    set_state,
    tap,
    unwrap,
    with_retry,
)
from streamkit._core import SKIP, ItemOp, Stage
from streamkit.testing import SourceError, TrackedSource, assert_no_pending_tasks

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterable


def inc(x: int) -> int:
    return x + 1


def odd(x: int) -> bool:
    return x % 2 == 1


def skip_fives(x: int) -> Any:
    return SKIP if x % 5 == 0 else x


def boom_at_7(x: int) -> int:
    if x == 7:
        raise KeyError(x)
    return x


async def agen(n: int) -> AsyncIterator[int]:
    for i in range(n):
        yield i


def is_direct(iterator: object) -> bool:
    """Whether `Run.__aiter__` handed out the flow's own iterator (no relay)."""
    return getattr(iterator, "__qualname__", "") != "Run._relay_items"


# --------------------------------------------------------------------------- the reference


def expected_counts(
    steps: list[tuple[str, Callable[[int], Any]]], items: Iterable[int]
) -> list[tuple[int, int, int]]:
    """(items in, items out, filtered) per step, one item at a time through plain Python."""
    counts = [[0, 0, 0] for _ in steps]
    for item in items:
        value: Any = item
        for k, (kind, fn) in enumerate(steps):
            counts[k][0] += 1
            result = fn(value)
            if kind == "filter":
                if not result:
                    counts[k][2] += 1
                    break
            elif kind == "map":
                if result is SKIP:
                    break
                value = result
            counts[k][1] += 1
    return [(a, b, c) for a, b, c in counts]


def dropping_map(fn: Callable[[int], Any]) -> Stage[Any, Any]:
    """A map whose function may return `SKIP` (as `successes()` builds one)."""
    return Stage((ItemOp("map", fn, f"dropping({fn.__name__})", is_async=False, may_drop=True),))


def build(steps: list[tuple[str, Callable[[int], Any]]]) -> Stage[Any, Any]:
    stage: Stage[Any, Any] | None = None
    for kind, fn in steps:
        if fn is skip_fives:
            part = dropping_map(fn)
        else:
            part = {"map": map_, "filter": filter_, "tap": tap}[kind](fn)
        stage = part if stage is None else stage | part
    assert stage is not None
    return stage


PIPELINES: list[list[tuple[str, Callable[[int], Any]]]] = [
    [("map", inc), ("filter", odd), ("map", inc)],
    [("filter", odd), ("map", skip_fives), ("tap", print), ("filter", odd)],
    [("map", skip_fives), ("map", inc), ("filter", odd), ("map", skip_fives)],
    [("tap", lambda x: None)],
]


@pytest.mark.parametrize("steps", PIPELINES)
@pytest.mark.parametrize("consumer", ["collect", "drain", "async for", "async source"])
@pytest.mark.parametrize("n", [0, 1, 5, 3000])
async def test_counts_of_fused_steps_match_the_reference(
    steps: list[tuple[str, Callable[[int], Any]]],
    consumer: str,
    n: int,
    capsys: pytest.CaptureFixture[str],
) -> None:
    source: Any = agen(n) if consumer == "async source" else range(n)
    run = Run(build(steps), source)
    if consumer == "collect":
        got = await run.collect()
    elif consumer == "drain":
        await run.drain()
        got = None
    else:
        got = [item async for item in run]
    capsys.readouterr()
    if got is not None:
        assert got == await collect(range(n) | build(steps))
    capsys.readouterr()
    stats = run.statistics()
    assert [(s.items_in, s.items_out, s.filtered) for s in stats.stages] == expected_counts(
        steps, range(n)
    )
    assert [(s.errors, s.in_flight, s.status) for s in stats.stages] == [(0, 0, "succeeded")] * len(
        steps
    )
    assert stats.items_out == stats.stages[-1].items_out


async def test_counts_on_an_envelope_stream() -> None:
    pipeline = envelop() | set_state("n", lambda x: x) | map_(inc) | filter_(odd) | unwrap()
    run = Run(pipeline, range(10))
    assert await run.collect() == [1, 3, 5, 7, 9]
    stats = {s.key: s for s in run.statistics().stages}
    assert (stats["map_(inc)"].items_in, stats["map_(inc)"].items_out) == (10, 10)
    assert (stats["filter_(odd)"].items_in, stats["filter_(odd)"].filtered) == (10, 5)
    with_state = Run(envelop() | map_(lambda x, state: x * 2, with_state=True), range(3))
    assert [e.value for e in await with_state.collect()] == [0, 2, 4]
    assert with_state.statistics().stages[1].items_out == 3


async def test_counts_with_a_skipping_guard_between_fused_steps() -> None:
    guarded = with_retry(map_(boom_at_7), attempts=2, on_error="skip")
    guarded_filter = with_retry(filter_(lambda x: boom_at_7(x) % 3 != 0), on_error="skip")
    run = Run(map_(inc) | guarded | guarded_filter | map_(inc), range(12))
    assert await run.collect() == [x + 2 for x in range(12) if x + 1 != 7 and (x + 1) % 3 != 0]
    first, second, third, last = run.statistics().stages
    assert (first.items_in, first.items_out) == (12, 12)
    assert (second.items_in, second.items_out, second.skipped, second.errors) == (12, 11, 1, 1)
    assert (second.retries, second.filtered) == (1, 0)
    assert (third.kind, third.items_in, third.items_out, third.filtered) == ("filter", 11, 7, 4)
    assert (last.items_in, last.items_out) == (7, 7)


@pytest.mark.parametrize("consumer", ["collect", "async for"])
async def test_a_failing_fused_step_is_the_failed_one(consumer: str) -> None:
    run = Run(map_(inc) | map_(boom_at_7) | filter_(odd), range(10))

    async def consume() -> None:
        if consumer == "collect":
            await run.collect()
            return
        async with run:
            async for _ in run:
                pass

    with pytest.raises(KeyError):
        await consume()
    stats = run.statistics()
    assert stats.status == "failed"
    assert [s.status for s in stats.stages] == ["cancelled", "failed", "cancelled"]
    assert [(s.items_in, s.items_out, s.errors) for s in stats.stages] == [
        (7, 7, 0),
        (7, 6, 1),
        (6, 3, 0),
    ]


async def test_async_fused_functions_are_timed_and_counted_in_flight() -> None:
    peak = 0
    run: Run[int]

    async def ainc(x: int) -> int:
        nonlocal peak
        peak = max(peak, run.statistics().stages[1].in_flight)
        await asyncio.sleep(0)
        return x + 1

    run = Run(map_(inc) | map_(ainc) | filter_(odd), range(6))
    assert await run.collect() == [3, 5, 7]
    first, second, third = run.statistics().stages
    assert peak == 1
    assert (second.items_in, second.items_out, second.in_flight, second.timed_calls) == (
        6,
        6,
        0,
        6,
    )
    assert (first.timed_calls, third.timed_calls) == (1, 1)
    assert (third.items_in, third.filtered) == (6, 3)


@pytest.mark.parametrize(("n", "sampled"), [(10, 1), (1024, 1), (1025, 2), (3000, 3)])
async def test_sampled_timing_times_the_first_and_every_1024th_item(n: int, sampled: int) -> None:
    run = Run(map_(inc) | filter_(odd), range(n))
    await run.drain()
    assert [s.timed_calls for s in run.statistics().stages] == [sampled, sampled]
    full = Run(map_(inc) | filter_(odd), range(n), timing="full")
    await full.drain()
    assert [s.timed_calls for s in full.statistics().stages] == [n, n]
    assert full.statistics().stages[1].time_p99 is not None


def test_timing_is_checked() -> None:
    with pytest.raises(ValueError, match="timing"):
        Run(map_(inc), [1], timing="every")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    with pytest.raises(TypeError, match="timing"):
        Run(map_(inc), [1], timing=True)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]


# --------------------------------------------------------------------------- no relay


@pytest.mark.parametrize("metrics", [False, True])
async def test_async_for_without_a_relay_succeeds(metrics: bool) -> None:
    run = Run(map_(inc) | filter_(odd), agen(10), metrics=metrics)
    assert run.status == "pending"
    iterator = aiter(run)
    assert is_direct(iterator)
    got = [item async for item in iterator]
    assert got == [1, 3, 5, 7, 9]
    stats = run.statistics()
    assert (stats.status, stats.items_out) == ("succeeded", 5)
    assert stats.wall_time >= 0
    assert stats.started_at is not None


@pytest.mark.parametrize("metrics", [False, True])
async def test_async_for_without_a_relay_fails(metrics: bool) -> None:
    source = TrackedSource(range(10))
    run = Run(map_(inc) | map_(boom_at_7), source, metrics=metrics)
    with pytest.raises(KeyError):
        async for _ in run:
            pass
    assert run.status == "failed"
    assert run.statistics().items_out == 6
    source.assert_closed()
    broken = TrackedSource(range(5), fail_at=2)
    failed_source = Run(map_(inc), broken, metrics=metrics)
    with pytest.raises(SourceError):
        async for _ in failed_source:
            pass
    assert failed_source.status == "failed"
    if metrics:
        assert [s.status for s in failed_source.statistics().stages] == ["cancelled"]


@pytest.mark.parametrize("metrics", [False, True])
async def test_early_exit_without_a_relay_cancels(metrics: bool) -> None:
    source = TrackedSource(range(100))
    async with Run(map_(inc), source, metrics=metrics) as run:
        async for item in run:
            if item == 3:
                break
        assert run.status == "running"
    assert run.status == "cancelled"
    assert run.statistics().items_out == 3
    source.assert_closed()

    unstarted = Run(map_(inc), TrackedSource(range(3)), metrics=metrics)
    aiter(unstarted)
    await unstarted.aclose()
    assert unstarted.status == "cancelled"


async def test_cancelling_a_consumer_without_a_relay() -> None:
    started = asyncio.Event()

    async def forever() -> AsyncIterator[int]:
        i = 0
        while True:
            yield i
            i += 1
            if i == 3:
                started.set()
            await asyncio.sleep(0)

    run = Run(map_(inc), forever(), metrics=False)

    async def consume() -> None:
        async for _ in run:
            pass

    task = asyncio.create_task(consume())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert run.status == "cancelled"
    assert_no_pending_tasks()


async def test_hooks_without_on_item_need_no_relay_and_still_run() -> None:
    calls: list[str] = []
    hooks = Hooks(
        on_run_start=lambda s: calls.append(f"start {s.status}"),
        on_run_end=lambda s: calls.append(f"end {s.status} {s.items_out}"),
    )
    run = Run(map_(inc) | filter_(odd), range(6), hooks=hooks)
    iterator = aiter(run)
    assert is_direct(iterator)
    assert [item async for item in iterator] == [1, 3, 5]
    assert calls == ["start running", "end succeeded 3"]


async def test_a_relay_is_kept_when_needed() -> None:
    seen: list[int] = []
    with_item_hook = Run(map_(inc), range(3), hooks=Hooks(on_item=seen.append))
    assert not is_direct(aiter(with_item_hook))
    from streamkit import take

    ends_in_a_transform = Run(map_(inc) | take(2), range(3))
    iterator = aiter(ends_in_a_transform)
    assert not is_direct(iterator)
    assert [item async for item in iterator] == [1, 2]
    assert ends_in_a_transform.statistics().items_out == 2
