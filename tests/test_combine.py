"""Combine operators: zip_, merge, concat."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import pytest

from streamkit import Flow, collect, concat, first, iterate, map_, merge, take, zip_
from streamkit.testing import SourceError, TrackedSource, assert_no_pending_tasks, virtual_clock
from tests.conftest import Stalling, agen, cancel_when_stalled, notes, sync_gen

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

COMBINERS: dict[str, Callable[..., Flow[Any]]] = {"zip_": zip_, "merge": merge, "concat": concat}


# --------------------------------------------------------------------------- shared contract


@pytest.mark.parametrize("combine", COMBINERS.values(), ids=COMBINERS.keys())
async def test_no_sources_gives_no_items(combine: Callable[..., Flow[Any]]) -> None:
    assert await collect(combine()) == []


@pytest.mark.parametrize("combine", COMBINERS.values(), ids=COMBINERS.keys())
async def test_empty_sources_give_no_items(combine: Callable[..., Flow[Any]]) -> None:
    sources = [TrackedSource[int]([]), TrackedSource[int]([])]
    assert await collect(combine(*sources, [])) == []
    for source in sources:
        source.assert_closed()


@pytest.mark.parametrize("combine", COMBINERS.values(), ids=COMBINERS.keys())
@pytest.mark.parametrize("not_a_source", [3, None])
def test_a_non_iterable_source_is_rejected_at_construction(
    combine: Callable[..., Flow[Any]], not_a_source: object
) -> None:
    with pytest.raises(TypeError, match="argument 1"):
        combine([1], not_a_source)


@pytest.mark.parametrize("combine", COMBINERS.values(), ids=COMBINERS.keys())
async def test_early_exit_closes_every_source(combine: Callable[..., Flow[Any]]) -> None:
    sources = [TrackedSource(range(10)), TrackedSource(range(10, 20))]
    assert len(await collect(combine(*sources) | take(3))) == 3
    for source in sources:
        assert source.closed
        assert not source.exhausted
    assert_no_pending_tasks()


@pytest.mark.parametrize("combine", COMBINERS.values(), ids=COMBINERS.keys())
async def test_early_exit_runs_every_generator_finally(combine: Callable[..., Flow[Any]]) -> None:
    log: list[str] = []
    async with combine(agen(range(10), log), agen(range(10), log)) as items:
        async for _ in items:
            break
    # concat never started the second generator: it has no finally to run.
    assert log == (["finally"] if combine is concat else ["finally", "finally"])
    assert_no_pending_tasks()


@pytest.mark.parametrize("combine", COMBINERS.values(), ids=COMBINERS.keys())
async def test_first_closes_every_source_and_leaves_no_task(
    combine: Callable[..., Flow[Any]],
) -> None:
    sources = [TrackedSource(range(10)), TrackedSource(range(10, 20))]
    assert await first(combine(*sources)) in {0, 10, (0, 10)}
    for source in sources:
        assert source.closed
    assert_no_pending_tasks()


@pytest.mark.parametrize("combine", COMBINERS.values(), ids=COMBINERS.keys())
@pytest.mark.parametrize("failing", [0, 1], ids=["first source fails", "second source fails"])
async def test_a_source_error_propagates_and_every_source_is_closed(
    combine: Callable[..., Flow[Any]], failing: int
) -> None:
    sources = [TrackedSource(range(5)), TrackedSource(range(5))]
    sources[failing] = TrackedSource(range(5), fail_at=2)
    with pytest.raises(SourceError) as raised:
        await collect(combine(*sources) | map_(str))
    assert notes(raised.value) == []
    for source in sources:
        source.assert_closed()
    assert_no_pending_tasks()


@pytest.mark.parametrize("combine", COMBINERS.values(), ids=COMBINERS.keys())
async def test_cancelling_the_consumer_closes_every_source(
    combine: Callable[..., Flow[Any]],
) -> None:
    sources = [Stalling([1]), Stalling([3])]
    # concat reaches the second source only after the first: it stalls first.
    stalls = sources[:1] if combine is concat else sources
    await cancel_when_stalled(collect(combine(*sources)), *stalls)
    for source in sources:
        assert source.closed
    assert_no_pending_tasks()


# --------------------------------------------------------------------------- zip_


@pytest.mark.parametrize(
    "make_sources",
    [
        lambda: ([1, 2, 3], "ab"),
        lambda: (agen([1, 2, 3]), agen("ab")),
        lambda: (sync_gen([1, 2, 3]), agen("ab")),
        lambda: (TrackedSource([1, 2, 3]), [1, 2] | map_(lambda x: "_ab"[x])),
    ],
    ids=["sync", "async", "mixed", "with a flow"],
)
async def test_zip_stops_at_the_shortest_source(make_sources: Callable[[], Any]) -> None:
    assert await collect(zip_(*make_sources())) == [(1, "a"), (2, "b")]


async def test_zip_closes_the_longer_sources_when_the_shortest_ends() -> None:
    longer = TrackedSource(range(10))
    assert await collect(zip_(longer, TrackedSource("ab"))) == [(0, "a"), (1, "b")]
    assert longer.closed
    assert not longer.exhausted


async def test_zip_of_one_and_of_three_sources() -> None:
    assert await collect(zip_(agen("ab"))) == [("a",), ("b",)]
    assert await collect(zip_("ab", range(5), agen([True, False, None]))) == [
        ("a", 0, True),
        ("b", 1, False),
    ]


@pytest.mark.parametrize(
    "make_sources",
    [
        lambda: ([1, 2, 3], "abc"),
        lambda: (agen([1, 2, 3]), agen("abc")),
        lambda: ([1, 2, 3], agen("abc")),
    ],
    ids=["sync", "async", "mixed"],
)
async def test_strict_zip_of_equal_lengths(make_sources: Callable[[], Any]) -> None:
    assert await collect(zip_(*make_sources(), strict=True)) == [(1, "a"), (2, "b"), (3, "c")]


@pytest.mark.parametrize(
    "make_sources",
    [
        lambda: ([1, 2, 3], "ab"),
        lambda: ("ab", [1, 2, 3]),
        lambda: (agen([1, 2, 3]), agen("ab")),
        lambda: (agen("ab"), [1, 2, 3]),
    ],
    ids=["sync, second shorter", "sync, first shorter", "async", "mixed"],
)
async def test_strict_zip_of_unequal_lengths_is_a_value_error(
    make_sources: Callable[[], Any],
) -> None:
    got: list[tuple[Any, ...]] = []

    async def consume() -> None:
        async with zip_(*make_sources(), strict=True) as rows:
            async for row in rows:
                got.append(row)

    with pytest.raises(ValueError, match="zip"):
        await consume()
    # The rows before the shorter source ended were delivered.
    assert len(got) == 2


def test_zip_strict_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match="strict"):
        zip_([1], [2], strict="yes")


async def test_zip_pulls_async_sources_concurrently() -> None:
    # The first source can only produce once the second has been asked for an
    # item: pulling the sources one after the other would deadlock.
    asked = asyncio.Event()

    async def waits_for_the_other() -> AsyncIterator[str]:
        for item in "ab":
            await asyncio.wait_for(asked.wait(), timeout=2)
            asked.clear()
            yield item

    async def signals() -> AsyncIterator[int]:
        for item in range(2):
            asked.set()
            yield item

    assert await collect(zip_(waits_for_the_other(), signals())) == [("a", 0), ("b", 1)]


# --------------------------------------------------------------------------- merge


@pytest.mark.parametrize(
    "make_sources",
    [
        lambda: ([1, 2, 3], [10, 20]),
        lambda: (agen([1, 2, 3]), agen([10, 20])),
        lambda: (sync_gen([1, 2, 3]), agen([10, 20]), []),
        lambda: (iterate([1, 2, 3]), [10, 20] | map_(int)),
    ],
    ids=["sync", "async", "mixed", "flows"],
)
async def test_merge_yields_every_item_keeping_each_sources_order(
    make_sources: Callable[[], Any],
) -> None:
    items = await collect(merge(*make_sources()))
    assert sorted(items) == [1, 2, 3, 10, 20]
    assert [x for x in items if x < 10] == [1, 2, 3]
    assert [x for x in items if x >= 10] == [10, 20]


async def test_merge_does_not_wait_for_a_slow_source() -> None:
    slow = Stalling[int]([])
    fast = TrackedSource([1, 2, 3])
    async with merge(slow, fast) as items:
        assert [await anext(items) for _ in range(3)] == [1, 2, 3]
    assert slow.closed
    assert fast.finished
    assert_no_pending_tasks()


async def test_merge_yields_items_as_they_arrive() -> None:
    # Sources that wait before each item: after each round the merge lets the sources
    # it woke run once, finds nothing at hand, and waits for whichever comes first.
    with virtual_clock() as clock:

        async def ticks(name: str, period: float, count: int) -> AsyncIterator[tuple[str, int]]:
            for i in range(count):
                await clock.sleep(period)
                yield (name, i)

        got: list[tuple[float, tuple[str, int]]] = []
        async with merge(ticks("a", 2, 3), ticks("b", 2.5, 2), [("c", 0)]) as items:
            async for item in items:
                got.append((clock.now(), item))
    assert got == [
        (0.0, ("c", 0)),
        (2.0, ("a", 0)),
        (2.5, ("b", 0)),
        (4.0, ("a", 1)),
        (5.0, ("b", 1)),
        (6.0, ("a", 2)),
    ]
    assert_no_pending_tasks()


@pytest.mark.parametrize("passes", range(1, 9))
async def test_cancelling_a_merge_of_ready_sources_closes_every_source(passes: int) -> None:
    # Every source has its next item at hand, so the merge waits only in its one
    # yield to the producers it woke: cancelled there (or at its first pulls), it
    # closes every source and leaves no task behind.
    sources = [TrackedSource(range(10**6)), TrackedSource(range(10**6))]
    got: list[int] = []

    async def consume() -> None:
        async for item in merge(*sources):
            got.append(item)

    task = asyncio.create_task(consume())
    for _ in range(passes):
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for source in sources:
        source.assert_closed()
    assert sum(source.pulls for source in sources) <= len(got) + len(sources)
    assert_no_pending_tasks()


async def test_merge_keeps_at_most_one_pending_item_per_source() -> None:
    sources = [TrackedSource(range(50)), TrackedSource(range(100, 150))]
    consumed = [0, 0]
    async with merge(*sources) as items:
        async for item in items:
            consumed[item >= 100] += 1
            for source, taken in zip(sources, consumed, strict=True):
                assert source.pulls <= taken + 1
            if sum(consumed) == 30:
                break
    assert consumed[0] > 0
    assert consumed[1] > 0
    assert_no_pending_tasks()


# --------------------------------------------------------------------------- concat


async def test_concat_yields_the_sources_one_after_the_other() -> None:
    assert await collect(concat([1, 2], agen([3]), [], range(4, 6) | map_(int))) == [1, 2, 3, 4, 5]
    assert await collect(concat(agen("ab"))) == ["a", "b"]


async def test_concat_opens_a_source_only_when_the_previous_one_is_exhausted() -> None:
    first, second = TrackedSource([1, 2]), TrackedSource([3])
    async with concat(first, second) as items:
        assert [await anext(items), await anext(items)] == [1, 2]
        assert second.pulls == 0
        assert await anext(items) == 3
        assert first.exhausted


async def test_concat_closes_the_sources_it_did_not_reach_on_early_exit() -> None:
    first, second = TrackedSource([1, 2]), TrackedSource([3])
    assert await collect(concat(first, second) | take(1)) == [1]
    assert first.closed
    assert second.closed
