"""Case (s): a Kafka consumer-group worker against the same pipeline on a list.

Needs confluent-kafka (its wheel carries librdkafka, whose mock cluster speaks the
Kafka protocol from a thread of this process: one broker on a free port of
127.0.0.1). Without it, the worker's row says why it is missing. The mock cluster
forms no consumer group of more than one aiokafka member (see docs/deploy.md), so
this case has no row of several worker processes; case (r) has them for Redis.
"""

from __future__ import annotations

import asyncio
import ctypes
import glob
import statistics
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.harness import (
    CaseResult,
    Row,
    Settings,
    case,
    describe_error,
    format_ratio,
    partial_result,
)

if TYPE_CHECKING:
    from streamkit.kafka import KafkaRecord

HEADERS = ("competitor", "items", "median s", "items per s", "ratio")
EVERY = 1000
TOPIC = "bench"
END = b"end"


def work(record: KafkaRecord) -> tuple[int, int]:
    """The per-item work of case (s): parse a small record, a little arithmetic (as case (r))."""
    if record.value == END:
        return record.partition, -1
    return record.partition, sum(int(part) for part in record.value.split(b","))


def _value(n: int) -> bytes:
    return ",".join(str((n * k) % 97) for k in range(8)).encode()


class MockCluster:
    """librdkafka's mock cluster (one broker, in this process), as tests/servers.py starts it."""

    def __init__(self) -> None:
        import confluent_kafka

        folder = Path(confluent_kafka.__file__).parent.parent / "confluent_kafka.libs"
        found = sorted(glob.glob(str(folder / "librdkafka*.so*")))
        if not found:
            raise FileNotFoundError(f"no librdkafka in {folder}")
        lib = ctypes.CDLL(found[0])
        lib.rd_kafka_conf_new.restype = ctypes.c_void_p
        lib.rd_kafka_conf_set.argtypes = [ctypes.c_void_p, *[ctypes.c_char_p] * 3, ctypes.c_size_t]
        lib.rd_kafka_new.restype = ctypes.c_void_p
        lib.rd_kafka_new.argtypes = [
            ctypes.c_int,
            ctypes.c_void_p,
            ctypes.c_char_p,
            ctypes.c_size_t,
        ]
        lib.rd_kafka_handle_mock_cluster.restype = ctypes.c_void_p
        lib.rd_kafka_handle_mock_cluster.argtypes = [ctypes.c_void_p]
        lib.rd_kafka_mock_cluster_bootstraps.restype = ctypes.c_char_p
        lib.rd_kafka_mock_cluster_bootstraps.argtypes = [ctypes.c_void_p]
        lib.rd_kafka_mock_topic_create.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.rd_kafka_mock_topic_create.argtypes += [ctypes.c_int] * 2
        lib.rd_kafka_mock_group_initial_rebalance_delay_ms.argtypes = [
            ctypes.c_void_p,
            ctypes.c_int32,
        ]
        lib.rd_kafka_destroy.argtypes = [ctypes.c_void_p]
        error = ctypes.create_string_buffer(512)
        conf = lib.rd_kafka_conf_new()
        for name, value in (("test.mock.num.brokers", "1"), ("log_level", "0")):
            if lib.rd_kafka_conf_set(conf, name.encode(), value.encode(), error, 512) != 0:
                raise RuntimeError(f"librdkafka refused {name}: {error.value.decode()}")
        handle = lib.rd_kafka_new(0, conf, error, 512)
        if not handle:
            raise RuntimeError(f"librdkafka did not start its mock cluster: {error.value.decode()}")
        self._lib = lib
        self._handle: int | None = handle
        self._cluster = lib.rd_kafka_handle_mock_cluster(handle)
        self.bootstrap_servers: str = lib.rd_kafka_mock_cluster_bootstraps(self._cluster).decode()
        lib.rd_kafka_mock_group_initial_rebalance_delay_ms(self._cluster, 0)

    def create_topic(self, name: str, partitions: int) -> None:
        if self._lib.rd_kafka_mock_topic_create(self._cluster, name.encode(), partitions, 1):
            raise RuntimeError(f"the mock cluster did not create topic {name!r}")

    def close(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            self._lib.rd_kafka_destroy(handle)


async def _produce(servers: str, topic: str, count: int) -> None:
    """``count`` records on partition 0 of ``topic``, then its end record."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=servers, linger_ms=5)
    await producer.start()
    try:
        sent = [await producer.send(topic, _value(n), partition=0) for n in range(count)]
        sent.append(await producer.send(topic, END, partition=0))
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


def _records(count: int) -> list[Any]:
    from streamkit.kafka import KafkaRecord

    records = [KafkaRecord(TOPIC, 0, n, None, _value(n), 0) for n in range(count)]
    return [*records, KafkaRecord(TOPIC, 0, count, None, END, 0)]


async def _on_list(records: list[Any], database: str) -> float:
    """The same pipeline on a list, checkpointed the same way: seconds."""
    from streamkit import Run, SQLiteStore, map_

    async with SQLiteStore(database) as store:
        started = time.perf_counter()
        run = Run(map_(work), records, name="list", checkpoint=store, every=EVERY, metrics=False)
        seen = 0
        async for _ in run:
            seen += 1
        elapsed = time.perf_counter() - started
    assert seen == len(records)
    return elapsed


async def _one_worker(servers: str, topic: str, count: int, database: str) -> float:
    """One worker of a fresh group on a one-partition topic: seconds from its first output
    to its end record's (the group join, about a second on the mock, is left out)."""
    from streamkit import Partitioned, SQLiteStore, map_
    from streamkit.kafka import ConsumerGroup

    async with SQLiteStore(database) as store:
        group = ConsumerGroup(topic, group=f"{topic}-group", bootstrap_servers=servers)
        worker = Partitioned(map_(work), group, store=store, name="one", every=EVERY)
        seen = 0
        started = 0.0
        elapsed = 0.0
        async with worker:
            async for _, value in worker:
                if seen == 0:
                    started = time.perf_counter()
                seen += 1
                if value < 0:
                    elapsed = time.perf_counter() - started
                    worker.stop()
    assert seen == count + 1, seen
    return elapsed


def _row(key: str, label: str, items: int, seconds: list[float], reference: float) -> Row:
    median = statistics.median(seconds)
    ratio = median / reference
    cells = (f"{items:,}", f"{median:.3f}", f"{items / median:,.0f}", format_ratio(ratio))
    return Row(
        key=key,
        label=label,
        cells=cells,
        values={"seconds": median, "items_per_second": items / median},
        ratio=ratio,
    )


LABELS = {
    "list": "the same pipeline in a checkpointed `Run` over a list",
    "kafka_1": "one `Partitioned` worker on a one-partition Kafka topic",
}


@case("s", "a Kafka consumer-group worker against a list")
def kafka_worker(settings: Settings) -> CaseResult:
    count = settings.size(20_000, 300)
    repeat = 1 if settings.quick else 3
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="streamkit-bench-kafka-") as name:
        folder = Path(name)
        records = _records(count)
        on_list = [
            asyncio.run(_on_list(records, str(folder / f"list{k}.db"))) for k in range(repeat)
        ]
        reference = statistics.median(on_list)
        rows.append(_row("list", LABELS["list"], count + 1, on_list, reference))
        try:
            cluster = MockCluster()
        except (ImportError, FileNotFoundError, OSError, RuntimeError) as exc:
            rows.append(
                Row(
                    key="kafka_1",
                    label=LABELS["kafka_1"],
                    cells=("", "", "", ""),
                    note=f"n/a: {describe_error(exc)}",
                )
            )
        else:
            try:
                one = []
                for k in range(repeat):
                    topic = f"{TOPIC}-{k}"
                    cluster.create_topic(topic, 1)
                    asyncio.run(_produce(cluster.bootstrap_servers, topic, count))
                    database = str(folder / f"one{k}.db")
                    one.append(
                        asyncio.run(_one_worker(cluster.bootstrap_servers, topic, count, database))
                    )
                rows.append(_row("kafka_1", LABELS["kafka_1"], count + 1, one, reference))
            finally:
                cluster.close()
    return partial_result(
        "The pipeline `map_(work)` of case (r) (parse 8 comma-separated numbers from a "
        "record's value and sum them), checkpointed every 1,000 items into SQLite, run two "
        f"ways: over a list of {count:,} `KafkaRecord`s in a `Run`; and as one `Partitioned` "
        "worker of a `ConsumerGroup` reading a one-partition topic of as many records from "
        "librdkafka's mock cluster (aiokafka `getmany` of up to 500 records, an offset "
        "commit after each checkpoint). The topic ends with a record that marks its end; the "
        "worker's time runs from its first output to that record's (the group join is left "
        "out).",
        f"{count:,} records on one partition",
        HEADERS,
        rows,
        "Ratio: the list's time (> 1 = slower than the list). The mock cluster is one broker "
        "in the benchmark's own process (a C thread of librdkafka), on the same cores.",
        "No row of 1 → 3 worker processes: a consumer group of more than one aiokafka member "
        "does not form on the mock cluster (see docs/deploy.md); case (r) measures the "
        "scaling on Redis Streams.",
    )
