"""One save of a `SQLiteStore`, as a transaction; and the process that can run it.

`SQLiteStore.save` checks and encodes a save and turns it into a plan: plain
values only (strs, bytes, ints, tuples and lists of them), so that `marshal`
carries it through a pipe. `apply_save` runs a plan in one transaction on a
connection: on the store's own thread, or in a writer process (`serve`),
whose database work then never waits for the event loop's thread to give up
the GIL.

This module imports nothing but the standard library: the writer process
runs it as a script (``python -I -S _sqlite_save.py PATH``), without the
package. The plan's preconditions (the newest sequence number, each sink
table's registration as the plan assumed it) are checked inside the
transaction, and a plan whose assumptions no longer hold is rolled back and
answered with what was found, for the store to plan again.
"""

from __future__ import annotations

import marshal
import os
import select
import sqlite3
import struct
import sys
import traceback
from typing import TYPE_CHECKING, Any, Final, TypeAlias

if TYPE_CHECKING:
    from collections.abc import Callable

BUSY_SECONDS: Final = 5.0
"""How long a connection waits for another one's write lock before it fails."""

Registration: TypeAlias = "tuple[str, str, str] | tuple[str, str] | None"
"""A sink table as the database has it: ``("table", columns, types)`` (the
registry's two JSON texts), ``("taken", kind)`` (something else of that name),
or ``None`` (nothing)."""

Plan: TypeAlias = "tuple[Any, ...]"
"""name, sequence, expected, (format, payload, checksum), keep, dead-letter rows,
tables (table, assumed registration, creation or None), inserts (SQL, rows)."""

Reply: TypeAlias = "tuple[Any, ...]"
"""``("ok",)``, ``("stale", found)``, ``("tables", [(table, found), ...])``,
``("error", message)``; from a writer process also ``("ready",)``."""

_HEADER: Final = struct.Struct("<I")


def connect(path: str) -> sqlite3.Connection:
    """A connection to ``path`` for saves: autocommit mode, durable commits.

    ``synchronous = FULL``: in WAL mode ``NORMAL`` may lose the last commits
    on a power cut; a checkpoint reported saved must survive one, and
    checkpoints are rare enough to pay one fsync per commit.
    """
    connection = sqlite3.connect(path, timeout=BUSY_SECONDS, isolation_level=None)
    try:
        connection.execute("PRAGMA synchronous = FULL")
    except BaseException:
        connection.close()
        raise
    return connection


def registration(connection: sqlite3.Connection, table: str) -> Registration:
    """What the database has under the name of sink table ``table``."""
    row = connection.execute(
        "SELECT columns, types FROM sink_tables WHERE name = ?", (table,)
    ).fetchone()
    if row is not None:
        return ("table", row[0], row[1])
    taken = connection.execute(
        "SELECT type FROM sqlite_master WHERE lower(name) = ?", (table,)
    ).fetchone()
    return None if taken is None else ("taken", taken[0])


def apply_save(
    connection: sqlite3.Connection, plan: Plan, abandoned: Callable[[], bool] | None = None
) -> Reply:
    """Run ``plan`` in one ``BEGIN IMMEDIATE`` transaction; what happened, as a `Reply`.

    Nothing is written unless everything is: a precondition that does not
    hold or a database error rolls the transaction back. ``abandoned`` is
    asked just before the commit; if it says the save's requester is gone,
    the transaction is rolled back and ``("abandoned",)`` returned.
    """
    name, sequence, expected, record, keep, letters, tables, inserts = plan
    try:
        connection.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as exc:
        return ("error", str(exc))
    try:
        if expected is not None:
            row = connection.execute(
                "SELECT sequence FROM checkpoints WHERE name = ? ORDER BY id DESC LIMIT 1",
                (name,),
            ).fetchone()
            found = 0 if row is None else int(row[0])
            if found != expected:
                connection.execute("ROLLBACK")
                return ("stale", found)
        changed: list[tuple[str, Registration]] = []
        for table, assumed, _ in tables:
            now = registration(connection, table)
            if now != (None if assumed is None else tuple(assumed)):
                changed.append((table, now))
        if changed:
            connection.execute("ROLLBACK")
            return ("tables", changed)
        connection.execute(
            "INSERT INTO checkpoints (name, sequence, format, payload, checksum) "
            "VALUES (?, ?, ?, ?, ?)",
            (name, sequence, *record),
        )
        connection.execute(
            "DELETE FROM checkpoints WHERE name = ? AND id NOT IN "
            "(SELECT id FROM checkpoints WHERE name = ? ORDER BY id DESC LIMIT ?)",
            (name, name, keep),
        )
        connection.executemany(
            "INSERT INTO dead_letters (name, checkpoint, stage, idx, format, payload, "
            "checksum) VALUES (?, ?, ?, ?, ?, ?, ?)",
            letters,
        )
        for table, _, creation in tables:
            if creation is not None:
                create, columns, types = creation
                connection.execute(create)
                connection.execute(
                    "INSERT INTO sink_tables (name, columns, types) VALUES (?, ?, ?)",
                    (table, columns, types),
                )
        for insert, rows in inserts:
            connection.executemany(insert, rows)
        if abandoned is not None and abandoned():
            connection.execute("ROLLBACK")
            return ("abandoned",)
        connection.execute("COMMIT")
    except sqlite3.Error as exc:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        return ("error", str(exc))
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise
    return ("ok",)


def apply_once(connection: sqlite3.Connection, plan: Plan) -> Reply:
    """`apply_save`, unless the plan's checkpoint is already its run's newest.

    For a plan sent to a writer process that stopped before it answered: it
    may have committed the plan first.
    """
    name, sequence, _, record = plan[:4]
    row = connection.execute(
        "SELECT sequence, checksum FROM checkpoints WHERE name = ? ORDER BY id DESC LIMIT 1",
        (name,),
    ).fetchone()
    if row is not None and (row[0], row[1]) == (sequence, record[2]):
        return ("ok",)
    return apply_save(connection, plan)


def frame(data: bytes) -> bytes:
    """A message's `marshal` bytes ``data`` as the pipe carries them: their length first."""
    return _HEADER.pack(len(data)) + data


class Frames:
    """The messages in a byte stream of `frame` outputs, as the bytes come."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Any]:
        """Take ``data``; the messages it completed, in order."""
        buffer = self._buffer
        buffer += data
        messages: list[Any] = []
        start = 0
        while len(buffer) - start >= _HEADER.size:
            (size,) = _HEADER.unpack_from(buffer, start)
            end = start + _HEADER.size + size
            if len(buffer) < end:
                break
            messages.append(marshal.loads(bytes(buffer[start + _HEADER.size : end])))
            start = end
        del buffer[:start]
        return messages


class _Input:
    """The plans a writer process reads from its requester, and whether the requester is gone."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._frames = Frames()
        self._ready: list[Any] = []
        self._ended = False

    def _read(self) -> None:
        data = os.read(self._fd, 1 << 16)
        if not data:
            self._ended = True
        else:
            self._ready.extend(self._frames.feed(data))

    def next(self) -> Any | None:
        """The next plan (blocking), or None at the end of the input."""
        while not self._ready:
            if self._ended:
                return None
            self._read()
        return self._ready.pop(0)

    def gone(self) -> bool:
        """Whether the input has ended, looking without blocking."""
        while not self._ended and select.select([self._fd], [], [], 0)[0]:
            self._read()
        return self._ended


def serve(path: str, source: int = 0, sink: int = 1) -> None:
    """Apply the plans read from ``source`` to ``path``, each reply written to ``sink``.

    Answers ``("ready",)`` once connected, and ends at the end of its input.
    A plan whose requester is gone by its commit (the input ended: the
    requesting process died) is rolled back, and the process ends.
    """
    plans = _Input(source)
    connection = connect(path)
    try:
        _write(sink, ("ready",))
        while (plan := plans.next()) is not None:
            try:
                reply = apply_save(connection, plan, plans.gone)
            except Exception as exc:  # a defect: report it, and keep serving
                reply = ("error", "".join(traceback.format_exception_only(exc)).strip())
            if reply[0] == "abandoned":
                return
            _write(sink, reply)
    finally:
        connection.close()


def _write(fd: int, message: Reply) -> None:
    data = memoryview(frame(marshal.dumps(message)))
    while data:
        data = data[os.write(fd, data) :]


if __name__ == "__main__":
    try:
        serve(sys.argv[1])
    except BaseException as exc:
        try:
            _write(1, ("crashed", "".join(traceback.format_exception(exc)).strip()))
        finally:
            raise SystemExit(1) from None
