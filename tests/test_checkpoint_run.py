"""`Run(checkpoint=store, every=...)`: at-least-once runs that resume after a crash.

The crash tests run a worker process (``tests/checkpoint_worker.py``) that checkpoints into a
SQLite file and appends each result to a file with one unbuffered write, kill it with SIGKILL
(at random moments, and just before and just after each checkpoint), restart it until it ends,
and check that the union of its outputs covers every input, with at most ``every`` source items
repeated per crash.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamkit import (
    DEFAULT_CODEC,
    Checkpoint,
    CheckpointError,
    Envelope,
    Hooks,
    Key,
    MemoryStore,
    Run,
    SnapshotError,
    SQLiteStore,
    Stage,
    Write,
    branch,
    buffer,
    chunk,
    chunk_until,
    collect,
    current_clock,
    debounce,
    distinct,
    enumerate_,
    envelop,
    filter_,
    flat_map,
    flatten,
    lines,
    map_,
    pairwise,
    reduce_point,
    resumable,
    scan,
    scan_by,
    scan_state,
    set_state,
    skip,
    skip_while,
    spaced,
    stage,
    take,
    take_while,
    throttle,
    unwrap,
    window,
    write_to,
    zip_,
)
from streamkit.testing import virtual_clock

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Sequence

ROOT = Path(__file__).resolve().parent.parent
TOTAL = Key[int]("total")
RUNNING = Key[int]("running")


# --------------------------------------------------------------------------- helpers


async def run_until(
    pipeline: Stage[Any, Any],
    source: Any,
    store: MemoryStore,
    *,
    every: int = 3,
    stop_after: int | None = None,
    name: str = "job",
) -> tuple[list[Any], Run[Any]]:
    """Run to the end, or leave after ``stop_after`` results (the run is closed: cancelled)."""
    out: list[Any] = []
    async with Run(pipeline, source, name=name, checkpoint=store, every=every) as run:
        async for item in run:
            out.append(item)
            if len(out) == stop_after:
                break
    return out, run


def duplicates(values: Sequence[Any]) -> int:
    return sum(count - 1 for count in Counter(map(repr, values)).values())


# --------------------------------------------------------------------------- arguments


def test_checkpoint_needs_a_name() -> None:
    with pytest.raises(ValueError, match="checkpoint= needs a name="):
        Run(map_(str), [1], checkpoint=MemoryStore())


def test_checkpoint_must_be_a_store() -> None:
    with pytest.raises(TypeError, match="checkpoint must be a Store"):
        Run(map_(str), [1], name="a", checkpoint="runs.db")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]


def test_checkpoint_needs_a_resumable_source() -> None:
    def numbers() -> Any:
        yield 1

    with pytest.raises(TypeError, match="checkpoint= needs a resumable source"):
        Run(map_(str), numbers(), name="a", checkpoint=MemoryStore())


@pytest.mark.parametrize(
    ("every", "error", "message"),
    [
        (0, ValueError, "every must be >= 1"),
        (1.5, TypeError, "every must be an int"),
        (True, TypeError, "every must be an int"),
        (dt.timedelta(0), ValueError, "every must be a positive duration"),
    ],
)
def test_every_is_checked(every: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        Run(map_(str), [1], name="a", checkpoint=MemoryStore(), every=every)
    with pytest.raises(error, match=message):
        Run(map_(str), [1], every=every)


def test_a_custom_stage_that_does_not_declare_its_state_is_refused_at_construction() -> None:
    @stage
    async def doubled(items: AsyncIterator[int]) -> AsyncIterator[int]:
        async for item in items:
            yield item * 2

    with pytest.raises(
        ValueError, match=r"step 0, .*doubled\(\), does not say what state it keeps"
    ):
        Run(doubled(), [1], name="a", checkpoint=MemoryStore())
    with pytest.raises(ValueError, match=r"step 1/left/0, .*doubled\(\), does not say"):
        Run(
            map_(str) | branch(left=doubled(), right=map_(len)),
            [1],
            name="a",
            checkpoint=MemoryStore(),
        )


async def test_unordered_and_declared_custom_stages_run_under_a_checkpoint() -> None:
    async def slow(x: int) -> int:
        await asyncio.sleep(0.001 * (x % 3))
        return x

    @stage(stateless=True)
    async def doubled(items: AsyncIterator[int]) -> AsyncIterator[int]:
        async for item in items:
            yield item * 2

    pipeline = map_(slow, concurrency=3, ordered=False) | doubled()
    out = await Run(
        pipeline, list(range(20)), name="u", checkpoint=MemoryStore(), every=3
    ).collect()
    assert sorted(out) == [x * 2 for x in range(20)]


# --------------------------------------------------------------------------- resuming


async def test_a_finished_run_checkpoints_the_end_and_a_restart_yields_nothing() -> None:
    store = MemoryStore()
    out, run = await run_until(map_(str), [1, 2, 3, 4, 5], store, every=2)
    assert out == ["1", "2", "3", "4", "5"]
    assert run.status == "succeeded"
    assert run.resumed_from is None
    assert run.last_checkpoint is not None
    assert (run.last_checkpoint.position, run.last_checkpoint.items) == (5, 5)
    again, rerun = await run_until(map_(str), [1, 2, 3, 4, 5], store, every=2)
    assert again == []
    assert rerun.resumed_from == run.last_checkpoint


async def test_a_run_left_early_resumes_from_its_last_completed_checkpoint() -> None:
    store = MemoryStore()
    pipeline = map_(lambda x: x * 10) | filter_(lambda x: x % 30 != 0) | chunk(3)
    items = list(range(1, 21))
    first, run = await run_until(pipeline, items, store, every=4, stop_after=3)
    assert first == [[10, 20, 40], [50, 70, 80], [100, 110, 130]]
    assert run.status == "cancelled"
    # A barrier follows items 4, 8, 12, ...: the third chunk holds item 13, so the barrier
    # after 12 came out before it, when the consumer came back from the second chunk. Its
    # checkpoint holds chunk(3)'s partial batch then, [100, 110].
    assert run.last_checkpoint is not None
    assert (run.last_checkpoint.position, run.last_checkpoint.items) == (12, 12)
    second, rerun = await run_until(pipeline, items, store, every=4)
    assert second == [[100, 110, 130], [140, 160, 170], [190, 200]]
    assert rerun.resumed_from is not None
    assert rerun.resumed_from.items == 12
    assert rerun.last_checkpoint is not None
    assert rerun.last_checkpoint.items == 20


async def test_a_partial_batch_is_restored_from_the_checkpoint() -> None:
    # The shape that lost items with per-item progress tags: chunk then flatten.
    store = MemoryStore()
    pipeline = chunk(4) | flatten()
    first, _ = await run_until(pipeline, list(range(10)), store, every=2, stop_after=2)
    assert first == [0, 1]
    second, _ = await run_until(pipeline, list(range(10)), store, every=2)
    # The checkpoint after item 1 held chunk(4)'s partial batch [0, 1]; the consumer had
    # seen 0 and 1 of it, and sees them again (at least once), then all the rest.
    assert second == list(range(10))


async def test_a_failing_run_keeps_its_last_completed_checkpoint() -> None:
    store = MemoryStore()

    broken = {7}

    def fragile(x: int) -> int:
        if x in broken:
            raise ValueError("seven")
        return x

    with pytest.raises(ValueError, match="seven"):
        await Run(map_(fragile), list(range(10)), name="f", checkpoint=store, every=3).collect()
    saved = await store.load("f")
    assert saved is not None
    assert saved.position == 6  # the barrier after item 5 came out; the one after 8 never
    broken.clear()
    rest, _ = await run_until(map_(fragile), list(range(10)), store, name="f")
    assert rest == [6, 7, 8, 9]


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(0, 40),
    every=st.integers(1, 8),
    stops=st.lists(st.integers(1, 12), max_size=4),
    size=st.integers(1, 4),
)
def test_union_covers_every_item_and_duplicates_are_bounded(
    n: int, every: int, stops: list[int], size: int
) -> None:
    # A chunked, filtered pipeline left early several times, then run to the end.
    pipeline = map_(lambda x: x + 1) | filter_(lambda x: x % 4 != 0) | chunk(size)
    expected = [x + 1 for x in range(n) if (x + 1) % 4 != 0]

    async def attempts() -> list[list[int]]:
        store = MemoryStore()
        outputs: list[list[int]] = []
        for stop in stops:
            out, _ = await run_until(pipeline, list(range(n)), store, every=every, stop_after=stop)
            outputs.extend(out)
        out, _ = await run_until(pipeline, list(range(n)), store, every=every)
        return outputs + out

    flat = [x for group in asyncio.run(attempts()) for x in group]
    assert set(flat) == set(expected)
    # Leaving early keeps the last completed checkpoint: a restart repeats the outputs of
    # at most the `every` source items since it, and of the chunk the consumer held.
    assert duplicates(flat) <= len(stops) * (every + size)


async def test_reduction_results_are_saved_and_restored() -> None:
    store = MemoryStore()
    pipeline = reduce_point(TOTAL, lambda total, x: total + x, 0) | map_(lambda x: x)
    items = list(range(1, 21))
    first, _ = await run_until(pipeline, items, store, every=5, stop_after=12)
    assert [e.state[TOTAL] for e in first] == [210] * 12
    saved = await store.load("job")
    assert saved is not None
    # The barriers waited in the reduction point's buffer, in their places among the
    # items, and came out with them: the one after item 10 carries the total.
    assert saved.position == 10
    assert dict(saved.state) == {"0": ["emitting", 210]}
    # Resumed, the reduction folds nothing: the remaining items carry the saved total,
    # not the total of the remaining items.
    second, _ = await run_until(pipeline, items, store, every=5)
    assert [(e.value, e.state[TOTAL]) for e in second] == [(x, 210) for x in range(11, 21)]


async def test_a_reduction_whose_result_cannot_be_encoded_fails_clearly() -> None:
    class Seen:  # neither JSON nor a type the codec knows
        def __init__(self, items: frozenset[int]) -> None:
            self.items = items

    pipeline = reduce_point("seen", lambda seen, x: Seen(seen.items | {x}), Seen(frozenset()))
    with pytest.raises(SnapshotError, match=r"reduce_point\('seen'.*\(step 0\) cannot be saved"):
        await Run(pipeline, [1, 2, 3], name="s", checkpoint=MemoryStore(), every=1).collect()


async def test_a_checkpoint_of_another_version_is_refused() -> None:
    store = MemoryStore()
    await store.save(Checkpoint("v", position=1, version="1"))
    run = Run(map_(str), [1, 2], name="v", checkpoint=store, version="2")
    with pytest.raises(CheckpointError, match=r"saved by version '1'.*this run is version '2'"):
        await run.collect()
    assert run.status == "failed"


async def test_the_source_is_seeked_to_a_file_offset(tmp_path: Path) -> None:
    path = tmp_path / "in.txt"
    path.write_text("".join(f"line {n}\n" for n in range(10)), encoding="utf-8")
    async with SQLiteStore(tmp_path / "runs.db") as store:
        run = Run(map_(str.upper), lines(path), name="file", checkpoint=store, every=3)
        async with run:
            async for item in run:
                if item == "LINE 4":
                    break
        assert run.last_checkpoint is not None
        assert run.last_checkpoint.position == len(b"line 0\n") * 3
        rest = await Run(
            map_(str.upper), lines(path), name="file", checkpoint=store, every=3
        ).collect()
    assert rest == [f"LINE {n}" for n in range(3, 10)]


async def test_checkpoints_every_few_seconds() -> None:
    store = MemoryStore()

    async def tick(x: int) -> int:
        await current_clock().sleep(1.0)
        return x

    with virtual_clock():
        run = Run(
            map_(tick),
            resumable(list(range(10))),
            name="t",
            checkpoint=store,
            every=dt.timedelta(seconds=3.5),
        )
        seen: list[int] = []
        async with run:
            async for item in run:
                seen.append(item)
                saved = run.last_checkpoint
                seen.append(-1 if saved is None else saved.items)
    # Item k is pulled at t = k and out at t = k + 1. A checkpoint is due 3.5 s after the
    # previous one (the run started at t = 0): the source sends its barrier after the first
    # item pulled once due, item 4 (t = 4), then after item 8 (t = 8 >= 7.5). Each is saved
    # once it comes out behind that item, in time for the next item's turn.
    pairs = list(zip(seen[::2], seen[1::2], strict=True))
    assert pairs == [
        (0, -1),
        (1, -1),
        (2, -1),
        (3, -1),
        (4, -1),
        (5, 5),
        (6, 5),
        (7, 5),
        (8, 5),
        (9, 9),
    ]
    assert pairs[-1][0] == 9
    final = await store.load("t")
    assert final is not None
    assert final.items == 10


# --------------------------------------------------------------------------- shapes


PIPELINES: dict[str, Callable[[], Stage[Any, Any]]] = {
    "plain": lambda: map_(lambda x: x * 2) | filter_(lambda x: x % 3 != 0),
    "envelop": lambda: envelop() | set_state("double", lambda x: x * 2),
    "envelop-unwrap": lambda: envelop({"k": 1}) | map_(lambda x: x + 1) | unwrap(),
    "set_state": lambda: set_state("half", lambda x: x / 2) | map_(lambda x: x - 1),
    "reduce-unwrap": lambda: (
        envelop() | reduce_point(TOTAL, lambda total, x: total + x, 0) | unwrap()
    ),
    "flat_map": lambda: flat_map(lambda x: [x] * (x % 3)) | chunk(2),
    "pairwise": lambda: pairwise() | map_(lambda pair: pair[0] + pair[1]),
    "take": lambda: map_(lambda x: x + 1) | take(4),
    "concurrent": lambda: map_(_async_double, concurrency=3) | chunk(4),
}


async def _async_double(x: int) -> int:
    await asyncio.sleep(0)
    return x * 2


@pytest.mark.parametrize("name", sorted(PIPELINES))
@pytest.mark.parametrize("enveloped", [False, True])
async def test_a_checkpointed_run_yields_what_the_pipeline_yields(
    name: str, enveloped: bool
) -> None:
    # The run's private source tag never shows: items, envelopes and states are the same.
    items: list[Any] = list(range(1, 12))
    if enveloped:
        items = [Envelope(x).with_state("origin", x) for x in items]
    pipeline = PIPELINES[name]()
    try:
        expected = await collect(items | pipeline)
    except TypeError as exc:  # envelop() of envelopes: the checkpointed run fails alike
        with pytest.raises(TypeError, match=re.escape(str(exc))):
            await Run(pipeline, items, name="shape", checkpoint=MemoryStore()).collect()
        return
    result = await Run(pipeline, items, name="shape", checkpoint=MemoryStore(), every=2).collect()
    assert result == expected


# --------------------------------------------------------------------------- failures


class FailingStore(MemoryStore):
    """A store whose second save fails."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    async def save(
        self, checkpoint: Checkpoint, /, *, writes: Sequence[Write] = (), expect: int | None = None
    ) -> None:
        self.calls += 1
        if self.calls == 2:
            raise OSError("disk full")
        await super().save(checkpoint, writes=writes, expect=expect)


async def test_a_save_that_fails_fails_the_run_once() -> None:
    store = FailingStore()
    run = Run(map_(str), list(range(10)), name="full", checkpoint=store, every=2)
    with pytest.raises(OSError, match="disk full"):
        await run.collect()
    assert run.status == "failed"
    assert store.calls == 2  # no further save once one failed
    assert run.hook_errors == ()
    saved = await store.load("full")
    assert saved is not None
    assert saved.items == 2


# --------------------------------------------------------------------------- random pipelines


@stage(state=dict)
async def _running_count(items: AsyncIterator[int], kept: dict[str, int]) -> AsyncIterator[int]:
    async for item in items:
        kept["n"] = kept.get("n", 0) + 1
        yield item * 1000 + kept["n"]


# Stateful steps from ints to ints, each a small stage: chained at random, they keep state
# across items in every way the built-in operators do.
STATEFUL_STEPS: dict[str, Callable[[], Stage[Any, Any]]] = {
    "scan": lambda: scan(lambda acc, x: acc + x, 0),
    "chunk-sum": lambda: chunk(3) | map_(sum),
    "chunk-flatten": lambda: chunk(4) | flatten(),
    "window-sum": lambda: window(3, step=2) | map_(sum),
    # Both items of each pair show in its output: consecutive inputs would give a
    # difference of 1 for every pair, and a pair lost on a resume would go unseen.
    "pairwise": lambda: pairwise() | map_(lambda pair: pair[0] * 1000 + pair[1]),
    "distinct-mod": lambda: distinct(key=lambda x: x % 17),
    "enumerate": lambda: enumerate_() | map_(lambda pair: pair[0] * 7 + pair[1]),
    "take": lambda: take(40),
    "skip": lambda: skip(3),
    "take_while": lambda: take_while(lambda x: x < 45),
    "skip_while": lambda: skip_while(lambda x: x % 11 != 0),
    "buffer": lambda: buffer(5),
    "scan_by": lambda: scan_by(lambda x: x % 3, lambda total, x: total + x, 0),
    "chunk_until-sum": lambda: chunk_until(lambda x: x % 5 == 0, max_size=3) | map_(sum),
    "scan_state": lambda: (
        envelop()
        | scan_state(RUNNING, lambda total, x: total + x, 0)
        | map_(lambda x, state: x * 3 + state[RUNNING], with_state=True)
        | unwrap()
    ),
    "flat_map": lambda: flat_map(lambda x: [x, x + 1] if x % 3 else []),
    "filter": lambda: filter_(lambda x: x % 4 != 1),
    "concurrent": lambda: map_(_async_double, concurrency=3),
    "custom": lambda: _running_count(),
    "reduce": lambda: (
        envelop()
        | reduce_point(TOTAL, lambda total, x: total + x, 0)
        | map_(lambda x, state: x + state[TOTAL], with_state=True)
        | unwrap()
    ),
}


@settings(max_examples=80, deadline=None)
@given(
    names=st.lists(st.sampled_from(sorted(STATEFUL_STEPS)), min_size=1, max_size=4),
    n=st.integers(0, 60),
    every=st.integers(1, 7),
    kills=st.lists(st.integers(0, 30), max_size=3),
)
def test_resumed_random_pipelines_continue_the_uninterrupted_output(
    names: list[str], n: int, every: int, kills: list[int]
) -> None:
    # Each attempt is left after a random number of outputs (as a killed process stops
    # taking outputs; what it saved stays); the next resumes. Whatever the pipeline, each
    # attempt yields a slice of the uninterrupted output that starts no later than where
    # the attempts before it got to, and the last one reaches its end.
    def build() -> Stage[Any, Any]:
        pipeline = STATEFUL_STEPS[names[0]]()
        for name in names[1:]:
            pipeline = pipeline | STATEFUL_STEPS[name]()
        return pipeline

    items = list(range(1, n + 1))

    async def attempts() -> tuple[list[Any], list[list[Any]]]:
        reference = await collect(items | build())
        store = MemoryStore()
        outputs: list[list[Any]] = []
        for stop in kills:
            out, _ = await run_until(build(), items, store, every=every, stop_after=stop or None)
            outputs.append(out)
        out, _ = await run_until(build(), items, store, every=every)
        outputs.append(out)
        return reference, outputs

    reference, outputs = asyncio.run(attempts())
    assert_continued(reference, outputs)


def assert_continued(reference: list[Any], outputs: list[list[Any]]) -> None:
    """Each attempt's output is a slice of ``reference`` starting no later than the attempts
    before it got to, and together they reach its end."""
    covered = 0
    for out in outputs:
        if not out:
            continue
        starts = [
            begin for begin in range(covered + 1) if reference[begin : begin + len(out)] == out
        ]
        assert starts, (out, reference, covered)
        covered = max(covered, max(starts) + len(out))
    assert covered == len(reference)


async def stop_and_resume(
    pipeline: Callable[[], Stage[Any, Any]], source: Callable[[], Any], stop: int, every: int
) -> tuple[list[Any], int, list[Any]]:
    """A run left after ``stop`` outputs, then resumed to the end, into one `MemoryStore`.

    Returns the first run's outputs, how many of them its last checkpoint covers, and
    the resumed run's outputs.
    """
    store = MemoryStore()
    first, covered = await left_after(pipeline, source, store, stop, every)
    rest, _ = await run_until(pipeline(), source(), store, every=every)
    return first, covered, rest


async def left_after(
    pipeline: Callable[[], Stage[Any, Any]],
    source: Callable[[], Any],
    store: MemoryStore,
    stop: int,
    every: int,
) -> tuple[list[Any], int]:
    """A run (resumed from ``store``, if it holds a checkpoint) left after ``stop`` outputs.

    Returns its outputs and how many of them its last new checkpoint covers (0 if it saved
    none). A `MemoryStore` saves a checkpoint before the next item comes, so one that is
    new when an item comes covers the outputs before that item.
    """
    out: list[Any] = []
    covered = 0
    before = await store.load("job")
    seen: Checkpoint | None = None
    async with Run(pipeline(), source(), name="job", checkpoint=store, every=every) as run:
        async for item in run:
            if run.last_checkpoint is not seen:
                seen, covered = run.last_checkpoint, len(out)
            out.append(item)
            if len(out) == stop:
                break
    if seen is None or (before is not None and seen.sequence == before.sequence):
        covered = 0
    return out, covered


@pytest.mark.parametrize("name", sorted(STATEFUL_STEPS))
async def test_each_stateful_step_resumed_after_any_output_continues_its_output(
    name: str,
) -> None:
    # Every stop point, not a sample: a step whose state changes once (skip_while past its
    # first failing item, take_while at its end) is resumed on both sides of the change.
    # The resumed run must give exactly the outputs after those its checkpoint covers: a
    # step that lost part of its state could otherwise hide the loss behind outputs the
    # first attempt had already given.
    # A second interruption, a few outputs into the resumed run, checks what a resumed
    # step saves (a skip_while resumed past its first failing item, a reduce_point
    # resumed while emitting).
    items = list(range(1, 61))
    reference = await collect(items | STATEFUL_STEPS[name]())
    for stop in range(1, len(reference)):
        first, covered, rest = await stop_and_resume(STATEFUL_STEPS[name], lambda: items, stop, 3)
        assert first == reference[:stop]
        assert rest == reference[covered:], (stop, covered)
        if covered + 4 >= len(reference):
            continue  # a second attempt would reach the end
        store = MemoryStore()
        _, covered = await left_after(STATEFUL_STEPS[name], lambda: items, store, stop, 3)
        second, more = await left_after(STATEFUL_STEPS[name], lambda: items, store, 4, 3)
        assert second == reference[covered : covered + 4], (stop, covered)
        last, _ = await run_until(STATEFUL_STEPS[name](), items, store, every=3)
        assert last == reference[covered + more :], (stop, covered, more)


async def test_zip_resumed_zips_the_items_its_checkpoint_kept_queued() -> None:
    # The first source drops two items in three before zip sees them, so its barriers
    # reach zip later than the second's: zip queues the second source's items meanwhile,
    # and the checkpoint keeps them.
    def source() -> Any:
        return zip_(list(range(60)) | filter_(lambda x: x % 3 == 0), list(range(100, 160)))

    def pipeline() -> Stage[Any, Any]:
        return map_(list)

    reference = await collect(source() | pipeline())
    queued = 0
    for stop in range(1, len(reference)):
        first, covered, rest = await stop_and_resume(pipeline, source, stop, 3)
        assert first == reference[:stop]
        assert rest == reference[covered:], (stop, covered)
    store = MemoryStore()
    async with Run(pipeline(), source(), name="job", checkpoint=store, every=3) as run:
        async for _ in run:
            saved = run.last_checkpoint
            if saved is not None:
                queued += any(saved.state["source"])  # zip's queues, one list per source
    assert queued  # the case this test is about came up


# --------------------------------------------------------------------------- changing a pipeline


def add(total: int, n: int) -> int:
    return total + n


def positive(n: int) -> bool:
    return n > 0


NUMBERS = [5, -2, 7, 1, -4, 3]


def old_pipeline() -> Stage[int, int]:
    return map_(abs) | scan(add, 0)


def new_pipeline() -> Stage[int, int]:
    return map_(abs) | filter_(positive) | scan(add, 0)


async def interrupted_old_run(store: MemoryStore) -> Checkpoint:
    """An old-shape run left after its first checkpoint (it covers two numbers)."""
    out, run = await run_until(old_pipeline(), NUMBERS, store, every=2, stop_after=3)
    assert out == [5, 7, 14]
    saved = run.last_checkpoint
    assert saved is not None
    assert (saved.items, dict(saved.state)) == (2, {"1": 7})
    return saved


def move_the_total(old: Checkpoint) -> Checkpoint | None:
    state = dict(old.state)
    state["2"] = state.pop("1")
    return old.replace(state=state, shape=(*old.shape[:2], "1 filter_(positive)", "2 scan(add)"))


async def test_a_pipeline_of_another_shape_is_refused_naming_the_first_difference() -> None:
    store = MemoryStore()
    saved = await interrupted_old_run(store)
    run = Run(new_pipeline(), NUMBERS, name="job", checkpoint=store)
    with pytest.raises(CheckpointError, match=r"has '1 scan\(add\)' where this one has '1 filter_"):
        await run.collect()
    assert run.status == "failed"
    assert await store.load("job") == saved  # refused, not overwritten


async def test_migrate_rewrites_a_checkpoint_of_another_shape() -> None:
    store = MemoryStore()
    await interrupted_old_run(store)
    seen: list[tuple[str, ...]] = []

    def migrate(old: Checkpoint) -> Checkpoint | None:
        seen.append(old.shape)
        return move_the_total(old)

    run = Run(new_pipeline(), NUMBERS, name="job", checkpoint=store, migrate=migrate)
    # Resumed after 5 and -2 (abs: 2) with the total 7: 7, 1, 4 and 3 follow.
    assert await run.collect() == [14, 15, 19, 22]
    assert seen == [("source source", "0 map_(abs)", "1 scan(add)")]
    resumed, last = run.resumed_from, run.last_checkpoint
    assert resumed is not None
    assert last is not None
    assert (
        resumed.shape
        == last.shape
        == ("source source", "0 map_(abs)", "1 filter_(positive)", "2 scan(add)")
    )


async def test_migrate_is_not_called_when_the_shape_is_the_same() -> None:
    store = MemoryStore()
    await interrupted_old_run(store)
    calls: list[Checkpoint] = []

    def migrate(old: Checkpoint) -> Checkpoint | None:
        calls.append(old)
        return None

    run = Run(old_pipeline(), NUMBERS, name="job", checkpoint=store, migrate=migrate)
    assert await run.collect() == [14, 15, 19, 22]
    assert calls == []


@pytest.mark.parametrize(
    "migrate",
    [
        pytest.param(lambda old: None, id="returns None"),
        pytest.param(lambda old: old, id="returns the old shape"),
        pytest.param(lambda old: old.replace(shape=("source source",)), id="returns a third"),
    ],
)
async def test_a_migration_that_does_not_give_this_shape_is_refused(
    migrate: Callable[[Checkpoint], Checkpoint | None],
) -> None:
    store = MemoryStore()
    saved = await interrupted_old_run(store)
    run = Run(new_pipeline(), NUMBERS, name="job", checkpoint=store, migrate=migrate)
    with pytest.raises(CheckpointError, match="another shape"):
        await run.collect()
    assert await store.load("job") == saved


async def test_an_error_in_migrate_fails_the_run_with_it() -> None:
    store = MemoryStore()
    await interrupted_old_run(store)

    def migrate(old: Checkpoint) -> Checkpoint | None:
        raise KeyError("no such step")

    run = Run(new_pipeline(), NUMBERS, name="job", checkpoint=store, migrate=migrate)
    with pytest.raises(KeyError, match="no such step"):
        await run.collect()
    assert run.status == "failed"


def test_migrate_and_codec_are_checked_at_construction() -> None:
    with pytest.raises(TypeError, match="migrate must be callable or None, got int"):
        Run(map_(abs), NUMBERS, name="job", checkpoint=MemoryStore(), migrate=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="codec= and migrate= are options of checkpoint="):
        Run(map_(abs), NUMBERS, migrate=move_the_total)


async def test_distinct_tuple_keys_come_back_as_tuples_after_a_resume() -> None:
    items = [(1, 2), (3, 4), (1, 2), (5, 6), (3, 4), (7, 8), (1, 2)]
    store = MemoryStore()
    out, _ = await run_until(distinct(), items, store, every=2, stop_after=3)
    assert out == [(1, 2), (3, 4), (5, 6)]
    resumed, _ = await run_until(distinct(), items, store, every=2)
    assert resumed == [(5, 6), (7, 8)]  # (1, 2) and (3, 4) are still known: not lists


# --------------------------------------------------------------------------- codecs


@dataclass(frozen=True)
class Money:
    cents: int
    currency: str


MONEY = DEFAULT_CODEC.with_type(
    Money,
    encode=lambda money: [money.cents, money.currency],
    decode=lambda pair: Money(*pair),
    name="money",
)


class MoneyText:
    """A codec of one key's values: ``Money(1990, "EUR")`` is ``"1990 EUR"``."""

    def encode(self, money: Money) -> str:
        return f"{money.cents} {money.currency}"

    def decode(self, text: str) -> Money:
        cents, currency = text.split()
        return Money(int(cents), currency)


PRICE = Key[Money]("price", codec=MoneyText())


def priced(n: int) -> Money:
    return Money(100 * n, "EUR")


def values_and_prices(batches: Sequence[Envelope[list[int]]]) -> list[Any]:
    return [(batch.value, batch.state.get(PRICE, None)) for batch in batches]


async def test_a_typed_codec_given_to_the_run_also_encodes_envelopes() -> None:
    # A batch of envelopes held by chunk is in its snapshot: the run's codec needs the envelope
    # form even when it is the user's own `DEFAULT_CODEC.with_type(...)`.
    pipeline = map_(priced) | envelop() | chunk(3)
    store = MemoryStore()
    whole = await Run(pipeline, range(7), name="whole", checkpoint=store, codec=MONEY).collect()
    first: list[Any] = []
    async with Run(pipeline, range(7), name="job", checkpoint=store, every=2, codec=MONEY) as run:
        async for batch in run:
            first.append(batch)
            break  # its last checkpoint, after 2 items, holds them in the open batch
    saved = await store.load("job")
    assert saved is not None
    assert saved.state["2"] == [
        {"$type": "streamkit:Envelope", "value": [{"$type": "money", "value": [cents, "EUR"]}, {}]}
        for cents in (0, 100)
    ]
    rest = await Run(pipeline, range(7), name="job", checkpoint=store, codec=MONEY).collect()
    assert first == whole[:1]
    assert rest == whole  # the first batch again: it was not complete at the checkpoint


async def test_a_keys_codec_encodes_its_values_in_the_envelopes_of_a_snapshot() -> None:
    pipeline = set_state(PRICE, priced) | chunk(3) | map_(sum)
    store = MemoryStore()
    out, _ = await run_until(pipeline, range(7), store, every=2, stop_after=1)
    saved = await store.load("job")
    assert saved is not None
    # The run's codec writes a dataclass as an object: the text is the key's codec's.
    assert saved.state["1"] == [
        {"$type": "streamkit:Envelope", "value": [n, {}, {"price": f"{100 * n} EUR"}]}
        for n in (0, 1)
    ]
    rest, run = await run_until(pipeline, range(7), store)
    assert run.resumed_from is not None
    assert out == rest[:1]
    assert [item.value for item in rest] == [3, 12, 6]
    assert [item.state[PRICE] for item in rest] == [priced(2), priced(5), priced(6)]


def test_two_steps_that_set_one_key_with_two_codecs_are_refused() -> None:
    other = Key[Money]("price", codec=MoneyText())
    pipeline = set_state(PRICE, priced) | set_state(other, priced)
    with pytest.raises(ValueError, match=r"step 1, set_state\('price', priced\), sets state key"):
        Run(pipeline, range(3), name="job", checkpoint=MemoryStore())


async def test_a_reduction_to_one_aggregate_resumes_its_fold_with_the_last_state() -> None:
    failed: list[int] = []

    def fails_once_at_5(n: int) -> int:
        if n == 5 and not failed:
            failed.append(n)
            raise ConnectionError(n)
        return n

    reduction = set_state("seen", str) | reduce_point(
        TOTAL, lambda total, n: total + n, 0, emit="aggregate"
    )
    whole = await collect(range(8) | reduction)
    pipeline = map_(fails_once_at_5) | reduction
    store = MemoryStore()
    with pytest.raises(ConnectionError):
        await Run(pipeline, range(8), name="job", checkpoint=store, every=2).collect()
    saved = await store.load("job")
    assert saved is not None
    assert saved.items == 4  # the fold so far (0 + 1 + 2 + 3) and the last item's state
    resumed = await Run(pipeline, range(8), name="job", checkpoint=store, every=2).collect()
    assert resumed == whole
    assert [(item.value, dict(item.state)) for item in resumed] == [
        (28, {"seen": "7", "total": 28})
    ]


def add_price(total: Money, n: int) -> Money:
    return Money(total.cents + priced(n).cents, total.currency)


@pytest.mark.parametrize(
    ("reduction", "fails_before"),
    [
        pytest.param(lambda: scan_state(PRICE, add_price, Money(0, "EUR")), True, id="scan_state"),
        pytest.param(
            lambda: reduce_point(PRICE, add_price, Money(0, "EUR"), emit="aggregate"),
            True,
            id="reduce_point while folding",
        ),
        pytest.param(
            lambda: reduce_point(PRICE, add_price, Money(0, "EUR")),
            False,  # its checkpoints complete only after the fold
            id="reduce_point while emitting",
        ),
    ],
)
async def test_a_keys_codec_encodes_the_aggregate_of_its_step(
    reduction: Callable[[], Stage[int, Envelope[int]]], fails_before: bool
) -> None:
    failed: list[int] = []

    def fails_once_at_5(n: int) -> int:
        if n == 5 and not failed:
            failed.append(n)
            raise ConnectionError(n)
        return n

    whole = await collect(range(8) | reduction())
    store = MemoryStore()
    flaky = map_(fails_once_at_5)
    pipeline = flaky | reduction() if fails_before else reduction() | flaky
    with pytest.raises(ConnectionError):
        await Run(pipeline, range(8), name="job", checkpoint=store, every=2).collect()
    saved = await store.load("job")
    assert saved is not None
    # The run's codec writes a dataclass as an object: the text is the key's codec's.
    assert '"price": "' in json.dumps(saved.state["1" if fails_before else "0"])
    rest = await Run(pipeline, range(8), name="job", checkpoint=store, every=2).collect()
    assert rest == whole[len(whole) - len(rest) :]
    assert rest[-1].state[PRICE] == Money(2800, "EUR")


def _with_a_bad_item(n: int) -> int:
    if n % 11 == 5:
        raise ValueError(f"bad {n}")
    return n


@settings(max_examples=60, deadline=None)
@given(
    names=st.lists(st.sampled_from(sorted(STATEFUL_STEPS)), min_size=0, max_size=3),
    n=st.integers(0, 60),
    every=st.integers(1, 7),
    stop=st.none() | st.integers(1, 40),
)
def test_async_for_hands_the_checkpoints_what_a_relayed_run_does(
    names: list[str], n: int, every: int, stop: int | None
) -> None:
    # `async for` over a run with no per-item hook iterates the pipeline's own last step,
    # which takes the barriers and dead letters itself; with an `on_item` hook, a relay
    # does. Both give the same outputs, checkpoints and dead letters, also resumed.
    def build() -> Stage[Any, Any]:
        pipeline: Stage[Any, Any] = map_(lambda x: x)
        for name in names:
            pipeline = pipeline | STATEFUL_STEPS[name]()
        return pipeline | map_(_with_a_bad_item, on_error="split", dead_letter=lambda r: None)

    async def attempts(relayed: bool) -> tuple[Any, ...]:
        store = MemoryStore()
        found: list[Any] = []
        for limit in (stop, None):
            hooks = [Hooks(on_item=lambda item: None)] if relayed else []
            out: list[Any] = []
            async with Run(
                build(), list(range(n)), name="job", checkpoint=store, every=every, hooks=hooks
            ) as run:
                async for item in run:
                    out.append(item)
                    if len(out) == limit:
                        break
            found.append((out, run.status))
        history = [
            (c.position, c.items, c.complete, dict(c.state))
            for c in await store.history("job", limit=1000)
        ]
        letters = [(d.stage, d.record["item"]) for d in await store.dead_letters("job")]
        return found, history, letters

    direct = asyncio.run(attempts(relayed=False))
    assert direct == asyncio.run(attempts(relayed=True))


# ------------------------------------------------------------------- state held between items


class StagedSink:
    """A sink that stages each checkpoint's items and shows them once committed.

    Its commit fails once, for the checkpoint numbered ``fail_at``: after that
    checkpoint was saved, as when a process dies between the save and the commit.
    """

    label = "staged"

    def __init__(self, fail_at: int) -> None:
        self.fail_at = fail_at
        self.staged: dict[int, list[int]] = {}
        self.visible: list[int] = []

    def pre_commit(self, items: Sequence[int], checkpoint: int, /) -> int:
        self.staged[checkpoint] = list(items)
        return checkpoint

    async def commit(self, prepared: int, /) -> None:
        if prepared == self.fail_at:
            self.fail_at = 0
            raise ConnectionError(f"commit {prepared} lost")
        self.visible += self.staged.pop(prepared, [])  # idempotent: a second commit adds nothing


async def test_a_resumed_run_commits_the_sink_work_its_checkpoint_prepared() -> None:
    sink = StagedSink(fail_at=2)
    store = MemoryStore()
    pipeline = map_(lambda x: x * 10) | write_to(sink)
    with pytest.raises(ConnectionError, match="commit 2 lost"):
        await Run(pipeline, range(10), name="job", checkpoint=store, every=3).drain()
    saved = await store.load("job")
    assert saved is not None
    assert saved.sequence == 2  # saved before its commit failed
    assert sink.visible == [0, 10, 20]
    await Run(pipeline, range(10), name="job", checkpoint=store, every=3).drain()
    # The resumed run committed checkpoint 2's staged work before going on: every item
    # is visible once.
    assert sink.visible == [x * 10 for x in range(10)]


async def test_debounce_resumed_emits_the_item_it_was_holding() -> None:
    # Items 0-2 come 0.1 s apart, then a pause of 2 s before item 3, and so on: debounce
    # (1 s) gives the last item of each group. Checkpoints come every 2 items, so some
    # barriers pass while debounce holds the last item of a group: the snapshot keeps it
    # with the rest of its quiet period, and the resumed run gives it. On the virtual
    # clock the resumed run gives exactly the outputs its checkpoint does not cover.
    async def arrive(x: int) -> int:
        await current_clock().sleep(2.0 if x % 3 == 0 else 0.1)
        return x

    def pipeline() -> Stage[int, int]:
        return map_(arrive) | debounce(1.0)

    items = list(range(12))
    with virtual_clock():
        reference = await collect(items | pipeline())
    assert reference == [2, 5, 8, 11]
    holding = 0  # checkpoints that kept an item debounce held
    for stop in range(1, len(reference)):
        store = MemoryStore()
        with virtual_clock():
            first, covered = await left_after(pipeline, lambda: items, store, stop, 2)
            saved = await store.load("job")
            rest, _ = await run_until(pipeline(), items, store, every=2)
        assert saved is not None
        holding += bool(saved.state.get("1"))
        assert first == reference[:stop]
        assert rest == reference[covered:], (stop, covered, rest)
    assert holding  # the case this test is about came up


async def timed_outputs(run: Run[Any], stop: int | None = None) -> list[tuple[float, Any]]:
    """The run's outputs with the virtual time each came at; left after ``stop`` of them."""
    clock = current_clock()
    out: list[tuple[float, Any]] = []
    async with run:
        async for item in run:
            out.append((clock.now(), item))
            if len(out) == stop:
                break
    return out


async def timed_resume(
    run: Callable[[MemoryStore], Run[int]], stop: int
) -> tuple[Checkpoint, list[tuple[float, Any]]]:
    """A run left after ``stop`` outputs, then resumed, each on a new virtual clock.

    Returns the checkpoint the resumed run started from and its timed outputs.
    """
    store = MemoryStore()
    with virtual_clock():
        await timed_outputs(run(store), stop)
    saved = await store.load("job")
    assert saved is not None
    with virtual_clock():
        resumed = await timed_outputs(run(store))
    return saved, resumed


async def test_throttle_resumed_keeps_the_tokens_its_checkpoint_had() -> None:
    # One token a second, a bucket of 3: the first three items go at once, the others a
    # second apart. The resumed run starts with the tokens the checkpoint kept (what was
    # left of the bucket), not with a full bucket: its i-th item cannot leave before
    # (i + 1 - kept) seconds.
    def run(store: MemoryStore) -> Run[int]:
        return Run(throttle(1.0, burst=3), list(range(12)), name="job", checkpoint=store, every=2)

    for stop in range(4, 11):
        saved, resumed = await timed_resume(run, stop)
        kept = saved.state["0"]
        assert 0 <= kept < 3  # the bucket was drained: a resume must not refill it
        assert [item for _, item in resumed] == list(range(saved.position, 12))
        for i, (at, _) in enumerate(resumed):
            assert at >= (i + 1 - kept) - 1e-9, (stop, kept, resumed)


async def test_spaced_resumed_keeps_the_gap_after_the_last_item_it_let_go() -> None:
    # spaced(1.0): an item at most every second. The checkpoint keeps how long before its
    # barrier the last item left; the resumed run's first item waits for the rest.
    def run(store: MemoryStore) -> Run[int]:
        return Run(spaced(1.0), list(range(8)), name="job", checkpoint=store, every=2)

    waited = 0
    for stop in range(3, 8):
        saved, resumed = await timed_resume(run, stop)
        since = saved.state["0"]
        assert [item for _, item in resumed] == list(range(saved.position, 8))
        if since is not None:
            assert resumed[0][0] >= 1.0 - since - 1e-9, (stop, since, resumed)
            waited += resumed[0][0] > 0
        assert all(b - a >= 1.0 - 1e-9 for (a, _), (b, _) in itertools.pairwise(resumed))
    assert waited  # a resumed run did wait for the rest of a gap
