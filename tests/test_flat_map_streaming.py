"""Concurrent `flat_map` streams each inner stream's elements as they arrive, within bounds."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamkit import Envelope, Key, State, collect, envelop, flat_map, take, unwrap
from streamkit.testing import assert_no_pending_tasks, check_stage

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

SOURCE = Key[int]("source")


async def settle(done: Callable[[], bool], passes: int = 200) -> None:
    """Let the event loop run until ``done()`` or ``passes`` passes (a count, not a time)."""
    for _ in range(passes):
        if done():
            return
        await asyncio.sleep(0)


class Inners:
    """Inner streams that log what they yield and whether their ``finally`` ran."""

    def __init__(self, sizes: dict[int, int] | None = None) -> None:
        self.sizes = sizes or {}
        self.gates: dict[int, asyncio.Event] = {}
        self.produced: dict[int, int] = {}
        self.closed: list[int] = []

    def gate(self, x: int) -> asyncio.Event:
        return self.gates.setdefault(x, asyncio.Event())

    async def stream(self, x: int) -> AsyncIterator[tuple[int, int]]:
        """``(x, 0)``, then (once ``x``'s gate opens) ``(x, 1)``, ... up to ``sizes[x]``."""
        try:
            for k in range(self.sizes.get(x, 3)):
                if k == 1 and x in self.gates:
                    await self.gates[x].wait()
                self.produced[x] = self.produced.get(x, 0) + 1
                yield (x, k)
        finally:
            self.closed.append(x)


@pytest.mark.parametrize("ordered", [True, False])
async def test_the_first_element_comes_out_before_its_inner_stream_ends(ordered: bool) -> None:
    inners = Inners()
    gate = inners.gate(0)
    flow = [0] | flat_map(inners.stream, concurrency=2, ordered=ordered)
    got: list[tuple[int, int]] = []

    async def consume() -> None:
        async with flow as items:
            async for element in items:
                got.append(element)

    consumer = asyncio.create_task(consume())
    await settle(lambda: bool(got))
    early = list(got)
    gate.set()  # let the inner stream end either way, so the test cannot hang
    await consumer
    assert early == [(0, 0)]  # out while inner stream 0 was still waiting
    assert got == [(0, 0), (0, 1), (0, 2)]
    assert inners.closed == [0]


async def test_ordered_streams_the_head_while_later_inner_streams_run_ahead() -> None:
    inners = Inners()
    gate = inners.gate(0)
    flow = [0, 1, 2] | flat_map(inners.stream, concurrency=3, window=8)
    got: list[tuple[int, int]] = []

    async def consume() -> None:
        async with flow as items:
            async for element in items:
                got.append(element)

    consumer = asyncio.create_task(consume())
    await settle(lambda: bool(got) and inners.produced.get(1) == inners.produced.get(2) == 3)
    early, ran_ahead = list(got), dict(inners.produced)
    gate.set()
    await consumer
    assert early == [(0, 0)]  # the later streams' elements wait for stream 0 to end
    assert ran_ahead == {0: 1, 1: 3, 2: 3}  # ... but they were read meanwhile
    assert got == [(x, k) for x in range(3) for k in range(3)]


@pytest.mark.parametrize("ordered", [True, False])
async def test_inner_streams_run_ahead_at_most_window_elements(ordered: bool) -> None:
    window, concurrency = 4, 3
    inners = Inners(dict.fromkeys(range(6), 1000))
    flow = range(6) | flat_map(
        inners.stream, concurrency=concurrency, ordered=ordered, window=window
    )
    async with flow as items:
        first = await anext(items)
        await settle(lambda: False)  # every pass the loop wants: they all run ahead
        produced = sum(inners.produced.values())
    assert first[1] == 0
    # One consumed; the head holds up to `window`, the others up to `window` in all
    # (unordered: `window` in all); each call may hold one more, waiting for room.
    bound = 1 + (2 * window if ordered else window) + concurrency
    assert window < produced <= bound
    assert sorted(inners.closed) == sorted(inners.produced)  # each started stream was closed
    assert_no_pending_tasks()


@pytest.mark.parametrize("ordered", [True, False])
async def test_an_early_exit_closes_every_inner_stream(ordered: bool) -> None:
    inners = Inners(dict.fromkeys(range(10), 10**6))
    flow = range(10) | flat_map(inners.stream, concurrency=4, ordered=ordered) | take(5)
    assert len(await collect(flow)) == 5
    assert inners.closed
    assert sorted(inners.closed) == sorted(inners.produced)
    assert_no_pending_tasks()


@pytest.mark.parametrize("ordered", [True, False])
async def test_an_inner_stream_failing_midway_fails_the_stream_with_a_note(
    ordered: bool,
) -> None:
    async def failing(x: int) -> AsyncIterator[int]:
        yield 10 * x
        if x == 1:
            raise ValueError("inner stream 1 broke")
        yield 10 * x + 1

    got: list[int] = []

    async def consume() -> None:
        async with [0, 1] | flat_map(failing, concurrency=2, ordered=ordered) as items:
            async for element in items:
                got.append(element)

    with pytest.raises(ValueError, match="inner stream 1 broke") as raised:
        await consume()
    # The failure comes out at once (as for map_): what was not yet yielded is dropped.
    assert set(got) <= {0, 1, 10}
    (note,) = raised.value.__notes__
    assert note.startswith("streamkit: raised by flat_map(")
    assert note.endswith("on item 1 of its input")
    assert_no_pending_tasks()


@pytest.mark.parametrize("ordered", [True, False])
async def test_streaming_flat_map_passes_the_stage_checks(ordered: bool) -> None:
    async def twice(x: int) -> AsyncIterator[int]:
        yield x
        await asyncio.sleep(0)
        yield -x

    expected = [y for x in range(10) for y in (x, -x)]
    out = await check_stage(
        lambda: flat_map(twice, concurrency=3, ordered=ordered, window=2),
        expected=expected if ordered else None,
        ordered=ordered,
    )
    assert sorted(out) == sorted(expected)


async def test_elements_of_an_envelope_stream_keep_their_items_state() -> None:
    def pair(x: int) -> list[int]:
        return [x, x + 100]

    source = [Envelope(1, State({SOURCE: 10})), Envelope(2, State({SOURCE: 20}))]
    flow = source | flat_map(pair, concurrency=2)
    assert [(e.value, e.state[SOURCE]) for e in await collect(flow)] == [
        (1, 10),
        (101, 10),
        (2, 20),
        (102, 20),
    ]
    plain = range(3) | envelop() | flat_map(range, concurrency=2) | unwrap()
    assert await collect(plain) == [0, 0, 1]


@given(
    sizes=st.lists(st.integers(0, 6), max_size=12),
    pauses=st.lists(st.booleans(), min_size=1, max_size=8),
    concurrency=st.integers(2, 5),
    window=st.integers(1, 6),
    ordered=st.booleans(),
)
def test_concurrent_flat_map_agrees_with_the_sequential_one(
    sizes: list[int], pauses: list[bool], concurrency: int, window: int, ordered: bool
) -> None:
    async def inner(x: int) -> AsyncIterator[tuple[int, int]]:
        for k in range(sizes[x]):
            if pauses[(x + k) % len(pauses)]:
                await asyncio.sleep(0)
            yield (x, k)

    async def main() -> tuple[list[Any], list[Any]]:
        items = range(len(sizes))
        sequential = await collect(items | flat_map(inner))
        concurrent = await collect(
            items | flat_map(inner, concurrency=concurrency, ordered=ordered, window=window)
        )
        assert_no_pending_tasks()
        return sequential, concurrent

    sequential, concurrent = asyncio.run(main())
    if ordered:
        assert concurrent == sequential
    else:
        assert sorted(concurrent) == sequential  # every element once
        for x in range(len(sizes)):  # each inner stream's elements in their order
            assert [e for e in concurrent if e[0] == x] == [(x, k) for k in range(sizes[x])]


@given(
    sizes=st.lists(st.integers(0, 3), max_size=12),
    waits=st.lists(st.integers(0, 3), min_size=12, max_size=12),
    concurrency=st.integers(2, 6),
    ordered=st.booleans(),
)
def test_calls_with_empty_inner_streams_end_the_stream(
    sizes: list[int], waits: list[int], concurrency: int, ordered: bool
) -> None:
    """The last call may end with no element after the source ended: the stream still ends."""

    async def inner(x: int) -> list[int]:
        for _ in range(waits[x]):
            await asyncio.sleep(0)
        return [x] * sizes[x]

    async def main() -> list[int]:
        stage = flat_map(inner, concurrency=concurrency, ordered=ordered)
        # A hang fails the example instead of hanging the suite.
        return await asyncio.wait_for(collect(range(len(sizes)) | stage), 30)

    got = asyncio.run(main())
    expected = [x for x, size in enumerate(sizes) for _ in range(size)]
    assert (got if ordered else sorted(got)) == expected
