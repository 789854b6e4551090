"""PostgresStore's own: arguments, schema, damaged rows (its contract: test_store_contract.py)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from psycopg import sql

from streamkit import Checkpoint, CheckpointError, PostgresStore
from tests.servers import fresh_schema

if TYPE_CHECKING:
    from tests.servers import PostgresServer


def execute(server: PostgresServer, statement: str) -> None:
    """Run the test's own SQL on the server, outside any store."""
    with psycopg.connect(server.dsn, autocommit=True) as connection:
        connection.execute(statement)  # type: ignore[call-overload]  # not a LiteralString


def test_the_password_is_never_shown() -> None:
    store = PostgresStore("postgresql://app:s3cret@db.internal:5432/runs", schema="jobs")
    assert "s3cret" not in repr(store)
    assert "s3cret" not in store.dsn
    assert store.schema == "jobs"
    assert repr(store) == (
        "PostgresStore('user=app dbname=runs host=db.internal port=5432', schema='jobs', keep=10)"
    )


@pytest.mark.parametrize(
    ("options", "error", "parameter"),
    [
        ({"dsn": None}, TypeError, "dsn"),
        ({"dsn": b"host=x"}, TypeError, "dsn"),
        ({"dsn": "host=x port"}, ValueError, "dsn"),
        ({"schema": "Jobs"}, ValueError, "schema"),
        ({"schema": "1jobs"}, ValueError, "schema"),
        ({"schema": "a" * 64}, ValueError, "schema"),
        ({"schema": 3}, TypeError, "schema"),
        ({"schema": "pg_jobs"}, ValueError, "schema"),
        ({"schema": "information_schema"}, ValueError, "schema"),
        ({"key": 3}, TypeError, "key"),
        ({"key": b"too short"}, ValueError, "key"),
    ],
)
def test_bad_arguments_name_the_parameter(
    options: dict[str, Any], error: type[Exception], parameter: str
) -> None:
    arguments: dict[str, Any] = {"dsn": "host=127.0.0.1", **options}
    dsn = arguments.pop("dsn")
    with pytest.raises(error, match=rf"^{parameter} "):
        PostgresStore(dsn, **arguments)


def test_without_psycopg_the_error_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # the import then fails
    with pytest.raises(ImportError, match=r"streamkit\[postgres\]"):
        PostgresStore("host=127.0.0.1")


async def test_an_unreachable_server_gives_a_checkpoint_error(postgres: PostgresServer) -> None:
    dsn = f"host=127.0.0.1 port={postgres.port} user=postgres dbname=no_such_database"
    async with PostgresStore(dsn) as store:
        with pytest.raises(CheckpointError, match="no_such_database") as raised:
            await store.load("job")
    assert raised.value.name == "job"
    assert raised.value.path == store.dsn


async def test_the_schema_records_its_version(postgres: PostgresServer) -> None:
    schema = fresh_schema()
    async with PostgresStore(postgres.dsn, schema=schema) as store:
        await store.save(Checkpoint("job"))
    with psycopg.connect(postgres.dsn) as connection:
        rows = connection.execute(
            sql.SQL("SELECT key, value FROM {}.meta ORDER BY key").format(sql.Identifier(schema))
        ).fetchall()
    assert rows == [("application", "streamkit"), ("schema_version", "1")]


async def test_a_newer_schema_is_refused(postgres: PostgresServer) -> None:
    schema = fresh_schema()
    async with PostgresStore(postgres.dsn, schema=schema) as store:
        await store.save(Checkpoint("job"))
    execute(postgres, f"UPDATE {schema}.meta SET value = '99' WHERE key = 'schema_version'")
    async with PostgresStore(postgres.dsn, schema=schema) as store:
        with pytest.raises(CheckpointError, match="schema version 99 was written by a newer"):
            await store.load("job")


async def test_another_applications_schema_is_left_alone(postgres: PostgresServer) -> None:
    schema = fresh_schema()
    execute(postgres, f"CREATE SCHEMA {schema}")
    execute(postgres, f"CREATE TABLE {schema}.customers (id int)")
    async with PostgresStore(postgres.dsn, schema=schema) as store:
        with pytest.raises(CheckpointError, match=r"not a streamkit checkpoint store.*customers"):
            await store.save(Checkpoint("job"))
    with psycopg.connect(postgres.dsn) as connection:
        tables = connection.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (schema,)
        ).fetchall()
    assert tables == [("customers",)]


async def test_an_empty_existing_schema_is_used(postgres: PostgresServer) -> None:
    schema = fresh_schema()
    execute(postgres, f"CREATE SCHEMA {schema}")
    async with PostgresStore(postgres.dsn, schema=schema) as store:
        await store.save(Checkpoint("job", position=3))
        loaded = await store.load("job")
    assert loaded is not None
    assert loaded.position == 3


@pytest.mark.parametrize(
    ("statement", "message"),
    [
        ("UPDATE {s}.checkpoints SET payload = replace(payload, '3', '4')", "checksum"),
        ("UPDATE {s}.checkpoints SET sequence = 8", "sequence column"),
        ("UPDATE {s}.checkpoints SET format = 'xml'", "unknown payload format"),
        ("UPDATE {s}.checkpoints SET name = 'other' WHERE name = 'job'", None),
    ],
)
async def test_a_damaged_row_gives_a_checkpoint_error(
    postgres: PostgresServer, statement: str, message: str | None
) -> None:
    schema = fresh_schema()
    async with PostgresStore(postgres.dsn, schema=schema) as store:
        await store.save(Checkpoint("job", position=3, sequence=1))
    execute(postgres, statement.format(s=schema))
    async with PostgresStore(postgres.dsn, schema=schema) as store:
        if message is None:  # a row moved to another run belongs to that run's name
            with pytest.raises(CheckpointError, match="holds a checkpoint of run 'job'"):
                await store.load("other")
            return
        with pytest.raises(CheckpointError, match=message) as raised:
            await store.load("job")
        assert raised.value.name == "job"
