"""A checkpointed run never waits for its store: one save at a time, the newest one next.

A store here holds each save until the test lets it go, so that barriers
come out while a save is under way.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamkit import MemoryStore, Run, TableSink, map_, write_to
from streamkit._checkpointing import SAVE_LAG
from streamkit.testing import assert_no_pending_tasks

if TYPE_CHECKING:
    from collections.abc import Sequence

    from streamkit import Checkpoint, Write


HANG = 30.0
"""Seconds after which a run that waits for a held save fails its test instead of hanging."""


class HeldStore(MemoryStore):
    """A MemoryStore whose saves wait until `release`; counts saves started."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.started: list[int] = []

    def release(self) -> None:
        self.gate.set()

    async def save(
        self,
        checkpoint: Checkpoint,
        /,
        *,
        writes: Sequence[Write] = (),
        expect: int | None = None,
    ) -> None:
        self.started.append(checkpoint.sequence)
        await self.gate.wait()
        await super().save(checkpoint, writes=writes, expect=expect)


async def test_items_flow_while_a_save_is_under_way_and_the_newest_checkpoint_comes_next() -> None:
    await asyncio.wait_for(
        _items_flow_while_a_save_is_under_way_and_the_newest_checkpoint_comes_next(), HANG
    )
    assert_no_pending_tasks()


async def _items_flow_while_a_save_is_under_way_and_the_newest_checkpoint_comes_next() -> None:
    async with HeldStore() as store:
        sink = TableSink(store, "out")
        run = Run(
            map_(lambda x: x * 2) | write_to(sink),
            range(100),
            name="job",
            checkpoint=store,
            every=10,
        )
        seen: list[int] = []
        async with run:
            async for item in run:
                seen.append(item)
                await asyncio.sleep(0)
                if len(seen) == 55:
                    # Five barriers came out: the first is being saved, the others did
                    # not wait for it, and only the newest of them is waiting.
                    assert store.started == [1]
                    store.release()
        assert seen == [x * 2 for x in range(100)]
        assert store.started[:2] == [1, 5]
        history = await store.history("job", limit=1)
        assert history[0].complete
        # The replaced checkpoints' sink rows went with the newer ones: each output once.
        assert await sink.rows() == seen


async def test_a_run_left_early_saves_the_checkpoint_that_waited() -> None:
    await asyncio.wait_for(_a_run_left_early_saves_the_checkpoint_that_waited(), HANG)
    assert_no_pending_tasks()


async def _a_run_left_early_saves_the_checkpoint_that_waited() -> None:
    async with HeldStore() as store:
        sink = TableSink(store, "out")
        pipeline = map_(lambda x: x + 1) | write_to(sink)
        run = Run(pipeline, range(100), name="job", checkpoint=store, every=10)
        seen: list[int] = []
        async with run:
            async for item in run:
                seen.append(item)
                await asyncio.sleep(0)
                if len(seen) == 35:
                    store.release()
                    break
        last = await store.load("job")
        assert last is not None
        assert (last.position, last.complete) == (30, False)
        assert await sink.rows() == seen[:30]
        # The next run goes on from there: every item once in the table.
        await Run(pipeline, range(100), name="job", checkpoint=store, every=10).drain()
        assert await sink.rows() == [x + 1 for x in range(100)]


async def test_a_run_gets_at_most_save_lag_intervals_ahead_of_its_store() -> None:
    await asyncio.wait_for(_a_run_gets_at_most_save_lag_intervals_ahead_of_its_store(), HANG)
    assert_no_pending_tasks()


async def _a_run_gets_at_most_save_lag_intervals_ahead_of_its_store() -> None:
    async with HeldStore() as store:
        run = Run(map_(lambda x: x), range(1000), name="job", checkpoint=store, every=10)
        seen: list[int] = []

        async def consume() -> None:
            async for item in run:
                seen.append(item)

        consuming = asyncio.create_task(consume())
        for _ in range(5000):
            await asyncio.sleep(0)
        # The first barrier's save is held; SAVE_LAG more came out meanwhile, and the one
        # after them waits until the newest is saved: nothing more comes out.
        assert store.started == [1]
        assert len(seen) == (SAVE_LAG + 2) * 10
        store.release()
        await consuming
        assert seen == list(range(1000))
        assert store.started[:2] == [1, SAVE_LAG + 2]


async def test_a_failed_save_fails_the_run_and_the_waiting_checkpoint_is_not_saved() -> None:
    class Failing(HeldStore):
        async def save(self, checkpoint: Checkpoint, /, **options: Any) -> None:
            self.started.append(checkpoint.sequence)
            await self.gate.wait()
            raise OSError("disk full")

    async with Failing() as store:
        run = Run(map_(lambda x: x), range(100), name="job", checkpoint=store, every=10)
        seen: list[int] = []

        async def consume() -> None:
            async for item in run:
                seen.append(item)
                await asyncio.sleep(0)
                if len(seen) == 35:
                    store.release()

        with pytest.raises(OSError, match="disk full"):
            await consume()
        assert run.status == "failed"
        assert store.started == [1]
        assert await store.load("job") is None
    assert_no_pending_tasks()


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(min_value=0, max_value=300),
    every=st.integers(min_value=1, max_value=40),
    release_after=st.integers(min_value=0, max_value=300),
    stop_at=st.none() | st.integers(min_value=1, max_value=300),
)
def test_a_held_store_ends_with_the_table_of_a_store_that_never_waits(
    n: int, every: int, release_after: int, stop_at: int | None
) -> None:
    def pipeline(sink: TableSink[Any]) -> Any:
        return map_(lambda x: x * 3) | write_to(sink)

    async def attempt(store: MemoryStore, sink: TableSink[Any]) -> list[int]:
        run = Run(pipeline(sink), range(n), name="job", checkpoint=store, every=every)
        seen: list[int] = []
        async with run:
            async for item in run:
                seen.append(item)
                await asyncio.sleep(0)
                if len(seen) == stop_at:
                    break
        return seen

    async def release(store: HeldStore) -> None:
        for _ in range(release_after):
            await asyncio.sleep(0)
        store.release()

    async def whole(store: MemoryStore) -> tuple[list[int], list[int]]:
        async with store:
            sink = TableSink(store, "out")
            releasing = None
            if isinstance(store, HeldStore):
                releasing = asyncio.create_task(release(store))
            first = await attempt(store, sink)
            if releasing is not None:
                await releasing
            # Resumed to the end: the table holds every output exactly once.
            await Run(pipeline(sink), range(n), name="job", checkpoint=store, every=every).drain()
            return first, await sink.rows()

    held_first, held_rows = asyncio.run(whole(HeldStore()))
    plain_first, plain_rows = asyncio.run(whole(MemoryStore()))
    assert held_first == plain_first
    assert held_rows == plain_rows == [x * 3 for x in range(n)]
