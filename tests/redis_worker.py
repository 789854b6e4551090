"""A worker process of a Redis Streams consumer group, for the multi-process tests.

``python -m tests.redis_worker URL DSN SCHEMA OUTPUT --consumer NAME --every N
[--pause SECONDS]`` runs one worker (`tests.partition_workers.serve`) of the group
``streamkit`` over the 6-partition stream ``records`` at ``URL``, checkpointing into
the `PostgresStore` at ``DSN`` (schema ``SCHEMA``) and writing its outputs to
``OUTPUT``; the test SIGKILLs one worker mid-run.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from streamkit.redis import Entry, StreamGroup
from tests.partition_workers import PARTITIONS, serve, worker_options

STREAM = "records"
LEASE = 2.0
BLOCK = 0.1


def record(entry: Entry) -> dict[str, Any]:
    return {"partition": entry.partition, "n": int(entry.fields["n"])}


async def main(arguments: argparse.Namespace) -> None:
    group = StreamGroup(
        arguments.url,
        STREAM,
        partitions=PARTITIONS,
        consumer=arguments.consumer,
        lease=LEASE,
        block=BLOCK,
    )
    await serve(group, record, arguments)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    worker_options(parser)
    parser.add_argument("--consumer", required=True)
    asyncio.run(main(parser.parse_args()))
