"""The ingest example stores every chunk once, and a crashed run resumes where it stopped.

The example runs in a subprocess with ``-W error`` (``python -m examples.ingest``), over a
small corpus written here, into a database in a temporary folder. The chunk counts asserted are
computed here from the word counts, independently of the example's code; timings, retries and
429s are not asserted.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import sqlite3
import subprocess
import sys
from pathlib import Path

from streamkit import SQLiteStore

ROOT = Path(__file__).resolve().parent.parent
VOCABULARY = ["stream", "stage", "flow", "item", "batch", "retry", "vector", "chunk", "corpus"]
WORDS = {  # file -> number of words: 50 chunks in all, 2 batches of 32 and 18
    "a-intro.md": 400,
    "b-install.md": 700,
    "c-usage.md": 250,
    "d-design.md": 900,
    "e-faq.md": 120,
    "guide/f-deep.md": 600,  # the folder is walked recursively
}
CRASHED = 3  # the exit status of a run stopped by --stop-after


def expected_chunks(words: int) -> int:
    """Windows of 80 words that start every 60 words, as many as needed, and at least one."""
    return max(1, math.ceil((words - 20) / 60))


def write_corpus(folder: Path) -> dict[str, int]:
    rng, chunks = random.Random(3), {}
    for name, count in WORDS.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        text = " ".join(rng.choice(VOCABULARY) for _ in range(count - 2))
        path.write_text(f"# {name}\n\n{text}\n", encoding="utf-8")
        chunks[name] = expected_chunks(len(path.read_text(encoding="utf-8").split()))
    return chunks


def ingest(docs: Path, db: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-W", "error", "-m", "examples.ingest", "--docs", str(docs)]
    return subprocess.run(
        [*command, "--db", str(db), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def stored_chunks(db: Path) -> dict[str, list[int]]:
    """The indexes stored for each file, duplicates included."""
    connection = sqlite3.connect(db)
    try:
        rows = connection.execute("SELECT file, idx, vector, top FROM chunks ORDER BY file, idx")
        stored: dict[str, list[int]] = {}
        for file, index, vector, top in rows:
            assert len(json.loads(vector)) == 64
            assert 1 <= len(json.loads(top)) <= 5
            stored.setdefault(file, []).append(index)
        return stored
    finally:
        connection.close()


def checkpointed(db: Path) -> list[str]:
    """The files the last checkpoint says are finished: those before its position."""

    async def load() -> list[str]:
        async with SQLiteStore(f"{db}.checkpoints") as store:
            last = await store.load("ingest")
            assert last is not None
            assert last.items == last.position  # a list of files: the position is an index
            return sorted(WORDS)[: last.position]

    return asyncio.run(load())


def weights(db: Path) -> list[tuple[str, int, str]]:
    """Each chunk's top terms by tf-idf."""
    connection = sqlite3.connect(db)
    try:
        return connection.execute("SELECT file, idx, top FROM chunks ORDER BY file, idx").fetchall()
    finally:
        connection.close()


def test_ingest_stores_every_chunk_once(tmp_path: Path) -> None:
    chunks = write_corpus(tmp_path / "docs")
    assert sum(chunks.values()) == 50
    result = ingest(tmp_path / "docs", tmp_path / "out.db")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert "ingest 6 Markdown files" in result.stdout
    assert "resumed: 0 files already read, 6 to do" in result.stdout
    assert "read 6 files; stored 6 files, 50 chunks, in" in result.stdout
    assert "2 batches in" in result.stdout
    assert "0 dead letters" in result.stdout
    assert {key: list(range(n)) for key, n in chunks.items()} == stored_chunks(tmp_path / "out.db")
    assert checkpointed(tmp_path / "out.db") == sorted(WORDS)
    rows = [line.split() for line in result.stdout.split("run statistics")[1].splitlines()[2:]]
    stages = {" ".join(row[5:]).split("(")[0]: row[:5] for row in rows if row}  # key: name
    assert stages["chunk"][:2] == ["50", "2"]  # in, out
    assert stages["reduce_point"][:2] == ["50", "50"]


def test_a_crashed_run_resumes_without_reading_files_again(tmp_path: Path) -> None:
    chunks = write_corpus(tmp_path / "docs")
    # Killed right after committing a batch, before the run's next checkpoint. reduce_point
    # needs the whole corpus before it lets a chunk through, so its checkpoints hold the
    # chunks read so far, and the document frequencies, next to the position of the files.
    crashed = ingest(tmp_path / "docs", tmp_path / "out.db", "--stop-after", "1")
    assert crashed.returncode == CRASHED, crashed.stderr
    assert "resumed: 0 files already read, 6 to do" in crashed.stdout
    assert "chunks, in" not in crashed.stdout  # it stopped before its summary
    done = checkpointed(tmp_path / "out.db")
    assert done  # every file was read before the first batch could be written
    assert done == sorted(WORDS)[: len(done)]

    resumed = ingest(tmp_path / "docs", tmp_path / "out.db")
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stderr == ""
    left = len(WORDS) - len(done)
    assert f"resumed: {len(done)} files already read, {left} to do" in resumed.stdout
    assert f"read {left} files; stored 6 files, 50 chunks, in" in resumed.stdout
    # Every chunk of every file, each exactly once (upserts: the batches after the checkpoint
    # were written again).
    assert {key: list(range(n)) for key, n in chunks.items()} == stored_chunks(tmp_path / "out.db")
    assert checkpointed(tmp_path / "out.db") == sorted(WORDS)
    # The resumed run read only the files after its checkpoint, yet weighed every chunk
    # against the whole corpus: the rest came from the checkpoint. The weights are those of
    # an uninterrupted run.
    assert ingest(tmp_path / "docs", tmp_path / "clean.db").returncode == 0
    assert weights(tmp_path / "out.db") == weights(tmp_path / "clean.db")


def test_a_checkpoint_of_other_files_is_not_resumed(tmp_path: Path) -> None:
    write_corpus(tmp_path / "docs")
    assert ingest(tmp_path / "docs", tmp_path / "out.db").returncode == 0
    (tmp_path / "docs" / "e-faq.md").unlink()  # the positions in the checkpoint are stale
    again = ingest(tmp_path / "docs", tmp_path / "out.db")
    assert again.returncode == 0, again.stderr
    assert "resumed: 0 files already read, 5 to do" in again.stdout
    assert "stored 5 files" in again.stdout  # all of them, from the start
