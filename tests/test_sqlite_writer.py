"""`SQLiteStore`'s writer process: choosing it, opening it, losing it, and its lifetime.

What a store saves and reads is the Store contract's, run on every writer in
tests/test_store_contract.py; crashes of the run around it are in
tests/test_checkpoint_crashes.py. Here: what only a writer process can do.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
import os
import signal
import sqlite3
from typing import TYPE_CHECKING, Any

import pytest

from streamkit import Checkpoint, CheckpointError, Run, SQLiteStore, TableRows, map_
from streamkit._sqlite_save import apply_once, apply_save
from tests.processes import kill, linux_only, no_writer_outlives, the_writer_of, writers_of

if TYPE_CHECKING:
    from pathlib import Path

WHEN = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


def point(sequence: int, name: str = "job") -> Checkpoint:
    return Checkpoint(
        name,
        position=sequence,
        state={"total": sequence},
        items=sequence,
        created_at=WHEN,
        sequence=sequence,
    )


def rows_of(db: Path, name: str = "job") -> list[int]:
    """The sequence numbers of run ``name``'s checkpoints in ``db``, oldest first."""
    with sqlite3.connect(db) as connection:
        found = connection.execute(
            "SELECT sequence FROM checkpoints WHERE name = ? ORDER BY id", (name,)
        ).fetchall()
    connection.close()
    return [int(sequence) for (sequence,) in found]


# --------------------------------------------------------------------------- choosing


@pytest.mark.parametrize("writer", ["process ", "processes", "", None, 1])
def test_an_unknown_writer_is_refused_naming_it(tmp_path: Path, writer: Any) -> None:
    with pytest.raises(ValueError, match=r"writer must be one of 'auto', 'process', 'thread'"):
        SQLiteStore(tmp_path / "runs.db", writer=writer)


def test_a_writer_process_needs_a_file() -> None:
    with pytest.raises(ValueError, match=r"writer='process' needs a database file"):
        SQLiteStore(":memory:", writer="process")


@pytest.mark.parametrize("writer", ["auto", "thread"])
async def test_a_memory_database_saves_on_the_thread(writer: Any) -> None:
    async with SQLiteStore(":memory:", writer=writer) as store:
        await store.open()
        await store.save(point(1), expect=0)
        assert await store.load("job") == point(1)


@linux_only
async def test_a_thread_writer_starts_no_process(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    async with SQLiteStore(db, writer="thread") as store:
        assert await store.open() is store
        await store.save(point(1))
        assert writers_of(db) == []
        assert rows_of(db) == [1]


# --------------------------------------------------------------------------- opening


@linux_only
@pytest.mark.parametrize("writer", ["auto", "process"])
async def test_open_starts_the_writer_and_close_ends_it(tmp_path: Path, writer: Any) -> None:
    db = tmp_path / "runs.db"
    store = SQLiteStore(db, writer=writer)
    assert writers_of(db) == []  # nothing happens before first use
    assert await store.open() is store
    pid = the_writer_of(db)
    await store.save(point(1), expect=0)
    await store.save(point(2), expect=1)
    assert the_writer_of(db) == pid  # one process serves every save
    assert rows_of(db) == [1, 2]
    await store.close()
    assert writers_of(db) == []  # close waits for it


@linux_only
async def test_load_starts_the_writer_without_waiting_for_it(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    async with SQLiteStore(db) as store:
        assert await store.load("job") is None
        the_writer_of(db)
        # Saves made before it is ready are made on the thread, and in order with the
        # ones made after.
        for sequence in range(1, 41):
            await store.save(point(sequence), expect=sequence - 1)
        await store.open()
        for sequence in range(41, 51):
            await store.save(point(sequence), expect=sequence - 1)
        assert (await store.load("job")) == point(50)
    assert rows_of(db)[-1] == 50


async def test_open_refuses_a_file_that_is_not_a_store(tmp_path: Path) -> None:
    db = tmp_path / "notes.txt"
    db.write_text("not a database, " * 100)
    async with SQLiteStore(db, writer="process") as store:
        with pytest.raises(CheckpointError):
            await store.open()


async def test_open_on_a_closed_store_is_refused(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "runs.db")
    await store.close()
    with pytest.raises(RuntimeError, match="closed"):
        await store.open()


# --------------------------------------------------------------------------- what it carries


class Colour(enum.IntEnum):
    RED = 1


async def test_rows_the_pipe_cannot_carry_are_saved_on_the_thread(tmp_path: Path) -> None:
    # An int subclass is an SQL value, but marshal does not carry it.
    async with SQLiteStore(tmp_path / "runs.db", writer="process") as store:
        await store.open()
        rows = TableRows("paints", ("name", "colour"), [("tomato", Colour.RED)])
        await store.save(point(1), writes=[rows], expect=0)
        await store.save(point(2), writes=[TableRows("paints", ("name", "colour"), [("sky", 2)])])
        found = await store.table_rows("paints")
    assert [(row["name"], row["colour"], row["checkpoint"]) for row in found] == [
        ("tomato", 1, 1),
        ("sky", 2, 2),
    ]


async def test_a_table_another_store_created_is_found_and_planned_again(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    async with (
        SQLiteStore(db, writer="process") as first,
        SQLiteStore(db, writer="process") as second,
    ):
        await first.open()
        await second.open()
        # Each store plans its first save believing the table is new.
        await first.save(point(1, "a"), writes=[TableRows("out", ("x",), [(1,)])])
        await second.save(point(1, "b"), writes=[TableRows("out", ("x",), [(2,)])])
        # The second now knows the table's shape, and refuses rows that do not fit it.
        with pytest.raises(CheckpointError, match="out"):
            await second.save(point(2, "b"), writes=[TableRows("out", ("y",), [(3,)])])
        rows = await first.table_rows("out")
    assert [(row["run"], row["x"]) for row in rows] == [("a", 1), ("b", 2)]
    assert rows_of(db, "b") == [1]


# --------------------------------------------------------------------------- losing it


@linux_only
async def test_when_the_writer_is_killed_auto_saves_on_the_thread(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    async with SQLiteStore(db) as store:
        await store.open()
        await store.save(point(1), expect=0)
        kill(the_writer_of(db))
        await store.save(point(2), expect=1)
        await store.save(point(3), expect=2)
        assert writers_of(db) == []  # no new one is started
        assert await store.load("job") == point(3)
    assert rows_of(db) == [1, 2, 3]


@linux_only
async def test_when_the_writer_is_killed_process_saves_fail_and_write_nothing(
    tmp_path: Path,
) -> None:
    db = tmp_path / "runs.db"
    async with SQLiteStore(db, writer="process") as store:
        await store.open()
        await store.save(point(1), expect=0)
        pid = the_writer_of(db)
        kill(pid)
        for sequence in (2, 3):
            with pytest.raises(CheckpointError, match=rf"writer process \(pid {pid}\) stopped"):
                await store.save(point(sequence), expect=1)
        assert await store.load("job") == point(1)  # reads still work
    assert rows_of(db) == [1]


async def save_behind_a_stopped_writer(
    store: SQLiteStore, db: Path, checkpoint: Checkpoint, *, expect: int
) -> tuple[int, asyncio.Future[None]]:
    """Open ``store``, SIGSTOP its writer, and start saving ``checkpoint``: the pid and the save.

    The stopped writer does not read the plan, so the save waits.
    """
    await store.open()
    pid = the_writer_of(db)
    os.kill(pid, signal.SIGSTOP)
    saving = asyncio.ensure_future(store.save(checkpoint, expect=expect))
    await asyncio.sleep(0.05)
    assert not saving.done()
    return pid, saving


@linux_only
async def test_a_save_the_killed_writer_had_not_begun_is_made_once_on_the_thread(
    tmp_path: Path,
) -> None:
    db = tmp_path / "runs.db"
    async with SQLiteStore(db) as store:
        await store.open()
        await store.save(point(1), expect=0)
        pid, saving = await save_behind_a_stopped_writer(store, db, point(2), expect=1)
        kill(pid)
        await saving
        assert await store.load("job") == point(2)
    assert rows_of(db) == [1, 2]


@linux_only
async def test_a_cancelled_save_in_the_writer_still_completes_before_the_next_call(
    tmp_path: Path,
) -> None:
    db = tmp_path / "runs.db"
    async with SQLiteStore(db, writer="process") as store:
        pid, saving = await save_behind_a_stopped_writer(store, db, point(1), expect=0)
        saving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await saving
        os.kill(pid, signal.SIGCONT)
        # The plan was sent: the writer makes it, and what is asked next waits for it.
        assert await store.load("job") == point(1)
        await store.save(point(2), expect=1)
    assert rows_of(db) == [1, 2]


@linux_only
def test_the_writer_ends_when_its_store_s_process_dies(tmp_path: Path) -> None:
    # tests/test_checkpoint_crashes.py SIGKILLs runs mid-save; here, an idle store.
    import subprocess
    import sys

    db = tmp_path / "runs.db"
    script = (
        "import asyncio, sys\n"
        "from streamkit import SQLiteStore\n"
        "async def main():\n"
        f"    store = await SQLiteStore({str(db)!r}, writer='process').open()\n"
        "    print('open', flush=True)\n"
        "    await asyncio.sleep(60)\n"
        "asyncio.run(main())\n"
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == b"open\n"
        the_writer_of(db)
    finally:
        child.kill()
        child.wait()
        assert child.stdout is not None
        child.stdout.close()
    no_writer_outlives(db)


# --------------------------------------------------------------------------- event loops


def test_one_store_serves_one_event_loop_after_another(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    store = SQLiteStore(db, writer="process")

    async def run(n: int, name: str) -> Checkpoint | None:
        results = Run(map_(lambda x: x + 1), range(n), name=name, checkpoint=store, every=10)
        assert [item async for item in results] == list(range(1, n + 1))
        return await store.load(name)

    async def started() -> None:
        await store.load("first")  # starts the writer; this loop ends before it is ready

    asyncio.run(started())
    first = asyncio.run(run(100, "first"))
    second = asyncio.run(run(50, "second"))
    asyncio.run(store.close())
    assert first is not None
    assert second is not None
    assert (first.position, first.complete) == (100, True)
    assert (second.position, second.complete) == (50, True)


async def test_a_save_the_writer_committed_before_it_stopped_is_not_made_again(
    tmp_path: Path,
) -> None:
    # When the writer stops between its commit and its reply, the store makes the save
    # on its thread with `apply_once`: seeing the save already there, it writes nothing.
    db = tmp_path / "runs.db"
    async with SQLiteStore(db, writer="process") as store:
        await store.open()
        await store.save(point(1), expect=0)
    connection = sqlite3.connect(db, isolation_level=None)
    try:
        record = connection.execute(
            "SELECT format, payload, checksum FROM checkpoints WHERE sequence = 1"
        ).fetchone()
        plan = ("job", 1, 0, tuple(record), 10, [], [], [])
        assert apply_save(connection, plan) == ("stale", 1)  # made again, it would fail
        assert apply_once(connection, plan) == ("ok",)
        changed = ("job", 2, 1, (record[0], record[1], "another checksum"), 10, [], [], [])
        assert apply_once(connection, changed) == ("ok",)  # a new save is made
    finally:
        connection.close()
    assert rows_of(db) == [1, 2]


async def test_a_save_larger_than_the_pipe_holds_is_sent_whole(tmp_path: Path) -> None:
    # A pipe takes 64 KiB at a time: the rest is written as the writer reads.
    state = {f"key {n}": "x" * 100 for n in range(20_000)}  # about 2.4 MB of JSON
    async with SQLiteStore(tmp_path / "runs.db", writer="process") as store:
        await store.open()
        big = Checkpoint("job", position=1, state=state, created_at=WHEN, sequence=1)
        await store.save(big, expect=0)
        await store.save(point(2), expect=1)  # and the pipe carries on after it
        assert await store.load("job") == point(2)
        assert (await store.history("job"))[1] == big


async def test_load_waits_for_a_save_under_way(tmp_path: Path) -> None:
    # The writer process of a run that was just killed may still be committing its last
    # save when the restarted run loads: the load waits for it, or the restarted run
    # would resume from the checkpoint before and find its own first save stale.
    db, elsewhere = tmp_path / "runs.db", tmp_path / "other.db"
    for path, points in ((db, [point(1)]), (elsewhere, [point(2)])):
        async with SQLiteStore(path, writer="thread") as store:
            for saved in points:
                await store.save(saved)
    with sqlite3.connect(elsewhere) as source:
        row = source.execute("SELECT name, sequence, format, payload, checksum FROM checkpoints")
        second = row.fetchone()
    source.close()
    writer = sqlite3.connect(db, isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")  # a save under way, in another process say
        writer.execute(
            "INSERT INTO checkpoints (name, sequence, format, payload, checksum) "
            "VALUES (?, ?, ?, ?, ?)",
            second,
        )
        async with SQLiteStore(db) as store:
            loading = asyncio.ensure_future(store.load("job"))
            await asyncio.sleep(0.1)
            assert not loading.done()
            writer.execute("COMMIT")
            assert await loading == point(2)
    finally:
        writer.close()
