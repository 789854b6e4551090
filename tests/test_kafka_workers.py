"""Three worker processes on a 6-partition Kafka topic; one is SIGKILLed mid-run.

Each worker is ``python -m tests.kafka_worker`` (a `streamkit.Partitioned` over a
`streamkit.kafka.ConsumerGroup`) of one consumer group on librdkafka's mock
cluster (in this process), checkpointing into one shared `PostgresStore` and
writing every record into its ``TableSink``. The others take over the killed
worker's partitions once the group coordinator has noticed its session ran out;
in the end the table holds every record exactly once, and the outputs of the
workers' ``async for`` repeat only what came after the killed worker's last
checkpoints (`tests.partition_workers`).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from aiokafka import AIOKafkaProducer

from tests.partition_workers import PARTITIONS, kill_one_of_three
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


def test_the_others_take_over_a_killed_worker_exactly_once(
    kafka: KafkaCluster, postgres: PostgresServer, tmp_path: Path
) -> None:
    topic = kafka.create_topic(PARTITIONS, "workers")
    asyncio.run(produce(kafka, topic))
    group = fresh_group("workers")
    schema = fresh_schema("kworkers")
    dsn = postgres.dsn
    kill_one_of_three(
        lambda output, _: start(kafka, topic, group, dsn, schema, output),
        [tmp_path / f"worker{k}.out" for k in range(3)],
        dsn=dsn,
        schema=schema,
        records=RECORDS,
        every=EVERY,
        deadline=DEADLINE,
    )
