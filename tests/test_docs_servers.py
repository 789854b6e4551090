"""Documentation examples that need a server run against the test suite's own.

docs/persistence.md shows `PostgresStore` connecting to a server the reader
has, docs/deploy.md a worker of a Redis stream and one of a Kafka topic; the
blocks are marked ``<!-- no-test -->`` for tests/test_docs.py, and run here
instead, with their connection strings replaced by a fresh database of the
throwaway PostgreSQL server, the throwaway Redis server's URL and the Kafka
mock cluster's address (with a topic and a group of the test's own), and
their output compared with the text block after them.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import os
from typing import TYPE_CHECKING

from tests.servers import fresh_group
from tests.test_docs import DOCS, _python_blocks

if TYPE_CHECKING:
    from tests.servers import KafkaCluster, PostgresServer, RedisServer

PAGE = DOCS / "persistence.md"
DOC_DSN = "postgresql://worker@db.internal:5432/pipelines"

_databases = itertools.count(1)


def test_the_postgres_store_example_runs_against_a_real_server(postgres: PostgresServer) -> None:
    import psycopg

    blocks = [block for block in _python_blocks(PAGE) if DOC_DSN in block.code]
    assert len(blocks) == 1, f"{PAGE.name} should have one example connecting to {DOC_DSN}"
    [block] = blocks
    assert block.skipped, "the example cannot run on its own: it is marked <!-- no-test -->"
    assert block.expected_output is not None, "the example is followed by its output"

    database = f"docs{os.getpid()}_{next(_databases)}"
    with psycopg.connect(postgres.dsn, autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {database}")
    dsn = f"postgresql://postgres@127.0.0.1:{postgres.port}/{database}"
    code = compile(block.code.replace(DOC_DSN, dsn), block.where, "exec", dont_inherit=True)
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        exec(code, {"__name__": "docs_persistence_postgres"})  # the documentation's example
    assert output.getvalue().rstrip() == block.expected_output.rstrip()


DEPLOY = DOCS / "deploy.md"
DOC_REDIS = "redis://queue.internal:6379/0"


def test_the_deploy_example_runs_against_real_servers(
    postgres: PostgresServer, redis: RedisServer
) -> None:
    import psycopg

    blocks = [block for block in _python_blocks(DEPLOY) if DOC_REDIS in block.code]
    assert len(blocks) == 1, f"{DEPLOY.name} should have one example connecting to {DOC_REDIS}"
    [block] = blocks
    assert block.skipped, "the example cannot run on its own: it is marked <!-- no-test -->"
    assert block.expected_output is not None, "the example is followed by its output"

    database = f"deploy{os.getpid()}_{next(_databases)}"
    with psycopg.connect(postgres.dsn, autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {database}")
    dsn = f"postgresql://postgres@127.0.0.1:{postgres.port}/{database}"
    text = block.code.replace(DOC_DSN, dsn).replace(DOC_REDIS, redis.url)
    code = compile(text, block.where, "exec", dont_inherit=True)
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        exec(code, {"__name__": "docs_deploy"})  # the documentation's example
    assert output.getvalue().rstrip() == block.expected_output.rstrip()


DOC_KAFKA = '"kafka.internal:9092"'
DOC_TOPIC = 'TOPIC = "orders"'
DOC_GROUP = 'group="billing"'


def test_the_kafka_deploy_example_runs_against_the_mock_cluster(
    postgres: PostgresServer, kafka: KafkaCluster
) -> None:
    import psycopg

    blocks = [block for block in _python_blocks(DEPLOY) if DOC_KAFKA in block.code]
    assert len(blocks) == 1, f"{DEPLOY.name} should have one example connecting to {DOC_KAFKA}"
    [block] = blocks
    assert block.skipped, "the example cannot run on its own: it is marked <!-- no-test -->"
    assert block.expected_output is not None, "the example is followed by its output"
    for text in (DOC_TOPIC, DOC_GROUP, DOC_DSN):
        assert text in block.code, f"the example should have {text}"

    database = f"kafka{os.getpid()}_{next(_databases)}"
    with psycopg.connect(postgres.dsn, autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {database}")
    dsn = f"postgresql://postgres@127.0.0.1:{postgres.port}/{database}"
    text = (
        block.code.replace(DOC_DSN, dsn)
        .replace(DOC_KAFKA, repr(kafka.bootstrap_servers))
        .replace(DOC_TOPIC, f"TOPIC = {kafka.create_topic(3, 'orders')!r}")
        .replace(DOC_GROUP, f"group={fresh_group('billing')!r}")
    )
    code = compile(text, block.where, "exec", dont_inherit=True)
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        exec(code, {"__name__": "docs_deploy_kafka"})  # the documentation's example
    assert output.getvalue().rstrip() == block.expected_output.rstrip()
