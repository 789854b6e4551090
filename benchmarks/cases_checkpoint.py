"""Cases (k) and (l): what checkpointing a run costs.

(k) a checkpointed `Run` of the map -> filter -> map chain against the same `Run` without a
checkpoint; (l) writing one checkpoint that holds a `distinct()` set of 10^5 keys, through
the store's public API and inside a run.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import itertools
import os
import tempfile
import time
from functools import cache
from typing import TYPE_CHECKING, Literal, cast

from benchmarks.cases_pipeline import PIPELINE
from benchmarks.common import (
    checksum,
    double,
    drain_sum,
    expected_pipeline,
    inc,
    mismatch,
    not_multiple_of_3,
)
from benchmarks.harness import (
    DIVIDE,
    TIMES,
    CaseResult,
    Competitor,
    Row,
    Runner,
    Settings,
    Target,
    Timing,
    case,
    describe_error,
    format_ms,
    partial_result,
    prepare,
    timing_rows,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from streamkit import Checkpoint, Store

RUN_LIMIT = 1.20
"""The goal for (k): a checkpointed run within 1.2x of the same run without a checkpoint."""

RUN_NAME = "bench"


class StoreFiles:
    """Fresh SQLite files in one temporary directory, removed when the case ends."""

    def __init__(self) -> None:
        self._folder = tempfile.TemporaryDirectory(prefix="streamkit-bench-")
        self._numbers = itertools.count()

    def new(self) -> str:
        return os.path.join(self._folder.name, f"run-{next(self._numbers)}.db")

    def cleanup(self) -> None:
        self._folder.cleanup()


def _sqlite(
    files: StoreFiles, *, writer: Literal["auto", "thread"] = "auto"
) -> Callable[[], Store]:
    from streamkit import SQLiteStore

    return lambda: SQLiteStore(files.new(), writer=writer)


async def _opened(store: Store) -> None:
    """Open ``store`` before the clock: the file, its schema and a writer process, ready."""
    from streamkit import SQLiteStore

    if isinstance(store, SQLiteStore):
        await store.open()
    else:
        await store.load(RUN_NAME)


def _memory() -> Store:
    from streamkit import MemoryStore

    return MemoryStore()


# =================================================================== (k) a checkpointed run


@cache
def _expected(n: int) -> tuple[int, ...]:
    return checksum(expected_pipeline(n), ordered=False)


def _verify(n: int, result: object) -> str | None:
    return mismatch(result, _expected(n))


def _run_runner(store: Callable[[], Store] | None, every: int) -> Callable[[], Runner]:
    """Seconds of a `Run` of the chain over ``range(n)``, consumed with ``async for``.

    With ``store``, every run gets a new, empty store (a store holding the complete
    checkpoint of an earlier run would resume it and yield nothing), opened before the clock
    starts and closed after it stops.
    """

    def factory() -> Runner:
        from streamkit import Run, filter_, map_

        pipeline = map_(inc) | filter_(not_multiple_of_3) | map_(double)
        if store is not None:
            Run(pipeline, [], name=RUN_NAME, checkpoint=_memory(), every=every)

        async def timed(run: Run[int], n: int) -> float:
            start = time.perf_counter()
            result = await drain_sum(run)
            seconds = time.perf_counter() - start
            if (problem := _verify(n, result)) is not None:
                raise AssertionError(problem)
            return seconds

        async def measure(n: int) -> object:
            if store is None:
                return await timed(Run(pipeline, range(n), name=RUN_NAME), n)
            async with store() as checkpoints:
                await _opened(checkpoints)
                run = Run(pipeline, range(n), name=RUN_NAME, checkpoint=checkpoints, every=every)
                return await timed(run, n)

        return measure

    return factory


def _with_extra_cost(rows: Sequence[Row], reference: str, n: int) -> list[Row]:
    """The rows with one more cell: microseconds per source item beyond the reference."""
    ref = next((r for r in rows if r.key == reference and not r.note), None)
    out: list[Row] = []
    for row in rows:
        if row.note:
            out.append(dataclasses.replace(row, cells=(*row.cells, "-")))
            continue
        if ref is None or row.key == reference:
            out.append(dataclasses.replace(row, cells=(*row.cells, "-")))
            continue
        extra = (row.values["median_ms"] - ref.values["median_ms"]) * 1e3 / n
        out.append(
            dataclasses.replace(
                row,
                cells=(*row.cells, f"{extra:.2f}"),
                values={**row.values, "extra_us_per_item": extra, "n": n},
            )
        )
    return out


@case(
    "k",
    "the cost of a checkpointed `Run` of map → filter → map",
    Target(
        f"`Run(checkpoint=SQLiteStore(path), every=1000)` within {RUN_LIMIT:.1f}{TIMES} of "
        "the same `Run` without a checkpoint",
        f"checkpointed {DIVIDE} not checkpointed",
        lambda result: result.ratio("sqlite_1000"),
        RUN_LIMIT,
    ),
)
def checkpointed_run(settings: Settings) -> CaseResult:
    n = settings.size(1_000_000, 2_000)
    files = StoreFiles()
    try:
        competitors = [
            Competitor(
                "plain",
                '`Run(pipeline, range(n), name="bench")`',
                _run_runner(None, 0),
                reference=True,
            ),
            Competitor(
                "sqlite_1000",
                "… `checkpoint=SQLiteStore(path), every=1000`",
                _run_runner(_sqlite(files), 1_000),
            ),
            Competitor(
                "sqlite_10000",
                "… `checkpoint=SQLiteStore(path), every=10_000`",
                _run_runner(_sqlite(files), 10_000),
            ),
            Competitor(
                "sqlite_thread_1000",
                '… `checkpoint=SQLiteStore(path, writer="thread"), every=1000`',
                _run_runner(_sqlite(files, writer="thread"), 1_000),
            ),
            Competitor(
                "memory_1000",
                "… `checkpoint=MemoryStore(), every=1000`",
                _run_runner(_memory, 1_000),
            ),
        ]
        timings = time_sections(competitors, n, settings, warmup_size=max(n // 10, 1))
    finally:
        files.cleanup()
    rows = _with_extra_cost(timing_rows(timings, over_reference=True), "plain", n)
    return partial_result(
        f"{PIPELINE} over `range({n:,})` (a sequence, so the run can resume it), consumed with "
        "`async for`, in a `Run` with its default options: without a checkpoint (the "
        "reference), and checkpointed into a new SQLite file (WAL, `synchronous = FULL`: one "
        "durable transaction per checkpoint) every 1,000 and every 10,000 source items, "
        "saved in the store's writer process (the default) or on its thread, and into a "
        "`MemoryStore` (the barriers and snapshots without the disk). The store is opened "
        "(`SQLiteStore.open`: the file, its schema and the writer process, ready) before the "
        "clock starts and closed after it stops; the run's last checkpoint, which marks it "
        "complete, is inside the timed "
        f"run. The ratio is the run's median {DIVIDE} the reference's "
        "median; the last column is the difference in microseconds per source item.",
        f"n = {n:,}",
        (
            "run",
            "median ms",
            "fastest to slowest ms",
            f"run {DIVIDE} run without checkpoint",
            "extra µs per item",
        ),
        rows,
    )


# =================================================================== (l) a 10^5-key checkpoint


def order_id(i: int) -> str:
    """The distinct keys of (l): strings such as ``"order-000042"``."""
    return f"order-{i:06d}"


def _checkpoint_of(keys: int) -> Checkpoint:
    """A `Checkpoint` shaped like the one a run of ``map_(order_id) | distinct()`` saves."""
    from streamkit import Checkpoint

    return Checkpoint(
        RUN_NAME,
        position=keys,
        state={"1": [order_id(i) for i in range(keys)]},
        items=keys,
        sequence=1,
        shape=("source source", "0 map_(order_id)", "1 distinct()"),
    )


def _construct() -> Runner:
    """Seconds to build the `Checkpoint` (validates and copies the state as JSON)."""
    from streamkit import Checkpoint

    async def measure(keys: int) -> object:
        state = {"1": [order_id(i) for i in range(keys)]}
        start = time.perf_counter()
        Checkpoint(RUN_NAME, position=keys, state=state, items=keys, sequence=1)
        return time.perf_counter() - start

    return measure


def _held(snapshot: object) -> int:
    """How many keys a saved `distinct()` snapshot holds (-1 if it is not a list)."""
    return len(cast("list[object]", snapshot)) if isinstance(snapshot, list) else -1


def _save(store: Callable[[], Store]) -> Callable[[], Runner]:
    """Seconds of one ``store.save(checkpoint)``, the store opened beforehand."""

    def factory() -> Runner:
        async def measure(keys: int) -> object:
            checkpoint = _checkpoint_of(keys)
            async with store() as checkpoints:
                await _opened(checkpoints)
                start = time.perf_counter()
                await checkpoints.save(checkpoint, expect=0)
                seconds = time.perf_counter() - start
                saved = await checkpoints.load(RUN_NAME)
            if saved is None or _held(saved.state.get("1")) != keys:
                raise AssertionError("the checkpoint read back is not the one saved")
            return seconds

        return measure

    return factory


def _distinct_run(store: Callable[[], Store], every: Callable[[int], int]) -> Callable[[], Runner]:
    """Seconds of a checkpointed run of ``map_(order_id) | distinct()`` over ``range(keys)``."""

    def factory() -> Runner:
        from streamkit import Run, distinct, map_

        pipeline = map_(order_id) | distinct()

        async def measure(keys: int) -> object:
            async with store() as checkpoints:
                await _opened(checkpoints)
                run = Run(
                    pipeline, range(keys), name=RUN_NAME, checkpoint=checkpoints, every=every(keys)
                )
                start = time.perf_counter()
                count = 0
                async for _ in run:
                    count += 1
                seconds = time.perf_counter() - start
                barriers = [c for c in await checkpoints.history(RUN_NAME) if not c.complete]
            if count != keys:
                raise AssertionError(f"{count} items out of {keys}")
            held = [_held(c.state.get("1")) for c in barriers]
            if (every(keys) <= keys) != (held == [keys]):
                raise AssertionError(f"checkpoints held {held} keys")
            return seconds

        return measure

    return factory


def time_sections(
    competitors: Sequence[Competitor],
    size: int,
    settings: Settings,
    *,
    warmup_size: int | None = None,
) -> list[Timing]:
    """Like `time_competitors`, but each runner measures (and returns) its own seconds.

    For operations that need an untimed set-up (a store opened, a state built) in the same
    event loop; a runner checks its own result and raises if it is wrong. One warm-up call
    per competitor (at ``warmup_size``, by default ``size``), then ``settings.repeat``
    interleaved ones.
    """
    prepared = prepare(competitors, settings)
    active = [(t, r) for t, r in prepared if r is not None]

    def attempt(timing: Timing, runner: Runner, n: int) -> float | None:
        async def limited() -> object:
            async with asyncio.timeout(settings.run_timeout):
                return await runner(n)

        gc.collect()
        try:
            seconds = asyncio.run(limited())
        except TimeoutError:
            timing.note = f"error: a run took longer than {settings.run_timeout:g} s"
        except Exception as exc:
            timing.note = f"error: {describe_error(exc)}"
        else:
            if isinstance(seconds, float):
                return seconds
            timing.note = f"error: measured {seconds!r:.40}"
        settings.log(f"    {timing.competitor.label}: {timing.note}")
        return None

    if settings.warmup:
        for timing, runner in active:
            attempt(timing, runner, size if warmup_size is None else warmup_size)
    for rep in range(settings.repeat):
        shift = rep % len(active) if active else 0
        for timing, runner in active[shift:] + active[:shift]:
            if timing.ok and (seconds := attempt(timing, runner, size)) is not None:
                timing.samples.append(seconds)
    for timing, _ in prepared:
        if timing.ok and not timing.samples:
            timing.note = "error: no sample"
    return [t for t, _ in prepared]


def _section_rows(timings: Sequence[Timing], keys: int) -> Iterator[Row]:
    for t in timings:
        comp = t.competitor
        if not t.ok:
            yield Row(comp.key, comp.label, ("-",) * 3, note=t.note)
            continue
        spread = f"{format_ms(min(t.samples) * 1e3)} to {format_ms(max(t.samples) * 1e3)}"
        yield Row(
            comp.key,
            comp.label,
            (format_ms(t.median * 1e3), spread, f"{t.median * 1e6 / keys:.2f}"),
            values={"median_ms": t.median * 1e3, "runs": len(t.samples), "keys": keys},
        )


def _difference_row(rows: Sequence[Row], keys: int) -> Row:
    label = "difference: the checkpoint with the full set, inside the run"
    with_set = next((r for r in rows if r.key == "run_barrier" and not r.note), None)
    without = next((r for r in rows if r.key == "run_final_only" and not r.note), None)
    if with_set is None or without is None:
        return Row("run_difference", label, ("-",) * 3, note="n/a: a run was not measured")
    ms = with_set.values["median_ms"] - without.values["median_ms"]
    return Row(
        "run_difference",
        label,
        (format_ms(ms), "-", f"{ms * 1e3 / keys:.2f}"),
        values={"median_ms": ms},
    )


@case("l", "writing a checkpoint that holds a `distinct()` set of 10⁵ keys")
def large_checkpoint(settings: Settings) -> CaseResult:
    keys = settings.size(100_000, 2_000)
    files = StoreFiles()
    try:
        competitors = [
            Competitor(
                "construct",
                "`Checkpoint(name, position=..., state={...: keys})` (checks, JSON copy)",
                _construct,
            ),
            Competitor("save_memory", "`MemoryStore().save(checkpoint)`", _save(_memory)),
            Competitor(
                "save_sqlite", "`SQLiteStore(path).save(checkpoint)`", _save(_sqlite(files))
            ),
            Competitor(
                "run_barrier",
                f"`Run(map_(order_id) | distinct(), range({keys:,}), every={keys:,})`",
                _distinct_run(_sqlite(files), lambda k: k),
            ),
            Competitor(
                "run_final_only",
                f"the same run with `every={10 * keys:,}` (no barrier)",
                _distinct_run(_sqlite(files), lambda k: 10 * k),
            ),
        ]
        timings = time_sections(competitors, keys, settings)
    finally:
        files.cleanup()
    rows = list(_section_rows(timings, keys))
    rows.append(_difference_row(rows, keys))
    return partial_result(
        f"One checkpoint whose state holds a `distinct()` seen set of {keys:,} keys (strings "
        "such as `order-000042`, about 15 bytes of JSON each), timed through the public API: "
        "building the `Checkpoint` (it checks the state and keeps its JSON form), then saving "
        "a built one into a `MemoryStore` (which keeps the JSON) and into a new SQLite file "
        "(the store already open: encode, SHA-256, insert, one durable commit). Then "
        f"end to end: a `Run` of `map_(order_id) | distinct()` over {keys:,} distinct items "
        "into a new SQLite file, once with `every` equal to the number of items (one barrier, "
        "after the last item, so the one checkpoint holds the whole set) and once with a "
        "larger `every` (no barrier: only the final checkpoint that marks the run complete, "
        "whose state is empty); their difference is what the checkpoint with the set costs "
        "inside a run (the copy of the set, the record, the save). Each timed part runs in a "
        "fresh event loop after `gc.collect()`; the set-up (building the keys, opening the "
        "store) is not timed.",
        f"{keys:,} keys",
        ("operation", "median ms", "fastest to slowest ms", "µs per key"),
        rows,
        "No target: the issue asks for the figure. The saved checkpoint is read back and "
        "checked after each save; each run's output and its checkpoint's key count are "
        "checked too.",
    )
