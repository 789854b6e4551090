"""Checkpoint, MemoryStore, SQLiteStore; the Store contract is in test_store_contract.py."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import sqlite3
import sys
import threading
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamkit import _store
from streamkit._records import State
from streamkit._store import (
    APPLICATION_ID,
    SCHEMA_VERSION,
    Checkpoint,
    CheckpointError,
    MemoryStore,
    SQLiteStore,
    migrate,
)

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

WHEN = dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)


def point(name: str = "job", items: int = 1, **changes: Any) -> Checkpoint:
    fields: dict[str, Any] = {
        "position": items,
        "state": {"total": items * 10},
        "items": items,
        "version": "v1",
        "created_at": WHEN,
    }
    fields.update(changes)
    return Checkpoint(name, **fields)


@contextlib.contextmanager
def raw(path: Path) -> Iterator[sqlite3.Connection]:
    """A plain connection to the store's file, in autocommit mode, always closed."""
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        yield connection
    finally:
        connection.close()


# --------------------------------------------------------------------------- Checkpoint

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@given(position=json_values, state=st.dictionaries(st.text(), json_values, max_size=5))
def test_checkpoint_json_round_trip(position: Any, state: dict[str, Any]) -> None:
    checkpoint = Checkpoint("run", position, state, 3, "v2", WHEN)
    again = Checkpoint.from_json(checkpoint.to_json())
    assert again == checkpoint
    assert again.position == position
    assert dict(again.state) == state
    assert again.created_at == WHEN


def test_checkpoint_holds_the_json_form_and_an_immutable_state() -> None:
    position = [1, (2, 3)]
    checkpoint = Checkpoint("run", position, {"a": (1, 2), "b": {"1": None}})
    position.append(4)  # the checkpoint does not share the caller's objects
    assert checkpoint.position == [1, [2, 3]]
    assert isinstance(checkpoint.state, State)
    assert checkpoint.state == {"a": [1, 2], "b": {"1": None}}
    assert checkpoint.items == 0
    assert checkpoint.version == ""
    assert checkpoint.created_at.tzinfo is not None
    with pytest.raises(dataclasses.FrozenInstanceError):
        checkpoint.items = 3  # type: ignore[misc]


def test_checkpoint_replace_checks_like_the_constructor() -> None:
    checkpoint = point()
    assert checkpoint.replace(items=5, position=9) == point(
        items=5, position=9, state={"total": 10}
    )
    with pytest.raises(ValueError, match="items"):
        checkpoint.replace(items=-1)


@pytest.mark.parametrize(
    ("changes", "error", "parameter"),
    [
        ({"name": ""}, ValueError, "name"),
        ({"name": 3}, TypeError, "name"),
        ({"position": {1, 2}}, TypeError, "position"),
        ({"position": float("nan")}, TypeError, "position"),
        ({"state": [("a", 1)]}, TypeError, "state"),
        ({"state": {1: "a"}}, TypeError, "state keys"),
        ({"state": {"a": object()}}, TypeError, "state"),
        ({"items": -1}, ValueError, "items"),
        ({"items": True}, TypeError, "items"),
        ({"items": 2.0}, TypeError, "items"),
        ({"version": 2}, TypeError, "version"),
        ({"created_at": dt.datetime(2026, 1, 1)}, TypeError, "created_at"),
        ({"created_at": "2026-01-01"}, TypeError, "created_at"),
    ],
)
def test_checkpoint_rejects_bad_fields(
    changes: dict[str, Any], error: type[Exception], parameter: str
) -> None:
    fields: dict[str, Any] = {"name": "run", "position": 0, "state": {}, "items": 0}
    fields.update(changes)
    with pytest.raises(error, match=parameter):
        Checkpoint(**fields)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "invalid JSON"),
        (b"\xff\xfe", "invalid JSON"),
        ("[1, 2]", "JSON object"),
        ('{"name": "run"}', "fields"),
        (
            '{"name": "run", "position": 0, "state": {}, "items": "3", "version": "",'
            ' "created_at": "2026-01-01T00:00:00+00:00"}',
            "items",
        ),
        (
            '{"name": "run", "position": 0, "state": {}, "items": 3, "version": "",'
            ' "created_at": "yesterday"}',
            "invalid checkpoint",
        ),
    ],
)
def test_checkpoint_from_json_rejects_what_is_not_a_checkpoint(
    text: str | bytes, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        Checkpoint.from_json(text)


def test_checkpoint_error_names_the_store_and_the_run() -> None:
    error = CheckpointError("broken", path="/tmp/x.db", name="nightly")
    assert str(error) == "/tmp/x.db: run 'nightly': broken"
    assert (error.path, error.name) == ("/tmp/x.db", "nightly")
    assert str(CheckpointError("broken")) == "broken"


# --------------------------------------------------------------------------- MemoryStore


def test_memory_store_checks_keep() -> None:
    with pytest.raises(ValueError, match="keep"):
        MemoryStore(keep=0)
    assert repr(MemoryStore(keep=2)) == "MemoryStore(keep=2, 0 runs)"


# --------------------------------------------------------------------------- SQLiteStore


async def test_sqlite_checkpoints_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    async with SQLiteStore(path) as store:
        await store.save(point(items=4))
    async with SQLiteStore(str(path)) as store:
        assert await store.load("job") == point(items=4)
        assert store.path == str(path)


async def test_sqlite_file_layout(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    async with SQLiteStore(path) as store:
        await store.save(point(items=4))
        with raw(path) as connection:
            assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
            assert connection.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
            form, payload, checksum = connection.execute(
                "SELECT format, payload, checksum FROM checkpoints"
            ).fetchone()
        # Stored as JSON, never pickled, with the SHA-256 of what is stored.
        assert form == "json"
        assert json.loads(payload)["state"] == {"total": 40}
        assert checksum == hashlib.sha256(payload).hexdigest()


async def test_sqlite_works_on_one_thread_that_is_not_the_loops(tmp_path: Path) -> None:
    async with SQLiteStore(tmp_path / "runs.db") as store:
        await store.save(point())
        threads = {await store._call(lambda _: threading.get_ident(), None) for _ in range(5)}  # pyright: ignore[reportPrivateUsage]
        synchronous = await store._call(  # pyright: ignore[reportPrivateUsage]
            lambda connection: connection.execute("PRAGMA synchronous").fetchone()[0], None
        )
    assert len(threads) == 1
    assert threading.get_ident() not in threads
    assert synchronous == 2  # FULL


async def test_sqlite_in_memory(tmp_path: Path) -> None:
    async with SQLiteStore(":memory:") as store:
        await store.save(point())
        assert await store.load("job") == point()


def test_sqlite_arguments_are_checked(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="path"):
        SQLiteStore(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="path"):
        SQLiteStore("")
    with pytest.raises(TypeError, match="path"):
        SQLiteStore(b"runs.db")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="keep"):
        SQLiteStore(tmp_path / "x.db", keep=0)
    with pytest.raises(TypeError, match="keep"):
        SQLiteStore(tmp_path / "x.db", keep="3")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="key"):
        SQLiteStore(tmp_path / "x.db", key=123)  # type: ignore[arg-type]
    assert not (tmp_path / "x.db").exists()  # nothing is opened before first use
    assert repr(SQLiteStore("r.db", keep=2)) == "SQLiteStore('r.db', keep=2)"


# -- corruption


async def expect_error(path: Path, message: str, *, key: bytes | None = None) -> CheckpointError:
    async with SQLiteStore(path, key=key) as store:
        with pytest.raises(CheckpointError, match=message) as raised:
            await store.load("job")
    assert raised.value.path == str(path)
    assert str(path) in str(raised.value)
    return raised.value


async def test_a_garbage_file_gives_a_checkpoint_error(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    path.write_bytes(b"this is not a database\n" * 500)
    error = await expect_error(path, "not a database")
    assert error.name == "job"
    assert isinstance(error.__cause__, sqlite3.DatabaseError)


async def test_a_truncated_file_gives_a_checkpoint_error(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    async with SQLiteStore(path) as store:
        for items in range(200):
            await store.save(point(f"run {items}", state={"pad": "x" * 500}))
    data = path.read_bytes()
    assert len(data) > 20_000
    path.write_bytes(data[: len(data) // 3])

    async def load_all(store: SQLiteStore) -> None:
        for items in range(200):
            await store.load(f"run {items}")

    async with SQLiteStore(path) as store:
        with pytest.raises(CheckpointError, match=str(path)):
            await load_all(store)


def tamper(path: Path, sql: str, *parameters: object) -> None:
    with raw(path) as connection:
        connection.execute(sql, parameters)


async def saved(path: Path, *, key: bytes | None = None) -> Path:
    async with SQLiteStore(path, key=key) as store:
        await store.save(point())
    return path


async def test_an_altered_row_fails_its_checksum(tmp_path: Path) -> None:
    path = await saved(tmp_path / "runs.db")
    tamper(path, "UPDATE checkpoints SET payload = CAST(replace(payload, '10', '11') AS BLOB)")
    with raw(path) as connection:
        assert b'"total":11' in connection.execute("SELECT payload FROM checkpoints").fetchone()[0]
    error = await expect_error(path, "checksum does not match")
    assert error.name == "job"
    assert "run 'job'" in str(error)


async def test_a_row_with_invalid_json(tmp_path: Path) -> None:
    path = await saved(tmp_path / "runs.db")
    payload = b'{"name": "job", "pos'
    tamper(
        path,
        "UPDATE checkpoints SET payload = ?, checksum = ?",
        payload,
        hashlib.sha256(payload).hexdigest(),
    )
    await expect_error(path, "not a valid checkpoint: invalid JSON")


async def test_a_row_that_is_not_a_checkpoint(tmp_path: Path) -> None:
    path = await saved(tmp_path / "runs.db")
    payload = b'{"name": "job"}'
    tamper(
        path,
        "UPDATE checkpoints SET payload = ?, checksum = ?",
        payload,
        hashlib.sha256(payload).hexdigest(),
    )
    await expect_error(path, "not a valid checkpoint: a checkpoint has the fields")


async def test_a_row_of_another_run(tmp_path: Path) -> None:
    path = await saved(tmp_path / "runs.db")
    tamper(path, "UPDATE checkpoints SET name = 'other'")
    async with SQLiteStore(path) as store:
        with pytest.raises(CheckpointError, match="holds a checkpoint of run 'job'"):
            await store.load("other")


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("UPDATE checkpoints SET format = 'xml'", "unknown payload format"),
        ("UPDATE checkpoints SET payload = 'text'", "not bytes"),
        ("UPDATE checkpoints SET format = 'fernet'", "encrypted: open the store with its key"),
    ],
)
async def test_other_damaged_rows(tmp_path: Path, sql: str, message: str) -> None:
    path = await saved(tmp_path / "runs.db")
    tamper(path, sql)
    await expect_error(path, message)


# -- schema versions and migrations


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = await saved(tmp_path / "runs.db")
    tamper(path, f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    await expect_error(path, "written by a newer streamkit")


async def test_another_applications_database_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with raw(path) as connection:
        connection.execute("CREATE TABLE notes (body TEXT)")
    await expect_error(path, r"not a streamkit checkpoint store: it has tables \(notes\)")
    with raw(path) as connection:
        tables = connection.execute("SELECT name FROM sqlite_master").fetchall()
        assert tables == [("notes",)]
        assert connection.execute("PRAGMA user_version").fetchone()[0] == 0

    tagged = tmp_path / "tagged.db"
    with raw(tagged) as connection:
        connection.execute("PRAGMA application_id = 42")
    await expect_error(tagged, "application_id 0x2a")


def _v3_add_tags(connection: sqlite3.Connection) -> None:
    """An example migration: version 2 to 3 adds a column, keeping every row."""
    connection.execute("ALTER TABLE checkpoints ADD COLUMN tags TEXT NOT NULL DEFAULT '[]'")


def _v3_fails(connection: sqlite3.Connection) -> None:
    connection.execute("ALTER TABLE checkpoints ADD COLUMN tags TEXT")
    raise RuntimeError("migration failed half-way")


def columns_of(connection: sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in connection.execute(f"PRAGMA table_info({table})")]


def downgrade_to_version_1(path: Path) -> None:
    """Turn a version-2 file back into the layout version 1 wrote."""
    with raw(path) as connection:
        connection.execute("DROP INDEX IF EXISTS dead_letters_by_run")
        connection.execute("DROP TABLE dead_letters")
        connection.execute("DROP TABLE sink_tables")
        connection.execute("ALTER TABLE checkpoints DROP COLUMN sequence")
        connection.execute("PRAGMA user_version = 1")


def test_migrate_an_empty_file_to_the_current_version(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    with raw(path) as connection:
        assert connection.execute("PRAGMA user_version").fetchone()[0] == 0
        assert migrate(connection) == 2
        assert migrate(connection) == 2  # already there: nothing to do
        assert columns_of(connection, "checkpoints") == [
            "id",
            "name",
            "format",
            "payload",
            "checksum",
            "sequence",
        ]
        assert columns_of(connection, "dead_letters") == [
            "id",
            "name",
            "checkpoint",
            "stage",
            "idx",
            "format",
            "payload",
            "checksum",
        ]
        assert columns_of(connection, "sink_tables") == ["name", "columns", "types"]


async def test_a_version_1_store_is_migrated_and_keeps_its_checkpoints(tmp_path: Path) -> None:
    path = await saved(tmp_path / "runs.db")
    downgrade_to_version_1(path)
    async with SQLiteStore(path) as store:
        assert await store.load("job") == point()
        await store.save(point(items=2))
        assert await store.dead_letters("job") == ()
    with raw(path) as connection:
        assert connection.execute("PRAGMA user_version").fetchone()[0] == 2
        # the version-1 row gets sequence 0; the new one keeps its own
        rows = connection.execute("SELECT sequence FROM checkpoints ORDER BY id").fetchall()
        assert rows == [(0,), (point(items=2).sequence,)]


async def test_a_later_migration_runs_on_open_and_keeps_every_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = await saved(tmp_path / "runs.db")
    monkeypatch.setattr(_store, "MIGRATIONS", (*_store.MIGRATIONS, _v3_add_tags))
    async with SQLiteStore(path) as store:
        assert await store.load("job") == point()
        await store.save(point(items=2))
    with raw(path) as connection:
        assert connection.execute("PRAGMA user_version").fetchone()[0] == 3
        assert connection.execute("SELECT tags FROM checkpoints").fetchall() == [("[]",), ("[]",)]


def test_a_failing_migration_leaves_the_previous_version(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    with raw(path) as connection:
        migrate(connection)
        with pytest.raises(RuntimeError, match="half-way"):
            migrate(connection, (*_store.MIGRATIONS, _v3_fails))
        assert connection.execute("PRAGMA user_version").fetchone()[0] == 2
        assert "tags" not in columns_of(connection, "checkpoints")


# -- encryption


@pytest.fixture
def fernet_key() -> bytes:
    fernet = pytest.importorskip("cryptography.fernet")
    key: bytes = fernet.Fernet.generate_key()
    return key


async def test_encrypted_checkpoints(tmp_path: Path, fernet_key: bytes) -> None:
    path = tmp_path / "runs.db"
    async with SQLiteStore(path, key=fernet_key) as store:
        assert "encrypted" in repr(store)
        await store.save(point(state={"secret": "hunter2"}))
        assert await store.load("job") == point(state={"secret": "hunter2"})
    with raw(path) as connection:
        form, payload = connection.execute("SELECT format, payload FROM checkpoints").fetchone()
    assert form == "fernet"
    assert b"hunter2" not in payload
    assert b"hunter2" not in path.read_bytes()
    async with SQLiteStore(path, key=fernet_key.decode()) as store:  # a str key works too
        assert await store.load("job") is not None


async def test_a_wrong_key_gives_a_checkpoint_error(tmp_path: Path, fernet_key: bytes) -> None:
    fernet = pytest.importorskip("cryptography.fernet")
    path = await saved(tmp_path / "runs.db", key=fernet_key)
    await expect_error(path, "wrong key", key=fernet.Fernet.generate_key())
    await expect_error(path, "encrypted: open the store with its key")


async def test_a_key_refuses_rows_that_are_not_encrypted(tmp_path: Path, fernet_key: bytes) -> None:
    path = await saved(tmp_path / "runs.db")
    await expect_error(path, "not encrypted, but the store has a key", key=fernet_key)


def test_a_malformed_key_is_refused(tmp_path: Path, fernet_key: bytes) -> None:
    with pytest.raises(ValueError, match="key must be a Fernet key"):
        SQLiteStore(tmp_path / "runs.db", key=b"too short")


def test_a_key_without_cryptography_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "cryptography.fernet", None)  # the import then fails
    with pytest.raises(ImportError, match=r"streamkit\[crypto\]"):
        SQLiteStore(tmp_path / "runs.db", key=b"0" * 44)
