"""group_by (a sub-pipeline per key) and switch_map (an inner stream per key)."""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamkit import (
    Envelope,
    MemoryStore,
    Run,
    State,
    chunk,
    collect,
    current_clock,
    group_by,
    map_,
    scan,
    stage,
    switch_map,
    take,
)
from streamkit.testing import check_stage, virtual_clock

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

pairs = st.lists(st.tuples(st.integers(0, 5), st.integers(-50, 50)), max_size=40)


def first(pair: tuple[int, int]) -> int:
    return pair[0]


def running(acc: tuple[int, int], pair: tuple[int, int]) -> tuple[int, int]:
    """A per-key total that carries its key: (key, total so far)."""
    return (pair[0], acc[1] + pair[1])


def by_key(outputs: list[Any]) -> dict[Any, list[Any]]:
    """Outputs that carry their key (first element), split by key, in order."""
    found: dict[Any, list[Any]] = {}
    for out in outputs:
        found.setdefault(out[0], []).append(out)
    return found


def fold_model(items: list[tuple[int, int]], max_keys: int | None) -> dict[int, list[Any]]:
    """Per-key running totals; a key closed to make room (least recently fed) starts over."""
    totals: OrderedDict[int, int] = OrderedDict()
    out: dict[int, list[Any]] = {}
    for k, v in items:
        if k in totals:
            totals.move_to_end(k)
        elif max_keys is not None and len(totals) >= max_keys:
            totals.popitem(last=False)
        totals[k] = totals.get(k, 0) + v
        out.setdefault(k, []).append((k, totals[k]))
    return out


def chunk_model(items: list[tuple[int, int]], size: int, max_keys: int) -> dict[int, list[Any]]:
    """Per-key chunks of ``size``; a closed key flushes its partial chunk."""
    held: OrderedDict[int, list[tuple[int, int]]] = OrderedDict()
    out: dict[int, list[Any]] = {}
    for k, v in items:
        if k in held:
            held.move_to_end(k)
        else:
            if len(held) >= max_keys:
                old, rest = held.popitem(last=False)
                if rest:
                    out.setdefault(old, []).append(rest)
            held[k] = []
        held[k].append((k, v))
        if len(held[k]) == size:
            out.setdefault(k, []).append(held[k])
            held[k] = []
    for k, rest in held.items():
        if rest:
            out.setdefault(k, []).append(rest)
    return out


# --------------------------------------------------------------------------- group_by


@given(pairs, st.integers(1, 4), st.one_of(st.none(), st.integers(1, 4)))
async def test_group_by_with_a_scan_is_a_fold_per_key(
    items: list[tuple[int, int]], concurrency: int, max_keys: int | None
) -> None:
    grouped = group_by(first, scan(running, (0, 0)), concurrency=concurrency, max_keys=max_keys)
    out = await collect(items | grouped)
    assert by_key(out) == fold_model(items, max_keys)


@given(pairs, st.integers(1, 3), st.integers(1, 3))
async def test_a_closed_key_flushes_its_sub_pipeline(
    items: list[tuple[int, int]], size: int, max_keys: int
) -> None:
    out = await collect(items | group_by(first, chunk(size), max_keys=max_keys))
    assert by_key([[c[0][0], *c] for c in out]) == {
        k: [[k, *c] for c in chunks] for k, chunks in chunk_model(items, size, max_keys).items()
    }


async def test_group_by_keeps_envelopes_and_their_state() -> None:
    items = [
        Envelope(("a", 1), {"i": 0}),
        Envelope(("b", 2), {"i": 1}),
        Envelope(("a", 3), {"i": 2}),
    ]
    out = await collect(items | group_by(lambda p: p[0], scan(running, ("", 0))))
    assert sorted((e.value, e.state["i"]) for e in out) == [
        (("a", 1), 0),
        (("a", 4), 2),
        (("b", 2), 1),
    ]


async def test_at_most_concurrency_keys_have_an_item_in_their_sub_pipeline() -> None:
    busy: set[int] = set()
    most = 0

    async def work(x: int) -> int:
        nonlocal most
        busy.add(x % 5)
        most = max(most, len(busy))
        await current_clock().sleep(1.0)
        busy.discard(x % 5)
        return x

    with virtual_clock() as clock:
        out = await collect(range(20) | group_by(lambda x: x % 5, map_(work), concurrency=2))
        # 20 items of a second each, two at a time: ten seconds.
        assert clock.now() == 10.0
    assert most == 2
    assert by_key([(x % 5, x) for x in out]) == by_key([(x % 5, x) for x in range(20)])


async def test_an_idle_key_is_closed_and_flushed_on_the_virtual_clock() -> None:
    async def arrivals() -> AsyncIterator[str]:
        for word in ["a1", "a2", "b1"]:
            yield word
        await current_clock().sleep(5.0)
        yield "b2"
        yield "a3"

    with virtual_clock() as clock:
        seen = [
            (words, clock.now())
            async for words in arrivals() | group_by(lambda w: w[0], chunk(10), idle=2.0)
        ]
    # After 2 idle seconds both keys flush; "a3" and "b2" open new runs of chunk(10).
    assert sorted(seen[:2]) == [(["a1", "a2"], 2.0), (["b1"], 2.0)]
    assert sorted(seen[2:]) == [(["a3"], 5.0), (["b2"], 5.0)]


async def test_a_sub_pipeline_that_ends_drops_its_keys_later_items() -> None:
    items = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3]
    out = await collect(items | group_by(lambda x: x % 3, take(1)))
    assert sorted(out) == [1, 3, 5]
    # Until the key is closed: with max_keys=1 every new key closes the previous one.
    out = await collect(items | group_by(lambda x: x % 3, take(1), max_keys=1))
    assert sorted(out) == sorted([3, 1, 5, 9, 2, 6, 5, 3])


async def test_an_error_in_a_sub_pipeline_names_the_key() -> None:
    def bad(x: int) -> int:
        if x == 7:
            raise ValueError("seven")
        return x

    with pytest.raises(ValueError, match="seven") as info:
        await collect(range(10) | group_by(lambda x: x % 3, map_(bad)))
    assert any("group_by" in note and "key 1" in note for note in info.value.__notes__)


async def test_an_error_in_the_key_function_names_the_item() -> None:
    with pytest.raises(ZeroDivisionError) as info:
        await collect([1, 0] | group_by(lambda x: 1 // x, map_(str)))
    assert any("group_by" in note and "item 1" in note for note in info.value.__notes__)


@pytest.mark.parametrize("options", [{}, {"concurrency": 1}, {"max_keys": 2}, {"idle": 0.5}])
async def test_group_by_cleans_up(options: dict[str, Any]) -> None:
    await check_stage(
        lambda: group_by(lambda x: x % 3, scan(lambda a, x: a + x, 0), **options),
        range(12),
        ordered=False,
    )


def test_group_by_bad_parameters() -> None:
    with pytest.raises(TypeError, match="key"):
        group_by(None, map_(str))  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    with pytest.raises(TypeError, match="stage"):
        group_by(str, str)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    with pytest.raises(ValueError, match="concurrency"):
        group_by(str, map_(str), concurrency=0)
    with pytest.raises(ValueError, match="idle"):
        group_by(str, map_(str), idle=-1.0)
    with pytest.raises(ValueError, match="max_keys"):
        group_by(str, map_(str), max_keys=0)
    with pytest.raises(ValueError, match="name"):
        group_by(str, map_(str), name="")


async def _stopped_and_resumed(
    pipeline: Any, items: list[Any], stop_after: int
) -> tuple[list[Any], list[Any], list[Any]]:
    """An uninterrupted run, a run stopped after ``stop_after`` outputs, and its resumed run.

    A checkpoint after every item: a barrier waits for everything before it, so all
    three see the same order of outputs.
    """
    whole = await Run(pipeline, items, name="w", checkpoint=MemoryStore(), every=1).collect()
    store = MemoryStore()
    out: list[Any] = []
    async with Run(pipeline, items, name="k", checkpoint=store, every=1) as run:
        async for item in run:
            out.append(item)
            if len(out) == stop_after:
                break
    rest = await Run(pipeline, items, name="k", checkpoint=store, every=1).collect()
    return whole, out, rest


def assert_resumed(
    whole: list[Any], out: list[Any], rest: list[Any], key: Callable[[Any], Any]
) -> None:
    """Per key, the stopped run yields a prefix, the resumed run the rest: no gap, no loss.

    (Keys closed together, at the end of the input, flush in any order.)
    """
    for k in {key(x) for x in whole + out + rest}:
        w, o, r = ([x for x in xs if key(x) == k] for xs in (whole, out, rest))
        assert o == w[: len(o)]
        assert r == w[len(w) - len(r) :]
        assert len(o) + len(r) >= len(w)


@settings(max_examples=30, deadline=None)
@given(pairs.filter(bool), st.integers(1, 40), st.one_of(st.none(), st.integers(1, 3)))
async def test_group_by_resumed_equals_uninterrupted(
    items: list[tuple[int, int]], stop: int, max_keys: int | None
) -> None:
    pipeline = group_by(first, scan(running, (0, 0)), max_keys=max_keys)
    whole, out, rest = await _stopped_and_resumed(pipeline, items, min(stop, len(items)))
    assert by_key(whole) == fold_model(items, max_keys)
    assert_resumed(whole, out, rest, first)


@settings(max_examples=20, deadline=None)
@given(pairs.filter(bool), st.integers(1, 20))
async def test_group_by_restores_each_keys_held_chunk(
    items: list[tuple[int, int]], stop: int
) -> None:
    # chunk(3) holds up to two items per key between checkpoints: the snapshot has them.
    pipeline = group_by(first, chunk(3), max_keys=2)
    whole, out, rest = await _stopped_and_resumed(pipeline, items, stop)
    assert by_key([[c[0][0], *c] for c in whole]) == {
        k: [[k, *c] for c in chunks] for k, chunks in chunk_model(items, 3, 2).items()
    }
    assert_resumed(whole, out, rest, lambda c: c[0][0])


@pytest.mark.parametrize("stop", [1, 2, 3])
async def test_a_stopped_sub_pipeline_stays_stopped_after_a_resume(stop: int) -> None:
    items = [1, 2, 3, 4, 5, 6, 8, 7]
    whole, out, rest = await _stopped_and_resumed(group_by(lambda x: x % 3, take(1)), items, stop)
    assert sorted(whole) == [1, 2, 3]
    assert_resumed(whole, out, rest, lambda x: x % 3)


async def test_a_sub_pipeline_step_that_cannot_be_saved_is_refused_by_name() -> None:
    @stage
    async def doubled(items: AsyncIterator[int]) -> AsyncIterator[int]:
        async for item in items:
            yield item * 2

    with pytest.raises(ValueError, match=r"step 0/stage/0, .*doubled\(\), does not say"):
        Run(group_by(str, doubled()), [1], name="d", checkpoint=MemoryStore())


async def test_group_by_outside_a_checkpoint_runs_any_stage() -> None:
    @stage
    async def doubled(items: AsyncIterator[int]) -> AsyncIterator[int]:
        async for item in items:
            yield item * 2

    assert sorted(await collect([1, 2, 3] | group_by(lambda x: x % 2, doubled()))) == [2, 4, 6]


# --------------------------------------------------------------------------- switch_map


class Inners:
    """Inner streams that record which are open, elements at t + 0.5, t + 1.5, ..."""

    def __init__(self, length: int) -> None:
        self.length = length
        self.open: set[tuple[int, int]] = set()
        self.closed: list[tuple[int, int]] = []

    async def __call__(self, item: tuple[int, int]) -> AsyncIterator[tuple[int, int, int]]:
        self.open.add(item)
        clock = current_clock()
        try:
            await clock.sleep(0.5)
            for n in range(self.length):
                yield (item[0], item[1], n)
                await clock.sleep(1.0)
        finally:
            self.open.discard(item)
            self.closed.append(item)


def switch_model(gaps: list[tuple[int, int]], length: int) -> list[tuple[int, int, int]]:
    """Items (key, gap) arrive ``gap`` whole seconds after the one before."""
    arrivals: list[tuple[float, int, int]] = []
    now = 0.0
    for n, (k, gap) in enumerate(gaps):
        now += gap
        arrivals.append((now, k, n))
    out: list[tuple[float, tuple[int, int, int]]] = []
    for at, k, n in arrivals:
        stop = next((t for t, k2, _ in arrivals if k2 == k and t > at), float("inf"))
        later = [t for t, k2, m in arrivals if k2 == k and m > n]
        if later and later[0] == at:
            continue  # replaced at once
        for j in range(length):
            if at + 0.5 + j < stop:
                out.append((at + 0.5 + j, (k, n, j)))
    return [element for _, element in sorted(out)]


@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 3)), max_size=12), st.integers(1, 4))
async def test_switch_map_agrees_with_a_timeline_model(
    gaps: list[tuple[int, int]], length: int
) -> None:
    inners = Inners(length)

    async def arrivals() -> AsyncIterator[tuple[int, int]]:
        for n, (k, gap) in enumerate(gaps):
            if gap:
                await current_clock().sleep(gap)
            yield (k, n)

    with virtual_clock():
        out = await collect(arrivals() | switch_map(first, inners))
    expected = switch_model(gaps, length)
    assert by_key(out) == by_key(expected)
    assert sorted(out) == sorted(expected)
    assert not inners.open


async def test_a_new_item_closes_its_keys_inner_stream_only() -> None:
    inners = Inners(3)

    async def arrivals() -> AsyncIterator[tuple[int, int]]:
        yield (0, 0)
        yield (1, 1)
        await current_clock().sleep(1.0)
        yield (0, 2)  # replaces (0, 0) after its first element

    with virtual_clock():
        out = await collect(arrivals() | switch_map(first, inners))
    assert sorted(out) == [
        (0, 0, 0),
        (0, 2, 0),
        (0, 2, 1),
        (0, 2, 2),
        (1, 1, 0),
        (1, 1, 1),
        (1, 1, 2),
    ]
    assert inners.closed[0] == (0, 0)
    assert not inners.open


async def test_switch_map_closes_every_inner_stream_on_break() -> None:
    inners = Inners(5)
    with virtual_clock():
        async with [(0, 0), (1, 1), (2, 2)] | switch_map(first, inners) as flow:
            async for _ in flow:
                break
    assert not inners.open
    assert sorted(inners.closed) == [(0, 0), (1, 1), (2, 2)]


async def test_an_error_in_an_inner_stream_names_the_key_and_closes_the_others() -> None:
    inners = Inners(5)

    async def some_fail(item: tuple[int, int]) -> AsyncIterator[tuple[int, int, int]]:
        if item[0] == 2:
            await current_clock().sleep(1.0)
            raise ValueError("two")
        async for element in inners(item):
            yield element

    with virtual_clock(), pytest.raises(ValueError, match="two") as info:
        await collect([(0, 0), (1, 1), (2, 2)] | switch_map(first, some_fail))
    assert any("switch_map" in note and "key 2" in note for note in info.value.__notes__)
    assert not inners.open


async def test_switch_map_takes_sync_iterables_and_envelopes() -> None:
    items = [Envelope(3, State({"i": 0}))]
    out = await collect(items | switch_map(lambda x: x, range))
    assert [(e.value, e.state["i"]) for e in out] == [(0, 0), (1, 0), (2, 0)]


async def test_fn_that_returns_no_iterable_fails_clearly() -> None:
    with pytest.raises(TypeError, match="fn must return an iterable"):
        await collect([1] | switch_map(str, lambda x: x))  # type: ignore[arg-type, return-value]  # pyright: ignore[reportArgumentType]


@pytest.mark.parametrize("length", [0, 1, 3])
async def test_switch_map_cleans_up(length: int) -> None:
    await check_stage(
        lambda: switch_map(first, Inners(length)),
        [(k % 5, k) for k in range(12)],
        ordered=False,
    )


def test_switch_map_bad_parameters() -> None:
    with pytest.raises(TypeError, match="key"):
        switch_map(None, range)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    with pytest.raises(TypeError, match="fn"):
        switch_map(str, None)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    with pytest.raises(ValueError, match="name"):
        switch_map(str, range, name="")


async def arrive(item: tuple[int, int]) -> tuple[int, int]:
    await current_clock().sleep(1.0)
    return item


@settings(max_examples=20, deadline=None)
@given(st.integers(4, 30))
async def test_switch_map_resumes_inner_streams_in_flight(stop: int) -> None:
    # Every item its own key (no switching): each inner stream runs to its end, and a
    # resumed run continues the streams in flight, skipping what they had handed over.
    items = [(k, k) for k in range(12)]
    pipeline = map_(arrive) | switch_map(first, Inners(3))
    with virtual_clock():
        whole = await Run(pipeline, items, name="w", checkpoint=MemoryStore(), every=1).collect()
        store = MemoryStore()
        out: list[Any] = []
        async with Run(pipeline, items, name="s", checkpoint=store, every=1) as run:
            async for item in run:
                out.append(item)
                if len(out) == stop:
                    break
        rest = await Run(pipeline, items, name="s", checkpoint=store, every=1).collect()
    assert sorted(whole) == [(k, k, j) for k in range(12) for j in range(3)]
    assert len(set(rest)) == len(rest)
    assert set(out) | set(rest) == set(whole)
    assert len(rest) < len(whole)  # it resumed


async def test_idle_keys_close_under_a_checkpointed_run() -> None:
    # Items a second apart; a key idle for 2.5 s is closed and flushes its chunk, also
    # while barriers go through the open keys.
    items = [(k, n) for n, k in enumerate([0, 1, 0, 2, 2, 2, 1, 1, 0])]

    async def arrive_pair(pair: tuple[int, int]) -> tuple[int, int]:
        await current_clock().sleep(1.0)
        return pair

    pipeline = map_(arrive_pair) | group_by(first, chunk(3), idle=2.5)
    with virtual_clock():
        plain = await collect(items | pipeline)
        checkpointed = await Run(
            pipeline, items, name="i", checkpoint=MemoryStore(), every=1
        ).collect()
    assert by_key([[c[0][0], *c] for c in checkpointed]) == by_key([[c[0][0], *c] for c in plain])
    assert sorted(plain) == [
        [(0, 0), (0, 2)],
        [(0, 8)],
        [(1, 1)],
        [(1, 6), (1, 7)],
        [(2, 3), (2, 4), (2, 5)],
    ]


async def test_a_key_reopened_while_its_runs_flush_keeps_its_order() -> None:
    # max_keys=1: every item closes the other key, whose run is still flushing a chunk
    # through a slow step; the runs of one key come out one after the other.
    async def slow(words: list[str]) -> list[str]:
        await current_clock().sleep(1.0 if words[0].endswith("1") else 0.1)
        return words

    words = ["a1", "b1", "a2", "b2", "a3", "b3", "a4"]
    with virtual_clock():
        out = await collect(words | group_by(lambda w: w[0], chunk(2) | map_(slow), max_keys=1))
    assert by_key([[c[0][0], *c] for c in out]) == {
        "a": [["a", "a1"], ["a", "a2"], ["a", "a3"], ["a", "a4"]],
        "b": [["b", "b1"], ["b", "b2"], ["b", "b3"]],
    }


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 2), st.integers(0, 3)), min_size=1, max_size=10),
    st.integers(1, 3),
)
async def test_switch_map_under_a_checkpoint_yields_what_it_yields_without(
    gaps: list[tuple[int, int]], length: int
) -> None:
    # The barriers pass without waiting for the inner streams: switching is unchanged.
    items = [(k, n) for n, (k, _) in enumerate(gaps)]

    async def delayed(item: tuple[int, int]) -> tuple[int, int]:
        gap = gaps[item[1]][1]
        if gap:
            await current_clock().sleep(gap)
        return item

    pipeline = map_(delayed) | switch_map(first, Inners(length))
    with virtual_clock():
        out = await Run(pipeline, items, name="s", checkpoint=MemoryStore(), every=1).collect()
    expected = switch_model(gaps, length)
    assert by_key(out) == by_key(expected)
    assert sorted(out) == sorted(expected)


async def test_time_driven_outputs_of_quiet_keys_under_a_checkpointed_run() -> None:
    # chunk(within=) emits on its own timer, also from keys that took nothing since the
    # last barrier: their snapshot is kept, and what they emit goes after the barrier.
    items = [(k, n) for n, k in enumerate([0, 1, 2, 0, 0, 1, 2, 2, 2, 1])]

    async def arrive_pair(pair: tuple[int, int]) -> tuple[int, int]:
        await current_clock().sleep(0.75)
        return pair

    pipeline = map_(arrive_pair) | group_by(first, chunk(3, within=1.0))
    with virtual_clock():
        plain = await collect(items | pipeline)
        whole, out, rest = await _stopped_and_resumed(pipeline, items, 3)
    assert by_key([[c[0][0], *c] for c in whole]) == by_key([[c[0][0], *c] for c in plain])
    assert sorted(x for c in plain for x in c) == sorted(items)
    assert_resumed(whole, out, rest, lambda c: c[0][0])
