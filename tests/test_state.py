"""Per-item state stages: envelop, unwrap, set_state, scan_state, reduce_point, fork, branch."""

from __future__ import annotations

import asyncio
import operator
import tracemalloc
from typing import IO, TYPE_CHECKING, Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import streamkit._state as state_module
from streamkit import Factory, collect, filter_, flat_map, map_, take, tap
from streamkit._records import EMPTY, Envelope, Key, Scope, State, StateLimitError, StateLimits
from streamkit._state import (
    BRANCH,
    branch,
    envelop,
    fork,
    reduce_point,
    scan_state,
    set_state,
    unwrap,
)
from streamkit.testing import (
    SourceError,
    TrackedSource,
    assert_no_pending_tasks,
    check_stage,
)
from tests.conftest import CALLABLE_KINDS, Stalling, agen, as_kind, cancel_when_stalled, notes

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

TOTAL = Key[int]("total")
LENGTH = Key[int]("length")
RUNNING = Key[int]("running")


def values(items: list[Envelope[Any]]) -> list[Any]:
    return [item.value for item in items]


def states(items: list[Envelope[Any]]) -> list[dict[str, Any]]:
    return [dict(item.state) for item in items]


# --------------------------------------------------------------------------- envelop, unwrap


async def test_envelop_shares_one_initial_state() -> None:
    items = await collect(range(3) | envelop({"run": 1, TOTAL: 0}))
    assert values(items) == [0, 1, 2]
    assert states(items) == [{"run": 1, "total": 0}] * 3
    assert items[0].state is items[1].state is items[2].state
    assert (await collect(["a"] | envelop()))[0].state is EMPTY
    initial = State({"a": 1})
    assert (await collect(["a"] | envelop(initial)))[0].state is initial


async def test_envelop_limits_travel_downstream() -> None:
    limits = StateLimits(max_bytes=40)
    flow = ["x"] | envelop(limits=limits) | set_state("blob", lambda x: x * 50)
    with pytest.raises(StateLimitError) as raised:
        await collect(flow)
    assert raised.value.key == "blob"
    (note,) = notes(raised.value)
    assert note.startswith("streamkit: raised by set_state('blob', ")
    assert note.endswith("<lambda>) on item 0 of its input")
    items = await collect(["x"] | envelop(State({"a": 1}), limits=StateLimits.UNLIMITED))
    assert items[0].state.limits == StateLimits.UNLIMITED


async def test_envelop_refuses_envelopes_and_bad_state() -> None:
    with pytest.raises(TypeError, match="already is an Envelope") as raised:
        await collect([Envelope(1)] | envelop())
    assert notes(raised.value) == ["streamkit: raised by envelop() on item 0 of its input"]
    with pytest.raises(TypeError, match="state must be a State, a mapping or None"):
        envelop([("a", 1)])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="limits must be a StateLimits"):
        envelop(limits=100)  # type: ignore[arg-type]


async def test_unwrap() -> None:
    assert await collect(range(3) | envelop() | unwrap()) == [0, 1, 2]
    assert await collect(unwrap()([Envelope("a")])) == ["a"]
    with pytest.raises(TypeError, match="unwrap\\(\\) needs Envelope items, got int"):
        await collect([1] | unwrap())


# --------------------------------------------------------------------------- set_state


async def test_set_state_from_value() -> None:
    items = await collect(["ab", "c"] | envelop({"run": 1}) | set_state(LENGTH, len))
    assert values(items) == ["ab", "c"]
    assert states(items) == [{"run": 1, "length": 2}, {"run": 1, "length": 1}]


async def test_set_state_wraps_plain_items() -> None:
    items = await collect(["ab"] | set_state("length", len))
    assert items == [Envelope("ab", State({"length": 2}))]


async def test_set_state_with_state() -> None:
    flow = (
        [1, 2]
        | set_state(TOTAL, lambda x: x)
        | set_state("double", lambda x, state: state[TOTAL] * 2, with_state=True)
    )
    assert states(await collect(flow)) == [{"total": 1, "double": 2}, {"total": 2, "double": 4}]


@pytest.mark.parametrize("kind", CALLABLE_KINDS)
async def test_set_state_calls_any_kind_of_callable(kind: str) -> None:
    fn = as_kind(kind, lambda x: x * 10)
    items = await collect(agen([1, 2, 3]) | set_state(TOTAL, fn))
    assert [item.state[TOTAL] for item in items] == [10, 20, 30]
    with_state = as_kind(kind, lambda x, state: x + len(state))
    items = await collect([1, 2] | envelop({"a": 0}) | set_state("n", with_state, with_state=True))
    assert [item.state["n"] for item in items] == [2, 3]


async def test_set_state_errors_carry_a_note() -> None:
    def boom(x: int) -> int:
        if x == 2:
            raise KeyError("boom")
        return x

    with pytest.raises(KeyError) as raised:
        await collect(range(5) | set_state("k", boom))
    (note,) = notes(raised.value)
    assert note.startswith("streamkit: raised by set_state('k', ")
    assert note.endswith("boom) on item 2 of its input")


def test_set_state_validates_arguments() -> None:
    with pytest.raises(TypeError, match="key must be a Key or a str"):
        set_state(3, len)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="fn must be callable"):
        set_state("k", 3)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="with_state must be a bool"):
        set_state("k", len, with_state=1)  # type: ignore[call-overload]


async def test_scoped_keys_do_not_collide_across_stages() -> None:
    dedupe = Key[int]("count", scope=Scope.stage("dedupe"))
    enrich = Key[int]("count", scope=Scope.stage("enrich"))
    flow = [5] | set_state(dedupe, lambda x: x) | set_state(enrich, lambda x: x + 1)
    (item,) = await collect(flow)
    assert (item.state[dedupe], item.state[enrich]) == (5, 6)
    assert item.state["stage:dedupe/count"] == 5


# --------------------------------------------------------------------------- scan_state


async def test_scan_state_running_aggregate() -> None:
    stage = scan_state(RUNNING, operator.add, 0)
    items = await collect([3, 4, 5] | stage)
    assert [item.state[RUNNING] for item in items] == [3, 7, 12]
    # Each run starts again from the initial value.
    assert [item.state[RUNNING] for item in await collect([1, 1] | stage)] == [1, 2]


@pytest.mark.parametrize("kind", CALLABLE_KINDS)
async def test_scan_state_calls_any_kind_of_callable(kind: str) -> None:
    fn = as_kind(kind, operator.add)
    items = await collect(agen([1, 2, 3]) | scan_state(RUNNING, fn, 0))
    assert [item.state[RUNNING] for item in items] == [1, 3, 6]


async def test_scan_state_with_state() -> None:
    flow = (
        [1, 2, 3]
        | set_state("weight", lambda x: 10 * x)
        | scan_state("acc", lambda acc, x, state: acc + state["weight"], 0, with_state=True)
    )
    assert [item.state["acc"] for item in await collect(flow)] == [10, 30, 60]


async def test_scan_state_is_streaming() -> None:
    source = TrackedSource(range(100))
    items = await collect(source | scan_state(RUNNING, operator.add, 0) | take(2))
    assert [item.state[RUNNING] for item in items] == [0, 1]
    assert source.pulls == 2


def test_scan_state_validates_arguments() -> None:
    with pytest.raises(TypeError, match="fn must be callable"):
        scan_state("k", None, 0)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="key must be"):
        scan_state(None, operator.add, 0)  # type: ignore[call-overload]


# --------------------------------------------------------------------------- reduce_point


async def test_reduce_point_gives_every_item_the_aggregate() -> None:
    flow = [2, 3, 5] | envelop({"run": 1}) | reduce_point(TOTAL, operator.add, 0)
    items = await collect(flow)
    assert values(items) == [2, 3, 5]
    assert states(items) == [{"run": 1, "total": 10}] * 3
    # Items that shared a state still share one after the reduction point.
    assert items[0].state is items[2].state


async def test_reduce_point_runs_every_upstream_side_effect_first() -> None:
    log: list[str] = []
    flow = (
        range(3)
        | tap(lambda x: log.append(f"up {x}"))
        | reduce_point(TOTAL, operator.add, 0)
        | set_state("seen", lambda x, s: log.append(f"down {x} total={s[TOTAL]}"), with_state=True)
    )
    await collect(flow)
    assert log == [
        "up 0",
        "up 1",
        "up 2",
        "down 0 total=3",
        "down 1 total=3",
        "down 2 total=3",
    ]


async def test_reduce_point_closes_upstream_before_the_first_item() -> None:
    source = TrackedSource(range(3))
    async with source | reduce_point(TOTAL, operator.add, 0) as items:
        async for _ in items:
            assert source.exhausted
            assert source.closed
            break


@pytest.mark.parametrize("kind", CALLABLE_KINDS)
async def test_reduce_point_calls_any_kind_of_reducer(kind: str) -> None:
    reducer = as_kind(kind, max)
    items = await collect(agen([3, 9, 4]) | reduce_point("max", reducer, 0))
    assert [item.state["max"] for item in items] == [9, 9, 9]


async def test_reduce_point_with_state() -> None:
    flow = (
        [1, 2]
        | set_state("w", lambda x: 10 * x)
        | reduce_point("sum", lambda acc, x, state: acc + state["w"], 0, with_state=True)
    )
    assert [item.state["sum"] for item in await collect(flow)] == [30, 30]


async def test_reduce_point_emit_aggregate() -> None:
    flow = [1, 2, 3] | envelop({"run": 1}) | reduce_point(TOTAL, operator.add, 0, emit="aggregate")
    assert await collect(flow) == [Envelope(6, State({"run": 1, "total": 6}))]
    empty = await collect([] | reduce_point(TOTAL, operator.add, 0, emit="aggregate"))
    assert empty == [Envelope(0, State({"total": 0}))]


async def test_reduce_point_keeps_the_last_items_state_for_the_aggregate() -> None:
    flow = (
        [1, 2]
        | scan_state(RUNNING, operator.add, 0)
        | reduce_point("n", len_reducer, 0, emit="aggregate")
    )
    assert await collect(flow) == [Envelope(2, State({"running": 3, "n": 2}))]


def len_reducer(count: int, _: object) -> int:
    return count + 1


async def test_reduce_point_replay_reads_the_source_again() -> None:
    pulls: list[int] = []

    def fresh() -> AsyncIterator[int]:
        pulls.append(1)
        return agen(range(4))

    flow = agen(range(4)) | reduce_point(TOTAL, operator.add, 0, replay=fresh)
    items = await collect(flow)
    assert values(items) == [0, 1, 2, 3]
    assert {item.state[TOTAL] for item in items} == {6}
    assert pulls == [1]


@pytest.mark.parametrize(("replayed", "message"), [(5, "more items"), (3, "yielded 3 items")])
async def test_reduce_point_replay_must_yield_the_same_number_of_items(
    replayed: int, message: str
) -> None:
    source = TrackedSource(range(replayed))
    flow = range(4) | reduce_point(TOTAL, operator.add, 0, replay=lambda: source)
    with pytest.raises(ValueError, match=message):
        await collect(flow)
    source.assert_closed()


class RecordingFiles:
    """Wraps the spill-file factory: records the files reduce_point opens."""

    def __init__(self) -> None:
        self.files: list[IO[bytes]] = []
        self.original = state_module._open_spill_file  # pyright: ignore[reportPrivateUsage]

    def __call__(self) -> IO[bytes]:
        file = self.original()
        self.files.append(file)
        return file


@pytest.fixture
def spill_files(monkeypatch: pytest.MonkeyPatch) -> RecordingFiles:
    recorder = RecordingFiles()
    monkeypatch.setattr(state_module, "_open_spill_file", recorder)
    return recorder


async def test_reduce_point_spills_beyond_memory_limit_in_order(
    spill_files: RecordingFiles,
) -> None:
    n = 5000
    flow = range(n) | envelop({"run": 1}) | reduce_point(TOTAL, operator.add, 0, memory_limit=64)
    items = await collect(flow)
    assert values(items) == list(range(n))
    assert all(item.state == {"run": 1, "total": n * (n - 1) // 2} for item in items)
    assert len(spill_files.files) == 1
    assert spill_files.files[0].closed  # the temporary file is deleted when the run ends


async def test_reduce_point_does_not_spill_under_the_limit(spill_files: RecordingFiles) -> None:
    await collect(range(100) | reduce_point(TOTAL, operator.add, 0, memory_limit=100))
    await collect(range(1000) | reduce_point(TOTAL, operator.add, 0, memory_limit=None))
    assert spill_files.files == []


async def test_reduce_point_spill_file_is_deleted_on_early_exit(
    spill_files: RecordingFiles,
) -> None:
    flow = range(1000) | reduce_point(TOTAL, operator.add, 0, memory_limit=10) | take(3)
    assert values(await collect(flow)) == [0, 1, 2]
    assert spill_files.files[0].closed


async def test_reduce_point_memory_stays_bounded_when_spilling(spill_files: RecordingFiles) -> None:
    n = 20_000

    def rows() -> Any:
        return (f"row {i:06d} " + "x" * 200 for i in range(n))

    async def peak(memory_limit: int | None) -> int:
        tracemalloc.start()
        try:
            count = 0
            async with rows() | reduce_point(
                "n", len_reducer, 0, memory_limit=memory_limit
            ) as items:
                async for item in items:
                    assert item.value.startswith(f"row {count:06d}")
                    count += 1
            assert count == n
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    buffered = await peak(None)
    spilled = await peak(500)
    assert spill_files.files
    # Buffering holds ~20,000 strings of ~250 bytes (> 5 MB); spilling, a few hundred.
    assert spilled < buffered / 4, (spilled, buffered)


async def test_reduce_point_refuses_unpicklable_items_when_spilling() -> None:
    items = [lambda i=i: i for i in range(10)]
    with pytest.raises(TypeError, match=r"cannot be pickled.*memory_limit=None"):
        await collect(items | reduce_point("n", len_reducer, 0, memory_limit=3))
    assert len(await collect(items | reduce_point("n", len_reducer, 0, memory_limit=None))) == 10


async def test_reduce_point_reducer_errors_carry_a_note() -> None:
    def fail_on_two(acc: int, x: int) -> int:
        if x == 2:
            raise ArithmeticError("two")
        return acc + x

    source = TrackedSource(range(5))
    with pytest.raises(ArithmeticError) as raised:
        await collect(source | reduce_point("t", fail_on_two, 0))
    (note,) = notes(raised.value)
    assert note.startswith("streamkit: raised by reduce_point('t', ")
    assert note.endswith("fail_on_two) on item 2 of its input")
    assert source.closed


async def test_reduce_point_limit_errors_at_emission_carry_a_note() -> None:
    flow = (
        range(3)
        | envelop(limits=StateLimits(max_bytes=20))
        | reduce_point("all", lambda acc, x: [*acc, x] * 3, Factory(list))
    )
    with pytest.raises(StateLimitError) as raised:
        await collect(flow)
    assert raised.value.key == "all"
    (note,) = notes(raised.value)
    assert note.startswith("streamkit: raised by reduce_point('all', ")
    assert note.endswith(" on item 0 of its input")


def test_reduce_point_validates_arguments() -> None:
    with pytest.raises(TypeError, match="reducer must be callable"):
        reduce_point("k", 1, 0)  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="emit must be 'items' or 'aggregate'"):
        reduce_point("k", operator.add, 0, emit="all")  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="memory_limit must be >= 1"):
        reduce_point("k", operator.add, 0, memory_limit=0)
    with pytest.raises(TypeError, match="memory_limit must be an int"):
        reduce_point("k", operator.add, 0, memory_limit=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="replay must be callable"):
        reduce_point("k", operator.add, 0, replay=[1])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="replay has no use with emit='aggregate'"):
        reduce_point("k", operator.add, 0, replay=list, emit="aggregate")  # type: ignore[call-overload]


# --------------------------------------------------------------------------- cleanup contract


STAGES = {
    "envelop": lambda: envelop({"a": 1}),
    "envelop | unwrap": lambda: envelop() | unwrap(),
    "set_state": lambda: set_state(TOTAL, lambda x: x * 2),
    "set_state async": lambda: set_state(TOTAL, as_kind("coroutine function", abs)),
    "scan_state": lambda: scan_state(RUNNING, operator.add, 0),
    "reduce_point": lambda: reduce_point(TOTAL, operator.add, 0),
    "reduce_point spilling": lambda: reduce_point(TOTAL, operator.add, 0, memory_limit=3),
    "reduce_point aggregate": lambda: reduce_point(TOTAL, operator.add, 0, emit="aggregate"),
    "reduce_point replay": lambda: reduce_point(TOTAL, operator.add, 0, replay=lambda: range(10)),
    "fork merge": lambda: fork(map_(lambda x: x + 1), reduce_point(TOTAL, operator.add, 0)),
    "fork zip": lambda: fork(unwrap(), set_state("x", abs), combine="zip"),
    "branch": lambda: branch(a=take(2), b=filter_(lambda x: x % 2)),
    "branch zip": lambda: branch(a=unwrap(), b=set_state("x", abs), combine="zip", buffer=2),
}


@pytest.mark.parametrize("name", list(STAGES))
async def test_stage_cleans_up_however_it_stops(name: str) -> None:
    ordered = not name.startswith(("fork merge", "branch")) or name == "branch zip"
    await check_stage(STAGES[name], range(10), ordered=ordered)


@pytest.mark.parametrize("name", list(STAGES))
async def test_cancellation_while_the_source_waits(name: str) -> None:
    source = Stalling(range(2))
    await cancel_when_stalled(collect(source | STAGES[name]()), source)
    assert source.closed
    assert_no_pending_tasks()


# --------------------------------------------------------------------------- fork, branch


async def test_fork_merge_tags_items_with_their_branch() -> None:
    flow = range(3) | envelop({"run": 1}) | fork(map_(lambda x: x * 10), set_state("x", abs))
    items = await collect(flow)
    first = sorted((item.value, dict(item.state)) for item in items if item.state[BRANCH] == "0")
    second = sorted((item.value, dict(item.state)) for item in items if item.state[BRANCH] == "1")
    assert first == [(x * 10, {"run": 1, BRANCH.qualified: "0"}) for x in range(3)]
    assert second == [(x, {"run": 1, "x": x, BRANCH.qualified: "1"}) for x in range(3)]


async def test_branch_outputs_that_are_plain_values_get_the_empty_state() -> None:
    items = await collect(range(2) | envelop({"run": 1}) | fork(unwrap()))
    assert sorted((item.value, dict(item.state)) for item in items) == [
        (0, {BRANCH.qualified: "0"}),
        (1, {BRANCH.qualified: "0"}),
    ]


async def test_branch_state_changes_stay_in_their_branch() -> None:
    split = branch(
        totals=reduce_point(TOTAL, operator.add, 0),
        evens=filter_(lambda x: x % 2 == 0) | reduce_point(TOTAL, operator.add, 0),
        running=scan_state(RUNNING, operator.add, 0),
    )
    items = await collect(range(5) | envelop({"run": 1}) | split)
    seen: dict[str, list[tuple[Any, dict[str, Any]]]] = {}
    for item in items:
        state = dict(item.state)
        name = state.pop(BRANCH.qualified)
        seen.setdefault(name, []).append((item.value, state))
    assert seen["totals"] == [(x, {"run": 1, "total": 10}) for x in range(5)]
    assert seen["evens"] == [(x, {"run": 1, "total": 6}) for x in (0, 2, 4)]
    assert seen["running"] == [(x, {"run": 1, "running": sum(range(x + 1))}) for x in range(5)]


async def test_fork_zip_combines_one_output_per_input() -> None:
    both = fork(
        set_state("double", lambda x: 2 * x),
        set_state("negative", lambda x: -x),
        combine="zip",
    )
    items = await collect(range(3) | envelop({"run": 1}) | both)
    assert values(items) == [(0, 0), (1, 1), (2, 2)]
    assert states(items) == [{"run": 1, "double": 2 * x, "negative": -x} for x in range(3)]


async def test_branch_zip_gives_dicts() -> None:
    split = branch({"combine": unwrap()}, other=map_(lambda x: x + 1), combine="zip")
    items = await collect([1, 2] | split)
    assert values(items) == [{"combine": 1, "other": 2}, {"combine": 2, "other": 3}]


async def test_zip_refuses_branches_that_are_not_one_to_one() -> None:
    source = TrackedSource(range(10))
    flow = source | fork(unwrap(), flat_map(lambda e: [e, e]), combine="zip")
    with pytest.raises(ValueError, match="branch '1' \\(argument 1\\) yielded more items"):
        await collect(flow)
    source.assert_closed()
    assert_no_pending_tasks()
    with pytest.raises(ValueError, match="ended before the others") as raised:
        await collect(range(10) | fork(unwrap(), filter_(lambda x: x < 5), combine="zip"))
    assert any("exactly one item per input" in note for note in notes(raised.value))


async def test_an_error_in_one_branch_cancels_the_others() -> None:
    started = asyncio.Event()

    async def slow(value: int) -> int:
        started.set()
        await asyncio.Event().wait()  # never set: only cancellation ends it
        return value

    def fail(value: int) -> int:
        if value == 3:
            raise KeyError("branch failure")
        return value

    source = TrackedSource(range(100))
    with pytest.raises(KeyError, match="branch failure"):
        await collect(source | fork(map_(slow), map_(fail)))
    assert started.is_set()
    source.assert_closed()
    assert_no_pending_tasks()


async def test_a_source_error_reaches_the_consumer_through_branches() -> None:
    source = TrackedSource(range(10), fail_at=4)
    with pytest.raises(SourceError):
        await collect(source | fork(unwrap(), reduce_point(TOTAL, operator.add, 0)))
    source.assert_closed()
    assert_no_pending_tasks()


async def test_the_slowest_branch_paces_the_source() -> None:
    gate = asyncio.Event()

    async def gated(value: int) -> int:
        await gate.wait()
        return value

    source = TrackedSource(range(1000))
    buffer = 8
    got: list[Any] = []
    async with source | fork(unwrap(), map_(gated), buffer=buffer) as items:
        async for item in items:
            got.append(item)
            if len(got) == 50:
                break
            if len(got) == buffer:
                # The fast branch may not run more than `buffer` items ahead.
                for _ in range(20):
                    await asyncio.sleep(0)
                assert source.pulls <= buffer + 2, source.pulls
                gate.set()
    source.assert_closed()
    assert_no_pending_tasks()


async def test_closing_the_output_closes_every_branch_and_the_source() -> None:
    log: list[str] = []

    async def branch_source() -> AsyncIterator[int]:
        try:
            for i in range(100):
                yield i
        finally:
            log.append("source closed")

    flow = branch_source() | branch(a=unwrap(), b=map_(abs))
    async with flow as items:
        async for _ in items:
            break
    assert log == ["source closed"]
    assert_no_pending_tasks()


def test_fork_and_branch_validate_arguments() -> None:
    with pytest.raises(TypeError, match="fork\\(\\) needs at least one stage"):
        fork()
    with pytest.raises(TypeError, match="fork\\(\\) takes stages; argument 1 is int"):
        fork(unwrap(), 3)  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="combine must be 'merge' or 'zip'"):
        fork(unwrap(), combine="concat")  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="buffer must be >= 1"):
        fork(unwrap(), buffer=0)
    with pytest.raises(TypeError, match="branch\\(\\) needs at least one stage"):
        branch()
    with pytest.raises(TypeError, match="branch 'a' is str"):
        branch(a="stage")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="got branch 'a' twice"):
        branch({"a": unwrap()}, a=unwrap())
    with pytest.raises(TypeError, match="branch names must be non-empty strings"):
        branch({"": unwrap()})
    with pytest.raises(TypeError, match="stages must be a mapping"):
        branch([unwrap()])  # type: ignore[call-overload]


# --------------------------------------------------------------------------- differential


OPS = st.lists(
    st.tuples(
        st.sampled_from(["set", "scan", "reduce", "filter"]),
        st.sampled_from(["a", "b", "c"]),
        st.integers(min_value=1, max_value=4),
    ),
    max_size=6,
)


def model(items: list[int], ops: list[tuple[str, str, int]]) -> list[tuple[int, dict[str, Any]]]:
    """A list-based model of state threading: (value, state) pairs, one list per step."""
    rows: list[tuple[int, dict[str, Any]]] = [(x, {}) for x in items]
    for op, key, k in ops:
        if op == "set":
            rows = [(x, {**s, key: x * k}) for x, s in rows]
        elif op == "scan":
            acc = 0
            scanned = []
            for x, s in rows:
                acc = acc + x * k
                scanned.append((x, {**s, key: acc}))
            rows = scanned
        elif op == "reduce":
            total = max([-1, *(x * k for x, _ in rows)])
            rows = [(x, {**s, key: total}) for x, s in rows]
        else:
            rows = [(x, s) for x, s in rows if x % (k + 1)]
    return rows


def build(ops: list[tuple[str, str, int]], memory_limit: int | None) -> Any:
    stage: Any = envelop()
    for op, key, k in ops:
        if op == "set":
            stage = stage | set_state(key, lambda x, k=k: x * k)
        elif op == "scan":
            stage = stage | scan_state(key, lambda acc, x, k=k: acc + x * k, 0)
        elif op == "reduce":
            stage = stage | reduce_point(
                key, lambda acc, x, k=k: max(acc, x * k), -1, memory_limit=memory_limit
            )
        else:
            stage = stage | filter_(lambda x, k=k: x % (k + 1))
    return stage


@given(
    items=st.lists(st.integers(min_value=-50, max_value=50), max_size=30),
    ops=OPS,
    memory_limit=st.sampled_from([None, 1, 4]),
)
async def test_stages_agree_with_a_list_model(
    items: list[int], ops: list[tuple[str, str, int]], memory_limit: int | None
) -> None:
    got = await collect(items | build(ops, memory_limit))
    assert [(item.value, dict(item.state)) for item in got] == model(items, ops)
