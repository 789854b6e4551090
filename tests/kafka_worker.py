"""A worker process of a Kafka consumer group, for the multi-process tests.

``python -m tests.kafka_worker SERVERS TOPIC GROUP DSN SCHEMA OUTPUT --every N
[--pause SECONDS]`` runs one `streamkit.Partitioned` worker of the consumer group
``GROUP`` over ``TOPIC`` (6 partitions) of the Kafka cluster at ``SERVERS``,
checkpointing each partition into the `PostgresStore` at ``DSN`` (schema
``SCHEMA``), writing every record into its ``TableSink`` ``records`` exactly once,
and appending each output of its ``async for`` to ``OUTPUT`` as one line,
``PARTITION<TAB>NUMBER``, written with a single unbuffered ``os.write``. SIGTERM
stops it gracefully (every partition handed back with a last checkpoint; exit
status 0); the test SIGKILLs one worker mid-run.

The cluster is librdkafka's mock cluster, whose group coordinator answers a
follower's SyncGroup with INVALID_REQUEST once the leader's SyncGroup has come
first (it moves the group to "up" on the leader's assignments alone; a real
broker answers the follower with its assignment). aiokafka's leader usually syncs
first, so the workers use `FollowersFirst`: round robin, after the leader has let
the followers' SyncGroup reach the coordinator (it blocks its own process a
moment, which delays only the leader: the followers are other processes).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import time
from typing import Any

from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor

import streamkit as sk
from streamkit.kafka import ConsumerGroup, KafkaRecord

PARTITIONS = 6
LEADER_DELAY = 0.5
"""Seconds the group's leader waits before it sends the assignments (see above)."""
OPTIONS: dict[str, Any] = {
    "session_timeout_ms": 3000,
    "heartbeat_interval_ms": 300,
    "request_timeout_ms": 5000,
}


class FollowersFirst(RoundRobinPartitionAssignor):  # type: ignore[misc]
    """Round robin, once the followers' SyncGroup requests have reached the mock cluster."""

    name = "followers-first"

    @classmethod
    def assign(cls, cluster: Any, member_metadata: Any) -> Any:
        time.sleep(LEADER_DELAY)  # blocks this process only: the followers are others
        return super().assign(cluster, member_metadata)


def record(item: KafkaRecord) -> dict[str, Any]:
    return {"partition": item.partition, "n": int(item.value)}


async def main(arguments: argparse.Namespace) -> None:
    pause: float = arguments.pause

    async def work(item: KafkaRecord) -> dict[str, Any]:
        if pause:
            await asyncio.sleep(pause)
        return record(item)

    group = ConsumerGroup(
        arguments.topic,
        group=arguments.group,
        bootstrap_servers=arguments.servers,
        options={**OPTIONS, "partition_assignment_strategy": (FollowersFirst,)},
    )
    output = os.open(arguments.output, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        async with sk.PostgresStore(arguments.dsn, schema=arguments.schema) as store:
            sink = sk.TableSink(store, "records", columns=["partition", "n"])
            pipeline = sk.map_(work) | sk.write_to(sink)
            worker = sk.Partitioned(
                pipeline, group, store=store, name="records", every=arguments.every
            )
            # SIGTERM: hand every partition back with a last checkpoint, then end.
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, worker.stop)
            async with worker:
                async for item in worker:
                    os.write(output, f"{item['partition']}\t{item['n']}\n".encode())
    finally:
        os.close(output)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    for name in ("servers", "topic", "group", "dsn", "schema", "output"):
        parser.add_argument(name)
    parser.add_argument("--every", type=int, required=True)
    parser.add_argument("--pause", type=float, default=0.0)
    asyncio.run(main(parser.parse_args()))
