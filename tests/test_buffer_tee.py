from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import pytest

from streamkit import broadcast, buffer, collect, map_, merge, take, tee, zip_
from streamkit.testing import (
    SourceError,
    TrackedSource,
    assert_no_pending_tasks,
    current_clock,
    virtual_clock,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterable


async def slowly(flow: AsyncIterable[Any], seconds: float) -> list[Any]:
    """Consume with a virtual pause after each item."""
    clock = current_clock()
    got = []
    async for item in flow:
        got.append(item)
        await clock.sleep(seconds)
    return got


async def into(got: list[Any], flow: AsyncIterable[Any]) -> None:
    async for item in flow:
        got.append(item)


# ---------------------------------------------------------------- buffer


async def test_buffer_overlaps_a_slow_producer_and_a_slow_consumer() -> None:
    with virtual_clock() as clock:
        got = await slowly(TrackedSource(range(10), delay=1.0) | buffer(4), 1.0)
    assert got == list(range(10))
    assert clock.now() == 11.0  # not 20: production and consumption overlap
    with virtual_clock() as clock:
        await slowly(TrackedSource(range(10), delay=1.0), 1.0)
    assert clock.now() == 21.0  # the end of the source also takes 1 s


async def test_buffer_wait_bounds_the_pull_ahead() -> None:
    source = TrackedSource(range(100))
    consumed = 0
    with virtual_clock() as clock:
        flow = source | buffer(5)
        async with flow:
            async for _ in flow:
                consumed += 1
                await clock.sleep(1.0)
                assert source.pulls - consumed <= 5 + 1
    assert consumed == 100


async def test_buffer_drop_oldest_and_newest_report_every_drop() -> None:
    for overflow, kept in (("drop_oldest", [0, 8, 9]), ("drop_newest", [0, 1, 2])):
        dropped: list[int] = []
        with virtual_clock():
            flow = TrackedSource(range(10), delay=0.25) | buffer(
                2, overflow=overflow, on_drop=dropped.append
            )
            got = await slowly(flow, 10.0)
        assert got == kept
        assert sorted(got + dropped) == list(range(10))


async def test_buffer_options_are_validated() -> None:
    with pytest.raises(TypeError, match="on_drop"):
        buffer(3, overflow="drop_oldest")
    with pytest.raises(ValueError, match="overflow"):
        buffer(3, overflow="drop_all", on_drop=print)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n must be"):
        buffer(0)
    with pytest.raises(TypeError, match="on_drop"):
        buffer(3, overflow="drop_newest", on_drop=1)  # type: ignore[arg-type]


async def test_buffer_delivers_a_source_error_after_the_buffered_items() -> None:
    got: list[int] = []
    source = TrackedSource(range(10), fail_at=3)
    with pytest.raises(SourceError):
        await into(got, source | buffer(8))
    assert got == [0, 1, 2]
    assert source.closed


async def test_buffer_on_drop_failure_fails_the_stream() -> None:
    def refuse(item: int) -> None:
        raise RuntimeError(f"cannot drop {item}")

    with pytest.raises(RuntimeError, match="cannot drop 2") as info:
        await collect(range(5) | buffer(2, overflow="drop_newest", on_drop=refuse))
    assert "on item 2" in info.value.__notes__[0]
    assert_no_pending_tasks()


# ---------------------------------------------------------------- tee


async def test_tee_gives_every_item_to_every_branch() -> None:
    source = TrackedSource(range(20))
    a, b, c = tee(source, 3)
    got = await asyncio.gather(collect(a), collect(b), collect(c | map_(lambda x: -x)))
    assert got == [list(range(20)), list(range(20)), [-x for x in range(20)]]
    assert source.pulls == 21
    assert source.finished
    assert_no_pending_tasks()


async def test_a_slow_branch_pauses_the_source_instead_of_growing_memory() -> None:
    source = TrackedSource(range(50))
    fast, slow = tee(source, max_lag=4)
    fast_seen = 0

    async def run_fast() -> None:
        nonlocal fast_seen
        async for _ in fast:
            fast_seen += 1

    async def run_slow() -> list[int]:
        got = []
        async for item in slow:
            got.append(item)
            assert source.pulls - len(got) <= 4 + 1
            assert fast_seen - len(got) <= 4
            await current_clock().sleep(1.0)
        return got

    with virtual_clock():
        _, got = await asyncio.gather(run_fast(), run_slow())
    assert got == list(range(50))


async def test_a_branch_that_stops_early_does_not_block_the_others() -> None:
    source = TrackedSource(range(100))
    a, b, never = tee(source, 3, max_lag=2)
    await never.aclose()  # never iterated: closing it releases it
    first_two, everything = await asyncio.gather(collect(a | take(2)), collect(b))
    assert first_two == [0, 1]
    assert everything == list(range(100))
    assert source.finished


async def test_closing_every_branch_closes_the_source() -> None:
    source = TrackedSource(range(100))
    a, b = tee(source)
    assert await collect(a | take(3)) == [0, 1, 2]
    assert not source.closed
    async with b:
        async for item in b:
            if item == 5:
                break
    assert source.closed
    assert_no_pending_tasks()


async def test_a_source_error_reaches_every_branch() -> None:
    source = TrackedSource(range(10), fail_at=4)
    branches = tee(source, 3)
    results = await asyncio.gather(*(collect(b) for b in branches), return_exceptions=True)
    assert all(result is source.error for result in results)
    assert source.pulls == 5
    assert_no_pending_tasks()


async def test_tee_validates() -> None:
    with pytest.raises(ValueError, match="n must be"):
        tee(range(3), 0)
    with pytest.raises(ValueError, match="max_lag"):
        tee(range(3), 2, max_lag=0)
    with pytest.raises(TypeError, match="tee"):
        tee(3)  # type: ignore[call-overload]


async def test_cancelling_a_branch_does_not_break_the_shared_pull() -> None:
    source = TrackedSource(range(5), delay=1.0)
    a, b = tee(source)
    with virtual_clock():
        task = asyncio.create_task(collect(a))
        for _ in range(3):
            await asyncio.sleep(0)
        task.cancel()  # a waits for the pull of item 0
        with pytest.raises(asyncio.CancelledError):
            await task
        await a.aclose()
        assert await collect(b) == [0, 1, 2, 3, 4]
    assert_no_pending_tasks()


# ---------------------------------------------------------------- broadcast


async def test_broadcast_runs_every_stage_over_every_item() -> None:
    source = TrackedSource(range(6))
    flow = broadcast(source, map_(lambda x: ("double", 2 * x)), take(2) | map_(lambda x: ("t", x)))
    got = await collect(flow)
    assert sorted(got) == sorted([("double", 2 * x) for x in range(6)] + [("t", 0), ("t", 1)])
    assert source.finished
    assert_no_pending_tasks()


async def test_broadcast_failure_and_validation() -> None:
    def boom(x: int) -> int:
        raise KeyError(x)

    source = TrackedSource(range(6))
    with pytest.raises(KeyError):
        await collect(broadcast(source, map_(lambda x: x), map_(boom)))
    assert source.closed
    with pytest.raises(TypeError, match="at least one"):
        broadcast(range(3))
    with pytest.raises(TypeError, match="stages"):
        broadcast(range(3), abs)  # type: ignore[arg-type]


# ---------------------------------------------------------------- merge, zip_


async def test_merge_holds_at_most_one_pending_item_per_source() -> None:
    sources = [TrackedSource(range(k * 100, k * 100 + 20)) for k in range(3)]
    consumed = 0
    with virtual_clock() as clock:
        flow = merge(*sources)
        async with flow:
            async for _ in flow:
                consumed += 1
                await clock.sleep(1.0)
                assert sum(s.pulls for s in sources) - consumed <= 3
    assert consumed == 60
    assert all(s.finished for s in sources)


async def test_zip_pulls_concurrently_and_stops_at_the_shortest() -> None:
    slow = TrackedSource(range(5), delay=1.0)
    other = TrackedSource(range(3), delay=1.0)
    with virtual_clock() as clock:
        got = await collect(zip_(slow, other))
    assert got == [(0, 0), (1, 1), (2, 2)]
    assert clock.now() == 4.0  # concurrent pulls: 1 s per round, not 2
    assert slow.closed
    assert other.exhausted
    with pytest.raises(ValueError, match="strict"):
        await collect(zip_(TrackedSource(range(2)), TrackedSource(range(3)), strict=True))


async def test_merge_keeps_the_other_failures_as_notes() -> None:
    a = TrackedSource(range(5), fail_at=1, error=KeyError("a"))
    b = TrackedSource(range(5), fail_at=1, error=KeyError("b"))
    with pytest.raises(KeyError) as info:
        await collect(merge(a, b))
    assert any(
        "another merge() source also failed: KeyError('b')" in n for n in info.value.__notes__
    )
    assert a.closed
    assert b.closed
