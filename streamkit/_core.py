"""The Stage model: composition, fusion, running, cleanup.

This module knows nothing of any particular operator. It defines

* the two kinds of step a stage is made of: an `ItemOp` (a per-item map,
  filter or tap, which can be fused with its neighbours) and a `Transform`
  (an async-generator function over the whole upstream);
* `Stage`, an immutable sequence of steps that composes with ``|``;
* `Flow`, the async iterator (and async context manager) that running a
  stage returns;
* the fused loop that runs consecutive item operations in one generator
  layer, and the helper that closes iterators deterministically.
"""

from __future__ import annotations

import collections
import functools
import inspect
import itertools
import operator
import time
import types
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
    Iterable,
    Iterator,
)
from dataclasses import dataclass, field
from itertools import islice
from typing import (
    TYPE_CHECKING,
    Any,
    Concatenate,
    Final,
    Generic,
    Literal,
    Never,
    ParamSpec,
    Self,
    TypeAlias,
    TypeGuard,
    TypeVar,
    cast,
    overload,
)

from ._barrier import CONTROL, Control, RunFunction, Slot, Stateful
from ._records import Envelope, Key, new_envelope

if TYPE_CHECKING:
    from collections.abc import Sequence
    from types import TracebackType

T = TypeVar("T")
R = TypeVar("R")
S = TypeVar("S")
A = TypeVar("A")
In = TypeVar("In", contravariant=True)
Out = TypeVar("Out", covariant=True)
T_co = TypeVar("T_co", covariant=True)
P = ParamSpec("P")

Source: TypeAlias = AsyncIterable[T] | Iterable[T]
"""Anything a stage can consume: an async iterable or a plain iterable."""

ItemKind: TypeAlias = Literal["map", "filter", "tap"]

_perf_counter: Final = time.perf_counter


class _Skip:
    """Sentinel type: the item was dropped by a filter inside a fused segment."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<skip>"


SKIP: Final = _Skip()


# --------------------------------------------------------------------------- callables


def is_async_callable(fn: object) -> bool:
    """Tell, without calling it, whether ``fn`` certainly returns an awaitable.

    Sees through `functools.partial` and recognises objects whose ``__call__``
    is a coroutine function. A plain function that *returns* an awaitable
    cannot be recognised here; streamkit decides for those on the first call
    of each run (see `docs/design.md`).
    """
    while isinstance(fn, functools.partial):
        fn = cast("functools.partial[object]", fn).func
    if inspect.iscoroutinefunction(fn):
        return True
    if inspect.isfunction(fn) or inspect.ismethod(fn) or isinstance(fn, type):
        return False
    call = getattr(type(fn), "__call__", None)  # noqa: B004 - the method itself is inspected
    return call is not None and inspect.iscoroutinefunction(call)


def describe(fn: object) -> str:
    """A short, stable name for a callable, used in stage labels and notes."""
    if isinstance(fn, functools.partial):
        inner = describe(cast("functools.partial[object]", fn).func)
        return f"partial({inner})"
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    if isinstance(name, str):
        return name
    return type(fn).__name__


def check_callable(value: object, parameter: str) -> None:
    """Raise `TypeError` naming ``parameter`` unless ``value`` is callable."""
    if not callable(value):
        raise TypeError(f"{parameter} must be callable, got {type(value).__name__}: {value!r}")


def stage_label(name: object, default: str) -> str:
    """The label of an operator's stage: its ``name=`` when given, else ``default``.

    The label names the stage wherever a run shows it: statistics, events,
    error notes and records, the command line's table and the history.

    Raises:
        TypeError: ``name`` is not a string.
        ValueError: ``name`` is empty or spans several lines.
    """
    if name is None:
        return default
    if not isinstance(name, str):
        raise TypeError(f"name must be a string or None, got {type(name).__name__}: {name!r}")
    if not name.strip() or "\n" in name:
        raise ValueError(f"name must be a non-empty, single-line string, got {name!r}")
    return name


def annotate(exc: BaseException, label: str, index: int) -> None:
    """Add the note that names the stage and the item index to ``exc``."""
    exc.add_note(f"streamkit: raised by {label} on item {index} of its input")


# --------------------------------------------------------------------------- closing


async def aclose(iterator: object) -> None:
    """Close an iterator if it can be closed: ``aclose()``, else ``close()``.

    This is the one place that knows how to close what a stage consumes:
    async generators, streamkit flows, aiostream streamers (entered as
    context managers), sync generators.
    """
    close = getattr(iterator, "aclose", None)
    if close is not None:
        await close()
        return
    sync_close = getattr(iterator, "close", None)
    if sync_close is not None:
        sync_close()


async def close_all(iterators: Iterable[object]) -> None:
    """Close every iterator in turn, even if closing one of them fails.

    One failure is re-raised as it is; several are raised together in an
    exception group, so none is lost.
    """
    errors: list[BaseException] = []
    for iterator in iterators:
        try:
            await aclose(iterator)
        except BaseException as exc:
            errors.append(exc)
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise BaseExceptionGroup("closing several iterators failed", errors)


async def _entered(context_iterator: Any) -> AsyncGenerator[Any, None]:
    # Iterators that are also async context managers (aiostream's streamers)
    # must be iterated inside their context.
    async with context_iterator as items:
        async for item in items:
            yield item


COOPERATE_EVERY = 1024
"""Items a loop over in-memory data handles between two yields to the event loop."""


@types.coroutine
def cooperate() -> Generator[None, None, None]:
    """Let other tasks run: one bare yield to the event loop, as ``asyncio.sleep(0)`` does.

    A loop over in-memory data never waits for anything, so without this it
    would hold the event loop until it ends (a timeout could never fire).
    """
    yield


_NOTHING: Any = object()


async def _from_sync(iterator: Iterator[T]) -> AsyncGenerator[T, None]:
    try:
        while True:
            item: Any = _NOTHING
            for item in islice(iterator, COOPERATE_EVERY):
                yield item
            if item is _NOTHING:
                return
            await cooperate()
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()


class Batched(itertools.chain[Any]):
    """A plain iterator of items and control elements, made of batches.

    Each batch a generator makes is either an iterator over items only or a
    tuple of control elements; iterated, the chain hands them all out at C
    speed, with no Python frame per item. A fused segment of a checkpointed
    run reads the batches themselves (`batches`), so that it never looks for
    a control element among the items. Closing it closes the generator.
    """

    batches: Generator[Iterable[Any]]

    def __new__(cls, batches: Generator[Iterable[Any]]) -> Self:
        made = cast("Self", cls.from_iterable(batches))  # an instance of cls, as any chain's
        made.batches = batches
        return made

    def close(self) -> None:
        """Stop: the generator's ``finally`` sees where the batches were left."""
        self.batches.close()


def open_async(source: Source[T]) -> AsyncIterator[T]:
    """Return an async iterator over any source, without starting it.

    A flow is returned as it is: closing it closes its whole chain, and
    ``async for`` over it still runs at its inner generator's speed.
    """
    if isinstance(source, Flow):
        return source
    if hasattr(source, "__aiter__"):
        iterator = cast("AsyncIterable[T]", source).__aiter__()
        if hasattr(type(iterator), "__aenter__"):
            return _entered(iterator)
        return iterator
    if isinstance(source, Iterable):
        return _from_sync(iter(source))
    raise TypeError(
        f"a source must be an iterable or an async iterable, got {type(source).__name__}"
    )


def is_async_iterable(value: object) -> TypeGuard[AsyncIterable[Any]]:
    """True for objects with ``__aiter__``."""
    return hasattr(value, "__aiter__")


def is_stage(value: object) -> TypeGuard[Stage[Any, Any]]:
    """True for stages (of any item types)."""
    return isinstance(value, Stage)


def is_flow(value: object) -> TypeGuard[Flow[Any]]:
    """True for flows (of any item type)."""
    return isinstance(value, Flow)


def is_iterable(value: object) -> bool:
    """True for iterables and async iterables (without narrowing the type)."""
    return hasattr(value, "__aiter__") or isinstance(value, Iterable)


def is_envelope(value: object) -> TypeGuard[Envelope[Any]]:
    """True for envelopes (of any value type)."""
    return isinstance(value, Envelope)


def mixed_items(
    error: BaseException, item: object, enveloped: bool | None, label: str, index: int
) -> BaseException:
    """``error``, or a `TypeError` caused by it when ``item`` is not of the stream's kind.

    A stream carries `Envelope` items throughout, or none: its first item
    decides. Nothing checks the later items on the way (that would cost every
    item a test); an item of the other kind makes a function fail, and this,
    called only then, says why, naming the stage and the item's position.
    """
    if enveloped is None or isinstance(item, Envelope) is enveloped:
        return error
    got = f"a plain {type(item).__name__}" if enveloped else "an Envelope"
    first = "an Envelope" if enveloped else "a plain item"
    mixed = TypeError(
        f"{label} got {got} as item {index} of its input, in a stream whose first item was "
        f"{first}: a stream carries Envelope items throughout or none (put every item into "
        "an envelope with envelop(), or take them all out with unwrap())"
    )
    mixed.__cause__ = error
    return mixed


def item_error(
    error: BaseException, item: object, enveloped: bool | None, label: str, index: int
) -> BaseException:
    """The exception to raise when a stage fails on ``item``: `mixed_items`, with the note."""
    raised = mixed_items(error, item, enveloped, label, index)
    annotate(raised, label, index)
    return raised


def is_sync_source(source: object) -> bool:
    """True for plain iterables that are not also async iterables."""
    return not hasattr(source, "__aiter__") and isinstance(source, Iterable)


# --------------------------------------------------------------------------- steps


@dataclass(frozen=True, slots=True)
class ItemOp:
    """A per-item step: map, filter or tap with one user function.

    Consecutive item operations are fused into one loop when a stage runs.
    """

    kind: ItemKind
    fn: Callable[[Any], Any]
    label: str
    is_async: bool
    """True when the function is known to be async at construction."""
    may_drop: bool = False
    """For a map: the function may return `SKIP` to drop the item (counted as
    dropped, like a filtered item). Plain maps pay nothing for this."""
    per_run: Callable[[], Callable[[Any], Any]] | None = None
    """When set, called once at the start of every run to make the function
    used in that run (so a wrapper can keep per-run counters); ``fn`` is then
    the user's function, kept for labels and introspection."""

    with_state: bool = False
    """The function is called as ``fn(value, state)`` on envelope streams."""
    sees_envelope: bool = False
    """On envelope streams the function receives the whole `Envelope` and
    returns an envelope (used as it is), a plain value (re-wrapped with the
    item's state) or `SKIP`; on plain streams it receives the item. For
    wrappers that record something in each item's state (retries)."""
    watch: SegmentWatch | None = None
    """Set by a `streamkit.Run` on the steps it instruments: the segment that
    runs this step counts its items and reports to the watch."""
    barriers: bool = False
    """Set by a checkpointed run: the segment forwards control elements."""

    def function_for_run(self) -> Callable[[Any], Any]:
        """The function to call in a new run."""
        return self.fn if self.per_run is None else self.per_run()


@dataclass(frozen=True, slots=True)
class ConcurrentOp:
    """The per-item function and options behind an item-level `Transform`.

    ``map_``, ``filter_`` and ``flat_map`` with ``concurrency > 1`` (and
    ``flat_map`` always) run as a `Transform`; this record keeps what they
    apply to each item discoverable, so that wrappers (a retry, say) can
    rebuild the stage around a wrapped function with the same options.
    """

    kind: Literal["map", "filter", "flat_map"]
    fn: Callable[[Any], Any]
    label: str
    is_async: bool
    """True when the function is known to be async at construction."""
    concurrency: int
    """The most calls in flight at once (1: sequential)."""
    ordered: bool
    """Whether results keep the input order."""
    window: int
    """How many finished results may wait for an earlier, slower call."""
    with_state: bool = False
    """The function is called as ``fn(value, state)`` on envelope streams."""
    sees_envelope: bool = False
    """As `ItemOp.sees_envelope`."""


@dataclass(frozen=True, slots=True)
class Transform:
    """A step that consumes the whole upstream: an async-generator function.

    ``run(upstream)`` returns an async iterator over the output. It owns the
    upstream from then on and must close it when it ends, however it ends.
    ``item``, when set, describes the per-item function the transform applies.
    """

    label: str
    run: RunFunction
    item: ConcurrentOp | None = None
    barriers: bool = False
    """Whether ``run`` forwards checkpoint barriers (see `streamkit._barrier`): every
    built-in step does; a custom stage does when declared stateless or stateful."""
    restorable: Callable[[Slot], RunFunction] | None = None
    """For a step that keeps state: its ``run`` in a checkpointed run, given its `Slot`
    (it restores its state from the slot and saves a snapshot in every barrier)."""
    keys: tuple[Key[Any], ...] = ()
    """The state keys with a codec that the step sets: a checkpointed run encodes
    their values in envelopes with that codec."""


Step: TypeAlias = ItemOp | Transform


@dataclass(frozen=True, slots=True)
class Segment:
    """Consecutive item operations, run in a single generator layer."""

    ops: tuple[ItemOp, ...]


PlanPart: TypeAlias = Segment | Transform


def plan(steps: tuple[Step, ...]) -> tuple[PlanPart, ...]:
    """Group consecutive item operations into fused segments."""
    parts: list[PlanPart] = []
    pending: list[ItemOp] = []
    for step in steps:
        if isinstance(step, ItemOp):
            pending.append(step)
            continue
        if pending:
            parts.append(Segment(tuple(pending)))
            pending = []
        parts.append(step)
    if pending:
        parts.append(Segment(tuple(pending)))
    return tuple(parts)


# --------------------------------------------------------------------------- fusion


class SegmentWatch:
    """What a watched fused segment reports to (a `streamkit.Run` sets one on its steps).

    A segment whose operations carry a watch counts the items that enter it
    (`SegmentRun.entered`), times each operation's call on its first item and
    on every ``sample_every``-th item after that (0: only the first), and
    waits in `wait` between two items while ``paused`` is true. This base
    class ignores what it is told; a run subclasses it.
    """

    __slots__ = ("paused", "sample_every")

    def __init__(self, *, sample_every: int = 0) -> None:
        self.paused = False
        """Read after each item: while true, the segment waits in `wait`."""
        self.sample_every = sample_every

    def attach(self, run: SegmentRun) -> None:
        """Called when a segment of watched operations starts (before its first pull)."""

    def record(self, run: SegmentRun, position: int, seconds: float) -> None:
        """One timed call of the operation at ``position`` in ``run.ops``."""

    async def wait(self) -> None:
        """Wait while ``paused`` (called between two items)."""


@dataclass(frozen=True, slots=True)
class Ends:
    """What the last fused segment of a flow calls when it starts and when it ends.

    ``ended`` gets the exception that ended the segment (None when its
    upstream was exhausted; a `BaseException` when it was closed or
    cancelled) and the number of items the segment passed on.

    With ``control`` (for a checkpointed run, whose segments all pass
    control elements), the control elements that reach the end of the flow
    go to it instead of out, and it returns whether the segment ends there
    (its upstream is then closed, flushing nothing); it is also awaited once
    with None after ``started``, before the first pull, where True means
    that there is nothing to do.
    """

    started: Callable[[], Awaitable[None]]
    ended: Callable[[BaseException | None, int], Awaitable[None]]
    control: Callable[[Any], Awaitable[bool]] | None = None


class SegmentRun:
    """One run of a fused segment: call modes and the counters behind notes.

    Each item function is either known to be async at construction or is
    classified by its first result in this run (awaitable or not), and the
    first item tells whether the stream carries envelopes. Until all of that
    is known, items go through `probe`; then `compile` builds a chain of
    closures, synchronous when every function is. Nothing is type-tested per
    item after that.
    """

    __slots__ = ("drops", "entered", "enveloped", "error", "failed", "fns", "modes", "ops", "watch")

    def __init__(self, ops: tuple[ItemOp, ...]) -> None:
        self.ops = ops
        self.fns: list[Callable[..., Any]] = [op.function_for_run() for op in ops]
        self.modes: list[bool | None] = [True if op.is_async else None for op in ops]
        self.drops = [0] * len(ops)
        self.failed: int | None = None
        """The operation that raised (None: none did, or the last one did)."""
        self.error: BaseException | None = None
        """The exception an operation raised out of the segment, if any."""
        self.enveloped: bool | None = None
        self.entered = 0
        """Items that entered the segment (counted only when it is watched)."""
        self.watch = next((op.watch for op in ops if op.watch is not None), None)
        if self.watch is not None:
            self.watch.attach(self)

    def decided(self) -> bool:
        """Whether every function's call mode, and the stream's kind, are known."""
        return self.enveloped is not None and None not in self.modes

    def annotate(self, exc: BaseException, index: int, item: object = SKIP) -> None:
        """Note which operation failed, and on which item of *its* input.

        When ``item`` (the segment's input) is not of the stream's kind, raise
        the `TypeError` that says so instead, from ``exc``.
        """
        k = len(self.ops) - 1 if self.failed is None else self.failed
        self.failed = k
        if item is not SKIP:
            mixed = mixed_items(exc, item, self.enveloped, self.ops[0].label, index)
            if mixed is not exc:
                self.error = mixed
                annotate(mixed, self.ops[0].label, index)
                raise mixed
        self.error = exc
        annotate(exc, self.ops[k].label, index - sum(self.drops[:k]))

    def passed(self, entered: int) -> int:
        """Items passed on, of ``entered`` items that entered the segment."""
        return entered - sum(self.drops) - (self.error is not None)

    def next_sample(self, n: int) -> int:
        """After item ``n`` (1-based) went through `probe`: the next item to probe."""
        if not self.decided():
            return n + 1
        every = 0 if self.watch is None else self.watch.sample_every
        return n + every if every > 0 else -1

    def _timed(self, k: int, start: float) -> None:
        assert self.watch is not None
        self.watch.record(self, k, _perf_counter() - start)

    async def probe(self, item: Any, first: int = 0) -> Any:
        """Run one item through every operation, classifying functions.

        ``first`` > 0: ``item`` is the output of the operations before
        ``first`` (see `prefix`), and runs through the rest.
        """
        if self.enveloped is None:
            self.enveloped = is_envelope(item)
            if not self.enveloped:
                for op in self.ops:
                    if op.with_state and not op.sees_envelope:
                        raise TypeError(
                            f"{op.label} was built with with_state=True, which needs a stream "
                            f"of Envelope items; got {type(item).__name__} (use envelop() first)"
                        )
        if self.enveloped:
            return await self._probe_envelope(item)
        modes = self.modes
        timed = self.watch is not None
        for k, op in enumerate(self.ops):
            if k < first:
                continue
            start = _perf_counter() if timed else 0.0
            try:
                result = self.fns[k](item)
                mode = modes[k]
                if mode is None:
                    mode = modes[k] = inspect.isawaitable(result)
                if mode:
                    result = await result
            except Exception:
                self.failed = k
                raise
            if timed:
                self._timed(k, start)
            if op.kind == "map":
                if result is SKIP:
                    self.drops[k] += 1
                    return SKIP
                if type(result) is CONTROL:
                    self.drops[k] += 1
                    return result
                item = result
            elif op.kind == "filter" and not result:
                self.drops[k] += 1
                return SKIP
        return item

    async def _probe_envelope(self, envelope: Envelope[Any]) -> Any:
        value, state = envelope.value, envelope.state
        modes = self.modes
        timed = self.watch is not None
        for k, op in enumerate(self.ops):
            fn = self.fns[k]
            start = _perf_counter() if timed else 0.0
            try:
                if op.sees_envelope:
                    current = envelope
                    if value is not envelope.value or state is not envelope.state:
                        current = Envelope(value, state)
                    result = fn(current)
                else:
                    result = fn(value, state) if op.with_state else fn(value)
                mode = modes[k]
                if mode is None:
                    mode = modes[k] = inspect.isawaitable(result)
                if mode:
                    result = await result
            except Exception:
                self.failed = k
                raise
            if timed:
                self._timed(k, start)
            if op.kind == "map":
                if result is SKIP:
                    self.drops[k] += 1
                    return SKIP
                if type(result) is CONTROL:
                    self.drops[k] += 1
                    return result
                if (op.with_state or op.sees_envelope) and is_envelope(result):
                    value, state = result.value, result.state
                else:
                    value = result
            elif op.kind == "filter" and not result:
                self.drops[k] += 1
                return SKIP
        if value is envelope.value and state is envelope.state:
            return envelope
        return Envelope(value, state)

    def prefix(self) -> tuple[Callable[[Any], Any] | None, int]:
        """The compiled chain of the operations before the first undecided one, and its length.

        For a stream of plain items whose first operations are known to be
        synchronous: items that a filter among them drops never need `probe`
        (a selective filter before a map whose kind is not known yet).
        ``(None, 0)`` when there is no such chain.
        """
        if self.enveloped is not False:
            return None, 0
        first = 0
        while first < len(self.modes) and self.modes[first] is False:
            first += 1
        if first == 0 or first == len(self.modes):
            return None, 0
        step: Callable[[Any], Any] = _passed_on
        for k in reversed(range(first)):
            step = _sync_link(self, k, step, self.fns[k])
        return step, first

    def rewraps(self) -> bool:
        """Whether the stream carries envelopes and no function sees their state.

        Then the plain chain (`compile_values`) runs on each envelope's value
        and the segment's loop re-wraps the result once, in the loop itself.
        """
        return bool(self.enveloped) and not any(
            op.with_state or op.sees_envelope for op in self.ops
        )

    def compile_values(self) -> tuple[Callable[[Any], Any], bool]:
        """The chain over plain values (for a loop that re-wraps, see `rewraps`)."""
        return self._compile()

    def compile(self) -> tuple[Callable[[Any], Any], bool]:
        """Build the per-item function; the flag says whether it is async."""
        if not self.enveloped:
            return self._compile()
        if not any(op.with_state or op.sees_envelope for op in self.ops):
            # No function sees the state: run the plain chain on the values
            # and re-wrap once per item, not once per operation.
            step, is_async = self._compile()
            return (_async_rewrap(step) if is_async else _sync_rewrap(step)), is_async
        # The adapted functions go into the chain only: `probe` (which times
        # sampled items of a watched segment) still calls the plain ones.
        fns = [
            _envelope_adapter(op, fn, bool(mode))
            for op, fn, mode in zip(self.ops, self.fns, self.modes, strict=True)
        ]
        return self._compile(fns)

    def _pairs(self, k: int) -> bool:
        """Whether operations ``k`` and ``k + 1`` can share a link (`_pair_link`)."""
        return all(
            op.kind == "filter" or (op.kind == "map" and not op.may_drop)
            for op in self.ops[k : k + 2]
        )

    def _compile(
        self, fns: list[Callable[..., Any]] | None = None
    ) -> tuple[Callable[[Any], Any], bool]:
        if fns is None:
            fns = self.fns
        if all(mode is False for mode in self.modes):
            # Two neighbouring plain maps or filters share one link (one call less
            # per item), paired from the first operation on.
            starts: list[int] = []
            k = 0
            while k < len(self.ops):
                starts.append(k)
                k += 2 if k + 1 < len(self.ops) and self._pairs(k) else 1
            step: Callable[[Any], Any] | None = None
            for k in reversed(starts):
                if k + 1 < len(self.ops) and self._pairs(k) and (k + 1) not in starts:
                    step = _pair_link(self, k, step, fns[k], fns[k + 1])
                else:
                    step = _sync_link(self, k, step, fns[k])
            assert step is not None
            return step, False
            # (an empty segment never reaches compile: plan() makes none)
        astep: Callable[[Any], Awaitable[Any]] | None = None
        for k in reversed(range(len(self.ops))):
            astep = _async_link(self, k, astep, fns[k])
        assert astep is not None
        return astep, True


def _passed_on(item: Any) -> Any:
    """The end of a `SegmentRun.prefix` chain (so that its last link marks its failures)."""
    return item


def _sync_rewrap(step: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def rewrap(envelope: Envelope[Any]) -> Any:
        value = envelope.value
        result = step(value)
        if result is SKIP or result is value:
            return result if result is SKIP else envelope
        return new_envelope(result, envelope.state)

    return rewrap


def _async_rewrap(step: Callable[[Any], Awaitable[Any]]) -> Callable[[Any], Awaitable[Any]]:
    async def rewrap(envelope: Envelope[Any]) -> Any:
        value = envelope.value
        result = await step(value)
        if result is SKIP or result is value:
            return result if result is SKIP else envelope
        return new_envelope(result, envelope.state)

    return rewrap


def _envelope_adapter(op: ItemOp, fn: Callable[..., Any], awaits: bool) -> Callable[[Any], Any]:
    """Make ``fn`` work on envelopes, for a segment where some function sees the state.

    Maps re-wrap their result with the item's state (or take the envelope a
    ``with_state`` map returns); filters and taps see the value (and state).
    """
    if op.kind != "map":
        if op.with_state:
            return lambda envelope: fn(envelope.value, envelope.state)
        return lambda envelope: fn(envelope.value)

    takes_state = op.with_state or op.sees_envelope

    def wrap(envelope: Envelope[Any], result: Any) -> Any:
        if result is SKIP or type(result) is CONTROL or (takes_state and is_envelope(result)):
            return result
        return Envelope(result, envelope.state)

    if awaits:

        async def async_map(envelope: Envelope[Any]) -> Any:
            if op.sees_envelope:
                return wrap(envelope, await fn(envelope))
            if op.with_state:
                return wrap(envelope, await fn(envelope.value, envelope.state))
            return wrap(envelope, await fn(envelope.value))

        return async_map

    def sync_map(envelope: Envelope[Any]) -> Any:
        if op.sees_envelope:
            return wrap(envelope, fn(envelope))
        if op.with_state:
            return wrap(envelope, fn(envelope.value, envelope.state))
        return wrap(envelope, fn(envelope.value))

    return sync_map


def _sync_link(
    run: SegmentRun, k: int, nxt: Callable[[Any], Any] | None, fn: Callable[[Any], Any]
) -> Callable[[Any], Any]:
    op = run.ops[k]
    drops = run.drops
    if op.kind == "map" and op.may_drop:

        def dropping_map_link(item: Any) -> Any:
            try:
                result = fn(item)
            except Exception:
                run.failed = k
                raise
            if result is SKIP:
                drops[k] += 1
                return SKIP
            if type(result) is CONTROL:  # dropped, with a write to commit (a dead letter)
                drops[k] += 1
                return result
            return result if nxt is None else nxt(result)

        return dropping_map_link
    if op.kind == "map":
        if nxt is None:
            # The last map needs no wrapper: a failure that no wrapper marks
            # is attributed to the last operation.
            return fn
        then = nxt

        def map_link(item: Any) -> Any:
            try:
                result = fn(item)
            except Exception:
                run.failed = k
                raise
            return then(result)

        return map_link
    if op.kind == "filter":
        if nxt is None:

            def last_filter_link(item: Any) -> Any:
                try:
                    keep = fn(item)
                except Exception:
                    run.failed = k
                    raise
                if keep:
                    return item
                drops[k] += 1
                return SKIP

            return last_filter_link
        then = nxt

        def filter_link(item: Any) -> Any:
            try:
                keep = fn(item)
            except Exception:
                run.failed = k
                raise
            if keep:
                return then(item)
            drops[k] += 1
            return SKIP

        return filter_link
    if nxt is None:

        def last_tap_link(item: Any) -> Any:
            try:
                fn(item)
            except Exception:
                run.failed = k
                raise
            return item

        return last_tap_link
    then = nxt

    def tap_link(item: Any) -> Any:
        try:
            fn(item)
        except Exception:
            run.failed = k
            raise
        return then(item)

    return tap_link


def _pair_link(
    run: SegmentRun,
    k: int,
    nxt: Callable[[Any], Any] | None,
    first: Callable[[Any], Any],
    second: Callable[[Any], Any],
) -> Callable[[Any], Any]:
    """One link for operations ``k`` and ``k + 1``, plain maps or filters.

    It does what two `_sync_link` links do, in one call: each failure is
    marked with its operation (a last map's is left unmarked, as there), and
    the truth of a filter's result is tested outside the marking.
    """
    j = k + 1
    drops = run.drops
    kinds = (run.ops[k].kind, run.ops[j].kind)
    then: Callable[[Any], Any] = _passed_on if nxt is None else nxt
    if kinds == ("map", "map"):
        if nxt is None:

            def map_map_last(item: Any) -> Any:
                try:
                    value = first(item)
                except Exception:
                    run.failed = k
                    raise
                return second(value)

            return map_map_last

        def map_map(item: Any) -> Any:
            try:
                value = first(item)
            except Exception:
                run.failed = k
                raise
            try:
                value = second(value)
            except Exception:
                run.failed = j
                raise
            return then(value)

        return map_map
    if kinds == ("map", "filter"):

        def map_filter(item: Any) -> Any:
            try:
                value = first(item)
            except Exception:
                run.failed = k
                raise
            try:
                keep = second(value)
            except Exception:
                run.failed = j
                raise
            if keep:
                return then(value)
            drops[j] += 1
            return SKIP

        return map_filter
    if kinds == ("filter", "map"):
        if nxt is None:

            def filter_map_last(item: Any) -> Any:
                try:
                    keep = first(item)
                except Exception:
                    run.failed = k
                    raise
                if keep:
                    return second(item)
                drops[k] += 1
                return SKIP

            return filter_map_last

        def filter_map(item: Any) -> Any:
            try:
                keep = first(item)
            except Exception:
                run.failed = k
                raise
            if not keep:
                drops[k] += 1
                return SKIP
            try:
                value = second(item)
            except Exception:
                run.failed = j
                raise
            return then(value)

        return filter_map

    def filter_filter(item: Any) -> Any:
        try:
            keep = first(item)
        except Exception:
            run.failed = k
            raise
        if not keep:
            drops[k] += 1
            return SKIP
        try:
            keep = second(item)
        except Exception:
            run.failed = j
            raise
        if keep:
            return then(item)
        drops[j] += 1
        return SKIP

    return filter_filter


def _async_link(
    run: SegmentRun, k: int, nxt: Callable[[Any], Awaitable[Any]] | None, fn: Callable[..., Any]
) -> Callable[[Any], Awaitable[Any]]:
    op = run.ops[k]
    awaits = bool(run.modes[k])
    kind = op.kind
    drops = run.drops

    async def link(item: Any) -> Any:
        try:
            result = fn(item)
            if awaits:
                result = await result
        except Exception:
            run.failed = k
            raise
        if kind == "map":
            if result is SKIP:
                drops[k] += 1
                return SKIP
            if type(result) is CONTROL:  # dropped, with a write to commit (a dead letter)
                drops[k] += 1
                return result
            item = result
        elif kind == "filter" and not result:
            drops[k] += 1
            return SKIP
        if nxt is None:
            return item
        return await nxt(item)

    return link


def _watched(ops: tuple[ItemOp, ...]) -> bool:
    return any(op.watch is not None for op in ops)


def run_segment(
    ops: tuple[ItemOp, ...], upstream: AsyncIterator[Any], ends: Ends | None = None
) -> AsyncIterator[Any]:
    """Run a fused segment over an async upstream (telling ``ends``, if given)."""
    if ops[0].barriers:
        return _barrier_segment(ops, upstream, ends)
    if _watched(ops):
        return _watched_segment(ops, upstream, ends)
    return _segment(ops, upstream, ends)


async def _segment(
    ops: tuple[ItemOp, ...], upstream: AsyncIterator[Any], ends: Ends | None
) -> AsyncIterator[Any]:
    run = SegmentRun(ops)
    index = -1
    error: BaseException | None = None
    try:
        if ends is not None:
            await ends.started()
        if not run.decided():
            prefix: Callable[[Any], Any] | None = None
            first = 0
            async for item in upstream:
                index += 1
                probed = True
                try:
                    if prefix is None:
                        result = await run.probe(item)
                    else:
                        result = prefix(item)
                        if result is SKIP or type(result) is CONTROL:
                            probed = False
                        else:
                            result = await run.probe(result, first)
                except Exception as exc:
                    run.annotate(exc, index, item)
                    raise
                if result is not SKIP:
                    yield result
                if probed:
                    if run.decided():
                        break
                    prefix, first = run.prefix()
            else:
                return
        if run.rewraps():
            step, is_async = run.compile_values()
            if not is_async:
                # Envelopes through a synchronous chain of the values: one new
                # envelope per item (none when the value is passed on as it is).
                async for item in upstream:
                    index += 1
                    try:
                        value = item.value
                        result = step(value)
                    except Exception as exc:
                        run.annotate(exc, index, item)
                        raise
                    if result is value:
                        yield item
                    elif result is not SKIP:
                        yield new_envelope(result, item.state)
                return
        step, is_async = run.compile()
        if is_async:
            async for item in upstream:
                index += 1
                try:
                    result = await step(item)
                except Exception as exc:
                    run.annotate(exc, index, item)
                    raise
                if result is not SKIP:
                    yield result
        else:
            async for item in upstream:
                index += 1
                try:
                    result = step(item)
                except Exception as exc:
                    run.annotate(exc, index, item)
                    raise
                if result is not SKIP:
                    yield result
    except BaseException as exc:
        error = exc
        raise
    finally:
        try:
            await aclose(upstream)
        finally:
            if ends is not None:
                await ends.ended(error, run.passed(index + 1))


async def _barrier_segment(
    ops: tuple[ItemOp, ...],
    upstream: AsyncIterator[Any] | None,
    ends: Ends | None,
    opener: Callable[[], AsyncIterator[Any]] | None = None,
) -> AsyncIterator[Any]:
    """A segment of a checkpointed run: control elements pass between the items.

    The item functions never see a control element; the operations keep no
    state across items, so a barrier just passes. Watched or not, this one
    loop serves: it probes the first items (and every ``sample_every``-th of
    a watched segment), then runs the compiled chain.

    With ``opener`` instead of ``upstream``, the upstream is opened once
    ``ends.started`` has run (a checkpointed run restores its steps there).
    """
    run: SegmentRun | None = None
    step: Callable[[Any], Any] | None = None
    is_async = False
    n = 0
    sample_at = 1
    error: BaseException | None = None
    control = None if ends is None else ends.control
    try:
        if ends is not None:
            await ends.started()
            if control is not None and await control(None):
                return
        if opener is not None:
            upstream = opener()
        assert upstream is not None  # given, or opened
        run = SegmentRun(ops)
        watch = run.watch
        if watch is not None and watch.paused:
            await watch.wait()
        async for item in upstream:
            if type(item) is CONTROL:
                if control is None:
                    yield item
                elif await control(item):
                    return
                continue
            n += 1
            run.entered = n
            try:
                if n == sample_at:
                    result = await run.probe(item)
                    sample_at = run.next_sample(n)
                    if step is None and run.decided():
                        step, is_async = run.compile()
                elif is_async:
                    result = await step(item)  # type: ignore[misc]  # pyright: ignore[reportOptionalCall] - compiled once decided
                else:
                    result = step(item)  # type: ignore[misc]  # pyright: ignore[reportOptionalCall] - compiled once decided
            except Exception as exc:
                run.annotate(exc, n - 1, item)
                raise
            if result is not SKIP:
                if control is not None and type(result) is CONTROL:
                    await control(result)  # a dead-lettered item's write: never an end
                else:
                    yield result
            if watch is not None and watch.paused:
                await watch.wait()
    except BaseException as exc:
        error = exc
        raise
    finally:
        try:
            if upstream is not None:
                await aclose(upstream)
        finally:
            if ends is not None:
                await ends.ended(error, 0 if run is None else run.passed(n))


async def _barrier_segment_sync(
    ops: tuple[ItemOp, ...], upstream: Batched, ends: Ends | None
) -> AsyncIterator[Any]:
    """`_barrier_segment` over the batches of a `Batched` iterator.

    Its control elements come between the batches, so none is looked for
    among the items. Once the chain is compiled and synchronous, and when no
    step may drop an item (and so hand out a dead letter's write), no result
    is looked at for one either: unwatched, each batch goes through the
    chain in a bare loop, and the items that entered are counted from the
    batch's length; watched, the loop is `_watched_segment_sync`'s (each
    item counted as it enters, every ``sample_every``-th timed, a pause
    held between two items). Other tasks run every `COOPERATE_EVERY` items.
    """
    run: SegmentRun | None = None
    step: Callable[[Any], Any] | None = None
    is_async = False
    n = 0
    sample_at = 1
    error: BaseException | None = None
    control = None if ends is None else ends.control
    # A step that may drop an item may hand out a dead letter's write: such a
    # segment stays in the loop that looks at every result.
    bare = not any(op.may_drop for op in ops)
    try:
        if ends is not None:
            await ends.started()
            if control is not None and await control(None):
                return
        run = SegmentRun(ops)  # after the start: a checkpointed run restores its steps there
        watch = run.watch
        if watch is not None and watch.paused:
            await watch.wait()
        cooperated = 0
        for batch in upstream.batches:
            if type(batch) is tuple:  # control elements
                for element in cast("tuple[Control, ...]", batch):
                    if control is None:
                        yield element
                    elif await control(element):
                        return
                continue
            if bare and step is not None and not is_async:
                if watch is None:
                    size = operator.length_hint(batch)
                    start = n
                    item: Any = None
                    try:
                        for item in batch:
                            result = step(item)
                            if result is not SKIP:
                                yield result
                    except Exception as exc:
                        run.annotate(exc, start + size - operator.length_hint(batch) - 1, item)
                        raise
                    finally:
                        n = start + size - operator.length_hint(batch)
                else:  # the loop of `_watched_segment_sync`
                    for item in batch:
                        n += 1
                        run.entered = n
                        try:
                            if n == sample_at:
                                result = await run.probe(item)
                                sample_at = run.next_sample(n)
                            else:
                                result = step(item)
                        except Exception as exc:
                            run.annotate(exc, n - 1, item)
                            raise
                        if result is not SKIP:
                            yield result
                        if watch.paused:
                            await watch.wait()
            else:
                for item in batch:
                    n += 1
                    run.entered = n
                    try:
                        if n == sample_at:
                            result = await run.probe(item)
                            sample_at = run.next_sample(n)
                            if step is None and run.decided():
                                step, is_async = run.compile()
                        elif is_async:
                            result = await step(item)  # type: ignore[misc]  # pyright: ignore[reportOptionalCall] - compiled once decided
                        else:
                            result = step(item)  # type: ignore[misc]  # pyright: ignore[reportOptionalCall] - compiled once decided
                    except Exception as exc:
                        run.annotate(exc, n - 1, item)
                        raise
                    if result is not SKIP:
                        if control is not None and type(result) is CONTROL:
                            await control(result)  # a dead-lettered item's write: never an end
                        else:
                            yield result
                    if watch is not None and watch.paused:
                        await watch.wait()
            if n - cooperated >= COOPERATE_EVERY:
                cooperated = n
                await cooperate()
    except BaseException as exc:
        error = exc
        raise
    finally:
        try:
            upstream.close()
        finally:
            if ends is not None:
                await ends.ended(error, 0 if run is None else run.passed(n))


def run_segment_sync(
    ops: tuple[ItemOp, ...], upstream: Iterator[Any], ends: Ends | None = None
) -> AsyncIterator[Any]:
    """Run a fused segment straight over a plain iterator (no adapter layer)."""
    if ops[0].barriers:
        if isinstance(upstream, Batched):
            return _barrier_segment_sync(ops, upstream, ends)
        return _barrier_segment(ops, _from_sync(upstream), ends)
    if _watched(ops):
        return _watched_segment_sync(ops, upstream, ends)
    return _segment_sync(ops, upstream, ends)


async def _segment_sync(
    ops: tuple[ItemOp, ...], upstream: Iterator[Any], ends: Ends | None
) -> AsyncIterator[Any]:
    run = SegmentRun(ops)
    index = -1
    error: BaseException | None = None
    try:
        if ends is not None:
            await ends.started()
        if not run.decided():
            for item in upstream:
                index += 1
                if index and not index % COOPERATE_EVERY:
                    await cooperate()
                try:
                    result = await run.probe(item)
                except Exception as exc:
                    run.annotate(exc, index, item)
                    raise
                if result is not SKIP:
                    yield result
                if run.decided():
                    break
            else:
                return
        # In chunks, with a yield to the event loop between two.
        chunk = COOPERATE_EVERY
        if run.rewraps():
            step, is_async = run.compile_values()
            if not is_async:
                # As in `_segment`: one new envelope per item, made here.
                while True:
                    start = index
                    for item in islice(upstream, chunk):
                        index += 1
                        try:
                            value = item.value
                            result = step(value)
                        except Exception as exc:
                            run.annotate(exc, index, item)
                            raise
                        if result is value:
                            yield item
                        elif result is not SKIP:
                            yield new_envelope(result, item.state)
                    if index - start < chunk:
                        return
                    await cooperate()
        step, is_async = run.compile()
        if is_async:
            while True:
                start = index
                for item in islice(upstream, chunk):
                    index += 1
                    try:
                        result = await step(item)
                    except Exception as exc:
                        run.annotate(exc, index, item)
                        raise
                    if result is not SKIP:
                        yield result
                if index - start < chunk:
                    break
                await cooperate()
        else:
            while True:
                start = index
                for item in islice(upstream, chunk):
                    index += 1
                    try:
                        result = step(item)
                    except Exception as exc:
                        run.annotate(exc, index, item)
                        raise
                    if result is not SKIP:
                        yield result
                if index - start < chunk:
                    break
                await cooperate()
    except BaseException as exc:
        error = exc
        raise
    finally:
        try:
            _close_sync(upstream)
        finally:
            if ends is not None:
                await ends.ended(error, run.passed(index + 1))


def _close_sync(iterator: Iterator[Any]) -> None:
    close = getattr(iterator, "close", None)
    if close is not None:
        close()


async def run_segment_to_list(
    ops: tuple[ItemOp, ...],
    upstream: Iterator[Any],
    limit: int | None = None,
    *,
    in_memory: bool = False,
) -> list[Any]:
    """Run a fused segment over a plain iterator as a plain loop, into a list.

    Used by terminal helpers when the whole pipeline is synchronous from end
    to end; observable behaviour (order of calls, notes) is that of the
    generator path. ``in_memory`` says that ``upstream`` iterates over a
    list, tuple or range, whose items can be taken a chunk at a time without
    side effects (see `_builtin_chain`).
    """
    if _watched(ops):
        return await _watched_to_list(ops, upstream, in_memory=in_memory)
    run = SegmentRun(ops)
    out: list[Any] = []
    append = out.append
    index = -1
    try:
        if not run.decided():
            for item in upstream:
                index += 1
                if index and not index % COOPERATE_EVERY:
                    await cooperate()
                try:
                    result = await run.probe(item)
                except Exception as exc:
                    run.annotate(exc, index, item)
                    raise
                if result is not SKIP:
                    append(result)
                if run.decided():
                    break
            else:
                return out
        # In chunks, with a yield to the event loop between two.
        chunk = COOPERATE_EVERY
        if in_memory and _builtin_chain(run):
            await _extend_builtin(run, upstream, index, out)
            return out
        if run.rewraps():
            step, is_async = run.compile_values()
            if not is_async:
                # As in `_segment`: one new envelope per item, made here.
                while True:
                    start = index
                    for item in islice(upstream, chunk):
                        index += 1
                        try:
                            value = item.value
                            result = step(value)
                        except Exception as exc:
                            run.annotate(exc, index, item)
                            raise
                        if result is value:
                            append(item)
                        elif result is not SKIP:
                            append(new_envelope(result, item.state))
                    if index - start < chunk:
                        return out
                    await cooperate()
        step, is_async = run.compile()
        if is_async:
            while True:
                start = index
                for item in islice(upstream, chunk):
                    index += 1
                    try:
                        result = await step(item)
                    except Exception as exc:
                        run.annotate(exc, index, item)
                        raise
                    if result is not SKIP:
                        append(result)
                if index - start < chunk:
                    break
                await cooperate()
        else:
            while True:
                start = index
                for index, item in enumerate(islice(upstream, chunk), start + 1):
                    try:
                        result = step(item)
                    except Exception as exc:
                        run.annotate(exc, index, item)
                        raise
                    if result is not SKIP:
                        append(result)
                if index - start < chunk:
                    break
                await cooperate()
        return out
    finally:
        _close_sync(upstream)


def _builtin_chain(run: SegmentRun) -> bool:
    """Whether a decided segment can run as nested ``map``/``filter`` builtins.

    It can when its items are plain, every operation is a synchronous map
    (that never drops) or filter, at most one is a filter, and every function
    is a plain Python function taking one argument, with a code object of its
    own. Then the builtins call the functions in the generator path's order
    (item by item, each through the whole chain), and a failure can be
    traced to its operation: the frame below the loop's in the traceback is
    the failing function's (a function of one argument cannot fail to bind).
    The drops of the one filter are the items that entered minus those that
    came out.
    """
    if run.enveloped or any(mode is not False for mode in run.modes):
        return False
    if sum(op.kind == "filter" for op in run.ops) > 1:
        return False
    codes: set[types.CodeType] = set()
    for op, fn in zip(run.ops, run.fns, strict=True):
        if op.kind not in ("map", "filter") or op.may_drop or type(fn) is not types.FunctionType:
            return False
        code = fn.__code__
        if code in codes or not _takes_one(fn):
            return False
        codes.add(code)
    return True


def _takes_one(fn: types.FunctionType) -> bool:
    try:
        inspect.signature(fn).bind(None)
    except (TypeError, ValueError):
        return False
    return True


async def _extend_builtin(
    run: SegmentRun, upstream: Iterator[Any], index: int, out: list[Any]
) -> None:
    """Run the rest of ``upstream`` (in memory) through the builtins, onto ``out``.

    See `_builtin_chain`. ``index`` is the index of the last item already
    taken from ``upstream``. A chunk of `COOPERATE_EVERY` items at a time,
    with a yield to the event loop between two.
    """
    builtins = _Builtins(run)
    while True:
        part = list(islice(upstream, COOPERATE_EVERY))
        builtins.extend(part, index, out)
        index += len(part)
        if len(part) < COOPERATE_EVERY:
            return
        await cooperate()


class _Builtins:
    """A decided segment run as nested ``map``/``filter`` builtins, a chunk at a time."""

    __slots__ = ("codes", "dropping", "run")

    def __init__(self, run: SegmentRun) -> None:
        self.run = run
        self.dropping = next((k for k, op in enumerate(run.ops) if op.kind == "filter"), None)
        self.codes = [cast("types.FunctionType", fn).__code__ for fn in run.fns]

    def extend(self, part: list[Any], index: int, out: list[Any]) -> int:
        """Put the results of ``part`` on ``out``; ``index`` is that of the item before it.

        Returns how many items of ``part`` went through: all of them (when
        one fails, the exception propagates instead, and in a watched run
        ``run.entered`` no longer counts the items after it).
        """
        run, dropping = self.run, self.dropping
        items = iter(part)
        chain: Iterator[Any] = items
        for op, fn in zip(run.ops, run.fns, strict=True):
            chain = map(fn, chain) if op.kind == "map" else filter(fn, chain)
        before = len(out)
        try:
            out.extend(chain)
        except Exception as exc:
            # The failing item is the last one taken from the chunk; every
            # item before it that is not in ``out`` was dropped by the filter.
            failed = len(part) - operator.length_hint(items) - 1
            if dropping is not None:
                run.drops[dropping] += failed - (len(out) - before)
            below = exc.__traceback__.tb_next if exc.__traceback__ is not None else None
            if below is not None and below.tb_frame.f_code in self.codes:
                run.failed = self.codes.index(below.tb_frame.f_code)
            if run.watch is not None:
                run.entered += failed + 1 - len(part)
            run.annotate(exc, index + 1 + failed, part[failed])
            raise
        if dropping is not None:
            run.drops[dropping] += len(part) - (len(out) - before)
        return len(part)


# A watched segment (in a `streamkit.Run`) counts the items that enter it in
# `SegmentRun.entered`, sends its first items and then every
# ``watch.sample_every``-th item through `SegmentRun.probe`, which times each
# call, and waits between two items while ``watch.paused``. Plain segments pay
# nothing for this: they run the loops above.


async def _watched_segment(
    ops: tuple[ItemOp, ...], upstream: AsyncIterator[Any], ends: Ends | None
) -> AsyncIterator[Any]:
    run = SegmentRun(ops)
    watch = run.watch
    assert watch is not None
    step: Callable[[Any], Any] | None = None
    is_async = False
    n = 0
    sample_at = 1
    error: BaseException | None = None
    try:
        if ends is not None:
            await ends.started()
        if watch.paused:
            await watch.wait()
        async for item in upstream:
            n += 1
            run.entered = n
            try:
                if n == sample_at:
                    result = await run.probe(item)
                    sample_at = run.next_sample(n)
                    if step is None and run.decided():
                        step, is_async = run.compile()
                elif is_async:
                    result = await step(item)  # type: ignore[misc]  # pyright: ignore[reportOptionalCall] - compiled once decided
                else:
                    result = step(item)  # type: ignore[misc]  # pyright: ignore[reportOptionalCall] - compiled once decided
            except Exception as exc:
                run.annotate(exc, n - 1, item)
                raise
            if result is not SKIP:
                yield result
            if watch.paused:
                await watch.wait()
    except BaseException as exc:
        error = exc
        raise
    finally:
        try:
            await aclose(upstream)
        finally:
            if ends is not None:
                await ends.ended(error, run.passed(n))


async def _watched_segment_sync(
    ops: tuple[ItemOp, ...], upstream: Iterator[Any], ends: Ends | None
) -> AsyncIterator[Any]:
    run = SegmentRun(ops)
    watch = run.watch
    assert watch is not None
    step: Callable[[Any], Any] | None = None
    is_async = False
    n = 0
    sample_at = 1
    error: BaseException | None = None
    try:
        if ends is not None:
            await ends.started()
        if watch.paused:
            await watch.wait()
        # In chunks, with a yield to the event loop between two.
        while True:
            start = n
            for item in islice(upstream, COOPERATE_EVERY):
                n += 1
                run.entered = n
                try:
                    if n == sample_at:
                        result = await run.probe(item)
                        sample_at = run.next_sample(n)
                        if step is None and run.decided():
                            step, is_async = run.compile()
                    elif is_async:
                        result = await step(item)  # type: ignore[misc]  # pyright: ignore[reportOptionalCall] - compiled once decided
                    else:
                        result = step(item)  # type: ignore[misc]  # pyright: ignore[reportOptionalCall] - compiled once decided
                except Exception as exc:
                    run.annotate(exc, n - 1, item)
                    raise
                if result is not SKIP:
                    yield result
                if watch.paused:
                    await watch.wait()
            if n - start < COOPERATE_EVERY:
                break
            await cooperate()
    except BaseException as exc:
        error = exc
        raise
    finally:
        try:
            _close_sync(upstream)
        finally:
            if ends is not None:
                await ends.ended(error, run.passed(n))


async def _watched_to_list(
    ops: tuple[ItemOp, ...], upstream: Iterator[Any], *, in_memory: bool = False
) -> list[Any]:
    run = SegmentRun(ops)
    watch = run.watch
    assert watch is not None
    out: list[Any] = []
    append = out.append
    step: Callable[[Any], Any] | None = None
    is_async = False
    builtins = False
    n = 0
    sample_at = 1
    try:
        if watch.paused:
            await watch.wait()
        # In chunks, with a yield to the event loop between two.
        while not builtins:
            start = n
            for item in islice(upstream, COOPERATE_EVERY):
                n += 1
                run.entered = n
                try:
                    if n == sample_at:
                        result = await run.probe(item)
                        sample_at = run.next_sample(n)
                        if step is None and run.decided():
                            step, is_async = run.compile()
                            builtins = in_memory and _builtin_chain(run)
                    elif is_async:
                        result = await step(item)  # type: ignore[misc]  # pyright: ignore[reportOptionalCall] - compiled once decided
                    else:
                        result = step(item)  # type: ignore[misc]  # pyright: ignore[reportOptionalCall] - compiled once decided
                except Exception as exc:
                    run.annotate(exc, n - 1, item)
                    raise
                if result is not SKIP:
                    append(result)
                if watch.paused:
                    await watch.wait()
                if builtins:
                    break
            else:
                if n - start < COOPERATE_EVERY:
                    return out
                await cooperate()
        # Decided, over a list, tuple or range: the items between two samples
        # go through the builtins (see `_builtin_chain`), counted a chunk at a time.
        chain = _Builtins(run)
        while True:
            size = COOPERATE_EVERY if sample_at < 0 else min(COOPERATE_EVERY, sample_at - n - 1)
            part = list(islice(upstream, size))
            run.entered = n + len(part)
            n += chain.extend(part, n - 1, out)
            if len(part) < size:
                return out
            if watch.paused:
                await watch.wait()
            if n + 1 == sample_at:
                item = next(upstream, _NO_ITEM)
                if item is _NO_ITEM:
                    return out
                n += 1
                run.entered = n
                try:
                    result = await run.probe(item)
                except Exception as exc:
                    run.annotate(exc, n - 1, item)
                    raise
                sample_at = run.next_sample(n)
                if result is not SKIP:
                    append(result)
                if watch.paused:
                    await watch.wait()
            await cooperate()
    finally:
        _close_sync(upstream)


_NO_ITEM: Final = object()
"""What `next` gives for an iterator with no item left (see `_watched_to_list`)."""


# --------------------------------------------------------------------------- Stage


@dataclass(frozen=True, slots=True, eq=False)
class Stage(Generic[In, Out]):
    """An immutable, reusable description of a transformation of a stream.

    Build stages with the operator functions (`map_`, `filter_`, `chunk`, ...)
    and compose them with ``|``. Apply a stage to a source with ``source |
    stage`` or ``stage(source)``: either returns a `Flow`, an async iterator
    that is also an async context manager. Running a stage twice gives two
    independent flows.

    Consecutive item-level stages (`map_`, `filter_`, `tap` with their default
    options) are fused into a single loop when the flow runs.

    Examples:
        >>> import asyncio
        >>> from streamkit import map_, filter_, collect
        >>> evens_doubled = filter_(lambda x: x % 2 == 0) | map_(lambda x: x * 2)
        >>> asyncio.run(collect(range(7) | evens_doubled))
        [0, 4, 8, 12]
    """

    steps: tuple[Step, ...]
    _plan: tuple[PlanPart, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_plan", plan(self.steps))

    @property
    def label(self) -> str:
        """A readable description, e.g. ``map_(parse) | filter_(valid)``."""
        return " | ".join(step.label for step in self.steps) or "pipe()"

    def __repr__(self) -> str:
        return f"<Stage {self.label}>"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Stage):
            return self.steps == other.steps
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.steps)

    # Envelope-transparent: a source of envelopes gives envelopes (item-level
    # stages pass each value to their function and re-wrap the result with the
    # item's state), unless the stage takes envelopes itself.
    @overload
    def __call__(  # a stage that takes envelopes is used as it is
        self: Stage[S, Envelope[R]], source: Source[Envelope[S]], /
    ) -> Flow[Envelope[R]]: ...
    @overload
    def __call__(self, source: Source[Envelope[In]], /) -> Flow[Envelope[Out]]: ...
    @overload
    def __call__(self, source: Source[In], /) -> Flow[Out]: ...
    def __call__(self, source: Source[Any], /) -> Flow[Any]:
        """Apply the stage to ``source``; nothing runs until iteration."""
        return cast("Flow[Any]", _apply(self, source))

    @overload
    def __ror__(
        self: Stage[S, Envelope[R]], source: Source[Envelope[S]], /
    ) -> Flow[Envelope[R]]: ...
    @overload
    def __ror__(self, source: Source[Envelope[In]], /) -> Flow[Envelope[Out]]: ...
    @overload
    def __ror__(self, source: Source[In], /) -> Flow[Out]: ...
    def __ror__(self, source: Source[Any], /) -> Flow[Any]:
        return cast("Flow[Any]", _apply(self, source))

    # The same rule between stages: after a stage whose items are `Envelope[S]`,
    # a stage that takes envelopes is used as it is, any other is applied to
    # the values. Shape stages (below) type `stage | shape` in their `__ror__`.
    @overload
    def __or__(  # a stage that takes envelopes (and gives envelopes) is used as it is
        self: Stage[A, Envelope[S]], other: Stage[Envelope[S], Envelope[R]], /
    ) -> Stage[A, Envelope[R]]: ...
    @overload
    def __or__(  # envelope-transparent
        self: Stage[A, Envelope[S]], other: Stage[S, R], /
    ) -> Stage[A, Envelope[R]]: ...
    @overload
    def __or__(self, other: Stage[Out, R], /) -> Stage[In, R]: ...
    def __or__(self, other: object, /) -> Stage[Any, Any]:
        if not is_stage(other):
            return NotImplemented
        return compose(self, other)


def compose(first: Stage[Any, Any], second: Stage[Any, Any]) -> Stage[Any, Any]:
    """``first | second``. A shape stage after a passthrough keeps its shape."""
    steps = first.steps + second.steps
    if type(first) is Passthrough and isinstance(second, ShapeStage):
        return type(second)(steps)
    return Stage(steps)


def _apply(stage: Stage[Any, Any], source: object) -> Any:
    if is_stage(source):
        # Python asks a subclass on the right first: `stage | shape_stage`.
        return compose(source, stage)
    if is_flow(source):
        # `src | a | b` parses as `(src | a) | b`: extend the flow so that
        # `a` and `b` can be fused.
        if source._take_over():  # pyright: ignore[reportPrivateUsage]
            return Flow(source.source, compose(source.stage, stage))
    elif not hasattr(source, "__aiter__") and not isinstance(source, Iterable):
        raise TypeError(
            f"cannot apply {stage.label} to {type(source).__name__}: "
            "a source must be an iterable or an async iterable"
        )
    return Flow(cast("Source[Any]", source), stage)


# --------------------------------------------------------------------------- shape stages
#
# How the types flow (see "How the types flow" in docs/design.md):
#
# * A plain `Stage[In, Out]` is envelope-transparent: applied to a source of
#   `Envelope[In]` it gives `Envelope[Out]`, and after a stage whose output is
#   `Envelope[S]` it composes as a stage of `S`. A stage that takes envelopes
#   itself (`reduce_point`, `map_(fn, with_state=True)`) is used exactly.
# * Operators whose output type is a function of their *input* type, like
#   `take(3)` (same type) or `chunk(3)` (a list of it), cannot be typed
#   `Stage[In, Out]` from their arguments: nothing fixes `In`. They return a
#   shape stage, one class per shape, whose `__ror__` and `__call__` are generic
#   in the item type on their left (a source's, or a stage's output), with one
#   overload for an `Envelope[T]` and one for a plain `T`. Its declared base is
#   `Stage[Never, Any]`: it claims no item types of its own, so a type checker
#   never takes `stage | shape` for an ordinary composition and asks the shape's
#   `__ror__` instead. At run time shape stages are ordinary stages.

_Many: TypeAlias = Iterable[T] | AsyncIterable[T]
"""What `flatten` takes apart: an iterable or an async iterable of ``T``."""


class ShapeStage(Stage[Never, Any]):
    """A stage whose item types are resolved against what it is applied to."""

    __slots__ = ()

    # After a shape stage, the item type is known only to the shape's own
    # overloads (below): a composition starting with one is typed by the
    # stage on its right, if that stage says what it takes.
    @overload  # type: ignore[override]  # a shape has no item types of its own
    def __or__(self, other: ShapeStage, /) -> Stage[Any, Any]: ...
    @overload
    def __or__(self, other: Stage[Any, R], /) -> Stage[Any, R]: ...
    def __or__(  # pyright: ignore[reportIncompatibleMethodOverride] - a shape has no own types
        self, other: object, /
    ) -> Stage[Any, Any]:
        if not is_stage(other):
            return NotImplemented
        return compose(self, other)


ShapeT = TypeVar("ShapeT", bound=ShapeStage)


class Passthrough(ShapeStage):
    """A stage whose items come out with the type they went in with.

    Returned by `take`, `skip`, `distinct`, `buffer`, `throttle`, ...: the
    item type is taken from the source (or the stage) on its left, so
    ``range(5) | take(2)`` is a ``Flow[int]``.

    Examples:
        >>> import asyncio
        >>> from streamkit import collect, skip, take
        >>> from streamkit.typing import Passthrough
        >>> middle = skip(1) | take(2)
        >>> isinstance(middle, Passthrough)
        True
        >>> asyncio.run(collect("abcd" | middle))
        ['b', 'c']
    """

    __slots__ = ()

    def __call__(self, source: Source[S], /) -> Flow[S]:
        """Apply the stage to ``source``."""
        return cast("Flow[S]", _apply(self, source))

    @overload
    def __ror__(self, source: Stage[A, S], /) -> Stage[A, S]: ...  # type: ignore[misc]  # mypy: Stage.__or__ overlaps it, but cannot take a shape stage
    @overload
    def __ror__(self, source: Source[S], /) -> Flow[S]: ...
    def __ror__(self, source: object, /) -> Any:  # pyright: ignore[reportIncompatibleMethodOverride]
        return _apply(self, source)

    @overload  # type: ignore[override]  # a shape has no item types of its own
    def __or__(self, other: ShapeT, /) -> ShapeT: ...  # type: ignore[overload-overlap]  # a shape after a passthrough keeps its shape
    @overload
    def __or__(self, other: Stage[S, R], /) -> Stage[S, R]: ...
    def __or__(self, other: object, /) -> Stage[Any, Any]:
        if not is_stage(other):
            return NotImplemented
        return compose(self, other)


class EnvelopStage(ShapeStage):
    """The stage `envelop` returns: items of type ``T`` come out as ``Envelope[T]``.

    Examples:
        >>> import asyncio
        >>> from streamkit import collect, envelop
        >>> asyncio.run(collect(envelop()("ab")))
        [Envelope(value='a', state=State({})), Envelope(value='b', state=State({}))]
    """

    __slots__ = ()

    def __call__(self, source: Source[S], /) -> Flow[Envelope[S]]:
        """Apply the stage to ``source``."""
        return cast("Flow[Envelope[S]]", _apply(self, source))

    @overload
    def __ror__(self, source: Stage[A, S], /) -> Stage[A, Envelope[S]]: ...  # type: ignore[misc]  # mypy: Stage.__or__ overlaps it, but cannot take a shape stage
    @overload
    def __ror__(self, source: Source[S], /) -> Flow[Envelope[S]]: ...
    def __ror__(self, source: object, /) -> Any:  # pyright: ignore[reportIncompatibleMethodOverride]
        return _apply(self, source)

    @overload  # type: ignore[override]  # a shape has no item types of its own
    def __or__(self, other: ShapeStage, /) -> Stage[Any, Envelope[Any]]: ...
    @overload
    def __or__(
        self, other: Stage[Envelope[S], Envelope[R]], /
    ) -> Stage[S, Envelope[R]]: ...  # a stage that takes envelopes is used as it is
    @overload
    def __or__(self, other: Stage[S, R], /) -> Stage[S, Envelope[R]]: ...
    def __or__(  # pyright: ignore[reportIncompatibleMethodOverride] - narrower overloads
        self, other: object, /
    ) -> Stage[Any, Any]:
        if not is_stage(other):
            return NotImplemented
        return compose(self, other)


class ListStage(ShapeStage):
    """A stage that groups items into lists (`chunk`).

    After ``T`` items (from a source or a stage) it gives ``list[T]``; after
    ``Envelope[T]`` items, ``Envelope[list[T]]``.

    Examples:
        >>> import asyncio
        >>> from streamkit import chunk, collect
        >>> from streamkit.typing import ListStage
        >>> isinstance(chunk(2), ListStage)
        True
        >>> asyncio.run(collect("abc" | chunk(2)))
        [['a', 'b'], ['c']]
    """

    __slots__ = ()

    @overload
    def __call__(self, source: Source[Envelope[S]], /) -> Flow[Envelope[list[S]]]: ...  # type: ignore[overload-overlap]  # pyright: ignore[reportOverlappingOverload]
    @overload
    def __call__(self, source: Source[S], /) -> Flow[list[S]]: ...
    def __call__(self, source: Source[Any], /) -> Flow[Any]:
        """Apply the stage to ``source``."""
        return cast("Flow[Any]", _apply(self, source))

    @overload
    def __ror__(self, source: Stage[A, Envelope[S]], /) -> Stage[A, Envelope[list[S]]]: ...  # type: ignore[overload-overlap, misc]  # pyright: ignore[reportOverlappingOverload]
    @overload
    def __ror__(self, source: Stage[A, S], /) -> Stage[A, list[S]]: ...  # type: ignore[misc]  # mypy: Stage.__or__ overlaps it, but cannot take a shape stage
    @overload
    def __ror__(self, source: Source[Envelope[S]], /) -> Flow[Envelope[list[S]]]: ...  # type: ignore[overload-overlap]  # pyright: ignore[reportOverlappingOverload]
    @overload
    def __ror__(self, source: Source[S], /) -> Flow[list[S]]: ...
    def __ror__(self, source: object, /) -> Any:  # pyright: ignore[reportIncompatibleMethodOverride]
        return _apply(self, source)


class TupleStage(ShapeStage):
    """A stage that groups items into tuples (`window`).

    After ``T`` items (from a source or a stage) it gives ``tuple[T, ...]``; after
    ``Envelope[T]`` items, ``Envelope[tuple[T, ...]]``.

    Examples:
        >>> import asyncio
        >>> from streamkit import window, collect
        >>> from streamkit.typing import TupleStage
        >>> isinstance(window(2), TupleStage)
        True
        >>> asyncio.run(collect("abc" | window(2)))
        [('a', 'b'), ('b', 'c')]
    """

    __slots__ = ()

    @overload
    def __call__(self, source: Source[Envelope[S]], /) -> Flow[Envelope[tuple[S, ...]]]: ...  # type: ignore[overload-overlap]  # pyright: ignore[reportOverlappingOverload]
    @overload
    def __call__(self, source: Source[S], /) -> Flow[tuple[S, ...]]: ...
    def __call__(self, source: Source[Any], /) -> Flow[Any]:
        """Apply the stage to ``source``."""
        return cast("Flow[Any]", _apply(self, source))

    @overload
    def __ror__(self, source: Stage[A, Envelope[S]], /) -> Stage[A, Envelope[tuple[S, ...]]]: ...  # type: ignore[overload-overlap, misc]  # pyright: ignore[reportOverlappingOverload]
    @overload
    def __ror__(self, source: Stage[A, S], /) -> Stage[A, tuple[S, ...]]: ...  # type: ignore[misc]  # mypy: Stage.__or__ overlaps it, but cannot take a shape stage
    @overload
    def __ror__(self, source: Source[Envelope[S]], /) -> Flow[Envelope[tuple[S, ...]]]: ...  # type: ignore[overload-overlap]  # pyright: ignore[reportOverlappingOverload]
    @overload
    def __ror__(self, source: Source[S], /) -> Flow[tuple[S, ...]]: ...
    def __ror__(self, source: object, /) -> Any:  # pyright: ignore[reportIncompatibleMethodOverride]
        return _apply(self, source)


class PairStage(ShapeStage):
    """A stage that yields consecutive pairs (`pairwise`).

    After ``T`` items (from a source or a stage) it gives ``tuple[T, T]``; after
    ``Envelope[T]`` items, ``Envelope[tuple[T, T]]``.

    Examples:
        >>> import asyncio
        >>> from streamkit import pairwise, collect
        >>> from streamkit.typing import PairStage
        >>> isinstance(pairwise(), PairStage)
        True
        >>> asyncio.run(collect([1, 4, 9] | pairwise()))
        [(1, 4), (4, 9)]
    """

    __slots__ = ()

    @overload
    def __call__(self, source: Source[Envelope[S]], /) -> Flow[Envelope[tuple[S, S]]]: ...  # type: ignore[overload-overlap]  # pyright: ignore[reportOverlappingOverload]
    @overload
    def __call__(self, source: Source[S], /) -> Flow[tuple[S, S]]: ...
    def __call__(self, source: Source[Any], /) -> Flow[Any]:
        """Apply the stage to ``source``."""
        return cast("Flow[Any]", _apply(self, source))

    @overload
    def __ror__(self, source: Stage[A, Envelope[S]], /) -> Stage[A, Envelope[tuple[S, S]]]: ...  # type: ignore[overload-overlap, misc]  # pyright: ignore[reportOverlappingOverload]
    @overload
    def __ror__(self, source: Stage[A, S], /) -> Stage[A, tuple[S, S]]: ...  # type: ignore[misc]  # mypy: Stage.__or__ overlaps it, but cannot take a shape stage
    @overload
    def __ror__(self, source: Source[Envelope[S]], /) -> Flow[Envelope[tuple[S, S]]]: ...  # type: ignore[overload-overlap]  # pyright: ignore[reportOverlappingOverload]
    @overload
    def __ror__(self, source: Source[S], /) -> Flow[tuple[S, S]]: ...
    def __ror__(self, source: object, /) -> Any:  # pyright: ignore[reportIncompatibleMethodOverride]
        return _apply(self, source)


class IndexedStage(ShapeStage):
    """A stage that pairs each item with its index (`enumerate_`).

    After ``T`` items (from a source or a stage) it gives ``tuple[int, T]``; after
    ``Envelope[T]`` items, ``Envelope[tuple[int, T]]``.

    Examples:
        >>> import asyncio
        >>> from streamkit import enumerate_, collect
        >>> from streamkit.typing import IndexedStage
        >>> isinstance(enumerate_(), IndexedStage)
        True
        >>> asyncio.run(collect("ab" | enumerate_()))
        [(0, 'a'), (1, 'b')]
    """

    __slots__ = ()

    @overload
    def __call__(self, source: Source[Envelope[S]], /) -> Flow[Envelope[tuple[int, S]]]: ...  # type: ignore[overload-overlap]  # pyright: ignore[reportOverlappingOverload]
    @overload
    def __call__(self, source: Source[S], /) -> Flow[tuple[int, S]]: ...
    def __call__(self, source: Source[Any], /) -> Flow[Any]:
        """Apply the stage to ``source``."""
        return cast("Flow[Any]", _apply(self, source))

    @overload
    def __ror__(self, source: Stage[A, Envelope[S]], /) -> Stage[A, Envelope[tuple[int, S]]]: ...  # type: ignore[overload-overlap, misc]  # pyright: ignore[reportOverlappingOverload]
    @overload
    def __ror__(self, source: Stage[A, S], /) -> Stage[A, tuple[int, S]]: ...  # type: ignore[misc]  # mypy: Stage.__or__ overlaps it, but cannot take a shape stage
    @overload
    def __ror__(self, source: Source[Envelope[S]], /) -> Flow[Envelope[tuple[int, S]]]: ...  # type: ignore[overload-overlap]  # pyright: ignore[reportOverlappingOverload]
    @overload
    def __ror__(self, source: Source[S], /) -> Flow[tuple[int, S]]: ...
    def __ror__(self, source: object, /) -> Any:  # pyright: ignore[reportIncompatibleMethodOverride]
        return _apply(self, source)


class FlattenStage(ShapeStage):
    """A stage that yields the elements of each (async) iterable item (`flatten`).

    After ``Iterable[T]`` (or ``AsyncIterable[T]``) items it gives ``T``; after
    ``Envelope[Iterable[T]]`` items, ``Envelope[T]``.

    Examples:
        >>> import asyncio
        >>> from streamkit import collect, flatten
        >>> from streamkit.typing import FlattenStage
        >>> isinstance(flatten(), FlattenStage)
        True
        >>> asyncio.run(collect([["a"], ["b", "c"]] | flatten()))
        ['a', 'b', 'c']
    """

    __slots__ = ()

    @overload
    def __call__(self, source: Source[Envelope[_Many[S]]], /) -> Flow[Envelope[S]]: ...
    @overload
    def __call__(self, source: Source[_Many[S]], /) -> Flow[S]: ...
    def __call__(self, source: Source[Any], /) -> Flow[Any]:
        """Apply the stage to ``source``."""
        return cast("Flow[Any]", _apply(self, source))

    @overload
    def __ror__(self, source: Stage[A, Envelope[_Many[S]]], /) -> Stage[A, Envelope[S]]: ...  # type: ignore[misc]  # mypy: Stage.__or__ overlaps it, but cannot take a shape stage
    @overload
    def __ror__(self, source: Stage[A, _Many[S]], /) -> Stage[A, S]: ...  # type: ignore[misc]  # mypy: as above
    @overload
    def __ror__(self, source: Source[Envelope[_Many[S]]], /) -> Flow[Envelope[S]]: ...
    @overload
    def __ror__(self, source: Source[_Many[S]], /) -> Flow[S]: ...
    def __ror__(self, source: object, /) -> Any:  # pyright: ignore[reportIncompatibleMethodOverride]
        return _apply(self, source)


class UnwrapStage(ShapeStage):
    """The stage `unwrap` returns: ``Envelope[T]`` items come out as ``T``.

    Examples:
        >>> import asyncio
        >>> from streamkit import Envelope, collect, unwrap
        >>> asyncio.run(collect(unwrap()([Envelope(1), Envelope(2)])))
        [1, 2]
    """

    __slots__ = ()

    def __call__(  # pyright: ignore[reportIncompatibleMethodOverride] - it takes envelopes
        self, source: Source[Envelope[S]], /
    ) -> Flow[S]:
        """Apply the stage to ``source``."""
        return cast("Flow[S]", _apply(self, source))

    @overload
    def __ror__(self, source: Stage[A, Envelope[S]], /) -> Stage[A, S]: ...  # type: ignore[misc]  # mypy: Stage.__or__ overlaps it, but cannot take a shape stage
    @overload
    def __ror__(self, source: Source[Envelope[S]], /) -> Flow[S]: ...
    def __ror__(self, source: object, /) -> Any:  # pyright: ignore[reportIncompatibleMethodOverride]
        return _apply(self, source)


class StateStage(Stage[In, Out]):
    """A stage that works on envelopes themselves (`set_state`, `reduce_point`, ...).

    Its types are exactly ``In -> Out`` (``In`` is ``T | Envelope[T]``: it
    takes plain items or envelopes): unlike other stages it is not
    envelope-transparent, because it reads and writes the items' state. The
    rules of `Stage` already use a stage that takes envelopes as it is; the
    class names the kind in signatures.

    Examples:
        >>> import asyncio
        >>> from streamkit import collect, set_state
        >>> from streamkit.typing import StateStage
        >>> lengths = set_state("length", len)
        >>> isinstance(lengths, StateStage)
        True
        >>> [item.state["length"] for item in asyncio.run(collect(["ab", "c"] | lengths))]
        [2, 1]
    """

    __slots__ = ()


def pipe(*stages: Stage[Any, Any]) -> Stage[Any, Any]:
    """Compose stages left to right into one stage.

    ``pipe(a, b, c)`` is ``a | b | c``; ``pipe()`` is the identity stage.
    Use ``|`` when the static types matter: it keeps them precisely, while
    `pipe` of a dynamic list is typed ``Stage[Any, Any]``.

    Examples:
        >>> import asyncio
        >>> from streamkit import collect, map_, pipe, take
        >>> first_squares = pipe(map_(lambda x: x * x), take(3))
        >>> asyncio.run(collect(range(10) | first_squares))
        [0, 1, 4]
    """
    steps: tuple[Step, ...] = ()
    for position, each in enumerate(stages):
        if not isinstance(each, Stage):  # pyright: ignore[reportUnnecessaryIsInstance] - untyped callers
            raise TypeError(f"pipe() takes stages; argument {position} is {type(each).__name__}")
        steps += each.steps
    return Stage(steps)


def item_stage(
    kind: ItemKind,
    fn: Callable[..., Any],
    label: str,
    *,
    may_drop: bool = False,
    per_run: Callable[[], Callable[..., Any]] | None = None,
    is_async: bool | None = None,
    with_state: bool = False,
) -> Stage[Any, Any]:
    """A stage made of one fusable item operation.

    ``is_async`` overrides detection, for wrappers that are async themselves.
    """
    known_async = is_async_callable(fn) if is_async is None else is_async
    return Stage((ItemOp(kind, fn, label, known_async, may_drop, per_run, with_state),))


def transform_stage(
    label: str,
    run: RunFunction,
    item: ConcurrentOp | None = None,
    *,
    barriers: bool = False,
    restorable: Callable[[Slot], RunFunction] | None = None,
    keys: tuple[Key[Any], ...] = (),
) -> Stage[Any, Any]:
    """A stage made of one whole-stream transform (``item`` describes its per-item call).

    ``barriers``: ``run`` forwards control elements; ``restorable``: the step
    keeps state, and this makes its run for a checkpointed run; ``keys``: the
    keys with a codec it sets (see `Transform`).
    """
    return Stage(
        (Transform(label, run, item, barriers or restorable is not None, restorable, keys),)
    )


@overload
def stage(
    fn: Callable[Concatenate[AsyncIterator[In], P], AsyncIterator[Out]], /
) -> Callable[P, Stage[In, Out]]: ...
@overload
def stage(
    *, stateless: Literal[True]
) -> Callable[
    [Callable[Concatenate[AsyncIterator[In], P], AsyncIterator[Out]]], Callable[P, Stage[In, Out]]
]: ...
@overload
def stage(
    *, state: Callable[[], S]
) -> Callable[
    [Callable[Concatenate[AsyncIterator[In], S, P], AsyncIterator[Out]]],
    Callable[P, Stage[In, Out]],
]: ...
def stage(
    fn: Callable[..., AsyncIterator[Any]] | None = None,
    /,
    *,
    stateless: bool = False,
    state: Callable[[], Any] | None = None,
) -> Any:
    """Turn an async generator function into a pipeable stage factory.

    The decorated function takes the upstream items first, then its own
    arguments. streamkit closes the upstream when the generator ends, however
    it ends, so existing generators drop in unchanged.

    Under a checkpointed `streamkit.Run` a custom stage must say what it
    keeps between items, or it is refused (never silently restarted):

    * ``@stage(stateless=True)``: nothing; after a restart it simply goes on.
    * ``@stage(state=factory)``: ``factory()`` makes a fresh state for every
      run, passed to the function after the upstream. It is a `dict` or any
      `Stateful` object (``snapshot()`` / ``restore()``); a checkpoint saves
      it (through the run's codec) whenever a barrier reaches the stage, and
      a resumed run restores it before the first item. The state must hold
      everything the generator keeps between two pulls of its upstream.

    Examples:
        >>> import asyncio
        >>> from collections.abc import AsyncIterator
        >>> from streamkit import collect, stage
        >>> @stage
        ... async def repeat_each(items: AsyncIterator[str], times: int) -> AsyncIterator[str]:
        ...     async for item in items:
        ...         for _ in range(times):
        ...             yield item
        >>> asyncio.run(collect(["a", "b"] | repeat_each(2)))
        ['a', 'a', 'b', 'b']
        >>> @stage(state=dict)
        ... async def numbered(
        ...     items: AsyncIterator[str], seen: dict[str, int]
        ... ) -> AsyncIterator[str]:
        ...     async for item in items:
        ...         seen["n"] = seen.get("n", 0) + 1
        ...         yield f"{seen['n']}. {item}"
        >>> asyncio.run(collect(["a", "b"] | numbered()))
        ['1. a', '2. b']
    """
    check_bool(stateless, "stateless")
    if state is not None:
        check_callable(state, "state")
        if stateless:
            raise TypeError("stage() takes stateless=True or state=, not both")
    if fn is None:

        def decorate(function: Callable[..., AsyncIterator[Any]]) -> Any:
            return _stage_factory(function, stateless=stateless, state=state)

        return decorate
    if stateless:
        raise TypeError("use @stage(stateless=True) without the function in the same call")
    return _stage_factory(fn, stateless=False, state=None)


def _stage_factory(
    fn: Callable[..., AsyncIterator[Any]],
    *,
    stateless: bool,
    state: Callable[[], Any] | None,
) -> Callable[..., Stage[Any, Any]]:
    check_callable(fn, "fn")
    name = describe(fn)
    try:
        signature: inspect.Signature | None = inspect.signature(fn)
    except (TypeError, ValueError):  # some builtins and C callables have none
        signature = None

    @functools.wraps(fn)
    def factory(*args: Any, **kwargs: Any) -> Stage[Any, Any]:
        if signature is not None:
            # Wrong arguments fail here, when the stage is built, not mid-run.
            if state is None:
                signature.bind(None, *args, **kwargs)
            else:
                signature.bind(None, None, *args, **kwargs)

        def produce(upstream: AsyncIterator[Any], kept: Any) -> object:
            if state is None:
                return fn(upstream, *args, **kwargs)
            return fn(upstream, kept, *args, **kwargs)

        def run(upstream: AsyncIterator[Any]) -> AsyncIterator[Any]:
            kept = None if state is None else _new_state(state, name)
            return _run_user_generator(produce(upstream, kept), upstream)

        def restorable(slot: Slot) -> RunFunction:
            def checkpointed(upstream: AsyncIterator[Any]) -> AsyncIterator[Any]:
                kept = None if state is None else _new_state(state, name)
                if kept is not None:
                    slot.attach(_as_stateful(kept))
                return _run_checkpointed_generator(produce, kept, upstream, slot)

            return checkpointed

        declared = restorable if stateless or state is not None else None
        return Stage((Transform(f"{name}()", run, None, False, declared),))

    return factory


class _DictState:
    """A `dict` state of a custom stage, as a `Stateful`."""

    __slots__ = ("mapping",)

    def __init__(self, mapping: dict[Any, Any]) -> None:
        self.mapping = mapping

    def snapshot(self) -> dict[Any, Any]:
        return dict(self.mapping)

    def restore(self, snapshot: Any) -> None:
        self.mapping.clear()
        self.mapping.update(snapshot)


def _new_state(factory: Callable[[], Any], name: str) -> Any:
    made: object = factory()
    if not isinstance(made, dict | Stateful):
        raise TypeError(
            f"the state= factory of @stage {name} must return a dict or a Stateful object "
            f"(with snapshot() and restore()), got {type(made).__name__}"
        )
    return made  # pyright: ignore[reportUnknownVariableType] - a dict of any keys


def _as_stateful(state: object) -> Stateful:
    if isinstance(state, dict):
        return _DictState(state)  # pyright: ignore[reportUnknownArgumentType] - any keys
    return cast("Stateful", state)


async def _run_checkpointed_generator(
    produce: Callable[[AsyncIterator[Any], Any], object],
    kept: Any,
    upstream: AsyncIterator[Any],
    slot: Slot,
) -> AsyncGenerator[Any, None]:
    """A custom stage in a checkpointed run: control elements go around the generator.

    The generator only ever sees items. A control element is taken out of
    its upstream when the generator asks for its next item: at that moment
    it has yielded what it owes for the items before (the rest is in its
    state, captured now for a barrier). The element is then yielded before
    the generator's next output, or at its end.
    """
    waiting: collections.deque[Control] = collections.deque()

    async def items() -> AsyncIterator[Any]:
        try:
            async for item in upstream:
                if type(item) is CONTROL:
                    if item.kind == "barrier":
                        slot.capture(item)
                    waiting.append(item)
                    continue
                yield item
        finally:
            await aclose(upstream)

    inner = items()
    produced = _run_user_generator(produce(inner, kept), inner)
    try:
        async for output in produced:
            while waiting:
                yield waiting.popleft()
            yield output
        while waiting:
            yield waiting.popleft()
    finally:
        await aclose(produced)


async def _run_user_generator(
    produced: object, upstream: AsyncIterator[Any]
) -> AsyncGenerator[Any, None]:
    if inspect.iscoroutine(produced):
        produced.close()  # an `async def` without `yield`: never awaited
    if not hasattr(produced, "__anext__"):
        await aclose(upstream)
        raise TypeError(
            f"a @stage function must return an async iterator, got {type(produced).__name__}"
        )
    items = cast("AsyncIterator[Any]", produced)
    try:
        async for item in items:
            yield item
    finally:
        try:
            await aclose(items)
        finally:
            await aclose(upstream)


# --------------------------------------------------------------------------- Flow


class _Generated(Generic[T]):
    """A source made by a generator factory (used by `merge`, `zip_`, ...)."""

    __slots__ = ("factory", "label")

    def __init__(self, label: str, factory: Callable[[], AsyncIterator[T]]) -> None:
        self.label = label
        self.factory = factory

    def __aiter__(self) -> AsyncIterator[T]:
        return self.factory()


_IDENTITY: Final[Stage[Any, Any]] = Stage(())


def generated(label: str, factory: Callable[[], AsyncIterator[T]]) -> Flow[T]:
    """A `Flow` over the iterator that ``factory()`` returns when iterated."""
    return Flow(_Generated(label, factory), _IDENTITY)


class Flow(AsyncIterator[T_co]):
    """The result of running a stage: an async iterator and context manager.

    A flow is lazy: nothing is pulled from the source until the first item is
    requested. Use it in ``async with`` to close every upstream iterator
    deterministically when the block ends, however it ends (see the example).
    The terminal helpers (`collect`, `first`, ...) close it for you. A flow is
    single-use; piping it into another stage hands it over to the new flow.

    Examples:
        >>> import asyncio
        >>> from streamkit import map_
        >>> async def main() -> list[int]:
        ...     async with range(3) | map_(lambda x: x + 1) as items:
        ...         return [item async for item in items]
        >>> asyncio.run(main())
        [1, 2, 3]
    """

    __slots__ = ("_chain", "_ends", "_iterator", "_state", "source", "stage")

    def __init__(self, source: Source[Any], stage: Stage[Any, T_co]) -> None:
        self.source = source
        self.stage = stage
        self._iterator: AsyncIterator[T_co] | None = None
        self._chain: list[object] = []
        self._state: Literal["new", "open", "handed-over", "closed"] = "new"
        self._ends: Ends | None = None

    def __repr__(self) -> str:
        source = getattr(self.source, "label", None) or type(self.source).__name__
        return f"<Flow {source} | {self.stage.label} ({self._state})>"

    # -- internal protocol -------------------------------------------------

    def _take_over(self) -> bool:
        """Hand this unopened flow to a new, longer flow (for fusion)."""
        if self._state != "new":
            return False
        self._state = "handed-over"
        return True

    def _claim(self) -> bool:
        """Claim this unopened flow for a terminal's plain-loop fast path."""
        if self._state != "new":
            return False
        self._state = "closed"
        return True

    def end_with(self, ends: Ends) -> bool:
        """Have the flow's last fused segment tell ``ends`` when it starts and ends.

        This lets a watcher (`streamkit.Run`) hand out the flow's own
        iterator and still learn how the iteration ended, at no cost per
        item. Only for a flow not opened yet whose last part is a fused
        segment; returns whether ``ends`` was set. When the segment ends,
        the flow is closed (the rest of its chain too) before ``ends.ended``
        is awaited.
        """
        parts = self.stage._plan  # pyright: ignore[reportPrivateUsage]
        if self._state != "new" or not parts or not isinstance(parts[-1], Segment):
            return False
        self._ends = ends
        return True

    def _segment_ends(self) -> Ends | None:
        given = self._ends
        if given is None:
            return None

        async def ended(error: BaseException | None, passed: int) -> None:
            # The last segment has closed its upstream; close whatever else
            # the chain holds (never-started generators), then tell the watcher.
            chain = self._chain[:-1]
            self._chain = []
            self._state = "closed"
            self._iterator = _EMPTY_ITERATOR
            try:
                await close_all(reversed(chain))
            finally:
                await given.ended(error, passed)

        return Ends(given.started, ended, given.control)

    def _open(self) -> AsyncIterator[T_co]:
        if self._state == "handed-over":
            raise RuntimeError(f"{self!r} was piped into another stage; iterate that flow instead")
        if self._state == "closed":
            return _EMPTY_ITERATOR
        parts = self.stage._plan  # pyright: ignore[reportPrivateUsage]
        ends = self._segment_ends()
        # Every iterator of the chain is kept, so that closing the flow reaches
        # the source even through generators that never started (closing an
        # unstarted generator does not run its `finally`).
        chain = self._chain
        iterator: AsyncIterator[Any]
        end = parts[-1] if parts else None
        if ends is not None and ends.control is not None and len(parts) > 1:
            # A checkpointed run restores its steps when it starts, which its
            # last segment awaits first: the parts before it are made after.
            assert isinstance(end, Segment)  # see `end_with`
            assert end.ops[0].barriers

            def opener() -> AsyncIterator[Any]:
                return self._chained(parts[:-1], None, lambda made: chain.insert(-1, made))

            iterator = _barrier_segment(end.ops, None, ends, opener)
            chain.append(iterator)
        else:
            iterator = self._chained(parts, ends, chain.append)
        self._iterator = iterator
        self._state = "open"
        return iterator

    def _chained(
        self,
        parts: Sequence[Segment | Transform],
        ends: Ends | None,
        keep: Callable[[Iterator[Any] | AsyncIterator[Any]], None],
    ) -> AsyncIterator[Any]:
        """The source through ``parts`` (``ends`` to the last), each iterator made kept."""
        source = self.source
        last = len(parts) - 1
        iterator: AsyncIterator[Any]
        first = 0
        if parts and isinstance(parts[0], Segment) and is_sync_source(source):
            items = iter(cast("Iterable[Any]", source))
            keep(items)
            iterator = run_segment_sync(parts[0].ops, items, ends if last == 0 else None)
            first = 1
        else:
            iterator = open_async(source)
        keep(iterator)
        for position in range(first, len(parts)):
            part = parts[position]
            if isinstance(part, Segment):
                iterator = run_segment(part.ops, iterator, ends if position == last else None)
            else:
                iterator = part.run(iterator)
            keep(iterator)
        return iterator

    # -- AsyncIterator -----------------------------------------------------

    def __aiter__(self) -> AsyncIterator[T_co]:  # noqa: PYI034 - returns the inner iterator
        # Hand out the innermost iterator itself: `async for` then runs at
        # native async-generator speed, with no wrapper call per item.
        iterator = self._iterator
        if iterator is None:
            iterator = self._open()
        return iterator

    def __anext__(self) -> Awaitable[T_co]:
        iterator = self._iterator
        if iterator is None:
            iterator = self._open()
        return iterator.__anext__()

    async def aclose(self) -> None:
        """Close the flow and, through it, every upstream iterator."""
        state = self._state
        self._state = "closed"
        if state == "open":
            self._iterator = _EMPTY_ITERATOR
            chain, self._chain = self._chain, []
            await close_all(reversed(chain))
        elif state == "new":
            # Never iterated: close the source if it is itself an iterator.
            source = self.source
            if isinstance(source, Flow | AsyncIterator | Iterator):
                await aclose(source)

    async def __aenter__(self) -> Flow[T_co]:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()


class _EmptyIterator(AsyncIterator[Any]):
    __slots__ = ()

    async def __anext__(self) -> Any:
        raise StopAsyncIteration


_EMPTY_ITERATOR: Final = _EmptyIterator()


def check_int(value: object, parameter: str) -> int:
    """Raise `TypeError` naming ``parameter`` unless ``value`` is an int (not a bool)."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{parameter} must be an int, got {type(value).__name__}: {value!r}")
    return value


def check_bool(value: object, parameter: str) -> bool:
    """Raise `TypeError` naming ``parameter`` unless ``value`` is a bool."""
    if not isinstance(value, bool):
        raise TypeError(f"{parameter} must be a bool, got {type(value).__name__}: {value!r}")
    return value


def check_count(value: object, parameter: str, *, minimum: int) -> int:
    """Validate an integer option; raise naming ``parameter`` if it is wrong."""
    check_int(value, parameter)
    assert isinstance(value, int)
    if value < minimum:
        raise ValueError(f"{parameter} must be >= {minimum}, got {value}")
    return value


def check_concurrency(concurrency: object, ordered: object, window: object) -> bool:
    """Validate ``concurrency=``, ``ordered=``, ``window=``; True when sequential (1)."""
    check_count(concurrency, "concurrency", minimum=1)
    check_bool(ordered, "ordered")
    if window is not None:
        check_count(window, "window", minimum=1)
    return concurrency == 1


def check_seconds(value: object, parameter: str) -> float:
    """Validate a positive, finite duration in seconds."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise TypeError(f"{parameter} must be a number of seconds, got {type(value).__name__}")
    seconds = float(value)
    if not seconds > 0 or seconds == float("inf"):
        raise ValueError(f"{parameter} must be a positive, finite number of seconds, got {value}")
    return seconds
