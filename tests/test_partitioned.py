"""The per-partition core (streamkit._partitioned) with an in-memory broker.

`Broker` is streamkit's own protocol, so a broker kept in memory exercises
`Partitioned` and `Partitions` directly: one checkpointed run per partition,
acknowledgements only after the checkpoint that covers them, revoke with a
last checkpoint, resume from it, failures and cleanup. The brokers
themselves are tested against real servers (tests/test_redis.py).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamkit import (
    Broker,
    MemoryStore,
    Partitioned,
    Partitions,
    PartitionSource,
    TableSink,
    map_,
    write_to,
)
from streamkit.testing import assert_no_pending_tasks


class MemoryBroker:
    """Partitions as lists; the position is the index of the next item."""

    def __init__(self, data: dict[str, list[int]], *, own: list[str] | None = None) -> None:
        self.data = data
        self.own = list(data) if own is None else own
        self.acked: dict[str, list[int]] = {p: [] for p in data}
        self.fetched: dict[str, int] = dict.fromkeys(data, 0)
        self.commands: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self.partitions: Partitions | None = None
        self.stopped = asyncio.Event()
        self.ready = asyncio.Event()
        self.ended = False

    def source(self, partitions: Partitions, partition: str) -> PartitionSource[Any]:
        items = self.data[partition]

        async def fetch(position: int) -> list[tuple[Any, Any]]:
            batch = items[position : position + 3]
            if not batch:
                await asyncio.sleep(0.001)
            self.fetched[partition] += len(batch)
            return [(item, position + n + 1) for n, item in enumerate(batch)]

        async def acknowledge(position: int) -> None:
            self.acked[partition].append(position)

        return partitions.source(partition, start=0, fetch=fetch, acknowledge=acknowledge)

    async def serve(self, partitions: Partitions) -> None:
        self.partitions = partitions
        for partition in self.own:
            partitions.assign(self.source(partitions, partition))
        self.ready.set()
        stopping = asyncio.ensure_future(self.stopped.wait())
        command: asyncio.Future[tuple[str, str]] | None = None
        try:
            while not self.stopped.is_set():
                command = asyncio.ensure_future(self.commands.get())
                await asyncio.wait({command, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if not command.done():
                    break
                verb, partition = command.result()
                if verb == "revoke":
                    await partitions.revoke(partition)
                elif verb == "abandon":
                    await partitions.abandon(partition)
                else:
                    partitions.assign(self.source(partitions, partition))
        finally:
            self.ended = True
            for waiting in (stopping, command):
                if waiting is not None:
                    waiting.cancel()
                    await asyncio.gather(waiting, return_exceptions=True)

    def stop(self) -> None:
        self.stopped.set()


def data(partitions: int, items: int) -> dict[str, list[int]]:
    return {str(p): [p * 1000 + n for n in range(items)] for p in range(partitions)}


def by_partition(items: list[int]) -> dict[int, list[int]]:
    found: dict[int, list[int]] = {}
    for item in items:
        found.setdefault(item // 1000, []).append(item)
    return found


async def take_all(worker: Partitioned[int], count: int) -> list[int]:
    """``count`` outputs, then leave early."""
    seen: list[int] = []
    async with worker:
        async for item in worker:
            seen.append(item)
            if len(seen) == count:
                break
    return seen


async def stop_after(worker: Partitioned[int], count: int) -> list[int]:
    """``count`` outputs, then `stop`, and the outputs until the iteration ends."""
    seen: list[int] = []
    async with worker:
        async for item in worker:
            seen.append(item)
            if len(seen) == count:
                worker.stop()
    return seen


def test_the_memory_broker_is_a_broker() -> None:
    assert isinstance(MemoryBroker({}), Broker)


async def test_every_partition_runs_in_order_and_acks_follow_checkpoints() -> None:
    broker = MemoryBroker(data(3, 20))
    async with MemoryStore() as store:
        worker = Partitioned(map_(lambda x: x + 1), broker, store=store, name="w", every=5)
        seen = await take_all(worker, 60)
        assert by_partition([x - 1 for x in seen]) == {p: broker.data[str(p)] for p in range(3)}
        for partition in broker.data:
            checkpoint = await store.load(f"w.{partition}")
            assert checkpoint is not None
            assert not checkpoint.complete
            acked = broker.acked[partition]
            assert acked == sorted(acked)
            # The last acknowledgement is the last checkpoint's position, never beyond.
            assert acked[-1] == checkpoint.position
            assert checkpoint.position <= 20
    assert_no_pending_tasks()


async def test_a_partition_resumes_where_its_last_checkpoint_is() -> None:
    items = data(1, 30)
    async with MemoryStore() as store:
        first = MemoryBroker(items)
        sink = TableSink(store, "out")
        pipeline = map_(lambda x: x * 2) | write_to(sink)
        worker = Partitioned(pipeline, first, store=store, name="w", every=4)
        seen = await take_all(worker, 10)
        assert seen == [x * 2 for x in items["0"][:10]]
        checkpoint = await store.load("w.0")
        assert checkpoint is not None
        saved = checkpoint.position
        assert first.acked["0"][-1] == saved
        # The next worker goes on from that checkpoint: together, every item once in the table.
        second = MemoryBroker(items)
        again = Partitioned(pipeline, second, store=store, name="w", every=4)
        rest = await stop_after(again, 30 - saved)
        assert rest == [x * 2 for x in items["0"][saved:]]
        # The first worker left early: its outputs since its last checkpoint came again.
        assert len(seen) - saved < 4
        assert sorted(await sink.rows()) == [x * 2 for x in items["0"]]
    assert_no_pending_tasks()


async def test_revoke_and_assign_while_running() -> None:
    items = data(2, 40)
    broker = MemoryBroker(items)
    async with MemoryStore() as store:
        sink = TableSink(store, "out")
        worker = Partitioned(
            map_(lambda x: x) | write_to(sink), broker, store=store, name="w", every=3, buffer=1
        )
        seen: list[int] = []
        async with worker:
            async for item in worker:
                seen.append(item)
                if len(seen) == 10:
                    await broker.commands.put(("revoke", "1"))
                if len(seen) == 30:
                    assert broker.partitions is not None
                    assert broker.partitions.owned() == ("0",)
                    await broker.commands.put(("assign", "1"))
                if len(seen) == 70:
                    break
        groups = by_partition(seen)
        assert groups[0] == items["0"][: len(groups[0])]
        # Partition 1 resumed from its last checkpoint: no item lost, the repeat bounded.
        ones = groups[1]
        assert sorted(set(ones)) == items["1"][: len(set(ones))]
        assert len(ones) - len(set(ones)) <= 3 + 1
        rows = await sink.rows()
        assert len(rows) == len(set(rows))
    assert_no_pending_tasks()


async def test_an_abandoned_partition_keeps_its_last_checkpoint() -> None:
    broker = MemoryBroker(data(1, 50))
    async with MemoryStore() as store:
        worker = Partitioned(map_(lambda x: x), broker, store=store, name="w", every=5, buffer=1)
        seen: list[int] = []
        async with worker:
            async for item in worker:
                seen.append(item)
                if len(seen) == 12:
                    checkpoint = await store.load("w.0")
                    await broker.commands.put(("abandon", "0"))
                    await asyncio.sleep(0.05)
                    assert broker.partitions is not None
                    assert broker.partitions.owned() == ()
                    break
        after = await store.load("w.0")
        assert after is not None
        assert checkpoint is not None
        assert after.position <= 13
    assert_no_pending_tasks()


async def test_a_failing_pipeline_fails_the_worker_and_stops_the_others() -> None:
    def boom(x: int) -> int:
        if x == 1007:
            raise RuntimeError("boom")
        return x

    broker = MemoryBroker(data(2, 20))
    async with MemoryStore() as store:
        worker = Partitioned(map_(boom), broker, store=store, name="w", every=2)
        with pytest.raises(RuntimeError, match="boom"):
            async for _ in worker:
                pass
        assert broker.ended
        assert await store.load("w.0") is not None
    assert_no_pending_tasks()


class FailingBroker(MemoryBroker):
    async def serve(self, partitions: Partitions) -> None:
        for partition in self.own:
            partitions.assign(self.source(partitions, partition))
        await asyncio.sleep(0.01)
        raise ConnectionError("the broker went away")


async def test_a_failing_broker_fails_the_worker_after_revoking() -> None:
    broker = FailingBroker(data(2, 10_000))
    async with MemoryStore() as store:
        worker = Partitioned(map_(lambda x: x), broker, store=store, name="w", every=10)
        with pytest.raises(ConnectionError, match="went away"):
            async for _ in worker:
                pass
        for partition in ("0", "1"):
            checkpoint = await store.load(f"w.{partition}")
            assert checkpoint is not None
            assert broker.acked[partition][-1] == checkpoint.position
    assert_no_pending_tasks()


async def test_cancelling_the_consumer_leaves_no_task() -> None:
    broker = MemoryBroker(data(3, 100_000))
    async with MemoryStore() as store:
        worker = Partitioned(map_(lambda x: x), broker, store=store, name="w", every=50)

        async def consume() -> None:
            async with worker:
                async for _ in worker:
                    await asyncio.sleep(0)

        task = asyncio.ensure_future(consume())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert broker.ended
    assert_no_pending_tasks()


async def test_the_concurrency_bound_holds_across_partitions() -> None:
    inside = 0
    most = 0

    async def slow(x: int) -> int:
        nonlocal inside, most
        inside += 1
        most = max(most, inside)
        await asyncio.sleep(0.001)
        inside -= 1
        return x

    broker = MemoryBroker(data(4, 10))
    async with MemoryStore() as store:
        worker = Partitioned(map_(slow), broker, store=store, name="w", every=3, concurrency=2)
        seen = await take_all(worker, 40)
        assert sorted(seen) == sorted(x for items in broker.data.values() for x in items)
        assert most == 2
    assert_no_pending_tasks()


async def test_a_worker_iterates_once() -> None:
    broker = MemoryBroker(data(1, 5))
    async with MemoryStore() as store:
        worker = Partitioned(map_(lambda x: x), broker, store=store, name="w")
        first = aiter(worker)
        assert await anext(first) == 0
        second = aiter(worker)
        with pytest.raises(RuntimeError, match="already running"):
            await anext(second)
        await first.aclose()  # type: ignore[attr-defined]
    assert_no_pending_tasks()


def test_bad_parameters_are_refused_when_built() -> None:
    store = MemoryStore()
    broker = MemoryBroker({})
    stage = map_(lambda x: x)
    with pytest.raises(TypeError, match="pipeline"):
        Partitioned(lambda x: x, broker, store=store, name="w")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="broker"):
        Partitioned(stage, object(), store=store, name="w")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="store"):
        Partitioned(stage, broker, store="runs.db", name="w")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="name"):
        Partitioned(stage, broker, store=store, name="a/b")
    with pytest.raises(ValueError, match="every"):
        Partitioned(stage, broker, store=store, name="w", every=0)
    with pytest.raises(TypeError, match="interval"):
        Partitioned(stage, broker, store=store, name="w", interval="1s")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="concurrency"):
        Partitioned(stage, broker, store=store, name="w", concurrency=0)
    with pytest.raises(TypeError, match="buffer"):
        Partitioned(stage, broker, store=store, name="w", buffer=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="version"):
        Partitioned(stage, broker, store=store, name="w", version=2)  # type: ignore[arg-type]
    worker = Partitioned(stage, broker, store=store, name="w")
    with pytest.raises(RuntimeError, match="not running"):
        worker.source("0", start=0, fetch=broker.fetched.get, acknowledge=broker.fetched.get)  # type: ignore[arg-type]


async def test_a_partition_saved_by_another_worker_ends_quietly() -> None:
    items = data(1, 1000)
    async with MemoryStore() as store:
        first = MemoryBroker(items)
        second = MemoryBroker(items)
        one = Partitioned(map_(lambda x: x), first, store=store, name="w", every=5, buffer=1)
        two = Partitioned(map_(lambda x: x), second, store=store, name="w", every=5, buffer=1)
        async with one, two:
            ones, twos = aiter(one), aiter(two)
            for _ in range(12):
                await anext(ones)
            assert first.partitions is not None
            assert first.partitions.owned() == ("0",)
            # The second worker takes the partition over and checkpoints it.
            for _ in range(30):
                await anext(twos)
            drained: list[int] = []

            async def drain() -> None:
                async for item in ones:
                    drained.append(item)

            draining = asyncio.ensure_future(drain())
            for _ in range(200):
                if first.partitions.owned() == ():
                    break
                await asyncio.sleep(0.01)
            # The first one's next save was refused: its run of the partition ended.
            assert first.partitions.owned() == ()
            assert len(drained) < 10
            draining.cancel()
            await asyncio.gather(draining, return_exceptions=True)
    assert_no_pending_tasks()


async def test_stop_hands_every_partition_back_with_a_last_checkpoint() -> None:
    items = data(3, 30)
    broker = MemoryBroker(items)
    async with MemoryStore() as store:
        sink = TableSink(store, "out")
        worker = Partitioned(
            map_(lambda x: x) | write_to(sink), broker, store=store, name="w", every=7
        )
        seen = await stop_after(worker, 10)
        # Every output the checkpoints cover came out of the iteration, and went in the table.
        rows = await sink.rows()
        assert sorted(rows) == sorted(seen)
        for partition, values in by_partition(seen).items():
            checkpoint = await store.load(f"w.{partition}")
            assert checkpoint is not None
            assert checkpoint.position == len(values)
            assert broker.acked[str(partition)][-1] == checkpoint.position
    assert_no_pending_tasks()


async def test_leaving_early_covers_no_output_the_consumer_did_not_see() -> None:
    items = data(2, 1000)
    broker = MemoryBroker(items)
    async with MemoryStore() as store:
        sink = TableSink(store, "out")
        worker = Partitioned(
            map_(lambda x: x) | write_to(sink), broker, store=store, name="w", every=5, buffer=4
        )
        seen = await take_all(worker, 40)
        # Whatever the table holds, the consumer saw: a checkpoint covers only seen outputs.
        assert set(await sink.rows()) <= set(seen)
    assert_no_pending_tasks()


async def test_stop_before_the_iteration_ends_it_at_once() -> None:
    broker = MemoryBroker(data(2, 10))
    async with MemoryStore() as store:
        worker = Partitioned(map_(lambda x: x), broker, store=store, name="w")
        worker.stop()
        async with worker:
            assert [item async for item in worker] == []
        assert await store.load("w.0") is None
    assert_no_pending_tasks()


ACTIONS = st.lists(
    st.tuples(
        st.sampled_from(["revoke", "abandon", "assign", "wait"]),
        st.integers(0, 2),
        st.integers(0, 5),
    ),
    max_size=10,
)


@settings(max_examples=25, deadline=None)
@given(actions=ACTIONS, every=st.integers(1, 6))
def test_any_schedule_of_revokes_and_abandons_keeps_the_table_exact(
    actions: list[tuple[str, int, int]], every: int
) -> None:
    """Against the model: the table holds every item once; replays only after abandons."""
    items = data(3, 25)
    everything = sorted(x for values in items.values() for x in values)

    async def scenario() -> None:
        broker = MemoryBroker(items)
        async with MemoryStore() as store:
            sink = TableSink(store, "out")
            worker = Partitioned(
                map_(lambda x: x) | write_to(sink),
                broker,
                store=store,
                name="w",
                every=every,
                buffer=2,
            )
            seen: list[int] = []

            async def consume() -> None:
                async with worker:
                    async for item in worker:
                        seen.append(item)

            consumer = asyncio.ensure_future(consume())
            owned = {"0", "1", "2"}
            abandons = dict.fromkeys(range(3), 0)
            since = dict.fromkeys(range(3), 0)
            """Where the outputs of each partition's latest assignment begin in ``seen``."""

            async def command(verb: str, partition: int) -> None:
                if verb == "assign":
                    since[partition] = len(seen)
                await broker.commands.put((verb, str(partition)))

            for verb, partition, pause in actions:
                name = str(partition)
                if verb == "assign" and name not in owned:
                    owned.add(name)
                elif verb in ("revoke", "abandon") and name in owned:
                    owned.discard(name)
                    abandons[partition] += verb == "abandon"
                else:
                    await asyncio.sleep(0.001 * pause)
                    continue
                await command(verb, partition)
                await asyncio.sleep(0.001 * pause)
            for name in sorted({"0", "1", "2"} - owned):
                await command("assign", int(name))

            async def finished(partition: int) -> bool:
                # Its last item came out of its latest assignment, or a checkpoint covers it.
                if partition * 1000 + 24 in seen[since[partition] :]:
                    return True
                checkpoint = await store.load(f"w.{partition}")
                return checkpoint is not None and checkpoint.position == 25

            for _ in range(2000):
                if all([await finished(p) for p in range(3)]):
                    break
                await asyncio.sleep(0.005)
            worker.stop()
            await consumer
            assert sorted(await sink.rows()) == everything
            assert set(seen) == set(everything)
            for partition, values in by_partition(seen).items():
                repeats = len(values) - len(set(values))
                assert repeats <= abandons[partition] * (2 * every + 4), (partition, values)
                # No gap: every output continues what came before, or repeats some of it.
                covered = partition * 1000
                for value in values:
                    assert value <= covered, (partition, values)
                    covered = max(covered, value + 1)
        assert_no_pending_tasks()

    asyncio.run(scenario())
