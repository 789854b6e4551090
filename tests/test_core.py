"""Stage and Flow: sources, composition, pipe, @stage, cleanup, notes, fusion."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import gc
import operator
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import aiostream
import pytest

from streamkit import (
    Flow,
    Stage,
    collect,
    count,
    filter_,
    first,
    fold,
    iterate,
    last,
    map_,
    pipe,
    scan,
    skip,
    stage,
    take,
    tap,
)
from streamkit.testing import SourceError, TrackedSource, assert_no_pending_tasks
from tests.conftest import (
    CALLABLE_KINDS,
    Stalling,
    agen,
    as_kind,
    cancel_when_stalled,
    note,
    notes,
    raise_on,
    sync_gen,
)

# --------------------------------------------------------------------------- helpers


def negate(x: int) -> int:
    return -x


def is_even(x: int) -> bool:
    return x % 2 == 0


def explode_on_6(x: int) -> int:
    if x == 6:
        raise KeyError(x)
    return x


class Countdown:
    """A plain iterable that is neither a sequence nor a generator."""

    def __iter__(self) -> Iterator[int]:
        return iter([3, 2, 1])


class AsyncCountdown:
    """An async iterable whose iterator is not a generator and has no aclose."""

    def __aiter__(self) -> AsyncIterator[int]:
        return self._Iterator()

    class _Iterator:
        def __init__(self) -> None:
            self.left = [3, 2, 1]

        def __aiter__(self) -> AsyncCountdown._Iterator:
            return self

        async def __anext__(self) -> int:
            if not self.left:
                raise StopAsyncIteration
            return self.left.pop(0)


SOURCES: dict[str, Callable[[], Any]] = {
    "list": lambda: [3, 2, 1],
    "tuple": lambda: (3, 2, 1),
    "range": lambda: range(3, 0, -1),
    "iterator": lambda: iter([3, 2, 1]),
    "sync generator": lambda: sync_gen([3, 2, 1]),
    "plain iterable": Countdown,
    "async generator": lambda: agen([3, 2, 1]),
    "async iterable": AsyncCountdown,
    "TrackedSource": lambda: TrackedSource([3, 2, 1]),
    "aiostream stream": lambda: aiostream.stream.iterate([3, 2, 1]),
    "piped aiostream stream": lambda: (
        aiostream.stream.range(4, 0, -1) | aiostream.pipe.filter(lambda x: x < 4)
    ),
    "streamkit flow": lambda: iterate([3, 2, 1]),
}


# --------------------------------------------------------------------------- sources


@pytest.mark.parametrize("make_source", SOURCES.values(), ids=SOURCES.keys())
@pytest.mark.parametrize("how", ["source | stage", "stage(source)"])
async def test_every_kind_of_source_gives_a_flow(make_source: Callable[[], Any], how: str) -> None:
    negated = map_(negate) | filter_(lambda x: x != -2)
    source = make_source()
    flow = source | negated if how == "source | stage" else negated(source)
    assert isinstance(flow, Flow)
    assert await collect(flow) == [-3, -1]


@pytest.mark.parametrize("make_source", SOURCES.values(), ids=SOURCES.keys())
async def test_every_kind_of_source_through_a_non_fused_stage(
    make_source: Callable[[], Any],
) -> None:
    assert await collect(make_source() | skip(1) | map_(negate)) == [-2, -1]


async def test_a_flow_is_an_async_iterator_and_an_async_context_manager() -> None:
    flow = [1, 2] | map_(negate)
    assert isinstance(flow, AsyncIterator)
    assert await anext(flow) == -1
    async with flow as entered:
        assert entered is flow
        assert [x async for x in entered] == [-2]


async def test_a_flow_is_lazy() -> None:
    calls: list[int] = []
    source = TrackedSource([1, 2, 3])
    flow = source | tap(calls.append) | skip(0)
    await asyncio.sleep(0)
    assert (source.pulls, calls) == (0, [])
    assert await anext(flow) == 1
    assert (source.pulls, calls) == (1, [1])
    await flow.aclose()


@pytest.mark.parametrize("not_a_source", [5, None, object()])
def test_a_non_iterable_source_is_a_type_error(not_a_source: object) -> None:
    with pytest.raises(TypeError, match="source must be an iterable or an async iterable"):
        _ = not_a_source | map_(negate)
    with pytest.raises(TypeError, match="source must be an iterable or an async iterable"):
        map_(negate)(not_a_source)


# --------------------------------------------------------------------------- composition


async def test_composed_stages_give_what_the_chain_gives() -> None:
    first_part = map_(negate) | filter_(is_even)
    second_part = skip(1) | map_(str)
    whole = first_part | second_part
    assert isinstance(whole, Stage)
    assert await collect(range(6) | whole) == ["-2", "-4"]
    assert await collect(range(6) | first_part | second_part) == ["-2", "-4"]
    assert await collect(whole(agen(range(6)))) == ["-2", "-4"]


async def test_pipe_composes_left_to_right() -> None:
    stages = [map_(lambda x: x + 1), map_(lambda x: x * 10), take(2)]
    composed = pipe(*stages)
    assert isinstance(composed, Stage)
    assert await collect(range(5) | composed) == [10, 20]
    assert await collect(range(5) | stages[0] | stages[1] | stages[2]) == [10, 20]


@pytest.mark.parametrize("make_source", SOURCES.values(), ids=SOURCES.keys())
async def test_the_empty_pipe_is_the_identity(make_source: Callable[[], Any]) -> None:
    assert await collect(make_source() | pipe()) == [3, 2, 1]
    assert await collect(pipe()(make_source())) == [3, 2, 1]
    assert await collect(make_source() | (pipe() | map_(negate) | pipe())) == [-3, -2, -1]


def test_pipe_rejects_what_is_not_a_stage() -> None:
    with pytest.raises(TypeError, match="stages"):
        pipe(map_(negate), negate)


def test_a_stage_is_immutable() -> None:
    mapped = map_(negate)
    with pytest.raises(dataclasses.FrozenInstanceError):
        mapped.steps = ()


async def test_composing_leaves_the_operands_unchanged() -> None:
    mapped = map_(negate)
    longer = mapped | filter_(is_even) | take(1)
    assert len(mapped.steps) == 1
    assert await collect(range(4) | mapped) == [0, -1, -2, -3]
    assert await collect(range(1, 4) | longer) == [-2]


async def test_a_stage_runs_twice_as_two_independent_flows() -> None:
    doubled = map_(lambda x: x * 2) | scan(operator.add, 0)
    one, two = doubled([1, 2, 3]), doubled([1, 2, 3])
    assert one is not two
    # Interleaved pulls: neither flow sees the other's state.
    assert [await anext(one), await anext(two), await anext(one), await anext(two)] == [2, 2, 6, 6]
    assert await collect(one) == [12]
    assert await collect(two) == [12]


async def test_a_stage_runs_concurrently_on_several_sources() -> None:
    async def slow_inc(x: int) -> int:
        await asyncio.sleep(0)
        return x + 1

    shared = map_(slow_inc) | filter_(is_even) | scan(operator.add, 0)
    results = await asyncio.gather(*(collect(agen(range(n)) | shared) for n in range(1, 6)))
    assert results == [[], [2], [2], [2, 6], [2, 6]]


async def test_call_modes_are_decided_again_in_each_run() -> None:
    # A function that returns an awaitable in one run and a plain value in the
    # next: each run classifies it by its own first result.
    returns_awaitable = True

    def sometimes_async(x: int) -> Any:
        return asyncio.sleep(0, x * 10) if returns_awaitable else x * 10

    reused = map_(sometimes_async) | filter_(bool)
    assert await collect([1, 2] | reused) == [10, 20]
    returns_awaitable = False
    assert await collect([1, 2] | reused) == [10, 20]
    assert await collect(agen([3]) | reused) == [30]


async def test_a_flow_piped_into_a_stage_is_handed_over() -> None:
    inner = [1, 2, 3] | map_(negate)
    outer = inner | map_(str)
    assert await collect(outer) == ["-1", "-2", "-3"]
    with pytest.raises(RuntimeError, match="piped into another stage"):
        await anext(inner)


async def test_a_started_flow_can_be_piped_on() -> None:
    started = agen([1, 2, 3]) | map_(negate)
    assert await anext(started) == -1
    assert await collect(started | map_(str)) == ["-2", "-3"]


# --------------------------------------------------------------------------- deterministic cleanup

CLOSING_STAGES: dict[str, Callable[[], Stage[Any, Any]]] = {
    "identity": pipe,
    "fused map and filter": lambda: map_(negate) | filter_(lambda x: x < 10),
    "take": lambda: take(100),
    "transform chain": lambda: skip(0) | scan(operator.add, 0) | map_(str) | take(50),
}


class Boom(Exception):
    pass


async def end_block(flow: Flow[Any], ending: str) -> None:
    async with flow as items:
        async for _ in items:
            if ending == "break":
                break
            if ending == "exception":
                raise Boom


@pytest.mark.parametrize("make_stage", CLOSING_STAGES.values(), ids=CLOSING_STAGES.keys())
@pytest.mark.parametrize("ending", ["break", "exception", "normal end"])
@pytest.mark.parametrize("source_kind", ["async generator", "sync generator", "TrackedSource"])
async def test_async_with_closes_every_upstream_however_the_block_ends(
    make_stage: Callable[[], Stage[Any, Any]], ending: str, source_kind: str
) -> None:
    log: list[str] = []
    tracked = TrackedSource(range(20))
    source: Any = {
        "async generator": agen(range(20), log),
        "sync generator": sync_gen(range(20), log),
        "TrackedSource": tracked,
    }[source_kind]
    flow = source | make_stage()
    if ending == "exception":
        with pytest.raises(Boom):
            await end_block(flow, ending)
    else:
        await end_block(flow, ending)
    if source_kind == "TrackedSource":
        assert tracked.finished
        assert tracked.exhausted == (ending == "normal end")
    else:
        assert log == ["finally"]


async def test_async_with_closes_a_source_that_was_never_iterated() -> None:
    source = TrackedSource(range(3))
    async with source | map_(negate) | take(2):
        pass
    assert source.closed
    assert source.pulls == 0


async def test_break_out_of_a_deep_chain_closes_the_source_before_exit_returns() -> None:
    log: list[str] = []
    chain = (
        map_(negate) | take(10) | filter_(is_even) | skip(1) | map_(str) | scan(operator.add, "")
    )
    async with agen(range(100), log) | chain as items:
        async for item in items:
            assert item == "-2"
            assert log == []
            break
    assert log == ["finally"]


# --------------------------------------------------------------------------- @stage


@stage
async def repeat_each(
    items: AsyncIterator[str], times: int, *, sep: str = ""
) -> AsyncIterator[str]:
    async for item in items:
        for _ in range(times):
            yield item + sep


@stage
async def first_n(items: AsyncIterator[int], n: int) -> AsyncIterator[int]:
    async for item in items:
        if n == 0:
            return
        n -= 1
        yield item


@stage
async def fail_after(items: AsyncIterator[int], n: int) -> AsyncIterator[int]:
    async for item in items:
        if n == 0:
            raise Boom
        n -= 1
        yield item


async def test_stage_decorator_makes_a_pipeable_factory() -> None:
    assert repeat_each.__name__ == "repeat_each"
    twice = repeat_each(2, sep="!")
    assert isinstance(twice, Stage)
    assert await collect(["a", "b"] | twice) == ["a!", "a!", "b!", "b!"]
    assert await collect(twice(agen(["c"]))) == ["c!", "c!"]
    # Reusable and composable with the built-in operators.
    assert await collect("xy" | map_(str.upper) | twice | take(3)) == ["X!", "X!", "Y!"]


async def test_a_stage_generator_that_ends_early_closes_its_upstream() -> None:
    source = TrackedSource(range(10))
    assert await collect(source | first_n(2)) == [0, 1]
    assert source.closed
    assert not source.exhausted


async def test_a_failing_stage_generator_closes_its_upstream() -> None:
    source = TrackedSource(range(10))
    with pytest.raises(Boom):
        await collect(source | fail_after(3))
    assert source.closed


async def test_a_stage_generator_stopped_downstream_closes_its_upstream() -> None:
    log: list[str] = []
    assert await collect(agen(range(10), log) | first_n(8) | take(2)) == [0, 1]
    assert log == ["finally"]


async def test_a_stage_generator_closes_its_upstream_on_cancellation() -> None:
    source = Stalling([1, 2])
    await cancel_when_stalled(collect(source | first_n(5)), source)
    assert source.closed
    assert_no_pending_tasks()


def test_a_stage_factory_checks_its_arguments_at_construction() -> None:
    # Like the built-in operators, a decorated factory called with arguments
    # its generator cannot take fails where it is called, not when it runs.
    with pytest.raises(TypeError, match="times"):
        repeat_each()
    with pytest.raises(TypeError, match="separator"):
        repeat_each(2, separator="-")


def test_stage_decorator_rejects_a_non_callable() -> None:
    with pytest.raises(TypeError, match="fn"):
        stage(42)


async def test_a_stage_function_that_returns_no_async_iterator_is_a_type_error() -> None:
    @stage
    def not_a_generator(items: AsyncIterator[int]) -> Any:
        return [1, 2]

    source = TrackedSource(range(3))
    with pytest.raises(TypeError, match="must return an async iterator"):
        await collect(source | map_(negate) | not_a_generator())
    assert source.closed


async def test_a_stage_coroutine_function_without_yield_fails_cleanly() -> None:
    # A forgotten `yield` makes a coroutine function: streamkit reports it with
    # a TypeError, and must not leave the coroutine un-awaited (a RuntimeWarning).
    @stage
    async def forgot_to_yield(items: AsyncIterator[int]) -> Any:
        return items

    source = TrackedSource(range(3))
    with pytest.raises(TypeError, match="must return an async iterator"):
        await collect(source | forgot_to_yield())
    assert source.closed
    gc.collect()


# --------------------------------------------------------------------------- item functions


@pytest.mark.parametrize("kind", CALLABLE_KINDS)
@pytest.mark.parametrize("source_kind", ["list", "async generator"])
async def test_item_functions_of_every_kind(kind: str, source_kind: str) -> None:
    seen: list[int] = []
    chain = (
        map_(as_kind(kind, lambda x: x * 10))
        | filter_(as_kind(kind, lambda x: x != 20))
        | tap(as_kind(kind, seen.append))
    )
    items = [1, 2, 3]
    source = items if source_kind == "list" else agen(items)
    assert await collect(source | chain) == [10, 30]
    assert seen == [10, 30]


async def test_an_awaitable_result_is_awaited_not_yielded() -> None:
    async def fetch(x: int) -> str:
        await asyncio.sleep(0)
        return f"<{x}>"

    assert await collect(range(3) | map_(lambda x: fetch(x))) == ["<0>", "<1>", "<2>"]
    assert await collect(range(3) | filter_(lambda x: asyncio.sleep(0, x == 1))) == [1]


# --------------------------------------------------------------------------- notes


@pytest.mark.parametrize(
    ("chain", "label", "index"),
    [
        (map_(explode_on_6), "map_(explode_on_6)", 6),
        (filter_(is_even) | map_(explode_on_6), "map_(explode_on_6)", 3),
        (map_(explode_on_6) | filter_(is_even), "map_(explode_on_6)", 6),
        (filter_(is_even) | filter_(lambda x: x > 0) | tap(explode_on_6), "tap(explode_on_6)", 2),
        (
            filter_(lambda x: x % 3 != 0) | map_(lambda x: x + 1) | filter_(explode_on_6),
            "filter_(explode_on_6)",
            3,
        ),
        (filter_(is_even) | skip(0) | map_(explode_on_6), "map_(explode_on_6)", 3),
        (skip(2) | map_(explode_on_6) | take(9), "map_(explode_on_6)", 4),
    ],
    ids=[
        "map",
        "map after filter",
        "map before filter",
        "tap after filters",
        "filter",
        "split",
        "skip",
    ],
)
@pytest.mark.parametrize("source_kind", ["list", "sync generator", "async generator"])
async def test_an_item_function_error_keeps_its_type_and_gains_a_note(
    chain: Stage[int, int], label: str, index: int, source_kind: str
) -> None:
    source = {"list": list, "sync generator": sync_gen, "async generator": agen}[source_kind](
        range(10)
    )
    with pytest.raises(KeyError) as raised:
        await collect(source | chain)
    assert notes(raised.value) == [note(label, index)]


async def test_the_note_names_the_callable() -> None:
    def parse(x: int) -> int:
        raise ValueError(x)

    with pytest.raises(ValueError, match="0") as raised:
        await collect(range(3) | map_(parse))
    assert notes(raised.value) == [note("map_(test_the_note_names_the_callable.<locals>.parse)", 0)]


async def test_the_very_exception_raised_propagates_with_one_note() -> None:
    error = LookupError("the original")

    def fail(x: int) -> int:
        raise error

    chain = skip(1) | map_(negate) | map_(fail) | skip(0) | map_(negate) | take(5)
    with pytest.raises(LookupError) as raised:
        await collect(agen(range(10)) | chain)
    assert raised.value is error
    assert len(notes(error)) == 1


class SourceFailure:
    """A sync iterable that raises `SourceError` at a position."""

    def __init__(self, at: int) -> None:
        self.at = at

    def __iter__(self) -> Iterator[int]:
        yield from range(self.at)
        raise SourceError(self.at)


@pytest.mark.parametrize(
    "make_source",
    [
        lambda: TrackedSource(range(5), fail_at=2),
        lambda: sync_gen(SourceFailure(2)),
    ],
    ids=["async source", "sync source"],
)
async def test_a_source_error_propagates_with_its_type_and_no_note(
    make_source: Callable[[], Any],
) -> None:
    with pytest.raises(SourceError) as raised:
        await collect(make_source() | map_(negate) | filter_(is_even) | tap(lambda x: None))
    assert notes(raised.value) == []


# --------------------------------------------------------------------------- fusion

FUNCTION_MODES: dict[str, list[str]] = {
    "all sync": ["plain function"] * 5,
    "all coroutine functions": ["coroutine function"] * 5,
    "all returning awaitables": ["lambda returning a coroutine"] * 5,
    "mixed": [
        "plain function",
        "coroutine function",
        "function returning a custom awaitable",
        "object with async __call__",
        "partial of plain function",
    ],
    "async after sync": ["plain function"] * 3 + ["lambda returning a coroutine"] * 2,
}


def logged_chain(
    log: list[tuple[str, int]], modes: list[str], fail_on: int | None = None
) -> list[Stage[int, int]]:
    """Five fusable stages whose functions log each call in order."""

    def logged(name: str, fn: Callable[[int], Any]) -> Callable[[int], Any]:
        def call(x: int) -> Any:
            log.append((name, x))
            if name == "double" and x == fail_on:
                raise KeyError(x)
            return fn(x)

        return call

    functions: list[tuple[str, Callable[[int], Any]]] = [
        ("inc", lambda x: x + 1),
        ("not_3", lambda x: x % 3 != 0),
        ("tap", lambda x: None),
        ("double", lambda x: x * 2),
        ("small", lambda x: x < 30),
    ]
    kinds = [map_, filter_, tap, map_, filter_]
    return [
        make(as_kind(mode, logged(name, fn)))
        for make, (name, fn), mode in zip(kinds, functions, modes, strict=True)
    ]


def reference(
    items: list[int], fail_on: int | None = None
) -> tuple[list[int], list[tuple[str, int]]]:
    """The same chain as plain Python: results and the call log."""
    log: list[tuple[str, int]] = []
    out: list[int] = []
    for x in items:
        x += 1
        log.append(("inc", x - 1))
        log.append(("not_3", x))
        if x % 3 == 0:
            continue
        log.append(("tap", x))
        log.append(("double", x))
        if x == fail_on:
            break
        x *= 2
        log.append(("small", x))
        if x < 30:
            out.append(x)
    return out, log


async def run_logged(
    split: bool, modes: list[str], source_kind: str, fail_on: int | None, tail: Stage[int, int]
) -> tuple[object, list[tuple[str, int]]]:
    log: list[tuple[str, int]] = []
    stages = logged_chain(log, modes, fail_on)
    if split:
        # skip(0) is not fusable: every operation runs in its own layer.
        stages = [part for each in stages for part in (each, skip(0))]
    chain = functools.reduce(operator.or_, stages) | tail
    items = list(range(20))
    source = items if source_kind == "list" else agen(items)
    try:
        outcome: object = await collect(source | chain)
    except KeyError as error:
        outcome = (type(error), error.args, notes(error))
    return outcome, log


@pytest.mark.parametrize("modes", FUNCTION_MODES.values(), ids=FUNCTION_MODES.keys())
@pytest.mark.parametrize("source_kind", ["list", "async generator"])
@pytest.mark.parametrize("fail_on", [None, 8], ids=["ok", "failing"])
async def test_fusion_is_unobservable(
    modes: list[str], source_kind: str, fail_on: int | None
) -> None:
    fused = await run_logged(False, modes, source_kind, fail_on, pipe())
    split = await run_logged(True, modes, source_kind, fail_on, pipe())
    assert fused == split

    expected, expected_log = reference(list(range(20)), fail_on)
    outcome, log = fused
    assert log == expected_log
    if fail_on is None:
        assert outcome == expected
    else:
        # 8 is the 6th item reaching `double`: 1, 2, 4, 5, 7, 8 (3 and 6 are dropped).
        double = logged_chain([], modes)[3]
        assert outcome == (KeyError, (8,), [note(double.label, 5)])


@pytest.mark.parametrize("modes", FUNCTION_MODES.values(), ids=FUNCTION_MODES.keys())
@pytest.mark.parametrize("source_kind", ["list", "async generator"])
async def test_fusion_is_unobservable_under_early_exit(modes: list[str], source_kind: str) -> None:
    fused = await run_logged(False, modes, source_kind, None, take(3))
    split = await run_logged(True, modes, source_kind, None, take(3))
    assert fused == split
    assert fused[0] == reference(list(range(20)))[0][:3]


# --------------------------------------------------------------------------- plain-loop fast path

Terminal = Callable[[Any], Any]

OK = [1, 2, 4, 5, 7, 8, 10, 11]
TERMINALS: dict[str, tuple[Terminal, object]] = {
    "collect": (collect, OK),
    "first": (first, OK[0]),
    "last": (last, OK[-1]),
    "count": (count, len(OK)),
    "fold": (lambda source: fold(source, lambda acc, x: [*acc, x], []), OK),
}


@pytest.mark.parametrize(("terminal", "expected"), TERMINALS.values(), ids=TERMINALS.keys())
@pytest.mark.parametrize("fail_on", [None, 7, 1], ids=["ok", "failing", "failing at once"])
async def test_the_plain_loop_matches_the_async_path(
    terminal: Terminal, expected: object, fail_on: int | None
) -> None:
    async def outcome(source: Any) -> object:
        chain = (
            map_(lambda x: x + 1)
            | filter_(lambda x: x % 3 != 0)
            | tap(lambda x: None)
            | map_(raise_on(fail_on))
        )
        try:
            return await terminal(source | chain)
        except KeyError as error:
            return (error.args, notes(error))

    items = list(range(12))
    from_list = await outcome(items)
    assert from_list == await outcome(agen(items))
    assert from_list == await outcome(sync_gen(items))
    failing_label = map_(raise_on(fail_on)).label
    if fail_on is None or (fail_on == 7 and terminal is first):
        assert from_list == expected
    elif fail_on == 7:
        # 7 is the 5th item to reach the last map: 1, 2, 4, 5, 7.
        assert from_list == ((7,), [note(failing_label, 4)])
    else:
        assert from_list == ((1,), [note(failing_label, 0)])


async def test_the_plain_loop_closes_a_sync_generator_source() -> None:
    log: list[str] = []
    with pytest.raises(KeyError):
        await collect(sync_gen(range(10), log) | map_(raise_on(3)))
    assert log == ["finally"]
    log.clear()
    assert await collect(sync_gen(range(3), log) | map_(negate)) == [0, -1, -2]
    assert log == ["finally"]
