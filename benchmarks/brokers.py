"""What cases (r) and (s) share: a broker's worker against a list, and 1 → 3 worker processes.

Each case times the same pipeline three ways: in a checkpointed `Run` over a list
(`on_list`), as one `Partitioned` worker in this process, and as worker processes
of one group on six partitions (`time_processes`); `row` and `missing` make the
table's rows.
"""

from __future__ import annotations

import statistics
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.harness import Row, format_ratio

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

ROOT = Path(__file__).resolve().parent.parent
HEADERS = ("competitor", "items", "median s", "items per s", "ratio")
RUN_SECONDS = 120.0
"""How long worker processes may take to form their group and finish."""


async def on_list(items: list[Any], work: Callable[[Any], Any], database: str, every: int) -> float:
    """``map_(work)`` over ``items`` in a `Run`, checkpointed into SQLite: seconds."""
    from streamkit import Run, SQLiteStore, map_

    async with SQLiteStore(database) as store:
        started = time.perf_counter()
        run = Run(map_(work), items, name="list", checkpoint=store, every=every, metrics=False)
        seen = 0
        async for _ in run:
            seen += 1
        elapsed = time.perf_counter() - started
    assert seen == len(items)
    return elapsed


def time_processes(
    commands: Sequence[list[str]],
    *,
    settled: Callable[[], bool],
    send: Callable[[], None],
    done: Path,
    partitions: int,
    sending: list[float],
) -> float:
    """Seconds from the first record sent to the last partition's end, over worker processes.

    Starts one process per command, waits until ``settled()`` (the group formed and
    the partitions shared out), then calls ``send()`` (appending how long it took
    to ``sending``) and waits until ``done`` names every partition. The workers
    are then terminated, and killed if they do not end.
    """
    processes = [subprocess.Popen(line, cwd=ROOT, stderr=subprocess.PIPE) for line in commands]
    try:
        deadline = time.monotonic() + RUN_SECONDS
        while not settled():
            _check(processes, deadline)
            time.sleep(0.05)
        started = time.perf_counter()
        send()
        sending.append(time.perf_counter() - started)
        while len(done.read_text().split()) < partitions:
            _check(processes, deadline)
            time.sleep(0.005)
        elapsed = time.perf_counter() - started
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=30)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
            if process.stderr is not None:
                process.stderr.close()
    return elapsed


def _check(processes: list[subprocess.Popen[bytes]], deadline: float) -> None:
    for process in processes:
        if process.poll() is not None:
            assert process.stderr is not None
            raise RuntimeError(f"a worker exited: {process.stderr.read().decode()[-600:]}")
    if time.monotonic() > deadline:
        raise TimeoutError("the workers did not finish in time")


def row(key: str, label: str, items: int, seconds: list[float], reference: float) -> Row:
    """A row of ``items`` handled in the median of ``seconds``, its ratio to ``reference``."""
    median = statistics.median(seconds)
    ratio = median / reference
    cells = (f"{items:,}", f"{median:.3f}", f"{items / median:,.0f}", format_ratio(ratio))
    return Row(
        key=key,
        label=label,
        cells=cells,
        values={"seconds": median, "items_per_second": items / median},
        ratio=ratio,
    )


def missing(key: str, label: str, reason: str) -> Row:
    """The row of a competitor that could not run, saying why."""
    return Row(key=key, label=label, cells=("", "", "", ""), note=f"n/a: {reason}")
