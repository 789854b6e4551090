"""Redis Streams consumer groups: partitioned sources and an XADD sink.

Install with ``pip install 'streamkit[redis]'`` (redis-py's asyncio client).
A `StreamGroup` is the `streamkit.Broker` of a `streamkit.Partitioned`
worker: the stream is split into partitions, one Redis stream per partition
(``"{stream}:{p}"``), read through a consumer group. Each worker of the group
owns some of the partitions and runs the pipeline once per partition::

    group = StreamGroup("redis://queue:6379/0", "orders", partitions=6)
    worker = Partitioned(pipeline, group, store=PostgresStore(dsn), name="orders")
    async with worker:
        async for output in worker:
            ...

How partitions are shared (see docs/deploy.md):

* A worker owns partition ``p`` while it holds its *lease*, the key
  ``"{stream}:lease:{p}"`` (``SET NX PX``), renewed by its heartbeat every
  third of ``lease``; a worker that fails to renew a lease in time abandons
  the partition at once, without a checkpoint, and stops reading it as soon
  as its own clock says the lease may have run out.
* Live workers beat in the sorted set ``"{stream}:workers"``; each claims at
  most ``ceil(partitions / live)`` partitions and hands extras back
  (`streamkit.Partitions.revoke`: last barrier, save, acknowledge) when
  workers join.
* A partition's run resumes from its checkpoint, which holds the id of the
  last entry it covers: the checkpoint is the truth, not the group. On
  assign, the new owner claims (``XAUTOCLAIM``) every entry pending on other
  consumers of the partition, the entries of workers that crashed or handed
  the partition back (the lease's expiry is their idle time: no other
  worker reads the partition meanwhile), acknowledges those its checkpoint
  covers, reads the rest of its pending entries after the checkpoint's id,
  then new entries (``XREADGROUP >``).
* Entries are acknowledged (``XACK``) only once a checkpoint that covers
  them is saved.

`StreamSink` adds a checkpoint's outputs to a stream with ``XADD`` when the
checkpoint is saved; with ``exactly_once=True`` each checkpoint's entries go
in one Lua script together with a marker of that checkpoint's batch, so that
a commit repeated after a crash adds nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import secrets
import socket
import time
import zlib
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Self

from ._records import Envelope

if TYPE_CHECKING:
    from types import TracebackType

    from ._partitioned import Partitions

__all__ = ["Entry", "StreamGroup", "StreamSink"]

_KEY: Final = re.compile(r"[A-Za-z0-9_.:{}-]{1,200}")
_GROUP: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")

# KEYS[1]: the workers' sorted set. ARGV: the consumer, the lease in ms.
# Beats (score: when the beat runs out, on the server's clock), forgets
# workers whose beat ran out, and returns how many are alive.
_BEAT: Final = """
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZADD', KEYS[1], ms + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ms)
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 10)
return redis.call('ZCARD', KEYS[1])
"""

# KEYS[1]: a lease. ARGV: the consumer, the lease in ms. Renews it if it is ours.
_RENEW: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# KEYS[1]: a lease. ARGV[1]: the consumer. Deletes it if it is ours.
_RELEASE: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# KEYS[1]: the stream, KEYS[2]: the batch's marker. ARGV[1]: the marker's
# lifetime in seconds, ARGV[2]: MAXLEN (0: none), ARGV[3..]: one JSON array
# [name, value, name, value...] per entry. Adds the entries unless the marker says they were.
_ADD_ONCE: Final = """
if redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[1]) == false then
  return 0
end
local maxlen = tonumber(ARGV[2])
for i = 3, #ARGV do
  local fields = cjson.decode(ARGV[i])
  local args = {}
  if maxlen > 0 then
    args = {'MAXLEN', '~', maxlen}
  end
  table.insert(args, '*')
  for _, part in ipairs(fields) do
    table.insert(args, part)
  end
  redis.call('XADD', KEYS[1], unpack(args))
end
return #ARGV - 2
"""


def _redis() -> Any:
    try:
        import redis.asyncio
    except ImportError:  # pragma: no cover - the extra is installed in the tests
        raise ImportError(
            "streamkit.redis needs the redis package: pip install 'streamkit[redis]'"
        ) from None
    return redis.asyncio


def _check_url(url: object) -> str:
    if not isinstance(url, str):
        raise TypeError(f"url must be a str (redis://host:port/db), got {type(url).__name__}")
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(f"url must be a redis://, rediss:// or unix:// URL, got {url!r}")
    return url


def _check_key(value: object, parameter: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{parameter} must be a str, got {type(value).__name__}")
    if not _KEY.fullmatch(value):
        raise ValueError(
            f"{parameter} must be 1 to 200 letters, digits or '_ . : {{ }} -', got {value!r}"
        )
    return value


def _check_seconds(value: object, parameter: str) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise TypeError(f"{parameter} must be a number of seconds, got {type(value).__name__}")
    if not 0 < value < math.inf:
        raise ValueError(f"{parameter} must be a positive number of seconds, got {value!r}")
    return float(value)


def _check_count(value: object, parameter: str) -> int:
    if type(value) is not int:
        raise TypeError(f"{parameter} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{parameter} must be >= 1, got {value}")
    return value


def _flat(fields: Mapping[str, str]) -> str:
    """``fields`` as the JSON array ``[name, value, name, value...]`` (for the Lua script)."""
    return json.dumps([part for pair in fields.items() for part in pair])


def _id(entry_id: str) -> tuple[int, int]:
    milliseconds, _, sequence = entry_id.partition("-")
    return int(milliseconds), int(sequence or 0)


@dataclass(frozen=True, slots=True)
class Entry:
    """One entry of a partition's stream, as a `StreamGroup` hands it to the pipeline.

    Attributes:
        partition: The partition (``"0"``, ``"1"``, ...).
        id: The entry's id (``"1700000000000-0"``).
        fields: Its fields and values.

    Examples:
        >>> entry = Entry("3", "1700000000000-0", {"order": "42"})
        >>> entry.fields["order"], entry.partition
        ('42', '3')
    """

    partition: str
    id: str
    fields: Mapping[str, str]


class _Reader:
    """Reads one partition for its owner: claim on assign, own pending entries, new ones."""

    __slots__ = ("_claimed", "_group", "_handed", "_key", "_pending", "_stream", "partition")

    def __init__(self, stream: StreamGroup, partition: str) -> None:
        self._stream = stream
        self.partition = partition
        self._key = stream.key(partition)
        self._group = stream.group
        self._claimed = False
        self._pending = True
        self._handed: deque[tuple[tuple[int, int], str]] = deque()
        """Ids read and not acknowledged yet, in order."""

    async def fetch(self, position: str) -> list[tuple[Any, Any]]:
        stream = self._stream
        client = stream.client()
        block = stream.block
        if not stream.may_read(self.partition, block):
            await asyncio.sleep(block)  # the lease is about to run out: the heartbeat decides
            return []
        consumer = stream.consumer
        if not self._claimed:
            await self._claim(client, position)
            self._claimed = True
        if self._pending:
            # Entries delivered to this consumer (or claimed by it) after the checkpoint.
            found = await client.xreadgroup(
                self._group, consumer, {self._key: position}, count=stream.count
            )
            entries = self._entries(found)
            if entries:
                return await self._keep(client, entries)
            self._pending = False
        found = await client.xreadgroup(
            self._group,
            consumer,
            {self._key: ">"},
            count=stream.count,
            block=max(1, int(block * 1000)),
        )
        return await self._keep(client, self._entries(found))

    def _entries(self, found: Any) -> list[tuple[str, dict[str, str] | None]]:
        if not found:
            return []
        [[_, entries]] = found
        return [(entry_id, fields) for entry_id, fields in entries]

    async def _keep(
        self, client: Any, entries: list[tuple[str, dict[str, str] | None]]
    ) -> list[tuple[Any, Any]]:
        gone = [entry_id for entry_id, fields in entries if fields is None]
        if gone:  # deleted from the stream while pending: nothing to process
            await client.xack(self._key, self._group, *gone)
        items: list[tuple[Any, Any]] = []
        for entry_id, fields in entries:
            if fields is None:
                continue
            self._handed.append((_id(entry_id), entry_id))
            items.append((Entry(self.partition, entry_id, fields), entry_id))
        return items

    async def _claim(self, client: Any, position: str) -> None:
        """Take every entry pending on other consumers; acknowledge those the checkpoint covers.

        The lease says no other worker reads the partition: whatever other
        consumers hold, they hold from before it was taken.
        """
        consumer = self._stream.consumer
        cursor = "0-0"
        while True:
            answer = await client.xautoclaim(
                self._key, self._group, consumer, 0, start_id=cursor, count=500
            )
            cursor = answer[0]
            if cursor == "0-0":
                break
        # Consumers left by earlier owners (a restarted worker has a new name) hold
        # nothing now: forget them, so that the group does not grow without end.
        for other in await client.xinfo_consumers(self._key, self._group):
            if other["name"] != consumer and int(other["pending"]) == 0:
                await client.xgroup_delconsumer(self._key, self._group, other["name"])
        if _id(position) == (0, 0):
            return
        while True:
            covered = await client.xpending_range(
                self._key, self._group, min="-", max=position, count=500, consumername=consumer
            )
            if not covered:
                return
            await client.xack(self._key, self._group, *(row["message_id"] for row in covered))

    async def acknowledge(self, position: str) -> None:
        """``XACK`` the entries read up to ``position`` (a saved checkpoint's)."""
        last = _id(position)
        done: list[str] = []
        handed = self._handed
        while handed and handed[0][0] <= last:
            done.append(handed.popleft()[1])
        if done:
            await self._stream.client().xack(self._key, self._group, *done)


class StreamGroup:
    """A Redis Streams consumer group, partitioned: the `streamkit.Broker` of a worker.

    Each partition ``p`` is the stream ``"{stream}:{p}"`` (write into it with
    ``XADD``, or with a `StreamSink` per partition); every worker of the
    group is a `streamkit.Partitioned` given its own `StreamGroup` with the
    same ``url``, ``stream``, ``partitions`` and ``group``, and its own
    ``consumer``. The consumer group is created on each partition's stream
    (from its first entry) if missing. The pipeline gets `Entry` items.
    Needs Redis 6.2 or later (``XAUTOCLAIM``); not Redis Cluster (the keys of
    a partition are not placed in one slot).

    Args:
        url: The Redis server (``redis://host:port/db``).
        stream: The streams' common prefix.
        partitions: How many partitions (streams) there are.
        group: The consumer group's name.
        consumer: This worker's name in the group (unique; by default the
            host name, process id and a random suffix).
        lease: Seconds a worker's lease on a partition lasts without being
            renewed: how soon the partitions of a crashed worker move on.
        block: Seconds a read waits for new entries (and so the longest a
            revoke waits for an idle partition).
        count: Entries per read.

    Raises:
        TypeError: An argument has the wrong type.
        ValueError: A bad URL or name, ``partitions`` or ``count`` < 1, a
            duration that is not positive, or ``block`` not below a third of
            ``lease``.

    Examples:
        >>> group = StreamGroup("redis://localhost:6379/0", "orders", partitions=6)
        >>> group.key("3"), group.partitions
        ('orders:3', ('0', '1', '2', '3', '4', '5'))
    """

    __slots__ = (
        "_client",
        "_deadlines",
        "_owned",
        "_readers",
        "_revoking",
        "_stopping",
        "block",
        "consumer",
        "count",
        "group",
        "lease",
        "partitions",
        "stream",
        "url",
    )

    def __init__(
        self,
        url: str,
        stream: str,
        *,
        partitions: int,
        group: str = "streamkit",
        consumer: str | None = None,
        lease: float = 10.0,
        block: float = 0.5,
        count: int = 100,
    ) -> None:
        _redis()
        self.url = _check_url(url)
        self.stream = _check_key(stream, "stream")
        self.partitions = tuple(str(p) for p in range(_check_count(partitions, "partitions")))
        if not isinstance(group, str):  # pyright: ignore[reportUnnecessaryIsInstance] - untyped callers
            raise TypeError(f"group must be a str, got {type(group).__name__}")
        if not _GROUP.fullmatch(group):
            raise ValueError(f"group must be 1 to 64 letters, digits or '_ . -', got {group!r}")
        self.group = group
        if consumer is None:
            consumer = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        if not isinstance(consumer, str):  # pyright: ignore[reportUnnecessaryIsInstance] - untyped callers
            raise TypeError(f"consumer must be a str or None, got {type(consumer).__name__}")
        if not consumer:
            raise ValueError("consumer must be a non-empty str")
        self.consumer = consumer
        self.lease = _check_seconds(lease, "lease")
        self.block = _check_seconds(block, "block")
        if self.block * 3 >= self.lease:
            raise ValueError(
                f"block must be below a third of lease (a read must end well within a lease), "
                f"got block={block!r} and lease={lease!r}"
            )
        self.count = _check_count(count, "count")
        self._client: Any = None
        self._deadlines: dict[str, float] = {}
        self._owned: set[str] = set()
        self._revoking: dict[str, asyncio.Task[None]] = {}
        self._readers: dict[str, _Reader] = {}
        self._stopping: asyncio.Event | None = None

    def __repr__(self) -> str:
        return (
            f"StreamGroup({self.stream!r}, partitions={len(self.partitions)}, "
            f"group={self.group!r}, consumer={self.consumer!r})"
        )

    def key(self, partition: str) -> str:
        """The stream of ``partition``."""
        return f"{self.stream}:{partition}"

    def _lease_key(self, partition: str) -> str:
        return f"{self.stream}:lease:{partition}"

    @property
    def _workers_key(self) -> str:
        return f"{self.stream}:workers"

    def client(self) -> Any:
        """The worker's Redis client (while `serve` runs)."""
        if self._client is None:
            raise RuntimeError(f"{self!r} is not serving")
        return self._client

    def owned(self) -> tuple[str, ...]:
        """The partitions whose lease this worker holds."""
        return tuple(sorted(self._owned, key=int))

    def may_read(self, partition: str, seconds: float) -> bool:
        """Whether the lease on ``partition`` surely lasts ``seconds`` more (on this clock)."""
        deadline = self._deadlines.get(partition)
        return deadline is not None and time.monotonic() + seconds + self.lease / 10 < deadline

    # -- the Broker protocol -------------------------------------------------

    def stop(self) -> None:
        """Ask `serve` to hand every partition back and return."""
        if self._stopping is not None:
            self._stopping.set()

    async def serve(self, partitions: Partitions) -> None:
        """Hold leases, share partitions with the live workers, until `stop`."""
        if self._client is not None:
            raise RuntimeError(f"{self!r} is already serving")
        self._stopping = stopping = asyncio.Event()
        client = self._client = _redis().Redis.from_url(self.url, decode_responses=True)
        try:
            beat = client.register_script(_BEAT)
            renew = client.register_script(_RENEW)
            release = client.register_script(_RELEASE)
            for partition in self.partitions:
                try:
                    await client.xgroup_create(self.key(partition), self.group, "0", mkstream=True)
                except _redis().ResponseError as exc:
                    if "BUSYGROUP" not in str(exc):
                        raise
            lease_ms = int(self.lease * 1000)
            while not stopping.is_set():
                started = time.monotonic()
                live = int(await beat(keys=[self._workers_key], args=[self.consumer, lease_ms]))
                await self._renew(partitions, renew, release, lease_ms, started)
                await self._balance(partitions, client, release, live, lease_ms, started)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), self.lease / 3)
            await self._hand_back(partitions, release)
            await client.zrem(self._workers_key, self.consumer)
        except BaseException:
            # Cancelled (the worker left early) or failed: no last checkpoints.
            await self._let_go(partitions, client)
            raise
        finally:
            self._client = None
            await client.aclose()

    async def _let_go(self, partitions: Partitions, client: Any) -> None:
        """Abandon every partition; release the leases if the server still answers."""
        revoking = list(self._revoking.values())
        self._revoking.clear()
        for task in revoking:
            task.cancel()
        await asyncio.gather(*revoking, return_exceptions=True)
        await partitions.abandon_all()
        held = sorted(self._owned)
        for partition in held:
            self._drop(partition)
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self.block * 2 + 1):
                release = client.register_script(_RELEASE)
                for partition in held:
                    await release(keys=[self._lease_key(partition)], args=[self.consumer])
                await client.zrem(self._workers_key, self.consumer)

    async def _renew(
        self, partitions: Partitions, renew: Any, release: Any, lease_ms: int, started: float
    ) -> None:
        owned = set(partitions.owned())
        for partition in sorted(self._owned):
            if partition not in owned and partition not in self._revoking:
                # Its run ended on its own (another worker saved it): let it go.
                await release(keys=[self._lease_key(partition)], args=[self.consumer])
                self._drop(partition)
                continue
            renewed = await renew(keys=[self._lease_key(partition)], args=[self.consumer, lease_ms])
            if renewed:
                self._deadlines[partition] = started + self.lease
            else:
                self._drop(partition)
                await partitions.abandon(partition)

    async def _balance(
        self,
        partitions: Partitions,
        client: Any,
        release: Any,
        live: int,
        lease_ms: int,
        started: float,
    ) -> None:
        for partition, task in list(self._revoking.items()):
            if task.done():
                del self._revoking[partition]
                task.result()
        fair = math.ceil(len(self.partitions) / max(1, live))
        kept = [p for p in self.owned() if p not in self._revoking]
        if len(kept) > fair:
            for partition in kept[fair:]:
                self._revoking[partition] = asyncio.get_running_loop().create_task(
                    self._revoke(partitions, release, partition)
                )
            return
        wanted = fair - len(kept)
        if wanted <= 0 or self._revoking:
            return
        for partition in self._order():
            if wanted == 0:
                break
            if partition in self._owned:
                continue
            taken = await client.set(
                self._lease_key(partition), self.consumer, nx=True, px=lease_ms
            )
            if not taken:
                continue
            self._owned.add(partition)
            self._deadlines[partition] = started + self.lease
            reader = self._readers[partition] = _Reader(self, partition)
            source = partitions.source(
                partition, start="0-0", fetch=reader.fetch, acknowledge=reader.acknowledge
            )
            partitions.assign(source)
            wanted -= 1

    def _order(self) -> list[str]:
        """The partitions, starting at one that depends on the consumer (workers spread out)."""
        offset = zlib.crc32(self.consumer.encode()) % len(self.partitions)
        return [*self.partitions[offset:], *self.partitions[:offset]]

    async def _revoke(self, partitions: Partitions, release: Any, partition: str) -> None:
        await partitions.revoke(partition)
        await release(keys=[self._lease_key(partition)], args=[self.consumer])
        self._drop(partition)

    def _drop(self, partition: str) -> None:
        self._owned.discard(partition)
        self._deadlines.pop(partition, None)
        self._readers.pop(partition, None)

    async def _hand_back(self, partitions: Partitions, release: Any) -> None:
        """Revoke every partition (last checkpoints), then release the leases."""
        revoking = list(self._revoking.values())
        self._revoking.clear()
        await asyncio.gather(*revoking)
        await partitions.revoke_all()
        for partition in sorted(self._owned):
            await release(keys=[self._lease_key(partition)], args=[self.consumer])
            self._drop(partition)


class StreamSink:
    """A Redis stream that gets a checkpointed run's outputs with ``XADD``.

    A `streamkit.Sink`: use it with `streamkit.write_to` in a checkpointed
    run (or a `streamkit.Partitioned` worker). Each checkpoint's items are
    added when the checkpoint is saved. By default that is at least once: a
    crash between the save and the adds makes the resumed run add them
    again. With ``exactly_once=True``, each checkpoint's entries are added
    by one Lua script together with a marker of their batch (kept for
    ``marker_ttl`` seconds), so that a repeated commit adds nothing.

    Args:
        url: The Redis server.
        stream: The stream to add to.
        fields: Turns an item into the entry's fields (strings); by default
            an item must be a mapping of names to strings or numbers (an
            `Entry` gives its fields).
        exactly_once: Add each batch atomically, once.
        maxlen: Trim the stream to about this many entries (``MAXLEN ~``).
        marker_ttl: Seconds a batch's marker is kept (exactly once holds
            for a crashed run resumed within that time).

    Raises:
        TypeError: An argument has the wrong type.
        ValueError: A bad URL or stream name, or ``maxlen`` or
            ``marker_ttl`` < 1.

    Examples:
        >>> sink = StreamSink("redis://localhost:6379/0", "totals", exactly_once=True)
        >>> sink.label
        "stream 'totals'"
    """

    __slots__ = (
        "_client",
        "_fields",
        "exactly_once",
        "label",
        "marker_ttl",
        "maxlen",
        "stream",
        "url",
    )

    def __init__(
        self,
        url: str,
        stream: str,
        *,
        fields: Callable[[Any], Mapping[str, str | int | float]] | None = None,
        exactly_once: bool = False,
        maxlen: int | None = None,
        marker_ttl: int = 7 * 24 * 3600,
    ) -> None:
        _redis()
        self.url = _check_url(url)
        self.stream = _check_key(stream, "stream")
        if fields is not None and not callable(fields):
            raise TypeError(f"fields must be callable or None, got {type(fields).__name__}")
        if not isinstance(exactly_once, bool):  # pyright: ignore[reportUnnecessaryIsInstance] - untyped callers
            raise TypeError(f"exactly_once must be a bool, got {type(exactly_once).__name__}")
        self._fields = fields
        self.exactly_once = exactly_once
        self.maxlen = None if maxlen is None else _check_count(maxlen, "maxlen")
        self.marker_ttl = _check_count(marker_ttl, "marker_ttl")
        self.label = f"stream {stream!r}"
        self._client: Any = None

    def __repr__(self) -> str:
        return f"StreamSink({self.stream!r}, exactly_once={self.exactly_once})"

    def _entry(self, item: Any) -> dict[str, str]:
        value: Any = item.value if isinstance(item, Envelope) else item  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType] - any value
        if self._fields is not None:
            value = self._fields(value)
        elif isinstance(value, Entry):
            value = value.fields
        if not isinstance(value, Mapping) or not value:
            raise TypeError(
                f"{self.label}: an entry needs a non-empty mapping of fields; give fields= "
                f"to turn items into one, got {type(value).__name__}"  # pyright: ignore[reportUnknownArgumentType]
            )
        fields: dict[str, str] = {}
        for name, field in value.items():  # pyright: ignore[reportUnknownVariableType]
            if not isinstance(name, str) or not isinstance(field, str | int | float):
                raise TypeError(
                    f"{self.label}: fields must map str to str or numbers, got {name!r}: {field!r}"
                )
            fields[name] = str(field)
        return fields

    def pre_commit(self, items: Sequence[Any], checkpoint: int, /) -> dict[str, Any]:
        """The entries of ``items``, with a fresh batch token."""
        return {
            "batch": secrets.token_hex(16),
            "entries": [self._entry(item) for item in items],
        }

    async def commit(self, prepared: Any, /) -> None:
        """Add the prepared entries (once per batch, with ``exactly_once``)."""
        client = self._connected()
        entries: list[dict[str, str]] = prepared["entries"]
        if self.exactly_once:
            marker = f"{self.stream}:batch:{prepared['batch']}"
            await client.eval(
                _ADD_ONCE,
                2,
                self.stream,
                marker,
                self.marker_ttl,
                self.maxlen or 0,
                *(_flat(entry) for entry in entries),
            )
            return
        async with client.pipeline(transaction=True) as pipe:
            for entry in entries:
                pipe.xadd(self.stream, entry, maxlen=self.maxlen, approximate=True)
            await pipe.execute()

    def _connected(self) -> Any:
        if self._client is None:
            self._client = _redis().Redis.from_url(self.url, decode_responses=True)
        return self._client

    async def aclose(self) -> None:
        """Close the sink's connections (it reconnects if used again)."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()
