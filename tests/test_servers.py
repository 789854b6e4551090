"""The throwaway servers of tests/servers.py: they answer, they stop, and a missing one is reported.

The Redis smoke test speaks the commands the Redis Streams source relies on
(XADD, XREADGROUP, XACK, XPENDING) through redis-py's asyncio client.
"""

from __future__ import annotations

import os
import pwd
from typing import TYPE_CHECKING

import pytest

from tests import servers

if TYPE_CHECKING:
    from pathlib import Path

    from tests.servers import PostgresServer, RedisServer


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# --------------------------------------------------------------------------- Redis


async def test_redis_answers_and_round_trips_a_stream(
    redis: RedisServer, request: pytest.FixtureRequest
) -> None:
    from redis.asyncio import Redis

    assert request.node.get_closest_marker("server") is not None  # `pytest -m server` runs it

    client = Redis.from_url(redis.url)
    try:
        assert await client.ping() is True
        stream, group = "smoke:events", "workers"
        await client.delete(stream)
        await client.xgroup_create(stream, group, id="0", mkstream=True)
        sent = [await client.xadd(stream, {"n": str(n), "text": f"zoë {n}"}) for n in range(3)]
        answer = await client.xreadgroup(group, "worker-1", {stream: ">"}, count=10)
        [(name, entries)] = answer
        assert name == stream.encode()
        assert [entry_id for entry_id, _ in entries] == sent
        assert [fields for _, fields in entries] == [
            {b"n": str(n).encode(), b"text": f"zoë {n}".encode()} for n in range(3)
        ]
        # Read but not acknowledged: pending on worker-1, and not handed out again.
        pending = await client.xpending(stream, group)
        assert (pending["pending"], pending["consumers"]) == (
            3,
            [{"name": b"worker-1", "pending": 3}],
        )
        assert await client.xreadgroup(group, "worker-2", {stream: ">"}, count=10) == []
        assert await client.xack(stream, group, *sent[:2]) == 2
        assert (await client.xpending(stream, group))["pending"] == 1
    finally:
        await client.aclose()


def test_a_redis_server_is_stopped_and_removed_on_exit() -> None:
    with servers.redis_server() as server:
        assert _alive(server.pid)
        assert server.folder.is_dir()
    assert not _alive(server.pid)
    assert not server.folder.exists()
    assert not servers._redis_answers(server.port)


# --------------------------------------------------------------------------- PostgreSQL


async def test_postgres_answers_and_runs_unprivileged(
    postgres: PostgresServer, request: pytest.FixtureRequest
) -> None:
    import psycopg

    assert request.node.get_closest_marker("server") is not None

    async with await psycopg.AsyncConnection.connect(postgres.dsn) as connection:
        cursor = await connection.execute("SELECT current_user, current_setting('data_directory')")
        row = await cursor.fetchone()
    assert row is not None
    user, data = row
    assert user == "postgres"
    owner = os.stat(data).st_uid
    if os.geteuid() == 0:  # PostgreSQL refuses root: the fixture runs it as nobody
        assert owner == pwd.getpwnam("nobody").pw_uid
    else:
        assert owner == os.geteuid()


def test_a_postgres_server_is_stopped_and_removed_on_exit() -> None:
    import psycopg

    with servers.postgres_server() as server, psycopg.connect(server.dsn) as connection:
        assert connection.execute("SELECT 1").fetchone() == (1,)
    assert not server.folder.exists()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(server.dsn, connect_timeout=5)


# --------------------------------------------------------------------------- a missing server


@pytest.fixture
def no_redis_on_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(servers, "_MISSING", {})  # keep the summary about the real servers


@pytest.fixture
def no_postgres(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(servers, "postgres_bindir", lambda: None)
    monkeypatch.setattr(servers, "_MISSING", {})


@pytest.mark.usefixtures("no_redis_on_path")
def test_a_missing_redis_skips_its_tests(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(servers, "REQUIRE_SERVERS", False)
    with (
        pytest.raises(pytest.skip.Exception, match="redis unavailable: redis-server was not"),
        servers.redis_server(),
    ):
        pass
    assert servers._MISSING == {"redis": "redis-server was not found on PATH"}


@pytest.mark.usefixtures("no_redis_on_path")
def test_a_missing_redis_fails_its_tests_when_servers_are_required(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(servers, "REQUIRE_SERVERS", True)
    with pytest.raises(pytest.fail.Exception, match="redis is required"), servers.redis_server():
        pass


@pytest.mark.usefixtures("no_postgres")
def test_a_missing_postgres_skips_its_tests(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(servers, "REQUIRE_SERVERS", False)
    with (
        pytest.raises(pytest.skip.Exception, match="postgresql unavailable: initdb"),
        servers.postgres_server(),
    ):
        pass


@pytest.mark.usefixtures("no_postgres")
def test_a_missing_postgres_fails_its_tests_when_servers_are_required(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(servers, "REQUIRE_SERVERS", True)
    with (
        pytest.raises(pytest.fail.Exception, match=r"STREAMKIT_REQUIRE_SERVERS=1"),
        servers.postgres_server(),
    ):
        pass


def test_a_test_without_a_server_is_not_marked(request: pytest.FixtureRequest) -> None:
    assert request.node.get_closest_marker("server") is None


@pytest.fixture
def no_confluent_kafka(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(servers, "librdkafka", lambda: None)
    monkeypatch.setattr(servers, "_MISSING", {})


@pytest.mark.usefixtures("no_confluent_kafka")
def test_a_missing_kafka_skips_its_tests(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(servers, "REQUIRE_SERVERS", False)
    with pytest.raises(pytest.skip.Exception, match="kafka unavailable"), servers.kafka_cluster():
        pass


@pytest.mark.usefixtures("no_confluent_kafka")
def test_a_missing_kafka_fails_its_tests_when_servers_are_required(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(servers, "REQUIRE_SERVERS", True)
    with pytest.raises(pytest.fail.Exception, match="kafka is required"), servers.kafka_cluster():
        pass


def test_a_mock_cluster_that_does_not_start_fails_when_servers_are_required(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(servers, "_MISSING", {})
    monkeypatch.setattr(servers, "REQUIRE_SERVERS", True)
    # A library that is not librdkafka: loading it fails as a broken wheel's would.
    broken = tmp_path / "librdkafka.so.1"
    broken.write_bytes(b"not a shared library")
    monkeypatch.setattr(servers, "librdkafka", lambda: str(broken))
    with (
        pytest.raises(pytest.fail.Exception, match="mock cluster did not start"),
        servers.kafka_cluster(),
    ):
        pass
