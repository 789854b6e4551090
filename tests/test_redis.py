"""streamkit.redis against a real redis-server: StreamGroup workers and StreamSink.

Every test uses streams of its own on the session's server (tests/servers.py);
no part of the Redis protocol is mocked. The multi-process test (3 worker
processes, one SIGKILLed) is in tests/test_redis_workers.py.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from typing import TYPE_CHECKING, Any

import pytest
import redis.asyncio as aioredis
import redis.exceptions

from streamkit import MemoryStore, Partitioned, TableSink, map_, write_to
from streamkit.redis import Entry, StreamGroup, StreamSink
from streamkit.testing import assert_no_pending_tasks

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from tests.servers import RedisServer

_streams = itertools.count(1)


def fresh_stream() -> str:
    return f"s{os.getpid()}_{next(_streams)}"


@pytest.fixture
async def client(redis: RedisServer) -> AsyncIterator[Any]:
    connection = aioredis.Redis.from_url(redis.url, decode_responses=True)
    yield connection
    await connection.aclose()


async def fill(client: Any, stream: str, partitions: int, count: int) -> None:
    async with client.pipeline(transaction=False) as pipe:
        for p in range(partitions):
            for n in range(count):
                pipe.xadd(f"{stream}:{p}", {"n": str(p * 10_000 + n)})
        await pipe.execute()


def number(entry: Entry) -> int:
    return int(entry.fields["n"])


def group(server: RedisServer, stream: str, partitions: int, **options: Any) -> StreamGroup:
    options = {"lease": 1.5, "block": 0.1, **options}
    return StreamGroup(server.url, stream, partitions=partitions, **options)


def by_partition(items: list[int]) -> dict[int, list[int]]:
    found: dict[int, list[int]] = {}
    for item in items:
        found.setdefault(item // 10_000, []).append(item)
    return found


def expected(partitions: int, count: int) -> dict[int, list[int]]:
    return {p: [p * 10_000 + n for n in range(count)] for p in range(partitions)}


async def connections(client: Any) -> int:
    return len(await client.client_list())


async def test_one_worker_reads_every_partition_in_order(redis: RedisServer, client: Any) -> None:
    stream = fresh_stream()
    await fill(client, stream, 3, 50)
    before = await connections(client)
    async with MemoryStore() as store:
        worker = Partitioned(map_(number), group(redis, stream, 3), store=store, name="w", every=7)
        seen: list[int] = []
        async with worker:
            async for item in worker:
                seen.append(item)
                if len(seen) == 150:
                    worker.stop()
        assert by_partition(seen) == expected(3, 50)
        for p in range(3):
            checkpoint = await store.load(f"w.{p}")
            assert checkpoint is not None
            # Handed back with a last checkpoint that covers everything: nothing pending.
            assert checkpoint.position == (await client.xrevrange(f"{stream}:{p}", count=1))[0][0]
            assert (await client.xpending(f"{stream}:{p}", "streamkit"))["pending"] == 0
    # No lease, no beat, no connection left behind.
    assert await client.keys(f"{stream}:lease:*") == []
    assert await client.zcard(f"{stream}:workers") == 0
    assert await connections(client) == before
    assert_no_pending_tasks()


async def acked_beyond(client: Any, key: str) -> str | None:
    """The newest entry of ``key`` delivered and acknowledged (not pending), if any."""
    [info] = await client.xinfo_groups(key)
    last = info["last-delivered-id"]
    rows = await client.xpending_range(key, "streamkit", "-", "+", 10_000)
    pending = {row["message_id"] for row in rows}
    delivered = [entry_id for entry_id, _ in await client.xrange(key, "-", last)]
    acked = [entry_id for entry_id in delivered if entry_id not in pending]
    return acked[-1] if acked else None


def entry_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq)


async def test_entries_are_acknowledged_only_once_a_checkpoint_covers_them(
    redis: RedisServer, client: Any
) -> None:
    stream = fresh_stream()
    await fill(client, stream, 2, 200)
    checked = 0
    async with MemoryStore() as store:
        worker = Partitioned(
            map_(number), group(redis, stream, 2), store=store, name="w", every=10, buffer=1
        )
        async with worker:
            seen = 0
            async for _ in worker:
                seen += 1
                if seen % 25 == 0:
                    for p in range(2):
                        key = f"{stream}:{p}"
                        # The acknowledgements first, the checkpoint after: a checkpoint
                        # saved later cannot cover less.
                        acked = await acked_beyond(client, key)
                        checkpoint = await store.load(f"w.{p}")
                        if acked is None:
                            continue
                        assert checkpoint is not None
                        assert entry_key(acked) <= entry_key(checkpoint.position)
                        checked += 1
                if seen == 300:
                    break
    assert checked > 0


async def test_a_lost_lease_abandons_the_partition_and_the_worker_resumes_it(
    redis: RedisServer, client: Any
) -> None:
    stream = fresh_stream()
    await fill(client, stream, 1, 400)

    async def slowly(entry: Entry) -> dict[str, int]:
        await asyncio.sleep(0.002)
        return {"n": number(entry)}

    async with MemoryStore() as store:
        sink = TableSink(store, "out")
        broker = group(redis, stream, 1, lease=0.6, block=0.05)
        worker = Partitioned(
            map_(slowly) | write_to(sink), broker, store=store, name="w", every=10, buffer=1
        )
        seen: list[int] = []
        async with worker:
            async for item in worker:
                seen.append(item["n"])
                if len(seen) == 50:
                    # Another owner takes the lease: this worker must let the partition go.
                    await client.set(f"{stream}:lease:0", "intruder", px=800)
                if len(seen) >= 400 and len(set(seen)) == 400:
                    worker.stop()
        assert sorted(set(seen)) == expected(1, 400)[0]
        # The partition started again from its last checkpoint: a bounded repeat.
        repeats = len(seen) - 400
        assert repeats <= 2 * 10 + 1
        # The table holds every record exactly once.
        assert sorted(row["n"] for row in await sink.rows()) == expected(1, 400)[0]
    assert_no_pending_tasks()


async def consume(worker: Partitioned[int], seen: list[int], until: asyncio.Event) -> None:
    """Iterate ``worker`` until it ends: `stop` it when ``until`` is set."""

    async def stop() -> None:
        await until.wait()
        worker.stop()

    stopping = asyncio.ensure_future(stop())
    try:
        async with worker:
            async for item in worker:
                seen.append(item)
    finally:
        stopping.cancel()
        await asyncio.gather(stopping, return_exceptions=True)


async def wait_for(condition: Any, seconds: float = 15.0) -> None:
    for _ in range(int(seconds / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("timed out waiting for the condition")


async def test_workers_share_partitions_as_they_join_and_leave(
    redis: RedisServer, client: Any
) -> None:
    stream = fresh_stream()
    partitions = 4
    await fill(client, stream, partitions, 300)

    async def slowly(entry: Entry) -> int:
        await asyncio.sleep(0.003)
        return number(entry)

    async with MemoryStore() as store:
        sink = TableSink(store, "out")
        pipeline = map_(slowly) | write_to(sink)
        a = group(redis, stream, partitions, consumer="a")
        b = group(redis, stream, partitions, consumer="b")
        seen_a: list[int] = []
        seen_b: list[int] = []
        stop_a, stop_b = asyncio.Event(), asyncio.Event()
        one = asyncio.ensure_future(
            consume(Partitioned(pipeline, a, store=store, name="w", every=10), seen_a, stop_a)
        )
        await wait_for(lambda: len(a.owned()) == partitions and len(seen_a) > 20)
        two = asyncio.ensure_future(
            consume(Partitioned(pipeline, b, store=store, name="w", every=10), seen_b, stop_b)
        )
        # Fair share: two each.
        await wait_for(lambda: len(a.owned()) == 2 and len(b.owned()) == 2)
        assert set(a.owned()).isdisjoint(b.owned())
        await wait_for(lambda: len(seen_b) > 20)
        stop_b.set()
        await two
        # b left, handing its partitions back: a takes them all again.
        await wait_for(lambda: len(a.owned()) == partitions)

        # The consumers of earlier owners are forgotten as a takes the partitions back.
        async def consumers() -> list[list[str]]:
            return [
                [found["name"] for found in await client.xinfo_consumers(key, "streamkit")]
                for key in (f"{stream}:{p}" for p in range(partitions))
            ]

        for _ in range(500):
            if await consumers() == [["a"]] * partitions:
                break
            await asyncio.sleep(0.02)
        assert await consumers() == [["a"]] * partitions
        await wait_for(lambda: len(set(seen_a) | set(seen_b)) == partitions * 300, 30.0)
        stop_a.set()
        await one
        everything = seen_a + seen_b
        # Handed over with last checkpoints: nothing lost and nothing repeated.
        every_record = [x for xs in expected(partitions, 300).values() for x in xs]
        assert sorted(everything) == every_record
        for items in by_partition(seen_a).values():
            assert items == sorted(items)
        assert sorted(await sink.rows()) == sorted(everything)
    assert_no_pending_tasks()


async def test_the_stream_sink_adds_once_per_batch_when_asked(
    redis: RedisServer, client: Any
) -> None:
    stream = fresh_stream()
    async with (
        StreamSink(redis.url, stream, exactly_once=True) as once,
        StreamSink(redis.url, f"{stream}-plain") as plain,
    ):
        prepared = once.pre_commit([{"n": 1}, {"n": 2, "x": "a"}], 1)
        await once.commit(prepared)
        await once.commit(prepared)  # a commit repeated after a crash
        entries = await client.xrange(stream)
        assert [fields for _, fields in entries] == [{"n": "1"}, {"n": "2", "x": "a"}]
        again = plain.pre_commit([{"n": 1}], 1)
        await plain.commit(again)
        await plain.commit(again)
        assert len(await client.xrange(f"{stream}-plain")) == 2  # at least once


async def test_a_worker_writes_its_outputs_into_a_stream_exactly_once(
    redis: RedisServer, client: Any
) -> None:
    stream = fresh_stream()
    await fill(client, stream, 2, 40)
    async with (
        MemoryStore() as store,
        StreamSink(
            redis.url, f"{stream}-out", exactly_once=True, fields=lambda n: {"doubled": n * 2}
        ) as sink,
    ):
        worker = Partitioned(
            map_(number) | write_to(sink), group(redis, stream, 2), store=store, name="w", every=6
        )
        seen: list[int] = []
        async with worker:
            async for item in worker:
                seen.append(item)
                if len(seen) == 80:
                    worker.stop()
    written = [int(fields["doubled"]) // 2 for _, fields in await client.xrange(f"{stream}-out")]
    assert sorted(written) == sorted(seen)
    assert by_partition(written) == expected(2, 40)


async def test_cancelling_a_worker_leaves_no_task_or_connection(
    redis: RedisServer, client: Any
) -> None:
    stream = fresh_stream()
    await fill(client, stream, 3, 10_000)
    before = await connections(client)
    async with MemoryStore() as store:
        worker = Partitioned(map_(number), group(redis, stream, 3), store=store, name="w", every=50)

        async def run() -> None:
            async with worker:
                async for _ in worker:
                    await asyncio.sleep(0)

        task = asyncio.ensure_future(run())
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert_no_pending_tasks()
    assert await connections(client) == before


async def test_a_worker_without_a_server_fails_and_cleans_up() -> None:
    from tests.servers import free_port

    broker = StreamGroup(f"redis://127.0.0.1:{free_port()}/0", "s", partitions=2)
    async with MemoryStore() as store:
        worker = Partitioned(map_(number), broker, store=store, name="w")

        async def run() -> None:
            async with worker:
                async for _ in worker:
                    pass

        with pytest.raises(redis.exceptions.ConnectionError):
            await run()
    assert_no_pending_tasks()


@pytest.mark.parametrize(
    ("options", "error", "parameter"),
    [
        ({"url": 3}, TypeError, "url"),
        ({"url": "http://x"}, ValueError, "url"),
        ({"stream": ""}, ValueError, "stream"),
        ({"stream": "a b"}, ValueError, "stream"),
        ({"partitions": 0}, ValueError, "partitions"),
        ({"partitions": "6"}, TypeError, "partitions"),
        ({"group": "a b"}, ValueError, "group"),
        ({"consumer": ""}, ValueError, "consumer"),
        ({"consumer": 1}, TypeError, "consumer"),
        ({"lease": 0}, ValueError, "lease"),
        ({"lease": "10"}, TypeError, "lease"),
        ({"block": 5.0}, ValueError, "block"),
        ({"count": 0}, ValueError, "count"),
    ],
)
def test_a_stream_group_refuses_bad_parameters(
    options: dict[str, Any], error: type[Exception], parameter: str
) -> None:
    arguments: dict[str, Any] = {"url": "redis://localhost/0", "stream": "s", "partitions": 6}
    arguments.update(options)
    with pytest.raises(error, match=rf"^{parameter} "):
        StreamGroup(arguments.pop("url"), arguments.pop("stream"), **arguments)


@pytest.mark.parametrize(
    ("options", "error", "parameter"),
    [
        ({"url": None}, TypeError, "url"),
        ({"stream": "a\nb"}, ValueError, "stream"),
        ({"fields": "n"}, TypeError, "fields"),
        ({"exactly_once": 1}, TypeError, "exactly_once"),
        ({"maxlen": 0}, ValueError, "maxlen"),
        ({"marker_ttl": 1.5}, TypeError, "marker_ttl"),
    ],
)
def test_a_stream_sink_refuses_bad_parameters(
    options: dict[str, Any], error: type[Exception], parameter: str
) -> None:
    arguments: dict[str, Any] = {"url": "redis://localhost/0", "stream": "s"}
    arguments.update(options)
    with pytest.raises(error, match=rf"^{parameter} "):
        StreamSink(arguments.pop("url"), arguments.pop("stream"), **arguments)


def test_an_item_that_is_not_fields_is_refused_at_its_checkpoint() -> None:
    sink = StreamSink("redis://localhost/0", "s")
    with pytest.raises(TypeError, match="fields"):
        sink.pre_commit([3], 1)
    with pytest.raises(TypeError, match="str to str"):
        sink.pre_commit([{"n": [1]}], 1)
    assert sink.pre_commit([Entry("0", "1-0", {"a": "b"})], 1)["entries"] == [{"a": "b"}]
