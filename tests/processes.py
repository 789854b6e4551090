"""The writer processes of `SQLiteStore`, seen from the tests (Linux: from ``/proc``)."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

linux_only = pytest.mark.skipif(
    sys.platform != "linux", reason="finds processes through /proc (Linux only)"
)


def writers_of(db: Path | str) -> list[int]:
    """The pids of the writer processes serving the database file ``db``."""
    wanted = os.fsencode(str(db))
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            arguments = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:  # a process that has just ended
            continue
        if any(part.endswith(b"_sqlite_save.py") for part in arguments) and wanted in arguments:
            found.append(int(entry.name))
    return found


def the_writer_of(db: Path | str) -> int:
    """The pid of the one writer process serving ``db``.

    Waits for it to show: until the new process has run its program, ``/proc`` shows
    it with the command line of the process that started it.
    """
    deadline = time.monotonic() + 10.0
    while len(found := writers_of(db)) != 1 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert len(found) == 1, f"writer processes of {db}: {found}"
    return found[0]


def no_writer_outlives(db: Path | str, *, seconds: float = 10.0) -> None:
    """Every writer process of ``db`` ends within ``seconds``."""
    deadline = time.monotonic() + seconds
    while (left := writers_of(db)) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not left, f"writer processes {left} of {db} are still running"


def kill(pid: int) -> None:
    """SIGKILL ``pid`` (resumed first if stopped) and wait until it has gone from ``/proc``."""
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10.0
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        # The store reaps its writer; until then the process is a zombie.
        status = Path(f"/proc/{pid}/status")
        try:
            if "zombie" in status.read_text():
                return
        except OSError:
            return
        time.sleep(0.005)
