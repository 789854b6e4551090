"""A worker process of a Kafka consumer group, for the multi-process tests.

``python -m tests.kafka_worker SERVERS TOPIC GROUP DSN SCHEMA OUTPUT --every N
[--pause SECONDS]`` runs one worker (`tests.partition_workers.serve`) of the
consumer group ``GROUP`` over ``TOPIC`` (6 partitions) of the Kafka cluster at
``SERVERS``, checkpointing into the `PostgresStore` at ``DSN`` (schema ``SCHEMA``)
and writing its outputs to ``OUTPUT``; the test SIGKILLs one worker mid-run.

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
import time
from typing import Any

from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor

from streamkit.kafka import ConsumerGroup, KafkaRecord
from tests.partition_workers import serve, worker_options

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
    group = ConsumerGroup(
        arguments.topic,
        group=arguments.group,
        bootstrap_servers=arguments.servers,
        options={**OPTIONS, "partition_assignment_strategy": (FollowersFirst,)},
    )
    await serve(group, record, arguments)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    for name in ("servers", "topic", "group"):
        parser.add_argument(name)
    worker_options(parser)
    asyncio.run(main(parser.parse_args()))
