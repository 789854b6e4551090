"""Per-partition pipelines: one checkpointed run per partition a worker owns.

A broker's consumer group (Redis Streams here) decides which worker owns
which partition; this module runs, in one worker, one `Run` of the pipeline
per owned partition, each checkpointed under its own name
(``"{name}/{partition}"``), with the partition's position (a stream entry id,
an offset) saved in the checkpoint's transaction. It knows nothing of any
broker: a broker module gives it a `PartitionSource` per assigned partition
(how to fetch from a position, how to acknowledge up to one) and asks for
partitions back with `Partitions.revoke`, which sends a last barrier, saves
it, acknowledges what it covers and closes the partition's run.

Acknowledgements follow checkpoints: the broker hears that a position is
done only once the checkpoint that covers it is saved.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from ._checkpointing import DEFAULT_EVERY
from ._run import Run

if TYPE_CHECKING:
    import datetime as dt

    from ._core import Stage
    from ._store import Checkpoint, Store

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)

Fetch = Callable[[Any], Awaitable[list[tuple[Any, Any]]]]
"""``fetch(position)``: the next items after ``position``, each with the position after it."""

Acknowledge = Callable[[Any], Awaitable[None]]
"""``acknowledge(position)``: the broker may forget everything up to ``position``."""


class PartitionSource(Generic[T]):
    """The items of one partition, as a resumable source of one run.

    Args:
        partition: The partition's name (part of its checkpoint's name).
        start: The position to start from when no checkpoint says otherwise.
        fetch: Returns the next items after a position (an empty list when
            none came for a while: it must return within about a second).
        acknowledge: Called once a checkpoint covering a position is saved.
        bound: Shared by the partitions of a worker: an item holds one slot
            while it goes through the pipeline.
    """

    __slots__ = (
        "_acknowledge",
        "_bound",
        "_buffer",
        "_closed",
        "_fetch",
        "_held",
        "_position",
        "_started",
        "_suspend",
        "partition",
    )

    def __init__(
        self,
        partition: str,
        *,
        start: Any,
        fetch: Fetch,
        acknowledge: Acknowledge,
        bound: asyncio.Semaphore,
    ) -> None:
        self.partition = partition
        self._position = start
        self._fetch = fetch
        self._acknowledge = acknowledge
        self._bound = bound
        self._buffer: deque[tuple[Any, Any]] = deque()
        self._held = False
        self._started = False
        self._closed = False
        self._suspend = False

    def __repr__(self) -> str:
        return f"PartitionSource({self.partition!r}, position={self._position!r})"

    def __aiter__(self) -> PartitionSource[T]:
        return self

    def _release(self) -> None:
        if self._held:
            self._held = False
            self._bound.release()

    async def __anext__(self) -> T:
        self._started = True
        self._release()
        while not self._buffer:
            if self._closed or self._suspend:
                raise StopAsyncIteration
            self._buffer.extend(await self._fetch(self._position))
        if self._closed or self._suspend:
            raise StopAsyncIteration
        await self._bound.acquire()
        self._held = True
        item, self._position = self._buffer.popleft()
        return item  # type: ignore[no-any-return]

    async def aclose(self) -> None:
        """Stop; later pulls end the iteration."""
        self._closed = True
        self._buffer.clear()
        self._release()

    def position(self) -> Any:
        """Where the partition is: the position after the last item handed out."""
        return self._position

    def seek(self, position: Any) -> None:
        """Continue from ``position`` (a checkpoint's)."""
        if self._started:
            raise RuntimeError("seek() must be called before iteration starts")
        self._position = position

    def suspend(self) -> None:
        """End the iteration at the next pull, as a pause (the run checkpoints and stops)."""
        self._suspend = True

    def suspended(self) -> bool:
        """Whether the iteration ended because the partition was revoked."""
        return self._suspend

    async def saved(self, checkpoint: Checkpoint) -> None:
        """Acknowledge what ``checkpoint`` covers."""
        await self._acknowledge(checkpoint.position)


class Broker(Protocol):
    """What a broker module gives `Partitioned`: it assigns and revokes partitions."""

    async def serve(self, partitions: Partitions) -> None:
        """Assign and revoke partitions until stopped; revoke all of them before returning."""
        ...

    def stop(self) -> None:
        """Ask `serve` to hand every partition back and return."""
        ...


class Partitions:
    """The partitions a worker owns, each run by its own checkpointed `Run`."""

    __slots__ = ("_owner", "_tasks")

    def __init__(self, owner: Partitioned[Any]) -> None:
        self._owner = owner
        self._tasks: dict[str, tuple[PartitionSource[Any], asyncio.Task[None]]] = {}

    def owned(self) -> tuple[str, ...]:
        """The partitions this worker runs now."""
        return tuple(self._tasks)

    def name(self, partition: str) -> str:
        """The checkpoint name of ``partition``."""
        return f"{self._owner.name}.{partition}"

    async def position(self, partition: str) -> Any:
        """The position the checkpoint of ``partition`` holds, or None if it has none."""
        checkpoint = await self._owner.store.load(self.name(partition))
        return None if checkpoint is None else checkpoint.position

    def source(
        self, partition: str, *, start: Any, fetch: Fetch, acknowledge: Acknowledge
    ) -> PartitionSource[Any]:
        """A `PartitionSource` sharing the worker's concurrency bound, to `assign`."""
        return self._owner.source(partition, start=start, fetch=fetch, acknowledge=acknowledge)

    def assign(self, source: PartitionSource[Any]) -> None:
        """Start the run of a partition."""
        if source.partition in self._tasks:
            raise ValueError(f"partition {source.partition!r} is already assigned")
        task = asyncio.get_running_loop().create_task(self._owner.drive(source, self))
        self._tasks[source.partition] = (source, task)

    async def revoke(self, partition: str) -> None:
        """Barrier, save, acknowledge, close: the partition's run ends with a checkpoint."""
        entry = self._tasks.pop(partition, None)
        if entry is None:
            return
        source, task = entry
        source.suspend()
        await asyncio.shield(task)

    async def abandon(self, partition: str) -> None:
        """Stop a partition's run at once, without a checkpoint (its lease was lost)."""
        entry = self._tasks.pop(partition, None)
        if entry is None:
            return
        _, task = entry
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    async def revoke_all(self) -> None:
        """Revoke every partition, together."""
        await asyncio.gather(*(self.revoke(partition) for partition in list(self._tasks)))


_END = object()


class Partitioned(Generic[T_co]):
    """A worker of a consumer group: the pipeline runs once per partition it owns.

    Iterate it for the outputs of all its partitions (in order within a
    partition, interleaved across them): at least once, since a partition
    that moves to another worker after a crash repeats the outputs since its
    last checkpoint. Write with `streamkit.write_to` into a `TableSink` of
    ``store`` for exactly once. Closing the iteration (``break``, `aclose`)
    hands every partition back with a last checkpoint.

    Args:
        pipeline: The stage each partition's items go through.
        broker: Assigns the partitions (`streamkit.redis.StreamGroup`).
        store: Where each partition's checkpoints go (shared by the workers:
            a `PostgresStore`).
        name: The runs' name; partition ``p`` checkpoints as ``"{name}/{p}"``.
        every: Items of a partition between two of its checkpoints.
        interval: Also checkpoint every this many seconds.
        concurrency: At most this many partitions have an item in their
            pipeline at once.
        buffer: Outputs waiting for the consumer.
        version: The pipeline's version (see `Run`).

    Raises:
        TypeError: An argument has the wrong type.
        ValueError: ``name`` is empty, or ``concurrency`` or ``buffer`` < 1.
    """

    __slots__ = (
        "_bound",
        "_broker",
        "_buffer",
        "_every",
        "_interval",
        "_pipeline",
        "_queue",
        "_semaphore",
        "_version",
        "name",
        "store",
    )

    def __init__(
        self,
        pipeline: Stage[Any, T_co],
        broker: Broker,
        *,
        store: Store,
        name: str,
        every: int | dt.timedelta = DEFAULT_EVERY,
        interval: float | dt.timedelta | None = None,
        concurrency: int = 16,
        buffer: int = 64,
        version: str | None = None,
    ) -> None:
        from ._core import Stage as StageType
        from ._store import Store as StoreType

        if not isinstance(pipeline, StageType):  # pyright: ignore[reportUnnecessaryIsInstance] - untyped callers
            raise TypeError(f"pipeline must be a Stage, got {type(pipeline).__name__}")
        if not isinstance(store, StoreType):  # pyright: ignore[reportUnnecessaryIsInstance] - untyped callers
            raise TypeError(f"store must be a Store, got {type(store).__name__}")
        if not isinstance(name, str):  # pyright: ignore[reportUnnecessaryIsInstance] - untyped callers
            raise TypeError(f"name must be a str, got {type(name).__name__}")
        if not name:
            raise ValueError(f"name must be a non-empty str, got {name!r}")
        for option, value in (("concurrency", concurrency), ("buffer", buffer)):
            if type(value) is not int:
                raise TypeError(f"{option} must be an int, got {type(value).__name__}")
            if value < 1:
                raise ValueError(f"{option} must be >= 1, got {value}")
        self._pipeline = pipeline
        self._broker = broker
        self.store = store
        self.name = name
        self._every = every
        self._interval = interval
        self._version = version
        self._bound = concurrency
        self._buffer = buffer
        self._queue: asyncio.Queue[Any] | None = None
        self._semaphore: asyncio.Semaphore | None = None

    def __repr__(self) -> str:
        return f"Partitioned({self.name!r})"

    def source(
        self, partition: str, *, start: Any, fetch: Fetch, acknowledge: Acknowledge
    ) -> PartitionSource[Any]:
        """A `PartitionSource` sharing this worker's concurrency bound (for brokers)."""
        assert self._semaphore is not None
        return PartitionSource(
            partition, start=start, fetch=fetch, acknowledge=acknowledge, bound=self._semaphore
        )

    async def drive(self, source: PartitionSource[Any], partitions: Partitions) -> None:
        """Run one partition's pipeline; its outputs go to the worker's queue."""
        queue = self._queue
        assert queue is not None
        run = Run(
            self._pipeline,
            source,
            name=partitions.name(source.partition),
            checkpoint=self.store,
            every=self._every,
            interval=self._interval,
            version=self._version,
            metrics=False,
        )
        layer = run._checkpointing  # pyright: ignore[reportPrivateUsage]
        assert layer is not None
        layer.on_saved = source.saved
        try:
            async for item in run:
                await queue.put(item)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            await queue.put(_Failure(exc))

    def __aiter__(self) -> AsyncIterator[T_co]:
        return self._outputs()

    async def _outputs(self) -> AsyncIterator[T_co]:
        if self._queue is not None:
            raise RuntimeError(f"{self!r} is already running")
        queue: asyncio.Queue[Any] = asyncio.Queue(self._buffer)
        self._queue = queue
        self._semaphore = asyncio.Semaphore(self._bound)
        partitions = Partitions(self)
        serving = asyncio.get_running_loop().create_task(self._serve(partitions, queue))
        try:
            while True:
                item = await queue.get()
                if item is _END:
                    break
                if isinstance(item, _Failure):
                    raise item.error
                yield item
        finally:
            self._broker.stop()
            while not serving.done():
                # Drain, so that partitions blocked on a full queue reach their barrier.
                getting = asyncio.ensure_future(queue.get())
                await asyncio.wait({serving, getting}, return_when=asyncio.FIRST_COMPLETED)
                getting.cancel()
            serving.result()

    async def _serve(self, partitions: Partitions, queue: asyncio.Queue[Any]) -> None:
        try:
            await self._broker.serve(partitions)
        finally:
            await partitions.revoke_all()
        await queue.put(_END)


class _Failure:
    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error
