"""Keyed operators: scan_by, scan_state_by (an aggregate per key), throttle_by (per-key rates)."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamkit import (
    Envelope,
    Factory,
    Key,
    MemoryStore,
    Run,
    State,
    collect,
    map_,
    scan_by,
    scan_state_by,
    throttle_by,
)
from streamkit.testing import check_stage, virtual_clock

pairs = st.lists(st.tuples(st.integers(0, 4), st.integers(-50, 50)), max_size=40)


def first(pair: tuple[int, int]) -> int:
    return pair[0]


def add(total: int, pair: tuple[int, int]) -> int:
    return total + pair[1]


def scan_model(items: list[tuple[int, int]]) -> list[int]:
    totals: dict[int, int] = {}
    out: list[int] = []
    for k, v in items:
        totals[k] = totals.get(k, 0) + v
        out.append(totals[k])
    return out


# --------------------------------------------------------------------------- scan_by


@given(pairs)
async def test_scan_by_agrees_with_a_dict_of_totals(items: list[tuple[int, int]]) -> None:
    assert await collect(items | scan_by(first, add, 0)) == scan_model(items)


@given(pairs)
async def test_scan_by_per_key_is_scan_of_the_keys_sublist(items: list[tuple[int, int]]) -> None:
    out = await collect(items | scan_by(first, add, 0))
    for k in {k for k, _ in items}:
        mine = [o for (kk, _), o in zip(items, out, strict=True) if kk == k]
        running, expected = 0, []
        for kk, v in items:
            if kk == k:
                running += v
                expected.append(running)
        assert mine == expected


async def test_scan_by_async_fn_and_envelopes_keep_state() -> None:
    async def add_async(total: int, pair: tuple[int, int]) -> int:
        return total + pair[1]

    items = [Envelope((1, 2), {"i": 0}), Envelope((1, 3), {"i": 1}), Envelope((2, 5), {"i": 2})]
    out = await collect(items | scan_by(first, add_async, 0))
    assert out == [Envelope(2, {"i": 0}), Envelope(5, {"i": 1}), Envelope(5, {"i": 2})]


async def test_scan_by_cleans_up() -> None:
    await check_stage(
        lambda: scan_by(lambda x: x % 3, lambda a, x: a + x, 0),
        range(10),
        expected=[0, 1, 2, 3, 5, 7, 9, 12, 15, 18],
    )


async def test_scan_by_errors_name_the_step() -> None:
    def bad(_: int) -> int:
        raise KeyError("nope")

    with pytest.raises(KeyError) as info:
        await collect([1] | scan_by(bad, lambda a, x: a + x, 0))
    assert any("scan_by" in note for note in getattr(info.value, "__notes__", []))


def test_scan_by_bad_parameters() -> None:
    with pytest.raises(TypeError, match="key"):
        scan_by(1, add, 0)  # type: ignore[call-overload]  # pyright: ignore[reportCallIssue, reportArgumentType]
    with pytest.raises(TypeError, match="fn"):
        scan_by(first, None, 0)  # type: ignore[call-overload]  # pyright: ignore[reportCallIssue, reportArgumentType]


async def _broken_and_resumed(pipeline: Any, items: list[Any], stop_after: int) -> list[Any]:
    store = MemoryStore()
    out: list[Any] = []
    async with Run(pipeline, items, name="k", checkpoint=store, every=1) as run:
        async for item in run:
            out.append(item)
            if len(out) == stop_after:
                break
    done = 0 if run.last_checkpoint is None else run.last_checkpoint.items
    rest = await Run(pipeline, items, name="k", checkpoint=store, every=1).collect()
    return out[:done] + rest


@settings(max_examples=30, deadline=None)
@given(pairs.filter(bool), st.integers(1, 40))
async def test_scan_by_resumed_equals_uninterrupted(
    items: list[tuple[int, int]], stop: int
) -> None:
    pipeline = scan_by(first, add, 0)
    whole = await Run(pipeline, items, name="w", checkpoint=MemoryStore(), every=1).collect()
    assert whole == scan_model(items)
    assert await _broken_and_resumed(pipeline, items, min(stop, len(items))) == whole


async def test_scan_by_tuple_keys_survive_a_checkpoint() -> None:
    items = [((1, "a"), 1), ((1, "a"), 2), ((2, "b"), 3), ((1, "a"), 4)]
    pipeline = scan_by(lambda p: p[0], lambda a, p: a + p[1], 0)
    assert await _broken_and_resumed(pipeline, items, 2) == [1, 3, 3, 7]


# --------------------------------------------------------------------------- throttle_by


def throttle_model(keys: list[int], rate: float, burst: int) -> list[float]:
    """Emission times of a sequential per-key token bucket (one token an item)."""
    buckets: dict[int, tuple[float, float]] = {}
    now = 0.0
    out: list[float] = []
    for k in keys:
        tokens, last = buckets.get(k, (float(burst), now))
        tokens = min(burst, tokens + (now - last) * rate)
        if tokens < 1.0:
            now += (1.0 - tokens) / rate
            tokens = 1.0
        buckets[k] = (tokens - 1.0, now)
        out.append(now)
    return out


@given(st.lists(st.integers(0, 3), max_size=25), st.sampled_from([1, 2, 4]), st.integers(1, 3))
async def test_throttle_by_agrees_with_a_bucket_per_key(
    keys: list[int], rate: int, burst: int
) -> None:
    with virtual_clock() as clock:
        times = [clock.now() async for _ in keys | throttle_by(lambda k: k, rate, burst=burst)]
    assert times == pytest.approx(throttle_model(keys, rate, burst))


async def test_throttle_by_keeps_order_and_items() -> None:
    items = [Envelope(k, {"i": i}) for i, k in enumerate("abab")]
    with virtual_clock():
        assert await collect(items | throttle_by(str, 1)) == items


async def test_throttle_by_cleans_up() -> None:
    await check_stage(lambda: throttle_by(lambda x: x % 2, 3), range(8), expected=list(range(8)))


def test_throttle_by_bad_parameters() -> None:
    with pytest.raises(TypeError, match="key"):
        throttle_by(None, 1)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    with pytest.raises(ValueError, match="rate"):
        throttle_by(str, 0)
    with pytest.raises(ValueError, match="per"):
        throttle_by(str, 1, per=-1)
    with pytest.raises(ValueError, match="burst"):
        throttle_by(str, 1, burst=0)


async def test_throttle_by_buckets_survive_a_checkpoint() -> None:
    # One token a second per key: key 0's bucket is empty when the first run stops, so
    # after the resume key 0 still waits (a fresh bucket would let it straight through).
    items = [0, 0, 1, 0]
    pipeline = throttle_by(lambda k: k, 1)
    store = MemoryStore()
    with virtual_clock() as clock:
        out: list[int] = []
        async with Run(pipeline, items, name="t", checkpoint=store, every=1) as run:
            async for item in run:
                out.append(item)
                if len(out) == 2:
                    break
        assert run.last_checkpoint is not None
        assert run.last_checkpoint.items == 1  # the barrier after the first item
        start = clock.now()
        async with Run(pipeline, items, name="t", checkpoint=store, every=1) as rerun:
            rest = [(item, clock.now() - start) async for item in rerun]
    assert rest == [(0, pytest.approx(1.0)), (1, pytest.approx(1.0)), (0, pytest.approx(2.0))]


# --------------------------------------------------------------------------- scan_state_by

SPENT = Key[int]("spent")


def state_model(items: list[tuple[int, int]], max_keys: int | None) -> list[int]:
    """Per-key totals; beyond ``max_keys`` the least recently updated key starts over."""
    totals: OrderedDict[int, int] = OrderedDict()
    out: list[int] = []
    for k, v in items:
        if k in totals:
            totals.move_to_end(k)
        elif max_keys is not None and len(totals) >= max_keys:
            totals.popitem(last=False)
        totals[k] = totals.get(k, 0) + v
        out.append(totals[k])
    return out


@given(pairs, st.one_of(st.none(), st.integers(1, 4)))
async def test_scan_state_by_agrees_with_a_dict_of_totals(
    items: list[tuple[int, int]], max_keys: int | None
) -> None:
    out = await collect(items | scan_state_by(first, SPENT, add, 0, max_keys=max_keys))
    assert [item.value for item in out] == items
    assert [item.state[SPENT] for item in out] == state_model(items, max_keys)


async def test_scan_state_by_is_read_by_later_stages_and_keeps_the_state() -> None:
    async def add_async(total: int, pair: tuple[str, int]) -> int:
        return total + pair[1]

    items = [Envelope(("a", 2), State({"i": 0})), Envelope(("a", 3), State({"i": 1}))]
    stage = scan_state_by(lambda p: p[0], SPENT, add_async, 0) | map_(
        lambda pair, state: (state["i"], state[SPENT]), with_state=True
    )
    assert [item.value for item in await collect(items | stage)] == [(0, 2), (1, 5)]


async def test_scan_state_by_makes_each_keys_initial_value() -> None:
    def keep(seen: list[int], pair: tuple[int, int]) -> list[int]:
        return [*seen, pair[1]]

    seen = Key[list[int]]("seen")
    out = await collect([(0, 1), (1, 2), (0, 3)] | scan_state_by(first, seen, keep, Factory(list)))
    assert [item.state[seen] for item in out] == [[1], [2], [1, 3]]


async def test_scan_state_by_cleans_up() -> None:
    await check_stage(lambda: scan_state_by(lambda x: x % 3, "n", lambda a, x: a + x, 0), range(8))


async def test_scan_state_by_errors_name_the_step_and_keep_the_key() -> None:
    def picky(total: int, pair: tuple[int, int]) -> int:
        if pair[1] < 0:
            raise ValueError("negative")
        return total + pair[1]

    with pytest.raises(ValueError, match="negative") as info:
        await collect([(0, 1), (0, -1)] | scan_state_by(first, SPENT, picky, 0))
    assert any("scan_state_by" in note and "item 1" in note for note in info.value.__notes__)


def test_scan_state_by_bad_parameters() -> None:
    with pytest.raises(TypeError, match="key"):
        scan_state_by(None, SPENT, add, 0)  # type: ignore[call-overload]  # pyright: ignore[reportCallIssue, reportArgumentType]
    with pytest.raises(TypeError, match="state_key"):
        scan_state_by(first, 3, add, 0)  # type: ignore[call-overload]  # pyright: ignore[reportCallIssue, reportArgumentType]
    with pytest.raises(TypeError, match="fn"):
        scan_state_by(first, SPENT, None, 0)  # type: ignore[call-overload]  # pyright: ignore[reportCallIssue, reportArgumentType]
    with pytest.raises(ValueError, match="max_keys"):
        scan_state_by(first, SPENT, add, 0, max_keys=0)
    with pytest.raises(ValueError, match="initial"):
        scan_state_by(first, "seen", lambda a, p: a, [])


@settings(max_examples=30, deadline=None)
@given(pairs.filter(bool), st.integers(1, 40), st.one_of(st.none(), st.integers(1, 3)))
async def test_scan_state_by_resumed_equals_uninterrupted(
    items: list[tuple[int, int]], stop: int, max_keys: int | None
) -> None:
    pipeline = scan_state_by(first, SPENT, add, 0, max_keys=max_keys) | map_(
        lambda pair, state: state[SPENT], with_state=True
    )
    whole = await Run(pipeline, items, name="w", checkpoint=MemoryStore(), every=1).collect()
    assert [item.value for item in whole] == state_model(items, max_keys)
    resumed = await _broken_and_resumed(pipeline, items, min(stop, len(items)))
    assert [item.value for item in resumed] == [item.value for item in whole]


async def test_scan_state_by_saves_with_the_keys_codec() -> None:
    class Money:
        def __init__(self, cents: int) -> None:
            self.cents = cents

    class MoneyCodec:
        def encode(self, value: Money) -> Any:
            return f"{value.cents}c"

        def decode(self, data: Any) -> Money:
            return Money(int(str(data)[:-1]))

    total = Key[Money]("total", codec=MoneyCodec())
    items = [("a", 5), ("b", 1), ("a", 7)]
    pipeline = scan_state_by(first, total, lambda m, p: Money(m.cents + p[1]), Money(0)) | map_(
        lambda pair, state: state[total].cents, with_state=True
    )
    out = await _broken_and_resumed(pipeline, items, 2)
    assert [item.value for item in out] == [5, 1, 12]
