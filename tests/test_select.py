"""Select operators: filter_, take, skip, take_while, skip_while, distinct."""

from __future__ import annotations

import asyncio
import operator
from typing import TYPE_CHECKING

import pytest

from streamkit import (
    collect,
    distinct,
    filter_,
    map_,
    pipe,
    scan,
    skip,
    skip_while,
    take,
    take_while,
)
from streamkit.testing import TrackedSource
from tests.conftest import (
    CALLABLE_KINDS,
    OpCase,
    agen,
    as_kind,
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
    from collections.abc import Callable

    from streamkit import Stage

ITEMS = list(range(20))
REPEATING = [x % 7 for x in range(20)]
SIGNED = [(-1) ** x * (x % 5) for x in range(20)]


async def async_is_odd(x: int) -> bool:
    await asyncio.sleep(0)
    return x % 2 == 1


CASES = [
    OpCase(
        "filter_", lambda: filter_(lambda x: x % 3 == 1), ITEMS, [x for x in ITEMS if x % 3 == 1]
    ),
    OpCase("filter_ async", lambda: filter_(async_is_odd), ITEMS, ITEMS[1::2]),
    OpCase(
        "fused filters",
        lambda: filter_(async_is_odd) | filter_(lambda x: x > 4),
        ITEMS,
        [x for x in ITEMS[1::2] if x > 4],
    ),
    OpCase("take", lambda: take(5), ITEMS, ITEMS[:5]),
    OpCase("skip", lambda: skip(3), ITEMS, ITEMS[3:]),
    OpCase("take_while", lambda: take_while(lambda x: x < 10), ITEMS, ITEMS[:10]),
    OpCase("skip_while", lambda: skip_while(lambda x: x < 5), ITEMS, ITEMS[5:]),
    OpCase("distinct", distinct, REPEATING, list(range(7))),
    OpCase("distinct with key", lambda: distinct(key=abs), SIGNED, [0, -1, 2, -3, 4]),
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


def fails_on_3(x: int) -> bool:
    if x == 3:
        raise KeyError(x)
    return True


FAILING: dict[str, Callable[[], Stage[int, int]]] = {
    "filter_": lambda: filter_(fails_on_3),
    "take_while": lambda: take_while(fails_on_3),
    "skip_while": lambda: skip_while(fails_on_3),
    "distinct key": lambda: distinct(key=fails_on_3),
}


@pytest.mark.parametrize("make", FAILING.values(), ids=FAILING.keys())
@pytest.mark.parametrize("source_kind", ["list", "async source"])
async def test_an_item_function_error_gets_a_note_with_the_input_index(
    make: Callable[[], Stage[int, int]], source_kind: str
) -> None:
    failing = make()
    source = TrackedSource(range(10)) if source_kind == "async source" else list(range(10))
    with pytest.raises(KeyError) as raised:
        await collect(source | failing)
    assert notes(raised.value) == [note(failing.label, 3)]
    if isinstance(source, TrackedSource):
        assert source.closed
        assert source.pulls == 4


async def async_predicate(x: int) -> bool:
    return x > 0


@pytest.mark.parametrize(
    ("call", "error", "parameter"),
    [
        (lambda: filter_(None), TypeError, "fn"),
        (lambda: take(-1), ValueError, "n"),
        (lambda: take("3"), TypeError, "n"),
        (lambda: take(2.0), TypeError, "n"),
        (lambda: take(True), TypeError, "n"),
        (lambda: take(None), TypeError, "n"),
        (lambda: skip(-1), ValueError, "n"),
        (lambda: skip("1"), TypeError, "n"),
        (lambda: take_while(1), TypeError, "fn"),
        (lambda: skip_while(None), TypeError, "fn"),
        (lambda: distinct(key=1), TypeError, "key"),
        (lambda: distinct(key=async_predicate), TypeError, "key"),
    ],
)
def test_bad_arguments_are_rejected_at_construction(
    call: Callable[[], object], error: type[Exception], parameter: str
) -> None:
    with pytest.raises(error, match=rf"\b{parameter}\b"):
        call()


# --------------------------------------------------------------------------- filter_


async def test_filter_keeps_items_whose_predicate_result_is_truthy() -> None:
    assert await collect(["", "a", "", "bc"] | filter_(len)) == ["a", "bc"]
    assert await collect([0, 1, None, [], [0]] | filter_(lambda x: x)) == [1, [0]]


@pytest.mark.parametrize("kind", CALLABLE_KINDS)
async def test_filter_with_every_kind_of_predicate(kind: str) -> None:
    assert await collect(agen(range(6)) | filter_(as_kind(kind, lambda x: x % 3 == 0))) == [0, 3]


# --------------------------------------------------------------------------- take and skip


@pytest.mark.parametrize(("n", "expected"), [(0, []), (2, [0, 1]), (3, [0, 1, 2]), (9, [0, 1, 2])])
async def test_take_yields_at_most_n_items(n: int, expected: list[int]) -> None:
    assert await collect(range(3) | take(n)) == expected
    source = TrackedSource(range(3))
    assert await collect(source | take(n)) == expected
    source.assert_closed()
    assert source.pulls == min(n, 4)


@pytest.mark.parametrize(
    "upstream",
    [pipe(), map_(abs), skip(0), map_(abs) | scan(operator.add, 0)],
    ids=["no stage", "fused map", "skip", "map and scan"],
)
async def test_take_closes_the_source_before_the_last_item_reaches_the_consumer(
    upstream: Stage[int, int],
) -> None:
    log: list[str] = []
    got: list[int] = []
    async for item in agen(range(100), log) | upstream | take(3):
        got.append(item)
        assert log == (["finally"] if len(got) == 3 else [])
    assert len(got) == 3

    source = TrackedSource(range(100))
    assert len(await collect(source | upstream | take(3))) == 3
    assert source.pulls == 3
    assert source.closed


@pytest.mark.parametrize(
    "upstream",
    [pipe(), map_(abs), skip(0), map_(abs) | scan(operator.add, 0)],
    ids=["no stage", "fused map", "skip", "map and scan"],
)
async def test_take_zero_closes_the_source_without_pulling(upstream: Stage[int, int]) -> None:
    source = TrackedSource(range(10))
    assert await collect(source | upstream | take(0)) == []
    assert source.pulls == 0
    assert source.closed


@pytest.mark.parametrize(("n", "expected"), [(0, [0, 1, 2]), (2, [2]), (3, []), (9, [])])
async def test_skip_drops_the_first_n_items(n: int, expected: list[int]) -> None:
    assert await collect(range(3) | skip(n)) == expected
    assert await collect(agen(range(3)) | skip(n)) == expected


# ------------------------------------------------------------------ take_while, skip_while


async def test_take_while_stops_at_the_first_failure_and_closes_at_once() -> None:
    calls: list[int] = []

    def small(x: int) -> bool:
        calls.append(x)
        return x < 3

    source = TrackedSource([1, 2, 5, 1, 2])
    assert await collect(source | take_while(small)) == [1, 2]
    assert calls == [1, 2, 5]
    assert source.pulls == 3
    assert source.closed


async def test_skip_while_yields_everything_from_the_first_failure_on() -> None:
    calls: list[int] = []

    def small(x: int) -> bool:
        calls.append(x)
        return x < 3

    assert await collect(sync_gen([1, 2, 5, 1, 7]) | skip_while(small)) == [5, 1, 7]
    assert calls == [1, 2, 5]


@pytest.mark.parametrize("kind", CALLABLE_KINDS)
async def test_while_operators_with_every_kind_of_predicate(kind: str) -> None:
    below_3 = as_kind(kind, lambda x: x < 3)
    assert await collect([1, 2, 5, 1] | take_while(below_3)) == [1, 2]
    assert await collect(agen([1, 2, 5, 1]) | skip_while(below_3)) == [5, 1]


async def test_take_while_and_skip_while_split_a_stream() -> None:
    items = [0, 2, 4, 5, 6, 7]
    head = await collect(items | take_while(lambda x: x % 2 == 0))
    tail = await collect(items | skip_while(lambda x: x % 2 == 0))
    assert (head, tail) == ([0, 2, 4], [5, 6, 7])


# --------------------------------------------------------------------------- distinct


async def test_distinct_keeps_first_occurrences_in_order() -> None:
    assert await collect("abracadabra" | distinct()) == ["a", "b", "r", "c", "d"]
    assert await collect(["a", "B", "b", "A", "c"] | distinct(key=str.lower)) == ["a", "B", "c"]


async def test_distinct_by_key_handles_unhashable_items() -> None:
    items = [[1, 2], [2, 1], [1, 2], [3]]
    assert await collect(items | distinct(key=tuple)) == [[1, 2], [2, 1], [3]]


async def test_distinct_of_unhashable_items_is_a_type_error_with_a_note() -> None:
    with pytest.raises(TypeError) as raised:
        await collect(agen([1, [2]]) | distinct())
    assert notes(raised.value) == [note("distinct()", 1)]


async def test_distinct_forgets_between_runs() -> None:
    once = distinct()
    assert await collect([1, 1, 2] | once) == [1, 2]
    assert await collect([2, 1] | once) == [2, 1]


async def test_an_async_predicate_is_awaited_once_per_item() -> None:
    calls: list[int] = []

    async def positive(x: int) -> bool:
        calls.append(x)
        await asyncio.sleep(0)
        return x > 0

    assert await collect([1, -1, 2] | filter_(positive) | take_while(positive)) == [1, 2]
    assert calls == [1, 1, -1, 2, 2]
