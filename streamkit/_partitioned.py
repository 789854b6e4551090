"""Per-partition pipelines: one checkpointed run per partition a worker owns.

A broker's consumer group (Redis Streams here) decides which worker owns
which partition; this module runs, in one worker, one `Run` of the pipeline
per owned partition, each checkpointed under its own name
(``"{name}.{partition}"``), with the partition's position (a stream entry id,
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
import re
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, Generic, Protocol, TypeVar, runtime_checkable

from ._checkpointing import DEFAULT_EVERY, check_every
from ._run import Run
from ._store import StaleCheckpointError

if TYPE_CHECKING:
    import datetime as dt

    from ._core import Stage
    from ._store import Checkpoint, Store

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)

_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,47}")
_PARTITION: Final = re.compile(r"[A-Za-z0-9_.-]{1,15}")

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

    Raises:
        TypeError, ValueError: A bad partition name.

    Examples:
        A partition of ten numbers, read three at a time; the position is
        the index of the next one:

        >>> import asyncio
        >>> async def main() -> None:
        ...     async def fetch(position: int) -> list[tuple[int, int]]:
        ...         return [(n, n + 1) for n in range(position, min(position + 3, 10))]
        ...     async def acknowledge(position: int) -> None:
        ...         print("acknowledged up to", position)
        ...     source = PartitionSource(
        ...         "0", start=0, fetch=fetch, acknowledge=acknowledge, bound=asyncio.Semaphore(1)
        ...     )
        ...     source.seek(6)
        ...     print([await anext(source) for _ in range(4)], source.position())
        ...     source.suspend()
        ...     print([item async for item in source], source.suspended())
        >>> asyncio.run(main())
        [6, 7, 8, 9] 10
        [] True
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
        if not isinstance(partition, str):  # pyright: ignore[reportUnnecessaryIsInstance] - untyped callers
            raise TypeError(f"partition must be a str, got {type(partition).__name__}")
        if not _PARTITION.fullmatch(partition):
            raise ValueError(
                f"partition must be 1 to 15 letters, digits, '_', '.' or '-', got {partition!r}"
            )
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


@runtime_checkable
class Broker(Protocol):
    """What a broker module gives `Partitioned`: it assigns and revokes partitions.

    `streamkit.redis.StreamGroup` is one. ``serve`` runs for as long as the
    worker does: it gives the worker partitions with `Partitions.assign`
    (each a `PartitionSource` made by `Partitions.source`), takes them back
    with `Partitions.revoke` when the group rebalances, and with
    `Partitions.abandon` when the worker lost one without handing it back.
    The example of `Partitions` is a broker kept in memory.

    Examples:
        >>> class Idle:
        ...     async def serve(self, partitions: Partitions) -> None: ...
        ...     def stop(self) -> None: ...
        >>> isinstance(Idle(), Broker), isinstance(object(), Broker)
        (True, False)
    """

    async def serve(self, partitions: Partitions) -> None:
        """Assign and revoke partitions until stopped; revoke all of them before returning."""
        ...

    def stop(self) -> None:
        """Ask `serve` to hand every partition back and return."""
        ...


class Partitions:
    """The partitions a worker owns, each run by its own checkpointed `Run`.

    A broker's `Broker.serve` gets one: it calls `assign` with a
    `PartitionSource` per partition it gives the worker, `revoke` to take one
    back with a last checkpoint, `abandon` to stop one at once (ownership
    was lost). A partition whose run ended on its own (another worker saved its
    checkpoint meanwhile) leaves `owned`: the broker then gives it up too.

    Examples:
        A broker that gives its worker one partition, and hands it back
        when stopped:

        >>> import asyncio
        >>> from streamkit import MemoryStore, map_
        >>> class One:
        ...     def __init__(self) -> None:
        ...         self.stopping = asyncio.Event()
        ...     async def serve(self, partitions: Partitions) -> None:
        ...         async def fetch(position: int) -> list[tuple[str, int]]:
        ...             await asyncio.sleep(0)
        ...             return [(f"item {position}", position + 1)] if position < 3 else []
        ...         async def acknowledge(position: int) -> None: ...
        ...         partitions.assign(
        ...             partitions.source("7", start=0, fetch=fetch, acknowledge=acknowledge)
        ...         )
        ...         print(partitions.owned(), partitions.name("7"))
        ...         await self.stopping.wait()
        ...     def stop(self) -> None:
        ...         self.stopping.set()
        >>> async def main() -> None:
        ...     worker = Partitioned(map_(str.upper), One(), store=MemoryStore(), name="orders")
        ...     async with worker:
        ...         async for item in worker:
        ...             print(item)
        ...             if item == "ITEM 2":
        ...                 worker.stop()
        >>> asyncio.run(main())
        ('7',) orders.7
        ITEM 0
        ITEM 1
        ITEM 2
    """

    __slots__ = ("_owner", "_tasks")

    def __init__(self, owner: Partitioned[Any]) -> None:
        self._owner = owner
        self._tasks: dict[str, tuple[PartitionSource[Any], asyncio.Task[None]]] = {}

    def __repr__(self) -> str:
        return f"Partitions({self._owner.name!r}, owned={self.owned()!r})"

    def owned(self) -> tuple[str, ...]:
        """The partitions this worker runs now (not those being revoked, nor ended ones)."""
        return tuple(
            partition
            for partition, (source, task) in self._tasks.items()
            if not task.done() and not source.suspended()
        )

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
        """Start the run of a partition (it resumes from the partition's checkpoint).

        Raises:
            ValueError: The worker runs that partition already.
        """
        entry = self._tasks.get(source.partition)
        if entry is not None and not entry[1].done():
            raise ValueError(f"partition {source.partition!r} is already assigned")
        task = asyncio.get_running_loop().create_task(self._owner.drive(source, self))
        self._tasks[source.partition] = (source, task)

    async def revoke(self, partition: str) -> None:
        """Barrier, save, acknowledge, close: the partition's run ends with a checkpoint.

        The run completes even if the caller is cancelled meanwhile.
        """
        entry = self._tasks.get(partition)
        if entry is None:
            return
        source, task = entry
        source.suspend()
        try:
            await asyncio.shield(task)
        finally:
            if task.done() and self._tasks.get(partition) is entry:
                del self._tasks[partition]

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

    async def abandon_all(self) -> None:
        """Abandon every partition (a worker stopping without its checkpoints)."""
        await asyncio.gather(*(self.abandon(partition) for partition in list(self._tasks)))


_END = object()


class Partitioned(Generic[T_co]):
    """A worker of a consumer group: the pipeline runs once per partition it owns.

    Iterate it for the outputs of all its partitions (in order within a
    partition, interleaved across them): at least once, since a partition
    that moves to another worker after a crash repeats the outputs since its
    last checkpoint. Write with `streamkit.write_to` into a `TableSink` of
    ``store`` for exactly once.

    `stop` ends the iteration gracefully: every partition is handed back
    with a last checkpoint and the outputs of its last items come out first.
    Use it in ``async with``: leaving the block early (``break``, `aclose`,
    cancellation, an error of a partition's pipeline, which then propagates)
    abandons the partitions without a last checkpoint, since a checkpoint
    must not cover outputs the consumer never saw; their next owners repeat
    them from their last checkpoints.

    Args:
        pipeline: The stage each partition's items go through.
        broker: Assigns the partitions (`streamkit.redis.StreamGroup`).
        store: Where each partition's checkpoints go (shared by the workers:
            a `PostgresStore`).
        name: The runs' name; partition ``p`` checkpoints as ``"{name}.{p}"``
            (letters, digits, ``_ . -``, as a `Run`'s name).
        every: Items of a partition between two of its checkpoints.
        interval: Also checkpoint every this many seconds.
        concurrency: At most this many partitions have an item in their
            pipeline at once.
        buffer: Outputs waiting for the consumer.
        version: The pipeline's version (see `Run`).

    Raises:
        TypeError: An argument has the wrong type.
        ValueError: A bad ``name``, ``every`` or ``interval``, or ``concurrency`` or
            ``buffer`` < 1.

    Examples:
        A worker of a Redis Streams group (see docs/deploy.md; `Partitions`
        has one that runs here, with a broker kept in memory):

        >>> from streamkit import PostgresStore, map_
        >>> from streamkit.redis import StreamGroup
        >>> group = StreamGroup("redis://queue:6379/0", "orders", partitions=6)
        >>> store = PostgresStore("postgresql://worker@db/pipelines")
        >>> worker = Partitioned(map_(str), group, store=store, name="orders", every=500)
        >>> worker
        Partitioned('orders')
    """

    __slots__ = (
        "_bound",
        "_broker",
        "_buffer",
        "_every",
        "_interval",
        "_iterator",
        "_pipeline",
        "_queue",
        "_semaphore",
        "_stop_asked",
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
        if not isinstance(broker, Broker):  # pyright: ignore[reportUnnecessaryIsInstance] - untyped callers
            raise TypeError(
                f"broker must be a Broker (serve(partitions), stop()), got {type(broker).__name__}"
            )
        if not isinstance(store, StoreType):  # pyright: ignore[reportUnnecessaryIsInstance] - untyped callers
            raise TypeError(f"store must be a Store, got {type(store).__name__}")
        if not isinstance(name, str):  # pyright: ignore[reportUnnecessaryIsInstance] - untyped callers
            raise TypeError(f"name must be a str, got {type(name).__name__}")
        if not _NAME.fullmatch(name):
            raise ValueError(
                "name must be 1 to 48 letters, digits, '_', '.' or '-', starting with a letter "
                f"or digit (the partitions' runs are named after it), got {name!r}"
            )
        check_every(every, interval)
        if version is not None and not isinstance(version, str):  # pyright: ignore[reportUnnecessaryIsInstance] - untyped callers
            raise TypeError(f"version must be a str or None, got {type(version).__name__}")
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
        self._iterator: AsyncGenerator[T_co] | None = None
        self._stop_asked = False
        self._semaphore: asyncio.Semaphore | None = None

    def __repr__(self) -> str:
        return f"Partitioned({self.name!r})"

    def source(
        self, partition: str, *, start: Any, fetch: Fetch, acknowledge: Acknowledge
    ) -> PartitionSource[Any]:
        """A `PartitionSource` sharing this worker's concurrency bound (for brokers)."""
        if self._semaphore is None:
            raise RuntimeError(f"{self!r} is not running: iterate it first")
        return PartitionSource(
            partition, start=start, fetch=fetch, acknowledge=acknowledge, bound=self._semaphore
        )

    async def drive(self, source: PartitionSource[Any], partitions: Partitions) -> None:
        """Run one partition's pipeline; its outputs go to the worker's queue.

        A save refused because another worker saved the partition's
        checkpoint meanwhile (`StaleCheckpointError`: this worker lost the
        partition without knowing) ends the partition's run quietly; any other
        failure fails the worker.
        """
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
            async with run:
                async for item in run:
                    await queue.put(item)
        except StaleCheckpointError:
            return  # another worker owns the partition now
        except Exception as exc:
            await queue.put(_Failure(exc))

    def __aiter__(self) -> AsyncIterator[T_co]:
        iterator = self._iterator = self._outputs()
        return iterator

    async def aclose(self) -> None:
        """Leave early: abandon the partitions (as leaving ``async with``; see the class)."""
        iterator, self._iterator = self._iterator, None
        if iterator is not None:
            await iterator.aclose()

    async def __aenter__(self) -> Partitioned[T_co]:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _outputs(self) -> AsyncGenerator[T_co]:
        if self._queue is not None:
            raise RuntimeError(f"{self!r} is already running: a worker iterates once")
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
            await self._stop(serving, partitions, queue)

    async def _stop(
        self, serving: asyncio.Task[None], partitions: Partitions, queue: asyncio.Queue[Any]
    ) -> None:
        """The iteration ended: abandon what is still running, or raise the broker's error.

        Outputs the consumer will never see must not be covered by a
        checkpoint, so leaving early hands no partition back with a last
        checkpoint: their runs are cancelled, and the next owner of each
        partition repeats it from its last checkpoint.
        """
        if not serving.done():
            serving.cancel()
            await asyncio.gather(serving, return_exceptions=True)
            await partitions.abandon_all()
            return
        error = serving.exception()
        if error is not None:
            raise error

    def stop(self) -> None:
        """Hand every partition back with a last checkpoint, then end the iteration.

        The outputs of the partitions' last items still come out; the
        iteration ends once every partition is handed back. (Leaving the
        iteration early instead abandons the partitions without a last
        checkpoint: see the class.) Called before the iteration starts, it
        makes the iteration end at once.
        """
        self._stop_asked = True
        self._broker.stop()

    async def _serve(self, partitions: Partitions, queue: asyncio.Queue[Any]) -> None:
        if self._stop_asked:
            await queue.put(_END)
            return
        try:
            await self._broker.serve(partitions)
        except asyncio.CancelledError:
            await partitions.abandon_all()
            raise
        except Exception as exc:
            await partitions.abandon_all()
            await queue.put(_Failure(exc))
            return
        await partitions.revoke_all()
        await queue.put(_END)


class _Failure:
    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error
