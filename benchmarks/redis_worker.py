"""A worker process for case (r): ``python -m benchmarks.redis_worker URL DB DONE CONSUMER``.

One `streamkit.Partitioned` worker of the group ``bench`` on the 6-partition Redis
stream ``bench``, checkpointing every 1,000 items of a partition into the SQLite file
``DB`` (shared by the workers). Each partition ends with an entry whose field ``end``
is set; the worker appends that partition's number to the file ``DONE``. SIGTERM stops
it (partitions handed back with last checkpoints).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Any

import streamkit as sk
from streamkit.redis import Entry, StreamGroup

STREAM = "bench"
PARTITIONS = 6
EVERY = 1000
LEASE = 1.5
BLOCK = 0.05


def work(entry: Entry) -> tuple[str, int]:
    """The per-item work of case (r): parse a small record, a little arithmetic."""
    fields = entry.fields
    if "end" in fields:
        return entry.partition, -1
    return entry.partition, sum(int(part) for part in fields["values"].split(","))


def group(url: str, consumer: str) -> StreamGroup:
    return StreamGroup(
        url, STREAM, partitions=PARTITIONS, consumer=consumer, lease=LEASE, block=BLOCK
    )


async def main(url: str, database: str, done: str, consumer: str) -> None:
    output = os.open(done, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        async with sk.SQLiteStore(database) as store:
            worker: sk.Partitioned[Any] = sk.Partitioned(
                sk.map_(work), group(url, consumer), store=store, name="bench", every=EVERY
            )
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, worker.stop)
            async with worker:
                async for partition, value in worker:
                    if value < 0:
                        os.write(output, f"{partition}\n".encode())
    finally:
        os.close(output)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
