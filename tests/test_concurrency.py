from __future__ import annotations

import asyncio
import dataclasses
import random
from typing import TYPE_CHECKING, Any

import pytest

from streamkit import Flow, Stage, buffer, collect, filter_, first, flat_map, map_, take
from streamkit._concurrency import concurrent_transform
from streamkit._core import ConcurrentOp, ItemOp, Transform
from streamkit.testing import (
    SourceError,
    TrackedSource,
    assert_no_pending_tasks,
    current_clock,
    virtual_clock,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterable


class Meter:
    """Counts calls in flight and remembers the most seen at once."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0
        self.started: list[int] = []
        self.cancelled: list[int] = []

    def enter(self, item: int) -> None:
        self.now += 1
        self.peak = max(self.peak, self.now)
        self.started.append(item)

    def leave(self) -> None:
        self.now -= 1


async def into(got: list[Any], flow: AsyncIterable[Any]) -> None:
    async for item in flow:
        got.append(item)


async def break_at_first(flow: Flow[Any]) -> None:
    async with flow:
        async for _ in flow:
            break


def op_of(stage: Stage[Any, Any]) -> ConcurrentOp:
    (step,) = stage.steps
    assert isinstance(step, Transform)
    assert step.item is not None
    return step.item


# ---------------------------------------------------------------- options and metadata


def test_default_concurrency_stays_a_fused_item_op() -> None:
    (step,) = map_(abs).steps
    assert isinstance(step, ItemOp)
    (step,) = filter_(bool).steps
    assert isinstance(step, ItemOp)


def test_concurrent_stages_keep_their_function_and_options() -> None:
    async def fetch(x: int) -> int:
        return x

    op = op_of(map_(fetch, concurrency=4))
    assert (op.kind, op.fn, op.concurrency, op.ordered, op.window) == ("map", fetch, 4, True, 64)
    assert op.is_async
    op = op_of(filter_(fetch, concurrency=3, ordered=False, window=5))
    assert (op.kind, op.concurrency, op.ordered, op.window) == ("filter", 3, False, 5)
    assert op_of(flat_map(range, concurrency=2)).kind == "flat_map"
    sequential = op_of(flat_map(range))
    assert (sequential.kind, sequential.concurrency) == ("flat_map", 1)


async def test_a_wrapper_can_rebuild_the_stage_around_the_function() -> None:
    async def fetch(x: int) -> int:
        await asyncio.sleep(0)
        return x

    op = op_of(map_(fetch, concurrency=4))

    async def wrapped(x: int) -> int:
        return -(await op.fn(x))

    rebuilt: Stage[int, int] = Stage((concurrent_transform(dataclasses.replace(op, fn=wrapped)),))
    assert await collect(range(5) | rebuilt) == [0, -1, -2, -3, -4]


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"concurrency": 0}, ValueError, "concurrency"),
        ({"concurrency": 2.0}, TypeError, "concurrency"),
        ({"concurrency": 2, "window": 0}, ValueError, "window"),
        ({"ordered": 1}, TypeError, "ordered"),
    ],
)
def test_options_are_validated(
    options: dict[str, Any], error: type[Exception], message: str
) -> None:
    for factory in (map_, filter_, flat_map):
        with pytest.raises(error, match=message):
            factory(abs, **options)


# ---------------------------------------------------------------- the bound


@pytest.mark.parametrize("ordered", [True, False])
@pytest.mark.parametrize("seed", range(5))
async def test_never_more_than_n_calls_in_flight(ordered: bool, seed: int) -> None:
    rng = random.Random(seed)
    meter = Meter()

    async def work(x: int) -> int:
        meter.enter(x)
        try:
            await current_clock().sleep(rng.choice([0.125, 0.25, 1.0, 2.0]))
            for _ in range(rng.randrange(3)):
                await asyncio.sleep(0)
        finally:
            meter.leave()
        return x

    with virtual_clock():
        out = await collect(range(60) | map_(work, concurrency=5, ordered=ordered))
    assert meter.peak == 5
    assert sorted(out) == list(range(60))
    if ordered:
        assert out == list(range(60))
    assert_no_pending_tasks()


async def test_unordered_yields_in_completion_order() -> None:
    durations = {0: 3.0, 1: 1.0, 2: 2.0, 3: 0.5}

    async def work(x: int) -> int:
        await current_clock().sleep(durations[x])
        return x

    with virtual_clock():
        assert await collect(range(4) | map_(work, concurrency=4, ordered=False)) == [3, 1, 2, 0]
        assert await collect(range(4) | map_(work, concurrency=4)) == [0, 1, 2, 3]


async def test_one_slow_item_does_not_stall_the_others() -> None:
    starts: dict[int, float] = {}
    yielded: list[tuple[int, float]] = []

    async def work(x: int) -> int:
        clock = current_clock()
        starts[x] = clock.now()
        await clock.sleep(1.0 if x == 0 else 0.125)
        return x

    with virtual_clock() as clock:
        async for x in range(30) | map_(work, concurrency=4):
            yielded.append((x, clock.now()))
    # Item 0 takes 1 s; the three other slots go on: three calls start every
    # 0.125 s (the default window, 64, is never reached).
    assert [starts[x] for x in range(4)] == [0.0] * 4
    for k in range(1, 8):
        assert [starts[x] for x in range(3 * k + 1, 3 * k + 4)] == [k * 0.125] * 3
    assert starts[25] == 1.0
    assert yielded[:25] == [(x, 1.0) for x in range(25)]


async def test_a_small_window_pauses_new_calls() -> None:
    starts: dict[int, float] = {}
    yielded: list[tuple[int, float]] = []

    async def work(x: int) -> int:
        clock = current_clock()
        starts[x] = clock.now()
        await clock.sleep(1.0 if x == 0 else 0.125)
        return x

    with virtual_clock() as clock:
        async for x in range(14) | map_(work, concurrency=4, window=8):
            yielded.append((x, clock.now()))
    # Items 1-3 end at 0.125, freeing three slots; 4-6 start then, 7-9 at 0.25.
    # Then 9 finished results wait for item 0 (window = 8): no more starts
    # until item 0 ends at 1.0.
    assert [starts[x] for x in range(10)] == [0.0] * 4 + [0.125] * 3 + [0.25] * 3
    assert [starts[x] for x in range(10, 14)] == [1.0] * 4
    assert yielded[:10] == [(x, 1.0) for x in range(10)]
    assert yielded[10:] == [(x, 1.125) for x in range(10, 14)]


async def test_the_window_bounds_finished_results_waiting() -> None:
    starts: dict[int, float] = {}

    async def work(x: int) -> int:
        clock = current_clock()
        starts[x] = clock.now()
        await clock.sleep(1.0 if x == 0 else 0.125)
        return x

    with virtual_clock():
        await collect(range(10) | map_(work, concurrency=2, window=2))
    # 1 ends at .125, 2 starts; 2 ends at .25 -> 2 finished wait: window full.
    assert [starts[x] for x in range(3)] == [0.0, 0.0, 0.125]
    assert starts[3] == 1.0


@pytest.mark.parametrize("ordered", [True, False])
async def test_the_source_is_never_pulled_far_ahead(ordered: bool) -> None:
    concurrency, window = 3, 4

    async def work(x: int) -> int:
        await current_clock().sleep(0.5 if x % 5 == 0 else 0.25)
        return x

    source = TrackedSource(range(100))
    consumed = 0
    with virtual_clock() as clock:
        flow = source | map_(work, concurrency=concurrency, ordered=ordered, window=window)
        async with flow:
            async for _ in flow:
                consumed += 1
                assert source.pulls - consumed <= concurrency + window
                await clock.sleep(2.0)  # a slow consumer
    assert consumed == 100


async def test_sync_functions_and_plain_awaitables_work() -> None:
    loop = asyncio.get_running_loop()

    def future_of(x: int) -> asyncio.Future[int]:
        future: asyncio.Future[int] = loop.create_future()
        future.set_result(x + 1)
        return future

    assert await collect(range(5) | map_(lambda x: x * 3, concurrency=2)) == [0, 3, 6, 9, 12]
    assert await collect(range(5) | map_(future_of, concurrency=2)) == [1, 2, 3, 4, 5]


async def test_concurrent_filter_and_flat_map() -> None:
    async def even(x: int) -> bool:
        await current_clock().sleep(1.0 if x == 0 else 0.5)
        return x % 2 == 0

    async def pages(x: int) -> Any:
        for i in range(x):
            await asyncio.sleep(0)
            yield i

    with virtual_clock():
        assert await collect(range(9) | filter_(even, concurrency=3)) == [0, 2, 4, 6, 8]
        unordered = await collect(range(9) | filter_(even, concurrency=3, ordered=False))
        assert sorted(unordered) == [0, 2, 4, 6, 8]
        assert unordered[-1] == 0 or unordered[0] != 0
    assert await collect(range(4) | flat_map(pages, concurrency=2)) == [0, 0, 1, 0, 1, 2]
    assert await collect(range(3) | flat_map(lambda x: [x] * x, concurrency=2)) == [1, 2, 2]
    with pytest.raises(TypeError, match="must return an iterable") as info:
        await collect(range(3) | flat_map(lambda x: x, concurrency=2))
    assert info.value.__notes__[0].endswith("<lambda>, concurrency=2) on item 0 of its input")


# ---------------------------------------------------------------- stopping


@pytest.mark.parametrize("ordered", [True, False])
async def test_break_cancels_and_awaits_every_call(ordered: bool) -> None:
    meter = Meter()
    source = TrackedSource(range(50))

    async def work(x: int) -> int:
        meter.enter(x)
        try:
            await current_clock().sleep(1.0 + x % 3)
        except asyncio.CancelledError:
            meter.cancelled.append(x)
            raise
        finally:
            meter.leave()
        return x

    with virtual_clock():
        flow = source | map_(work, concurrency=6, ordered=ordered)
        async with flow:
            async for _ in flow:
                break
    assert meter.now == 0
    assert meter.cancelled
    assert source.closed
    assert_no_pending_tasks()


async def test_take_downstream_stops_the_calls() -> None:
    async def work(x: int) -> int:
        await asyncio.sleep(0)
        return x

    source = TrackedSource(range(1000))
    assert await collect(source | map_(work, concurrency=8) | take(3)) == [0, 1, 2]
    assert source.closed
    assert source.pulls <= 3 + 8 + 16
    assert await first(range(10**9) | map_(work, concurrency=8)) == 0
    assert_no_pending_tasks()


async def test_cancelling_the_consumer_cancels_the_calls() -> None:
    meter = Meter()
    source = TrackedSource(range(50))

    async def work(x: int) -> int:
        meter.enter(x)
        try:
            await asyncio.Event().wait()
        finally:
            meter.leave()
        return x

    async def consume() -> list[int]:
        return await collect(source | map_(work, concurrency=4))

    task = asyncio.create_task(consume())
    for _ in range(10):
        await asyncio.sleep(0)
    assert meter.now == 4
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert meter.now == 0
    assert source.closed
    assert_no_pending_tasks()


# ---------------------------------------------------------------- failures


@pytest.mark.parametrize("ordered", [True, False])
async def test_first_failure_propagates_with_its_note_and_others_as_notes(ordered: bool) -> None:
    async def work(x: int) -> int:
        await current_clock().sleep(1.0 if x in (3, 5) else 0.5)
        if x in (3, 5):
            raise ValueError(f"bad {x}")
        return x

    source = TrackedSource(range(20))
    with virtual_clock(), pytest.raises(ValueError, match="bad 3") as info:
        await collect(source | map_(work, concurrency=8, ordered=ordered))
    notes = info.value.__notes__
    assert notes[0].startswith("streamkit: raised by map_(")
    assert notes[0].endswith("work, concurrency=8) on item 3 of its input")
    assert any("also failed: ValueError('bad 5')" in note for note in notes[1:])
    assert source.closed
    assert_no_pending_tasks()


async def test_a_failure_stops_new_calls_and_cancels_the_others_at_once() -> None:
    meter = Meter()

    async def work(x: int) -> int:
        meter.enter(x)
        try:
            if x == 1:
                raise KeyError(x)
            await current_clock().sleep(100.0)
        except asyncio.CancelledError:
            meter.cancelled.append(x)
            raise
        finally:
            meter.leave()
        return x

    with virtual_clock() as clock, pytest.raises(KeyError):
        await collect(range(20) | map_(work, concurrency=4))
    assert clock.now() == 0.0
    assert sorted(meter.started) == [0, 1, 2, 3]
    assert sorted(meter.cancelled) == [0, 2, 3]


async def test_a_synchronous_failure_of_fn_is_annotated() -> None:
    def boom(x: int) -> int:
        if x == 2:
            raise ZeroDivisionError(x)
        return x

    with pytest.raises(ZeroDivisionError) as info:
        await collect(range(5) | map_(boom, concurrency=3))
    (note,) = info.value.__notes__
    assert note.endswith("boom, concurrency=3) on item 2 of its input")


async def test_a_source_error_comes_after_the_calls_already_started() -> None:
    async def work(x: int) -> int:
        await current_clock().sleep(1.0)
        return x

    got: list[int] = []
    source = TrackedSource(range(10), fail_at=4)
    with virtual_clock(), pytest.raises(SourceError):
        await into(got, source | map_(work, concurrency=8))
    assert got == [0, 1, 2, 3]
    assert source.closed


async def test_a_call_raising_instead_of_stopping_surfaces_when_the_consumer_breaks() -> None:
    async def stubborn(x: int) -> int:
        try:
            await current_clock().sleep(10.0 if x else 1.0)
        except asyncio.CancelledError:
            raise RuntimeError(f"cleanup of {x} failed") from None
        return x

    with virtual_clock():
        flow = range(3) | map_(stubborn, concurrency=3)
        with pytest.raises(RuntimeError, match="cleanup of 1 failed") as info:
            await break_at_first(flow)
    assert any("cleanup of 2 failed" in note for note in info.value.__notes__)
    assert_no_pending_tasks()


async def test_a_call_raising_while_cancelled_is_noted_on_the_cancellation() -> None:
    async def stubborn(x: int) -> int:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise RuntimeError(f"cleanup of {x} failed") from None
        return x

    task = asyncio.create_task(collect(range(2) | map_(stubborn, concurrency=2)))
    for _ in range(5):
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError) as info:
        await task
    assert len([n for n in info.value.__notes__ if "failed while being cancelled" in n]) == 2
    assert_no_pending_tasks()


async def test_failures_never_reported_as_unretrieved(caplog: pytest.LogCaptureFixture) -> None:
    async def work(x: int) -> int:
        await asyncio.sleep(0)
        raise ValueError(x)

    for _ in range(3):
        with pytest.raises(ValueError, match=r"\d"):
            await collect(range(30) | map_(work, concurrency=8, ordered=False))
    await asyncio.sleep(0)
    assert "never retrieved" not in caplog.text
    assert_no_pending_tasks()


@pytest.mark.parametrize("ordered", [True, False])
async def test_a_call_cancelled_by_someone_else_is_not_silently_lost(ordered: bool) -> None:
    async def work(x: int) -> int:
        await asyncio.sleep(0)
        if x == 2:
            task = asyncio.current_task()
            assert task is not None
            task.cancel()
            await asyncio.sleep(0)
        return x

    with pytest.raises(asyncio.CancelledError):
        await collect(range(6) | map_(work, concurrency=3, ordered=ordered))
    assert_no_pending_tasks()


@pytest.mark.parametrize("extra", [0, 1, 2, 3])
async def test_cancelled_again_during_cleanup_still_cleans_up(extra: int) -> None:
    source = TrackedSource(range(50))

    async def slow_to_stop(x: int) -> int:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            for _ in range(3):  # cleanup that takes a few loop turns
                await asyncio.sleep(0)
            raise
        return x

    flow = source | map_(slow_to_stop, concurrency=4) | buffer(2)
    task = asyncio.create_task(collect(flow))
    for _ in range(5):
        await asyncio.sleep(0)
    task.cancel()
    for _ in range(extra):
        await asyncio.sleep(0)
    task.cancel()  # a second cancellation lands in the middle of the cleanup
    with pytest.raises(asyncio.CancelledError):
        await task
    assert source.closed
    assert_no_pending_tasks()
