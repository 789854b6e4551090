"""streamkit.kafka against librdkafka's mock cluster: a real Kafka protocol, no broker mocks.

Each test uses a topic and a consumer group of its own (re-joining a group
just left waits for the old member's session timeout on the mock cluster).
"""

from __future__ import annotations

import asyncio
import collections
from typing import TYPE_CHECKING, Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from streamkit import MemoryStore, Partitioned, Run, Stage, map_, write_to
from streamkit.kafka import BATCH_HEADER, INDEX_HEADER, ConsumerGroup, KafkaRecord, KafkaSink
from streamkit.testing import assert_no_pending_tasks
from tests.servers import KafkaCluster, fresh_group

if TYPE_CHECKING:
    from collections.abc import Iterable

# Short session timeouts: a worker that stops or dies is replaced within seconds; short
# request timeouts: the mock cluster never answers the LeaveGroup of a stopping consumer.
FAST = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 300, "request_timeout_ms": 2000}


async def produce(cluster: KafkaCluster, topic: str, records: Iterable[tuple[int, str]]) -> None:
    """Send ``(partition, value)`` records, in order."""
    producer = AIOKafkaProducer(bootstrap_servers=cluster.bootstrap_servers)
    await producer.start()
    try:
        for partition, value in records:
            await producer.send(topic, value.encode(), partition=partition)
        await producer.flush()
    finally:
        await producer.stop()


async def committed(cluster: KafkaCluster, topic: str, group: str, partitions: int) -> list[Any]:
    """The offsets ``group`` committed on each partition of ``topic`` (None: none)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=cluster.bootstrap_servers, group_id=group)
    await consumer.start()
    try:
        return [await consumer.committed(TopicPartition(topic, p)) for p in range(partitions)]
    finally:
        await consumer.stop()


async def read_topic(cluster: KafkaCluster, topic: str, partitions: int) -> list[Any]:
    """Every record of ``topic`` (partition by partition)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=cluster.bootstrap_servers, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        found: list[Any] = []
        for tp in tps:
            while await consumer.position(tp) < ends[tp]:
                batch = await consumer.getmany(tp, timeout_ms=1000)
                found += batch.get(tp, [])
        return found
    finally:
        await consumer.stop()


def group_of(cluster: KafkaCluster, topic: str, group: str) -> ConsumerGroup:
    return ConsumerGroup(
        topic, group=group, bootstrap_servers=cluster.bootstrap_servers, options=FAST
    )


def as_pair(record: KafkaRecord) -> tuple[int, int, str]:
    return (record.partition, record.offset, record.value.decode())


async def take_outputs(worker: Partitioned[Any], count: int) -> list[Any]:
    """The outputs of ``worker`` until ``count``, then until `Partitioned.stop` has handed back
    every partition with a last checkpoint (the outputs of its last items come out too)."""
    found: list[Any] = []
    async with worker:
        async for item in worker:
            found.append(item)
            if len(found) == count:
                worker.stop()
    return found


# --------------------------------------------------------------------------- order and bounds


async def test_each_partition_keeps_its_order_under_the_global_bound(kafka: KafkaCluster) -> None:
    topic = kafka.create_topic(4)
    await produce(kafka, topic, [(n % 4, f"v{n}") for n in range(120)])
    in_flight = 0
    most = 0

    async def slow(record: KafkaRecord) -> tuple[int, int, str]:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.001)
        in_flight -= 1
        return as_pair(record)

    store = MemoryStore()
    group = group_of(kafka, topic, fresh_group())
    worker = Partitioned(map_(slow), group, store=store, name="ord", every=7, concurrency=2)
    assert group.assigned() == ()
    outputs: list[tuple[int, int, str]] = []
    async with worker:
        async for output in worker:
            outputs.append(output)
            if len(outputs) == 1:
                assert group.assigned() == (0, 1, 2, 3)
            if len(outputs) == 120:
                worker.stop()
    assert group.assigned() == ()
    assert sorted(value for _, _, value in outputs) == sorted(f"v{n}" for n in range(120))
    for partition in range(4):
        offsets = [offset for p, offset, _ in outputs if p == partition]
        assert offsets == list(range(30)), partition
        values = [value for p, _, value in outputs if p == partition]
        assert values == [f"v{n}" for n in range(partition, 120, 4)]
    assert 1 <= most <= 2
    assert_no_pending_tasks()


# ------------------------------------------------------------------ checkpoint, then commit


async def test_offsets_are_committed_only_once_a_checkpoint_covers_them(
    kafka: KafkaCluster,
) -> None:
    topic = kafka.create_topic(2)
    group = fresh_group()
    await produce(kafka, topic, [(n % 2, f"v{n}") for n in range(60)])
    store = MemoryStore()
    worker_group = group_of(kafka, topic, group)
    worker = Partitioned(map_(as_pair), worker_group, store=store, name="ack", every=4)
    samples: list[tuple[list[Any], list[Any]]] = []
    seen = 0
    async with worker:
        async for _ in worker:
            seen += 1
            if seen % 10 == 0:
                offsets = await committed(kafka, topic, group, 2)
                saved = [await store.load(f"ack.{p}") for p in range(2)]
                samples.append((offsets, [None if c is None else c.position for c in saved]))
            if seen == 50:
                worker.stop()
    for offsets, positions in samples:
        for offset, position in zip(offsets, positions, strict=True):
            # A commit never runs ahead of the checkpoint, read after it.
            assert offset is None or (position is not None and offset <= position)
    assert any(offset is not None for offsets, _ in samples for offset in offsets)
    # Stopping saved a last checkpoint per partition, covering every output seen, and
    # committed it.
    final = [await store.load(f"ack.{p}") for p in range(2)]
    positions = [checkpoint.position for checkpoint in final if checkpoint is not None]
    assert sum(positions) == seen >= 50
    assert await committed(kafka, topic, group, 2) == positions
    assert worker_group.skipped_commits == worker_group.failed_commits == 0
    assert_no_pending_tasks()


# --------------------------------------------------------------------------- resume


async def test_a_crashed_worker_resumes_from_its_checkpoints_not_the_group_offsets(
    kafka: KafkaCluster,
) -> None:
    topic = kafka.create_topic(2)
    await produce(kafka, topic, [(n % 2, f"v{n}") for n in range(40)])
    store = MemoryStore()
    first: list[tuple[int, int, str]] = []

    crashing = True

    def pair(record: KafkaRecord) -> tuple[int, int, str]:
        if crashing and len(first) == 25:
            raise RuntimeError("worker crashed")
        if crashing:
            first.append(as_pair(record))
        return as_pair(record)

    worker = Partitioned(
        map_(pair), group_of(kafka, topic, fresh_group()), store=store, name="crash", every=5
    )
    with pytest.raises(RuntimeError, match="worker crashed"):
        async for _ in worker:
            pass
    saved = {p: await store.load(f"crash.{p}") for p in range(2)}
    assert all(checkpoint is not None for checkpoint in saved.values())
    # A new group: it has committed nothing, so only the checkpoints say where to go on.
    crashing = False
    again = Partitioned(
        map_(pair), group_of(kafka, topic, fresh_group()), store=store, name="crash", every=5
    )
    rest = await take_outputs(again, 40 - sum(c.position for c in saved.values() if c))
    for partition, checkpoint in saved.items():
        assert checkpoint is not None
        offsets = [offset for p, offset, _ in rest if p == partition]
        assert offsets == list(range(checkpoint.position, 20))
    seen = collections.Counter(value for _, _, value in first + rest)
    assert set(seen) == {f"v{n}" for n in range(40)}
    # Replays: only what the crashed run had output after its last checkpoints.
    assert sum(seen.values()) - 40 <= 2 * 5
    assert_no_pending_tasks()


# --------------------------------------------------------------------------- handover


async def test_a_partition_handed_back_goes_on_exactly_after_its_checkpoint(
    kafka: KafkaCluster,
) -> None:
    # The revoke path (barrier, save, commit, close), then another worker takes over.
    topic = kafka.create_topic(4)
    await produce(kafka, topic, [(n % 4, f"a{n}") for n in range(80)])
    store = MemoryStore()
    pipeline: Stage[KafkaRecord, tuple[int, int, str]] = map_(as_pair)
    one = Partitioned(
        pipeline, group_of(kafka, topic, fresh_group()), store=store, name="rb", buffer=2, every=3
    )
    seen = await take_outputs(one, 30)
    saved = [await store.load(f"rb.{p}") for p in range(4)]
    covered = sum(checkpoint.position for checkpoint in saved if checkpoint is not None)
    # Handed back with last checkpoints that cover exactly what came out.
    assert covered == len(seen)
    assert 30 <= covered < 80
    two = Partitioned(pipeline, group_of(kafka, topic, fresh_group()), store=store, name="rb")
    rest = await take_outputs(two, 80 - covered)
    for partition, checkpoint in enumerate(saved):
        position = 0 if checkpoint is None else checkpoint.position
        handed = [offset for p, offset, _ in seen if p == partition]
        assert handed == list(range(position))
        offsets = [offset for p, offset, _ in rest if p == partition]
        assert offsets == list(range(position, 20))
    # Every record exactly once across the two workers.
    assert sorted(value for _, _, value in seen + rest) == sorted(f"a{n}" for n in range(80))
    assert_no_pending_tasks()


# ------------------------------------------------------------------ early exit, cancellation


async def test_leaving_early_abandons_the_partitions_without_a_last_checkpoint(
    kafka: KafkaCluster,
) -> None:
    topic = kafka.create_topic(2)
    group = fresh_group()
    await produce(kafka, topic, [(n % 2, f"v{n}") for n in range(10)])
    store = MemoryStore()
    worker = Partitioned(
        map_(as_pair), group_of(kafka, topic, group), store=store, name="brk", every=100
    )
    async with worker:
        async for _ in worker:
            break
    # No checkpoint covers outputs the consumer never saw, and nothing was committed.
    assert [await store.load(f"brk.{p}") for p in range(2)] == [None, None]
    assert await committed(kafka, topic, group, 2) == [None, None]
    assert_no_pending_tasks()
    # The next owner repeats the partitions from their last checkpoints (here: none).
    again = Partitioned(
        map_(as_pair), group_of(kafka, topic, fresh_group()), store=store, name="brk"
    )
    assert sorted(value for _, _, value in await take_outputs(again, 10)) == sorted(
        f"v{n}" for n in range(10)
    )


async def test_leaving_early_while_checkpoints_commit_gives_the_commits_up(
    kafka: KafkaCluster,
) -> None:
    # Checkpoints every item: saves (and their offset commits) are under way when the
    # worker leaves; the consumer stops, so the commits in flight are given up, not awaited.
    topic = kafka.create_topic(4)
    await produce(kafka, topic, [(n % 4, f"v{n}") for n in range(200)])
    store = MemoryStore()
    group = group_of(kafka, topic, fresh_group())
    worker = Partitioned(map_(as_pair), group, store=store, name="inflight", every=1, buffer=1)
    seen = 0
    async with asyncio.timeout(60):  # a commit awaited on the stopped consumer never ends
        async with worker:
            async for _ in worker:
                seen += 1
                if seen == 40:
                    break
    assert group.failed_commits == 0
    saved = [await store.load(f"inflight.{p}") for p in range(4)]
    assert sum(checkpoint.position for checkpoint in saved if checkpoint is not None) >= 1
    assert_no_pending_tasks()


async def test_a_cancelled_worker_leaves_no_task_behind(kafka: KafkaCluster) -> None:
    topic = kafka.create_topic(2)
    await produce(kafka, topic, [(n % 2, f"v{n}") for n in range(10)])
    worker = Partitioned(
        map_(as_pair), group_of(kafka, topic, fresh_group()), store=MemoryStore(), name="cnl"
    )
    seen = asyncio.Event()

    async def consume() -> None:
        async for _ in worker:
            seen.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(seen.wait(), 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert_no_pending_tasks()


# --------------------------------------------------------------------------- the producer sink


async def test_the_sink_publishes_every_checkpoint_once_saved(kafka: KafkaCluster) -> None:
    topic = kafka.create_topic(1)
    async with KafkaSink(topic, bootstrap_servers=kafka.bootstrap_servers) as sink:
        run = Run(
            map_(lambda n: {"n": n}) | write_to(sink), range(10), name="pub",
            checkpoint=MemoryStore(), every=3,
        )  # fmt: skip
        await run.drain()
    records = await read_topic(kafka, topic, 1)
    assert [record.value for record in records] == [b'{"n":%d}' % n for n in range(10)]
    markers = [
        (dict(record.headers)[BATCH_HEADER], dict(record.headers)[INDEX_HEADER])
        for record in records
    ]
    assert len(set(markers)) == 10
    assert [int(index) for _, index in markers] == [0, 1, 2, 0, 1, 2, 0, 1, 2, 0]


async def test_a_replayed_batch_carries_the_same_markers(kafka: KafkaCluster) -> None:
    topic = kafka.create_topic(1)
    store = MemoryStore()

    failing = True

    def fail_at_7(n: int) -> int:
        if failing and n == 7:
            raise RuntimeError("crash")
        return n

    async with KafkaSink(topic, bootstrap_servers=kafka.bootstrap_servers) as sink:
        with pytest.raises(RuntimeError, match="crash"):
            await Run(
                map_(fail_at_7) | write_to(sink), range(10), name="rep", checkpoint=store, every=3
            ).drain()
        # The resumed run commits the batch of its checkpoint again (the crash
        # might have come before that batch was sent), then goes on.
        failing = False
        await Run(
            map_(fail_at_7) | write_to(sink), range(10), name="rep", checkpoint=store, every=3
        ).drain()
    records = await read_topic(kafka, topic, 1)
    values = [int(record.value) for record in records]
    assert sorted(set(values)) == list(range(10))
    unique: dict[tuple[bytes, bytes], int] = {}
    for record in records:
        headers = dict(record.headers)
        marker = (headers[BATCH_HEADER], headers[INDEX_HEADER])
        assert unique.setdefault(marker, int(record.value)) == int(record.value)
    # Deduplicated by their markers, the records hold every item exactly once.
    assert sorted(unique.values()) == list(range(10))
    assert len(values) > len(unique)


# --------------------------------------------------------------------------- bad arguments


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ({"topic": 3}, TypeError, "topic must be a str"),
        ({"topic": ""}, ValueError, "topic must be a non-empty"),
        ({"group": None}, TypeError, "group must be a str"),
        ({"group": ""}, ValueError, "group must be a non-empty"),
        ({"bootstrap_servers": 9092}, TypeError, "bootstrap_servers must be a str"),
        ({"bootstrap_servers": []}, ValueError, "bootstrap_servers must name"),
        ({"max_records": 1.5}, TypeError, "max_records must be an int"),
        ({"max_records": 0}, ValueError, "max_records must be >= 1"),
        ({"fetch_timeout": "1"}, TypeError, "fetch_timeout must be a number"),
        ({"fetch_timeout": 5}, ValueError, "fetch_timeout must be > 0"),
        ({"commit_timeout": None}, TypeError, "commit_timeout must be a number"),
        ({"commit_timeout": 0}, ValueError, "commit_timeout must be a positive"),
        ({"options": [1]}, TypeError, "options must be a mapping"),
        ({"options": {"group_id": "x"}}, ValueError, "options: 'group_id' is set by streamkit"),
        ({"options": {"enable_auto_commit": True}}, ValueError, "'enable_auto_commit'"),
    ],
)
def test_a_consumer_group_refuses_bad_arguments(
    arguments: dict[str, Any], error: type[Exception], message: str
) -> None:
    given: dict[str, Any] = {"topic": "t", "group": "g", "bootstrap_servers": "h:1", **arguments}
    topic = given.pop("topic")
    with pytest.raises(error, match=message):
        ConsumerGroup(topic, **given)


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ({"topic": b"t"}, TypeError, "topic must be a str"),
        ({"bootstrap_servers": ["h:1", 2]}, ValueError, "bootstrap_servers must name"),
        ({"value": "json"}, TypeError, "value must be callable"),
        ({"key": 1}, TypeError, "key must be callable"),
        ({"options": {"transactional_id": "t"}}, ValueError, "'transactional_id' is set"),
    ],
)
def test_a_sink_refuses_bad_arguments(
    arguments: dict[str, Any], error: type[Exception], message: str
) -> None:
    given: dict[str, Any] = {"topic": "t", "bootstrap_servers": "h:1", **arguments}
    topic = given.pop("topic")
    with pytest.raises(error, match=message):
        KafkaSink(topic, **given)


def test_a_sink_refuses_values_that_are_not_bytes() -> None:
    sink = KafkaSink("t", bootstrap_servers="h:1", value=str)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="value\\(\\) must return bytes"):
        sink.pre_commit([1], 1)
