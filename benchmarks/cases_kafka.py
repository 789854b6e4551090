"""Case (s): a Kafka consumer-group worker against the same pipeline on a list, and 1 → 3.

Needs confluent-kafka (its wheel carries librdkafka, whose mock cluster speaks the
Kafka protocol from a thread of this process: one broker on a free port of
127.0.0.1). Without it, the Kafka rows say why they are missing. The worker
processes are ``python -m benchmarks.kafka_worker``.
"""

from __future__ import annotations

import asyncio
import ctypes
import glob
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.brokers import HEADERS, missing, on_list, row, time_processes
from benchmarks.harness import (
    TIMES,
    CaseResult,
    Row,
    Settings,
    case,
    describe_error,
    partial_result,
)
from benchmarks.kafka_worker import END, EVERY, PARTITIONS, work

TOPIC = "bench"


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


async def _produce(servers: str, topic: str, count: int, partitions: int = 1) -> None:
    """``count`` records on each partition of ``topic``, then its end record."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=servers, linger_ms=5)
    await producer.start()
    try:
        sent = []
        for p in range(partitions):
            sent += [await producer.send(topic, _value(n), partition=p) for n in range(count)]
            sent.append(await producer.send(topic, END, partition=p))
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


def _produce_fast(servers: str, topic: str, count: int, partitions: int) -> None:
    """As `_produce`, with librdkafka's producer (confluent-kafka), which sends in C."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": servers, "linger.ms": 5, "log_level": 0})
    for p in range(partitions):
        for n in range(count):
            producer.produce(topic, _value(n), partition=p)
            producer.poll(0)
        producer.produce(topic, END, partition=p)
    if producer.flush(30) != 0:
        raise RuntimeError("the records were not all sent")


def _records(count: int) -> list[Any]:
    from streamkit.kafka import KafkaRecord

    records = [KafkaRecord(TOPIC, 0, n, None, _value(n), 0) for n in range(count)]
    return [*records, KafkaRecord(TOPIC, 0, count, None, END, 0)]


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


def _processes(
    cluster: MockCluster, workers: int, per_partition: int, folder: Path, producing: list[float]
) -> float:
    """``workers`` worker processes on 6 partitions: seconds from the first record to the last.

    Appends to ``producing`` how long sending the records took (within that time).
    """
    topic = f"{TOPIC}-processes{workers}-{time.monotonic_ns()}"
    cluster.create_topic(topic, PARTITIONS)
    database = folder / f"{topic}.db"
    done = folder / f"{topic}.done"
    done.touch()
    ready = [folder / f"{topic}.ready{k}" for k in range(workers)]
    module = [sys.executable, "-m", "benchmarks.kafka_worker", cluster.bootstrap_servers, topic]
    share = PARTITIONS // workers

    def settled() -> bool:
        return all(path.exists() and path.read_text() == str(share) for path in ready)

    return time_processes(
        [[*module, str(database), str(done), str(path)] for path in ready],
        settled=settled,
        send=lambda: _produce_fast(cluster.bootstrap_servers, topic, per_partition, PARTITIONS),
        done=done,
        partitions=PARTITIONS,
        sending=producing,
    )


LABELS = {
    "list": "the same pipeline in a checkpointed `Run` over a list",
    "kafka_1": "one `Partitioned` worker on a one-partition Kafka topic",
    "processes_1": "1 worker process on 6 partitions",
    "processes_3": "3 worker processes on 6 partitions",
}


@case("s", "a Kafka consumer-group worker against a list, and 1 → 3 worker processes")
def kafka_worker(settings: Settings) -> CaseResult:
    count = settings.size(20_000, 300)
    per_partition = settings.size(10_000, 40)
    repeat = 1 if settings.quick else 3
    rows: list[Row] = []
    producing: list[float] = []
    with tempfile.TemporaryDirectory(prefix="streamkit-bench-kafka-") as name:
        folder = Path(name)
        records = _records(count)
        listed = [
            asyncio.run(on_list(records, work, str(folder / f"list{k}.db"), EVERY))
            for k in range(repeat)
        ]
        reference = statistics.median(listed)
        rows.append(row("list", LABELS["list"], count + 1, listed, reference))
        try:
            cluster = MockCluster()
        except (ImportError, FileNotFoundError, OSError, RuntimeError) as exc:
            reason = describe_error(exc)
            rows += [missing(key, LABELS[key], reason) for key in LABELS if key != "list"]
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
                rows.append(row("kafka_1", LABELS["kafka_1"], count + 1, one, reference))
                total = PARTITIONS * (per_partition + 1)
                base: float | None = None
                for workers in (1, 3):
                    key = f"processes_{workers}"
                    times = [
                        _processes(cluster, workers, per_partition, folder, producing)
                        for _ in range(1 if settings.quick else 2)
                    ]
                    base = statistics.median(times) if base is None else base
                    rows.append(row(key, LABELS[key], total, times, base))
            except (RuntimeError, TimeoutError, OSError) as exc:
                done = {row.key for row in rows}
                rows += [
                    missing(key, LABELS[key], describe_error(exc))
                    for key in LABELS
                    if key not in done
                ]
            finally:
                cluster.close()
    return partial_result(
        "The pipeline `map_(work)` of case (r) (parse 8 comma-separated numbers from a "
        "record's value and sum them), checkpointed every 1,000 items into SQLite, run three "
        f"ways: over a list of {count:,} `KafkaRecord`s in a `Run`; as one `Partitioned` "
        "worker of a `ConsumerGroup` reading a one-partition topic of as many records from "
        "librdkafka's mock cluster (aiokafka `getmany` of up to 500 records, an offset "
        "commit after each checkpoint); and as 1 and then 3 worker processes of one consumer "
        f"group on a 6-partition topic of {per_partition:,} records per partition (one SQLite "
        "file shared by the processes). Each partition ends with a record that marks its end. "
        "The one worker's time runs from its first output to that record's (the group join "
        "is left out); the processes' from the first record sent (once the group has formed "
        "and shared the partitions out, before the records are sent) to the last end record "
        "coming out of a worker.",
        f"{count:,} records on one partition; {per_partition:,} {TIMES} 6 across processes",
        HEADERS,
        rows,
        "Ratio: the list's time for the first two rows (> 1 = slower than the list), 1 "
        "process's time for the last two (< 1 = faster). The mock cluster is one broker in "
        "the benchmark's own process (a C thread of librdkafka), on the same cores as the "
        "workers; the machine's cores bound the speed-up of processes.",
        "Sending the records (librdkafka's producer, from the benchmark's process, while the "
        "workers read) took "
        + (f"{statistics.median(producing):.3f} s" if producing else "no time (not measured)")
        + " of the processes' times (median). The worker processes' assignor makes the "
        "group's leader wait 0.5 s before it sends the assignments, since the mock cluster "
        "refuses a follower's SyncGroup that comes after the leader's (docs/deploy.md); "
        "that happens before the timing starts.",
    )
