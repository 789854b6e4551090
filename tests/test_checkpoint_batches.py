"""A checkpointed run reads a sequence source in batches, with the same checkpoints.

The run's one source, when it is a sequence (or `resumable` over one), is
read a batch at a time. These tests run the same pipeline over the same
items through a resumable source that is not a sequence (read one item at a
time) and compare what comes out and what the store holds, also when the
consumer stops in the middle of a batch and the run is resumed.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from hypothesis import given, settings
from hypothesis import strategies as st

from streamkit import MemoryStore, Run, Stage, filter_, map_, resumable, scan, take

if TYPE_CHECKING:
    from collections.abc import Sequence

    from streamkit import Checkpoint


class OneByOne:
    """A resumable source over a list that is not a sequence source: read per item."""

    def __init__(self, items: Sequence[int]) -> None:
        self.items = items
        self.index = 0

    def __aiter__(self) -> OneByOne:
        return self

    async def __anext__(self) -> int:
        if self.index >= len(self.items):
            raise StopAsyncIteration
        self.index += 1
        return self.items[self.index - 1]

    async def aclose(self) -> None:
        pass

    def position(self) -> int:
        return self.index

    def seek(self, position: object) -> None:
        assert isinstance(position, int)
        self.index = position


PIPELINE = map_(lambda x: x + 1) | filter_(lambda x: x % 3 != 0) | scan(lambda a, x: a + x, 0)


def _checkpoints(history: Sequence[Checkpoint]) -> list[tuple[Any, int, int, bool, Any]]:
    return [(c.position, c.items, c.sequence, c.complete, c.state) for c in history]


async def _attempt(
    source: Any,
    store: MemoryStore,
    every: int,
    stop_after: int | None,
    pipeline: Stage[Any, Any],
    metrics: bool = True,
) -> tuple[list[Any], str]:
    out: list[Any] = []
    run = Run(pipeline, source, name="job", checkpoint=store, every=every, metrics=metrics)
    async with run:
        async for item in run:
            out.append(item)
            if len(out) == stop_after:
                break
    return out, run.status


async def _twice(
    make: Any,
    n: int,
    every: int,
    stop_after: int | None,
    pipeline: Stage[Any, Any] = PIPELINE,
    metrics: bool = True,
) -> tuple[Any, ...]:
    store = MemoryStore()
    first = await _attempt(make(list(range(n))), store, every, stop_after, pipeline, metrics)
    after_first = _checkpoints(await store.history("job", limit=1000))
    second = await _attempt(make(list(range(n))), store, every, None, pipeline, metrics)
    after_second = _checkpoints(await store.history("job", limit=1000))
    return first, after_first, second, after_second


# The first begins with a fused segment (which reads the source in a plain loop), the
# second with a step that is not one (it reads the source as an async iterator).
PIPELINES = [PIPELINE, scan(lambda a, x: a + x, 0) | map_(lambda x: x * 2) | filter_(bool)]


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(min_value=0, max_value=5000),
    every=st.integers(min_value=1, max_value=3000),
    stop_after=st.none() | st.integers(min_value=1, max_value=3500),
    pipeline=st.sampled_from(PIPELINES),
    metrics=st.booleans(),
)
def test_batched_reads_save_the_checkpoints_of_reads_one_by_one(
    n: int, every: int, stop_after: int | None, pipeline: Stage[Any, Any], metrics: bool
) -> None:
    # Unwatched (metrics=False), the first fused segment runs its batches in a bare loop.
    one_by_one = asyncio.run(_twice(OneByOne, n, every, stop_after, pipeline, metrics))
    for make in (list, resumable):
        assert asyncio.run(_twice(make, n, every, stop_after, pipeline, metrics)) == one_by_one


def test_a_run_stopped_within_a_batch_resumes_at_its_last_checkpoint() -> None:
    whole = asyncio.run(Run(PIPELINE, list(range(5000)), name="whole").collect())
    (first, status), saved, (second, _), _ = asyncio.run(_twice(list, 5000, 1000, 1500))
    assert status == "cancelled"
    assert first == whole[:1500]
    # The last checkpoint before the stop is after 2,000 source items: the second
    # attempt repeats the results after it and goes on to the end.
    assert saved[0][:2] == (2000, 2000)
    assert second == whole[sum(1 for x in range(2000) if (x + 1) % 3) :]


@settings(max_examples=20, deadline=None)
@given(
    n=st.integers(min_value=0, max_value=5000),
    every=st.integers(min_value=1, max_value=3000),
    taken=st.integers(min_value=0, max_value=3500),
)
def test_a_run_that_takes_part_of_its_source_saves_what_it_read(
    n: int, every: int, taken: int
) -> None:
    # take() closes the source in the middle of a batch and the run succeeds: its last
    # checkpoint counts the items read, not those taken from the sequence for the batch.
    pipeline = PIPELINE | take(taken)
    batched = asyncio.run(_twice(list, n, every, None, pipeline))
    one_by_one = asyncio.run(_twice(OneByOne, n, every, None, pipeline))
    assert batched == one_by_one


def test_a_checkpointed_run_over_a_long_list_lets_other_tasks_run() -> None:
    ticks: list[int] = []

    async def ticker() -> None:
        while True:
            ticks.append(1)
            await asyncio.sleep(0)

    async def main() -> tuple[int, int]:
        task = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        before = len(ticks)
        # Item steps only: the first fused segment reads the source in a plain loop;
        # no barrier (only the last checkpoint) makes the run wait on its own.
        pipeline = map_(lambda x: x + 1) | filter_(lambda x: x % 3 != 0)
        store = MemoryStore()
        run = Run(pipeline, list(range(20_000)), name="job", checkpoint=store, every=10**6)
        count = len(await run.collect())
        task.cancel()
        return count, len(ticks) - before

    count, during = asyncio.run(main())
    assert count == sum(1 for x in range(20_000) if (x + 1) % 3)
    assert during >= 10


def _dead_letter_every_97th(x: int) -> int:
    if x % 97 == 5:
        raise ValueError(f"bad {x}")
    return x


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(min_value=0, max_value=5000),
    every=st.integers(min_value=1, max_value=3000),
    fail_at=st.none() | st.integers(min_value=0, max_value=5000),
    dead_letters=st.booleans(),
    metrics=st.booleans(),
)
def test_failures_and_dead_letters_in_a_batch_are_those_of_reads_one_by_one(
    n: int, every: int, fail_at: int | None, dead_letters: bool, metrics: bool
) -> None:
    # Once its chain is compiled, the first fused segment of an unwatched run runs each
    # batch in a bare loop (unless a step may hand out a dead letter): a failure there
    # names the same item, and the dead letters and checkpoints are those of a run that
    # reads its source one item at a time.
    def fails(x: int) -> int:
        if x == fail_at:
            raise KeyError(f"item {x}")
        return x

    pipeline: Stage[int, int] = map_(fails) | filter_(lambda x: x % 3 != 0)
    if dead_letters:
        splits = map_(_dead_letter_every_97th, on_error="split", dead_letter=lambda r: None)
        pipeline = pipeline | splits

    async def attempt(make: Any) -> tuple[Any, ...]:
        store = MemoryStore()
        out: list[int] = []
        error: tuple[str, list[str]] | None = None
        source = make(list(range(n)))
        run = Run(pipeline, source, name="job", checkpoint=store, every=every, metrics=metrics)
        try:
            async with run:
                async for item in run:
                    out.append(item)
        except KeyError as exc:
            error = (str(exc), getattr(exc, "__notes__", []))
        letters = [(d.stage, d.record["item"]) for d in await store.dead_letters("job")]
        history = _checkpoints(await store.history("job", limit=1000))
        statistics = run.statistics()
        stages = [
            (s.items_in, s.items_out, s.filtered, s.dead_lettered, s.timed_calls)
            for s in statistics.stages
        ]
        return out, error, statistics.items_out, stages, history, letters

    batched = asyncio.run(attempt(list))
    assert batched == asyncio.run(attempt(OneByOne))
    assert (batched[1] is None) == (fail_at is None or fail_at >= n)


async def test_a_watched_checkpointed_run_over_a_list_pauses_between_two_items() -> None:
    # Watched, the first fused segment runs each batch in a loop that counts every item
    # as it enters and holds while the run is paused, as a run without a checkpoint does.
    entered: list[int] = []

    def note(x: int) -> int:
        entered.append(x)
        return x

    pipeline = map_(note) | filter_(lambda x: x % 3 != 0)
    run = Run(pipeline, list(range(3000)), name="job", checkpoint=MemoryStore(), every=1000)
    got: list[int] = []
    paused = asyncio.Event()

    async def consume() -> None:
        async for item in run:
            got.append(item)
            if item == 1501:
                run.pause()
                paused.set()

    async def resume_later() -> None:
        await paused.wait()
        assert run.status == "paused"
        for _ in range(20):
            await asyncio.sleep(0)
        assert entered[-1] == 1501
        assert run.statistics().stages[0].items_in == 1502
        await run.resume()

    await asyncio.gather(consume(), resume_later())
    assert got == [x for x in range(3000) if x % 3 != 0]
    assert entered == list(range(3000))
    assert run.statistics().stages[0].items_in == 3000
