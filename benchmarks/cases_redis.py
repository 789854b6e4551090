"""Case (r): a Redis Streams worker against the same pipeline on a list, and 1 → 3 processes.

Needs ``redis-server`` (Debian's package): the case starts its own on a free port of
127.0.0.1, in a temporary folder, persistence off, and stops it by its pid, as the
test fixtures do (tests/servers.py). Without it, every row says why it is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.brokers import HEADERS, missing, on_list, row, time_processes
from benchmarks.harness import (
    TIMES,
    CaseResult,
    Row,
    Settings,
    case,
    describe_error,
    partial_result,
)
from benchmarks.redis_worker import EVERY, PARTITIONS, STREAM, work

if TYPE_CHECKING:
    from collections.abc import Iterator

_START_SECONDS = 30.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as connection:
            connection.sendall(b"PING\r\n")
            return connection.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@contextlib.contextmanager
def redis_server(folder: Path) -> Iterator[str]:
    """A throwaway ``redis-server`` on a free port; its URL. Stopped by its pid on exit."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise FileNotFoundError("redis-server was not found on PATH")
    port = _free_port()
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder)]
    command += ["--save", "", "--appendonly", "no", "--daemonize", "no"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + _START_SECONDS
        while not _answers(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.02)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)


def _values(n: int) -> str:
    return ",".join(str((n * k) % 97) for k in range(8))


def fill(url: str, partitions: int, per_partition: int, *, flush: bool) -> None:
    """``per_partition`` records in each partition's stream, then its end entry."""
    import redis

    client = redis.Redis.from_url(url)
    if flush:
        client.flushall()
    with client.pipeline(transaction=False) as pipe:
        for p in range(partitions):
            for n in range(per_partition):
                pipe.xadd(f"{STREAM}:{p}", {"values": _values(n)})
            pipe.xadd(f"{STREAM}:{p}", {"end": "1"})
        pipe.execute()
    client.close()


def _entries(per_partition: int) -> list[Any]:
    from streamkit.redis import Entry

    items = [Entry("0", f"{n + 1}-0", {"values": _values(n)}) for n in range(per_partition)]
    return [*items, Entry("0", f"{per_partition + 1}-0", {"end": "1"})]


async def _one_worker(url: str, per_partition: int, database: str) -> float:
    """One in-process worker on a one-partition stream: seconds until its end entry."""
    from streamkit import Partitioned, SQLiteStore, map_
    from streamkit.redis import StreamGroup

    async with SQLiteStore(database) as store:
        broker = StreamGroup(url, STREAM, partitions=1, consumer="one", lease=1.5, block=0.05)
        worker = Partitioned(map_(work), broker, store=store, name="one", every=EVERY)
        seen = 0
        started = time.perf_counter()
        elapsed = 0.0
        async with worker:
            async for _, value in worker:
                seen += 1
                if value < 0:
                    elapsed = time.perf_counter() - started
                    worker.stop()
    assert seen == per_partition + 1, seen
    return elapsed


def _settled(url: str, consumers: list[str]) -> bool:
    """Whether every worker beats and the partitions are shared out fairly."""
    import redis

    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        if client.zcard(f"{STREAM}:workers") != len(consumers):
            return False
        owners = [client.get(f"{STREAM}:lease:{p}") for p in range(PARTITIONS)]
    finally:
        client.close()
    share = -(-PARTITIONS // len(consumers))
    return all(owner is not None for owner in owners) and all(
        owners.count(consumer) <= share for consumer in consumers
    )


def _processes(
    url: str, workers: int, per_partition: int, folder: Path, filling: list[float]
) -> float:
    """``workers`` worker processes on 6 partitions: seconds from the first entry to the last.

    Appends to ``filling`` how long adding the entries took (within that time).
    """
    import redis

    client = redis.Redis.from_url(url)
    client.flushall()
    client.close()
    database = folder / f"processes{workers}-{time.monotonic_ns()}.db"
    done = folder / f"done{workers}-{time.monotonic_ns()}"
    done.touch()
    consumers = [f"w{k}" for k in range(workers)]
    command = [sys.executable, "-m", "benchmarks.redis_worker", url, str(database), str(done)]
    return time_processes(
        [[*command, name] for name in consumers],
        settled=lambda: _settled(url, consumers),
        send=lambda: fill(url, PARTITIONS, per_partition, flush=False),
        done=done,
        partitions=PARTITIONS,
        sending=filling,
    )


LABELS = {
    "list": "the same pipeline in a checkpointed `Run` over a list",
    "redis_1": "one `Partitioned` worker on a one-partition Redis stream",
    "processes_1": "1 worker process on 6 partitions",
    "processes_3": "3 worker processes on 6 partitions",
}


@case("r", "a Redis Streams worker against a list, and 1 → 3 worker processes")
def redis_workers(settings: Settings) -> CaseResult:
    single = settings.size(20_000, 300)
    per_partition = settings.size(10_000, 40)
    repeat = 1 if settings.quick else 3
    rows: list[Row] = []
    filling: list[float] = []
    with tempfile.TemporaryDirectory(prefix="streamkit-bench-redis-") as name:
        folder = Path(name)
        entries = _entries(single)
        listed = [
            asyncio.run(on_list(entries, work, str(folder / f"list{k}.db"), EVERY))
            for k in range(repeat)
        ]
        reference = statistics.median(listed)
        rows.append(row("list", LABELS["list"], single + 1, listed, reference))
        try:
            with redis_server(folder) as url:
                one = []
                for k in range(repeat):
                    fill(url, 1, single, flush=True)
                    one.append(asyncio.run(_one_worker(url, single, str(folder / f"one{k}.db"))))
                rows.append(row("redis_1", LABELS["redis_1"], single + 1, one, reference))
                total = PARTITIONS * (per_partition + 1)
                base: float | None = None
                for workers in (1, 3):
                    times = [
                        _processes(url, workers, per_partition, folder, filling)
                        for _ in range(1 if settings.quick else 2)
                    ]
                    base = statistics.median(times) if base is None else base
                    key = f"processes_{workers}"
                    rows.append(row(key, LABELS[key], total, times, base))
        except (FileNotFoundError, RuntimeError, TimeoutError, OSError) as exc:
            done = {row.key for row in rows}
            rows += [
                missing(key, label, describe_error(exc))
                for key, label in LABELS.items()
                if key not in done
            ]
    return partial_result(
        "The pipeline `map_(work)` (parse 8 comma-separated numbers from an entry's field and "
        "sum them), checkpointed every 1,000 items into SQLite, run four ways: over a list of "
        f"{single:,} `Entry` records in a `Run`; as one `Partitioned` worker reading a "
        f"one-partition Redis stream of as many entries through a `StreamGroup` (XREADGROUP "
        "100 entries at a time, XACK after each checkpoint); and as 1 and then 3 worker "
        f"processes sharing a 6-partition stream of {per_partition:,} entries per partition "
        "(one SQLite file shared by the processes). Each partition ends with an entry that "
        "marks its end; the time runs from the first entry (for processes: once every worker "
        "has joined and the partitions are shared out, before the entries are added) to the "
        "last end entry coming out of a worker.",
        f"{single:,} entries on one partition; {per_partition:,} {TIMES} 6 across processes",
        HEADERS,
        rows,
        "Ratio: the list's time for the first two rows (> 1 = slower than the list), 1 "
        "process's time for the last two (< 1 = faster). The machine's cores bound the "
        "speed-up of processes; so does the Redis server, one process on the same machine.",
        "Adding the entries (one pipelined batch of XADDs from the benchmark's process, "
        "while the workers read) took "
        + (f"{statistics.median(filling):.3f} s" if filling else "no time (not measured)")
        + " of the processes' times (median).",
    )
