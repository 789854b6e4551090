"""Per-item state stages: envelopes, state steps, reduction points, branches.

Items carry their state in an `Envelope`; these stages put items into
envelopes and take them out (`envelop`, `unwrap`), set state from each item
(`set_state`), keep a running aggregate (`scan_state`), materialise the whole
stream to store an aggregate in every item (`reduce_point`) and run items
through several sub-pipelines, each with its own state (`fork`, `branch`).
See docs/state.md for the model and when each piece of state is available.
"""

from __future__ import annotations

import inspect
import itertools
import pickle
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, Final, Literal, TypeVar, cast, overload

from . import _native
from ._barrier import CONTROL, Slot, Stateful
from ._combine import merge_flows, tee, zip_flows
from ._core import (
    EnvelopStage,
    Flow,
    Source,
    Stage,
    StateStage,
    UnwrapStage,
    aclose,
    annotate,
    check_bool,
    check_callable,
    check_count,
    describe,
    is_async_callable,
    is_stage,
    open_async,
    stage_label,
    transform_stage,
)
from ._initial import Factory, initial_maker
from ._records import (
    COMPILED,
    EMPTY,
    Envelope,
    Key,
    Scope,
    State,
    StateLimits,
    entry_size,
    key_name,
    new_envelope,
)

if TYPE_CHECKING:
    from collections.abc import Iterable

T = TypeVar("T")
S = TypeVar("S")
V = TypeVar("V")
A = TypeVar("A")

_ENVELOPE: Final[type[Any]] = Envelope
"""`Envelope`, typed so that ``isinstance`` leaves an ``Any`` item ``Any`` (no cast per item)."""

BRANCH: Final = Key[str]("branch", scope=Scope.custom("streamkit"))
"""The state key under which `fork` and `branch` record the branch an item came from."""

DEFAULT_MEMORY_LIMIT: Final = 1_000_000
"""Items `reduce_point` keeps in memory before it spills to a temporary file."""

_SPILL_CHUNK: Final = 4096
"""The most items pickled together when spilling (and read back at once)."""


# --------------------------------------------------------------------------- shape stages


# --------------------------------------------------------------------------- raw item maps
#
# These stages must see the items themselves (envelopes included), while the
# core's fused item operations are envelope-transparent (they see values):
# so each runs as its own transform, an async generator over the raw items.


def _raw_map(
    label: str,
    make: Callable[[], Callable[[Any], Any]],
    *,
    stateful: bool = False,
    keys: tuple[Key[Any], ...] = (),
) -> Stage[Any, Any]:
    """A transform applying ``make()``'s function (one per run) to every raw item.

    The function's result is awaited when it is awaitable, decided by the
    first result of the run. With ``stateful``, the function is `Stateful`
    and a checkpointed run saves and restores it.
    """

    def run(upstream: AsyncIterator[Any]) -> AsyncIterator[Any]:
        return _raw_mapped(upstream, make(), label, None)

    def restorable(slot: Slot) -> Callable[[AsyncIterator[Any]], AsyncIterator[Any]]:
        def checkpointed(upstream: AsyncIterator[Any]) -> AsyncIterator[Any]:
            fn = make()
            slot.attach(cast("Stateful", fn))
            return _raw_mapped(upstream, fn, label, slot)

        return checkpointed

    return transform_stage(
        label, run, barriers=True, restorable=restorable if stateful else None, keys=keys
    )


async def _raw_mapped(
    upstream: AsyncIterator[Any], fn: Callable[[Any], Any], label: str, slot: Slot | None
) -> AsyncIterator[Any]:
    index = -1
    awaits: bool | None = None
    try:
        async for item in upstream:
            if type(item) is CONTROL:
                if slot is not None and item.kind == "barrier":
                    slot.capture(item)
                yield item
                continue
            index += 1
            try:
                result = fn(item)
                if awaits is None:
                    awaits = inspect.isawaitable(result)
                if awaits:
                    result = await result
            except Exception as exc:
                annotate(exc, label, index)
                raise
            yield result
    finally:
        await aclose(upstream)


# --------------------------------------------------------------------------- envelop, unwrap


def _initial_state(state: object, limits: StateLimits | None) -> State:
    if limits is not None and not isinstance(limits, StateLimits):  # pyright: ignore[reportUnnecessaryIsInstance] - untyped callers
        raise TypeError(f"limits must be a StateLimits or None, got {type(limits).__name__}")
    if state is None:
        return EMPTY if limits is None else State(limits=limits)
    if isinstance(state, State):
        return state if limits is None else state.with_limits(limits)
    if isinstance(state, Mapping):
        mapping = cast("Mapping[str, Any]", state)
        return State(mapping) if limits is None else State(mapping, limits=limits)
    raise TypeError(f"state must be a State, a mapping or None, got {type(state).__name__}")


def envelop(
    state: State | Mapping[Any, Any] | None = None,
    /,
    *,
    limits: StateLimits | None = None,
    name: str | None = None,
) -> EnvelopStage:
    """Put every item into an `Envelope` with an initial state.

    Every envelope of a run shares the one initial `State` object, so the
    state costs no memory per item. An item that already is an envelope
    raises `TypeError` (set state on it instead).

    Args:
        state: The initial state (a `State`, or a mapping with `Key` or
            string keys); empty by default.
        limits: The `StateLimits` of the items' states (16 KiB of JSON and 256
            keys by default); they carry over to every state derived from
            them downstream.
        name: The stage's label in statistics, events, errors and the
            history (see `map_`).

    Examples:
        >>> import asyncio
        >>> from streamkit import collect
        >>> asyncio.run(collect(["a"] | envelop({"run": 7})))
        [Envelope(value='a', state=State({'run': 7}))]
    """
    initial = _initial_state(state, limits)

    def wrap(item: Any) -> Envelope[Any]:
        if isinstance(item, Envelope):
            raise TypeError(
                "envelop() got an item that already is an Envelope; set state on it instead "
                f"(set_state, Envelope.with_state): {item!r}"
            )
        return Envelope(item, initial)

    return EnvelopStage(_raw_map(stage_label(name, "envelop()"), lambda: wrap).steps)


def _unwrap(item: Any) -> Any:
    if isinstance(item, Envelope):
        envelope = cast("Envelope[object]", item)
        return envelope.value
    raise TypeError(f"unwrap() needs Envelope items, got {type(item).__name__}: {item!r}")


_unwrap_steps = _raw_map("unwrap()", lambda: _unwrap).steps


def unwrap(*, name: str | None = None) -> UnwrapStage:
    """Take the values out of `Envelope` items, dropping their state.

    A plain item raises `TypeError`.

    Args:
        name: The stage's label in statistics, events, errors and the
            history (see `map_`).

    Examples:
        >>> import asyncio
        >>> from streamkit import collect
        >>> asyncio.run(collect(range(3) | envelop() | unwrap()))
        [0, 1, 2]
    """
    if name is None:
        return UnwrapStage(_unwrap_steps)
    return UnwrapStage(_raw_map(stage_label(name, "unwrap()"), lambda: _unwrap).steps)


# --------------------------------------------------------------------------- set_state


def _check_key(key: object) -> str:
    return key_name(key, "key")


def _codec_keys(key: Key[Any] | str) -> tuple[Key[Any], ...]:
    """``(key,)`` for a `Key` with a codec: a checkpointed run encodes its values with it."""
    return (key,) if isinstance(key, Key) and key.codec is not None else ()


async def _settled_envelope(value: Any, state: State, name: str, pending: Awaitable[Any]) -> Any:
    return Envelope(value, state._set(name, await pending))  # pyright: ignore[reportPrivateUsage] - the records' fast path


@overload
def set_state(
    key: Key[V] | str,
    fn: Callable[[T], Awaitable[V]],
    /,
    *,
    with_state: Literal[False] = False,
    name: str | None = None,
) -> StateStage[T | Envelope[T], Envelope[T]]: ...
@overload
def set_state(
    key: Key[V] | str,
    fn: Callable[[T], V],
    /,
    *,
    with_state: Literal[False] = False,
    name: str | None = None,
) -> StateStage[T | Envelope[T], Envelope[T]]: ...
@overload
def set_state(
    key: Key[V] | str,
    fn: Callable[[T, State], Awaitable[V]],
    /,
    *,
    with_state: Literal[True],
    name: str | None = None,
) -> StateStage[T | Envelope[T], Envelope[T]]: ...
@overload
def set_state(
    key: Key[V] | str,
    fn: Callable[[T, State], V],
    /,
    *,
    with_state: Literal[True],
    name: str | None = None,
) -> StateStage[T | Envelope[T], Envelope[T]]: ...
def set_state(
    key: Key[Any] | str,
    fn: Callable[..., Any],
    /,
    *,
    with_state: bool = False,
    name: str | None = None,
) -> Stage[Any, Any]:
    """Set ``key`` in each item's state to ``fn(value)``; the value passes on.

    ``fn`` may be sync or async (decided by its first result in each run).
    With ``with_state=True`` it is called as ``fn(value, state)``. Plain
    items are put into an envelope with the empty state first, so the stage
    works on plain streams too; it always yields envelopes.

    Args:
        key: The `Key` (or string key) to set.
        fn: Computes the key's value from the item's value.
        with_state: Also pass the item's `State` to ``fn``.
        name: The stage's label in statistics, events, errors and the
            history (see `map_`).

    Examples:
        >>> import asyncio
        >>> from streamkit import collect
        >>> LENGTH = Key[int]("length")
        >>> items = asyncio.run(collect(["ab", "c"] | set_state(LENGTH, len)))
        >>> [(item.value, item.state[LENGTH]) for item in items]
        [('ab', 2), ('c', 1)]
    """
    key_name = _check_key(key)
    check_callable(fn, "fn")
    check_bool(with_state, "with_state")
    known_async = is_async_callable(fn)

    def per_run() -> Callable[[Any], Any]:
        awaits: bool | None = True if known_async else None

        def step(item: Any) -> Any:
            nonlocal awaits
            if isinstance(item, Envelope):
                envelope = cast("Envelope[object]", item)
                value, state = envelope.value, envelope.state
            else:
                value, state = item, EMPTY
            result = fn(value, state) if with_state else fn(value)
            if awaits is None:
                awaits = inspect.isawaitable(result)
            if awaits:
                return _settled_envelope(value, state, key_name, result)
            return Envelope(value, state._set(key_name, result))  # pyright: ignore[reportPrivateUsage] - the records' fast path

        return step

    label = stage_label(name, f"set_state({key_name!r}, {describe(fn)})")
    return StateStage(_raw_map(label, per_run, keys=_codec_keys(key)).steps)


# --------------------------------------------------------------------------- scan_state


@overload
def scan_state(
    key: Key[A] | str,
    fn: Callable[[A, T], Awaitable[A]],
    initial: A | Factory[A],
    /,
    *,
    with_state: Literal[False] = False,
    name: str | None = None,
) -> StateStage[T | Envelope[T], Envelope[T]]: ...
@overload
def scan_state(
    key: Key[A] | str,
    fn: Callable[[A, T], A],
    initial: A | Factory[A],
    /,
    *,
    with_state: Literal[False] = False,
    name: str | None = None,
) -> StateStage[T | Envelope[T], Envelope[T]]: ...
@overload
def scan_state(
    key: Key[A] | str,
    fn: Callable[[A, T, State], Awaitable[A]],
    initial: A | Factory[A],
    /,
    *,
    with_state: Literal[True],
    name: str | None = None,
) -> StateStage[T | Envelope[T], Envelope[T]]: ...
@overload
def scan_state(
    key: Key[A] | str,
    fn: Callable[[A, T, State], A],
    initial: A | Factory[A],
    /,
    *,
    with_state: Literal[True],
    name: str | None = None,
) -> StateStage[T | Envelope[T], Envelope[T]]: ...
def scan_state(
    key: Key[Any] | str,
    fn: Callable[..., Any],
    initial: Any,
    /,
    *,
    with_state: bool = False,
    name: str | None = None,
) -> Stage[Any, Any]:
    """Store the running aggregate ``acc = fn(acc, value)`` in each item's state.

    The aggregate so far (this item included) is set under ``key`` as each
    item passes: streaming, nothing is held back. Each run starts again from
    ``initial``. ``fn`` may be sync or async; with ``with_state=True`` it is
    called as ``fn(acc, value, state)``. Plain items are put into envelopes.

    Args:
        key: The `Key` (or string key) to set.
        fn: Combines the aggregate so far with the next value.
        initial: The aggregate before the first item: an immutable value, or a
            `Factory` that makes a new one for each run (``Factory(dict)``); a
            mutable value such as ``{}`` raises `ValueError`.
        with_state: Also pass the item's `State` to ``fn``.
        name: The stage's label in statistics, events, errors and the
            history (see `map_`).

    Examples:
        >>> import asyncio
        >>> from streamkit import collect
        >>> RUNNING = Key[int]("running")
        >>> items = asyncio.run(collect([3, 4, 5] | scan_state(RUNNING, lambda a, x: a + x, 0)))
        >>> [item.state[RUNNING] for item in items]
        [3, 7, 12]
    """
    key_name = _check_key(key)
    check_callable(fn, "fn")
    check_bool(with_state, "with_state")
    known_async = is_async_callable(fn)
    label = stage_label(name, f"scan_state({key_name!r}, {describe(fn)})")
    make = initial_maker(initial, label)
    keys = _codec_keys(key)

    def per_run() -> Callable[[Any], Any]:
        return _ScanState(key_name, fn, make(), with_state, known_async, bool(keys))

    return StateStage(_raw_map(label, per_run, stateful=True, keys=keys).steps)


def _kept(name: str, value: Any, keyed: bool) -> Any:
    """A key's value as a snapshot holds it: in a `State` when the key has a codec.

    The run's codec encodes the entries of such a state with their key's codec.
    """
    return State({name: value}, limits=StateLimits.UNLIMITED) if keyed else value


def _unkept(name: str, snapshot: Any, keyed: bool) -> Any:
    """`_kept` the other way round."""
    return snapshot[name] if keyed else snapshot


class _ScanState:
    """One run of `scan_state`: the function that sets the aggregate, and its state."""

    __slots__ = ("accumulator", "awaits", "fn", "keyed", "name", "with_state")

    def __init__(
        self,
        name: str,
        fn: Callable[..., Any],
        initial: Any,
        with_state: bool,
        known_async: bool,
        keyed: bool = False,
    ) -> None:
        self.name = name
        self.keyed = keyed
        self.fn = fn
        self.accumulator = initial
        self.with_state = with_state
        self.awaits: bool | None = True if known_async else None

    def snapshot(self) -> Any:
        return _kept(self.name, self.accumulator, self.keyed)

    def restore(self, snapshot: Any) -> None:
        self.accumulator = _unkept(self.name, snapshot, self.keyed)

    async def _settle(self, value: Any, state: State, pending: Awaitable[Any]) -> Any:
        self.accumulator = await pending
        return Envelope(value, state._set(self.name, self.accumulator))  # pyright: ignore[reportPrivateUsage] - the records' fast path

    def __call__(self, item: Any) -> Any:
        if isinstance(item, Envelope):
            envelope = cast("Envelope[object]", item)
            value, state = envelope.value, envelope.state
        else:
            value, state = item, EMPTY
        fn = self.fn
        if self.with_state:
            result = fn(self.accumulator, value, state)
        else:
            result = fn(self.accumulator, value)
        if self.awaits is None:
            self.awaits = inspect.isawaitable(result)
        if self.awaits:
            return self._settle(value, state, result)
        self.accumulator = result
        return Envelope(value, state._set(self.name, result))  # pyright: ignore[reportPrivateUsage] - the records' fast path


# --------------------------------------------------------------------------- reduce_point


def _open_spill_file() -> IO[bytes]:
    """A new anonymous temporary file, deleted when closed (tests wrap this)."""
    return tempfile.TemporaryFile(prefix="streamkit-spill-")


class _Spill:
    """The items a `reduce_point` run moved out of memory, in its own temp file.

    Only this run's own items are written, with pickle, to a file created by
    `tempfile` for this run alone; they are read back from that file only,
    and the file is deleted when the run ends, however it ends.
    """

    __slots__ = ("chunk", "chunks", "count", "file")

    def __init__(self, chunk: int) -> None:
        self.chunk = chunk
        self.chunks = 0
        self.count = 0
        self.file: IO[bytes] | None = None

    def write(self, items: list[Any], label: str, first_index: int) -> None:
        if self.file is None:
            self.file = _open_spill_file()
        for start in range(0, len(items), self.chunk):
            part = items[start : start + self.chunk]
            try:
                pickle.dump(part, self.file, pickle.HIGHEST_PROTOCOL)
            except (pickle.PicklingError, TypeError, AttributeError) as exc:
                raise TypeError(
                    f"{label} holds more than memory_limit items and spills them to a temporary "
                    f"file, but an item among inputs {first_index + start} to "
                    f"{first_index + start + len(part) - 1} cannot be pickled ({exc}); raise "
                    "memory_limit, pass memory_limit=None, or pass replay="
                ) from exc
            self.chunks += 1
        self.count += len(items)

    def read(self) -> Iterator[list[Any]]:
        file = self.file
        if file is None:
            return
        file.seek(0)
        for _ in range(self.chunks):
            chunk: list[Any] = pickle.load(file)  # our own items, from our own temp file
            yield chunk

    def close(self) -> None:
        file, self.file = self.file, None
        if file is not None:
            file.close()


@overload
def reduce_point(
    key: Key[A] | str,
    reducer: Callable[[A, T], Awaitable[A]],
    initial: A | Factory[A],
    /,
    *,
    with_state: Literal[False] = False,
    replay: Callable[[], Source[T | Envelope[T]]] | None = None,
    emit: Literal["items"] = "items",
    memory_limit: int | None = DEFAULT_MEMORY_LIMIT,
    name: str | None = None,
) -> StateStage[T | Envelope[T], Envelope[T]]: ...
@overload
def reduce_point(
    key: Key[A] | str,
    reducer: Callable[[A, T], A],
    initial: A | Factory[A],
    /,
    *,
    with_state: Literal[False] = False,
    replay: Callable[[], Source[T | Envelope[T]]] | None = None,
    emit: Literal["items"] = "items",
    memory_limit: int | None = DEFAULT_MEMORY_LIMIT,
    name: str | None = None,
) -> StateStage[T | Envelope[T], Envelope[T]]: ...
@overload
def reduce_point(
    key: Key[A] | str,
    reducer: Callable[[A, T, State], Awaitable[A]],
    initial: A | Factory[A],
    /,
    *,
    with_state: Literal[True],
    replay: Callable[[], Source[T | Envelope[T]]] | None = None,
    emit: Literal["items"] = "items",
    memory_limit: int | None = DEFAULT_MEMORY_LIMIT,
    name: str | None = None,
) -> StateStage[T | Envelope[T], Envelope[T]]: ...
@overload
def reduce_point(
    key: Key[A] | str,
    reducer: Callable[[A, T, State], A],
    initial: A | Factory[A],
    /,
    *,
    with_state: Literal[True],
    replay: Callable[[], Source[T | Envelope[T]]] | None = None,
    emit: Literal["items"] = "items",
    memory_limit: int | None = DEFAULT_MEMORY_LIMIT,
    name: str | None = None,
) -> StateStage[T | Envelope[T], Envelope[T]]: ...
@overload
def reduce_point(
    key: Key[A] | str,
    reducer: Callable[[A, T], Awaitable[A]],
    initial: A | Factory[A],
    /,
    *,
    with_state: Literal[False] = False,
    emit: Literal["aggregate"],
    name: str | None = None,
) -> StateStage[T | Envelope[T], Envelope[A]]: ...
@overload
def reduce_point(
    key: Key[A] | str,
    reducer: Callable[[A, T], A],
    initial: A | Factory[A],
    /,
    *,
    with_state: Literal[False] = False,
    emit: Literal["aggregate"],
    name: str | None = None,
) -> StateStage[T | Envelope[T], Envelope[A]]: ...
@overload
def reduce_point(
    key: Key[A] | str,
    reducer: Callable[[A, T, State], Awaitable[A]],
    initial: A | Factory[A],
    /,
    *,
    with_state: Literal[True],
    emit: Literal["aggregate"],
    name: str | None = None,
) -> StateStage[T | Envelope[T], Envelope[A]]: ...
@overload
def reduce_point(
    key: Key[A] | str,
    reducer: Callable[[A, T, State], A],
    initial: A | Factory[A],
    /,
    *,
    with_state: Literal[True],
    emit: Literal["aggregate"],
    name: str | None = None,
) -> StateStage[T | Envelope[T], Envelope[A]]: ...
def reduce_point(
    key: Key[Any] | str,
    reducer: Callable[..., Any],
    initial: Any,
    /,
    *,
    with_state: bool = False,
    replay: Callable[[], Source[Any]] | None = None,
    emit: Literal["items", "aggregate"] = "items",
    memory_limit: int | None = DEFAULT_MEMORY_LIMIT,
    name: str | None = None,
) -> Stage[Any, Any]:
    """A materialisation point: fold the whole stream, then give every item the result.

    The stage first consumes its entire upstream, folding the values with
    ``acc = reducer(acc, value)`` from ``initial`` (sync or async; with
    ``with_state=True``, ``reducer(acc, value, state)``), and closes it. So
    every upstream side effect has happened before the first item comes
    out, and the aggregate is in the state of every item from the first on.
    Then it re-emits every item, in order, with ``key`` set to the aggregate.

    Memory: the items are buffered. Beyond ``memory_limit`` items, they are
    pickled, in order, to an anonymous temporary file of this run (created
    with `tempfile`, deleted when the run ends, never read by anything else)
    and read back one chunk at a time, so memory stays bounded; items must
    then be picklable. ``memory_limit=None`` keeps everything in memory.
    With ``replay``, nothing is buffered: after the fold, the stage iterates
    ``replay()``, a fresh source of the same items (its side effects happen
    again), and checks that it yields as many items. With
    ``emit="aggregate"`` the stage yields a single envelope: the aggregate,
    with the last item's state (empty for an empty stream) and ``key`` set.

    Plain items are put into envelopes with the empty state.

    Args:
        key: The `Key` (or string key) under which to store the aggregate.
        reducer: Combines the aggregate so far with the next value.
        initial: The aggregate of an empty stream: an immutable value, or a
            `Factory` that makes a new one for each run (``Factory(dict)``),
            which ``reducer`` may then update in place; a mutable value such
            as ``{}`` raises `ValueError`, since every run would share it.
        with_state: Also pass the item's `State` to ``reducer``.
        replay: Returns a fresh source of the same items, read after the fold
            instead of buffering.
        emit: ``"items"`` (every item) or ``"aggregate"`` (only the aggregate).
        memory_limit: The most items held in memory before spilling to disk
            (1 or more, or None for no limit).
        name: The stage's label in statistics, events, errors and the
            history (see `map_`).

    Examples:
        >>> import asyncio
        >>> from streamkit import collect
        >>> TOTAL = Key[int]("total")
        >>> items = asyncio.run(collect([2, 3, 5] | reduce_point(TOTAL, lambda a, x: a + x, 0)))
        >>> [(item.value, item.state[TOTAL]) for item in items]
        [(2, 10), (3, 10), (5, 10)]
    """
    key_name = _check_key(key)
    check_callable(reducer, "reducer")
    check_bool(with_state, "with_state")
    if emit not in ("items", "aggregate"):
        raise ValueError(f"emit must be 'items' or 'aggregate', got {emit!r}")
    if replay is not None:
        check_callable(replay, "replay")
        if emit == "aggregate":
            raise ValueError("replay has no use with emit='aggregate', which buffers nothing")
    if memory_limit is not None:
        check_count(memory_limit, "memory_limit", minimum=1)
    known_async = is_async_callable(reducer)
    label = stage_label(name, f"reduce_point({key_name!r}, {describe(reducer)})")

    keys = _codec_keys(key)
    make = initial_maker(initial, label)
    spec = _Reduction(key_name, reducer, make, with_state, known_async, label, bool(keys))
    run = ReduceRun(spec, replay, emit, memory_limit)
    stage = transform_stage(label, run, restorable=run.restorable, keys=keys)
    return StateStage(stage.steps)


@dataclass(frozen=True, slots=True)
class ReduceRun:
    """The ``run`` of a `reduce_point` step (and, with a slot, its checkpointed run).

    In a checkpointed run the step never replays: it buffers. Control
    elements that come while it folds wait in the buffer, in their places,
    and go on as the items are re-emitted: a barrier then saves the
    aggregate, so a run resumed after it streams the rest of its items with
    that aggregate and folds nothing (with ``emit="aggregate"``, a barrier
    goes on at once and saves the aggregate so far).
    """

    spec: _Reduction
    replay: Callable[[], Source[Any]] | None
    emit: str
    memory_limit: int | None

    @property
    def key(self) -> str:
        """The state key under which the aggregate is stored."""
        return self.spec.name

    def __call__(self, upstream: AsyncIterator[Any]) -> AsyncIterator[Any]:
        return _reduce(upstream, self.spec, self.replay, self.emit, self.memory_limit, None)

    def restorable(self, slot: Slot) -> Callable[[AsyncIterator[Any]], AsyncIterator[Any]]:
        """The step's run in a checkpointed run."""

        def checkpointed(upstream: AsyncIterator[Any]) -> AsyncIterator[Any]:
            return _reduce(upstream, self.spec, None, self.emit, self.memory_limit, slot)

        return checkpointed


class _Reduction:
    __slots__ = ("initial", "keyed", "known_async", "label", "name", "reducer", "with_state")

    def __init__(
        self,
        name: str,
        reducer: Callable[..., Any],
        initial: Callable[[], Any],
        with_state: bool,
        known_async: bool,
        label: str,
        keyed: bool = False,
    ) -> None:
        self.name = name
        self.keyed = keyed
        self.reducer = reducer
        self.initial = initial  # makes the initial aggregate, once per run
        self.with_state = with_state
        self.known_async = known_async
        self.label = label


async def _reduce(
    upstream: AsyncIterator[Any],
    spec: _Reduction,
    replay: Callable[[], Source[Any]] | None,
    emit: str,
    memory_limit: int | None,
    slot: Slot | None,
) -> AsyncIterator[Any]:
    reducer, with_state, label = spec.reducer, spec.with_state, spec.label
    last_state = EMPTY
    # A checkpoint keeps ["emitting", aggregate] once the fold is done, or
    # ["folding", aggregate so far, last state] with emit="aggregate".
    restored: Any = None if slot is None else slot.restore(None)
    if restored is not None and restored[0] == "emitting":
        aggregate = _unkept(spec.name, restored[1], spec.keyed)
        async for item in _emitting(upstream, spec, aggregate, slot):
            yield item
        return
    if restored is not None:
        _, kept, last_state = restored
        accumulator = _unkept(spec.name, kept, spec.keyed)
    else:
        accumulator = spec.initial()
    awaits: bool | None = True if spec.known_async else None
    buffering = emit == "items" and replay is None
    buffer: list[Any] = []
    append = buffer.append
    spill = _Spill(min(memory_limit, _SPILL_CHUNK)) if memory_limit is not None else None
    limit = memory_limit if memory_limit is not None else sys.maxsize
    index = -1
    # With a synchronous reducer of the values alone, once the first item has
    # shown it, the fold runs in its own loop (`_fold_buffering`).
    fast = buffering and not with_state
    plain = True  # no envelope and no control element among the items so far
    try:
        # Phase 1: fold the whole upstream, then close it.
        try:
            async for item in upstream:
                if type(item) is CONTROL:
                    plain = False
                    if buffering:
                        append(item)  # goes on in its place among the items
                        continue
                    if slot is not None and item.kind == "barrier":
                        kept = _kept(spec.name, accumulator, spec.keyed)
                        slot.save(item, ["folding", kept, last_state])
                    yield item
                    continue
                index += 1
                if isinstance(item, _ENVELOPE):
                    plain = False
                    value = item.value
                    last_state = item.state
                else:
                    value = item
                    last_state = EMPTY
                try:
                    if with_state:
                        result = reducer(accumulator, value, last_state)
                    else:
                        result = reducer(accumulator, value)
                    if awaits is None:
                        awaits = inspect.isawaitable(result)
                    if awaits:
                        result = await result
                except Exception as exc:
                    annotate(exc, label, index)
                    raise
                accumulator = result
                if buffering:
                    append(item)
                    if len(buffer) > limit and spill is not None:
                        spill.write(buffer, label, spill.count)
                        buffer = []
                        append = buffer.append
                if fast and not awaits:
                    break
            else:
                fast = False
            if fast:
                accumulator, buffer, index, plain = await _fold_buffering(
                    upstream, reducer, accumulator, buffer, index, limit, spill, label, plain
                )
        finally:
            await aclose(upstream)
        # Phase 2: every item, with the aggregate in its state.
        stamp = _Stamp(spec.name, accumulator, label)
        if emit == "aggregate":
            yield Envelope(accumulator, stamp(last_state, 0))
            return
        if replay is not None:
            async for item in _replayed(replay, stamp, index + 1, label):
                yield item
            return
        items: Iterable[Any] = buffer
        if spill is not None and spill.chunks:
            items = itertools.chain(itertools.chain.from_iterable(spill.read()), buffer)
        if plain:
            # Plain items only: every one gets the same new state.
            stamped = stamp(EMPTY, 0) if index >= 0 else EMPTY
            make = new_envelope
            for item in items:
                yield make(item, stamped)
            return
        # The items of one run mostly share a few state objects: the aggregate
        # is set once per distinct state, not once per item.
        last_in: State | None = None
        last_out = EMPTY
        plain_out: State | None = None
        position = -1
        for item in items:
            kind: object = type(item)  # pyright: ignore[reportUnknownVariableType] - any item
            position += 1
            if kind is _ENVELOPE or (kind is not CONTROL and isinstance(item, _ENVELOPE)):
                state = item.state
                if state is not last_in:
                    last_out = stamp(state, position)
                    last_in = state
                yield new_envelope(item.value, last_out)
            elif kind is CONTROL:
                position -= 1
                if slot is not None and item.kind == "barrier":
                    slot.save(item, ["emitting", _kept(spec.name, accumulator, spec.keyed)])
                yield item
            else:
                if plain_out is None:
                    plain_out = stamp(EMPTY, position)
                yield new_envelope(item, plain_out)
    finally:
        if spill is not None:
            spill.close()


async def _fold_buffering(
    upstream: AsyncIterator[Any],
    reducer: Callable[[Any, Any], Any],
    accumulator: Any,
    buffer: list[Any],
    index: int,
    limit: int,
    spill: _Spill | None,
    label: str,
    plain: bool,
) -> tuple[Any, list[Any], int, bool]:
    """The rest of a buffering fold with a synchronous ``reducer(acc, value)``.

    The same steps as the general loop of `_reduce`, without its per-item
    choices; returns the aggregate, the buffer, the last item's index and
    whether every item was a plain one (no envelope, no control element).
    The compiled core (`streamkit._native`), when in use, runs the same loop.
    """
    if COMPILED:
        return await _native.fold_buffering(
            upstream,
            reducer,
            accumulator,
            buffer,
            index,
            limit,
            spill,
            label,
            plain,
            CONTROL,
            annotate,
        )
    append = buffer.append
    async for item in upstream:
        kind: object = type(item)  # pyright: ignore[reportUnknownVariableType] - any item
        if kind is CONTROL:
            plain = False
            append(item)  # goes on in its place among the items
            continue
        index += 1
        try:
            if kind is _ENVELOPE or isinstance(item, _ENVELOPE):
                plain = False
                accumulator = reducer(accumulator, item.value)
            else:
                accumulator = reducer(accumulator, item)
        except Exception as exc:
            annotate(exc, label, index)
            raise
        append(item)
        if len(buffer) > limit and spill is not None:
            spill.write(buffer, label, spill.count)
            buffer = []
            append = buffer.append
    return accumulator, buffer, index, plain


async def _emitting(
    upstream: AsyncIterator[Any], spec: _Reduction, aggregate: Any, slot: Slot | None
) -> AsyncIterator[Any]:
    """A resumed reduction point past its fold: the rest of the items, with the aggregate."""
    stamp = _Stamp(spec.name, aggregate, spec.label)
    position = -1
    try:
        async for item in upstream:
            if type(item) is CONTROL:
                if slot is not None and item.kind == "barrier":
                    slot.save(item, ["emitting", _kept(spec.name, aggregate, spec.keyed)])
                yield item
                continue
            position += 1
            yield stamp.envelope(item, position)
    finally:
        await aclose(upstream)


class _Stamp:
    """Sets the aggregate in a state (annotating a limit error with the item)."""

    __slots__ = ("label", "name", "size", "value")

    def __init__(self, name: str, value: Any, label: str) -> None:
        self.name = name
        self.value = value
        self.label = label
        self.size: int | None = None

    def __call__(self, state: State, position: int) -> State:
        try:
            if state.limits.max_bytes is not None and self.size is None:
                self.size = entry_size(self.name, self.value)
            return state._set(self.name, self.value, self.size)  # pyright: ignore[reportPrivateUsage] - the records' fast path
        except Exception as exc:
            annotate(exc, self.label, position)
            raise

    def envelope(self, item: Any, position: int) -> Envelope[Any]:
        if isinstance(item, _ENVELOPE):
            return new_envelope(item.value, self(item.state, position))
        return new_envelope(item, self(EMPTY, position))


async def _replayed(
    replay: Callable[[], Source[Any]], stamp: _Stamp, expected: int, label: str
) -> AsyncIterator[Envelope[Any]]:
    source = replay()
    iterator = open_async(source)
    position = 0
    try:
        async for item in iterator:
            if position == expected:
                raise ValueError(
                    f"{label}: replay() yields more items than the {expected} the upstream had"
                )
            yield stamp.envelope(item, position)
            position += 1
    finally:
        await aclose(iterator)
    if position != expected:
        raise ValueError(
            f"{label}: replay() yielded {position} items, but the upstream had {expected}"
        )


# --------------------------------------------------------------------------- fork, branch


def _as_envelope(item: Any) -> Envelope[Any]:
    if isinstance(item, Envelope):
        envelope = cast("Envelope[object]", item)
        return envelope
    return Envelope(item)


def _tagger(name: str) -> Stage[Any, Any]:
    def tag(item: Any) -> Envelope[Any]:
        envelope = _as_envelope(item)
        return Envelope(envelope.value, envelope.state._set(BRANCH.qualified, name))  # pyright: ignore[reportPrivateUsage] - the records' fast path

    return _raw_map(f"tag({name!r})", lambda: tag)


def _counted(position: int, name: str) -> tuple[Stage[Any, Any], Stage[Any, Any]]:
    """Stages before and after a zipped branch that check it yields one item per input."""
    counts = [0, 0]

    def count_in(item: Any) -> Any:
        counts[0] += 1
        return item

    def check_out(item: Any) -> Envelope[Any]:
        counts[1] += 1
        if counts[1] > counts[0]:
            raise ValueError(
                f"branch {name!r} (argument {position}) yielded more items than it received: "
                "combine='zip' needs branches that yield exactly one item per input"
            )
        return _as_envelope(item)

    return (
        _raw_map("count_in()", lambda: count_in),
        _raw_map("check_out()", lambda: check_out),
    )


def _zipped_state(envelopes: tuple[Envelope[Any], ...]) -> State:
    state = envelopes[0].state
    for other in envelopes[1:]:
        if other.state is not state:
            state = state.set_many(other.state)
    return state


def _check_stages(stages: Mapping[str, object], function: str) -> None:
    if not stages:
        raise TypeError(f"{function}() needs at least one stage")
    for name, each in stages.items():
        if not is_stage(each):
            raise TypeError(
                f"{function}() takes stages; branch {name!r} is {type(each).__name__}: {each!r}"
            )


def _check_branch_name(name: object) -> None:
    if not isinstance(name, str) or not name:
        raise TypeError(f"branch names must be non-empty strings, got {name!r}")


def _check_combine(combine: object) -> None:
    if combine not in ("merge", "zip"):
        raise ValueError(f"combine must be 'merge' or 'zip', got {combine!r}")


def _branches_stage(
    function: str,
    stages: dict[str, Stage[Any, Any]],
    combine: str,
    buffer: int,
    as_dict: bool,
    *,
    name: str | None,
) -> Stage[Any, Any]:
    names = list(stages)
    default = f"{function}({', '.join(f'{n}={s.label}' for n, s in stages.items())})"
    label = stage_label(name, default)
    wrap = _raw_map(f"{function}()", lambda: _as_envelope)

    def run(upstream: AsyncIterator[Any]) -> AsyncIterator[Any]:
        return _branches(upstream, names, stages, wrap, combine, buffer, as_dict, function, None)

    def restorable(slot: Slot) -> Callable[[AsyncIterator[Any]], AsyncIterator[Any]]:
        # Each branch's steps get slots of their own, under the branch's name.
        bound = {name: slot.bind(each, name) for name, each in stages.items()}

        def checkpointed(upstream: AsyncIterator[Any]) -> AsyncIterator[Any]:
            return _branches(upstream, names, bound, wrap, combine, buffer, as_dict, function, slot)

        return checkpointed

    return transform_stage(label, run, restorable=restorable)


async def _without_writes(upstream: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """A branch's input without the writes from upstream (another branch carries them).

    Every branch sees every barrier; a write (a dead letter made before the
    fork) must reach the output once.
    """
    try:
        async for item in upstream:
            if type(item) is CONTROL and item.kind == "write":
                continue
            yield item
    finally:
        await aclose(upstream)


async def _branches(
    upstream: AsyncIterator[Any],
    names: list[str],
    stages: dict[str, Stage[Any, Any]],
    wrap: Stage[Any, Any],
    combine: str,
    buffer: int,
    as_dict: bool,
    function: str,
    slot: Slot | None,
) -> AsyncIterator[Any]:
    copies: list[Source[Any]] = list(tee(upstream | wrap, len(names), max_lag=buffer))
    if slot is not None:
        copies[1:] = [_without_writes(open_async(copy)) for copy in copies[1:]]
    out: AsyncIterator[Any]
    if combine == "merge":
        out = merge_flows(
            [copy | stages[name] | _tagger(name) for copy, name in zip(copies, names, strict=True)]
        )
    else:
        flows: list[Flow[Any]] = []
        for position, (copy, name) in enumerate(zip(copies, names, strict=True)):
            before, after = _counted(position, name)
            flows.append(copy | before | stages[name] | after)
        out = zip_flows(flows, strict=True, slot=None if slot is None else slot.child("zip", "zip"))
    try:
        if combine == "merge":
            async for item in out:
                yield item
        else:
            try:
                async for row in out:
                    if type(row) is CONTROL:
                        yield row
                        continue
                    values: Any = (
                        {name: envelope.value for name, envelope in zip(names, row, strict=True)}
                        if as_dict
                        else tuple(envelope.value for envelope in row)
                    )
                    yield Envelope(values, _zipped_state(row))
            except ValueError as exc:
                if str(exc).startswith("zip_(strict=True)"):
                    exc.add_note(
                        f"streamkit: {function}(combine='zip') needs branches that yield exactly "
                        "one item per input; a branch ended with fewer items than another"
                    )
                raise
    finally:
        try:
            await aclose(out)
        finally:
            await aclose(upstream)


@overload
def fork(
    *stages: Stage[Any, Any],
    combine: Literal["merge"] = "merge",
    buffer: int = 64,
    name: str | None = None,
) -> Stage[Any, Envelope[Any]]: ...
@overload
def fork(
    *stages: Stage[Any, Any],
    combine: Literal["zip"],
    buffer: int = 64,
    name: str | None = None,
) -> Stage[Any, Envelope[tuple[Any, ...]]]: ...
def fork(
    *stages: Stage[Any, Any],
    combine: Literal["merge", "zip"] = "merge",
    buffer: int = 64,
    name: str | None = None,
) -> Stage[Any, Any]:
    """Send every item through several sub-pipelines, each with its own state.

    Items are put into envelopes and every stage receives every envelope.
    Each branch's state changes stay in that branch: a `reduce_point` in a
    branch folds that branch's items only. With ``combine="merge"`` the
    branch outputs are interleaved as they come, each tagged with its branch
    name (``"0"``, ``"1"``, ... for `fork`) under the `BRANCH` state key. With
    ``combine="zip"`` every branch must yield exactly one item per input, in
    order; the outputs are zipped into one envelope per input whose value is
    the tuple of branch values and whose state merges the branch states (a
    later branch wins a conflict).

    The branches are fed by a bounded broadcast: a branch more than
    ``buffer`` items ahead of the slowest waits for it, so the slowest
    branch paces the source. Closing the output closes every branch and the
    source; an error in one branch cancels and closes the others and
    propagates. A branch that materialises its input (`reduce_point`) needs
    ``combine="merge"``, or a ``buffer`` as long as the stream with
    ``combine="zip"``: otherwise the zip waits for it while it waits for the
    other branches.

    Args:
        *stages: The branches (one or more).
        combine: ``"merge"`` or ``"zip"``.
        buffer: How far the fastest branch may run ahead of the slowest.
        name: The stage's label in a run's statistics, events, errors and
            history (by default ``fork(0=..., 1=...)``).

    Examples:
        >>> import asyncio
        >>> from streamkit import collect, map_
        >>> both = fork(map_(lambda x: x * 10), map_(lambda x: -x), combine="zip")
        >>> [item.value for item in asyncio.run(collect([1, 2] | both))]
        [(10, -1), (20, -2)]
    """
    for position, each in enumerate(stages):
        if not is_stage(each):
            raise TypeError(f"fork() takes stages; argument {position} is {type(each).__name__}")
    if not stages:
        raise TypeError("fork() needs at least one stage")
    _check_combine(combine)
    check_count(buffer, "buffer", minimum=1)
    named = {str(position): each for position, each in enumerate(stages)}
    return _branches_stage("fork", named, combine, buffer, as_dict=False, name=name)


@overload
def branch(
    stages: Mapping[str, Stage[Any, Any]] = ...,
    /,
    *,
    combine: Literal["merge"] = "merge",
    buffer: int = 64,
    name: str | None = None,
    **named: Stage[Any, Any],
) -> Stage[Any, Envelope[Any]]: ...
@overload
def branch(
    stages: Mapping[str, Stage[Any, Any]] = ...,
    /,
    *,
    combine: Literal["zip"],
    buffer: int = 64,
    name: str | None = None,
    **named: Stage[Any, Any],
) -> Stage[Any, Envelope[dict[str, Any]]]: ...
def branch(
    stages: Mapping[str, Stage[Any, Any]] | None = None,
    /,
    *,
    combine: Literal["merge", "zip"] = "merge",
    buffer: int = 64,
    name: str | None = None,
    **named: Stage[Any, Any],
) -> Stage[Any, Any]:
    """`fork` with named branches: ``branch(totals=..., sample=...)``.

    The branches are given as keyword arguments and/or a mapping (for names
    that are not identifiers, or are ``combine``, ``buffer`` or ``name``). Merged
    items carry their branch name under `BRANCH`; with ``combine="zip"``
    the value of each output envelope is a dict of branch name to value.

    Args:
        stages: Branches by name.
        combine: ``"merge"`` or ``"zip"``.
        buffer: How far the fastest branch may run ahead of the slowest.
        name: The stage's label in a run's statistics, events, errors and
            history (by default ``branch(totals=..., ...)``).
        **named: More branches by name.

    Examples:
        >>> import asyncio
        >>> from streamkit import collect, map_
        >>> split = branch(double=map_(lambda x: x * 2), same=map_(lambda x: x))
        >>> items = asyncio.run(collect([1, 2] | split))
        >>> sorted((item.state[BRANCH], item.value) for item in items)
        [('double', 2), ('double', 4), ('same', 1), ('same', 2)]
    """
    every: dict[str, Any] = {}
    if stages is not None:
        if not isinstance(stages, Mapping):  # pyright: ignore[reportUnnecessaryIsInstance] - untyped callers
            raise TypeError(f"stages must be a mapping, got {type(stages).__name__}")
        every.update(stages)
    for branch_name in named:
        if branch_name in every:
            raise TypeError(f"branch() got branch {branch_name!r} twice")
    every.update(named)
    for branch_name in every:
        _check_branch_name(branch_name)
    _check_stages(every, "branch")
    _check_combine(combine)
    check_count(buffer, "buffer", minimum=1)
    return _branches_stage("branch", every, combine, buffer, as_dict=True, name=name)
