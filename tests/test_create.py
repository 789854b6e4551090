"""Create operators: iterate, empty, repeat."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import aiostream
import pytest

from streamkit import Flow, collect, count, empty, first, iterate, last, map_, repeat, take
from streamkit.testing import SourceError, TrackedSource, assert_no_pending_tasks
from tests.conftest import Stalling, agen, cancel_when_stalled, notes, sync_gen

if TYPE_CHECKING:
    from collections.abc import Callable

# --------------------------------------------------------------------------- iterate

SOURCES: dict[str, Callable[[], Any]] = {
    "list": lambda: ["a", "b", "c"],
    "str": lambda: "abc",
    "sync generator": lambda: sync_gen("abc"),
    "async generator": lambda: agen("abc"),
    "TrackedSource": lambda: TrackedSource("abc"),
    "aiostream stream": lambda: aiostream.stream.iterate("abc"),
    "flow": lambda: "abc" | map_(str),
    "iterate": lambda: iterate("abc"),
}


@pytest.mark.parametrize("make_source", SOURCES.values(), ids=SOURCES.keys())
async def test_iterate_turns_any_source_into_a_flow(make_source: Callable[[], Any]) -> None:
    flow = iterate(make_source())
    assert isinstance(flow, Flow)
    assert await collect(flow) == ["a", "b", "c"]


async def test_iterate_is_lazy_and_pipeable() -> None:
    source = TrackedSource(range(5))
    flow = iterate(source) | map_(lambda x: x * 2)
    assert source.pulls == 0
    assert await collect(flow | take(2)) == [0, 2]
    assert source.closed


@pytest.mark.parametrize("ending", ["break", "take"])
async def test_iterate_closes_its_source_on_early_exit(ending: str) -> None:
    log: list[str] = []
    if ending == "break":
        async with iterate(agen(range(10), log)) as items:
            async for _ in items:
                break
    else:
        assert await collect(iterate(sync_gen(range(10), log)) | take(2)) == [0, 1]
    assert log == ["finally"]


async def test_iterate_of_an_empty_source() -> None:
    source = TrackedSource[int]([])
    assert await collect(iterate(source)) == []
    source.assert_closed()


async def test_iterate_propagates_a_source_error_and_closes_the_source() -> None:
    source = TrackedSource(range(5), fail_at=1)
    with pytest.raises(SourceError) as raised:
        await collect(iterate(source) | map_(str))
    assert notes(raised.value) == []
    assert source.closed


async def test_cancelling_a_consumer_of_iterate_closes_the_source() -> None:
    source = Stalling([1, 2])
    await cancel_when_stalled(collect(iterate(source)), source)
    assert source.closed
    assert_no_pending_tasks()


@pytest.mark.parametrize("not_a_source", [1, None, 2.5])
def test_iterate_rejects_a_non_iterable_at_construction(not_a_source: object) -> None:
    with pytest.raises(TypeError, match="source"):
        iterate(not_a_source)


# --------------------------------------------------------------------------- empty


async def test_empty_has_no_items() -> None:
    assert await collect(empty()) == []
    assert await count(empty()) == 0
    assert await first(empty(), default="none") == "none"
    assert await last(empty(), default="none") == "none"
    with pytest.raises(ValueError, match="empty"):
        await first(empty())


async def test_empty_never_calls_downstream_functions() -> None:
    calls: list[object] = []
    assert await collect(empty() | map_(calls.append)) == []
    assert calls == []


async def test_each_empty_flow_is_independent() -> None:
    one, two = empty(), empty()
    assert one is not two
    assert await collect(one) == []
    assert await collect(two) == []


# --------------------------------------------------------------------------- repeat


@pytest.mark.parametrize("times", [0, 1, 3])
async def test_repeat_yields_the_same_value_times_times(times: int) -> None:
    value = object()
    items = await collect(repeat(value, times))
    assert len(items) == times
    assert all(item is value for item in items)


async def test_repeat_without_times_is_endless() -> None:
    assert await collect(repeat("x") | take(1000)) == ["x"] * 1000
    async with repeat(0) as zeros:
        total = 0
        async for _ in zeros:
            total += 1
            if total == 50:
                break
    assert total == 50


async def test_repeat_times_is_a_keyword_or_positional_argument() -> None:
    assert await collect(repeat(7, times=2)) == [7, 7]
    assert await collect(repeat(7, 2) | map_(str)) == ["7", "7"]


@pytest.mark.parametrize(
    ("times", "error"),
    [(-1, ValueError), ("2", TypeError), (2.0, TypeError), (True, TypeError)],
)
def test_repeat_rejects_a_bad_times_at_construction(times: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="times"):
        repeat("x", times)
