"""Time windows: event-time and processing-time windows with watermarks, and chunk_until.

`windowed` groups items by time (and optionally by key) into tumbling,
hopping, sliding or session windows. Time comes from each item (event time,
``time=fn``) or from the clock when an item arrives (``time="processing"``).

The **watermark** is the largest event time seen minus ``out_of_order``: the
stage's estimate that no item older than it is still to come. A window
closes, and is emitted, once the watermark reaches its end plus ``grace``.
An item whose window has already closed is *late*: it goes to ``on_late``
or ``dead_letter``, and without either the stage raises `LateItemError`.
"""

from __future__ import annotations

import heapq
import inspect
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Generic, Literal, TypeAlias, TypeVar, overload

from ._barrier import CONTROL, Control
from ._core import (
    ListStage,
    Stage,
    aclose,
    annotate,
    check_callable,
    check_count,
    check_seconds,
    describe,
    is_envelope,
    transform_stage,
)
from ._records import Envelope
from ._runtime import cancel_and_wait, current_clock, spawn, wait_done

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from ._barrier import RunFunction, Slot
    from ._failures import DeadLetterSink
    from ._records import State

T = TypeVar("T")
K = TypeVar("K")
A = TypeVar("A")
V_co = TypeVar("V_co", covariant=True)
K_co = TypeVar("K_co", covariant=True)

Emit: TypeAlias = Literal["close", "update"]
"""When `windowed` emits: once per window when it closes, or also after every change."""

_INF: Final = float("inf")


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class Window(Generic[K_co, V_co]):
    """One window's result: its key, its time span and its value.

    ``final`` is False for an early update (``emit="update"``) and True for
    the result emitted when the window closes.

    Examples:
        >>> w = Window("a", 0.0, 60.0, [1, 2])
        >>> w.key, w.end - w.start, w.value, w.final
        ('a', 60.0, [1, 2], True)
    """

    key: K_co
    """The item's key (``None`` for global windows)."""
    start: float
    """The start of the span (included)."""
    end: float
    """The end of the span (excluded, except for sliding windows)."""
    value: V_co
    """The items of the window as a list, or what ``aggregate`` made of them."""
    final: bool = True
    """Whether this is the window's result on closing (not an early update)."""


@dataclass(frozen=True, slots=True)
class Late:
    """An item that came after its window closed (what ``on_late`` receives).

    Examples:
        >>> Late(item=3, key=None, timestamp=5.0, watermark=70.0, index=9).timestamp
        5.0
    """

    item: Any
    """The item (the value of an `Envelope`)."""
    key: Any
    """Its key (``None`` for global windows)."""
    timestamp: float
    """Its time."""
    watermark: float
    """The watermark when it came."""
    index: int
    """Its position in the stage's input (0-based)."""
    state: State | None = None
    """Its state, on a stream of envelopes."""


class LateItemError(ValueError):
    """An item came after its window closed, and no ``on_late`` or ``dead_letter`` takes it."""


@dataclass(frozen=True, slots=True)
class Tumbling:
    """Fixed windows of ``size`` seconds, back to back: ``[0, size)``, ``[size, 2 size)``, ...

    Examples:
        >>> Tumbling(60).size
        60.0
    """

    size: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", check_seconds(self.size, "size"))


@dataclass(frozen=True, slots=True)
class Hopping:
    """Windows of ``size`` seconds starting every ``hop`` seconds (they overlap).

    An item belongs to about ``size / hop`` windows. ``hop`` may not exceed
    ``size`` (items would fall between windows).

    Examples:
        >>> Hopping(60, hop=15)
        Hopping(size=60.0, hop=15.0)
    """

    size: float
    hop: float

    def __post_init__(self) -> None:
        size = check_seconds(self.size, "size")
        hop = check_seconds(self.hop, "hop")
        if hop > size:
            raise ValueError(f"hop must not exceed size ({size:g}), got {hop:g}")
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "hop", hop)


@dataclass(frozen=True, slots=True)
class Sliding:
    """One window per distinct item time ``t``: the items of ``(t - size, t]``.

    A moving window: each item's window holds it and the items of the
    ``size`` seconds before it. It includes its end.

    Examples:
        >>> Sliding(10).size
        10.0
    """

    size: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", check_seconds(self.size, "size"))


@dataclass(frozen=True, slots=True)
class Session:
    """Windows of activity: an item opens ``[t, t + gap)``; overlapping windows merge.

    A session ends ``gap`` seconds after its last item. An item that falls
    into the gap between two sessions merges them.

    Examples:
        >>> Session(gap=30).gap
        30.0
    """

    gap: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "gap", check_seconds(self.gap, "gap"))


WindowKind: TypeAlias = Tumbling | Hopping | Sliding | Session
"""The kinds of window `windowed` makes."""


# --------------------------------------------------------------------------- engines


def _merge(state: State | None, new: State | None) -> State | None:
    if state is None or state is new or new is None:
        return new if state is None else state
    return state.set_many(new)


class _Engine:
    """The open windows of one run of `windowed` (one subclass per kind)."""

    strict = False
    """Whether a window closes only once the watermark passes (not reaches) its end + grace."""

    def __init__(
        self,
        grace: float,
        aggregate: Callable[[Any, Any], Any] | None,
        initial: Callable[[], Any] | None,
    ) -> None:
        self.grace = grace
        self.aggregate = aggregate
        self.initial = initial
        self.heap: list[tuple[float, float, int, Any, Any]] = []
        """``(end, start, order, key, ref)`` of every open window, earliest first."""

    def fold(self, values: list[Any]) -> Any:
        aggregate = self.aggregate
        if aggregate is None:
            return values
        assert self.initial is not None
        acc = self.initial()
        for value in values:
            acc = aggregate(acc, value)
        return acc

    def due(self, watermark: float, *, timer: bool = False) -> bool:
        """Whether the earliest open window closes at ``watermark``."""
        heap = self.heap
        if not heap:
            return False
        close = heap[0][0] + self.grace
        return watermark > close if self.strict and not timer else watermark >= close

    def next_close(self) -> float:
        """When the earliest open window closes (infinity when none is open)."""
        return self.heap[0][0] + self.grace if self.heap else _INF

    def is_late(self, timestamp: float, watermark: float) -> bool:
        raise NotImplementedError

    def add(
        self, key: Any, timestamp: float, value: Any, state: State | None, index: int, updates: bool
    ) -> list[tuple[Window[Any, Any], State | None]]:
        """Put an on-time item in its windows; with ``updates``, their values so far."""
        raise NotImplementedError

    def close(self, watermark: float, *, timer: bool = False) -> list[Any]:
        """Close the windows due at ``watermark``; their results, in closing order."""
        out: list[Any] = []
        while self.due(watermark, timer=timer):
            result = self.pop()
            if result is not None:
                out.append(result)
        return out

    def flush(self) -> list[Any]:
        """Close every open window (the end of the input)."""
        out: list[Any] = []
        while self.heap:
            result = self.pop()
            if result is not None:
                out.append(result)
        return out

    def pop(self) -> Any:
        raise NotImplementedError

    def dump(self) -> list[Any]:
        raise NotImplementedError

    def load(self, data: list[Any]) -> None:
        raise NotImplementedError


class _Fixed(_Engine):
    """Tumbling and hopping windows: each window folds its items as they come."""

    def __init__(
        self,
        size: float,
        hop: float,
        grace: float,
        aggregate: Callable[[Any, Any], Any] | None,
        initial: Callable[[], Any] | None,
    ) -> None:
        super().__init__(grace, aggregate, initial)
        self.size = size
        self.hop = hop
        self.open: dict[tuple[Any, float], list[Any]] = {}
        """``(key, start)`` -> ``[accumulator, state, order]``."""
        self.order = 0

    def is_late(self, timestamp: float, watermark: float) -> bool:
        first = (math.floor((timestamp - self.size) / self.hop) + 1) * self.hop
        return watermark >= first + self.size + self.grace

    def add(
        self, key: Any, timestamp: float, value: Any, state: State | None, index: int, updates: bool
    ) -> list[Any]:
        hop, size = self.hop, self.size
        last = math.floor(timestamp / hop) * hop
        start = last if hop == size else (math.floor((timestamp - size) / hop) + 1) * hop
        touched: list[Any] = []
        aggregate = self.aggregate
        while start <= last:
            slot = self.open.get((key, start))
            if slot is None:
                acc: Any = [] if self.initial is None else self.initial()
                slot = self.open[(key, start)] = [acc, state, self.order]
                heapq.heappush(self.heap, (start + size, start, self.order, key, None))
                self.order += 1
            else:
                slot[1] = _merge(slot[1], state)
            if aggregate is None:
                slot[0].append(value)
            else:
                slot[0] = aggregate(slot[0], value)
            if updates:
                value_now = list(slot[0]) if aggregate is None else slot[0]
                touched.append((Window(key, start, start + size, value_now, False), slot[1]))
            start += hop
        return touched

    def pop(self) -> Any:
        end, start, _, key, _ = heapq.heappop(self.heap)
        acc, state, _ = self.open.pop((key, start))
        return Window(key, start, end, acc), state

    def dump(self) -> list[Any]:
        return [[key, start, slot[0], slot[1], slot[2]] for (key, start), slot in self.open.items()]

    def load(self, data: list[Any]) -> None:
        for key, start, acc, state, order in data:
            self.open[(key, start)] = [acc, state, order]
            self.heap.append((start + self.size, start, order, key, None))
            self.order = max(self.order, order + 1)
        heapq.heapify(self.heap)


class _Span:
    """An open session: its span and its items ``(index, timestamp, value, state)``."""

    __slots__ = ("alive", "end", "items", "key", "start")

    def __init__(self, key: Any, start: float, end: float, items: list[Any]) -> None:
        self.key = key
        self.start = start
        self.end = end
        self.items = items
        self.alive = True


class _Sessions(_Engine):
    """Session windows: spans that merge when an item bridges them."""

    def __init__(
        self,
        gap: float,
        grace: float,
        aggregate: Callable[[Any, Any], Any] | None,
        initial: Callable[[], Any] | None,
    ) -> None:
        super().__init__(grace, aggregate, initial)
        self.gap = gap
        self.open: dict[Any, list[_Span]] = {}
        self.pushed = 0

    def is_late(self, timestamp: float, watermark: float) -> bool:
        return watermark >= timestamp + self.gap + self.grace

    def _push(self, span: _Span) -> None:
        # A merged span may repeat a stale entry's times: the count keeps entries apart.
        self.pushed += 1
        heapq.heappush(self.heap, (span.end, span.start, span.items[0][0], self.pushed, span))

    def _result(self, span: _Span, final: bool) -> Any:
        values = [entry[2] for entry in span.items]
        state: State | None = None
        for entry in span.items:
            state = _merge(state, entry[3])
        value = self.fold(values)
        return Window(span.key, span.start, span.end, value, final), state

    def add(
        self, key: Any, timestamp: float, value: Any, state: State | None, index: int, updates: bool
    ) -> list[Any]:
        spans = self.open.setdefault(key, [])
        start, end = timestamp, timestamp + self.gap
        items: list[Any] = [(index, timestamp, value, state)]
        kept: list[_Span] = []
        merged = False
        for span in spans:
            if span.start < end and start < span.end:
                start, end = min(start, span.start), max(end, span.end)
                items.extend(span.items)
                span.alive = False
                merged = True
            else:
                kept.append(span)
        if merged:
            items.sort(key=lambda entry: entry[0])
        new = _Span(key, start, end, items)
        kept.append(new)
        self.open[key] = kept
        self._push(new)
        return [self._result(new, False)] if updates else []

    def pop(self) -> Any:
        end, start, _, _, span = heapq.heappop(self.heap)
        if not span.alive or span.end != end or span.start != start:
            return None
        key = span.key
        span.alive = False
        spans = [each for each in self.open[key] if each is not span]
        if spans:
            self.open[key] = spans
        else:
            del self.open[key]
        return self._result(span, True)

    def dump(self) -> list[Any]:
        return [
            [span.key, span.start, span.end, [list(entry) for entry in span.items]]
            for spans in self.open.values()
            for span in spans
        ]

    def load(self, data: list[Any]) -> None:
        for key, start, end, items in data:
            span = _Span(key, start, end, [tuple(entry) for entry in items])
            self.open.setdefault(key, []).append(span)
            self._push(span)


class _Slides(_Engine):
    """Sliding windows: per key, the items still needed and the windows still open."""

    strict = True

    def __init__(
        self,
        size: float,
        grace: float,
        aggregate: Callable[[Any, Any], Any] | None,
        initial: Callable[[], Any] | None,
    ) -> None:
        super().__init__(grace, aggregate, initial)
        self.size = size
        self.items: dict[Any, list[Any]] = {}
        """key -> the items ``(index, timestamp, value, state)`` in arrival order."""
        self.ends: dict[Any, dict[float, int]] = {}
        """key -> the ends of its open windows -> the index of the first item at that time."""

    def is_late(self, timestamp: float, watermark: float) -> bool:
        return watermark > timestamp + self.grace

    def _result(self, key: Any, end: float, final: bool) -> Any:
        start = end - self.size
        inside = [entry for entry in self.items[key] if start < entry[1] <= end]
        state: State | None = None
        for entry in inside:
            state = _merge(state, entry[3])
        value = self.fold([entry[2] for entry in inside])
        return Window(key, start, end, value, final), state

    def add(
        self, key: Any, timestamp: float, value: Any, state: State | None, index: int, updates: bool
    ) -> list[Any]:
        self.items.setdefault(key, []).append((index, timestamp, value, state))
        ends = self.ends.setdefault(key, {})
        if timestamp not in ends:
            ends[timestamp] = index
            heapq.heappush(self.heap, (timestamp, timestamp - self.size, index, key, None))
        if not updates:
            return []
        touched = sorted(end for end in ends if timestamp <= end < timestamp + self.size)
        return [self._result(key, end, False) for end in touched]

    def pop(self) -> Any:
        end, _, _, key, _ = heapq.heappop(self.heap)
        result = self._result(key, end, True)
        del self.ends[key][end]
        return result

    def close(self, watermark: float, *, timer: bool = False) -> list[Any]:
        out: list[Any] = []
        keys: set[Any] = set()
        while self.due(watermark, timer=timer):
            keys.add(self.heap[0][3])
            out.append(self.pop())
        # An item on time from now on has a time >= watermark - grace: its window
        # holds no item older than that minus size, so those can go.
        floor = watermark - self.grace - self.size
        for key in keys:
            kept = [entry for entry in self.items[key] if entry[1] > floor]
            if kept or self.ends[key]:
                self.items[key] = kept
            else:
                del self.items[key]
                del self.ends[key]
        return out

    def dump(self) -> list[Any]:
        return [
            [key, [list(entry) for entry in items], [[e, i] for e, i in self.ends[key].items()]]
            for key, items in self.items.items()
        ]

    def load(self, data: list[Any]) -> None:
        for key, items, ends in data:
            self.items[key] = [tuple(entry) for entry in items]
            self.ends[key] = dict(ends)
            for end, index in ends:
                self.heap.append((end, end - self.size, index, key, None))
        heapq.heapify(self.heap)


def _engine(
    kind: WindowKind,
    grace: float,
    aggregate: Callable[[Any, Any], Any] | None,
    initial: Callable[[], Any] | None,
) -> _Engine:
    if isinstance(kind, Tumbling):
        return _Fixed(kind.size, kind.size, grace, aggregate, initial)
    if isinstance(kind, Hopping):
        return _Fixed(kind.size, kind.hop, grace, aggregate, initial)
    if isinstance(kind, Sliding):
        return _Slides(kind.size, grace, aggregate, initial)
    return _Sessions(kind.gap, grace, aggregate, initial)


def _kind_label(kind: WindowKind) -> str:
    if isinstance(kind, Tumbling):
        return f"Tumbling({kind.size:g})"
    if isinstance(kind, Hopping):
        return f"Hopping({kind.size:g}, hop={kind.hop:g})"
    if isinstance(kind, Sliding):
        return f"Sliding({kind.size:g})"
    return f"Session(gap={kind.gap:g})"


# --------------------------------------------------------------------------- windowed


@dataclass(frozen=True, slots=True)
class _Options:
    kind: WindowKind
    time: Callable[[Any], float] | None
    key: Callable[[Any], Any] | None
    aggregate: Callable[[Any, Any], Any] | None
    initial: Callable[[], Any] | None
    out_of_order: float
    grace: float
    updates: bool
    on_late: Callable[[Late], object] | None
    dead_letter: Callable[[Any], object] | None
    label: str


def _check_lag(value: object, parameter: str) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise TypeError(f"{parameter} must be a number of seconds, got {type(value).__name__}")
    seconds = float(value)
    if not 0 <= seconds < _INF:
        raise ValueError(f"{parameter} must be a finite number of seconds >= 0, got {value}")
    return seconds


@overload
def windowed(
    kind: WindowKind,
    /,
    *,
    time: Callable[[T], float] | Literal["processing"],
    key: None = None,
    aggregate: None = None,
    initial: None = None,
    out_of_order: float = 0.0,
    grace: float = 0.0,
    emit: Emit = "close",
    on_late: Callable[[Late], object] | None = None,
    dead_letter: DeadLetterSink | None = None,
) -> Stage[T, Window[None, list[T]]]: ...
@overload
def windowed(
    kind: WindowKind,
    /,
    *,
    time: Callable[[T], float] | Literal["processing"],
    key: Callable[[T], K],
    aggregate: None = None,
    initial: None = None,
    out_of_order: float = 0.0,
    grace: float = 0.0,
    emit: Emit = "close",
    on_late: Callable[[Late], object] | None = None,
    dead_letter: DeadLetterSink | None = None,
) -> Stage[T, Window[K, list[T]]]: ...
@overload
def windowed(
    kind: WindowKind,
    /,
    *,
    time: Callable[[T], float] | Literal["processing"],
    key: None = None,
    aggregate: Callable[[A, T], A],
    initial: Callable[[], A],
    out_of_order: float = 0.0,
    grace: float = 0.0,
    emit: Emit = "close",
    on_late: Callable[[Late], object] | None = None,
    dead_letter: DeadLetterSink | None = None,
) -> Stage[T, Window[None, A]]: ...
@overload
def windowed(
    kind: WindowKind,
    /,
    *,
    time: Callable[[T], float] | Literal["processing"],
    key: Callable[[T], K],
    aggregate: Callable[[A, T], A],
    initial: Callable[[], A],
    out_of_order: float = 0.0,
    grace: float = 0.0,
    emit: Emit = "close",
    on_late: Callable[[Late], object] | None = None,
    dead_letter: DeadLetterSink | None = None,
) -> Stage[T, Window[K, A]]: ...
def windowed(
    kind: WindowKind,
    /,
    *,
    time: Callable[[Any], float] | Literal["processing"],
    key: Callable[[Any], Any] | None = None,
    aggregate: Callable[[Any, Any], Any] | None = None,
    initial: Callable[[], Any] | None = None,
    out_of_order: float = 0.0,
    grace: float = 0.0,
    emit: Emit = "close",
    on_late: Callable[[Late], object] | None = None,
    dead_letter: DeadLetterSink | None = None,
) -> Stage[Any, Any]:
    """Group items into time windows, per key or globally; emit each as it closes.

    ``time=fn`` reads each item's event time (seconds, any origin);
    ``time="processing"`` takes the clock's time when the item arrives
    (`current_clock`, so it runs exactly under `streamkit.testing.virtual_clock`),
    and windows then close as the clock passes their end, between items.

    The watermark is the largest event time seen minus ``out_of_order``. A
    window closes when the watermark reaches its end plus ``grace`` (a
    sliding window: passes it), and comes out as a `Window`; at the end of
    the input every open window closes. Windows closing together come out
    by end, then start, then first item. An item whose (first) window has
    already closed is late: it is given to ``on_late`` (a `Late` record) or
    ``dead_letter`` (an `ErrorRecord` holding a `LateItemError`, saved once
    under a checkpoint, like every dead letter); without either the stage
    raises `LateItemError`. Late items never join a window.

    With ``emit="update"`` each change also emits the window's value so far
    with ``final=False`` (early results); the closing result has ``final=True``.

    On a stream of `Envelope` items the functions get the values, and each
    window comes out as one envelope: the `Window`, with the states of its
    items merged (later items win on a conflicting key).

    Args:
        kind: `Tumbling`, `Hopping`, `Sliding` or `Session`.
        time: The event time of an item, or ``"processing"``.
        key: The item's key (windows are kept per key); global windows without it.
        aggregate: Folds an item into a window's accumulator (sync);
            without it a window's value is the list of its items.
        initial: Makes a new window's accumulator (given with ``aggregate``).
        out_of_order: How far behind the latest event time an item may come
            without being late (seconds, event time only).
        grace: How long after its end (in watermark time) a window stays open.
        emit: ``"close"`` (the default) or ``"update"``.
        on_late: Called (sync or async) with a `Late` record for each late item.
        dead_letter: Where late items' error records go (a `DeadLetters`, a
            queue or a callable), instead of ``on_late``.

    Examples:
        >>> import asyncio
        >>> from streamkit import Tumbling, collect, windowed
        >>> clicks = [("a", 1), ("b", 2), ("a", 61), ("a", 5), ("a", 130)]
        >>> stage = windowed(
        ...     Tumbling(60), time=lambda c: c[1], key=lambda c: c[0],
        ...     aggregate=lambda n, c: n + 1, initial=int, out_of_order=10,
        ... )
        >>> for w in asyncio.run(collect(clicks | stage)):
        ...     print(w.key, w.start, w.end, w.value)
        a 0.0 60.0 2
        b 0.0 60.0 1
        a 60.0 120.0 1
        a 120.0 180.0 1
    """
    if not isinstance(kind, Tumbling | Hopping | Sliding | Session):  # pyright: ignore[reportUnnecessaryIsInstance] - untyped callers
        raise TypeError(
            f"kind must be Tumbling, Hopping, Sliding or Session, got {type(kind).__name__}"
        )
    if time != "processing":
        check_callable(time, "time")
    if key is not None:
        check_callable(key, "key")
    if (aggregate is None) != (initial is None):
        raise TypeError("aggregate= and initial= go together: give both or neither")
    if aggregate is not None:
        check_callable(aggregate, "aggregate")
        check_callable(initial, "initial")
    lag = _check_lag(out_of_order, "out_of_order")
    if time == "processing" and lag:
        raise ValueError("out_of_order= is for event time; processing time is never out of order")
    allowed = _check_lag(grace, "grace")
    if emit not in ("close", "update"):
        raise ValueError(f"emit must be 'close' or 'update', got {emit!r}")
    if on_late is not None:
        check_callable(on_late, "on_late")
    sink: Callable[[Any], object] | None = None
    if dead_letter is not None:
        if on_late is not None:
            raise TypeError("give on_late= or dead_letter=, not both")
        from ._failures import _sink_function  # pyright: ignore[reportPrivateUsage]

        sink = _sink_function(dead_letter, "dead_letter")
    parts = [
        _kind_label(kind),
        "time='processing'" if time == "processing" else f"time={describe(time)}",
    ]
    if key is not None:
        parts.append(f"key={describe(key)}")
    if aggregate is not None:
        parts.append(f"aggregate={describe(aggregate)}")
    if lag:
        parts.append(f"out_of_order={lag:g}")
    if allowed:
        parts.append(f"grace={allowed:g}")
    label = f"windowed({', '.join(parts)})"
    options = _Options(
        kind,
        None if time == "processing" else time,
        key,
        aggregate,
        initial,
        lag,
        allowed,
        emit == "update",
        on_late,
        sink,
        label,
    )

    def run(upstream: AsyncIterator[Any]) -> AsyncIterator[Any]:
        return _windowed(upstream, options, None)

    def restorable(slot: Slot) -> RunFunction:
        def checkpointed(upstream: AsyncIterator[Any]) -> AsyncIterator[Any]:
            return _windowed(upstream, options, slot)

        return checkpointed

    return Stage(transform_stage(label, run, restorable=restorable).steps)


def _timestamp(value: object) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise TypeError(f"time must return a number, got {type(value).__name__}")
    result = float(value)
    if math.isnan(result) or math.isinf(result):
        raise ValueError(f"time must return a finite number, got {value}")
    return result


def _out(result: tuple[Window[Any, Any], State | None], enveloped: bool) -> Any:
    window, state = result
    if enveloped:
        assert state is not None
        return Envelope(window, state)
    return window


async def _pull(iterator: AsyncIterator[Any]) -> Any:
    return await anext(iterator)


async def _windowed(
    upstream: AsyncIterator[Any], options: _Options, slot: Slot | None
) -> AsyncIterator[Any]:
    engine = _engine(options.kind, options.grace, options.aggregate, options.initial)
    time, key_of, label = options.time, options.key, options.label
    lag, updates = options.out_of_order, options.updates
    processing = time is None
    clock = current_clock()
    latest = -_INF
    """The largest event time seen (the clock's last reading in processing time)."""
    index = -1
    enveloped: bool | None = None
    if slot is not None:
        saved: list[Any] = slot.restore([])
        if saved:
            latest, index, enveloped, windows = saved
            engine.load(windows)
    pending = None
    try:
        while True:
            if processing:
                if pending is None:
                    pending = spawn(_pull(upstream))
                timeout = engine.next_close() - clock.now() if engine.heap else None
                if not await wait_done(pending, timeout, clock):
                    for result in engine.close(clock.now(), timer=True):
                        yield _out(result, bool(enveloped))
                    continue
                task, pending = pending, None
                try:
                    item = task.result()
                except StopAsyncIteration:
                    break
            else:
                try:
                    item = await anext(upstream)
                except StopAsyncIteration:
                    break
            if type(item) is CONTROL:
                if slot is not None and item.kind == "barrier":
                    slot.save(item, [latest, index, enveloped, engine.dump()])
                yield item
                continue
            index += 1
            if enveloped is None:
                enveloped = is_envelope(item)
            if enveloped:
                value, state = item.value, item.state
            else:
                value, state = item, None
            try:
                if processing:
                    timestamp = clock.now()
                    if timestamp < latest:
                        raise ValueError(
                            f"the clock went back in time ({timestamp:g} < {latest:g}): "
                            "processing-time windows need a monotonic clock"
                        )
                else:
                    timestamp = _timestamp(time(value))  # type: ignore[misc]
                key = None if key_of is None else key_of(value)
            except Exception as exc:
                annotate(exc, label, index)
                raise
            watermark = latest - lag
            if engine.is_late(timestamp, watermark):
                write = await _late(options, slot, value, key, timestamp, watermark, index, state)
                if write is not None:
                    yield write
                continue
            try:
                touched = engine.add(key, timestamp, value, state, index, updates)
            except Exception as exc:
                annotate(exc, label, index)
                raise
            for result in touched:
                yield _out(result, enveloped)
            if timestamp > latest:
                latest = timestamp
                if engine.due(latest - lag):
                    for result in engine.close(latest - lag):
                        yield _out(result, enveloped)
        for result in engine.flush():
            yield _out(result, bool(enveloped))
    finally:
        try:
            if pending is not None:
                await cancel_and_wait(pending)
        finally:
            await aclose(upstream)


async def _late(
    options: _Options,
    slot: Slot | None,
    value: Any,
    key: Any,
    timestamp: float,
    watermark: float,
    index: int,
    state: State | None,
) -> Control | None:
    """Hand a late item over; under a checkpoint a dead letter also becomes a write."""
    label = options.label
    if options.on_late is not None:
        try:
            done = options.on_late(Late(value, key, timestamp, watermark, index, state))
            if inspect.isawaitable(done):
                await done
        except Exception as exc:
            annotate(exc, label, index)
            raise
        return None
    error = LateItemError(
        f"{label}: item {index} at time {timestamp:g} came after its window closed "
        f"(watermark {watermark:g}, grace {options.grace:g})"
    )
    sink = options.dead_letter
    if sink is None:
        error.add_note("streamkit: pass on_late= or dead_letter= to take late items")
        annotate(error, label, index)
        raise error
    from ._failures import ErrorRecord, _dead_letter_write  # pyright: ignore[reportPrivateUsage]

    record: ErrorRecord[Any] = ErrorRecord(
        stage=label, index=index, item=value, exception=error, attempts=0, state=state
    )
    delivered = sink(record)
    if inspect.isawaitable(delivered):
        await delivered
    if slot is None:
        return None
    return Control("write", write=_dead_letter_write(slot, record))


# --------------------------------------------------------------------------- chunk_until


def chunk_until(
    predicate: Callable[[Any], bool],
    /,
    *,
    max_size: int | None = None,
    within: float | None = None,
) -> ListStage:
    """Group items into lists; a list closes after an item for which ``predicate`` is true.

    The item that closes a list is its last. ``max_size`` also closes a list
    at that many items; ``within`` also closes a partial list once its oldest
    item has waited that long (on `current_clock`). At the end of the input
    a partial list comes out. On a stream of `Envelope` items the predicate
    gets the values and each list is one envelope, with the items' states
    merged (later items win on a conflicting key).

    Args:
        predicate: Whether an item ends its list (sync).
        max_size: The largest list (1 or more).
        within: The longest an item may wait in a partial list, in seconds.

    Examples:
        >>> import asyncio
        >>> from streamkit import chunk_until, collect
        >>> lines = ["a", "b", ";", "c", ";", "d"]
        >>> asyncio.run(collect(lines | chunk_until(lambda s: s == ";")))
        [['a', 'b', ';'], ['c', ';'], ['d']]
    """
    check_callable(predicate, "predicate")
    size = _INF if max_size is None else check_count(max_size, "max_size", minimum=1)
    seconds = None if within is None else check_seconds(within, "within")
    parts = [describe(predicate)]
    if max_size is not None:
        parts.append(f"max_size={max_size}")
    if seconds is not None:
        parts.append(f"within={seconds:g}")
    label = f"chunk_until({', '.join(parts)})"

    def run(upstream: AsyncIterator[Any]) -> AsyncIterator[Any]:
        return _chunk_until(upstream, predicate, size, seconds, label, None)

    def restorable(slot: Slot) -> RunFunction:
        def checkpointed(upstream: AsyncIterator[Any]) -> AsyncIterator[Any]:
            return _chunk_until(upstream, predicate, size, seconds, label, slot)

        return checkpointed

    return ListStage(transform_stage(label, run, restorable=restorable).steps)


def _grouped(batch: list[Any], enveloped: bool) -> Any:
    if not enveloped:
        return batch
    from ._aggregate import enveloped_list

    return enveloped_list(batch)


async def _chunk_until(
    upstream: AsyncIterator[Any],
    predicate: Callable[[Any], bool],
    size: float,
    within: float | None,
    label: str,
    slot: Slot | None,
) -> AsyncIterator[Any]:
    clock = current_clock()
    batch: list[Any] = []
    deadline = _INF
    index = -1
    enveloped: bool | None = None
    if slot is not None:
        # A checkpoint keeps the partial list, the input index and how long its oldest item waited.
        restored: list[Any] = slot.restore([[], -1, 0.0])
        batch, index, waited = restored
        batch = list(batch)
        if batch and within is not None:
            deadline = clock.now() + max(0.0, within - waited)
    pending = None
    try:
        while True:
            if within is None:
                try:
                    item = await anext(upstream)
                except StopAsyncIteration:
                    break
            else:
                if pending is None:
                    pending = spawn(_pull(upstream))
                timeout = deadline - clock.now() if batch else None
                if not await wait_done(pending, timeout, clock):
                    ready, batch = batch, []
                    yield _grouped(ready, bool(enveloped))
                    continue
                task, pending = pending, None
                try:
                    item = task.result()
                except StopAsyncIteration:
                    break
            if type(item) is CONTROL:
                if slot is not None and item.kind == "barrier":
                    waited = (
                        within - (deadline - clock.now()) if batch and within is not None else 0.0
                    )
                    slot.save(item, [batch, index, waited])
                yield item
                continue
            index += 1
            if enveloped is None:
                enveloped = is_envelope(item)
            try:
                closes = predicate(item.value if enveloped else item)
            except Exception as exc:
                annotate(exc, label, index)
                raise
            if not batch and within is not None:
                deadline = clock.now() + within
            batch.append(item)
            if closes or len(batch) >= size:
                ready, batch = batch, []
                yield _grouped(ready, enveloped)
        if batch:
            yield _grouped(batch, bool(enveloped))
    finally:
        try:
            if pending is not None:
                await cancel_and_wait(pending)
        finally:
            await aclose(upstream)
