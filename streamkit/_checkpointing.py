"""Checkpoints of a run: barriers in, snapshots out, one transaction per checkpoint.

A `Run` given ``checkpoint=store`` hands its pipeline and source to a
`Checkpointing`, which

1. prepares the steps (`prepare`): every step gets a key (``"3"``,
   ``"5/left/0"`` inside a branch), stateful steps a `Slot`, segments and
   guards their checkpointed forms; a step that cannot say what state it
   keeps is refused; the keys and labels make the pipeline's *shape*;
2. prepares the source (`source`): every resumable source in it (one, or
   several inside `merge`, `zip_`, `concat`, `broadcast`) is read through an
   *injector* that counts the items and, when a checkpoint is due, sends a
   barrier recording its position before its next item;
3. loads the last checkpoint (`start`): refuses another version or shape,
   seeks every source, and gives the slots their snapshots;
4. watches the pipeline's output (`outputs`): items go to the consumer,
   writes are kept, and a barrier that comes out means every output of the
   items before it has been handled: its positions, snapshots and the writes
   since the last one are saved as one checkpoint, in one store transaction
   (in the background: the next items flow meanwhile; at most one save is
   under way, and a checkpoint that comes meanwhile waits for it, replaced
   by a newer one if that comes first);
5. ends (`finish`): a run that succeeded saves a last checkpoint that marks
   it complete, with the writes still kept; a run that failed or was
   stopped keeps its last completed checkpoint.

The run calls this module, never the other way round.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import operator
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from typing import TYPE_CHECKING, Any, Final

from ._barrier import CONTROL, Control, DeadLetterWrite, Encoder, Slot
from ._codec import DEFAULT_CODEC as TYPED_DEFAULT
from ._codec import TypedCodec
from ._combine import Combined
from ._core import (
    COOPERATE_EVERY,
    Batched,
    Flow,
    ItemOp,
    Stage,
    Step,
    Transform,
    aclose,
    cooperate,
)
from ._failures import GuardedItem, GuardedTransform
from ._records import Envelope, Key, State, StateLimits
from ._resumable import Resumable, SequenceSource, Suspending, resumable
from ._runtime import shielded, start_awaitable
from ._store import Checkpoint, CheckpointError, Store
from ._writes import DeadLetterRow, TableRows

if TYPE_CHECKING:
    from ._codec import Codec
    from ._runtime import Clock, Handle
    from ._sinks import SinkWrite

DEFAULT_EVERY: Final = 1000
"""Source items between two checkpoints, by default."""

_SOURCE: Final = "source"
"""The key of a run's source in its checkpoints."""


# --------------------------------------------------------------------------- arguments


def check_store(store: object) -> Store:
    if not isinstance(store, Store):
        raise TypeError(
            "checkpoint must be a Store (SQLiteStore, MemoryStore or your own) or None, "
            f"got {type(store).__name__}"
        )
    return store


def check_every(every: object, interval: object) -> tuple[int | None, float | None]:
    """``every`` and ``interval`` as (items, seconds); ``every`` may be a timedelta too."""
    seconds: float | None = None
    if interval is not None:
        if isinstance(interval, dt.timedelta):
            seconds = interval.total_seconds()
        elif isinstance(interval, int | float) and not isinstance(interval, bool):
            seconds = float(interval)
        else:
            raise TypeError(
                "interval must be a number of seconds, a datetime.timedelta or None, "
                f"got {type(interval).__name__}: {interval!r}"
            )
        if not 0 < seconds < float("inf"):
            raise ValueError(f"interval must be a positive duration, got {interval!r}")
    if isinstance(every, dt.timedelta):
        if interval is not None:
            raise TypeError("give the time between checkpoints as interval= or every=, not both")
        total = every.total_seconds()
        if total <= 0:
            raise ValueError(f"every must be a positive duration, got {every!r}")
        return None, total
    if type(every) is not int:
        raise TypeError(
            "every must be an int (source items) or a datetime.timedelta, "
            f"got {type(every).__name__}: {every!r}"
        )
    if every < 1:
        raise ValueError(f"every must be >= 1 item, got {every}")
    return every, seconds


def run_codec(codec: Encoder | None, keyed: Mapping[str, Codec[Any]]) -> Encoder:
    """The codec of a run's snapshots and writes: ``codec`` that also knows states and envelopes.

    ``codec`` (`streamkit.DEFAULT_CODEC` when None), if it is a `TypedCodec`
    that does not encode `Envelope` itself, gets the forms of a `State`,
    ``[entries]`` or ``[entries, keyed]``, and of an `Envelope`, ``[value,
    entries]`` or ``[value, entries, keyed]``: ``keyed`` holds the entries
    whose names are in ``keyed``, each encoded by its key's codec (the mapping
    is read when encoding, so it may be filled after the codec is made). Any
    other codec is used as it is: it must encode states and envelopes itself.
    """
    base = TYPED_DEFAULT if codec is None else codec
    if not isinstance(base, TypedCodec) or Envelope in base.types:
        return base

    def entries(state: State) -> list[Any]:
        if not keyed or keyed.keys().isdisjoint(state):
            return [dict(state)]
        plain: dict[str, Any] = {}
        encoded: dict[str, Any] = {}
        for name, value in state.items():
            key_codec = keyed.get(name)
            if key_codec is None:
                plain[name] = value
                continue
            try:
                encoded[name] = key_codec.encode(value)
            except Exception as exc:
                message = f"the codec of state key {name!r} cannot encode it: {exc}"
                raise ValueError(message) from exc
        return [plain, encoded]

    def state_back(data: list[Any]) -> State:
        plain: dict[str, Any] = data[0]
        saved: dict[str, Any] = data[1] if len(data) > 1 else {}
        for name, encoded in saved.items():
            key_codec = keyed.get(name)
            if key_codec is None:
                raise ValueError(
                    f"state key {name!r} was saved with a codec of its own, and no step of "
                    "this pipeline sets that key with a codec"
                )
            try:
                plain[name] = key_codec.decode(encoded)
            except Exception as exc:
                message = f"the codec of state key {name!r} cannot decode it: {exc}"
                raise ValueError(message) from exc
        return State(plain, limits=StateLimits.UNLIMITED)

    def envelope_back(data: list[Any]) -> Envelope[Any]:
        return Envelope(data[0], state_back(data[1:]))

    return base.with_type(
        State, encode=entries, decode=state_back, name="streamkit:State"
    ).with_type(
        Envelope,
        encode=lambda envelope: [envelope.value, *entries(envelope.state)],
        decode=envelope_back,
        name="streamkit:Envelope",
    )


DEFAULT_CODEC: Final = run_codec(None, {})
"""The codec of checkpointed state: the types of `streamkit.DEFAULT_CODEC`, and envelopes."""


# --------------------------------------------------------------------------- sources


class _Leaf:
    """One resumable source of a run, read through an injector."""

    __slots__ = ("count", "ended", "key", "source")

    def __init__(self, key: str, source: Resumable[Any]) -> None:
        self.key = key
        self.source = source
        self.ended = False
        self.count = 0
        """Items sent in this attempt."""


def as_resumable(source: object) -> Resumable[Any] | None:
    """A resumable form of ``source`` (a sequence is wrapped), or None."""
    if isinstance(source, Resumable):
        return source  # pyright: ignore[reportUnknownVariableType] - any item type
    if isinstance(source, Sequence) and not isinstance(source, str | bytes):
        return resumable(source)  # pyright: ignore[reportUnknownVariableType, reportUnknownArgumentType] - any item type
    return None


def _sequence_source(source: Resumable[Any]) -> SequenceSource[Any] | None:
    """``source`` when it is `resumable`'s source over a sequence (read in batches)."""
    if isinstance(source, SequenceSource):
        return source
    return None


# --------------------------------------------------------------------------- the layer


SAVE_LAG: Final = 8
"""Barriers that may come out while a checkpoint is being saved before the pipeline waits.

The newest of them waits to be saved next (the others are replaced); the
next barrier to come out then waits until it is saved. So a store slower
than the pipeline lets it run ahead by at most this many checkpoint
intervals, which bounds what a crash repeats.
"""


class Checkpointing:
    """One checkpointed run: prepares its steps and source, saves its checkpoints.

    Args:
        store: Where checkpoints go.
        name: The run's name (the checkpoint's key in the store).
        source: What the run reads: a resumable source, a sequence, or flows
            of them combined with `merge`, `zip_`, `concat`, `broadcast`.
        every: ``(items, seconds)`` from `check_every`.
        version: The pipeline's version, saved with each checkpoint.
        codec: Encodes the snapshots and writes.
        migrate: Called with a loaded checkpoint whose shape differs from the
            pipeline's; returns the checkpoint to resume from, or None to
            refuse it.
    """

    __slots__ = (
        "_barrier",
        "_base_items",
        "_behind",
        "_bound",
        "_clock",
        "_codec",
        "_due",
        "_every_items",
        "_every_seconds",
        "_failed",
        "_keyed",
        "_leaves",
        "_made",
        "_migrate",
        "_next_at",
        "_positions",
        "_pulled",
        "_restored",
        "_saving",
        "_sequence",
        "_shape",
        "_source",
        "_suspended",
        "_waiting",
        "_writes",
        "before_save",
        "last_saved",
        "name",
        "on_saved",
        "resumed_from",
        "store",
        "version",
    )

    def __init__(
        self,
        store: Store,
        name: str,
        source: object,
        every: tuple[int | None, float | None],
        version: str,
        *,
        codec: Encoder | None = None,
        migrate: Callable[[Checkpoint], Checkpoint | None] | None = None,
    ) -> None:
        self.store = store
        self.name = name
        self.version = version
        self._every_items, self._every_seconds = every
        self._keyed: dict[str, Codec[Any]] = {}
        """The codecs of the state keys the pipeline's steps set (filled by `prepare`)."""
        self._codec = run_codec(codec, self._keyed)
        self._migrate = migrate
        self._restored: dict[str, Any] = {}
        """The snapshots of the checkpoint resumed from (filled by `start`)."""
        self._shape: list[str] = []
        self._bound: set[str] = set()
        self._leaves: list[_Leaf] = []
        self._positions: dict[str, Any] = {}
        self._pulled = 0
        self._next_at = self._every_items or 0
        self._due = 0.0
        self._sequence = 0
        self._barrier: Control | None = None
        self._base_items = 0
        """Source items the checkpoint resumed from covers."""
        self._writes: list[Any] = []
        self._saving: Handle[None] | None = None
        self._waiting: tuple[Checkpoint, list[Any]] | None = None
        """The newest checkpoint that came while a save was under way, with its writes."""
        self._behind = 0
        """Barriers that came out while the save under way was under way."""
        self._made: Checkpoint | None = None
        """The last checkpoint made: the next one follows it (`Checkpoint._following`)."""
        self._failed = False
        self._clock: Clock | None = None
        self.resumed_from: Checkpoint | None = None
        """The checkpoint this run resumed from."""
        self.last_saved: Checkpoint | None = None
        """The last checkpoint this run saved."""
        self.before_save: Callable[[], Awaitable[None]] | None = None
        """Awaited when a barrier comes out, before its checkpoint is made: for a
        consumer that hands the outputs on (`Partitioned`), until they were taken."""
        self.on_saved: Callable[[Checkpoint], Awaitable[None]] | None = None
        """Awaited with each checkpoint once it is saved and its sinks committed."""
        self._suspended: int | None = None
        """The sequence of the barrier a suspended source sent last (see `Suspending`)."""
        self._source = self._prepare_source(source, _SOURCE)

    @property
    def codec(self) -> Encoder:
        """The run's codec: snapshots, writes and dead letters go through it."""
        return self._codec

    # -- preparing the pipeline ------------------------------------------

    def _slot(self, key: str, label: str, restored: dict[str, Any] | None = None) -> Slot:
        restored = self._restored if restored is None else restored
        return Slot(key, label, restored, self._codec, self._bind)

    def _bind(self, stage: Stage[Any, Any], slot: Slot) -> Stage[Any, Any]:
        return Stage(self._steps(stage.steps, f"{slot.key}/", slot.snapshots))

    def prepare(self, steps: tuple[Step, ...]) -> tuple[Step, ...]:
        """The pipeline's steps as this run runs them (keys ``"0"``, ``"1"``, ...).

        Raises:
            ValueError: A step cannot take part in a checkpoint.
        """
        return self._steps(steps, "", self._restored)

    def _steps(
        self, steps: tuple[Step, ...], prefix: str, restored: dict[str, Any]
    ) -> tuple[Step, ...]:
        return tuple(self._step(step, f"{prefix}{n}", restored) for n, step in enumerate(steps))

    def _step(self, step: Step, key: str, restored: dict[str, Any]) -> Step:
        if key not in self._bound:  # a step bound again (group_by's keys) is one step
            self._bound.add(key)
            self._shape.append(f"{key} {step.label}")
        if isinstance(step, Transform):
            for state_key in step.keys:
                self._key_codec(state_key, key, step.label)
        if isinstance(step, ItemOp):
            per_run = step.per_run
            if isinstance(per_run, GuardedItem):
                guard = dataclasses.replace(
                    per_run.guard, staging=self._slot(key, step.label, restored)
                )
                per_run = GuardedItem(guard, per_run.base)
            return dataclasses.replace(step, barriers=True, per_run=per_run)
        run = step.run
        if isinstance(run, GuardedTransform):
            guard = dataclasses.replace(run.guard, staging=self._slot(key, step.label, restored))
            return dataclasses.replace(step, run=GuardedTransform(guard, run.base))
        if step.restorable is not None:
            return dataclasses.replace(
                step, run=step.restorable(self._slot(key, step.label, restored))
            )
        if step.barriers:
            return step
        raise ValueError(
            f"checkpoint=: step {key}, {step.label}, does not say what state it keeps, so a "
            "resumed run could not restore it: declare a custom stage @stage(stateless=True) "
            "if it keeps nothing between items, or @stage(state=...) to have its state saved"
        )

    def _key_codec(self, state_key: Key[Any], step: str, label: str) -> None:
        codec = state_key.codec
        assert codec is not None
        known = self._keyed.setdefault(state_key.qualified, codec)
        if known is not codec:
            raise ValueError(
                f"checkpoint=: step {step}, {label}, sets state key {state_key.qualified!r} "
                "with another codec than an earlier step: give both the same Key"
            )

    def _prepare_source(self, source: object, key: str, alone: bool = True) -> Any:
        # ``alone``: the source is the run's only one (not an input of a combination).
        if isinstance(source, Flow):
            flow: Flow[Any] = source  # pyright: ignore[reportUnknownVariableType] - any item type
            inner, stage = flow.source, flow.stage
            if not flow._take_over():  # pyright: ignore[reportPrivateUsage]
                raise ValueError(f"checkpoint=: the source {flow!r} was already iterated")
            prepared = self._prepare_source(inner, key, alone)
            if not stage.steps:
                return prepared
            return Flow(prepared, self._bind(stage, self._slot(f"{key}/stage", stage.label)))
        if isinstance(source, Combined):
            combined: Combined[Any] = source  # pyright: ignore[reportUnknownVariableType] - any item type
            self._shape.append(f"{key} {combined.label}")
            inputs = [
                self._prepare_source(each, f"{key}/{n}", alone=False)
                for n, each in enumerate(combined.sources)
            ]
            return combined.combine(inputs, self._slot(key, combined.label))
        leaf = as_resumable(source)
        if leaf is None:
            raise TypeError(
                "checkpoint= needs a resumable source: a sequence, lines(path), "
                "resumable(items), your own Resumable (position() and seek()), or flows of "
                f"them combined with merge, zip_, concat or broadcast; got {type(source).__name__}"
            )
        self._shape.append(f"{key} source")
        entry = _Leaf(key, leaf)
        self._leaves.append(entry)
        sequence = _sequence_source(leaf)
        if alone and sequence is not None and self._every_seconds is None:
            return self._inject_sync(entry, sequence)
        return self._inject(entry)

    def source(self) -> Any:
        """The source the run iterates: barriers go in as checkpoints are due."""
        return self._source

    @property
    def shape(self) -> tuple[str, ...]:
        """The pipeline's shape: one line per step and source, keys and labels."""
        return tuple(self._shape)

    # -- start -----------------------------------------------------------

    async def start(self, clock: Clock) -> None:
        """Read the last checkpoint of this name; seek the sources; restore the slots."""
        checkpoint = await self.store.load(self.name)
        self._clock = clock
        self._due = clock.now() + (self._every_seconds or 0.0)
        if checkpoint is not None:
            checkpoint = self._accept(checkpoint)
        if checkpoint is None:
            for leaf in self._leaves:
                self._positions[leaf.key] = leaf.source.position()
            return
        self.resumed_from = checkpoint
        self._sequence = checkpoint.sequence
        self._base_items = checkpoint.items
        self._restored.update(checkpoint.state)
        if checkpoint.complete:
            return
        positions = self._split_position(checkpoint)
        for leaf in self._leaves:
            position = positions[leaf.key]
            leaf.source.seek(position)
            self._positions[leaf.key] = position

    def _accept(self, checkpoint: Checkpoint) -> Checkpoint | None:
        if checkpoint.version != self.version:
            raise CheckpointError(
                f"checkpoint {self.name!r} was saved by version {checkpoint.version!r} of the "
                f"pipeline and this run is version {self.version!r}: delete it "
                "(store.delete(name)) or run under another name",
                name=self.name,
            )
        shape = self.shape
        if checkpoint.shape == shape:
            return checkpoint
        if self._migrate is not None:
            migrated = self._migrate(checkpoint)
            if migrated is not None and migrated.shape == shape:
                return migrated
        saved = checkpoint.shape
        n = next(
            (k for k, (a, b) in enumerate(zip(saved, shape, strict=False)) if a != b),
            min(len(saved), len(shape)),
        )
        was = saved[n] if n < len(saved) else "(nothing)"
        now = shape[n] if n < len(shape) else "(nothing)"
        raise CheckpointError(
            f"checkpoint {self.name!r} was saved by a pipeline of another shape: it has "
            f"{was!r} where this one has {now!r}. Start over (store.delete(name), or another "
            "name), or pass migrate= to Run to rewrite the checkpoint for the new shape "
            "(see 'Changing a pipeline' in docs/persistence.md)",
            name=self.name,
        )

    def _split_position(self, checkpoint: Checkpoint) -> dict[str, Any]:
        position = checkpoint.position
        if len(self._leaves) == 1:
            return {self._leaves[0].key: position}
        if not isinstance(position, dict) or set(position) != {  # pyright: ignore[reportUnknownArgumentType]
            leaf.key for leaf in self._leaves
        }:
            raise CheckpointError(
                f"checkpoint {self.name!r} does not hold the position of every source",
                name=self.name,
            )
        return dict(position)  # pyright: ignore[reportUnknownArgumentType]

    # -- barriers in -----------------------------------------------------

    def _now(self) -> float:
        assert self._clock is not None  # set by start, before the first pull
        return self._clock.now()

    def _trigger(self) -> None:
        self._sequence += 1
        barrier = Control("barrier", self._sequence)
        barrier.positions = dict(self._positions)
        self._barrier = barrier
        if self._every_items is not None:
            self._next_at = self._pulled + self._every_items
        if self._every_seconds is not None:
            self._due = self._now() + self._every_seconds

    async def _inject(self, leaf: _Leaf) -> AsyncIterator[Any]:
        """A source's items; before its next item, the barrier of a checkpoint due.

        One injector per source. Every injector sends the same barrier (the
        newest), each recording its own position in it.

        The one source of a run that takes a checkpoint every n items, when
        it is a sequence, is read a batch at a time instead (the same items
        and barriers in the same order): a batch ends where the next barrier
        is due, or after `COOPERATE_EVERY` items, and then other tasks may
        run. A batch is counted once the item after it is asked for (only
        then can a checkpoint be due); if the consumer stops within a batch,
        the items it never got are put back.
        """
        source = leaf.source
        key = leaf.key
        sent = self._sequence
        every_items = self._every_items
        every_seconds = self._every_seconds
        batched = _sequence_source(source) if every_seconds is None else None
        if len(self._leaves) != 1:
            batched = None
        pending: Iterator[Any] = iter(())
        size = 0  # of the batch being handed out
        try:
            while True:
                barrier = self._barrier
                if barrier is not None and barrier.sequence > sent:
                    sent = barrier.sequence
                    barrier.positions[key] = self._positions[key] = source.position()
                    barrier.counts[key] = leaf.count
                    yield barrier
                if batched is not None:
                    batch = self._take(leaf, batched)
                    if batch is None:
                        return
                    size = len(batch)
                    pending = iter(batch)
                    for item in pending:
                        yield item
                    size = 0
                    self._pulled_batch(leaf, len(batch))
                    if len(batch) == COOPERATE_EVERY:
                        await cooperate()
                    continue
                try:
                    item = await source.__anext__()
                except StopAsyncIteration:
                    leaf.ended = True
                    self._positions[key] = source.position()
                    if isinstance(source, Suspending) and source.suspended():
                        # Not an end: a last barrier, and the run stops once it is saved.
                        self._trigger()
                        barrier = self._barrier
                        assert barrier is not None
                        barrier.positions[key] = self._positions[key]
                        barrier.counts[key] = leaf.count
                        self._suspended = barrier.sequence
                        yield barrier
                    return
                self._pulled += 1
                leaf.count += 1
                if (every_items is not None and self._pulled >= self._next_at) or (
                    every_seconds is not None and self._now() >= self._due
                ):
                    self._trigger()
                yield item
        finally:
            if batched is not None:
                self._stopped_within(leaf, batched, size, pending)
            await aclose(source)

    def _inject_sync(self, leaf: _Leaf, source: SequenceSource[Any]) -> Iterator[Any]:
        """`_inject` for the run's one source, a sequence, when barriers come every n items.

        A plain iterator (the pipeline's first fused segment then reads it in
        a plain loop, and lets other tasks run every `COOPERATE_EVERY` items),
        with the same items and barriers in the same order. It takes the items
        from the sequence a batch at a time, each batch ending where the next
        barrier is due, and hands them out at C speed (`Batched`); a batch is
        counted once the item after it is asked for, and if the consumer stops
        within a batch, the items it never got are put back.
        """
        made = self._batches(leaf, source)
        return Batched(made)

    def _batches(self, leaf: _Leaf, source: SequenceSource[Any]) -> Generator[Iterable[Any]]:
        key = leaf.key
        sent = self._sequence
        pending: Iterator[Any] = iter(())
        size = 0
        try:
            while True:
                barrier = self._barrier
                if barrier is not None and barrier.sequence > sent:
                    sent = barrier.sequence
                    barrier.positions[key] = self._positions[key] = source.position()
                    barrier.counts[key] = leaf.count
                    yield (barrier,)
                batch = self._take(leaf, source)
                if batch is None:
                    return
                size = len(batch)
                pending = iter(batch)
                yield pending
                size = 0
                self._pulled_batch(leaf, len(batch))
        finally:
            self._stopped_within(leaf, source, size, pending)
            source.stop()

    def _take(self, leaf: _Leaf, source: SequenceSource[Any]) -> list[Any] | None:
        """The next batch of a sequence source, ending where the next barrier is due.

        None at the source's end.
        """
        size = COOPERATE_EVERY
        if self._every_items is not None:
            size = max(1, min(size, self._next_at - self._pulled))
        batch = source.take(size)
        if not batch:
            leaf.ended = True
            self._positions[leaf.key] = source.position()
            return None
        return batch

    def _pulled_batch(self, leaf: _Leaf, size: int) -> None:
        """Count a batch handed out in full; a checkpoint may be due."""
        self._pulled += size
        leaf.count += size
        if self._every_items is not None and self._pulled >= self._next_at:
            self._trigger()

    def _stopped_within(
        self, leaf: _Leaf, source: SequenceSource[Any], size: int, pending: Iterator[Any]
    ) -> None:
        """The consumer stopped within a batch of ``size`` (0: none): count what it got.

        The items it never got go back to the source.
        """
        if not size:
            return
        unsent = operator.length_hint(pending)
        if unsent:
            source.put_back(unsent)
            self._pulled += size - unsent
            leaf.count += size - unsent
        else:
            self._pulled_batch(leaf, size)

    # -- results out -----------------------------------------------------

    async def outputs(self, results: AsyncIterator[Any]) -> AsyncIterator[Any]:
        """The pipeline's items, without the control elements; saves checkpoints.

        When a barrier comes out, the consumer has come back for the item
        after the last one before it: that one is handled too.
        """
        if await self.control(None):
            await aclose(results)
            return
        try:
            async for item in results:
                if type(item) is not CONTROL:
                    yield item
                elif await self.control(item):
                    return  # closes the pipeline: nothing after the barrier is flushed
        finally:
            await aclose(results)

    async def control(self, item: Control | None) -> bool:
        """Take a control element out of the pipeline; True: the run ends here.

        A write is kept for the next checkpoint; a barrier's checkpoint is
        saved (see `_checkpoint`), and the last barrier of a suspended
        source ends the run once it is saved. With None (before the first
        pull): True when the run resumed from a complete checkpoint, so that
        nothing is left to do.
        """
        if item is None:
            resumed = self.resumed_from
            return resumed is not None and resumed.complete
        if item.kind == "write":
            self._writes.append(item.write)
            return False
        await self._checkpoint(item)
        if item.sequence == self._suspended:
            await self._wait_for_save()
            return True
        return False

    async def _checkpoint(self, barrier: Control) -> None:
        """Save the checkpoint of a barrier that came out, or have it wait for the save under way.

        At most one save is under way. A checkpoint that comes meanwhile
        waits, and is saved as soon as that save ends; a newer one replaces
        it, taking on its writes. So a store slower than the pipeline saves
        fewer checkpoints, each covering more, and the pipeline waits only
        when `SAVE_LAG` barriers came out during one save.
        """
        if self.before_save is not None:
            await self.before_save()
        positions = barrier.positions
        position = positions[self._leaves[0].key] if len(self._leaves) == 1 else dict(positions)
        counts = barrier.counts
        items = sum(counts.get(leaf.key, leaf.count) for leaf in self._leaves)
        checkpoint = self._record(
            position=position, state=barrier.snapshots, sequence=barrier.sequence, items=items
        )
        writes, self._writes = self._writes, []
        saving = self._saving
        if saving is not None and not saving.done():
            waiting = self._waiting
            if waiting is not None:
                writes = waiting[1] + writes
            self._waiting = (checkpoint, writes)
            self._behind += 1
            if self._behind > SAVE_LAG:
                await self._wait_for_save()  # until this one is saved too
            return
        await self._wait_for_save()  # raises what a save that ended raised
        self._behind = 0
        self._saving = start_awaitable(self._saves(checkpoint, writes))
        # Let the save start: a store that waits for nothing (a MemoryStore)
        # finishes it here, and its checkpoints never wait.
        await cooperate()

    async def _saves(self, checkpoint: Checkpoint, writes: list[Any]) -> None:
        """Save ``checkpoint``, then the checkpoint that came meanwhile, if any, and so on."""
        while True:
            await self._save(checkpoint, writes)
            waiting, self._waiting = self._waiting, None
            if waiting is None:
                return
            checkpoint, writes = waiting
            self._behind = 0

    def _record(
        self, *, position: Any, state: dict[str, Any], sequence: int, items: int
    ) -> Checkpoint:
        made = self._made
        if made is not None:
            made = made._following(  # pyright: ignore[reportPrivateUsage] - the run's own hot path
                position=position, state=state, items=self._base_items + items, sequence=sequence
            )
        else:
            made = Checkpoint(
                self.name,
                position=position,
                state=state,
                items=self._base_items + items,
                version=self.version,
                sequence=sequence,
                shape=self.shape,
            )
        self._made = made
        return made

    async def _save(self, checkpoint: Checkpoint, writes: list[Any]) -> None:
        """Save ``checkpoint`` with ``writes`` in one transaction, then commit the sinks."""
        last = self.last_saved or self.resumed_from
        rows: list[DeadLetterRow | TableRows] = []
        sinks: list[SinkWrite] = []
        for write in writes:
            if isinstance(write, DeadLetterWrite):
                rows.append(DeadLetterRow(write.stage, write.index, write.record))
            else:
                sinks.append(write)
                if isinstance(write.prepared, TableRows):
                    if write.sink.store is not self.store:
                        raise ValueError(
                            f"{write.sink.label} writes into {write.sink.store!r}, but the run "
                            f"keeps its checkpoints in {self.store!r}: a table sink commits in "
                            "the checkpoint's own transaction, so both must be the same store"
                        )
                    rows.append(write.prepared)
        self._failed = True
        await self.store.save(checkpoint, writes=rows, expect=0 if last is None else last.sequence)
        self._failed = False
        self.last_saved = checkpoint
        for write in sinks:
            await write.sink.commit(write.prepared)
        if self.on_saved is not None:
            await self.on_saved(checkpoint)

    def _end_position(self) -> Any:
        positions = self._positions
        if len(self._leaves) == 1:
            return positions[self._leaves[0].key]
        return dict(positions)

    async def _wait_for_save(self) -> None:
        saving, self._saving = self._saving, None
        if saving is None:
            return
        if saving.done():  # (the common case: a save ends within a checkpoint interval)
            saving.result()  # raises what the save raised
            return
        # Shielded: a save under way completes even if the run is cancelled
        # meanwhile; its error fails the run.
        await shielded(saving)

    # -- the end -----------------------------------------------------------

    async def finish(self, succeeded: bool) -> None:
        """Wait for the save under way; after a success, save the run as complete.

        Raises what a save raised (the run records it if it failed anyway).
        """
        if self._clock is None:
            return  # never started
        await self._wait_for_save()
        if not succeeded or self._failed or self._suspended is not None:
            return
        resumed = self.resumed_from
        if resumed is not None and resumed.complete:
            return
        checkpoint = self._record(
            position=self._end_position(),
            state={},
            sequence=self._sequence + 1,
            items=sum(leaf.count for leaf in self._leaves),
        )
        checkpoint = checkpoint.replace(complete=True)
        writes, self._writes = self._writes, []
        self._sequence += 1
        await shielded(start_awaitable(self._save(checkpoint, writes)))
