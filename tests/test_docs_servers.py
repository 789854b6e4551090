"""Documentation examples that need a server run against the test suite's own.

docs/persistence.md shows `PostgresStore` connecting to a server the reader
has; the block is marked ``<!-- no-test -->`` for tests/test_docs.py, and run
here instead, with its connection string replaced by a fresh database of the
throwaway PostgreSQL server, and its output compared with the text block
after it.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import os
from typing import TYPE_CHECKING

from tests.test_docs import DOCS, _python_blocks

if TYPE_CHECKING:
    from tests.servers import PostgresServer

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
