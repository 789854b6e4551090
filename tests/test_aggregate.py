"""Aggregate operators (chunk, window, pairwise) and terminals (collect, fold, ...)."""

from __future__ import annotations

import asyncio
import functools
import itertools
import operator
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest

from streamkit import (
    chunk,
    collect,
    count,
    drain,
    filter_,
    first,
    fold,
    last,
    map_,
    pairwise,
    skip,
    tap,
    window,
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
    raise_on,
    sync_gen,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

ITEMS = list(range(20))


def windows(items: list[Any], size: int, step: int = 1) -> list[tuple[Any, ...]]:
    """Reference model of `window`: full windows only."""
    return [tuple(items[i : i + size]) for i in range(0, len(items) - size + 1, step)]


CASES = [
    OpCase("chunk", lambda: chunk(3), ITEMS, [ITEMS[i : i + 3] for i in range(0, 20, 3)]),
    OpCase("chunk(1)", lambda: chunk(1), ITEMS, [[x] for x in ITEMS]),
    OpCase(
        "chunk within",
        lambda: chunk(4, within=60),
        ITEMS,
        [ITEMS[i : i + 4] for i in range(0, 20, 4)],
    ),
    OpCase("window", lambda: window(3), ITEMS, windows(ITEMS, 3)),
    OpCase("window step < size", lambda: window(3, step=2), ITEMS, windows(ITEMS, 3, 2)),
    OpCase("window step > size", lambda: window(2, step=5), ITEMS, windows(ITEMS, 2, 5)),
    OpCase("pairwise", pairwise, ITEMS, list(itertools.pairwise(ITEMS))),
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
    assert_no_pending_tasks()


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("fail_at", [0, 3])
async def test_a_source_error_propagates(case: OpCase, fail_at: int) -> None:
    await check_source_error(case, fail_at)
    assert_no_pending_tasks()


@pytest.mark.parametrize("case", CASES, ids=str)
async def test_cancelling_the_consumer_closes_the_source(case: OpCase) -> None:
    await check_cancellation(case)


@pytest.mark.parametrize(
    ("call", "error", "parameter"),
    [
        (lambda: chunk(0), ValueError, "size"),
        (lambda: chunk(-2), ValueError, "size"),
        (lambda: chunk("2"), TypeError, "size"),
        (lambda: chunk(2.0), TypeError, "size"),
        (lambda: chunk(True), TypeError, "size"),
        (lambda: chunk(2, within=0), ValueError, "within"),
        (lambda: chunk(2, within=-1.5), ValueError, "within"),
        (lambda: chunk(2, within=float("inf")), ValueError, "within"),
        (lambda: chunk(2, within=float("nan")), ValueError, "within"),
        (lambda: chunk(2, within="1"), TypeError, "within"),
        (lambda: chunk(2, within=True), TypeError, "within"),
        (lambda: window(0), ValueError, "size"),
        (lambda: window("3"), TypeError, "size"),
        (lambda: window(2, step=0), ValueError, "step"),
        (lambda: window(2, step=1.5), TypeError, "step"),
    ],
)
def test_bad_arguments_are_rejected_at_construction(
    call: Callable[[], object], error: type[Exception], parameter: str
) -> None:
    with pytest.raises(error, match=rf"\b{parameter}\b"):
        call()


# --------------------------------------------------------------------------- chunk


@pytest.mark.parametrize(
    ("n", "size", "expected"),
    [
        (5, 2, [[0, 1], [2, 3], [4]]),
        (4, 2, [[0, 1], [2, 3]]),
        (2, 5, [[0, 1]]),
        (1, 1, [[0]]),
    ],
)
async def test_chunk_groups_items_with_a_shorter_last_list(
    n: int, size: int, expected: list[list[int]]
) -> None:
    assert await collect(range(n) | chunk(size)) == expected
    assert await collect(agen(range(n)) | chunk(size)) == expected


async def test_chunk_yields_a_new_list_each_time() -> None:
    lists = await collect(range(4) | chunk(2))
    lists[0].append(99)
    assert lists == [[0, 1, 99], [2, 3]]


async def slow_source(schedule: list[tuple[float, int]]) -> AsyncIterator[int]:
    """Yield each item after sleeping the given number of seconds."""
    for delay, item in schedule:
        await asyncio.sleep(delay)
        yield item


async def test_chunk_within_emits_a_partial_list_after_the_wait() -> None:
    schedule = [(0, 0), (0, 1), (0.3, 2), (0, 3), (0, 4)]
    assert await collect(slow_source(schedule) | chunk(10, within=0.05)) == [[0, 1], [2, 3, 4]]
    assert_no_pending_tasks()


async def test_chunk_within_emits_full_lists_without_waiting() -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await collect(agen(range(7)) | chunk(3, within=30)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert loop.time() - started < 5


async def test_chunk_within_never_emits_an_empty_list() -> None:
    schedule = [(0.15, 0), (0, 1)]
    assert await collect(slow_source(schedule) | chunk(5, within=0.02)) == [[0, 1]]


async def test_chunk_within_loses_no_item_and_keeps_the_order() -> None:
    schedule = [(0.01 * (i % 3), i) for i in range(12)]
    chunks = await collect(slow_source(schedule) | chunk(4, within=0.015))
    assert [x for part in chunks for x in part] == list(range(12))
    assert all(0 < len(part) <= 4 for part in chunks)


# --------------------------------------------------------------------------- window and pairwise


@pytest.mark.parametrize(
    ("size", "step"), [(1, 1), (2, 1), (3, 1), (3, 3), (2, 3), (5, 2), (7, 1), (8, 1)]
)
async def test_window_yields_only_full_windows(size: int, step: int) -> None:
    items = list(range(7))
    expected = windows(items, size, step)
    assert await collect(items | window(size, step=step)) == expected
    assert await collect(agen(items) | window(size, step=step)) == expected


async def test_window_items_are_tuples() -> None:
    assert await collect("abcd" | window(2, step=2)) == [("a", "b"), ("c", "d")]


@pytest.mark.parametrize(("items", "expected"), [([], []), ([1], []), ([1, 2], [(1, 2)])])
async def test_pairwise_of_short_inputs(items: list[int], expected: list[tuple[int, int]]) -> None:
    assert await collect(items | pairwise()) == expected
    assert await collect(agen(items) | pairwise()) == expected


async def test_pairwise_pairs_each_item_with_the_next() -> None:
    assert await collect("abc" | pairwise()) == [("a", "b"), ("b", "c")]
    assert await collect([None, None, 1] | pairwise()) == [(None, None), (None, 1)]


# --------------------------------------------------------------------------- terminals

Terminal = Callable[[Any], Any]
TERMINALS: dict[str, tuple[Terminal, object]] = {
    "collect": (collect, [3, 1, 2]),
    "fold": (lambda source: fold(source, operator.add, 10), 16),
    "first": (first, 3),
    "last": (last, 2),
    "count": (count, 3),
    "drain": (drain, None),
}


@pytest.mark.parametrize(("terminal", "expected"), TERMINALS.values(), ids=TERMINALS.keys())
@pytest.mark.parametrize(
    "make_source",
    [
        lambda: [3, 1, 2],
        lambda: agen([3, 1, 2]),
        lambda: sync_gen([3, 1, 2]),
        lambda: TrackedSource([3, 1, 2]),
        lambda: [3, 1, 2] | map_(abs),
        lambda: agen([4, 3, 1, 2]) | skip(1) | map_(abs),
    ],
    ids=["list", "async generator", "sync generator", "TrackedSource", "flow", "async flow"],
)
async def test_terminals_accept_any_source(
    terminal: Terminal, expected: object, make_source: Callable[[], Any]
) -> None:
    assert await terminal(make_source()) == expected


@pytest.mark.parametrize(("terminal", "expected"), TERMINALS.values(), ids=TERMINALS.keys())
@pytest.mark.parametrize(
    "stages",
    [map_(abs), skip(0), map_(abs) | skip(0) | tap(abs)],
    ids=["fused", "transform", "mixed"],
)
async def test_terminals_close_the_pipeline_before_they_return(
    terminal: Terminal, expected: object, stages: Any
) -> None:
    log: list[str] = []
    assert await terminal(agen([3, 1, 2], log) | stages) == expected
    assert log == ["finally"]
    log.clear()
    assert await terminal(sync_gen([3, 1, 2], log) | stages) == expected
    assert log == ["finally"]


async def test_first_stops_early_and_closes_at_once() -> None:
    source = TrackedSource(range(100))
    assert await first(source | map_(lambda x: x * 2)) == 0
    assert source.pulls == 1
    assert source.closed

    log: list[str] = []
    assert await first(agen(range(100), log) | skip(5)) == 5
    assert log == ["finally"]


@pytest.mark.parametrize(("terminal", "expected"), TERMINALS.values(), ids=TERMINALS.keys())
async def test_a_source_error_reaches_the_caller_and_closes_the_source(
    terminal: Terminal, expected: object
) -> None:
    source = TrackedSource([3, 1, 2], fail_at=0)
    with pytest.raises(SourceError):
        await terminal(source | map_(abs))
    assert source.closed


@pytest.mark.parametrize(("terminal", "expected"), TERMINALS.values(), ids=TERMINALS.keys())
async def test_an_item_function_error_reaches_the_caller_with_its_note(
    terminal: Terminal, expected: object
) -> None:
    log: list[str] = []
    failing = map_(raise_on(3))
    with pytest.raises(KeyError) as raised:
        await terminal(agen([4, 3, 1], log) | filter_(lambda x: x < 4) | skip(0) | failing)
    assert notes(raised.value) == [note(failing.label, 0)]
    assert log == ["finally"]


@pytest.mark.parametrize(("terminal", "expected"), TERMINALS.values(), ids=TERMINALS.keys())
async def test_cancelling_a_terminal_closes_the_source(
    terminal: Terminal, expected: object
) -> None:
    source = Stalling[int]([])
    await cancel_when_stalled(terminal(source | map_(abs)), source)
    assert source.closed
    assert_no_pending_tasks()


@pytest.mark.parametrize("terminal", [first, last])
async def test_first_and_last_of_an_empty_stream(terminal: Terminal) -> None:
    with pytest.raises(ValueError, match="empty"):
        await terminal([] | map_(abs))
    with pytest.raises(ValueError, match="empty"):
        await terminal(agen([]))
    sentinel = object()
    assert await terminal([], default=sentinel) is sentinel
    assert await terminal(agen([]), default=None) is None
    assert await terminal([0], default=None) == 0


async def test_count_and_drain_run_the_flow_to_the_end() -> None:
    seen: list[int] = []
    assert await count(range(5) | tap(seen.append)) == 5
    assert await drain(range(3) | tap(seen.append)) is None
    assert seen == [0, 1, 2, 3, 4, 0, 1, 2]
    assert await count([]) == 0


# --------------------------------------------------------------------------- fold


async def test_fold_combines_from_the_initial_value() -> None:
    assert await fold([1, 2, 3], operator.sub, 10) == 4
    assert await fold([], operator.sub, 10) == 10
    assert await fold(agen(["a", "bb"]), lambda total, s: total + len(s), 0) == 3


async def test_fold_may_change_the_type() -> None:
    def index(acc: dict[str, int], word: str) -> dict[str, int]:
        return {**acc, word: len(acc)}

    assert await fold(["x", "y"], index, {}) == {"x": 0, "y": 1}


@pytest.mark.parametrize("kind", CALLABLE_KINDS)
@pytest.mark.parametrize("source_kind", ["list", "async generator"])
async def test_fold_with_every_kind_of_function(kind: str, source_kind: str) -> None:
    source = [1, 2, 3, 4] if source_kind == "list" else agen([1, 2, 3, 4])
    assert await fold(source, as_kind(kind, operator.mul), 1) == 24


async def test_fold_agrees_with_reduce() -> None:
    items = [5, -2, 7, 0, 3]
    assert await fold(items, max, -100) == functools.reduce(max, items, -100)
    assert await fold(agen(items), operator.sub, 0) == functools.reduce(operator.sub, items, 0)


async def test_a_fold_function_error_gets_a_note() -> None:
    def add_unless_3(total: int, x: int) -> int:
        if x == 3:
            raise KeyError(x)
        return total + x

    with pytest.raises(KeyError) as raised:
        await fold(agen([1, 2, 3, 4]), add_unless_3, 0)
    assert notes(raised.value) == [
        note("fold(test_a_fold_function_error_gets_a_note.<locals>.add_unless_3)", 2)
    ]


async def test_fold_rejects_a_non_callable() -> None:
    with pytest.raises(TypeError, match="fn"):
        await fold([1], 3, 0)
