"""A worker process for the crash tests: one checkpointed run, which the test may kill.

``python -m tests.checkpoint_worker DB OUTPUT --case CASE --every N [--attempt A]
[--plain]`` runs the pipeline of ``CASE`` over its source under the name ``crash``,
checkpointing into the SQLite file ``DB`` every ``N`` source items, and appends each
output to ``OUTPUT`` as one line, ``A<TAB>JSON``, written with a single unbuffered
``os.write`` before the next output is pulled. With ``--plain`` it runs without a
checkpoint: the uninterrupted run the attempts are compared with. The test kills it
with SIGKILL at random moments; a run that reaches its end exits with status 0.

Every case yields distinct outputs, so that an output identifies its place in the
uninterrupted run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import streamkit as sk

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

N = 240
"""Source items of every case."""

TOTAL = sk.Key[int]("total")
RUNNING = sk.Key[int]("running")


async def pause(x: int) -> int:
    """Stands in for work: the run lasts long enough to be killed in the middle."""
    await asyncio.sleep(0.0005)
    return x


async def slow(x: int) -> int:
    await asyncio.sleep(0.0005 * (1 + x % 4))
    return x


def add(total: int, x: int) -> int:
    return total + x


_failed_once: set[int] = set()


def flaky(x: int) -> int:
    """Fails the first call for each item (in each process): with_retry's second try works."""
    if x not in _failed_once:
        _failed_once.add(x)
        raise ConnectionError(f"flaky {x}")
    return x * 10


def bad_sevens(x: int) -> int:
    if x % 7 == 3:
        raise ValueError(f"bad {x}")
    return x


class Count:
    """The state of `numbered`: how many items it has seen."""

    def __init__(self) -> None:
        self.n = 0

    def snapshot(self) -> int:
        return self.n

    def restore(self, snapshot: int) -> None:
        self.n = snapshot


@sk.stage(state=Count)
async def numbered(items: AsyncIterator[int], count: Count) -> AsyncIterator[list[int]]:
    async for item in items:
        count.n += 1
        yield [count.n, item]


@sk.stage(state=dict)
async def pairs_so_far(items: AsyncIterator[int], kept: dict[str, Any]) -> AsyncIterator[list[int]]:
    # Keeps an item between two pulls: all of it is in ``kept``, which the checkpoint saves.
    async for item in items:
        if "held" in kept:
            yield [kept.pop("held"), item]
        else:
            kept["held"] = item


@dataclass(frozen=True)
class Case:
    pipeline: Callable[[sk.Store], sk.Stage[Any, Any]]
    source: Callable[[], Any] = lambda: list(range(1, N + 1))
    ordered: bool = True
    """Whether the uninterrupted output has one order (else: compared as sets)."""
    subsequence: bool = False
    """Time-driven output: each attempt yields a subsequence of the inputs, the last included."""
    table: bool = False
    """The outputs also go to the table sink ``out`` (of a checkpointed run)."""
    dead_letters: int = 0
    """Items the run dead-letters."""
    resumes: bool = True
    """Whether a kill after a random time of at most a run's length often lands after a
    completed checkpoint (not so for a reduction point: none completes before its fold)."""


def keyed_total(acc: tuple[int, int], x: int) -> tuple[int, int]:
    """A running total that carries its key (distinct outputs across keys)."""
    return (x % 5, acc[1] + x)


async def three_of(x: int) -> AsyncIterator[list[int]]:
    """The inner stream of `switch_map`: three elements, with work between them."""
    for n in range(3):
        await asyncio.sleep(0.0005)
        yield [x, n]


def _each_fork() -> sk.Stage[Any, Any]:
    return sk.map_(pause) | sk.fork(sk.map_(lambda x: x * 2), sk.map_(lambda x: -x))


CASES: dict[str, Case] = {
    "map-filter": Case(lambda _: sk.map_(pause) | sk.filter_(lambda x: x % 3 != 0)),
    "scan": Case(lambda _: sk.map_(pause) | sk.scan(add, 0)),
    "scan_state": Case(
        lambda _: (
            sk.map_(pause)
            | sk.envelop()
            | sk.scan_state(RUNNING, add, 0)
            | sk.map_(lambda x, state: [x, state[RUNNING]], with_state=True)
            | sk.unwrap()
        )
    ),
    "reduce_point": Case(
        lambda _: (
            sk.map_(pause)
            | sk.envelop()
            | sk.reduce_point(TOTAL, add, 0)
            | sk.map_(lambda x, state: [x, state[TOTAL]], with_state=True)
            | sk.unwrap()
        ),
        resumes=False,
    ),
    "distinct": Case(lambda _: sk.map_(pause) | sk.map_(lambda x: (x * 7) % 101) | sk.distinct()),
    "enumerate": Case(
        lambda _: sk.map_(pause) | sk.filter_(lambda x: x % 4 != 1) | sk.enumerate_(1)
    ),
    "chunk-flatten": Case(lambda _: sk.map_(pause) | sk.chunk(4) | sk.map_(list) | sk.flatten()),
    "chunk-within": Case(lambda _: sk.map_(pause) | sk.chunk(5, within=30)),
    "window-flatten": Case(lambda _: sk.map_(pause) | sk.window(7, step=7) | sk.flatten()),
    "window": Case(lambda _: sk.map_(pause) | sk.window(4, step=3)),
    "pairwise": Case(lambda _: sk.map_(pause) | sk.pairwise()),
    "take-skip": Case(lambda _: sk.map_(pause) | sk.skip(17) | sk.take(N - 40)),
    "buffer": Case(lambda _: sk.map_(pause) | sk.buffer(8) | sk.map_(lambda x: x + 1000)),
    "throttle": Case(lambda _: sk.map_(pause) | sk.throttle(100_000.0, burst=8)),
    "timeout": Case(lambda _: sk.map_(pause) | sk.timeout(30)),
    "debounce": Case(lambda _: sk.map_(slow) | sk.debounce(0.001), subsequence=True),
    "with_retry": Case(
        lambda _: (
            sk.map_(pause)
            | sk.with_retry(sk.map_(flaky, concurrency=4), attempts=3, backoff=sk.constant(0))
        )
    ),
    "concurrent-ordered": Case(lambda _: sk.map_(slow, concurrency=6) | sk.chunk(3)),
    "concurrent-unordered": Case(
        lambda _: sk.map_(slow, concurrency=6, ordered=False), ordered=False
    ),
    "flat_map-concurrent": Case(
        lambda _: sk.flat_map(lambda x: [x, -x] if x % 5 else [], concurrency=3) | sk.map_(pause)
    ),
    "merge": Case(
        lambda _: sk.map_(lambda x: x + 1),
        source=lambda: sk.merge(
            list(range(0, 2 * N, 2)) | sk.map_(pause), list(range(1, 2 * N, 2)) | sk.map_(slow)
        ),
        ordered=False,
    ),
    "zip": Case(
        lambda _: sk.map_(list),
        source=lambda: sk.zip_(list(range(N)) | sk.map_(pause), list(range(N, 2 * N))),
    ),
    "fork-merge": Case(lambda _: _each_fork(), ordered=False),
    "fork-zip": Case(
        lambda _: (
            sk.map_(pause)
            | sk.fork(sk.map_(lambda x: x * 2), sk.scan(add, 0), combine="zip")
            | sk.map_(list)
        )
    ),
    "branch": Case(
        lambda _: (
            sk.map_(pause)
            | sk.branch(small=sk.filter_(lambda x: x < 100), big=sk.chunk(3) | sk.map_(sum))
            | sk.map_(lambda value, state: [state[sk.BRANCH], value], with_state=True)
            | sk.unwrap()
        ),
        ordered=False,
    ),
    "custom-stage": Case(lambda _: sk.map_(pause) | numbered()),
    "custom-dict-stage": Case(lambda _: sk.map_(pause) | pairs_so_far()),
    "table-sink": Case(lambda _: sk.map_(pause) | sk.scan(add, 0), table=True),
    "dead-letters": Case(
        lambda _: (
            sk.map_(pause) | sk.map_(bad_sevens, on_error="split", dead_letter=lambda record: None)
        ),
        dead_letters=sum(1 for x in range(1, N + 1) if x % 7 == 3),
    ),
    "group_by": Case(
        lambda _: (
            sk.map_(pause) | sk.group_by(lambda x: x % 5, sk.scan(keyed_total, (0, 0)), max_keys=4)
        ),
        ordered=False,
    ),
    "group_by-chunk": Case(
        lambda _: sk.map_(pause) | sk.group_by(lambda x: x % 3, sk.chunk(4), max_keys=2),
        ordered=False,
    ),
    "switch_map": Case(
        lambda _: sk.map_(pause) | sk.switch_map(lambda x: x, three_of),
        ordered=False,
    ),
    "windowed": Case(
        lambda _: (
            sk.map_(pause)
            | sk.windowed(
                sk.Hopping(12, hop=4),
                time=float,
                key=lambda x: x % 3,
                aggregate=add,
                initial=int,
                out_of_order=5,
            )
            | sk.map_(lambda w: [w.key, w.start, w.end, w.value])
        )
    ),
    "windowed-late": Case(
        lambda _: (
            sk.map_(pause)
            | sk.windowed(
                sk.Session(gap=3),
                time=lambda x: x - 30 if x % 7 == 3 else x + x // 10 * 5,
                out_of_order=5,
                dead_letter=lambda record: None,
            )
            | sk.map_(lambda w: [w.start, w.end, w.value])
        ),
        dead_letters=sum(1 for x in range(1, N + 1) if x % 7 == 3),
    ),
}


def _plain(item: Any) -> Any:
    value = item.value if isinstance(item, sk.Envelope) else item
    if isinstance(value, tuple):
        return [_plain(x) for x in value]  # pyright: ignore[reportUnknownVariableType]
    return value


async def main(arguments: argparse.Namespace) -> None:
    case = CASES[arguments.case]
    output = os.open(arguments.output, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    prefix = f"{arguments.attempt}\t"
    try:
        async with sk.SQLiteStore(arguments.db, writer=arguments.writer) as store:
            if arguments.writer == "process":
                await store.open()  # the writer process is ready before the run starts
            pipeline = case.pipeline(store)
            if case.table and not arguments.plain:
                pipeline = pipeline | sk.write_to(sk.TableSink(store, "out"))
            source = case.source()
            if arguments.plain:
                results: AsyncIterator[Any] = aiter(source | pipeline)
            else:
                run = sk.Run(
                    pipeline, source, name="crash", checkpoint=store, every=arguments.every
                )
                results = aiter(run)
            async for item in results:
                os.write(output, (prefix + json.dumps(_plain(item)) + "\n").encode())
    finally:
        os.close(output)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("db")
    parser.add_argument("output")
    parser.add_argument("--case", choices=sorted(CASES), required=True)
    parser.add_argument("--every", type=int, required=True)
    parser.add_argument("--attempt", type=int, default=0)
    parser.add_argument("--plain", action="store_true")
    parser.add_argument("--writer", choices=["auto", "process", "thread"], default="auto")
    asyncio.run(main(parser.parse_args()))
    sys.exit(0)
