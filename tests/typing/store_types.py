"""Static checks for checkpoints, stores and resumable sources (mypy --strict, pyright strict).

Nothing here runs: pytest does not collect this file and the functions are
never called. ``assert_type`` fails the type checkers when a type drifts.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from pathlib import Path
from typing import Any, assert_type

from streamkit import Flow, collect, map_
from streamkit._resumable import Resumable, lines, resumable
from streamkit._store import Checkpoint, CheckpointError, MemoryStore, SQLiteStore, Store


def _letters() -> tuple[str, ...]:
    return ("a", "b")


def check_checkpoint_fields() -> None:
    point = Checkpoint("run", position=3, state={"total": 1}, items=3, version="1")
    assert_type(point.name, str)
    assert_type(point.position, Any)
    assert_type(point.state, Mapping[str, Any])
    assert_type(point.items, int)
    assert_type(point.version, str)
    assert_type(point.created_at, dt.datetime)
    assert_type(point.replace(items=4), Checkpoint)
    assert_type(point.to_json(), str)
    assert_type(Checkpoint.from_json(b"{}"), Checkpoint)


def check_checkpoint_error() -> None:
    error = CheckpointError("broken", path="x.db", name="run")
    assert_type(error.path, str | None)
    assert_type(error.name, str | None)


async def check_stores() -> None:
    memory: Store = MemoryStore(keep=3)
    sqlite: Store = SQLiteStore(Path("runs.db"), key=b"k", keep=5)
    async with SQLiteStore("runs.db") as store:
        assert_type(store, SQLiteStore)
        assert_type(store.path, str)
        assert_type(await store.load("run"), Checkpoint | None)
        assert_type(await store.history("run", limit=2), tuple[Checkpoint, ...])
        assert_type(await store.save(Checkpoint("run")), None)
        assert_type(await store.delete("run"), None)
    async with MemoryStore() as kept:
        assert_type(kept, MemoryStore)
    assert_type(await memory.load("run"), Checkpoint | None)
    assert_type(await sqlite.close(), None)


async def check_resumable_sources() -> None:
    numbers = resumable([1, 2, 3])
    assert_type(numbers, Resumable[int])
    assert_type(numbers.position(), Any)
    numbers.seek(1)
    assert_type(await numbers.__anext__(), int)
    assert_type(resumable(_letters()), Resumable[str])
    assert_type(resumable(range(3)), Resumable[int])

    text = lines("data.txt")
    assert_type(text, Resumable[str])
    assert_type(lines(Path("data.txt"), encoding="latin-1", block_size=1024), Resumable[str])
    assert_type(text | map_(len), Flow[int])
    assert_type(await collect(text), list[str])
    await text.aclose()

    async for line in lines("data.txt"):
        assert_type(line, str)


def check_a_user_source_is_resumable() -> None:
    class Pages:
        def __init__(self) -> None:
            self.page = 0

        def __aiter__(self) -> Pages:
            return self

        async def __anext__(self) -> bytes:
            raise StopAsyncIteration

        async def aclose(self) -> None:
            return None

        def position(self) -> int:
            return self.page

        def seek(self, position: Any) -> None:
            self.page = int(position)

    def takes(source: Resumable[bytes]) -> Resumable[bytes]:
        return source

    assert_type(takes(Pages()), Resumable[bytes])
