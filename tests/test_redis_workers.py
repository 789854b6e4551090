"""Three worker processes on a 6-partition Redis stream; one is SIGKILLed mid-run.

Each worker is ``python -m tests.redis_worker`` (a `streamkit.Partitioned` over a
`streamkit.redis.StreamGroup`), checkpointing into one shared `PostgresStore` and
writing every record into its ``TableSink``. The others take over the killed
worker's partitions once its leases run out; in the end the table holds every
record exactly once, and the outputs of the workers' ``async for`` repeat only
what came after the killed worker's last checkpoints (`tests.partition_workers`).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import redis as sync_redis

from tests.partition_workers import PARTITIONS, kill_one_of_three
from tests.redis_worker import STREAM
from tests.servers import fresh_schema

if TYPE_CHECKING:
    from tests.servers import PostgresServer, RedisServer

ROOT = Path(__file__).resolve().parent.parent
EVERY = 20
RECORDS = 400
"""Records per partition."""
DEADLINE = 60.0


def start(
    redis: RedisServer, dsn: str, schema: str, output: Path, name: str
) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-W", "error", "-m", "tests.redis_worker"]
    command += [redis.url, dsn, schema, str(output), "--consumer", name]
    command += ["--every", str(EVERY), "--pause", "0.008"]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_the_others_take_over_a_killed_worker_exactly_once(
    redis: RedisServer, postgres: PostgresServer, tmp_path: Path
) -> None:
    client = sync_redis.Redis.from_url(redis.url, decode_responses=True)
    for key in client.scan_iter(f"{STREAM}:*"):
        client.delete(key)
    with client.pipeline(transaction=False) as pipe:
        for p in range(PARTITIONS):
            for n in range(RECORDS):
                pipe.xadd(f"{STREAM}:{p}", {"n": str(n)})
        pipe.execute()
    client.close()
    schema = fresh_schema("workers")
    dsn = postgres.dsn
    kill_one_of_three(
        lambda output, k: start(redis, dsn, schema, output, f"worker{k}"),
        [tmp_path / f"worker{k}.out" for k in range(3)],
        dsn=dsn,
        schema=schema,
        records=RECORDS,
        every=EVERY,
        deadline=DEADLINE,
    )
