"""Throwaway servers for the tests: PostgreSQL, Redis and Kafka on free ports of 127.0.0.1.

Each server is started once per test session in a temporary folder and
removed at the end: PostgreSQL with ``initdb`` and ``pg_ctl`` (trust
authentication, ``fsync`` off: the tests kill clients, never the server),
Redis as a ``redis-server`` subprocess with persistence off, Kafka as the
mock cluster of librdkafka (the library inside the confluent-kafka wheel),
which speaks the Kafka protocol from a thread of the test process. PostgreSQL
refuses to run as root, so as root both of its programs run as ``nobody``.

Tests ask for the function-scoped fixtures ``postgres``, ``redis`` and
``kafka``; the
tests that do carry the ``server`` marker (``pytest -m server`` runs only
them; so do tests that mark themselves, as the Store contract's PostgreSQL
cases). A missing server binary skips them with the reason, unless the
environment sets ``STREAMKIT_REQUIRE_SERVERS=1`` (as ``.ci/run`` does): then
it is a failure. The terminal summary says how many tests each server
served, so a CI log shows they ran; with ``STREAMKIT_SERVER_REPORT=FILE``
the counts are also written to ``FILE`` as JSON.

``conftest.py`` imports the fixtures and hooks from here.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import dataclasses
import glob
import itertools
import json
import os
import pwd
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator

REQUIRE_SERVERS = os.environ.get("STREAMKIT_REQUIRE_SERVERS") == "1"
"""Whether a missing server fails the tests that need it (instead of skipping them)."""

SERVER_FIXTURES = frozenset(
    {"postgres", "postgres_session", "redis", "redis_session", "kafka", "kafka_session"}
)
"""The fixtures that make a test server-backed (it gets the ``server`` marker)."""

_START_SECONDS = 60.0

SERVERS = ("postgresql", "redis", "kafka")

# Per server: what became of the tests that used it, why it is missing.
_OUTCOMES: dict[str, collections.Counter[str]] = {
    server: collections.Counter() for server in SERVERS
}
_MISSING: dict[str, str] = {}
_USES = "streamkit-server"
"""The user property naming the server a test used: it travels with the test's reports, also
from the worker processes of pytest-xdist to the one that counts."""


def _used(request: pytest.FixtureRequest, server: str) -> None:
    request.node.user_properties.append((_USES, server))


def _unavailable(server: str, reason: str) -> None:
    _MISSING[server] = reason
    if REQUIRE_SERVERS:
        pytest.fail(f"{server} is required (STREAMKIT_REQUIRE_SERVERS=1) but {reason}")
    pytest.skip(f"{server} unavailable: {reason}")


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on (as of now)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


# --------------------------------------------------------------------------- PostgreSQL


@dataclasses.dataclass(frozen=True)
class PostgresServer:
    """A running PostgreSQL server: where it listens and how to reach it."""

    port: int
    bindir: Path
    folder: Path

    @property
    def dsn(self) -> str:
        """The connection string of its ``postgres`` database, as superuser ``postgres``."""
        return f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"


def postgres_bindir() -> Path | None:
    """Where ``initdb`` and ``pg_ctl`` are: ``pg_config --bindir``, the PATH, or Debian's place."""
    candidates: list[str] = []
    if os.environ.get("STREAMKIT_PG_BINDIR"):
        candidates.append(os.environ["STREAMKIT_PG_BINDIR"])
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        found = subprocess.run(
            [pg_config, "--bindir"], capture_output=True, text=True, check=False, timeout=30
        )
        candidates.append(found.stdout.strip())
    initdb = shutil.which("initdb")
    if initdb is not None:
        candidates.append(str(Path(initdb).resolve().parent))

    def version(path: str) -> int:
        name = Path(path).parent.name
        return int(name) if name.isdigit() else 0

    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)
    for candidate in candidates:
        folder = Path(candidate)
        if all(os.access(folder / tool, os.X_OK) for tool in ("initdb", "pg_ctl", "postgres")):
            return folder
    return None


def _as_unprivileged() -> dict[str, Any]:
    """``subprocess`` options that run a program as ``nobody`` when we are root.

    PostgreSQL refuses to run as root: as root, ``initdb`` and ``pg_ctl`` (and
    so the server) run as ``nobody``, in a folder that ``nobody`` owns.
    """
    if os.geteuid() != 0:
        return {}
    nobody = pwd.getpwnam("nobody")
    return {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}


def _open_to_others(folder: Path) -> bool:
    """Whether every folder above ``folder`` lets other users through (``o+x``)."""
    return all(os.stat(parent).st_mode & stat.S_IXOTH for parent in folder.resolve().parents)


def _temporary_folder(prefix: str, *, for_others: bool) -> Path:
    """A new temporary folder; one that another user can reach when ``for_others``.

    The default temporary directory may lie under a private home (``TMPDIR``
    under ``/root``): then the folder goes to ``/tmp``.
    """
    parent = Path(tempfile.gettempdir())
    if for_others and not _open_to_others(parent / "child"):
        parent = Path("/tmp")
    return Path(tempfile.mkdtemp(prefix=prefix, dir=parent))


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """Start a throwaway PostgreSQL server; stop it and remove its files on exit."""
    bindir = postgres_bindir()
    if bindir is None:
        _unavailable(
            "postgresql",
            "initdb and pg_ctl were not found (pg_config --bindir, PATH, /usr/lib/postgresql)",
        )
        raise AssertionError("unreachable")  # pragma: no cover
    user = _as_unprivileged()
    folder = _temporary_folder("streamkit-pg-", for_others=bool(user))
    data = folder / "data"
    if user:
        os.chown(folder, user["user"], user["group"])

    def run(*command: str | Path) -> None:
        done = subprocess.run(
            [str(part) for part in command],
            capture_output=True,
            text=True,
            check=False,
            timeout=_START_SECONDS,
            cwd=folder,
            **user,
        )
        if done.returncode != 0:
            log = folder / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(
                f"{command[0]} failed ({done.returncode}):\n{done.stdout}{done.stderr}{tail}"
            )

    try:
        run(bindir / "initdb", "-D", data, "-A", "trust", "-U", "postgres", "-E", "UTF8", "-N")
        port = _start_postgres(run, bindir, folder, data)
        try:
            yield PostgresServer(port=port, bindir=bindir, folder=folder)
        finally:
            run(bindir / "pg_ctl", "-D", data, "stop", "-m", "immediate", "-w")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _start_postgres(run: Any, bindir: Path, folder: Path, data: Path) -> int:
    """Start the server on a free port (another try if the port was taken meanwhile)."""
    for attempt in range(3):
        port = free_port()
        options = (
            f"-p {port} -c listen_addresses=127.0.0.1 -k {folder} -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        try:
            run(
                *(bindir / "pg_ctl", "-D", data, "-l", folder / "server.log", "-o", options),
                *("-w", "-t", str(int(_START_SECONDS)), "start"),
            )
        except RuntimeError:
            if attempt == 2:
                raise
        else:
            return port
    raise AssertionError("unreachable")  # pragma: no cover


_schemas = itertools.count(1)


def fresh_schema(prefix: str = "t") -> str:
    """A PostgreSQL schema name no other test of this session uses."""
    return f"{prefix}{os.getpid()}_{next(_schemas)}"


# --------------------------------------------------------------------------- Redis


@dataclasses.dataclass(frozen=True)
class RedisServer:
    """A running Redis server."""

    port: int
    pid: int
    folder: Path
    host: str = "127.0.0.1"

    @property
    def url(self) -> str:
        """Its ``redis://`` URL."""
        return f"redis://{self.host}:{self.port}/0"


def _redis_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as connection:
            connection.sendall(b"PING\r\n")
            return connection.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@contextlib.contextmanager
def redis_server() -> Iterator[RedisServer]:
    """Start a throwaway ``redis-server``; stop it by its pid and remove its folder on exit."""
    binary = shutil.which("redis-server")
    if binary is None:
        _unavailable("redis", "redis-server was not found on PATH")
        raise AssertionError("unreachable")  # pragma: no cover
    folder = _temporary_folder("streamkit-redis-", for_others=False)
    try:
        for attempt in range(3):  # another port if the free one was taken meanwhile
            port = free_port()
            process = _start_redis(binary, port, folder)
            if process is not None:
                break
            if attempt == 2:
                output = (folder / "server.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server did not start:\n{output}")
        try:
            yield RedisServer(port=port, pid=process.pid, folder=folder)
        finally:
            _stop(process)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _start_redis(binary: str, port: int, folder: Path) -> subprocess.Popen[bytes] | None:
    """A ``redis-server`` answering on ``port``, or ``None`` (stopped) if it did not start."""
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder)]
    command += ["--save", "", "--appendonly", "no", "--daemonize", "no"]
    with (folder / "server.log").open("ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=folder)
    deadline = time.monotonic() + _START_SECONDS
    while not _redis_answers(port):
        if process.poll() is not None or time.monotonic() > deadline:
            _stop(process)
            return None
        time.sleep(0.02)
    return process


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Stop a server by its pid (SIGTERM, then SIGKILL) and reap it."""
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:  # pragma: no cover - it ignored SIGTERM
        process.kill()
        process.wait()


# --------------------------------------------------------------------------- Kafka


class KafkaCluster:
    """librdkafka's mock Kafka cluster, one broker, in this process (a C thread of its own).

    It speaks the real protocol on 127.0.0.1 (produce, fetch, consumer
    groups, offset commits); topics are made with `create_topic`, through
    librdkafka's mock API, since the mock answers no CreateTopics request
    (and auto-creates topics with 4 partitions). Its first group join is
    immediate (the initial rebalance delay is set to 0); a consumer that
    left is forgotten only after its session timeout.
    """

    def __init__(self, library: str) -> None:
        lib = ctypes.CDLL(library)
        lib.rd_kafka_conf_new.restype = ctypes.c_void_p
        lib.rd_kafka_conf_set.argtypes = [ctypes.c_void_p, *[ctypes.c_char_p] * 3, ctypes.c_size_t]
        lib.rd_kafka_new.restype = ctypes.c_void_p
        lib.rd_kafka_new.argtypes = [
            ctypes.c_int,
            ctypes.c_void_p,
            ctypes.c_char_p,
            ctypes.c_size_t,
        ]
        lib.rd_kafka_handle_mock_cluster.restype = ctypes.c_void_p
        lib.rd_kafka_handle_mock_cluster.argtypes = [ctypes.c_void_p]
        lib.rd_kafka_mock_cluster_bootstraps.restype = ctypes.c_char_p
        lib.rd_kafka_mock_cluster_bootstraps.argtypes = [ctypes.c_void_p]
        lib.rd_kafka_mock_topic_create.argtypes = [ctypes.c_void_p, ctypes.c_char_p] + [
            ctypes.c_int
        ] * 2
        lib.rd_kafka_mock_group_initial_rebalance_delay_ms.argtypes = [
            ctypes.c_void_p,
            ctypes.c_int32,
        ]
        lib.rd_kafka_destroy.argtypes = [ctypes.c_void_p]
        error = ctypes.create_string_buffer(512)
        conf = lib.rd_kafka_conf_new()
        for name, value in (("test.mock.num.brokers", "1"), ("log_level", "0")):
            if lib.rd_kafka_conf_set(conf, name.encode(), value.encode(), error, 512) != 0:
                raise RuntimeError(f"librdkafka refused {name}: {error.value.decode()}")
        handle = lib.rd_kafka_new(0, conf, error, 512)  # a producer handle owns the cluster
        if not handle:
            raise RuntimeError(f"librdkafka did not start its mock cluster: {error.value.decode()}")
        self._lib = lib
        self._handle: int | None = handle
        self._cluster = lib.rd_kafka_handle_mock_cluster(handle)
        self.bootstrap_servers: str = lib.rd_kafka_mock_cluster_bootstraps(self._cluster).decode()
        """``host:port`` of its broker."""
        lib.rd_kafka_mock_group_initial_rebalance_delay_ms(self._cluster, 0)
        self._topics = itertools.count(1)

    def create_topic(self, partitions: int, prefix: str = "topic") -> str:
        """A new topic of ``partitions`` partitions, with a name no other test uses."""
        name = f"{prefix}-{os.getpid()}-{next(self._topics)}"
        code = self._lib.rd_kafka_mock_topic_create(self._cluster, name.encode(), partitions, 1)
        if code != 0:
            raise RuntimeError(f"the mock cluster did not create topic {name!r} (error {code})")
        return name

    def close(self) -> None:
        """Stop the cluster."""
        handle, self._handle = self._handle, None
        if handle is not None:
            self._lib.rd_kafka_destroy(handle)


def librdkafka() -> str | None:
    """The librdkafka of the confluent-kafka wheel, or None without confluent-kafka."""
    try:
        import confluent_kafka
    except ImportError:
        return None
    folder = Path(confluent_kafka.__file__).parent
    found = sorted(glob.glob(str(folder.parent / "confluent_kafka.libs" / "librdkafka*.so*")))
    return found[0] if found else None


@contextlib.contextmanager
def kafka_cluster() -> Iterator[KafkaCluster]:
    """Start librdkafka's mock cluster; stop it on exit."""
    library = librdkafka()
    if library is None:
        _unavailable("kafka", "confluent-kafka (and its librdkafka) is not installed")
        raise AssertionError("unreachable")  # pragma: no cover
    try:
        cluster = KafkaCluster(library)
    except (OSError, RuntimeError) as exc:
        _unavailable("kafka", f"librdkafka's mock cluster did not start ({exc})")
        raise AssertionError("unreachable") from exc  # pragma: no cover
    try:
        yield cluster
    finally:
        cluster.close()


_groups = itertools.count(1)


def fresh_group(prefix: str = "g") -> str:
    """A consumer group id no other test uses (re-joining a group just left is slow)."""
    return f"{prefix}-{os.getpid()}-{next(_groups)}"


# --------------------------------------------------------------------------- fixtures and hooks


@pytest.fixture(scope="session")
def postgres_session() -> Iterator[PostgresServer]:
    """The session's PostgreSQL server (use ``postgres``, which counts the tests)."""
    with postgres_server() as server:
        yield server


@pytest.fixture
def postgres(postgres_session: PostgresServer, request: pytest.FixtureRequest) -> PostgresServer:
    """The session's PostgreSQL server, for this test."""
    _used(request, "postgresql")
    return postgres_session


@pytest.fixture(scope="session")
def redis_session() -> Iterator[RedisServer]:
    """The session's Redis server (use ``redis``, which counts the tests)."""
    with redis_server() as server:
        yield server


@pytest.fixture
def redis(redis_session: RedisServer, request: pytest.FixtureRequest) -> RedisServer:
    """The session's Redis server, for this test."""
    _used(request, "redis")
    return redis_session


@pytest.fixture(scope="session")
def kafka_session() -> Iterator[KafkaCluster]:
    """The session's mock Kafka cluster (use ``kafka``, which counts the tests)."""
    with kafka_cluster() as cluster:
        yield cluster


@pytest.fixture
def kafka(kafka_session: KafkaCluster, request: pytest.FixtureRequest) -> KafkaCluster:
    """The session's mock Kafka cluster, for this test."""
    _used(request, "kafka")
    return kafka_session


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests that ask for a server's fixture ``server``."""
    for item in items:
        if SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.server)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Count what became of the tests that used a server, and of those that had none."""
    used = {value for name, value in report.user_properties if name == _USES}
    for server in SERVERS:
        if server in used and (report.when == "call" or report.failed):
            _OUTCOMES[server][report.outcome] += 1
        elif report.skipped and f"{server} unavailable" in str(report.longrepr):
            _OUTCOMES[server]["skipped"] += 1
        elif report.failed and f"{server} is required" in str(report.longrepr):
            _OUTCOMES[server]["failed"] += 1


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """One line per server: how many tests it served, or why it was missing."""
    report = os.environ.get("STREAMKIT_SERVER_REPORT")
    if report and not os.environ.get("PYTEST_XDIST_WORKER"):
        counts = {server: dict(outcomes) for server, outcomes in _OUTCOMES.items()}
        Path(report).write_text(json.dumps({"outcomes": counts, "missing": _MISSING}) + "\n")
    if not any(_OUTCOMES.values()) and not _MISSING:
        return
    terminalreporter.write_sep("-", "server-backed tests")
    for server, outcomes in _OUTCOMES.items():
        counts = ", ".join(f"{number} {outcome}" for outcome, number in sorted(outcomes.items()))
        missing = f" ({_MISSING[server]})" if server in _MISSING else ""
        terminalreporter.write_line(f"{server}: {counts or 'no test'}{missing}")
