"""The fused segment's faster paths behave as its general loop does.

`collect` over a list, tuple or range through synchronous maps and at most
one filter runs the chain as nested ``map``/``filter`` builtins; an envelope
stream re-wraps in the loop itself. These tests compare each path with the
same stage over an async source (the general generator path): the same
items, the same calls in the same order, the same exception with the same
note, however it fails.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from streamkit import Envelope, Run, Stage, State, collect, drain, filter_, map_

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterable


async def _aiter(items: Iterable[Any]) -> AsyncIterator[Any]:
    for item in items:
        yield item


def _outcome(source: object, stage: Stage[Any, Any]) -> tuple[str, object]:
    """What collecting ``source | stage`` gives: its items, or its exception and notes."""
    try:
        return "items", asyncio.run(collect(source | stage))  # type: ignore[operator]
    except Exception as exc:  # the outcome under test
        return "error", (type(exc), str(exc), getattr(exc, "__notes__", []))


class Boom(Exception):
    pass


def _chain(
    log: list[tuple[str, int]], fail: tuple[str, int] | None
) -> tuple[Stage[int, int], Callable[[], None]]:
    """map(+1) -> filter(% 3) -> map(*2), logging every call; ``fail`` = (step, value)."""

    def check(step: str, x: int) -> None:
        log.append((step, x))
        if fail == (step, x):
            raise Boom(f"{step} on {x}")

    def inc(x: int) -> int:
        check("inc", x)
        return x + 1

    def keep(x: int) -> bool:
        check("keep", x)
        return x % 3 != 0

    def double(x: int) -> int:
        check("double", x)
        return x * 2

    stage = map_(inc, name="inc") | filter_(keep, name="keep") | map_(double, name="double")
    return stage, log.clear


@given(
    n=st.integers(min_value=0, max_value=3000),
    fail=st.none() | st.tuples(st.sampled_from(["inc", "keep", "double"]), st.integers(0, 3001)),
    kind=st.sampled_from([list, tuple, lambda r: r]),
)
def test_builtin_loop_matches_the_generator_path(
    n: int, fail: tuple[str, int] | None, kind: Callable[[range], Iterable[int]]
) -> None:
    log: list[tuple[str, int]] = []
    stage, clear = _chain(log, fail)
    expected = _outcome(_aiter(range(n)), stage)
    expected_calls = list(log)
    clear()
    got = _outcome(kind(range(n)), stage)
    assert got == expected
    assert log == expected_calls


def test_builtin_loop_names_the_failing_step_and_its_input_index() -> None:
    log: list[tuple[str, int]] = []
    # 2002 + 1 = 2003 passes the filter; double's input index counts the items kept before it.
    stage, _ = _chain(log, ("double", 2003))
    kind, detail = _outcome(list(range(3000)), stage)
    assert kind == "error"
    exc_type, message, notes = detail  # type: ignore[misc]
    assert exc_type is Boom
    assert message == "double on 2003"
    kept_before = sum(1 for x in range(2002) if (x + 1) % 3 != 0)
    assert notes == [f"streamkit: raised by double on item {kept_before} of its input"]


def test_a_filter_whose_result_cannot_be_tested_fails_as_in_the_generator_path() -> None:
    class Undecided:
        def __bool__(self) -> bool:
            raise Boom("no truth value")

    def undecided(x: int) -> object:
        return Undecided() if x == 1500 else True

    def ident(x: int) -> int:
        return x

    stage = map_(ident, name="first") | filter_(undecided, name="judge")
    assert _outcome(list(range(2000)), stage) == _outcome(_aiter(range(2000)), stage)


@pytest.mark.parametrize(
    "stage",
    [
        # the same function twice, a builtin function, a function of two arguments
        map_(abs) | map_(abs),
        map_(str) | filter_(bool),
        map_(lambda x, y=1: x + y) | filter_(lambda x: x % 2 == 0),
        filter_(lambda x: x % 2 == 0) | filter_(lambda x: x % 3 == 0),
    ],
)
def test_segments_off_the_builtin_path_give_the_same_items(stage: Stage[Any, Any]) -> None:
    assert _outcome(list(range(3000)), stage) == _outcome(_aiter(range(3000)), stage)


def test_a_function_that_cannot_take_one_argument_fails_naming_its_step() -> None:
    def two(x: int, y: int) -> int:
        return x + y

    stage = map_(lambda x: x, name="first") | map_(two, name="second")  # type: ignore[arg-type]
    expected = _outcome(_aiter(range(10)), stage)
    assert _outcome(list(range(10)), stage) == expected
    assert expected[0] == "error"
    assert "raised by second on item 0" in str(expected[1])


def test_the_builtin_loop_lets_other_tasks_run() -> None:
    ticks: list[int] = []

    async def ticker() -> None:
        while True:
            ticks.append(1)
            await asyncio.sleep(0)

    async def main() -> int:
        task = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        before = len(ticks)
        out = await collect(list(range(20_000)) | map_(lambda x: x + 1) | filter_(bool))
        during = len(ticks) - before
        task.cancel()
        assert len(out) == 20_000
        return during

    assert asyncio.run(main()) >= 10


def _model(n: int, fail: tuple[str, int] | None) -> tuple[str, object]:
    """What the chain of `_chain` gives on ``range(n)``, worked out by hand."""
    out: list[int] = []
    seen = {"inc": 0, "keep": 0, "double": 0}  # items that entered each step
    for x in range(n):
        for step, value in (("inc", x), ("keep", x + 1)):
            if fail == (step, value):
                note = f"streamkit: raised by {step} on item {seen[step]} of its input"
                return "error", (Boom, f"{step} on {value}", [note])
            seen[step] += 1
        if (x + 1) % 3 == 0:
            continue
        if fail == ("double", x + 1):
            note = f"streamkit: raised by double on item {seen['double']} of its input"
            return "error", (Boom, f"double on {x + 1}", [note])
        seen["double"] += 1
        out.append((x + 1) * 2)
    return "items", out


@given(
    n=st.integers(min_value=0, max_value=2500),
    fail=st.none() | st.tuples(st.sampled_from(["inc", "keep", "double"]), st.integers(0, 2501)),
)
def test_envelope_streams_re_wrap_once_per_item(n: int, fail: tuple[str, int] | None) -> None:
    log: list[tuple[str, int]] = []
    stage, clear = _chain(log, fail)
    state = State({"run": "test"})
    envelopes = [Envelope(i, state) for i in range(n)]
    kind, expected = _model(n, fail)
    for source in (envelopes, _aiter(envelopes)):
        clear()
        got = _outcome(source, stage)
        if kind == "error":
            assert got == (kind, expected)
        else:
            assert got[0] == "items"
            items: list[Envelope[int]] = got[1]  # type: ignore[assignment]
            assert [item.value for item in items] == expected
            assert all(item.state is state for item in items)


def test_the_plain_model_agrees_with_the_chain() -> None:
    log: list[tuple[str, int]] = []
    for fail in (None, ("inc", 5), ("keep", 6), ("double", 10)):
        stage, _ = _chain(log, fail)
        assert _outcome(_aiter(range(50)), stage) == _model(50, fail)


def test_an_envelope_passed_on_unchanged_is_the_same_object() -> None:
    state = State({"run": "test"})
    items = [Envelope(i, state) for i in range(2000)]

    async def main() -> list[Any]:
        return await collect(_aiter(items) | filter_(lambda x: x % 2 == 0))

    out = asyncio.run(main())
    assert all(a is b for a, b in zip(out, items[::2], strict=True))
    asyncio.run(drain(_aiter(items) | map_(lambda x: x)))


@given(
    fail=st.none() | st.tuples(st.sampled_from(["select", "double"]), st.integers(0, 2100)),
    awaits=st.booleans(),
)
def test_items_a_selective_filter_drops_skip_the_probe(
    fail: tuple[str, int] | None, awaits: bool
) -> None:
    # Until an item passes the filter, nothing says whether double is sync or async:
    # the dropped items take the compiled filter alone, the first one kept the probe.
    calls: list[tuple[str, int]] = []

    def select(x: int) -> bool:
        calls.append(("select", x))
        if fail == ("select", x):
            raise Boom(f"select on {x}")
        return x % 700 == 699

    def double_sync(x: int) -> int:
        calls.append(("double", x))
        if fail == ("double", x):
            raise Boom(f"double on {x}")
        return x * 2

    async def double_async(x: int) -> int:
        return double_sync(x)

    double: Callable[[int], Any] = double_async if awaits else double_sync
    stage = filter_(select, name="select") | map_(double, name="double")
    got = _outcome(_aiter(range(2100)), stage)
    kept = [x for x in range(2100) if x % 700 == 699]
    if fail is None or fail[1] >= 2100 or (fail[0] == "double" and fail[1] not in kept):
        assert got == ("items", [x * 2 for x in kept])
        return
    step, value = fail
    index = value if step == "select" else kept.index(value)
    note = f"streamkit: raised by {step} on item {index} of its input"
    assert got == ("error", (Boom, f"{step} on {value}", [note]))
    last = ("select", value) if step == "select" else ("double", value)
    assert calls[-1] == last


def _random_chain(
    kinds: list[tuple[str, int]], fail: tuple[int, int] | None
) -> tuple[Stage[int, int], Callable[[int], tuple[str, object]]]:
    """Maps (``x + c``) and filters (``x % c != 0``), and their model on ``range(n)``.

    ``fail = (position, k)``: the operation at ``position`` raises on its ``k``-th call
    (counted from 0, in this stage's every run: build a new chain for each run).
    """

    def make(position: int, kind: str, c: int) -> Callable[[int], Any]:
        calls = 0

        def fn(x: int) -> Any:
            nonlocal calls
            calls += 1
            if fail == (position, calls - 1):
                raise Boom(f"op {position} on {x}")
            return x + c if kind == "map" else x % c != 0

        return fn

    stage: Stage[int, int] | None = None
    for position, (kind, c) in enumerate(kinds):
        fn = make(position, kind, c)
        step = (
            map_(fn, name=f"op{position}") if kind == "map" else filter_(fn, name=f"op{position}")
        )
        stage = step if stage is None else stage | step
    assert stage is not None

    def model(n: int) -> tuple[str, object]:
        out: list[int] = []
        seen = [0] * len(kinds)
        for x in range(n):
            value: int | None = x
            for position, (kind, c) in enumerate(kinds):
                assert value is not None
                if fail == (position, seen[position]):
                    note = (
                        f"streamkit: raised by op{position} on item {seen[position]} of its input"
                    )
                    return "error", (Boom, f"op {position} on {value}", [note])
                seen[position] += 1
                if kind == "map":
                    value += c
                elif value % c == 0:
                    value = None
                    break
            if value is not None:
                out.append(value)
        return "items", out

    return stage, model


_PAIRS = [
    # every pair of neighbouring maps and filters, failing in its second operation, then more
    ([(first, 2), (second, 3), ("map", 1)], 100, (1, 30))
    for first in ("map", "filter")
    for second in ("map", "filter")
]


@given(
    kinds=st.lists(
        st.tuples(st.sampled_from(["map", "filter"]), st.integers(2, 4)), min_size=1, max_size=6
    ),
    n=st.integers(0, 2500),
    fail=st.none() | st.tuples(st.integers(0, 5), st.integers(0, 40)),
)
@example(*_PAIRS[0])
@example(*_PAIRS[1])
@example(*_PAIRS[2])
@example(*_PAIRS[3])
def test_every_fused_path_names_the_failing_operation(
    kinds: list[tuple[str, int]], n: int, fail: tuple[int, int] | None
) -> None:
    expected = _random_chain(kinds, fail)[1](n)
    for source in (list(range(n)), _aiter(range(n)), range(n)):
        assert _outcome(source, _random_chain(kinds, fail)[0]) == expected


def _watched_outcome(source: Iterable[int], stage: Stage[int, int]) -> tuple[object, object]:
    """What a watched `Run` collects from ``source``, with its per-step counts."""
    run = Run(stage, source, metrics=True)
    try:
        outcome: object = ("items", asyncio.run(run.collect()))
    except Exception as exc:  # the outcome under test
        outcome = ("error", (type(exc), str(exc), getattr(exc, "__notes__", [])))
    counts = [
        (s.label, s.items_in, s.items_out, s.filtered, s.errors, s.status)
        for s in run.statistics().stages
    ]
    return outcome, counts


@given(
    n=st.integers(min_value=0, max_value=5000),
    fail=st.none() | st.tuples(st.sampled_from(["inc", "keep", "double"]), st.integers(0, 5001)),
)
@example(n=4100, fail=("double", 2050))
@example(n=1026, fail=("inc", 1024))
def test_a_watched_run_over_a_list_counts_as_over_an_iterator(
    n: int, fail: tuple[str, int] | None
) -> None:
    """A watched run's builtin chunks give the items, calls, notes and counts of its item loop."""
    log: list[tuple[str, int]] = []
    stage, clear = _chain(log, fail)
    expected = _watched_outcome(iter(range(n)), stage)
    expected_calls = list(log)
    clear()
    assert _watched_outcome(list(range(n)), stage) == expected
    assert log == expected_calls
