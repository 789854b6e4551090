"""Checkpoints and the stores that keep them.

A `Checkpoint` records where a run is: the position of its resumable source,
the pipeline's state, how many items were committed. A `Store` keeps the
latest checkpoints of each run. Two stores ship:

* `MemoryStore`, in process, for tests and as the worked example of a backend;
* `SQLiteStore`, the embedded default: stdlib ``sqlite3`` in WAL mode, every
  call made on one dedicated worker thread, JSON payloads with a SHA-256
  checksum, a versioned schema with migrations, optional Fernet encryption.

Nothing here is ever pickled: a checkpoint is stored as its JSON form.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime as dt
import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Callable, Mapping
from typing import (
    TYPE_CHECKING,
    Any,
    Final,
    Protocol,
    Self,
    TypeAlias,
    TypeVar,
    cast,
    runtime_checkable,
)

from ._records import State, StateLimits
from ._resumable import file_name
from ._runtime import in_executor, shielded

if TYPE_CHECKING:
    from types import TracebackType

    from cryptography.fernet import Fernet

    from ._resumable import JSONValue

T = TypeVar("T")

_UTC: Final = dt.UTC


class CheckpointError(Exception):
    """A checkpoint could not be read or written.

    Raised for a file that is not a database, a corrupted or altered row (its
    SHA-256 checksum does not match), a payload that is not a valid
    checkpoint, a wrong encryption key, a schema written by a newer
    streamkit, and any database failure. The message names the store and the
    run; so do the attributes.

    Args:
        message: What went wrong.
        path: The store's location (``None`` when the store has no path).
        name: The run concerned, if any.

    Examples:
        >>> error = CheckpointError("checksum mismatch", path="runs.db", name="nightly")
        >>> print(error)
        runs.db: run 'nightly': checksum mismatch
        >>> error.path, error.name
        ('runs.db', 'nightly')
    """

    def __init__(self, message: str, *, path: str | None = None, name: str | None = None) -> None:
        where = "" if path is None else f"{path}: "
        run = "" if name is None else f"run {name!r}: "
        super().__init__(f"{where}{run}{message}")
        self.path = path
        """The store's location, or ``None``."""
        self.name = name
        """The run concerned, or ``None``."""


# --------------------------------------------------------------------------- Checkpoint


def _json_copy(value: object, parameter: str) -> Any:
    """``value`` as it comes back from JSON; `TypeError` naming ``parameter`` otherwise."""
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{parameter} must be JSON-serializable: {exc}") from None
    return json.loads(text)


def _now() -> dt.datetime:
    return dt.datetime.now(_UTC)


@dataclasses.dataclass(frozen=True, slots=True)
class Checkpoint:
    """Where a run is: its source's position and its state, saved together.

    ``position`` and ``state`` are stored as their JSON form, and the record
    holds exactly that form (a tuple becomes a list, a dict key becomes a
    string), so a checkpoint loaded from a store equals the one saved.
    ``state`` is an immutable `State`. Values JSON cannot encode (sets,
    objects, NaN) are rejected with `TypeError`.

    Args:
        name: The run's name.
        position: Where the resumable source is: an index, a byte offset, any
            JSON value its ``seek`` accepts.
        state: The pipeline's state (reduction-point results included), a
            mapping with string keys and JSON values.
        items: How many items were committed.
        version: The pipeline's version string.
        created_at: When the checkpoint was made (timezone-aware; now, in UTC,
            by default).

    Examples:
        >>> import datetime as dt
        >>> when = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
        >>> point = Checkpoint("nightly", position=(7, "a"), state={"total": 3}, created_at=when)
        >>> point.position, dict(point.state), point.items
        ([7, 'a'], {'total': 3}, 0)
        >>> Checkpoint.from_json(point.to_json()) == point
        True
        >>> point.replace(items=7).items
        7
    """

    name: str
    position: JSONValue = None
    state: Mapping[str, JSONValue] = dataclasses.field(default_factory=lambda: State())
    items: int = 0
    version: str = ""
    created_at: dt.datetime = dataclasses.field(default_factory=_now)

    def __post_init__(self) -> None:
        _check_name(self.name)
        if not isinstance(self.state, Mapping):  # pyright: ignore[reportUnnecessaryIsInstance] - untyped callers
            raise TypeError(f"state must be a mapping, got {type(self.state).__name__}")
        for key in self.state:
            if not isinstance(key, str):  # pyright: ignore[reportUnnecessaryIsInstance] - untyped callers
                raise TypeError(f"state keys must be str, got {key!r}")
        if type(self.items) is not int:
            raise TypeError(f"items must be an int, got {type(self.items).__name__}")
        if self.items < 0:
            raise ValueError(f"items must be >= 0, got {self.items}")
        if not isinstance(self.version, str):  # pyright: ignore[reportUnnecessaryIsInstance] - untyped callers
            raise TypeError(f"version must be a str, got {type(self.version).__name__}")
        _check_time(self.created_at)
        position = _json_copy(self.position, "position")
        state = _json_copy(dict(self.state), "state")
        object.__setattr__(self, "position", position)
        object.__setattr__(self, "state", State(state, limits=StateLimits.UNLIMITED))

    def replace(self, **changes: Any) -> Checkpoint:
        """A new checkpoint with the given fields changed (checked like the constructor)."""
        return dataclasses.replace(self, **changes)

    def to_json(self) -> str:
        """The checkpoint as one JSON object (what stores keep)."""
        return json.dumps(
            {
                "name": self.name,
                "position": self.position,
                "state": dict(self.state),
                "items": self.items,
                "version": self.version,
                "created_at": self.created_at.isoformat(),
            },
            allow_nan=False,
            ensure_ascii=False,
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Checkpoint:
        """Read a checkpoint written by `to_json`.

        Raises:
            ValueError: ``text`` is not JSON, or not a checkpoint's JSON form.
        """
        try:
            parsed: object = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"invalid JSON: {exc}") from None
        fields = {"name", "position", "state", "items", "version", "created_at"}
        if not isinstance(parsed, dict):
            raise ValueError(f"a checkpoint is a JSON object, got {type(parsed).__name__}")
        data = cast("dict[str, Any]", parsed)
        found = set(data)
        if found != fields:
            raise ValueError(f"a checkpoint has the fields {sorted(fields)}, got {sorted(found)}")
        try:
            created = dt.datetime.fromisoformat(data["created_at"])
            return cls(
                data["name"],
                data["position"],
                data["state"],
                data["items"],
                data["version"],
                created,
            )
        except (TypeError, ValueError) as exc:
            raise ValueError(f"invalid checkpoint: {exc}") from None


def _check_name(name: object) -> str:
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}: {name!r}")
    if not name:
        raise ValueError("name must not be empty")
    return name


def _check_time(created: object) -> None:
    if not isinstance(created, dt.datetime) or created.utcoffset() is None:
        raise TypeError(f"created_at must be a timezone-aware datetime, got {created!r}")


def _check_count(value: object, parameter: str) -> int:
    if type(value) is not int:
        raise TypeError(f"{parameter} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{parameter} must be >= 1, got {value}")
    return value


# --------------------------------------------------------------------------- Store


@runtime_checkable
class Store(Protocol):
    """What keeps checkpoints: the protocol every backend implements.

    Each ``save`` is one transaction: the position and the state of a
    checkpoint are written together or not at all. A store keeps a bounded
    history per run; ``load`` returns the newest checkpoint. Stores are async
    context managers that ``close`` on exit: subclass `Store` to inherit
    ``__aenter__`` and ``__aexit__``, or write them yourself.

    Operations on a closed store raise `RuntimeError`; a checkpoint that
    cannot be read or written raises `CheckpointError`.

    Examples:
        >>> import asyncio
        >>> async def main() -> tuple[bool, bool]:
        ...     async with MemoryStore() as store:
        ...         return isinstance(store, Store), isinstance("a string", Store)
        >>> asyncio.run(main())
        (True, False)
    """

    __slots__ = ()

    async def load(self, name: str) -> Checkpoint | None:
        """The newest checkpoint of run ``name``, or ``None`` if it has none."""
        ...

    async def save(self, checkpoint: Checkpoint) -> None:
        """Store ``checkpoint`` as the newest of its run, in one transaction."""
        ...

    async def history(self, name: str, *, limit: int = 10) -> tuple[Checkpoint, ...]:
        """The newest ``limit`` checkpoints of run ``name`` (at most), newest first."""
        ...

    async def delete(self, name: str) -> None:
        """Forget every checkpoint of run ``name`` (nothing happens if it has none)."""
        ...

    async def close(self) -> None:
        """Release what the store holds; closing twice is allowed."""
        ...

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()


class MemoryStore(Store):
    """A store that keeps checkpoints in this process (for tests, and as a model).

    It keeps what a real backend keeps: each checkpoint's JSON form (so a
    loaded checkpoint is a new object, never one the caller can still change),
    the newest ``keep`` per run. Nothing survives the process.

    Args:
        keep: How many checkpoints to keep per run (the oldest are dropped).

    Examples:
        >>> import asyncio
        >>> async def main() -> None:
        ...     async with MemoryStore(keep=2) as store:
        ...         for items in (10, 20, 30):
        ...             await store.save(Checkpoint("job", position=items, items=items))
        ...         latest = await store.load("job")
        ...         assert latest is not None
        ...         print(latest.position, [c.items for c in await store.history("job")])
        ...         await store.delete("job")
        ...         print(await store.load("job"))
        >>> asyncio.run(main())
        30 [30, 20]
        None
    """

    __slots__ = ("_closed", "_keep", "_runs")

    def __init__(self, *, keep: int = 10) -> None:
        self._keep = _check_count(keep, "keep")
        self._runs: dict[str, list[str]] = {}
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._runs)} runs"
        return f"MemoryStore(keep={self._keep}, {state})"

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the MemoryStore is closed")

    async def load(self, name: str) -> Checkpoint | None:
        """The newest checkpoint of run ``name``, or ``None``."""
        found = await self.history(name, limit=1)
        return found[0] if found else None

    async def save(self, checkpoint: Checkpoint) -> None:
        """Keep ``checkpoint`` as the newest of its run."""
        self._check_open()
        if not isinstance(checkpoint, Checkpoint):  # pyright: ignore[reportUnnecessaryIsInstance] - untyped callers
            raise TypeError(f"checkpoint must be a Checkpoint, got {type(checkpoint).__name__}")
        kept = self._runs.setdefault(checkpoint.name, [])
        kept.append(checkpoint.to_json())
        del kept[: -self._keep]

    async def history(self, name: str, *, limit: int = 10) -> tuple[Checkpoint, ...]:
        """The newest ``limit`` checkpoints of run ``name``, newest first."""
        self._check_open()
        _check_name(name)
        _check_count(limit, "limit")
        kept = self._runs.get(name, [])
        return tuple(Checkpoint.from_json(text) for text in reversed(kept[-limit:]))

    async def delete(self, name: str) -> None:
        """Forget every checkpoint of run ``name``."""
        self._check_open()
        self._runs.pop(_check_name(name), None)

    async def close(self) -> None:
        """Drop every checkpoint; later operations raise `RuntimeError`."""
        self._closed = True
        self._runs.clear()


# --------------------------------------------------------------------------- SQLite schema

SCHEMA_VERSION: Final = 1
"""The schema version this streamkit writes (``PRAGMA user_version``)."""

APPLICATION_ID: Final = 0x53544B43
"""``PRAGMA application_id`` of a streamkit store ("STKC"): marks the file as ours."""

Migration: TypeAlias = Callable[[sqlite3.Connection], None]
"""Moves a database from version ``k`` to ``k + 1``, inside a transaction."""


def _create_v1(connection: sqlite3.Connection) -> None:
    """Version 0 (an empty file) to 1: one row per checkpoint, the newest ``keep`` per run.

    ``payload`` is the checkpoint's JSON (UTF-8) or its Fernet token;
    ``format`` says which; ``checksum`` is the SHA-256 of ``payload``.
    """
    connection.execute(
        """
        CREATE TABLE checkpoints (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            name TEXT NOT NULL,
            format TEXT NOT NULL,
            payload BLOB NOT NULL,
            checksum TEXT NOT NULL
        )
        """
    )
    connection.execute("CREATE INDEX checkpoints_by_run ON checkpoints (name, id)")


MIGRATIONS: tuple[Migration, ...] = (_create_v1,)
"""``MIGRATIONS[k]`` moves a database from version ``k`` to ``k + 1``."""


def migrate(
    connection: sqlite3.Connection,
    migrations: tuple[Migration, ...] = MIGRATIONS,
    *,
    path: str | None = None,
) -> int:
    """Bring the database to the newest version, one transaction per step.

    ``connection`` must be in autocommit mode (``isolation_level=None``). Each
    step runs in ``BEGIN IMMEDIATE`` and sets ``user_version`` in the same
    transaction, so a failing step leaves the database at the version before
    it, and a step another process has just made is not made twice. Returns
    the version reached.

    Raises:
        CheckpointError: The file belongs to another application, has tables
            but no version, or was written by a newer streamkit.
    """
    version = _read_version(connection, migrations, path)
    while version < len(migrations):
        connection.execute("BEGIN IMMEDIATE")
        try:
            if _version(connection, migrations, path) == version:
                migrations[version](connection)
                connection.execute(f"PRAGMA user_version = {version + 1}")
                connection.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")
        version = _read_version(connection, migrations, path)
    return version


def _read_version(
    connection: sqlite3.Connection, migrations: tuple[Migration, ...], path: str | None
) -> int:
    """`_version` in a read transaction: one snapshot, whatever other processes commit."""
    connection.execute("BEGIN")
    try:
        return _version(connection, migrations, path)
    finally:
        connection.execute("COMMIT")


def _version(
    connection: sqlite3.Connection, migrations: tuple[Migration, ...], path: str | None
) -> int:
    """The database's schema version, checked: ours, and not newer than ``migrations``."""
    application = int(connection.execute("PRAGMA application_id").fetchone()[0])
    version = int(connection.execute("PRAGMA user_version").fetchone()[0])
    if application not in (0, APPLICATION_ID):
        raise CheckpointError(
            f"not a streamkit checkpoint store (application_id {application:#x})", path=path
        )
    if version == 0:
        tables = connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
        ).fetchall()
        if tables:
            names = ", ".join(row[0] for row in tables)
            raise CheckpointError(
                f"not a streamkit checkpoint store: it has tables ({names}) but no schema version",
                path=path,
            )
    if version > len(migrations):
        raise CheckpointError(
            f"schema version {version} was written by a newer streamkit "
            f"(this one reads versions up to {len(migrations)})",
            path=path,
        )
    return version


# --------------------------------------------------------------------------- SQLiteStore


_BUSY_SECONDS: Final = 5.0
"""How long to wait for another connection's lock (``sqlite3.connect(timeout=...)``)."""


def _use_wal(connection: sqlite3.Connection) -> None:
    """Switch the file to WAL mode (it stays in WAL mode once switched).

    The switch needs the file to itself, and SQLite answers "database is
    locked" at once, without its busy timeout, while another connection is
    opening it: so the switch is retried for up to ``_BUSY_SECONDS``.
    """
    deadline = time.monotonic() + _BUSY_SECONDS
    while True:
        try:
            connection.execute("PRAGMA journal_mode = WAL").fetchone()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)  # on the store's worker thread, never on the event loop
        else:
            return


def _fernet(key: object) -> Fernet:
    if not isinstance(key, str | bytes):
        raise TypeError(f"key must be a str or bytes (a Fernet key), got {type(key).__name__}")
    try:
        from cryptography.fernet import Fernet
    except ImportError:
        raise ImportError(
            "encryption needs the cryptography package: pip install 'streamkit[crypto]'"
        ) from None
    try:
        return Fernet(key)
    except (ValueError, TypeError) as exc:
        raise ValueError(
            f"key must be a Fernet key (32 url-safe base64-encoded bytes): {exc}"
        ) from None


class SQLiteStore(Store):
    """The embedded checkpoint store: one SQLite file, WAL mode, durable writes.

    Each save is one transaction that inserts a row (the checkpoint's JSON,
    or its Fernet token with a ``key``, and the SHA-256 of what is stored)
    and drops the run's rows beyond the newest ``keep``. Every database call
    runs on one worker thread that owns the connection, in order, so the
    event loop never blocks on disk. The file is opened, and its schema
    created or migrated, on first use.

    A file that is not a streamkit store, a row whose checksum does not
    match, a payload that is not a checkpoint and a wrong key all raise
    `CheckpointError` naming the file and the run. With ``key``, payloads are
    encrypted and authenticated (Fernet, from the ``crypto`` extra); rows
    that are not encrypted are then refused.

    Args:
        path: The database file (created if missing; ``":memory:"`` for a
            private in-memory database).
        key: A Fernet key (``cryptography.fernet.Fernet.generate_key()``) to
            encrypt checkpoints at rest.
        keep: How many checkpoints to keep per run.

    Examples:
        >>> import asyncio, os, tempfile
        >>> async def main(path: str) -> None:
        ...     async with SQLiteStore(path) as store:
        ...         await store.save(Checkpoint("nightly", position=120, state={"total": 9}))
        ...     async with SQLiteStore(path) as store:  # another process, later
        ...         latest = await store.load("nightly")
        ...         assert latest is not None
        ...         print(latest.position, dict(latest.state))
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     asyncio.run(main(os.path.join(folder, "runs.db")))
        120 {'total': 9}
    """

    __slots__ = ("_cipher", "_closed", "_connection", "_executor", "_keep", "_path")

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        key: str | bytes | None = None,
        keep: int = 10,
    ) -> None:
        if not isinstance(path, str | os.PathLike):  # pyright: ignore[reportUnnecessaryIsInstance] - untyped callers
            raise TypeError(f"path must be a str or a path, got {type(path).__name__}")
        self._path = file_name(os.fspath(path), path)
        self._cipher = None if key is None else _fernet(key)
        self._keep = _check_count(keep, "keep")
        self._connection: sqlite3.Connection | None = None
        # One worker thread owns the connection: sqlite3 objects stay in the
        # thread that made them (check_same_thread stays on), calls are
        # serialized by the executor's queue, and no lock is needed.
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="streamkit-sqlite"
        )
        self._closed = False

    @property
    def path(self) -> str:
        """The database file."""
        return self._path

    def __repr__(self) -> str:
        encrypted = ", encrypted" if self._cipher is not None else ""
        closed = ", closed" if self._closed else ""
        return f"SQLiteStore({self._path!r}, keep={self._keep}{encrypted}{closed})"

    # -- the worker thread ----------------------------------------------------

    async def _call(self, fn: Callable[[sqlite3.Connection], T], name: str | None) -> T:
        if self._closed:
            raise RuntimeError(f"the SQLiteStore {self._path!r} is closed")

        def job() -> T:
            try:
                return fn(self._connect())
            except sqlite3.Error as exc:
                raise CheckpointError(str(exc), path=self._path, name=name) from exc

        # A cancelled call that has started still finishes on the worker (each
        # save is one transaction: it commits entirely or not at all); the
        # next call queues behind it.
        return await in_executor(self._executor, job)

    def _connect(self) -> sqlite3.Connection:
        if self._connection is not None:
            return self._connection
        connection = sqlite3.connect(self._path, timeout=_BUSY_SECONDS, isolation_level=None)
        try:
            # WAL: readers in other processes do not block the writer.
            # synchronous=FULL: in WAL mode NORMAL may lose the last commits on
            # a power cut; a checkpoint reported saved must survive one, and
            # checkpoints are rare enough to pay one fsync per commit.
            _use_wal(connection)
            connection.execute("PRAGMA synchronous = FULL")
            migrate(connection, MIGRATIONS, path=self._path)
        except BaseException:
            connection.close()
            raise
        self._connection = connection
        return connection

    def _encode(self, checkpoint: Checkpoint) -> tuple[str, bytes]:
        payload = checkpoint.to_json().encode()
        if self._cipher is None:
            return "json", payload
        return "fernet", self._cipher.encrypt(payload)

    def _decode(self, name: str, form: str, payload: bytes, checksum: str) -> Checkpoint:
        def fail(message: str) -> CheckpointError:
            return CheckpointError(message, path=self._path, name=name)

        if not isinstance(payload, bytes):  # pyright: ignore[reportUnnecessaryIsInstance] - read from disk
            raise fail(f"corrupted row: the payload is a {type(payload).__name__}, not bytes")
        if hashlib.sha256(payload).hexdigest() != checksum:
            raise fail("corrupted or altered row: its SHA-256 checksum does not match")
        if form == "fernet":
            if self._cipher is None:
                raise fail("the checkpoint is encrypted: open the store with its key")
            from cryptography.fernet import InvalidToken

            try:
                payload = self._cipher.decrypt(payload)
            except InvalidToken:
                raise fail("cannot decrypt the checkpoint: wrong key") from None
        elif form == "json":
            if self._cipher is not None:
                raise fail("the checkpoint is not encrypted, but the store has a key")
        else:
            raise fail(f"unknown payload format {form!r}")
        try:
            checkpoint = Checkpoint.from_json(payload)
        except ValueError as exc:
            raise fail(f"not a valid checkpoint: {exc}") from None
        if checkpoint.name != name:
            raise fail(f"the row holds a checkpoint of run {checkpoint.name!r}")
        return checkpoint

    def _history(self, connection: sqlite3.Connection, name: str, limit: int) -> list[Checkpoint]:
        rows = connection.execute(
            "SELECT format, payload, checksum FROM checkpoints WHERE name = ? "
            "ORDER BY id DESC LIMIT ?",
            (name, limit),
        ).fetchall()
        return [self._decode(name, form, payload, checksum) for form, payload, checksum in rows]

    # -- the protocol --------------------------------------------------------

    async def load(self, name: str) -> Checkpoint | None:
        """The newest checkpoint of run ``name``, or ``None``.

        Raises:
            CheckpointError: The newest row cannot be read.
        """
        found = await self.history(name, limit=1)
        return found[0] if found else None

    async def save(self, checkpoint: Checkpoint) -> None:
        """Store ``checkpoint`` as the newest of its run, in one durable transaction."""
        if not isinstance(checkpoint, Checkpoint):  # pyright: ignore[reportUnnecessaryIsInstance] - untyped callers
            raise TypeError(f"checkpoint must be a Checkpoint, got {type(checkpoint).__name__}")
        form, payload = self._encode(checkpoint)
        checksum = hashlib.sha256(payload).hexdigest()
        name, keep = checkpoint.name, self._keep

        def write(connection: sqlite3.Connection) -> None:
            connection.execute("BEGIN IMMEDIATE")
            try:
                connection.execute(
                    "INSERT INTO checkpoints (name, format, payload, checksum) VALUES (?, ?, ?, ?)",
                    (name, form, payload, checksum),
                )
                connection.execute(
                    "DELETE FROM checkpoints WHERE name = ? AND id NOT IN "
                    "(SELECT id FROM checkpoints WHERE name = ? ORDER BY id DESC LIMIT ?)",
                    (name, name, keep),
                )
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")

        await self._call(write, name)

    async def history(self, name: str, *, limit: int = 10) -> tuple[Checkpoint, ...]:
        """The newest ``limit`` checkpoints of run ``name`` (at most ``keep``), newest first.

        Raises:
            CheckpointError: One of those rows cannot be read.
        """
        _check_name(name)
        _check_count(limit, "limit")
        found = await self._call(lambda connection: self._history(connection, name, limit), name)
        return tuple(found)

    async def delete(self, name: str) -> None:
        """Forget every checkpoint of run ``name``."""
        _check_name(name)

        def remove(connection: sqlite3.Connection) -> None:
            connection.execute("DELETE FROM checkpoints WHERE name = ?", (name,))

        await self._call(remove, name)

    async def close(self) -> None:
        """Close the connection (on its thread) and stop the thread; idempotent."""
        if self._closed:
            return
        self._closed = True

        def close_connection() -> None:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

        done = in_executor(self._executor, close_connection)
        # The queued close still runs if this wait is cancelled; the thread
        # ends once it has.
        self._executor.shutdown(wait=False)
        await shielded(done)
