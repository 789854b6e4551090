"""Three worker processes on a 6-partition Kafka topic; one is SIGKILLed mid-run.

Each worker is ``python -m tests.kafka_worker`` (a `streamkit.Partitioned` over a
`streamkit.kafka.ConsumerGroup`) of one consumer group on librdkafka's mock
cluster (in this process), checkpointing into one shared `PostgresStore` and
writing every record into its ``TableSink``. The others take over the killed
worker's partitions once the group coordinator has noticed its session ran out;
in the end the table holds every record exactly once, and the outputs of the
workers' ``async for`` repeat only what came after the killed worker's last
checkpoints.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
from aiokafka import AIOKafkaProducer
from psycopg import sql

from tests.kafka_worker import PARTITIONS
from tests.servers import fresh_group, fresh_schema

if TYPE_CHECKING:
    from tests.servers import KafkaCluster, PostgresServer

ROOT = Path(__file__).resolve().parent.parent
EVERY = 20
RECORDS = 600
"""Records per partition."""
DEADLINE = 90.0


def start(
    kafka: KafkaCluster, topic: str, group: str, dsn: str, schema: str, output: Path
) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-W", "error", "-m", "tests.kafka_worker"]
    command += [kafka.bootstrap_servers, topic, group, dsn, schema, str(output)]
    command += ["--every", str(EVERY), "--pause", "0.01"]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


async def produce(kafka: KafkaCluster, topic: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers, linger_ms=5)
    await producer.start()
    try:
        sent = [
            await producer.send(topic, str(n).encode(), partition=p)
            for p in range(PARTITIONS)
            for n in range(RECORDS)
        ]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


def lines(path: Path) -> list[tuple[int, int]]:
    if not path.exists():
        return []
    found = []
    for line in path.read_text().splitlines():
        partition, number = line.split("\t")
        found.append((int(partition), int(number)))
    return found


def table_count(dsn: str, schema: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as connection:
        exists = connection.execute(
            "SELECT 1 FROM pg_catalog.pg_tables WHERE schemaname = %s AND tablename = 'records'",
            (schema,),
        ).fetchone()
        if exists is None:
            return 0
        row = connection.execute(
            sql.SQL("SELECT count(*) FROM {}.records").format(sql.Identifier(schema))
        ).fetchone()
        assert row is not None
        return int(row[0])


def wait_until(condition: object, what: str, workers: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():  # type: ignore[operator]
        for worker in workers:
            if worker.poll() not in (None, -signal.SIGKILL):
                assert worker.stderr is not None
                raise AssertionError(f"a worker exited: {worker.stderr.read().decode()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.05)


def test_the_others_take_over_a_killed_worker_exactly_once(
    kafka: KafkaCluster, postgres: PostgresServer, tmp_path: Path
) -> None:
    topic = kafka.create_topic(PARTITIONS, "workers")
    asyncio.run(produce(kafka, topic))
    group = fresh_group("workers")
    schema = fresh_schema("kworkers")
    dsn = postgres.dsn
    outputs = [tmp_path / f"worker{k}.out" for k in range(3)]
    workers = [start(kafka, topic, group, dsn, schema, outputs[k]) for k in range(3)]
    try:
        victim = workers[0]
        # Mid-run: all three share the partitions, and nobody is done.
        wait_until(
            lambda: all(len(lines(path)) >= 30 for path in outputs),
            "all three are under way",
            workers,
        )
        assert table_count(dsn, schema) < PARTITIONS * RECORDS
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        total = PARTITIONS * RECORDS

        def everything_came_out() -> bool:
            return len({item for path in outputs for item in lines(path)}) == total

        wait_until(everything_came_out, "every record came out", workers)
        for worker in workers[1:]:
            worker.send_signal(signal.SIGTERM)  # stop: hand back with last checkpoints
        for worker in workers[1:]:
            assert worker.wait(timeout=DEADLINE) == 0, worker.stderr.read().decode()  # type: ignore[union-attr]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
            if worker.stderr is not None:
                worker.stderr.close()

    # The table: every record of every partition, exactly once.
    with psycopg.connect(dsn, autocommit=True) as connection:
        rows = connection.execute(
            sql.SQL('SELECT "partition", n FROM {}.records').format(sql.Identifier(schema))
        ).fetchall()
    assert sorted((int(p), n) for p, n in rows) == [
        (p, n) for p in range(PARTITIONS) for n in range(RECORDS)
    ]
    # The outputs: each partition in order within each worker, and repeated only
    # after the victim's last checkpoint of that partition (at most two
    # checkpoints' worth: the items since the last save and those while it ran).
    everything = [item for path in outputs for item in lines(path)]
    counts = collections.Counter(everything)
    assert set(counts) == {(p, n) for p in range(PARTITIONS) for n in range(RECORDS)}
    repeated = collections.Counter(p for (p, _), count in counts.items() for _ in range(count - 1))
    survivors = {item for path in outputs[1:] for item in lines(path)}
    print(f"repeated outputs per partition: {dict(repeated)}")
    for partition, count in repeated.items():
        assert count <= 2 * EVERY + 1, (partition, count)
    # Only what the victim had output is repeated, by the workers that took over.
    assert all(item in survivors for item, count in counts.items() if count > 1)
    for path in outputs:
        # Within a worker, each partition in order, never repeated: a worker that
        # owns a partition again resumes it from a checkpoint past what it output.
        seen: dict[int, list[int]] = collections.defaultdict(list)
        for p, n in lines(path):
            seen[p].append(n)
        for numbers in seen.values():
            assert all(a < b for a, b in itertools.pairwise(numbers))
