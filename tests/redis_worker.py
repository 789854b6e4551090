"""A worker process of a Redis Streams consumer group, for the multi-process tests.

``python -m tests.redis_worker URL DSN SCHEMA OUTPUT --consumer NAME --every N
[--pause SECONDS]`` runs one `streamkit.Partitioned` worker of the group
``streamkit`` over the 6-partition stream ``records`` at ``URL``, checkpointing each
partition into the `PostgresStore` at ``DSN`` (schema ``SCHEMA``), writing every
record into its ``TableSink`` ``records`` exactly once, and appending each output of
its ``async for`` to ``OUTPUT`` as one line, ``PARTITION<TAB>NUMBER``, written with a
single unbuffered ``os.write``. SIGTERM stops it gracefully (every partition handed
back with a last checkpoint; exit status 0); the test SIGKILLs one worker mid-run.
The benchmarks run it too (benchmarks/cases_redis.py).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from typing import Any

import streamkit as sk
from streamkit.redis import Entry, StreamGroup

PARTITIONS = 6
STREAM = "records"
LEASE = 2.0
BLOCK = 0.1


def record(entry: Entry) -> dict[str, Any]:
    return {"partition": entry.partition, "n": int(entry.fields["n"])}


async def main(arguments: argparse.Namespace) -> None:
    pause: float = arguments.pause

    async def work(entry: Entry) -> dict[str, Any]:
        if pause:
            await asyncio.sleep(pause)
        return record(entry)

    group = StreamGroup(
        arguments.url,
        STREAM,
        partitions=PARTITIONS,
        consumer=arguments.consumer,
        lease=LEASE,
        block=BLOCK,
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
    for name in ("url", "dsn", "schema", "output"):
        parser.add_argument(name)
    parser.add_argument("--consumer", required=True)
    parser.add_argument("--every", type=int, required=True)
    parser.add_argument("--pause", type=float, default=0.0)
    asyncio.run(main(parser.parse_args()))
