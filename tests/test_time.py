from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import pytest

from streamkit import (
    Clock,
    chunk,
    collect,
    current_clock,
    debounce,
    map_,
    spaced,
    take,
    throttle,
    timeout,
    use_clock,
)
from streamkit._runtime import LOOP_CLOCK
from streamkit.testing import TrackedSource, VirtualClock, assert_no_pending_tasks, virtual_clock

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterable


async def arriving(
    times: Iterable[float], items: Iterable[Any] | None = None
) -> AsyncIterator[Any]:
    """Yield item i at virtual time times[i] (absolute)."""
    clock = current_clock()
    values = list(times)
    for index, (at, item) in enumerate(zip(values, items or range(len(values)), strict=False)):
        del index
        await clock.sleep(at - clock.now())
        yield item


async def stamped(flow: AsyncIterator[Any]) -> list[tuple[Any, float]]:
    clock = current_clock()
    return [(item, clock.now()) async for item in flow]


# ---------------------------------------------------------------- the virtual clock


async def test_virtual_clock_is_a_clock_and_jumps_to_the_earliest_timer() -> None:
    clock = VirtualClock(start=10.0)
    assert isinstance(clock, Clock)
    order: list[tuple[str, float]] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        order.append((name, clock.now()))

    await asyncio.gather(sleeper("c", 3.0), sleeper("a", 1.0), sleeper("b", 1.0))
    assert order == [("a", 11.0), ("b", 11.0), ("c", 13.0)]
    assert_no_pending_tasks()


async def test_virtual_time_waits_for_work_in_progress() -> None:
    clock = VirtualClock()
    seen: list[float] = []

    async def busy() -> None:
        for _ in range(200):  # many task switches, no virtual sleep
            await asyncio.sleep(0)
        seen.append(clock.now())

    await asyncio.gather(clock.sleep(5.0), busy())
    assert seen == [0.0]
    assert clock.now() == 5.0


async def test_virtual_clock_cancelled_sleepers_and_advance() -> None:
    clock = VirtualClock()
    task = asyncio.create_task(clock.sleep(100.0))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await clock.sleep(1.0)
    assert clock.now() == 1.0
    clock.advance(2.5)
    assert clock.now() == 3.5
    with pytest.raises(ValueError, match="seconds"):
        clock.advance(-1)
    await clock.sleep(0)
    assert clock.now() == 3.5
    assert_no_pending_tasks()


async def test_use_clock_and_virtual_clock_set_the_current_clock() -> None:
    assert current_clock() is LOOP_CLOCK
    with virtual_clock(5.0) as clock:
        assert current_clock() is clock
        assert clock.now() == 5.0
        mine = VirtualClock()
        with use_clock(mine):
            assert current_clock() is mine
        assert current_clock() is clock
    assert current_clock() is LOOP_CLOCK


# ---------------------------------------------------------------- chunk(within=)


async def test_chunk_within_is_exact() -> None:
    with virtual_clock():
        times = [0.0, 0.5, 1.0, 3.0, 3.25, 3.5, 3.75, 10.0]
        got = await stamped(aiter(arriving(times) | chunk(3, within=1.0)))
    assert got == [
        ([0, 1, 2], 1.0),  # full at t=1.0
        ([3, 4, 5], 3.5),  # full at t=3.5
        ([6], 4.75),  # item 6 waited 1.0
        ([7], 10.0),  # the end flushes at once
    ]


# ---------------------------------------------------------------- throttle


async def test_throttle_timestamps_are_exact() -> None:
    with virtual_clock():
        got = await stamped(aiter(range(5) | throttle(2)))
    assert got == [(0, 0.0), (1, 0.5), (2, 1.0), (3, 1.5), (4, 2.0)]


async def test_throttle_with_burst_and_period() -> None:
    with virtual_clock():
        got = await stamped(aiter(range(6) | throttle(1, 0.5, burst=3)))
    assert got == [(0, 0.0), (1, 0.0), (2, 0.0), (3, 0.5), (4, 1.0), (5, 1.5)]


async def test_throttle_refills_during_a_pause() -> None:
    with virtual_clock():
        got = await stamped(aiter(arriving([0, 0, 0, 4, 4, 4, 4]) | throttle(1, burst=2)))
    assert [at for _, at in got] == [0.0, 0.0, 1.0, 4.0, 4.0, 5.0, 6.0]


async def test_throttle_cost_and_debt() -> None:
    with virtual_clock():
        got = await stamped(aiter([1, 4, 1, 2] | throttle(2, burst=2, cost=float)))
    # 1 token at 0 (1 left); 4 > burst: waits for a full bucket (0.5 s) and
    # leaves -2; 1 needs 1.5 s of refill; 2 waits for 2 tokens.
    assert got == [(1, 0.0), (4, 0.5), (1, 2.0), (2, 3.0)]


async def test_throttle_never_drops_and_validates() -> None:
    assert await collect(range(20) | throttle(1000)) == list(range(20))
    with pytest.raises(ValueError, match="rate"):
        throttle(0)
    with pytest.raises(TypeError, match="rate"):
        throttle("1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="per"):
        throttle(1, -1)
    with pytest.raises(ValueError, match="burst"):
        throttle(1, burst=0)
    with pytest.raises(TypeError, match="cost"):
        throttle(1, cost=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cost must return") as info:
        await collect([1, 2] | throttle(1, cost=lambda x: -x))
    assert "on item 0" in info.value.__notes__[0]


# ---------------------------------------------------------------- spaced, debounce


async def test_spaced_keeps_a_minimum_gap() -> None:
    with virtual_clock():
        got = await stamped(aiter(arriving([0, 0, 2.0, 2.1]) | spaced(1.0)))
    assert [at for _, at in got] == [0.0, 1.0, 2.0, 3.0]


async def test_debounce_emits_the_last_item_of_each_burst() -> None:
    with virtual_clock():
        times = [0.0, 0.25, 0.5, 2.0, 2.5, 5.0]
        got = await stamped(aiter(arriving(times) | debounce(1.0)))
    assert got == [(2, 1.5), (4, 3.5), (5, 5.0)]


async def test_debounce_keeps_the_pending_pull() -> None:
    source = TrackedSource(range(3), delay=1.0)
    with virtual_clock():
        got = await stamped(aiter(source | debounce(0.5)))
    assert got == [(0, 1.5), (1, 2.5), (2, 3.5)]  # the end arrives at 4.0
    assert source.exhausted


# ---------------------------------------------------------------- timeout


async def test_timeout_raises_with_a_note() -> None:
    with virtual_clock() as clock, pytest.raises(TimeoutError) as info:
        await collect(arriving([0, 1, 5]) | timeout(2.0))
    assert clock.now() == 3.0
    assert info.value.__notes__ == ["streamkit: raised by timeout(2) on item 2 of its input"]


async def test_timeout_can_end_the_stream_and_closes_the_source() -> None:
    source = TrackedSource(range(10), delay=1.0)
    with virtual_clock() as clock:
        got = await collect(source | map_(lambda x: x) | timeout(0.5, on_timeout="end"))
    assert got == []
    assert clock.now() == 0.5
    assert source.closed
    with virtual_clock():
        ok = await collect(TrackedSource(range(3), delay=1.0) | timeout(1.5))
    assert ok == [0, 1, 2]
    with pytest.raises(ValueError, match="on_timeout"):
        timeout(1, on_timeout="drop")  # type: ignore[arg-type]
    assert_no_pending_tasks()


async def test_time_operators_with_the_real_loop_clock() -> None:
    # No timing assertion: only that the loop clock path runs and cleans up.
    assert await collect(range(3) | throttle(10_000) | take(2)) == [0, 1]
    assert await collect(range(3) | timeout(5)) == [0, 1, 2]
    assert await collect(range(3) | debounce(0.001)) == [2]
    assert_no_pending_tasks()


async def test_throttle_takes_per_by_keyword_too() -> None:
    with virtual_clock() as clock:
        times = [clock.now() async for _ in range(4) | throttle(30, per=60)]
    assert times == [0.0, 2.0, 4.0, 6.0]
