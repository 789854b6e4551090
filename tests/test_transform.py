"""Transform operators: map_, tap, flat_map, flatten, scan, enumerate_."""

from __future__ import annotations

import asyncio
import operator
from typing import TYPE_CHECKING, Any

import pytest

from streamkit import (
    Factory,
    Stage,
    collect,
    enumerate_,
    flat_map,
    flatten,
    iterate,
    map_,
    scan,
    take,
    tap,
)
from streamkit.testing import SourceError, TrackedSource, assert_no_pending_tasks
from tests.conftest import (
    CALLABLE_KINDS,
    OpCase,
    Stalling,
    agen,
    as_kind,
    cancel_when_stalled,
    check_cancellation,
    check_early_exit,
    check_empty_input,
    check_normal_flow,
    check_source_error,
    note,
    notes,
    sync_gen,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

ITEMS = list(range(20))


def print_nothing(x: object) -> None:
    pass


async def listed_later(x: int) -> list[int]:
    await asyncio.sleep(0)
    return [x] * (x % 3)


async def async_double(x: int) -> int:
    await asyncio.sleep(0)
    return x * 2


CASES = [
    OpCase("map_", lambda: map_(lambda x: x * 2), ITEMS, [x * 2 for x in ITEMS]),
    OpCase("map_ async", lambda: map_(async_double), ITEMS, [x * 2 for x in ITEMS]),
    OpCase(
        "fused maps and tap",
        lambda: map_(async_double) | tap(print_nothing) | map_(lambda x: x + 1),
        ITEMS,
        [x * 2 + 1 for x in ITEMS],
    ),
    OpCase("tap", lambda: tap(lambda x: x * 100), ITEMS, ITEMS),
    OpCase(
        "flat_map to lists",
        lambda: flat_map(lambda x: [x, -x]),
        ITEMS,
        [y for x in ITEMS for y in (x, -x)],
    ),
    OpCase(
        "flat_map to async generators",
        lambda: flat_map(lambda x: agen([x] * 2)),
        ITEMS,
        [x for x in ITEMS for _ in range(2)],
    ),
    OpCase(
        "flat_map to awaitables of lists",
        lambda: flat_map(listed_later),
        ITEMS,
        [x for x in ITEMS for _ in range(x % 3)],
    ),
    OpCase("flatten", flatten, [[x, x] for x in ITEMS], [x for x in ITEMS for _ in range(2)]),
    OpCase("scan", lambda: scan(operator.add, 0), ITEMS, [sum(ITEMS[: i + 1]) for i in ITEMS]),
    OpCase("enumerate_", lambda: enumerate_(5), ITEMS, [(x + 5, x) for x in ITEMS]),
]


# --------------------------------------------------------------------------- contract checks


@pytest.mark.parametrize("case", CASES, ids=str)
async def test_normal_flow(case: OpCase) -> None:
    await check_normal_flow(case)


@pytest.mark.parametrize("case", CASES, ids=str)
async def test_empty_input(case: OpCase) -> None:
    await check_empty_input(case)


@pytest.mark.parametrize("case", CASES, ids=str)
async def test_early_exit_closes_the_source(case: OpCase) -> None:
    await check_early_exit(case)


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("fail_at", [0, 3])
async def test_a_source_error_propagates(case: OpCase, fail_at: int) -> None:
    await check_source_error(case, fail_at)


@pytest.mark.parametrize("case", CASES, ids=str)
async def test_cancelling_the_consumer_closes_the_source(case: OpCase) -> None:
    await check_cancellation(case)


def fails_on_3(x: int) -> int:
    if x == 3:
        raise KeyError(x)
    return x


FAILING: dict[str, Callable[[], Stage[int, Any]]] = {
    "map_": lambda: map_(fails_on_3),
    "tap": lambda: tap(fails_on_3),
    "flat_map": lambda: flat_map(lambda x: [fails_on_3(x)]),
    "scan": lambda: scan(lambda acc, x: acc + fails_on_3(x), 0),
}


@pytest.mark.parametrize("make", FAILING.values(), ids=FAILING.keys())
@pytest.mark.parametrize("source_kind", ["list", "async generator"])
async def test_an_item_function_error_gets_a_note_with_the_input_index(
    make: Callable[[], Stage[int, Any]], source_kind: str
) -> None:
    failing = make()
    source = TrackedSource(range(10)) if source_kind == "async generator" else list(range(10))
    with pytest.raises(KeyError) as raised:
        await collect(source | failing)
    assert notes(raised.value) == [note(failing.label, 3)]
    if isinstance(source, TrackedSource):
        assert source.closed
        assert source.pulls == 4


@pytest.mark.parametrize(
    ("call", "parameter"),
    [
        (lambda: map_(None), "fn"),
        (lambda: tap("print"), "fn"),
        (lambda: flat_map(3), "fn"),
        (lambda: scan(0, 0), "fn"),
        (lambda: enumerate_("1"), "start"),
        (lambda: enumerate_(1.0), "start"),
        (lambda: enumerate_(True), "start"),
    ],
)
def test_bad_arguments_are_rejected_at_construction(
    call: Callable[[], object], parameter: str
) -> None:
    with pytest.raises(TypeError, match=parameter):
        call()


# --------------------------------------------------------------------------- map_ and tap


async def test_map_applies_the_function_in_order() -> None:
    assert await collect(["a", "bb", "ccc"] | map_(len)) == [1, 2, 3]
    assert await collect(agen("xy") | map_(str.upper) | map_(lambda s: s * 2)) == ["XX", "YY"]


async def test_tap_passes_items_on_and_ignores_the_result() -> None:
    seen: list[int] = []

    async def record(x: int) -> str:
        await asyncio.sleep(0)
        seen.append(x)
        return "ignored"

    assert await collect(range(4) | tap(record)) == [0, 1, 2, 3]
    assert seen == [0, 1, 2, 3]


async def test_an_async_tap_finishes_before_its_item_moves_on() -> None:
    events: list[str] = []

    async def slow_record(x: int) -> None:
        await asyncio.sleep(0)
        events.append(f"tap {x}")

    async for item in range(3) | tap(slow_record) | take(3):
        events.append(f"got {item}")
    assert events == ["tap 0", "got 0", "tap 1", "got 1", "tap 2", "got 2"]


# --------------------------------------------------------------------------- flat_map


async def test_flat_map_accepts_every_kind_of_iterable_result() -> None:
    def sync_generator(x: int) -> Any:
        yield from range(x)

    async def awaitable_of_range(x: int) -> range:
        return range(x)

    results = {
        "list": await collect([0, 1, 2] | flat_map(lambda x: [x] * x)),
        "range": await collect([0, 1, 2] | flat_map(range)),
        "tuple": await collect([0, 1, 2] | flat_map(lambda x: tuple(range(x)))),
        "generator": await collect([0, 1, 2] | flat_map(sync_generator)),
        "async generator": await collect([0, 1, 2] | flat_map(lambda x: agen(range(x)))),
        "flow": await collect([0, 1, 2] | flat_map(lambda x: range(x) | map_(abs))),
        "coroutine function": await collect([0, 1, 2] | flat_map(awaitable_of_range)),
        "function returning an awaitable": await collect(
            [0, 1, 2] | flat_map(lambda x: awaitable_of_range(x))
        ),
    }
    expected = {name: [0, 0, 1] for name in results}
    expected["list"] = [1, 2, 2]
    assert results == expected


@pytest.mark.parametrize("kind", CALLABLE_KINDS)
async def test_flat_map_with_every_kind_of_function(kind: str) -> None:
    assert await collect(agen([1, 2]) | flat_map(as_kind(kind, lambda x: [x] * x))) == [1, 2, 2]


async def test_flat_map_to_a_non_iterable_is_a_type_error_with_a_note() -> None:
    def halve(x: int) -> Any:
        return x // 2

    stage = flat_map(halve)
    with pytest.raises(TypeError, match="must return an iterable or an async iterable") as raised:
        await collect(range(5) | stage)
    assert notes(raised.value) == [note(stage.label, 0)]


async def test_flat_map_propagates_an_inner_error_with_its_type() -> None:
    def inner(x: int) -> Any:
        return TrackedSource(range(3), fail_at=x)

    with pytest.raises(SourceError):
        await collect([5, 1] | flat_map(inner))


async def test_flat_map_closes_the_inner_async_iterator_on_early_exit() -> None:
    log: list[str] = []
    inners: list[TrackedSource[int]] = []

    def expand(x: int) -> AsyncIterator[int]:
        inner = TrackedSource(range(x, x + 10))
        inners.append(inner)
        return inner

    assert await collect(range(5) | flat_map(expand) | take(3)) == [0, 1, 2]
    assert len(inners) == 1
    assert inners[0].closed

    assert await collect(range(5) | flat_map(lambda x: agen(range(10), log)) | take(2)) == [0, 1]
    assert log == ["finally"]


async def test_flat_map_closes_the_inner_iterator_on_cancellation() -> None:
    inner = Stalling([1])
    await cancel_when_stalled(collect([0] | flat_map(lambda _: inner)), inner)
    assert inner.closed
    assert_no_pending_tasks()


# --------------------------------------------------------------------------- flatten


async def test_flatten_accepts_iterables_and_async_iterables() -> None:
    items: list[Any] = [[1, 2], (), range(3, 5), agen([5, 6]), iterate([7]), "ab"]
    assert await collect(items | flatten()) == [1, 2, 3, 4, 5, 6, 7, "a", "b"]


async def test_flatten_of_a_non_iterable_item_is_a_type_error_with_a_note() -> None:
    with pytest.raises(TypeError, match="flatten") as raised:
        await collect(agen([[1], [], 7, [2]]) | flatten())
    assert notes(raised.value) == [note("flatten()", 2)]


async def test_flatten_closes_the_inner_async_iterator_on_early_exit() -> None:
    log: list[str] = []
    items = [agen(range(10), log), agen(range(10), log)]
    assert await collect(items | flatten() | take(2)) == [0, 1]
    assert log == ["finally"]


async def test_flatten_stage_is_reusable() -> None:
    flat = flatten()
    assert await collect([[1], [2]] | flat) == [1, 2]
    assert await collect(sync_gen([[3], [4, 5]]) | flat) == [3, 4, 5]


# --------------------------------------------------------------------------- scan


async def test_scan_yields_the_running_accumulation_without_the_initial_value() -> None:
    assert await collect([1, 2, 3] | scan(operator.add, 100)) == [101, 103, 106]
    assert await collect([] | scan(operator.add, 100)) == []


async def test_scan_may_change_the_type() -> None:
    def count_letters(counts: dict[str, int], word: str) -> dict[str, int]:
        return {**counts, word[0]: counts.get(word[0], 0) + 1}

    assert await collect(["ab", "ac", "b"] | scan(count_letters, Factory(dict))) == [
        {"a": 1},
        {"a": 2},
        {"a": 2, "b": 1},
    ]
    assert await collect(range(3) | scan(lambda acc, x: acc + str(x), "")) == ["0", "01", "012"]


@pytest.mark.parametrize("kind", CALLABLE_KINDS)
@pytest.mark.parametrize("source_kind", ["list", "async generator"])
async def test_scan_with_every_kind_of_function(kind: str, source_kind: str) -> None:
    source = [1, 2, 3] if source_kind == "list" else agen([1, 2, 3])
    assert await collect(source | scan(as_kind(kind, operator.mul), 1)) == [1, 2, 6]


async def test_scan_starts_afresh_in_each_run() -> None:
    totals = scan(operator.add, 0)
    assert await collect([1, 2] | totals) == [1, 3]
    assert await collect([1, 2] | totals) == [1, 3]


# --------------------------------------------------------------------------- enumerate_


@pytest.mark.parametrize(
    ("start", "expected"), [(0, [(0, "a"), (1, "b")]), (-1, [(-1, "a"), (0, "b")])]
)
async def test_enumerate_counts_from_start(start: int, expected: list[tuple[int, str]]) -> None:
    assert await collect("ab" | enumerate_(start)) == expected
    assert await collect(agen("ab") | enumerate_(start)) == expected


async def test_enumerate_defaults_to_zero_and_restarts_in_each_run() -> None:
    numbered = enumerate_()
    assert await collect("xy" | numbered) == [(0, "x"), (1, "y")]
    assert await collect("z" | numbered) == [(0, "z")]
