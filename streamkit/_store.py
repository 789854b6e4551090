"""Checkpoints and the stores that keep them.

A `Checkpoint` records where a run is: the position of its resumable source,
the pipeline's state, how many items were committed. A `Store` keeps the
latest checkpoints of each run. Two stores ship:

* `MemoryStore`, in process, for tests and as the worked example of a backend;
* `SQLiteStore`, the embedded default: stdlib ``sqlite3`` in WAL mode, reads
  made on one dedicated worker thread and saves in a writer process of their
  own (`_sqlite_save`, `_writer_process`), JSON payloads with a SHA-256
  checksum, a versioned schema with migrations, optional Fernet encryption.

Nothing here is ever pickled: a checkpoint is stored as its JSON form.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime as dt
import hashlib
import json
import marshal
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import (
    TYPE_CHECKING,
    Any,
    Final,
    Literal,
    Protocol,
    Self,
    TypeAlias,
    TypeVar,
    cast,
    runtime_checkable,
)

from ._records import State, StateLimits
from ._resumable import file_name
from ._runtime import in_executor, settled, shielded
from ._sqlite_save import (
    BUSY_SECONDS,
    Plan,
    Registration,
    Reply,
    apply_once,
    apply_save,
    connect,
    registration,
)
from ._writer_process import WriterProcess
from ._writes import (
    DeadLetterRecord,
    DeadLetterRow,
    TableMismatch,
    TableRows,
    TableShape,
    Write,
    check_expect,
    check_int64,
    check_table,
    check_text,
    check_utf8,
    check_writes,
    json_copy,
    letter_from_json,
    letter_json,
    shape_for,
    stored,
)

if TYPE_CHECKING:
    import asyncio
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


class StaleCheckpointError(CheckpointError):
    """A save with ``expect=`` found another newest checkpoint: someone else saved the run.

    `Store.save` with ``expect=n`` writes only if the newest checkpoint of
    the run has sequence number ``n`` (0 when the run has none), and raises
    this otherwise, having written nothing: a second worker saving under the
    same name is fenced off.

    Args:
        message: What went wrong.
        expected: The sequence number the save expected.
        found: The sequence number of the newest checkpoint in the store.
        path: The store's location.
        name: The run concerned.

    Examples:
        >>> error = StaleCheckpointError("stale", expected=3, found=4, name="nightly")
        >>> print(error)
        run 'nightly': stale
        >>> isinstance(error, CheckpointError), error.expected, error.found
        (True, 3, 4)
    """

    def __init__(
        self,
        message: str,
        *,
        expected: int,
        found: int,
        path: str | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(message, path=path, name=name)
        self.expected = expected
        """The sequence number the save expected."""
        self.found = found
        """The sequence number of the newest checkpoint found."""


def _stale(expected: int, found: int, *, path: str | None, name: str) -> StaleCheckpointError:
    return StaleCheckpointError(
        f"stale checkpoint: the save expected the newest checkpoint to be number {expected}, "
        f"the store holds number {found} (another worker saved this run)",
        expected=expected,
        found=found,
        path=path,
        name=name,
    )


# --------------------------------------------------------------------------- Checkpoint


_NO_STATE: Final = State(limits=StateLimits.UNLIMITED)
"""The empty state of a checkpoint (states are immutable: one serves them all)."""


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
        sequence: The checkpoint's number in its run's lineage (1, 2, ...);
            0 for a checkpoint that is not numbered.
        shape: The pipeline's shape, one string per step, so that a resumed
            run can refuse a pipeline that changed.
        complete: Whether the run finished: resuming it yields nothing.
        pending: Work that two-phase sinks prepared and have not committed
            yet, by sink name (JSON values; held as an immutable mapping).

    The four last fields are written by `to_json` only when they differ from
    their defaults, so a checkpoint that leaves them alone has the JSON form
    earlier releases wrote, and `from_json` reads both forms.

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
        >>> later = point.replace(sequence=2, shape=("map_(parse)",), pending={"out": [1]})
        >>> later.shape, dict(later.pending), Checkpoint.from_json(later.to_json()) == later
        (('map_(parse)',), {'out': [1]}, True)
    """

    name: str
    position: JSONValue = None
    state: Mapping[str, JSONValue] = dataclasses.field(default_factory=lambda: State())
    items: int = 0
    version: str = ""
    created_at: dt.datetime = dataclasses.field(default_factory=_now)
    sequence: int = 0
    shape: tuple[str, ...] = ()
    complete: bool = False
    pending: Mapping[str, JSONValue] = dataclasses.field(default_factory=lambda: State())

    def __post_init__(self) -> None:
        _check_name(self.name)
        state = _check_mapping(self.state, "state")
        if type(self.items) is not int:
            raise TypeError(f"items must be an int, got {type(self.items).__name__}")
        if self.items < 0:
            raise ValueError(f"items must be >= 0, got {self.items}")
        if not isinstance(self.version, str):  # pyright: ignore[reportUnnecessaryIsInstance] - untyped callers
            raise TypeError(f"version must be a str, got {type(self.version).__name__}")
        check_utf8(self.version, "version")
        _check_time(self.created_at)
        position = json_copy(self.position, "position")
        object.__setattr__(self, "position", position)
        object.__setattr__(self, "state", State(state, limits=StateLimits.UNLIMITED))
        check_int64(self.sequence, "sequence")
        object.__setattr__(self, "shape", _check_shape(self.shape))
        if type(self.complete) is not bool:
            raise TypeError(f"complete must be a bool, got {type(self.complete).__name__}")
        pending = _check_mapping(self.pending, "pending")
        object.__setattr__(self, "pending", State(pending, limits=StateLimits.UNLIMITED))

    def replace(self, **changes: Any) -> Checkpoint:
        """A new checkpoint with the given fields changed (checked like the constructor)."""
        return dataclasses.replace(self, **changes)

    def _following(
        self, *, position: object, state: Mapping[str, Any], items: int, sequence: int
    ) -> Checkpoint:
        """The next checkpoint of the same run, made now (the hot path of a checkpointed run).

        It keeps this one's name, version and shape, which its constructor
        checked, and checks the new position and state as the constructor
        does; ``items`` and ``sequence`` come from the run's own counters.
        It is neither complete nor pending anything.
        """
        made = object.__new__(Checkpoint)
        setattr_ = object.__setattr__
        setattr_(made, "name", self.name)
        setattr_(made, "position", json_copy(position, "position"))
        if not state:  # (a run of stateless steps)
            checked = _NO_STATE
        else:
            checked = State(_check_mapping(state, "state"), limits=StateLimits.UNLIMITED)
        setattr_(made, "state", checked)
        setattr_(made, "items", items)
        setattr_(made, "version", self.version)
        setattr_(made, "created_at", _now())
        setattr_(made, "sequence", check_int64(sequence, "sequence"))
        setattr_(made, "shape", self.shape)
        setattr_(made, "complete", False)
        pending = self.pending if not self.pending else _NO_STATE
        setattr_(made, "pending", pending)
        return made

    def to_json(self) -> str:
        """The checkpoint as one JSON object (what stores keep).

        ``sequence``, ``shape``, ``complete`` and ``pending`` are written only
        when they differ from their defaults.
        """
        data: dict[str, Any] = {
            "name": self.name,
            "position": self.position,
            "state": dict(self.state) if self.state else {},
            "items": self.items,
            "version": self.version,
            "created_at": self.created_at.isoformat(),
        }
        if self.sequence:
            data["sequence"] = self.sequence
        if self.shape:
            data["shape"] = list(self.shape)
        if self.complete:
            data["complete"] = True
        if self.pending:
            data["pending"] = dict(self.pending)
        return _encode_checkpoint(data)

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
        if not isinstance(parsed, dict):
            raise ValueError(f"a checkpoint is a JSON object, got {type(parsed).__name__}")
        data = cast("dict[str, Any]", parsed)
        found = set(data)
        if not _FIELDS <= found <= _FIELDS | _OPTIONAL_FIELDS:
            raise ValueError(
                f"a checkpoint has the fields {sorted(_FIELDS)} and may have "
                f"{sorted(_OPTIONAL_FIELDS)}, got {sorted(found)}"
            )
        try:
            created = dt.datetime.fromisoformat(data["created_at"])
            shape: object = data.get("shape", [])
            if not isinstance(shape, list):
                raise TypeError(f"shape must be a list, got {type(shape).__name__}")
            steps = cast("list[str]", shape)  # each checked by the constructor
            return cls(
                data["name"],
                data["position"],
                data["state"],
                data["items"],
                data["version"],
                created,
                sequence=data.get("sequence", 0),
                shape=tuple(steps),
                complete=data.get("complete", False),
                pending=data.get("pending", {}),
            )
        except (TypeError, ValueError) as exc:
            raise ValueError(f"invalid checkpoint: {exc}") from None


_encode_checkpoint: Final = json.JSONEncoder(
    allow_nan=False, ensure_ascii=False, separators=(",", ":")
).encode
"""`json.dumps` with the options of `Checkpoint.to_json`, its encoder made once."""

_FIELDS: Final = frozenset({"name", "position", "state", "items", "version", "created_at"})
_OPTIONAL_FIELDS: Final = frozenset({"sequence", "shape", "complete", "pending"})


def _check_mapping(value: object, parameter: str) -> dict[str, Any]:
    """The JSON form of ``value``, a mapping with str keys; `TypeError` otherwise."""
    if not isinstance(value, Mapping):
        raise TypeError(f"{parameter} must be a mapping, got {type(value).__name__}")
    mapping = cast("Mapping[object, object]", value)
    for key in mapping:
        if not isinstance(key, str):
            raise TypeError(f"{parameter} keys must be str, got {key!r}")
    copied: dict[str, Any] = json_copy(dict(mapping), parameter)
    return copied


def _check_shape(shape: object) -> tuple[str, ...]:
    if isinstance(shape, str) or not isinstance(shape, Sequence):
        raise TypeError(f"shape must be a sequence of str, got {type(shape).__name__}")
    steps = tuple(cast("Sequence[object]", shape))
    for step in steps:
        if not isinstance(step, str):
            raise TypeError(f"shape must hold str, got {step!r}")
        check_utf8(step, "shape")
    return cast("tuple[str, ...]", steps)


def _check_name(name: object, parameter: str = "name") -> str:
    if not isinstance(name, str):
        raise TypeError(f"{parameter} must be a str, got {type(name).__name__}: {name!r}")
    if not name:
        raise ValueError(f"{parameter} must not be empty")
    return check_text(name, parameter)


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

    Each ``save`` is one transaction: the checkpoint (its position, its state
    and the rest), the dead letters and the sink rows given as ``writes`` are
    written together or not at all, and with ``expect=`` only if the run's
    newest checkpoint is the one expected. A store keeps a bounded history
    per run; ``load`` returns the newest checkpoint. Stores are async context
    managers that ``close`` on exit: subclass `Store` to inherit
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

    async def save(
        self,
        checkpoint: Checkpoint,
        /,
        *,
        writes: Sequence[Write] = (),
        expect: int | None = None,
    ) -> None:
        """Store ``checkpoint`` as the newest of its run, with ``writes``, in one transaction.

        Each `DeadLetterRow` is appended to the run's dead letters, tagged with
        ``checkpoint.sequence``; each `TableRows` appends its rows to its sink
        table, created if missing. With ``expect``, the save first checks that
        the newest checkpoint of the run has sequence number ``expect`` (0 when
        the run has none).

        Raises:
            StaleCheckpointError: ``expect`` is not the newest sequence number;
                nothing was written.
            CheckpointError: A sink table exists with other columns, or the
                store cannot write; nothing was written.
        """
        ...

    async def history(self, name: str, *, limit: int = 10) -> tuple[Checkpoint, ...]:
        """The newest ``limit`` checkpoints of run ``name`` (at most), newest first."""
        ...

    async def dead_letters(self, name: str) -> tuple[DeadLetterRecord, ...]:
        """Every dead letter of run ``name``, in the order they were written."""
        ...

    async def table_rows(self, table: str, *, run: str | None = None) -> tuple[dict[str, Any], ...]:
        """The rows of sink table ``table`` (of run ``run`` only, if given), in insertion order.

        Each row is a dictionary of every column: ``id``, ``run``, ``checkpoint``,
        then the table's own. A table never written has no rows.
        """
        ...

    async def delete(self, name: str) -> None:
        """Forget every checkpoint and dead letter of run ``name`` (its sink rows stay)."""
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


def check_save(
    checkpoint: object, writes: object, expect: object
) -> tuple[tuple[Write, ...], int | None]:
    """The arguments of `Store.save`, checked: `TypeError` or `ValueError` naming the bad one."""
    if not isinstance(checkpoint, Checkpoint):
        raise TypeError(f"checkpoint must be a Checkpoint, got {type(checkpoint).__name__}")
    return check_writes(writes), check_expect(expect)


@dataclasses.dataclass(frozen=True, slots=True)
class EncodedSave:
    """One `Store.save` as a database store writes it: checked, and encoded by its codec."""

    name: str
    sequence: int
    expected: int | None
    """The newest sequence number the save expects to find (None: no check)."""
    record: tuple[str, bytes, str]
    """The checkpoint's format, payload and checksum."""
    letters: list[tuple[Any, ...]]
    """The dead-letter rows: run, checkpoint, stage, index, format, payload, checksum."""
    tables: list[TableRows]


def encoded_save(
    checkpoint: object,
    writes: object,
    expect: object,
    codec: Codec,
    letter: Callable[[str], tuple[Any, ...]],
) -> EncodedSave:
    """`check_save`, then the checkpoint encoded by ``codec`` and each dead letter by ``letter``.

    ``letter`` turns a dead letter's JSON text into its format, payload and
    checksum as the store's table keeps them.
    """
    every, expected = check_save(checkpoint, writes, expect)
    assert isinstance(checkpoint, Checkpoint)  # checked
    name, sequence = checkpoint.name, checkpoint.sequence
    letters = [
        (
            name,
            sequence,
            write.stage,
            write.index,
            *letter(letter_json(name, sequence, checkpoint.created_at, write)),
        )
        for write in every
        if isinstance(write, DeadLetterRow)
    ]
    tables = [write for write in every if isinstance(write, TableRows)]
    return EncodedSave(
        name, sequence, expected, codec.encode(checkpoint.to_json()), letters, tables
    )


def _check_run(run: object) -> str | None:
    return None if run is None else _check_name(run, "run")


class MemoryStore(Store):
    """A store that keeps checkpoints in this process (for tests, and as a model).

    It keeps what a real backend keeps: each checkpoint's JSON form (so a
    loaded checkpoint is a new object, never one the caller can still change),
    the newest ``keep`` per run, every dead letter and every sink row, and it
    checks writes as the other stores do, before changing anything. Nothing
    survives the process.

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

    __slots__ = ("_closed", "_keep", "_letters", "_runs", "_tables")

    def __init__(self, *, keep: int = 10) -> None:
        self._keep = _check_count(keep, "keep")
        # Per run: (sequence, JSON form) of the newest checkpoints, oldest first.
        self._runs: dict[str, list[tuple[int, str]]] = {}
        self._letters: dict[str, list[str]] = {}
        self._tables: dict[str, tuple[TableShape, list[dict[str, Any]]]] = {}
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

    async def save(
        self,
        checkpoint: Checkpoint,
        /,
        *,
        writes: Sequence[Write] = (),
        expect: int | None = None,
    ) -> None:
        """Keep ``checkpoint`` as the newest of its run, with ``writes``: all or nothing."""
        self._check_open()
        every, expected = check_save(checkpoint, writes, expect)
        name, sequence = checkpoint.name, checkpoint.sequence
        kept = self._runs.get(name, [])
        if expected is not None:
            found = kept[-1][0] if kept else 0
            if found != expected:
                raise _stale(expected, found, path=None, name=name)
        # Everything is checked before anything changes: all or nothing.
        shapes: dict[str, TableShape] = {}
        for write in every:
            if isinstance(write, TableRows):
                existing = shapes.get(write.table) or self._shape(write.table)
                try:
                    shapes[write.table] = shape_for(write, existing)
                except TableMismatch as exc:
                    raise CheckpointError(str(exc), name=name) from None
        self._runs[name] = kept
        kept.append((sequence, checkpoint.to_json()))
        del kept[: -self._keep]
        created = checkpoint.created_at
        for write in every:
            if isinstance(write, DeadLetterRow):
                letter = letter_json(name, sequence, created, write)
                self._letters.setdefault(name, []).append(letter)
            else:
                self._append(write, shapes[write.table], name, sequence)

    def _shape(self, table: str) -> TableShape | None:
        found = self._tables.get(table)
        return None if found is None else found[0]

    def _append(self, write: TableRows, shape: TableShape, name: str, sequence: int) -> None:
        _, rows = self._tables.setdefault(write.table, (shape, []))
        start = rows[-1]["id"] + 1 if rows else 1
        for number, row in enumerate(write.rows, start):
            values = (stored(v, t) for v, t in zip(row, shape.types, strict=True))
            rows.append(
                {"id": number, "run": name, "checkpoint": sequence}
                | dict(zip(shape.columns, values, strict=True))
            )

    async def history(self, name: str, *, limit: int = 10) -> tuple[Checkpoint, ...]:
        """The newest ``limit`` checkpoints of run ``name``, newest first."""
        self._check_open()
        _check_name(name)
        _check_count(limit, "limit")
        kept = self._runs.get(name, [])
        return tuple(Checkpoint.from_json(text) for _, text in reversed(kept[-limit:]))

    async def dead_letters(self, name: str) -> tuple[DeadLetterRecord, ...]:
        """Every dead letter of run ``name``, oldest first."""
        self._check_open()
        _check_name(name)
        return tuple(letter_from_json(text) for text in self._letters.get(name, []))

    async def table_rows(self, table: str, *, run: str | None = None) -> tuple[dict[str, Any], ...]:
        """The rows of sink table ``table`` (of run ``run`` only, if given), oldest first."""
        self._check_open()
        check_table(table)
        wanted = _check_run(run)
        found = self._tables.get(table)
        rows = [] if found is None else found[1]
        return tuple(dict(row) for row in rows if wanted is None or row["run"] == wanted)

    async def delete(self, name: str) -> None:
        """Forget every checkpoint and dead letter of run ``name`` (sink rows stay)."""
        self._check_open()
        self._runs.pop(_check_name(name), None)
        self._letters.pop(name, None)

    async def close(self) -> None:
        """Drop everything; later operations raise `RuntimeError`."""
        self._closed = True
        self._runs.clear()
        self._letters.clear()
        self._tables.clear()


# --------------------------------------------------------------------------- SQLite schema

SCHEMA_VERSION: Final = 2
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


def _add_writes_v2(connection: sqlite3.Connection) -> None:
    """Version 1 to 2: numbered checkpoints, dead letters, and the sink tables' registry.

    ``checkpoints.sequence`` repeats the checkpoint's sequence number (0 for
    the rows of version 1) so that ``save(expect=)`` reads it without
    decoding the payload. ``dead_letters`` holds one row per dead letter,
    kept until the run is deleted: ``payload`` is its JSON (or Fernet token),
    ``checksum`` the SHA-256 of ``payload``. ``sink_tables`` records, for
    each sink table the store created, its columns and their types (JSON
    lists).
    """
    connection.execute("ALTER TABLE checkpoints ADD COLUMN sequence INTEGER NOT NULL DEFAULT 0")
    connection.execute(
        """
        CREATE TABLE dead_letters (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            name TEXT NOT NULL,
            checkpoint INTEGER NOT NULL,
            stage TEXT NOT NULL,
            idx INTEGER NOT NULL,
            format TEXT NOT NULL,
            payload BLOB NOT NULL,
            checksum TEXT NOT NULL
        )
        """
    )
    connection.execute("CREATE INDEX dead_letters_by_run ON dead_letters (name, id)")
    connection.execute(
        """
        CREATE TABLE sink_tables (
            name TEXT PRIMARY KEY,
            columns TEXT NOT NULL,
            types TEXT NOT NULL
        )
        """
    )


MIGRATIONS: tuple[Migration, ...] = (_create_v1, _add_writes_v2)
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


Writer: TypeAlias = Literal["auto", "process", "thread"]
"""Where a `SQLiteStore` makes its saves (see its ``writer`` argument)."""

_WRITERS: Final = ("auto", "process", "thread")
_PLAN_ATTEMPTS: Final = 5


def _nothing(connection: sqlite3.Connection) -> None:
    """A call that only opens the store's connection (making or migrating the schema)."""


def _use_wal(connection: sqlite3.Connection) -> None:
    """Switch the file to WAL mode (it stays in WAL mode once switched).

    The switch needs the file to itself, and SQLite answers "database is
    locked" at once, without its busy timeout, while another connection is
    opening it: so the switch is retried for up to ``BUSY_SECONDS``.
    """
    deadline = time.monotonic() + BUSY_SECONDS
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


class Codec:
    """What a store keeps of a JSON document: its form, its payload and the payload's SHA-256.

    Without a cipher the payload is the UTF-8 JSON (form ``"json"``); with one,
    its Fernet token (form ``"fernet"``). Reading checks the checksum, the
    form against the cipher, and decrypts: every failure is a
    `CheckpointError` naming the store (``path``) and the run.
    """

    __slots__ = ("cipher", "path")

    def __init__(self, cipher: Fernet | None, path: str | None) -> None:
        self.cipher = cipher
        self.path = path

    def encode(self, text: str) -> tuple[str, bytes, str]:
        """``(form, payload, checksum)`` for the JSON ``text``."""
        payload = text.encode()
        form = "json"
        if self.cipher is not None:
            form, payload = "fernet", self.cipher.encrypt(payload)
        return form, payload, hashlib.sha256(payload).hexdigest()

    def fail(self, message: str, name: str | None) -> CheckpointError:
        """A `CheckpointError` naming this store and the run."""
        return CheckpointError(message, path=self.path, name=name)

    def open(self, name: str, what: str, form: str, payload: object, checksum: object) -> bytes:
        """The JSON bytes of a stored ``what`` (a checkpoint, a dead letter), checked."""
        if not isinstance(payload, bytes):
            raise self.fail(
                f"corrupted row: the payload is a {type(payload).__name__}, not bytes", name
            )
        if hashlib.sha256(payload).hexdigest() != checksum:
            raise self.fail("corrupted or altered row: its SHA-256 checksum does not match", name)
        if form == "fernet":
            if self.cipher is None:
                raise self.fail(f"the {what} is encrypted: open the store with its key", name)
            from cryptography.fernet import InvalidToken

            try:
                return self.cipher.decrypt(payload)
            except InvalidToken:
                raise self.fail(f"cannot decrypt the {what}: wrong key", name) from None
        if form == "json":
            if self.cipher is not None:
                raise self.fail(f"the {what} is not encrypted, but the store has a key", name)
            return payload
        raise self.fail(f"unknown payload format {form!r}", name)

    def checkpoint(
        self, name: str, sequence: object, form: str, payload: object, checksum: object
    ) -> Checkpoint:
        """A checkpoint row of run ``name``, read and checked against its columns."""
        text = self.open(name, "checkpoint", form, payload, checksum)
        try:
            checkpoint = Checkpoint.from_json(text)
        except ValueError as exc:
            raise self.fail(f"not a valid checkpoint: {exc}", name) from None
        if checkpoint.name != name:
            raise self.fail(f"the row holds a checkpoint of run {checkpoint.name!r}", name)
        if checkpoint.sequence != sequence:
            raise self.fail(
                f"the row's sequence column says {sequence!r}, its checkpoint "
                f"{checkpoint.sequence}",
                name,
            )
        return checkpoint

    def letter(
        self,
        name: str,
        sequence: object,
        stage: object,
        index: object,
        form: str,
        payload: object,
        checksum: object,
    ) -> DeadLetterRecord:
        """A dead-letter row of run ``name``, read and checked against its columns."""
        text = self.open(name, "dead letter", form, payload, checksum)
        try:
            letter = letter_from_json(text)
        except ValueError as exc:
            raise self.fail(f"not a valid dead letter: {exc}", name) from None
        if (letter.name, letter.checkpoint, letter.stage, letter.index) != (
            name,
            sequence,
            stage,
            index,
        ):
            raise self.fail("a dead letter's columns do not match its payload", name)
        return letter


_SQLITE_TYPES: Final = {"integer": "INTEGER", "real": "REAL", "text": "TEXT", "blob": "BLOB"}
"""The SQLite column type of each `SQLType` (the values are checked before they are written)."""


class SQLiteStore(Store):
    """The embedded checkpoint store: one SQLite file, WAL mode, durable writes.

    Each save is one transaction (``BEGIN IMMEDIATE``, which also makes
    ``expect=`` safe between processes) that inserts a row (the checkpoint's
    JSON, or its Fernet token with a ``key``, and the SHA-256 of what is
    stored), drops the run's rows beyond the newest ``keep``, and appends the
    save's dead letters and sink rows. The event loop never blocks on disk:
    reads, and saves unless a writer process makes them, run in order on one
    worker thread that owns the store's connection. The file is opened, and
    its schema created or migrated, on first use.

    A save's database work takes the GIL between its SQLite calls. On the
    store's thread it must win it from the event loop's thread, which in a
    busy pipeline holds it almost all the time, so saves finish late and the
    run waits for them. A writer process has a GIL of its own: the checkpoint
    is encoded here, sent through a pipe, and written there, and a
    checkpointed run costs about what it costs into a `MemoryStore`. The
    writer process starts at the store's first `load` or save (`open` starts
    it and waits until it is ready), ends with the store, and ends by itself
    if this process dies, rolling back a save it had not committed.

    A file that is not a streamkit store, a row whose checksum does not
    match, a payload that is not a checkpoint and a wrong key all raise
    `CheckpointError` naming the file and the run. With ``key``, checkpoints
    and dead letters are encrypted and authenticated (Fernet, from the
    ``crypto`` extra); rows that are not encrypted are then refused. Sink
    tables are plain SQL tables of the same file, never encrypted: they are
    the pipeline's output, for other programs to read.

    Args:
        path: The database file (created if missing; ``":memory:"`` for a
            private in-memory database).
        key: A Fernet key (``cryptography.fernet.Fernet.generate_key()``) to
            encrypt checkpoints at rest.
        keep: How many checkpoints to keep per run.
        writer: Where saves are made. ``"auto"``: in a writer process where
            one can serve (a file, on a POSIX system, under an event loop
            that watches pipes), else on the store's thread; on the thread
            too until the process is ready, and for good if it stops.
            ``"process"``: always in the writer process, every save waiting
            for it to be ready (`CheckpointError` if none can serve, or it
            has stopped). ``"thread"``: always on the store's thread, with
            no process started.

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

    __slots__ = (
        "_cipher",
        "_closed",
        "_codec",
        "_connection",
        "_executor",
        "_keep",
        "_path",
        "_process",
        "_tables",
        "_threaded",
        "_writer",
    )

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        key: str | bytes | None = None,
        keep: int = 10,
        writer: Writer = "auto",
    ) -> None:
        if not isinstance(path, str | os.PathLike):  # pyright: ignore[reportUnnecessaryIsInstance] - untyped callers
            raise TypeError(f"path must be a str or a path, got {type(path).__name__}")
        self._path = file_name(os.fspath(path), path)
        self._cipher = None if key is None else _fernet(key)
        self._codec = Codec(self._cipher, self._path)
        self._keep = _check_count(keep, "keep")
        if writer not in _WRITERS:
            choices = ", ".join(map(repr, _WRITERS))
            raise ValueError(f"writer must be one of {choices}, got {writer!r}")
        if writer == "process" and self._path == ":memory:":
            raise ValueError(
                "writer='process' needs a database file: a ':memory:' database is private "
                "to its connection"
            )
        if writer == "auto" and (self._path == ":memory:" or sys.platform == "win32"):
            writer = "thread"
        self._writer: Writer = writer
        self._process: WriterProcess | None = None
        self._connection: sqlite3.Connection | None = None
        # One worker thread owns the connection: sqlite3 objects stay in the
        # thread that made them (check_same_thread stays on), calls are
        # serialized by the executor's queue, and no lock is needed.
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="streamkit-sqlite"
        )
        self._threaded: asyncio.Future[Any] | None = None
        """The last call sent to the thread (a save in the process waits for it)."""
        self._tables: dict[str, Registration] = {}
        """The sink tables as the last save found them (what the next plan assumes)."""
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
        if self._process is not None and self._process.busy:
            await self._process.idle()  # what was asked before is done first

        def job() -> T:
            try:
                return fn(self._connect())
            except sqlite3.Error as exc:
                raise CheckpointError(str(exc), path=self._path, name=name) from exc

        # A cancelled call that has started still finishes on the worker (each
        # save is one transaction: it commits entirely or not at all); the
        # next call queues behind it.
        handle = in_executor(self._executor, job)
        self._threaded = handle
        return await handle

    def _connect(self) -> sqlite3.Connection:
        if self._connection is not None:
            return self._connection
        connection = connect(self._path)
        try:
            # WAL: readers in other processes do not block the writer.
            _use_wal(connection)
            migrate(connection, MIGRATIONS, path=self._path)
        except BaseException:
            connection.close()
            raise
        self._connection = connection
        return connection

    def _history(self, connection: sqlite3.Connection, name: str, limit: int) -> list[Checkpoint]:
        rows = connection.execute(
            "SELECT sequence, format, payload, checksum FROM checkpoints WHERE name = ? "
            "ORDER BY id DESC LIMIT ?",
            (name, limit),
        ).fetchall()
        return [self._codec.checkpoint(name, *row) for row in rows]

    def _registered(
        self, connection: sqlite3.Connection, table: str, name: str | None
    ) -> TableShape | None:
        """The registered shape of sink table ``table``, or ``None`` if the store has none."""
        return self._existing(table, registration(connection, table), name)

    # -- the protocol --------------------------------------------------------

    async def load(self, name: str) -> Checkpoint | None:
        """The newest checkpoint of run ``name``, or ``None``.

        A run loads before it saves, so this also starts the writer process
        (without waiting for it: see `open`). The row is read under the
        database's write lock, behind any save under way: the writer process
        of a run that was just killed may still be committing its last save,
        and a restarted run must resume from it.

        Raises:
            CheckpointError: The newest row cannot be read.
        """
        _check_name(name)

        def read(connection: sqlite3.Connection) -> list[Checkpoint]:
            connection.execute("BEGIN IMMEDIATE")
            try:
                return self._history(connection, name, 1)
            finally:
                connection.execute("COMMIT")

        found = await self._call(read, name)
        self._start_writer(name)
        return found[0] if found else None

    async def save(
        self,
        checkpoint: Checkpoint,
        /,
        *,
        writes: Sequence[Write] = (),
        expect: int | None = None,
    ) -> None:
        """Store ``checkpoint`` and ``writes`` in one durable transaction (see `Store.save`).

        Raises:
            StaleCheckpointError: ``expect`` is not the newest sequence number.
            CheckpointError: A sink table does not fit the rows, or the
                database cannot be written. Either way nothing was written.
        """
        encoded = encoded_save(checkpoint, writes, expect, self._codec, self._codec.encode)
        name = encoded.name
        for _ in range(_PLAN_ATTEMPTS):
            reply = await self._apply(self._plan(encoded), name)
            kind = reply[0]
            if kind == "ok":
                return
            if kind == "stale":
                assert encoded.expected is not None  # only then is there a check
                raise _stale(encoded.expected, int(reply[1]), path=self._path, name=name)
            if kind == "tables":
                # Another store registered (or dropped) a sink table since this
                # one looked: plan again with the registrations found.
                for table, found in reply[1]:
                    self._tables[table] = None if found is None else tuple(found)
                continue
            raise CheckpointError(str(reply[1]), path=self._path, name=name)
        raise CheckpointError(
            f"the sink tables changed during each of {_PLAN_ATTEMPTS} attempts to save",
            path=self._path,
            name=name,
        )

    def _plan(self, encoded: EncodedSave) -> Plan:
        """``encoded`` as a plan for `apply_save`, assuming the sink tables are as last seen.

        Raises:
            CheckpointError: The rows do not fit a sink table as last seen.
        """
        name, sequence = encoded.name, encoded.sequence
        tables: list[tuple[str, Registration, tuple[str, str, str] | None]] = []
        inserts: list[tuple[str, list[tuple[Any, ...]]]] = []
        shapes: dict[str, TableShape] = {}
        for rows in encoded.tables:
            table = rows.table
            first = table not in shapes
            assumed = self._tables.get(table)
            existing = self._existing(table, assumed, name) if first else shapes[table]
            try:
                shape = shape_for(rows, existing)
            except TableMismatch as exc:
                raise CheckpointError(str(exc), path=self._path, name=name) from None
            if first:
                creation = None
                if existing is None:
                    columns = ", ".join(
                        f'"{column}" {_SQLITE_TYPES[kind]}'
                        for column, kind in zip(shape.columns, shape.types, strict=True)
                    )
                    creation = (
                        f'CREATE TABLE "{table}" (id INTEGER PRIMARY KEY AUTOINCREMENT, '
                        f"run TEXT NOT NULL, checkpoint INTEGER NOT NULL, {columns})",
                        *shape.to_json(),
                    )
                tables.append((table, assumed, creation))
                shapes[table] = shape
            names = ", ".join(f'"{column}"' for column in shape.columns)
            marks = ", ".join("?" for _ in shape.columns)
            inserts.append(
                (
                    f'INSERT INTO "{table}" (run, checkpoint, {names}) VALUES (?, ?, {marks})',
                    [(name, sequence, *row) for row in rows.rows],
                )
            )
        record = encoded.record
        letters = encoded.letters
        return (name, sequence, encoded.expected, record, self._keep, letters, tables, inserts)

    def _existing(self, table: str, found: Registration, name: str | None) -> TableShape | None:
        """The shape of sink table ``table``, registered as ``found``; or `CheckpointError`."""
        if found is None:
            return None
        if found[0] == "taken":
            raise CheckpointError(
                f"sink table {table!r}: the database has a {found[1]} of that name "
                "that is not a sink table of this store",
                path=self._path,
                name=name,
            )
        try:
            return TableShape.from_json(found[1], found[2])  # type: ignore[misc]  # pyright: ignore[reportGeneralTypeIssues] - a "table" registration has three parts
        except ValueError as exc:
            message = f"sink table {table!r}: {exc}"
            raise CheckpointError(message, path=self._path, name=name) from None

    async def _apply(self, plan: Plan, name: str) -> Reply:
        """Run ``plan`` in the writer process if it is ready (or must be), else on the thread."""
        process = await self._writer_process(name)
        if process is not None:
            try:
                message = marshal.dumps(plan)
            except ValueError:  # a value marshal does not carry (a subclass of int, say)
                message = None
            if message is not None:
                threaded = self._threaded
                if threaded is not None and not threaded.done():
                    await settled(threaded)  # what was asked before is done first
                reply = await shielded(process.apply(message))
                if reply[0] != "ended":
                    return reply
                if self._writer == "process":
                    raise CheckpointError(str(reply[1]), path=self._path, name=name)
                # "auto": from now on the thread saves. A save the process had
                # begun was rolled back if it had not committed: look.
                await self._save_on_the_thread()
                return await self._call(lambda connection: apply_once(connection, plan), name)
        return await self._call(lambda connection: apply_save(connection, plan), name)

    def _start_writer(self, name: str | None) -> None:
        """Start the writer process (once the schema is made), unless one is running or none can."""
        if self._writer == "thread" or self._process is not None or self._closed:
            return
        try:
            self._process = WriterProcess(self._path)
        except (OSError, NotImplementedError) as exc:
            # No process can start, or the event loop cannot watch pipes.
            if self._writer == "process":
                raise CheckpointError(
                    f"no writer process can serve this store: {exc}", path=self._path, name=name
                ) from exc
            self._writer = "thread"

    async def _writer_process(
        self, name: str | None, *, wait: bool = False
    ) -> WriterProcess | None:
        """The writer process to save in now (starting it if need be), or None: the thread.

        With ``"auto"``, saves are made on the thread until the process is
        ready, unless ``wait``; with ``"process"``, they wait for it.
        """
        if self._writer == "thread":
            return None
        if self._process is None:
            await self._call(_nothing, name)  # the schema is made (or migrated) on the thread
            self._start_writer(name)
        process = self._process
        if process is None:
            return None
        if not process.ready:
            if self._writer == "auto" and not wait and process.ended is None:
                return None
            reply = await process.wait_ready()
            if reply[0] != "ready":
                if self._writer == "process":
                    raise CheckpointError(str(reply[1]), path=self._path, name=name)
                await self._save_on_the_thread()  # "auto"
                return None
        return process

    async def open(self) -> Self:
        """Open the store now, ready to save; the store itself.

        Opens the file, creates or migrates its schema and, unless
        ``writer="thread"``, starts the writer process and waits until it is
        ready (about 30 ms), so that the first saves do not pay for it. A
        store opens by itself on first use; call this before a run whose
        every checkpoint counts.

        Raises:
            CheckpointError: The file is not a streamkit store or cannot be
                opened, or (``writer="process"``) no writer process can serve.
        """
        await self._writer_process(None, wait=True)
        if self._writer == "thread":
            await self._call(_nothing, None)
        return self

    async def _save_on_the_thread(self) -> None:
        """``"auto"`` with a writer process that stopped: save on the thread from now on."""
        self._writer = "thread"
        await self._retire()

    async def _retire(self) -> None:
        """End the writer process (after its last reply) and wait for it on the thread."""
        process, self._process = self._process, None
        if process is None:
            return
        await process.idle()
        process.end()
        await shielded(in_executor(self._executor, process.wait))

    async def history(self, name: str, *, limit: int = 10) -> tuple[Checkpoint, ...]:
        """The newest ``limit`` checkpoints of run ``name`` (at most ``keep``), newest first.

        Raises:
            CheckpointError: One of those rows cannot be read.
        """
        _check_name(name)
        _check_count(limit, "limit")
        found = await self._call(lambda connection: self._history(connection, name, limit), name)
        return tuple(found)

    async def dead_letters(self, name: str) -> tuple[DeadLetterRecord, ...]:
        """Every dead letter of run ``name``, in the order they were written.

        Raises:
            CheckpointError: One of them cannot be read.
        """
        _check_name(name)

        def read(connection: sqlite3.Connection) -> list[DeadLetterRecord]:
            rows = connection.execute(
                "SELECT checkpoint, stage, idx, format, payload, checksum FROM dead_letters "
                "WHERE name = ? ORDER BY id",
                (name,),
            ).fetchall()
            return [self._codec.letter(name, *row) for row in rows]

        return tuple(await self._call(read, name))

    async def table_rows(self, table: str, *, run: str | None = None) -> tuple[dict[str, Any], ...]:
        """The rows of sink table ``table`` (of run ``run`` only, if given), in insertion order.

        Sink tables are plain SQL tables in the same file, never encrypted.
        """
        check_table(table)
        wanted = _check_run(run)

        def read(connection: sqlite3.Connection) -> list[dict[str, Any]]:
            connection.execute("BEGIN")
            try:
                shape = self._registered(connection, table, wanted)
                if shape is None:
                    return []
                columns = ("id", "run", "checkpoint", *shape.columns)
                names = ", ".join(f'"{column}"' for column in columns)
                where, parameters = ("", ()) if wanted is None else (" WHERE run = ?", (wanted,))
                rows = connection.execute(
                    f'SELECT {names} FROM "{table}"{where} ORDER BY id', parameters
                ).fetchall()
            finally:
                connection.execute("COMMIT")
            return [dict(zip(columns, row, strict=True)) for row in rows]

        return tuple(await self._call(read, wanted))

    async def delete(self, name: str) -> None:
        """Forget every checkpoint and dead letter of run ``name`` (its sink rows stay)."""
        _check_name(name)

        def remove(connection: sqlite3.Connection) -> None:
            connection.execute("BEGIN IMMEDIATE")
            try:
                connection.execute("DELETE FROM checkpoints WHERE name = ?", (name,))
                connection.execute("DELETE FROM dead_letters WHERE name = ?", (name,))
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")

        await self._call(remove, name)

    async def close(self) -> None:
        """End the writer process, close the connection, stop the thread; idempotent."""
        if self._closed:
            return
        self._closed = True
        await self._retire()

        def close_connection() -> None:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

        done = in_executor(self._executor, close_connection)
        # The queued close still runs if this wait is cancelled; the thread
        # ends once it has.
        self._executor.shutdown(wait=False)
        await shielded(done)


# The checks and helpers `PostgresStore` shares with the stores above.
check_count = _check_count
check_name = _check_name
check_run = _check_run
fernet = _fernet
stale = _stale
