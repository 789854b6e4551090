"""Kafka for per-partition pipelines: a consumer group and a producer sink.

Install with ``pip install 'streamkit[kafka]'`` (aiokafka). `ConsumerGroup`
is a broker for `streamkit.Partitioned`: the group decides which worker
owns which partition of a topic, and each worker runs the pipeline once per
partition it owns, each with checkpoints of its own, the partition's
offset saved in the checkpoint's own transaction::

    group = ConsumerGroup("orders", group="billing", bootstrap_servers="kafka:9092")
    worker = Partitioned(pipeline, group, store=PostgresStore(dsn), name="billing")
    async with worker:
        async for output in worker:  # at least once; exactly once into a TableSink
            ...

Offsets are committed to the group only after the checkpoint that covers
them is saved (``enable_auto_commit`` is off); on assignment a partition
resumes from its checkpoint's offset, so the committed offset is advisory.
`KafkaSink` publishes a run's outputs to a topic once their checkpoint is
saved, each record marked so that a replay is recognised.

``import streamkit`` never imports aiokafka; only this module does.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import math
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Self, cast

try:
    _aiokafka: Any = importlib.import_module("aiokafka")
    _errors: Any = importlib.import_module("aiokafka.errors")
except ImportError as error:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError("streamkit.kafka needs aiokafka: pip install 'streamkit[kafka]'") from error

if TYPE_CHECKING:
    from ._partitioned import Partitions, PartitionSource

__all__ = ["BATCH_HEADER", "INDEX_HEADER", "ConsumerGroup", "KafkaRecord", "KafkaSink"]

BATCH_HEADER: Final = "streamkit-batch"
"""The header of a `KafkaSink` record naming the batch (one checkpoint's items) it belongs to."""

INDEX_HEADER: Final = "streamkit-index"
"""The header of a `KafkaSink` record giving its index within its batch."""

_OWNED_OPTIONS: Final = frozenset(
    {"bootstrap_servers", "group_id", "enable_auto_commit", "key_deserializer", "loop"}
)
"""Consumer options `ConsumerGroup` sets itself."""

_PRODUCER_OWNED: Final = frozenset({"bootstrap_servers", "transactional_id", "loop"})


@dataclass(frozen=True, slots=True)
class KafkaRecord:
    """One record of a Kafka partition, as a `ConsumerGroup` hands it to the pipeline.

    Attributes:
        topic: The topic.
        partition: The partition's number.
        offset: The record's offset in its partition.
        key: The key's bytes (None without a key).
        value: The value (bytes, or what the consumer's ``value_deserializer`` made of them).
        timestamp: The record's timestamp, in milliseconds since the epoch.
        headers: The record's headers, in order.

    Examples:
        >>> record = KafkaRecord("orders", 2, 41, b"customer-7", b'{"total": 2.5}', 1700000000000)
        >>> record.partition, record.offset, record.headers
        (2, 41, ())
    """

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: Any
    timestamp: int
    headers: tuple[tuple[str, bytes], ...] = ()


def _check_name(value: object, parameter: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{parameter} must be a str, got {type(value).__name__}")
    if not value:
        raise ValueError(f"{parameter} must be a non-empty str")
    return value


def _check_servers(servers: object) -> str | list[str]:
    if isinstance(servers, str):
        if not servers:
            raise ValueError("bootstrap_servers must name at least one host:port")
        return servers
    if isinstance(servers, Sequence):
        hosts = list(servers)  # pyright: ignore[reportUnknownArgumentType, reportUnknownVariableType] - checked below
        if not hosts or not all(isinstance(host, str) and host for host in hosts):  # pyright: ignore[reportUnknownVariableType]
            raise ValueError("bootstrap_servers must name at least one host:port, each a str")
        return [str(host) for host in hosts]  # pyright: ignore[reportUnknownArgumentType, reportUnknownVariableType]
    raise TypeError(
        f"bootstrap_servers must be a str or a sequence of str, got {type(servers).__name__}"
    )


def _check_options(options: object, owned: frozenset[str], parameter: str) -> dict[str, Any]:
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise TypeError(f"{parameter} must be a mapping or None, got {type(options).__name__}")
    checked: dict[str, Any] = {}
    for option, value in options.items():  # pyright: ignore[reportUnknownVariableType]
        if not isinstance(option, str):
            raise TypeError(f"{parameter}: option names must be str, got {option!r}")
        if option in owned:
            raise ValueError(f"{parameter}: {option!r} is set by streamkit and cannot be given")
        checked[option] = value
    return checked


class ConsumerGroup:
    """A Kafka consumer group as the broker of a `streamkit.Partitioned` worker.

    One aiokafka consumer per worker joins the group on ``topic``; each
    partition the group assigns runs its own copy of the pipeline, its own
    checkpoints (offset and state in one transaction), and its items in
    offset order; ``concurrency`` of `Partitioned` bounds the items in flight
    across them. A partition's offset is committed to the group only once
    the checkpoint covering it is saved. When the group takes partitions
    away (a rebalance: aiokafka's rebalance listener), each one gets a last
    barrier, its checkpoint is saved, its offset committed, and its
    pipeline closed, before the group may hand it to another worker. When a
    partition is assigned, its run loads its checkpoint and reads from the
    checkpoint's offset, whatever offset the group has committed (a
    partition without a checkpoint starts from the committed offset, or
    from ``auto_offset_reset``, ``"earliest"`` unless ``options`` says
    otherwise).

    Fetching: every partition's run pulls from the one consumer with
    ``getmany(its partition, ...)``. aiokafka already fetches all assigned
    partitions in the background and buffers each partition's records
    apart, and it fetches a partition again only once its buffer has been
    taken: so a slow partition holds back only itself, without a
    demultiplexing loop, its queues or pause/resume bookkeeping. Each pull
    waits at most ``fetch_timeout`` seconds, so that a revoked partition
    notices it promptly (aiokafka holds pulls back while the group
    rebalances).

    Args:
        topic: The topic whose partitions the group shares.
        group: The consumer group's id (the same in every worker).
        bootstrap_servers: ``"host:port"``, or several.
        max_records: Records taken from a partition's buffer at once.
        fetch_timeout: Seconds a pull waits for records (at most 1).
        commit_timeout: Seconds an offset commit may take before it is
            given up (and counted in ``failed_commits``).
        options: More keyword arguments for ``aiokafka.AIOKafkaConsumer``
            (``session_timeout_ms``, ``auto_offset_reset``, security...);
            not those streamkit sets (``group_id``, ``enable_auto_commit``,
            ``bootstrap_servers``, ``key_deserializer``).

    Attributes:
        failed_commits: Offset commits the group refused (the partition had
            moved on meanwhile) or that took longer than ``commit_timeout``.
        skipped_commits: Offset commits not made because the consumer was
            stopping: when the worker leaves early (its partitions are
            abandoned, see `streamkit.Partitioned`) or fails, a checkpoint
            saved meanwhile commits nothing, and a commit under way is
            given up, since the stopping consumer could not complete it.
            Neither these nor failed commits lose anything: a partition
            resumes from its checkpoint's offset, whatever the group
            committed; a missing commit only leaves the group's advisory
            offset behind.

    Raises:
        TypeError: An argument has the wrong type.
        ValueError: An argument has a wrong value.

    Examples:
        >>> group = ConsumerGroup("orders", group="billing", bootstrap_servers="kafka:9092")
        >>> group
        ConsumerGroup('orders', group='billing')
    """

    __slots__ = (
        "_closing",
        "_commit_timeout",
        "_fetch_timeout",
        "_max_records",
        "_options",
        "_partitions",
        "_servers",
        "_serving",
        "_stopping",
        "failed_commits",
        "group",
        "skipped_commits",
        "topic",
    )

    def __init__(
        self,
        topic: str,
        *,
        group: str,
        bootstrap_servers: str | Sequence[str],
        max_records: int = 500,
        fetch_timeout: float = 0.5,
        commit_timeout: float = 10.0,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        self.topic = _check_name(topic, "topic")
        self.group = _check_name(group, "group")
        self._servers = _check_servers(bootstrap_servers)
        if type(max_records) is not int:
            raise TypeError(f"max_records must be an int, got {type(max_records).__name__}")
        if max_records < 1:
            raise ValueError(f"max_records must be >= 1, got {max_records}")
        timeout = cast("object", fetch_timeout)  # untyped callers may pass anything
        if not isinstance(timeout, int | float) or isinstance(timeout, bool):
            raise TypeError(
                f"fetch_timeout must be a number of seconds, got {type(fetch_timeout).__name__}"
            )
        if not 0 < fetch_timeout <= 1:
            raise ValueError(f"fetch_timeout must be > 0 and <= 1 second, got {fetch_timeout!r}")
        commit = cast("object", commit_timeout)
        if not isinstance(commit, int | float) or isinstance(commit, bool):
            raise TypeError(
                f"commit_timeout must be a number of seconds, got {type(commit_timeout).__name__}"
            )
        if not 0 < commit_timeout < math.inf:
            raise ValueError(f"commit_timeout must be a positive number, got {commit_timeout!r}")
        self._max_records = max_records
        self._fetch_timeout = float(fetch_timeout)
        self._commit_timeout = float(commit_timeout)
        self._options = _check_options(options, _OWNED_OPTIONS, "options")
        self._stopping: asyncio.Event | None = None
        self._closing = asyncio.Event()
        self._partitions: Partitions | None = None
        self._serving = False
        self.failed_commits = 0
        self.skipped_commits = 0

    def __repr__(self) -> str:
        return f"ConsumerGroup({self.topic!r}, group={self.group!r})"

    def assigned(self) -> tuple[int, ...]:
        """The partitions this worker runs now, as the group assigned them (none before `serve`).

        Examples:
            >>> ConsumerGroup("orders", group="billing", bootstrap_servers="kafka:9092").assigned()
            ()
        """
        partitions = self._partitions
        if partitions is None:
            return ()
        return tuple(sorted(int(partition) for partition in partitions.owned()))

    def stop(self) -> None:
        """Ask `serve` to hand every partition back, leave the group and return."""
        if self._stopping is not None:
            self._stopping.set()

    async def serve(self, partitions: Partitions) -> None:
        """Join the group; run the partitions it assigns until `stop`; revoke them all.

        Raises:
            RuntimeError: It is serving already (one worker per `ConsumerGroup`).
        """
        if self._serving:
            raise RuntimeError(f"{self!r} is serving already: give each worker its own")
        self._serving = True
        self._partitions = partitions
        stopping = self._stopping = asyncio.Event()
        options = {"auto_offset_reset": "earliest", **self._options}
        consumer = _aiokafka.AIOKafkaConsumer(
            bootstrap_servers=self._servers,
            group_id=self.group,
            enable_auto_commit=False,
            **options,
        )
        listener = _Listener(
            self, partitions, consumer, lambda: stopping.is_set() or self._closing.is_set()
        )
        consumer.subscribe([self.topic], listener=listener)
        await consumer.start()
        try:
            # While the worker owns no partition, this pull for a partition that
            # does not exist keeps the consumer counted as active (aiokafka
            # leaves the group after max_poll_interval_ms without pulls).
            idle = _aiokafka.TopicPartition(self.topic, -1)
            stopped = asyncio.ensure_future(stopping.wait())
            try:
                while not stopping.is_set():
                    pull = asyncio.ensure_future(consumer.getmany(idle, timeout_ms=1000))
                    try:
                        await asyncio.wait({stopped, pull}, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        pull.cancel()
                        await asyncio.gather(pull, return_exceptions=True)
            finally:
                stopped.cancel()
            await partitions.revoke_all()
        finally:
            # From here on no commit is sent, and those under way are given up:
            # the consumer stops, and a commit on a stopping consumer never ends.
            self._closing.set()
            await _stop_consumer(consumer)

    def source(self, partitions: Partitions, consumer: Any, number: int) -> PartitionSource[Any]:
        """The `PartitionSource` of partition ``number`` (for the rebalance listener)."""
        tp = _aiokafka.TopicPartition(self.topic, number)
        sought: list[bool] = []

        async def fetch(position: Any) -> list[tuple[Any, Any]]:
            if not sought:
                sought.append(True)
                if position is not None:
                    consumer.seek(tp, position)  # the checkpoint's offset, not the group's
            try:
                async with asyncio.timeout(self._fetch_timeout):
                    batches = await consumer.getmany(
                        tp,
                        timeout_ms=int(self._fetch_timeout * 1000),
                        max_records=self._max_records,
                    )
            except TimeoutError:
                return []
            except _errors.ConsumerStoppedError:
                # Stopped under this partition's run (a rebalance that ended while the
                # consumer closed): the worker revokes or abandons the run next.
                await asyncio.sleep(self._fetch_timeout)
                return []
            return [(_record(message), message.offset + 1) for message in batches.get(tp, ())]

        async def acknowledge(position: Any) -> None:
            if position is not None:
                await self._commit(consumer, {tp: position})

        return partitions.source(str(number), start=None, fetch=fetch, acknowledge=acknowledge)

    async def _commit(self, consumer: Any, offsets: dict[Any, int]) -> None:
        """Commit ``offsets``, unless the consumer is stopping; within ``commit_timeout``."""
        closing = self._closing
        if closing.is_set():
            self.skipped_commits += 1
            return
        commit = asyncio.ensure_future(consumer.commit(offsets))
        closed = asyncio.ensure_future(closing.wait())
        try:
            await asyncio.wait(
                {commit, closed}, timeout=self._commit_timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            closed.cancel()
            commit.cancel()  # no effect once it is done
            await asyncio.gather(commit, closed, return_exceptions=True)
        if commit.cancelled():
            if closing.is_set():
                self.skipped_commits += 1
            else:
                self.failed_commits += 1  # it took longer than commit_timeout
            return
        error = commit.exception()
        if error is None:
            return
        if isinstance(error, _errors.CommitFailedError | _errors.IllegalStateError):
            self.failed_commits += 1
            return
        raise error


async def _stop_consumer(consumer: Any) -> None:
    """Stop ``consumer``; if the caller is cancelled meanwhile, the stop still completes first."""
    stopping = asyncio.ensure_future(consumer.stop())
    try:
        await asyncio.shield(stopping)
    except asyncio.CancelledError:
        await stopping
        raise


def _record(message: Any) -> KafkaRecord:
    return KafkaRecord(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        key=message.key,
        value=message.value,
        timestamp=message.timestamp,
        headers=tuple((str(name), bytes(value)) for name, value in message.headers),
    )


class _Listener:
    """Hands the group's assignments to the worker's `Partitions`."""

    __slots__ = ("_consumer", "_group", "_partitions", "_stopping")

    def __init__(
        self,
        group: ConsumerGroup,
        partitions: Partitions,
        consumer: Any,
        stopping: Callable[[], bool],
    ) -> None:
        self._group = group
        self._partitions = partitions
        self._consumer = consumer
        self._stopping = stopping

    async def on_partitions_revoked(self, revoked: Any) -> None:
        """Barrier, save, commit, close: every revoked partition ends with a checkpoint."""
        topic = self._group.topic
        numbers = [str(tp.partition) for tp in revoked if tp.topic == topic]
        await asyncio.gather(*(self._partitions.revoke(number) for number in numbers))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        """Start a run per assigned partition; each resumes from its checkpoint.

        Not once the worker is stopping: aiokafka lets a rebalance under way
        finish while the consumer closes, and its partitions would start runs
        on a closed consumer.
        """
        if self._stopping():
            return
        owned = set(self._partitions.owned())
        for tp in sorted(assigned, key=lambda tp: tp.partition):
            if tp.topic != self._group.topic or str(tp.partition) in owned:
                continue
            self._partitions.assign(
                self._group.source(self._partitions, self._consumer, tp.partition)
            )


_aiokafka.ConsumerRebalanceListener.register(_Listener)


def _json_value(item: Any) -> bytes:
    return json.dumps(item, ensure_ascii=False, separators=(",", ":")).encode()


class KafkaSink:
    """Publishes a checkpointed run's outputs to a Kafka topic, once each checkpoint is saved.

    A `streamkit.Sink` for `streamkit.write_to`: the items between two
    checkpoints are encoded when the barrier reaches the sink, kept in the
    checkpoint, and sent (awaiting every acknowledgement) once the
    checkpoint is saved. So nothing is published before its checkpoint: a
    crash before the save publishes nothing of those items (the resumed run
    processes them again), and no item is lost. A crash after the save,
    during the sending, makes the resumed run send that checkpoint's batch
    again: every record carries the headers ``streamkit-batch`` (the batch's
    id, the same in such a replay) and ``streamkit-index`` (its place in the
    batch), so a reader that keeps the pairs it has seen reads every item
    exactly once. Kafka transactions are not used.

    Args:
        topic: The topic to publish to.
        bootstrap_servers: ``"host:port"``, or several.
        value: Encodes an item as the record's value (JSON by default).
        key: The record's key for an item (None: no key), which picks its partition.
        options: More keyword arguments for ``aiokafka.AIOKafkaProducer``
            (``acks``, ``compression_type``...; not ``bootstrap_servers`` nor
            ``transactional_id``).

    Raises:
        TypeError: An argument has the wrong type.
        ValueError: An argument has a wrong value.

    Examples:
        >>> sink = KafkaSink("totals", bootstrap_servers="kafka:9092")
        >>> sink.label
        "kafka 'totals'"
    """

    __slots__ = ("_key", "_lock", "_options", "_producer", "_servers", "_value", "label", "topic")

    def __init__(
        self,
        topic: str,
        *,
        bootstrap_servers: str | Sequence[str],
        value: Callable[[Any], bytes] = _json_value,
        key: Callable[[Any], bytes | None] | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        self.topic = _check_name(topic, "topic")
        self._servers = _check_servers(bootstrap_servers)
        if not callable(value):
            raise TypeError(f"value must be callable, got {type(value).__name__}")
        if key is not None and not callable(key):
            raise TypeError(f"key must be callable or None, got {type(key).__name__}")
        self._value = value
        self._key = key
        self._options = _check_options(options, _PRODUCER_OWNED, "options")
        self._producer: Any = None
        self._lock: asyncio.Lock | None = None
        self.label = f"kafka {topic!r}"

    def __repr__(self) -> str:
        return f"KafkaSink({self.topic!r})"

    def pre_commit(self, items: Sequence[Any], checkpoint: int, /) -> list[Any]:
        """The records of ``items``: ``[batch id, [[key, value], ...]]``, kept in the checkpoint."""
        records: list[list[bytes | None]] = []
        for item in items:
            value = self._value(item)
            if not isinstance(value, bytes):  # pyright: ignore[reportUnnecessaryIsInstance] - user code
                raise TypeError(f"{self.label}: value() must return bytes, got {value!r}")
            records.append([None if self._key is None else self._key(item), value])
        return [uuid.uuid4().hex, records]

    async def commit(self, prepared: Any, /) -> None:
        """Send a checkpoint's records and wait until the cluster has them all."""
        batch, records = prepared
        producer = await self._started()
        marker = batch.encode()
        sent = [
            await producer.send(
                self.topic,
                value,
                key=key,
                headers=[(BATCH_HEADER, marker), (INDEX_HEADER, str(index).encode())],
            )
            for index, (key, value) in enumerate(records)
        ]
        await asyncio.gather(*sent)

    async def _started(self) -> Any:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._producer is None:
                producer = _aiokafka.AIOKafkaProducer(
                    bootstrap_servers=self._servers, **self._options
                )
                await producer.start()
                self._producer = producer
            return self._producer

    async def close(self) -> None:
        """Flush and stop the producer (the sink starts another if used again)."""
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
