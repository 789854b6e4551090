"""Interoperability with aiostream 0.8, in both directions, without warnings.

The suite turns warnings into errors, so aiostream's "iterated outside of its
context" warning would fail these tests: streamkit must enter aiostream's
streamers properly, and aiostream must be able to close streamkit flows.
"""

from __future__ import annotations

import asyncio

from aiostream import pipe as apipe
from aiostream import stream

from streamkit import (
    chunk,
    collect,
    filter_,
    first,
    flat_map,
    flatten,
    map_,
    merge,
    scan,
    skip,
    take,
    zip_,
)
from streamkit.testing import TrackedSource, assert_no_pending_tasks
from tests.conftest import Stalling, agen, cancel_when_stalled

# ------------------------------------------------------------------ aiostream into streamkit


async def test_streamkit_consumes_aiostream_streams() -> None:
    assert await collect(stream.iterate([1, 2, 3]) | map_(str)) == ["1", "2", "3"]
    assert await collect(stream.range(5) | filter_(lambda x: x % 2)) == [1, 3]
    assert await collect(map_(abs)(stream.range(-2, 1))) == [2, 1, 0]
    assert await collect(stream.range(4) | skip(1) | chunk(2)) == [[1, 2], [3]]


async def test_streamkit_consumes_piped_aiostream_streams() -> None:
    xs = stream.range(10) | apipe.map(lambda x: x * 3) | apipe.filter(lambda x: x % 2 == 0)
    assert await collect(xs | map_(str) | take(3)) == ["0", "6", "12"]


async def test_an_aiostream_stream_can_be_run_again() -> None:
    xs = stream.range(3)
    doubled = map_(lambda x: x * 2)
    assert await collect(xs | doubled) == [0, 2, 4]
    assert await collect(xs | doubled) == [0, 2, 4]


async def test_streamkit_closes_an_endless_aiostream_stream_early() -> None:
    log: list[str] = []
    xs = stream.iterate(agen(range(1000), log)) | apipe.map(lambda x: x + 1)
    assert await collect(xs | map_(str) | take(2)) == ["1", "2"]
    assert log == ["finally"]
    assert await collect(stream.count() | take(3)) == [0, 1, 2]
    assert await first(stream.count(5)) == 5


async def test_combining_aiostream_streams_with_streamkit() -> None:
    assert await collect(zip_(stream.range(3), stream.iterate("abc"))) == [
        (0, "a"),
        (1, "b"),
        (2, "c"),
    ]
    assert sorted(await collect(merge(stream.range(2), stream.range(10, 12)))) == [0, 1, 10, 11]
    assert_no_pending_tasks()


async def test_flatten_iterates_aiostream_streams_within_their_context() -> None:
    # aiostream warns (an error here) when a streamer is iterated outside
    # `async with`: flatten must enter each inner stream as a source would be.
    assert await collect([stream.range(2), stream.range(3)] | flatten()) == [0, 1, 0, 1, 2]


async def test_flat_map_iterates_an_aiostream_stream_it_is_given() -> None:
    # An aiostream stream is an async iterable *and* an awaitable (of its last
    # item): as a flat_map result it must be iterated, not awaited.
    assert await collect([2, 3] | flat_map(lambda n: stream.range(n))) == [0, 1, 0, 1, 2]
    assert await collect(agen([2, 3]) | flat_map(stream.range)) == [0, 1, 0, 1, 2]


async def test_cancelling_a_consumer_of_an_aiostream_stream_closes_it() -> None:
    source = Stalling([1, 2])
    xs = stream.iterate(source) | apipe.map(lambda x: x * 10)
    await cancel_when_stalled(collect(xs | map_(str)), source)
    assert source.closed
    assert_no_pending_tasks()


# ------------------------------------------------------------------ streamkit into aiostream


async def test_aiostream_operators_consume_a_flow() -> None:
    flow = range(5) | map_(lambda x: x * 2) | filter_(lambda x: x != 4)
    assert await stream.list(stream.map(flow, lambda x: x + 1)) == [1, 3, 7, 9]

    piped = stream.iterate(agen("abc") | map_(str.upper)) | apipe.enumerate() | apipe.list()
    assert await piped == [(0, "A"), (1, "B"), (2, "C")]


async def test_aiostream_closes_a_flow_it_stops_early() -> None:
    source = TrackedSource(range(100))
    flow = source | map_(lambda x: x + 1) | scan(lambda total, x: total + x, 0)
    xs = stream.iterate(flow) | apipe.take(3)
    async with xs.stream() as items:
        assert [item async for item in items] == [1, 3, 6]
    assert source.closed
    assert not source.exhausted


async def test_aiostream_combines_flows() -> None:
    left = [1, 2, 3] | map_(str)
    right = agen([10, 20]) | map_(lambda x: x // 10)
    assert await stream.list(stream.zip(left, right)) == [("1", 1), ("2", 2)]

    merged = stream.merge(range(3) | map_(abs), agen([7]) | skip(0))
    assert sorted(await stream.list(merged)) == [0, 1, 2, 7]


async def test_a_round_trip_through_both_libraries() -> None:
    async def slow_square(x: int) -> int:
        await asyncio.sleep(0)
        return x * x

    first_leg = stream.range(6) | apipe.filter(lambda x: x % 2 == 1)
    second_leg = stream.iterate(first_leg | map_(slow_square)) | apipe.map(lambda x: x + 1)
    assert await collect(second_leg | map_(str)) == ["2", "10", "26"]
