"""Whole-stream operators on envelope streams: they see values and keep states.

Covers scan, flat_map (sequential), flatten, take_while, skip_while, distinct,
enumerate_, chunk (with and without ``within``), window and pairwise: on a
stream of `Envelope` items each gives the values it gives on the plain stream,
and the states follow the rules of docs/state.md ("Operators on envelope
streams"); grouping operators merge the states of a group, later items win.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamkit import (
    Envelope,
    Stage,
    State,
    chunk,
    collect,
    distinct,
    enumerate_,
    flat_map,
    flatten,
    pairwise,
    scan,
    skip_while,
    take,
    take_while,
    window,
)
from streamkit.testing import TrackedSource
from tests.conftest import agen, note, notes

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

pytestmark = pytest.mark.filterwarnings("error")

VALUES = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3]


def numbered(values: list[Any]) -> list[Envelope[Any]]:
    """One envelope per value, each with its own state ``{"i": index}``."""
    return [Envelope(value, State({"i": i})) for i, value in enumerate(values)]


def add(total: int, x: int) -> int:
    return total + x


async def add_later(total: int, x: int) -> int:
    await asyncio.sleep(0)
    return total + x


def twice(x: int) -> list[int]:
    return [x, x]


async def twice_later(x: int) -> list[int]:
    await asyncio.sleep(0)
    return [x, x]


def twice_async(x: int) -> AsyncIterator[int]:
    return agen([x, x])


def below_5(x: int) -> bool:
    return x < 5


async def below_5_later(x: int) -> bool:
    await asyncio.sleep(0)
    return x < 5


def mod_3(x: int) -> int:
    return x % 3


# Every operator, built fresh for each run (a stage is reusable, but fresh is clearer).
OPERATORS: dict[str, Callable[[], Stage[Any, Any]]] = {
    "scan": lambda: scan(add, 0),
    "scan-async": lambda: scan(add_later, 0),
    "flat_map": lambda: flat_map(twice),
    "flat_map-awaitable": lambda: flat_map(twice_later),
    "flat_map-async-iterable": lambda: flat_map(twice_async),
    "take_while": lambda: take_while(below_5),
    "take_while-async": lambda: take_while(below_5_later),
    "skip_while": lambda: skip_while(below_5),
    "skip_while-async": lambda: skip_while(below_5_later),
    "distinct": lambda: distinct(),
    "distinct-key": lambda: distinct(key=mod_3),
    "enumerate_": lambda: enumerate_(1),
    "chunk": lambda: chunk(3),
    "chunk-within": lambda: chunk(3, within=60),
    "window": lambda: window(3),
    "window-step": lambda: window(2, step=3),
    "pairwise": lambda: pairwise(),
}
GROUPING = ("chunk", "chunk-within", "window", "window-step", "pairwise")
SAME_ENVELOPES = (
    "take_while",
    "take_while-async",
    "skip_while",
    "skip_while-async",
    "distinct",
    "distinct-key",
)
ONE_TO_ONE = ("scan", "scan-async", "enumerate_")
FLAT = ("flat_map", "flat_map-awaitable", "flat_map-async-iterable")


def values_of(items: list[Any]) -> list[Any]:
    assert all(isinstance(item, Envelope) for item in items)
    return [item.value for item in items]


def merged(states: list[State]) -> dict[str, Any]:
    """The model of a group's state: the dicts merged left to right."""
    result: dict[str, Any] = {}
    for state in states:
        result.update(state)
    return result


async def check_states(name: str, envelopes: list[Envelope[Any]], out: list[Any]) -> None:
    """The output states follow the operator's rule (checked against index models)."""
    states = [envelope.state for envelope in envelopes]
    if name in ONE_TO_ONE:
        assert [item.state for item in out] == states[: len(out)]
        assert all(item.state is state for item, state in zip(out, states, strict=False))
    elif name in FLAT:
        expected = [state for state in states for _ in range(2)]
        assert all(item.state is state for item, state in zip(out, expected, strict=True))
    elif name in SAME_ENVELOPES:
        # The very envelopes that went in, in order (a subsequence).
        positions = iter(range(len(envelopes)))
        for item in out:
            assert any(envelopes[k] is item for k in positions)
    else:
        assert name in GROUPING
        # The same operator over the indexes tells which items form each group.
        groups = await collect(range(len(envelopes)) | OPERATORS[name]())
        assert len(groups) == len(out)
        for group, item in zip(groups, out, strict=True):
            assert dict(item.state) == merged([states[k] for k in group])


# --------------------------------------------------------------------------- per operator


@pytest.mark.parametrize("name", OPERATORS)
async def test_envelope_stream_gives_the_plain_values(name: str) -> None:
    plain = await collect(VALUES | OPERATORS[name]())
    assert not any(isinstance(item, Envelope) for item in plain)
    envelopes = numbered(VALUES)
    out = await collect(envelopes | OPERATORS[name]())
    assert values_of(out) == plain
    await check_states(name, envelopes, out)


@pytest.mark.parametrize("name", OPERATORS)
async def test_an_async_envelope_source_works_too(name: str) -> None:
    envelopes = numbered(VALUES)
    out = await collect(agen(envelopes) | OPERATORS[name]())
    assert values_of(out) == await collect(agen(VALUES) | OPERATORS[name]())
    await check_states(name, envelopes, out)


@pytest.mark.parametrize("name", OPERATORS)
async def test_empty_envelope_stream(name: str) -> None:
    assert await collect(TrackedSource[Any]([]) | OPERATORS[name]()) == []


async def test_scan_yields_each_accumulator_with_its_items_state() -> None:
    envelopes = numbered([1, 2, 3])
    out = await collect(envelopes | scan(add, 10))
    assert out == [
        Envelope(11, State({"i": 0})),
        Envelope(13, State({"i": 1})),
        Envelope(16, State({"i": 2})),
    ]


async def test_flat_map_wraps_every_element_with_its_items_state() -> None:
    out = await collect(numbered([2, 0, 1]) | flat_map(range))
    assert out == [
        Envelope(0, State({"i": 0})),
        Envelope(1, State({"i": 0})),
        Envelope(0, State({"i": 2})),
    ]


@pytest.mark.parametrize("inner", ["list", "async"])
async def test_flatten_wraps_every_element_with_its_items_state(inner: str) -> None:
    def make(values: list[int]) -> Any:
        return values if inner == "list" else agen(values)

    items = [Envelope(make([1, 2]), State({"i": 0})), Envelope(make([3]), State({"i": 1}))]
    out = await collect(items | flatten())
    assert out == [
        Envelope(1, State({"i": 0})),
        Envelope(2, State({"i": 0})),
        Envelope(3, State({"i": 1})),
    ]


async def test_take_while_and_skip_while_see_values_and_pass_envelopes_through() -> None:
    envelopes = numbered([1, 2, 7, 1])
    taken = await collect(envelopes | take_while(below_5))
    assert taken == envelopes[:2]
    assert all(a is b for a, b in zip(taken, envelopes, strict=False))
    skipped = await collect(envelopes | skip_while(below_5))
    assert skipped == envelopes[2:]
    assert all(a is b for a, b in zip(skipped, envelopes[2:], strict=True))


async def test_distinct_compares_values_not_envelopes() -> None:
    # Equal values with different states are duplicates; the first envelope wins.
    envelopes = numbered(["a", "B", "a", "b"])
    out = await collect(envelopes | distinct())
    assert out == [envelopes[0], envelopes[1], envelopes[3]]
    out = await collect(envelopes | distinct(key=str.lower))
    assert out == [envelopes[0], envelopes[1]]
    assert out[0] is envelopes[0]


async def test_distinct_keeps_equal_envelopes_apart_by_value_only() -> None:
    shared = State({"run": 1})
    out = await collect([Envelope(1, shared), Envelope(2, shared)] | distinct())
    assert values_of(out) == [1, 2]


async def test_enumerate_pairs_values_and_keeps_states() -> None:
    envelopes = numbered(["a", "b"])
    out = await collect(envelopes | enumerate_(5))
    assert out == [Envelope((5, "a"), State({"i": 0})), Envelope((6, "b"), State({"i": 1}))]
    assert out[1].state is envelopes[1].state


# --------------------------------------------------------------------------- state merging


CONFLICTS = [
    Envelope(1, State({"k": "first", "a": 1})),
    Envelope(2, State({"k": "second", "b": 2})),
    Envelope(3, State({"k": "third", "a": 3})),
    Envelope(4, State({"c": 4})),
]


@pytest.mark.parametrize("within", [None, 60.0])
async def test_chunk_merges_states_later_items_win(within: float | None) -> None:
    out = await collect(CONFLICTS | chunk(3, within=within))
    assert out == [
        Envelope([1, 2, 3], State({"k": "third", "a": 3, "b": 2})),
        Envelope([4], State({"c": 4})),
    ]
    assert out[1].state is CONFLICTS[3].state


async def test_window_merges_states_later_items_win() -> None:
    out = await collect(CONFLICTS | window(2))
    assert out == [
        Envelope((1, 2), State({"k": "second", "a": 1, "b": 2})),
        Envelope((2, 3), State({"k": "third", "b": 2, "a": 3})),
        Envelope((3, 4), State({"k": "third", "a": 3, "c": 4})),
    ]


async def test_pairwise_merges_states_later_item_wins() -> None:
    out = await collect(CONFLICTS | pairwise())
    assert out == [
        Envelope((1, 2), State({"k": "second", "a": 1, "b": 2})),
        Envelope((2, 3), State({"k": "third", "b": 2, "a": 3})),
        Envelope((3, 4), State({"k": "third", "a": 3, "c": 4})),
    ]


@pytest.mark.parametrize(
    "stage", [chunk(3), chunk(3, within=60), window(2), window(3, step=2), pairwise()]
)
async def test_a_shared_state_is_reused_not_merged(stage: Stage[Any, Any]) -> None:
    shared = State({"run": "nightly"})
    out = await collect([Envelope(x, shared) for x in range(7)] | stage)
    assert out
    assert all(item.state is shared for item in out)


async def test_repeated_states_merge_in_order() -> None:
    a = State({"k": "a", "x": 1})
    b = State({"k": "b", "y": 2})
    out = await collect([Envelope(n, s) for n, s in enumerate([a, a, b, b, a])] | chunk(5))
    assert dict(out[0].state) == {"k": "a", "x": 1, "y": 2}
    out = await collect([Envelope(n, s) for n, s in enumerate([a, a, b, b])] | chunk(4))
    assert dict(out[0].state) == {"k": "b", "x": 1, "y": 2}


async def test_merged_states_keep_the_first_states_limits() -> None:
    from streamkit import StateLimitError, StateLimits

    small = State({"a": 1}, limits=StateLimits(max_keys=2))
    out = await collect([Envelope(1, small), Envelope(2, State({"b": 2}))] | chunk(2))
    assert out[0].state.limits == StateLimits(max_keys=2)
    three = [Envelope(1, small), Envelope(2, State({"b": 2})), Envelope(3, State({"c": 3}))]
    with pytest.raises(StateLimitError):
        await collect(three | chunk(3))


# --------------------------------------------------------------------------- errors and cleanup


@pytest.mark.parametrize("name", OPERATORS)
async def test_early_exit_closes_the_envelope_source(name: str) -> None:
    source = TrackedSource(numbered(VALUES))
    out = await collect(source | OPERATORS[name]() | take(1))
    assert len(out) == 1
    assert isinstance(out[0], Envelope)
    assert source.closed


@pytest.mark.parametrize("name", OPERATORS)
async def test_breaking_out_closes_the_envelope_source(name: str) -> None:
    source = TrackedSource(numbered(VALUES))
    async with source | OPERATORS[name]() as flow:
        async for _ in flow:
            break
    assert source.closed


async def test_take_while_closes_the_envelope_source_when_it_stops() -> None:
    source = TrackedSource(numbered(VALUES))
    assert values_of(await collect(source | take_while(below_5))) == [3, 1, 4, 1]
    assert source.closed
    assert not source.exhausted


async def test_early_exit_closes_inner_async_iterables() -> None:
    log: list[str] = []

    def inner(x: int) -> AsyncIterator[int]:
        return agen([x, x, x], log)

    source = TrackedSource(numbered([1, 2]))
    assert values_of(await collect(source | flat_map(inner) | take(2))) == [1, 1]
    assert log == ["finally"]
    assert source.closed
    log.clear()
    items = TrackedSource([Envelope(agen([1, 2, 3], log), State({"i": 0}))])
    assert values_of(await collect(items | flatten() | take(1))) == [1]
    assert log == ["finally"]
    assert items.closed


def add_unless_4(total: int, x: int) -> int:
    if x == 4:
        raise ValueError("boom")
    return total + x


def below_5_unless_4(x: int) -> bool:
    if x == 4:
        raise ValueError("boom")
    return x < 5


async def test_errors_keep_their_notes_on_envelope_streams() -> None:
    with pytest.raises(ValueError, match="boom") as caught:
        await collect(numbered(VALUES) | scan(add_unless_4, 0))
    assert notes(caught.value) == [note("scan(add_unless_4)", 2)]
    with pytest.raises(ValueError, match="boom") as caught:
        await collect(numbered(VALUES) | take_while(below_5_unless_4))
    assert notes(caught.value) == [note("take_while(below_5_unless_4)", 2)]
    with pytest.raises(TypeError, match="needs iterable items, got int") as caught_type:
        await collect(numbered([[1], 2]) | flatten())
    assert notes(caught_type.value) == [note("flatten()", 1)]


async def test_plain_items_inside_envelope_values_are_not_unwrapped_twice() -> None:
    # The kind is decided by the first item: values that are envelopes stay values.
    inner = Envelope(1, State({"inner": True}))
    out = await collect([Envelope(inner, State({"outer": True}))] | enumerate_())
    assert out == [Envelope((0, inner), State({"outer": True}))]


# --------------------------------------------------------------------------- differential

SHARED = State({"run": "nightly", "i": -1})
state_kinds = st.sampled_from(["own", "shared", "empty", "conflict"])


def make_state(kind: str, i: int) -> State:
    if kind == "own":
        return State().set("i", i)
    if kind == "shared":
        return SHARED
    if kind == "empty":
        return State()
    return State({"i": i, f"only{i % 3}": i})


@settings(max_examples=60)
@given(
    values=st.lists(st.integers(min_value=-5, max_value=9), max_size=12),
    kinds=st.lists(state_kinds, min_size=12, max_size=12),
    names=st.lists(st.sampled_from(sorted(OPERATORS)), min_size=1, max_size=4, unique=True),
)
def test_envelope_streams_agree_with_plain_streams(
    values: list[int], kinds: list[str], names: list[str]
) -> None:
    envelopes = [Envelope(v, make_state(kinds[i], i)) for i, v in enumerate(values)]

    async def check() -> None:
        for name in names:
            plain = await collect(values | OPERATORS[name]())
            out = await collect(envelopes | OPERATORS[name]())
            assert values_of(out) == plain
            await check_states(name, envelopes, out)

    asyncio.run(check())
