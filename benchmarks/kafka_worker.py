"""A worker process for case (s): ``python -m benchmarks.kafka_worker SERVERS TOPIC DB DONE READY``.

One `streamkit.Partitioned` worker of the consumer group ``bench`` on the 6-partition
topic ``TOPIC`` of the Kafka cluster at ``SERVERS`` (librdkafka's mock cluster),
checkpointing every 1,000 items of a partition into the SQLite file ``DB`` (shared by
the workers). Each partition ends with a record whose value is ``end``; the worker
appends that partition's number to the file ``DONE``. It writes how many partitions
it owns to the file ``READY`` whenever that changes. SIGTERM stops it (partitions
handed back with last checkpoints).

Its assignor waits a moment before the leader sends the group's assignments: the
mock cluster refuses a follower's SyncGroup that comes after the leader's (see
tests/kafka_worker.py and docs/deploy.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from streamkit.kafka import ConsumerGroup, KafkaRecord

PARTITIONS = 6
GROUP = "bench"
EVERY = 1000
END = b"end"
LEADER_DELAY = 0.5
OPTIONS: dict[str, Any] = {
    "session_timeout_ms": 3000,
    "heartbeat_interval_ms": 300,
    "request_timeout_ms": 5000,
}


def work(record: KafkaRecord) -> tuple[int, int]:
    """The per-item work of case (s): parse a small record, a little arithmetic (as case (r))."""
    if record.value == END:
        return record.partition, -1
    return record.partition, sum(int(part) for part in record.value.split(b","))


def followers_first() -> type:
    """Round robin, once the followers' SyncGroup requests have reached the mock cluster."""
    from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor

    class FollowersFirst(RoundRobinPartitionAssignor):  # type: ignore[misc]
        name = "followers-first"

        @classmethod
        def assign(cls, cluster: Any, member_metadata: Any) -> Any:
            time.sleep(LEADER_DELAY)  # blocks this process only: the followers are others
            return super().assign(cluster, member_metadata)

    return FollowersFirst


async def _report(group: ConsumerGroup, ready: str) -> None:
    last = -1
    while True:
        owned = len(group.assigned())
        if owned != last:
            with open(ready, "w") as file:  # noqa: ASYNC230 - a few bytes, rarely
                file.write(str(owned))
            last = owned
        await asyncio.sleep(0.02)


async def main(servers: str, topic: str, database: str, done: str, ready: str) -> None:
    import streamkit as sk
    from streamkit.kafka import ConsumerGroup

    output = os.open(done, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    group = ConsumerGroup(
        topic,
        group=GROUP,
        bootstrap_servers=servers,
        options={**OPTIONS, "partition_assignment_strategy": (followers_first(),)},
    )
    reporting = asyncio.ensure_future(_report(group, ready))
    try:
        async with sk.SQLiteStore(database) as store:
            worker: sk.Partitioned[Any] = sk.Partitioned(
                sk.map_(work), group, store=store, name="bench", every=EVERY
            )
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, worker.stop)
            async with worker:
                async for partition, value in worker:
                    if value < 0:
                        os.write(output, f"{partition}\n".encode())
    finally:
        reporting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reporting
        os.close(output)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:6]))
