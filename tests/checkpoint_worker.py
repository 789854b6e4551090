"""A worker process for the crash tests: a checkpointed run that may be killed.

``python -m tests.checkpoint_worker DB INPUT OUTPUT --pipeline P --every N [--kill-at-save K
--kill-when before|after]`` runs pipeline ``P`` over the lines of ``INPUT`` under the name
``crash``, checkpointing into the SQLite file ``DB`` every ``N`` source items, and appends each
result to ``OUTPUT`` as one JSON line, written with a single unbuffered ``os.write`` before the
next item is pulled. With ``--kill-at-save K`` the process sends itself SIGKILL just before or
just after the K-th checkpoint of this process is saved. The parent test may also kill it at any
moment. A run that reaches its end exits with status 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from typing import TYPE_CHECKING, Any, Self

from streamkit import (
    Checkpoint,
    DeadLetterRecord,
    Envelope,
    Key,
    Run,
    SQLiteStore,
    Stage,
    Store,
    Write,
    chunk,
    envelop,
    filter_,
    lines,
    map_,
    reduce_point,
    unwrap,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

TOTAL = Key[int]("total")


async def slow_square(x: int) -> int:
    await asyncio.sleep(0.001 * (x % 3))
    return x * x


def pipelines() -> dict[str, Stage[str, Any]]:
    return {
        # map -> filter -> concurrent map (ordered) -> chunk: an output holds up to 3 items.
        "stream": map_(int)
        | filter_(lambda x: x % 5 != 0)
        | map_(slow_square, concurrency=4)
        | chunk(3),
        # A reduction point: every output carries the total of the whole input.
        "reduce": map_(int)
        | envelop()
        | reduce_point(TOTAL, lambda total, x: total + x, 0)
        | map_(lambda x, state: [x, state[TOTAL]], with_state=True)
        | unwrap(),
    }


class KillingStore:
    """A store that kills its process around its K-th save."""

    def __init__(self, store: SQLiteStore, kill_at: int | None, when: str) -> None:
        self.store = store
        self.kill_at = kill_at
        self.when = when
        self.saves = 0

    async def load(self, name: str) -> Checkpoint | None:
        return await self.store.load(name)

    async def save(
        self, checkpoint: Checkpoint, /, *, writes: Sequence[Write] = (), expect: int | None = None
    ) -> None:
        self.saves += 1
        dying = self.saves == self.kill_at
        if dying and self.when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        await self.store.save(checkpoint, writes=writes, expect=expect)
        if dying:
            os.kill(os.getpid(), signal.SIGKILL)

    async def history(self, name: str, *, limit: int = 10) -> tuple[Checkpoint, ...]:
        return await self.store.history(name, limit=limit)

    async def dead_letters(self, name: str) -> tuple[DeadLetterRecord, ...]:
        return await self.store.dead_letters(name)

    async def table_rows(self, table: str, *, run: str | None = None) -> tuple[dict[str, Any], ...]:
        return await self.store.table_rows(table, run=run)

    async def delete(self, name: str) -> None:
        await self.store.delete(name)

    async def close(self) -> None:
        await self.store.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


def _line(item: Any) -> bytes:
    value = item.value if isinstance(item, Envelope) else item
    return (json.dumps(value) + "\n").encode()


async def main(arguments: argparse.Namespace) -> None:
    store: Store = KillingStore(SQLiteStore(arguments.db), arguments.kill_at_save, arguments.when)
    pipeline = pipelines()[arguments.pipeline]
    output = os.open(arguments.output, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        async with store:
            run = Run(
                pipeline,
                lines(arguments.input),
                name="crash",
                checkpoint=store,
                every=arguments.every,
            )
            async with run:
                async for item in run:
                    os.write(output, _line(item))
    finally:
        os.close(output)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("db")
    parser.add_argument("input")
    parser.add_argument("output")
    parser.add_argument("--pipeline", choices=["stream", "reduce"], required=True)
    parser.add_argument("--every", type=int, required=True)
    parser.add_argument("--kill-at-save", type=int, default=None)
    parser.add_argument("--when", choices=["before", "after"], default="before")
    asyncio.run(main(parser.parse_args()))
    sys.exit(0)
