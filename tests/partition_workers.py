"""Worker processes of a broker's consumer group, and the test that kills one of three.

The worker side (`serve`) is what ``tests.kafka_worker`` and ``tests.redis_worker``
share once each has made its group: one `streamkit.Partitioned` worker that
checkpoints each partition into a `PostgresStore`, writes every record into the
``TableSink`` ``records`` exactly once, and appends each output of its ``async for``
to a file, one unbuffered ``os.write`` per line ``PARTITION<TAB>NUMBER``. SIGTERM
stops it gracefully: every partition handed back with a last checkpoint, exit
status 0.

The test side (`kill_one_of_three`) starts three workers, SIGKILLs one mid-run,
lets the others take over its partitions, and checks the table (every record
exactly once) and the outputs (each partition in order within a worker, repeated
only after the killed worker's last checkpoints).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import os
import signal
import time
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

import streamkit as sk

if TYPE_CHECKING:
    import argparse
    import subprocess
    from collections.abc import Callable
    from pathlib import Path

PARTITIONS = 6


# =========================================================================== the worker


def worker_options(parser: argparse.ArgumentParser) -> None:
    """The options every worker takes after its broker's own arguments."""
    for name in ("dsn", "schema", "output"):
        parser.add_argument(name)
    parser.add_argument("--every", type=int, required=True)
    parser.add_argument("--pause", type=float, default=0.0)


async def serve(
    group: sk.Broker,
    record: Callable[[Any], dict[str, Any]],
    arguments: argparse.Namespace,
) -> None:
    """Run the worker of ``group``: each item becomes ``record(item)``, after ``--pause``."""
    pause: float = arguments.pause

    async def work(item: Any) -> dict[str, Any]:
        if pause:
            await asyncio.sleep(pause)
        return record(item)

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


# =========================================================================== the test


def lines(path: Path) -> list[tuple[int, int]]:
    """A worker's outputs so far: (partition, number) pairs, in the order it wrote them."""
    if not path.exists():
        return []
    found = []
    for line in path.read_text().splitlines():
        partition, number = line.split("\t")
        found.append((int(partition), int(number)))
    return found


def table_count(dsn: str, schema: str) -> int:
    """Rows in the workers' table (0 before any worker created it)."""
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


def wait_until(
    condition: Callable[[], bool],
    what: str,
    workers: list[subprocess.Popen[bytes]],
    deadline: float,
) -> None:
    """Poll ``condition`` until it holds; fail if a worker exits or ``deadline`` seconds pass."""
    until = time.monotonic() + deadline
    while not condition():
        for worker in workers:
            if worker.poll() not in (None, -signal.SIGKILL):
                assert worker.stderr is not None
                raise AssertionError(f"a worker exited: {worker.stderr.read().decode()}")
        if time.monotonic() > until:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.05)


def kill_one_of_three(
    start: Callable[[Path, int], subprocess.Popen[bytes]],
    outputs: list[Path],
    *,
    dsn: str,
    schema: str,
    records: int,
    every: int,
    deadline: float,
) -> None:
    """Start three workers (``start(output, k)``), SIGKILL the first mid-run, check the end.

    ``records`` records per partition are in the broker before the workers start.
    """
    workers = [start(outputs[k], k) for k in range(3)]
    try:
        victim = workers[0]
        # Mid-run: all three share the partitions, and nobody is done.
        wait_until(
            lambda: all(len(lines(path)) >= 30 for path in outputs),
            "all three are under way",
            workers,
            deadline,
        )
        assert table_count(dsn, schema) < PARTITIONS * records
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        total = PARTITIONS * records

        def everything_came_out() -> bool:
            return len({item for path in outputs for item in lines(path)}) == total

        wait_until(everything_came_out, "every record came out", workers, deadline)
        for worker in workers[1:]:
            worker.send_signal(signal.SIGTERM)  # stop: hand back with last checkpoints
        for worker in workers[1:]:
            assert worker.wait(timeout=deadline) == 0, worker.stderr.read().decode()  # type: ignore[union-attr]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
            if worker.stderr is not None:
                worker.stderr.close()
    check_exactly_once(outputs, dsn=dsn, schema=schema, records=records, every=every)


def check_exactly_once(
    outputs: list[Path], *, dsn: str, schema: str, records: int, every: int
) -> None:
    """The table holds every record once; the outputs repeat only what they should."""
    with psycopg.connect(dsn, autocommit=True) as connection:
        rows = connection.execute(
            sql.SQL('SELECT "partition", n FROM {}.records').format(sql.Identifier(schema))
        ).fetchall()
    assert sorted((int(p), n) for p, n in rows) == [
        (p, n) for p in range(PARTITIONS) for n in range(records)
    ]
    # The outputs: each partition in order within each worker, and repeated only
    # after the victim's last checkpoint of that partition (at most two
    # checkpoints' worth: the items since the last save and those while it ran).
    everything = [item for path in outputs for item in lines(path)]
    counts = collections.Counter(everything)
    assert set(counts) == {(p, n) for p in range(PARTITIONS) for n in range(records)}
    repeated = collections.Counter(p for (p, _), count in counts.items() for _ in range(count - 1))
    survivors = {item for path in outputs[1:] for item in lines(path)}
    print(f"repeated outputs per partition: {dict(repeated)}")
    for partition, count in repeated.items():
        assert count <= 2 * every + 1, (partition, count)
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
