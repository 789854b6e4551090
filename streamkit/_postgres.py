"""`PostgresStore`: checkpoints in a PostgreSQL database that several processes share.

The same contract as `SQLiteStore` (one transaction per save, dead letters,
sink tables, ``expect=`` fencing), over PostgreSQL with psycopg 3's async
API (the ``postgres`` extra), so a pipeline scaled out over several workers
keeps one store. psycopg is imported on first use of a store: importing
streamkit never needs it.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Final, LiteralString, TypeAlias, TypeVar

from ._runtime import shielded, start_awaitable
from ._store import (
    APPLICATION_ID,
    Checkpoint,
    CheckpointError,
    Codec,
    Store,
    check_count,
    check_name,
    check_run,
    encoded_save,
    fernet,
    stale,
)
from ._writes import (
    DeadLetterRecord,
    TableMismatch,
    TableRows,
    TableShape,
    Write,
    check_identifier,
    check_table,
    shape_for,
)

if TYPE_CHECKING:
    from psycopg import AsyncConnection
    from psycopg.rows import TupleRow
    from psycopg.sql import Composable, Composed, Identifier

T = TypeVar("T")

PG_SCHEMA_VERSION: Final = 1
"""The schema version this streamkit writes (the ``schema_version`` row of ``meta``)."""

# Advisory locks take two int4 keys: the first says what is locked, the second which one.
_LOCK_SCHEMA: Final = APPLICATION_ID
_LOCK_RUN: Final = APPLICATION_ID + 1
_LOCK_TABLE: Final = APPLICATION_ID + 2

_PG_TYPES: Final[dict[str, LiteralString]] = {
    "integer": "BIGINT",
    "real": "DOUBLE PRECISION",
    "text": "TEXT",
    "blob": "BYTEA",
}
"""The PostgreSQL column type of each `SQLType` (the values are checked before they are written)."""


def _lock_key(text: str) -> int:
    """A signed 32-bit key for ``text`` (the second key of an advisory lock)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big", signed=True)


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError:
        raise ImportError(
            "PostgresStore needs the psycopg package: pip install 'streamkit[postgres]'"
        ) from None
    return psycopg


def _check_dsn(dsn: object) -> str:
    if not isinstance(dsn, str):
        kind = type(dsn).__name__
        raise TypeError(f"dsn must be a str (a PostgreSQL URI or key=value pairs), got {kind}")
    return dsn


def _display(dsn: str) -> str:
    """The connection string without its password: how errors and ``repr`` name the store."""
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    try:
        parameters = conninfo_to_dict(dsn)
    except ProgrammingError as exc:
        raise ValueError(f"dsn is not a PostgreSQL connection string: {exc}") from None
    parameters.pop("password", None)
    return make_conninfo("", **parameters) or "(libpq defaults)"


# --------------------------------------------------------------------------- schema

Connection: TypeAlias = "AsyncConnection[TupleRow]"
PgMigration: TypeAlias = Callable[["AsyncConnection[TupleRow]", "Identifier"], Awaitable[None]]
"""Moves a schema from version ``k`` to ``k + 1``, inside the migrating transaction."""


async def _pg_create_v1(connection: Connection, schema: Identifier) -> None:
    """Version 0 to 1: checkpoints, dead letters and the sink tables' registry.

    As in SQLite's version 2: ``payload`` is the JSON (or its Fernet token) as
    text, ``checksum`` the SHA-256 of its UTF-8 bytes, ``sequence`` repeats
    the checkpoint's sequence number for ``save(expect=)``.
    """
    from psycopg import sql

    statements: list[LiteralString] = [
        """
        CREATE TABLE {s}.checkpoints (
            id BIGSERIAL PRIMARY KEY,
            name TEXT NOT NULL,
            sequence BIGINT NOT NULL,
            format TEXT NOT NULL,
            payload TEXT NOT NULL,
            checksum TEXT NOT NULL
        )
        """,
        "CREATE INDEX checkpoints_by_run ON {s}.checkpoints (name, id)",
        """
        CREATE TABLE {s}.dead_letters (
            id BIGSERIAL PRIMARY KEY,
            name TEXT NOT NULL,
            checkpoint BIGINT NOT NULL,
            stage TEXT NOT NULL,
            idx BIGINT NOT NULL,
            format TEXT NOT NULL,
            payload TEXT NOT NULL,
            checksum TEXT NOT NULL
        )
        """,
        "CREATE INDEX dead_letters_by_run ON {s}.dead_letters (name, id)",
        """
        CREATE TABLE {s}.sink_tables (
            name TEXT PRIMARY KEY,
            columns TEXT NOT NULL,
            types TEXT NOT NULL
        )
        """,
    ]
    for statement in statements:
        await connection.execute(sql.SQL(statement).format(s=schema))


PG_MIGRATIONS: tuple[PgMigration, ...] = (_pg_create_v1,)
"""``PG_MIGRATIONS[k]`` moves a schema from version ``k`` to ``k + 1``."""


async def _migrate(connection: Connection, schema: str, where: str) -> int:
    """Create or migrate the store's schema in one transaction; the version reached.

    An advisory lock keyed by the schema's name serializes the processes that
    open a store at the same time: one creates the tables, the others find
    them.
    """
    from psycopg import sql

    name = sql.Identifier(schema)
    migrations = PG_MIGRATIONS
    async with connection.transaction():
        await connection.execute(
            "SELECT pg_advisory_xact_lock(%s, %s)", (_LOCK_SCHEMA, _lock_key(schema))
        )
        cursor = await connection.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s "
            "ORDER BY table_name",
            (schema,),
        )
        tables = [str(row[0]) for row in await cursor.fetchall()]
        if "meta" in tables:
            cursor = await connection.execute(
                sql.SQL("SELECT key, value FROM {}.meta").format(name)
            )
            meta = {str(key): str(value) for key, value in await cursor.fetchall()}
            if (
                meta.get("application") != "streamkit"
                or not meta.get("schema_version", "").isdigit()
            ):
                raise CheckpointError(
                    f"schema {schema!r} is not a streamkit checkpoint store (its meta table "
                    "has no streamkit schema version)",
                    path=where,
                )
            version = int(meta["schema_version"])
        elif tables:
            raise CheckpointError(
                f"schema {schema!r} is not a streamkit checkpoint store: it has tables "
                f"({', '.join(tables)}) but no schema version",
                path=where,
            )
        else:
            await connection.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(name))
            await connection.execute(
                sql.SQL("CREATE TABLE {}.meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)").format(
                    name
                )
            )
            await connection.execute(
                sql.SQL(
                    "INSERT INTO {}.meta (key, value) VALUES "
                    "('application', 'streamkit'), ('schema_version', '0')"
                ).format(name)
            )
            version = 0
        if version > len(migrations):
            raise CheckpointError(
                f"schema version {version} was written by a newer streamkit "
                f"(this one reads versions up to {len(migrations)})",
                path=where,
            )
        if version < len(migrations):
            for step in migrations[version:]:
                await step(connection, name)
            version = len(migrations)
            await connection.execute(
                sql.SQL("UPDATE {}.meta SET value = %s WHERE key = 'schema_version'").format(name),
                (str(version),),
            )
    return version


# --------------------------------------------------------------------------- the store


def _retrieve(handle: asyncio.Future[Any]) -> None:
    if not handle.cancelled():
        handle.exception()


class PostgresStore(Store):
    """The shared checkpoint store: PostgreSQL, for runs spread over several processes.

    The same contract as `SQLiteStore`: each save is one transaction (the
    checkpoint, the trimmed history beyond ``keep``, the dead letters and the
    sink rows, all or nothing), payloads are JSON text with a SHA-256
    checksum, optionally Fernet-encrypted with ``key``, and ``expect=``
    makes a save a compare-and-set: every save of a run takes a transaction
    advisory lock keyed by the run's name before reading its newest
    checkpoint, so two workers saving the same run cannot both win.

    The tables live in their own PostgreSQL schema (``schema``), created on
    first use in one transaction, under an advisory lock so that processes
    starting together create them once; the schema's ``meta`` table records
    the version, and newer versions are refused. Sink tables are plain
    tables of that schema (``BIGINT``, ``DOUBLE PRECISION``, ``TEXT``,
    ``BYTEA`` columns), never encrypted.

    Every call is async (psycopg 3's async connection), one at a time per
    store; a call whose caller is cancelled still finishes, committing
    entirely or not at all. Use one store within one event loop. Database
    failures raise `CheckpointError` naming the store (the connection
    string without its password) and the run.

    Args:
        dsn: A libpq connection string: a URI (``postgresql://user@host/db``)
            or ``key=value`` pairs. Nothing connects until the first call.
        schema: The PostgreSQL schema that holds the store's tables (an SQL
            identifier; created if missing).
        key: A Fernet key to encrypt checkpoints and dead letters at rest.
        keep: How many checkpoints to keep per run.

    Examples:
        >>> store = PostgresStore("postgresql://app:s3cret@db.internal:5432/runs", keep=5)
        >>> store.dsn  # the password is never shown
        'user=app dbname=runs host=db.internal port=5432'
        >>> store
        PostgresStore('user=app dbname=runs host=db.internal port=5432', schema='streamkit', keep=5)
    """

    __slots__ = ("_closed", "_codec", "_connection", "_conninfo", "_keep", "_lock", "_schema")

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = "streamkit",
        key: str | bytes | None = None,
        keep: int = 10,
    ) -> None:
        _check_dsn(dsn)
        _psycopg()
        where = _display(dsn)
        self._schema = check_identifier(schema, "schema")
        if self._schema.startswith("pg_") or self._schema == "information_schema":
            raise ValueError(f"schema {schema!r} is reserved by PostgreSQL")
        self._conninfo = dsn
        self._codec = Codec(None if key is None else fernet(key), where)
        self._keep = check_count(keep, "keep")
        self._connection: Connection | None = None
        self._lock = asyncio.Lock()
        self._closed = False

    @property
    def dsn(self) -> str:
        """The connection string, without its password."""
        return self._where

    @property
    def schema(self) -> str:
        """The PostgreSQL schema that holds the store's tables."""
        return self._schema

    @property
    def _where(self) -> str:
        where = self._codec.path
        assert where is not None
        return where

    def __repr__(self) -> str:
        encrypted = ", encrypted" if self._codec.cipher is not None else ""
        closed = ", closed" if self._closed else ""
        return (
            f"PostgresStore({self._where!r}, schema={self._schema!r}, "
            f"keep={self._keep}{encrypted}{closed})"
        )

    # -- one call at a time ---------------------------------------------------

    async def _call(self, op: Callable[[Connection], Awaitable[T]], name: str | None) -> T:
        if self._closed:
            raise RuntimeError(f"the PostgresStore {self._where!r} is closed")
        # Shielded: a call under way finishes (and its transaction commits or
        # rolls back) even if its caller is cancelled; the next call waits.
        handle = start_awaitable(self._locked(op, name))
        handle.add_done_callback(_retrieve)
        return await shielded(handle)

    async def _locked(self, op: Callable[[Connection], Awaitable[T]], name: str | None) -> T:
        psycopg = _psycopg()
        async with self._lock:
            try:
                return await op(await self._connect())
            except psycopg.Error as exc:
                message = str(exc).strip() or type(exc).__name__
                raise CheckpointError(message, path=self._where, name=name) from exc

    async def _connect(self) -> Connection:
        connection = self._connection
        if connection is not None and not connection.closed:
            return connection
        if self._closed:
            raise RuntimeError(f"the PostgresStore {self._where!r} is closed")
        from psycopg import AsyncConnection

        connection = await AsyncConnection.connect(self._conninfo, autocommit=True)
        try:
            await _migrate(connection, self._schema, self._where)
        except BaseException:
            await connection.close()
            raise
        self._connection = connection
        return connection

    def _sql(
        self, text: LiteralString, *, table: str | None = None, **parts: Composable
    ) -> Composed:
        """``text`` with ``{s}`` the store's schema, ``{table}`` a table, and other ``parts``."""
        from psycopg import sql

        if table is not None:
            parts["table"] = sql.Identifier(table)
        return sql.SQL(text).format(s=sql.Identifier(self._schema), **parts)

    async def _registered(
        self, connection: Connection, table: str, name: str | None
    ) -> TableShape | None:
        # One statement, so one snapshot: read in two, a table another save
        # created and registered in between would look unregistered.
        cursor = await connection.execute(
            self._sql(
                "SELECT t.columns, t.types, EXISTS (SELECT 1 FROM pg_catalog.pg_class c "
                "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = %s AND c.relname = %s) "
                "FROM (SELECT 1) AS one LEFT JOIN {s}.sink_tables t ON t.name = %s"
            ),
            (self._schema, table, table),
        )
        row = await cursor.fetchone()
        assert row is not None  # one row, whatever the tables hold
        columns, types, taken = row
        if columns is not None:
            try:
                return TableShape.from_json(columns, types)
            except ValueError as exc:
                message = f"sink table {table!r}: {exc}"
                raise CheckpointError(message, path=self._where, name=name) from None
        if taken:
            raise CheckpointError(
                f"sink table {table!r}: schema {self._schema!r} has a relation of that name "
                "that is not a sink table of this store",
                path=self._where,
                name=name,
            )
        return None

    # -- the protocol --------------------------------------------------------

    async def load(self, name: str) -> Checkpoint | None:
        """The newest checkpoint of run ``name``, or ``None``.

        Raises:
            CheckpointError: The newest row cannot be read.
        """
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
        """Store ``checkpoint`` and ``writes`` in one transaction (see `Store.save`).

        Raises:
            StaleCheckpointError: ``expect`` is not the newest sequence number.
            CheckpointError: A sink table does not fit the rows, or the
                database cannot be written. Either way nothing was written.
        """
        encoded = encoded_save(checkpoint, writes, expect, self._codec, self._text)
        name, sequence, expected = encoded.name, encoded.sequence, encoded.expected
        form, payload, checksum = encoded.record

        async def write(connection: Connection) -> None:
            async with connection.transaction():
                await connection.execute(
                    "SELECT pg_advisory_xact_lock(%s, %s)",
                    (_LOCK_RUN, _lock_key(f"{self._schema}.{name}")),
                )
                if expected is not None:
                    cursor = await connection.execute(
                        self._sql(
                            "SELECT sequence FROM {s}.checkpoints WHERE name = %s "
                            "ORDER BY id DESC LIMIT 1"
                        ),
                        (name,),
                    )
                    row = await cursor.fetchone()
                    found = 0 if row is None else int(row[0])
                    if found != expected:
                        raise stale(expected, found, path=self._where, name=name)
                await connection.execute(
                    self._sql(
                        "INSERT INTO {s}.checkpoints (name, sequence, format, payload, checksum) "
                        "VALUES (%s, %s, %s, %s, %s)"
                    ),
                    (name, sequence, form, payload.decode(), checksum),
                )
                await connection.execute(
                    self._sql(
                        "DELETE FROM {s}.checkpoints WHERE name = %s AND id NOT IN "
                        "(SELECT id FROM {s}.checkpoints WHERE name = %s ORDER BY id DESC LIMIT %s)"
                    ),
                    (name, name, self._keep),
                )
                if encoded.letters:
                    async with connection.cursor() as cursor:
                        await cursor.executemany(
                            self._sql(
                                "INSERT INTO {s}.dead_letters (name, checkpoint, stage, idx, "
                                "format, payload, checksum) VALUES (%s, %s, %s, %s, %s, %s, %s)"
                            ),
                            encoded.letters,
                        )
                await self._insert_all(connection, encoded.tables, name, sequence)

        await self._call(write, name)

    def _text(self, text: str) -> tuple[str, str, str]:
        form, payload, checksum = self._codec.encode(text)
        return form, payload.decode(), checksum

    async def _insert_all(
        self, connection: Connection, tables: list[TableRows], name: str, sequence: int
    ) -> None:
        shapes: dict[str, TableShape | None] = {}
        for rows in tables:
            if rows.table not in shapes:
                shapes[rows.table] = await self._registered(connection, rows.table, name)
        missing = sorted(table for table, shape in shapes.items() if shape is None)
        for table in missing:  # in order: two saves creating the same tables cannot deadlock
            await connection.execute(
                "SELECT pg_advisory_xact_lock(%s, %s)",
                (_LOCK_TABLE, _lock_key(f"{self._schema}.{table}")),
            )
            shapes[table] = await self._registered(connection, table, name)  # made meanwhile?
        for rows in tables:
            existing = shapes[rows.table]
            try:
                shape = shape_for(rows, existing)
            except TableMismatch as exc:
                raise CheckpointError(str(exc), path=self._where, name=name) from None
            if existing is None:
                await self._create(connection, rows.table, shape)
                shapes[rows.table] = shape
            if not rows.rows:
                continue
            from psycopg import sql

            async with connection.cursor() as cursor:
                await cursor.executemany(
                    self._sql(
                        "INSERT INTO {s}.{table} (run, checkpoint, {columns}) "
                        "VALUES (%s, %s, {marks})",
                        table=rows.table,
                        columns=sql.SQL(", ").join(map(sql.Identifier, shape.columns)),
                        marks=sql.SQL(", ").join(sql.Placeholder() for _ in shape.columns),
                    ),
                    [(name, sequence, *row) for row in rows.rows],
                )

    async def _create(self, connection: Connection, table: str, shape: TableShape) -> None:
        from psycopg import sql

        columns = sql.SQL(", ").join(
            sql.SQL("{} {}").format(sql.Identifier(column), sql.SQL(_PG_TYPES[kind]))
            for column, kind in zip(shape.columns, shape.types, strict=True)
        )
        await connection.execute(
            self._sql(
                "CREATE TABLE {s}.{table} (id BIGSERIAL PRIMARY KEY, run TEXT NOT NULL, "
                "checkpoint BIGINT NOT NULL, {columns})",
                table=table,
                columns=columns,
            )
        )
        await connection.execute(
            self._sql("INSERT INTO {s}.sink_tables (name, columns, types) VALUES (%s, %s, %s)"),
            (table, *shape.to_json()),
        )

    async def history(self, name: str, *, limit: int = 10) -> tuple[Checkpoint, ...]:
        """The newest ``limit`` checkpoints of run ``name`` (at most ``keep``), newest first.

        Raises:
            CheckpointError: One of those rows cannot be read.
        """
        check_name(name)
        check_count(limit, "limit")

        async def read(connection: Connection) -> list[Checkpoint]:
            cursor = await connection.execute(
                self._sql(
                    "SELECT sequence, format, payload, checksum FROM {s}.checkpoints "
                    "WHERE name = %s ORDER BY id DESC LIMIT %s"
                ),
                (name, limit),
            )
            return [
                self._codec.checkpoint(name, sequence, form, _bytes(payload), checksum)
                for sequence, form, payload, checksum in await cursor.fetchall()
            ]

        return tuple(await self._call(read, name))

    async def dead_letters(self, name: str) -> tuple[DeadLetterRecord, ...]:
        """Every dead letter of run ``name``, in the order they were written.

        Raises:
            CheckpointError: One of them cannot be read.
        """
        check_name(name)

        async def read(connection: Connection) -> list[DeadLetterRecord]:
            cursor = await connection.execute(
                self._sql(
                    "SELECT checkpoint, stage, idx, format, payload, checksum "
                    "FROM {s}.dead_letters WHERE name = %s ORDER BY id"
                ),
                (name,),
            )
            return [
                self._codec.letter(name, sequence, stage, index, form, _bytes(payload), checksum)
                for sequence, stage, index, form, payload, checksum in await cursor.fetchall()
            ]

        return tuple(await self._call(read, name))

    async def table_rows(self, table: str, *, run: str | None = None) -> tuple[dict[str, Any], ...]:
        """The rows of sink table ``table`` (of run ``run`` only, if given), in insertion order."""
        check_table(table)
        wanted = check_run(run)

        async def read(connection: Connection) -> list[dict[str, Any]]:
            async with connection.transaction():
                shape = await self._registered(connection, table, wanted)
                if shape is None:
                    return []
                from psycopg import sql

                columns = ("id", "run", "checkpoint", *shape.columns)
                names = sql.SQL(", ").join(map(sql.Identifier, columns))
                if wanted is None:
                    query = self._sql(
                        "SELECT {names} FROM {s}.{table} ORDER BY id", table=table, names=names
                    )
                    cursor = await connection.execute(query)
                else:
                    query = self._sql(
                        "SELECT {names} FROM {s}.{table} WHERE run = %s ORDER BY id",
                        table=table,
                        names=names,
                    )
                    cursor = await connection.execute(query, (wanted,))
                rows = await cursor.fetchall()
            return [dict(zip(columns, row, strict=True)) for row in rows]

        return tuple(await self._call(read, wanted))

    async def delete(self, name: str) -> None:
        """Forget every checkpoint and dead letter of run ``name`` (its sink rows stay)."""
        check_name(name)

        async def remove(connection: Connection) -> None:
            async with connection.transaction():
                await connection.execute(
                    "SELECT pg_advisory_xact_lock(%s, %s)",
                    (_LOCK_RUN, _lock_key(f"{self._schema}.{name}")),
                )
                for table in ("checkpoints", "dead_letters"):
                    await connection.execute(
                        self._sql("DELETE FROM {s}.{table} WHERE name = %s", table=table), (name,)
                    )

        await self._call(remove, name)

    async def close(self) -> None:
        """Close the connection once the calls under way are done; idempotent."""
        if self._closed:
            return
        self._closed = True

        async def close_connection() -> None:
            async with self._lock:  # after the calls already queued
                if self._connection is not None:
                    await self._connection.close()
                    self._connection = None

        await shielded(start_awaitable(close_connection()))


def _bytes(payload: object) -> object:
    """A text payload as the bytes its checksum was computed over (anything else as it is)."""
    return payload.encode() if isinstance(payload, str) else payload
