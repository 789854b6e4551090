"""Checkpoints of a run: how far the source is finished, saved with the state.

A `Run` given ``checkpoint=store`` tags every source item with its ordinal
(1, 2, ...) in a private key of its state, and records the source's
position after each pull. Every step of the pipeline passes the state on
(built-in steps are envelope-transparent; `Transform.lineage` says how), and
keeps the order of the items: so when the consumer receives an output
tagged ``t``, every source item before ``t`` is finished, its outputs
yielded and handled. That is the low-water mark the run checkpoints: the
source position after item ``t - 1``, with the aggregates of the reduction
points, in one `Checkpoint`. A run restarted under the same name seeks its
source there: at-least-once, and the items processed twice after a crash
are at most those finished since the last checkpoint.

The tag never shows: plain items are put into envelopes on the way in and
taken out on the way out, and the key is removed from the state of the
envelopes the pipeline yields. `envelop()` and `unwrap()` steps are adapted
so that the items they see are the ones they would see without the tag.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import json
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

from ._core import ItemOp, Step, Transform, aclose, is_envelope
from ._failures import GuardedTransform
from ._records import EMPTY, Envelope, Key, Scope
from ._resumable import Resumable, resumable
from ._runtime import shielded, start_awaitable
from ._state import ReduceRun
from ._store import Checkpoint, CheckpointError, Store

if TYPE_CHECKING:
    from ._runtime import Clock

SOURCE: Final = Key[int]("source", scope=Scope.custom("streamkit"))
"""The private state key holding an item's source ordinal inside a checkpointed run."""

_SOURCE_NAME: Final = SOURCE.qualified
_TAG_SIZE: Final = 64
"""An upper bound of the tag's size as JSON, counted against a state's byte limit."""

DEFAULT_EVERY: Final = 100
"""Source items finished between two checkpoints, by default."""


# --------------------------------------------------------------------------- arguments


def check_store(store: object) -> Store:
    if not isinstance(store, Store):
        raise TypeError(
            "checkpoint must be a Store (SQLiteStore, MemoryStore or your own) or None, "
            f"got {type(store).__name__}"
        )
    return store


def check_every(every: object) -> tuple[int | None, float | None]:
    """``every`` as (items, seconds): an int of items or a timedelta."""
    if isinstance(every, dt.timedelta):
        seconds = every.total_seconds()
        if seconds <= 0:
            raise ValueError(f"every must be a positive duration, got {every!r}")
        return None, seconds
    if type(every) is not int:
        raise TypeError(
            "every must be an int (source items) or a datetime.timedelta, "
            f"got {type(every).__name__}: {every!r}"
        )
    if every < 1:
        raise ValueError(f"every must be >= 1 item, got {every}")
    return every, None


def check_source(source: Any) -> Resumable[Any]:
    """The resumable source of a checkpointed run (a sequence is made resumable)."""
    if isinstance(source, Resumable):
        return source  # pyright: ignore[reportUnknownVariableType] - any item type
    if isinstance(source, Sequence) and not isinstance(source, str | bytes):
        return resumable(source)  # pyright: ignore[reportUnknownVariableType, reportUnknownArgumentType] - any item type
    raise TypeError(
        "checkpoint= needs a resumable source: a sequence, lines(path), resumable(items) "
        f"or your own Resumable (position() and seek()), got {type(source).__name__}"
    )


def _unordered(step: Step) -> str | None:
    """Why a step breaks the checkpoint's low-water mark (None: it does not)."""
    if isinstance(step, ItemOp):
        return None
    run = step.run
    item = run.base if isinstance(run, GuardedTransform) else step.item
    if item is not None:
        if item.ordered:
            return None
        return (
            f"{step.label} yields its results out of order (ordered=False): drop that "
            "option (the order is kept, at the cost of waiting for slow items, bounded "
            "by window=)"
        )
    if step.lineage in ("kept", "envelops", "unwraps", "to_envelope"):
        return None
    if step.lineage == "reordered":
        return f"{step.label} changes the order of the items"
    return (
        f"{step.label} is not known to pass each item's state on, in order (a stage "
        "written with @stage, fork or branch)"
    )


def check_pipeline(steps: tuple[Step, ...]) -> None:
    """Raise `ValueError` when the run could not tell which source items are finished."""
    for step in steps:
        reason = _unordered(step)
        if reason is not None:
            raise ValueError(
                "checkpoint= needs a pipeline whose steps keep the items in order and "
                f"pass their state on; {reason}"
            )


# --------------------------------------------------------------------------- shapes


@dataclasses.dataclass(slots=True)
class _Shapes:
    """Whether the source yields plain items; known from its first item."""

    source_plain: bool | None = None

    def pick(self, pair: tuple[bool, bool]) -> bool:
        """The entry of ``pair`` for this source: (plain source, enveloped source)."""
        return pair[0 if self.source_plain else 1]


def _envelope_after(step: Step, enveloped: bool) -> bool:
    """Whether the user's items are envelopes after ``step``, given before."""
    if isinstance(step, ItemOp):
        return enveloped
    lineage = step.lineage
    if lineage in ("envelops", "to_envelope"):
        return True
    if lineage == "unwraps":
        return False
    return enveloped


@dataclasses.dataclass(frozen=True, slots=True)
class _EnvelopAdapter:
    """An `envelop()` step in a tagged run: it sees the plain items it expects.

    The tag is taken off before the step and put back on its output (the
    step is one item out per item in, in order).
    """

    run: Callable[[AsyncIterator[Any]], AsyncIterator[Any]]
    shapes: _Shapes
    plain_before: tuple[bool, bool]
    """Whether the user's items are plain before the step: (plain source, enveloped source)."""

    def __call__(self, upstream: AsyncIterator[Any]) -> AsyncIterator[Any]:
        return _retagged(upstream, self.run, self.shapes, self.plain_before)


async def _retagged(
    upstream: AsyncIterator[Any],
    run: Callable[[AsyncIterator[Any]], AsyncIterator[Any]],
    shapes: _Shapes,
    plain_before: tuple[bool, bool],
) -> AsyncIterator[Any]:
    tags: collections.deque[Any] = collections.deque()

    async def values() -> AsyncIterator[Any]:
        plain: bool | None = None
        try:
            async for envelope in upstream:
                if plain is None:  # the source's first item has been pulled
                    plain = shapes.pick(plain_before)
                state = envelope.state
                tags.append(state.get(SOURCE))
                if plain:
                    yield envelope.value
                else:  # the step raises, as it would without the tag
                    yield Envelope(envelope.value, state.delete(SOURCE))
        finally:
            await aclose(upstream)

    results = run(values())
    try:
        async for result in results:
            tag = tags.popleft()
            yield result if tag is None else result.with_state(SOURCE, tag)
    finally:
        await aclose(results)


@dataclasses.dataclass(frozen=True, slots=True)
class _UnwrapAdapter:
    """An `unwrap()` step in a tagged run: it drops the state but the tag."""

    shapes: _Shapes
    label: str
    enveloped_before: tuple[bool, bool]

    def __call__(self, upstream: AsyncIterator[Any]) -> AsyncIterator[Any]:
        return _unwrapped(upstream, self.shapes, self.enveloped_before, self.label)


async def _unwrapped(
    upstream: AsyncIterator[Any],
    shapes: _Shapes,
    enveloped_before: tuple[bool, bool],
    label: str,
) -> AsyncIterator[Any]:
    enveloped: bool | None = None
    try:
        async for envelope in upstream:
            if enveloped is None:
                enveloped = shapes.pick(enveloped_before)
            if not enveloped:
                error = TypeError(
                    f"unwrap() needs Envelope items, got {type(envelope.value).__name__}: "
                    f"{envelope.value!r}"
                )
                error.add_note(f"streamkit: raised by {label}")
                raise error
            tag = envelope.state.get(SOURCE)
            yield Envelope(envelope.value, EMPTY if tag is None else EMPTY.set(SOURCE, tag))
    finally:
        await aclose(upstream)


# --------------------------------------------------------------------------- the tracker


class Tracker:
    """One checkpointed run's bookkeeping: tags in, low-water mark out, saves.

    Args:
        store: Where checkpoints go.
        name: The run's name (the checkpoint's key in the store).
        source: The resumable source.
        every: ``(items, seconds)`` from `check_every`.
        version: The pipeline's version, saved with each checkpoint.
    """

    __slots__ = (
        "aggregates",
        "base_items",
        "clock",
        "every_items",
        "every_seconds",
        "exhausted",
        "failed",
        "first_ordinal",
        "last_saved",
        "last_tag",
        "name",
        "output_enveloped",
        "positions",
        "pulled",
        "reduction_keys",
        "restored",
        "resumed_from",
        "safe",
        "saved",
        "saved_at",
        "saves",
        "shapes",
        "source",
        "start_position",
        "store",
        "version",
    )

    def __init__(
        self,
        store: Store,
        name: str,
        source: Resumable[Any],
        every: tuple[int | None, float | None],
        version: str,
    ) -> None:
        self.store = store
        self.name = name
        self.source = source
        self.every_items, self.every_seconds = every
        self.version = version
        self.shapes = _Shapes()
        self.output_enveloped: tuple[bool, bool] = (False, True)
        self.reduction_keys: list[str] = []
        self.restored: Mapping[str, Any] = {}
        self.resumed_from: Checkpoint | None = None
        self.last_saved: Checkpoint | None = None
        self.base_items = 0
        self.pulled = 0
        self.safe = 0
        self.saved = 0
        self.saves = 0
        self.last_tag = 0
        self.exhausted = False
        self.failed = False
        """Whether a save failed (or was interrupted): no more are attempted."""
        self.positions: collections.deque[Any] = collections.deque()
        self.first_ordinal = 1
        self.start_position: Any = None
        self.aggregates: dict[str, Any] = {}
        self.clock: Clock | None = None
        self.saved_at = 0.0

    # -- the pipeline ------------------------------------------------------

    def adapt(self, steps: tuple[Step, ...]) -> tuple[Step, ...]:
        """The steps as the tagged run runs them (see the module's docstring)."""
        check_pipeline(steps)
        adapted: list[Step] = []
        enveloped = (False, True)  # the user's items, for a plain / an enveloped source
        for step in steps:
            if isinstance(step, Transform):
                run = step.run
                if step.lineage == "envelops":
                    plain = (not enveloped[0], not enveloped[1])
                    step = dataclasses.replace(step, run=_EnvelopAdapter(run, self.shapes, plain))
                elif step.lineage == "unwraps":
                    step = dataclasses.replace(
                        step, run=_UnwrapAdapter(self.shapes, step.label, enveloped)
                    )
                elif isinstance(run, ReduceRun):
                    # A replay would read items without their tags: buffer instead.
                    self.reduction_keys.append(run.key)
                    link = _Reduction(self, run.key)
                    step = dataclasses.replace(
                        step,
                        run=dataclasses.replace(
                            run, replay=None, restore=link.restore, on_aggregate=link.keep
                        ),
                    )
            adapted.append(step)
            enveloped = (_envelope_after(step, enveloped[0]), _envelope_after(step, enveloped[1]))
        self.output_enveloped = enveloped
        return tuple(adapted)

    # -- start -------------------------------------------------------------

    async def load(self, clock: Clock) -> None:
        """Read the last checkpoint of this name and seek the source to it."""
        checkpoint = await self.store.load(self.name)
        self.clock = clock  # loaded: checkpoints may be saved from now on
        self.saved_at = clock.now()
        if checkpoint is None:
            self.start_position = self.source.position()
            return
        if checkpoint.version != self.version:
            raise CheckpointError(
                f"checkpoint {self.name!r} was saved by version {checkpoint.version!r} of the "
                f"pipeline and this run is version {self.version!r}: delete it "
                "(store.delete(name)) or run under another name",
                name=self.name,
            )
        self.source.seek(checkpoint.position)
        self.clock = clock
        self.resumed_from = checkpoint
        self.start_position = checkpoint.position
        self.base_items = checkpoint.items
        self.restored = checkpoint.state

    # -- items in ----------------------------------------------------------

    async def tagged(self, pull: AsyncIterator[Any]) -> AsyncIterator[Any]:
        """The source's items, each tagged with its ordinal; positions recorded."""
        position = self.source.position
        positions = self.positions
        try:
            try:
                first = await pull.__anext__()
            except StopAsyncIteration:
                self.exhausted = True
                return
            plain = self.shapes.source_plain = not is_envelope(first)
            item = first
            while True:
                ordinal = self.pulled = self.pulled + 1
                positions.append(position())
                if plain:
                    if is_envelope(item):
                        raise TypeError(_MIXED)
                    yield Envelope(item, EMPTY._set(_SOURCE_NAME, ordinal, _TAG_SIZE))  # pyright: ignore[reportPrivateUsage] - the records' fast path
                else:
                    if not is_envelope(item):
                        raise TypeError(_MIXED)
                    yield Envelope(item.value, item.state.set(SOURCE, ordinal))
                try:
                    item = await pull.__anext__()
                except StopAsyncIteration:
                    self.exhausted = True
                    return
        finally:
            await aclose(pull)

    # -- items out ---------------------------------------------------------

    async def outputs(self, results: AsyncIterator[Any]) -> AsyncIterator[Any]:
        """The pipeline's results without their tags; checkpoints when one is due.

        When the consumer comes back for the next result, it is done with
        the one tagged ``t``: every item before ``t`` is finished (their
        outputs all came before ``t``'s last one, in order), while ``t``
        itself may have outputs still to come.
        """
        plain_out: bool | None = None
        try:
            async for result in results:
                if plain_out is None:
                    plain_out = not self.shapes.pick(self.output_enveloped)
                if not is_envelope(result):
                    yield result
                    continue
                state = result.state
                tag = state.get(SOURCE)
                if tag is None:
                    yield result.value if plain_out else result
                    continue
                if plain_out:
                    yield result.value
                else:
                    yield Envelope(result.value, state.delete(SOURCE))
                self.last_tag = tag
                if tag - 1 > self.safe:
                    self.safe = tag - 1
                    if self._due():
                        await self.save()
        finally:
            await aclose(results)

    def _due(self) -> bool:
        if self.every_items is not None:
            return self.safe - self.saved >= self.every_items
        assert self.clock is not None
        assert self.every_seconds is not None
        return self.clock.now() - self.saved_at >= self.every_seconds

    # -- saving ------------------------------------------------------------

    def _position(self, finished: int) -> Any:
        """The source position after the ``finished``-th item of this run."""
        if finished == 0:
            return self.start_position
        positions = self.positions
        while self.first_ordinal < finished:
            positions.popleft()
            self.first_ordinal += 1
        return positions[0]

    def _state(self) -> dict[str, Any]:
        state: dict[str, Any] = {}
        for key, value in self.aggregates.items():
            try:
                json.dumps(value, allow_nan=False)
            except (TypeError, ValueError) as exc:
                raise TypeError(
                    f"checkpoint: the aggregate of reduce_point({key!r}) cannot be saved, "
                    f"checkpoints keep state as JSON: {exc}"
                ) from None
            state[key] = value
        return state

    async def save(self) -> None:
        """Save a checkpoint at the low-water mark."""
        finished = self.safe
        checkpoint = Checkpoint(
            self.name,
            position=self._position(finished),
            state=self._state(),
            items=self.base_items + finished,
            version=self.version,
        )
        await self._write(checkpoint)
        self.saved = finished
        self.saves += 1
        self.last_saved = checkpoint
        if self.clock is not None:
            self.saved_at = self.clock.now()

    async def _write(self, checkpoint: Checkpoint) -> None:
        # Shielded: a save under way completes even if the run is cancelled
        # (again) meanwhile; a store that failed once is not written again.
        self.failed = True
        await shielded(start_awaitable(self.store.save(checkpoint)))
        self.failed = False

    async def save_at_end(self, succeeded: bool) -> None:
        """The last checkpoint: everything, when the run succeeded."""
        if self.failed:
            return
        if succeeded:
            # Every item pulled is done; if the pipeline ended before the source
            # did (take), so is the last output's item.
            self.safe = self.pulled if self.exhausted else max(self.safe, self.last_tag)
        if self.safe > self.saved or (succeeded and self.saves == 0):
            await self.save()


_MIXED: Final = "a checkpointed run's source mixes Envelope and plain items"


@dataclasses.dataclass(frozen=True, slots=True)
class _Reduction:
    """Links one `reduce_point` step of a checkpointed run to its tracker."""

    tracker: Tracker
    key: str

    def restore(self) -> tuple[Any] | None:
        """The aggregate of the checkpoint the run resumed from, if it has one."""
        restored = self.tracker.restored
        return (restored[self.key],) if self.key in restored else None

    def keep(self, aggregate: Any) -> None:
        """Keep the aggregate, to save it with the next checkpoints."""
        self.tracker.aggregates[self.key] = aggregate
