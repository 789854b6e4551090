"""Failure handling: retries, per-call timeouts, error strategies, error records.

Everything here wraps the *per-item function* of an item-level stage (the
function of `map_`, `filter_`, `tap` or `flat_map`, fused or concurrent) in a
`Guard`: per item, it calls the function (under a timeout when asked),
retries it with backoff while the error is retryable, and, when it gives up,
applies the stage's error strategy (``on_error``):

* ``"fail"``: the error propagates (to the consumer's pull), with notes;
* ``"skip"``: the item is dropped and counted;
* ``"collect"``: the item is dropped, its `ErrorRecord` kept in an
  `ErrorReport`;
* ``"split"``: the item's `ErrorRecord` goes to a dead-letter sink
  (`DeadLetters`, a queue, or a callable);
* ``"result"``: the stage yields `returns.result.Result` values:
  ``Success(value)`` or ``Failure(ErrorRecord)``.

Nothing is swallowed: every item a guarded call receives ends as a success,
a raised error, or a failure that is counted (`FailureStatistics`) and, except
for ``"skip"``, delivered somewhere.

Building blocks for operators (``on_error=``/``timeout=`` options):
`make_guard` validates the options into a `Guard`; `guard_stage` wraps a
one-step item stage; `guard_item` and `guard_concurrent` wrap the two kinds
of step (`ItemOp`, `ConcurrentOp`).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import traceback
from collections import deque
from dataclasses import dataclass, field
from typing import (
    TYPE_CHECKING,
    Any,
    Final,
    Generic,
    Literal,
    Protocol,
    TypeAlias,
    TypeGuard,
    TypeVar,
    cast,
    overload,
    runtime_checkable,
)

from ._backoff import Backoff, check_backoff, constant, exponential, schedule_maker
from ._barrier import CONTROL, Control, DeadLetterWrite
from ._codec import DEFAULT_CODEC
from ._concurrency import concurrent_transform, flat_elements
from ._core import (
    SKIP,
    ConcurrentOp,
    Flow,
    ItemOp,
    ShapeStage,
    Source,
    Stage,
    Step,
    Transform,
    aclose,
    annotate,
    check_count,
    check_seconds,
    is_envelope,
    is_stage,
    stage_label,
)
from ._records import Envelope, Key, Scope, State, StateLimits
from ._runtime import cancel_and_wait, current_clock, signal_maker, spawn, wait_done

if TYPE_CHECKING:
    import asyncio
    from collections.abc import AsyncIterator, Callable, Coroutine, Iterator

    from returns.result import Failure, Result, Success

    from ._barrier import Slot
    from ._codec import Codec
    from ._runtime import Clock

T = TypeVar("T")
R = TypeVar("R")
S = TypeVar("S")
A = TypeVar("A")
E = TypeVar("E")
T_co = TypeVar("T_co", covariant=True)

OnError: TypeAlias = Literal["fail", "skip", "collect", "split", "result"]
"""What a guarded stage does with an item whose call failed for the last time."""

_STRATEGIES: Final = ("fail", "skip", "collect", "split", "result")

RetryOn: TypeAlias = "type[Exception] | tuple[type[Exception], ...] | Callable[[Exception], bool]"
"""Which errors are retried: exception types, or a predicate on the error."""


@runtime_checkable
class SupportsPut(Protocol):
    """A channel with a ``put`` method (`asyncio.Queue`, `DeadLetters`, ...)."""

    def put(self, item: Any, /) -> object:
        """Put ``item`` into the channel (sync, or returning an awaitable)."""
        ...


DeadLetterSink: TypeAlias = "SupportsPut | Callable[[ErrorRecord[Any]], object]"
"""Where ``on_error="split"`` sends error records: a channel with ``put``, or a
sync or async callable."""


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class ExceptionInfo:
    """An exception as data: what an `ErrorRecord` keeps once serialized.

    Examples:
        >>> try:
        ...     int("x")
        ... except ValueError as exc:
        ...     info = ExceptionInfo.from_exception(exc)
        >>> info.type, info.message
        ('builtins.ValueError', "invalid literal for int() with base 10: 'x'")
        >>> info.traceback.splitlines()[-1]
        "ValueError: invalid literal for int() with base 10: 'x'"
    """

    type: str
    """The exception's class as ``module.QualifiedName`` (``builtins.KeyError``)."""
    message: str
    """``str(exception)``."""
    traceback: str
    """The formatted traceback, notes included (`traceback.format_exception`)."""
    notes: tuple[str, ...] = ()
    """The exception's PEP 678 notes."""

    @classmethod
    def from_exception(cls, exc: BaseException) -> ExceptionInfo:
        """Describe a live exception."""
        kind = type(exc)
        return cls(
            type=f"{kind.__module__}.{kind.__qualname__}",
            message=str(exc),
            traceback="".join(traceback.format_exception(exc)),
            notes=tuple(getattr(exc, "__notes__", ())),
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form: ``{"type", "message", "traceback", "notes"}``."""
        return {
            "type": self.type,
            "message": self.message,
            "traceback": self.traceback,
            "notes": list(self.notes),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExceptionInfo:
        """Rebuild from `to_dict`'s form; raise `ValueError` if it is malformed."""
        try:
            kind, message, text = data["type"], data["message"], data["traceback"]
            notes = data.get("notes", [])
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not an exception record: {data!r}") from exc
        fields = (kind, message, text, *notes)
        if not all(isinstance(value, str) for value in fields):
            raise ValueError(f"an exception record holds strings only: {data!r}")
        return cls(kind, message, text, tuple(notes))


_RECORD_KEYS: Final = frozenset(
    {"stage", "index", "item", "state", "exception", "attempts", "elapsed"}
)


def _has_keys(data: object, keys: frozenset[str]) -> bool:
    return isinstance(data, dict) and keys <= data.keys()


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorRecord(Generic[T_co]):
    """What is known about an item whose call failed for the last time.

    Records are made by guarded stages (``on_error="collect"``, ``"split"``,
    ``"result"``); ``exception`` is then the live exception, with its
    traceback and notes. A record read back with `from_json` / `from_dict`
    holds an `ExceptionInfo` instead: the exception as data (its type's
    qualified name, message, traceback text and notes), never re-created as a
    live exception. `info` gives the `ExceptionInfo` in both cases.

    Examples:
        >>> record = ErrorRecord(
        ...     stage="map_(fetch)", index=3, item="a", exception=KeyError("a"), attempts=2
        ... )
        >>> record.info.type, record.attempts
        ('builtins.KeyError', 2)
        >>> restored = ErrorRecord.from_json(record.to_json())
        >>> restored == record.replace(exception=record.info)
        True
    """

    stage: str
    """The label of the stage that gave up."""
    index: int
    """The item's position in that stage's input (0-based)."""
    item: T_co
    """The input item."""
    exception: BaseException | ExceptionInfo
    """The last attempt's error (an `ExceptionInfo` once serialized)."""
    attempts: int
    """How many calls were made for this item."""
    elapsed: float = 0.0
    """Seconds (on the stage's clock) from the first call to giving up."""
    state: object | None = None
    """The item's pipeline state on envelope streams; None on plain streams."""

    @property
    def info(self) -> ExceptionInfo:
        """The exception as data, whether it is live or restored."""
        exception = self.exception
        if isinstance(exception, ExceptionInfo):
            return exception
        return ExceptionInfo.from_exception(exception)

    def replace(self, **changes: Any) -> ErrorRecord[T_co]:
        """A copy with some fields changed (`dataclasses.replace`)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """A dict of plain fields; the item and state are included as they are."""
        return {
            "stage": self.stage,
            "index": self.index,
            "item": self.item,
            "state": self.state,
            "exception": self.info.to_dict(),
            "attempts": self.attempts,
            "elapsed": self.elapsed,
        }

    def to_json(
        self, *, codec: Codec[Any] = DEFAULT_CODEC, default: Callable[[Any], Any] | None = repr
    ) -> str:
        """Serialize to JSON, the item and state through ``codec``.

        The item and state are encoded as a checkpointed run encodes its
        state and dead letters, so `from_json` (with the same codec) gives
        the item back, of its own type, ready to replay.

        Args:
            codec: Encodes the item and the state (a state as a dict of its
                keys); `DEFAULT_CODEC` by default.
            default: Turns an item or state the codec cannot encode into
                something JSON can hold; `repr` by default (such an item
                cannot be replayed). None makes them raise `TypeError`.
        """
        return json.dumps(self.to_encoded(codec=codec, default=default), sort_keys=True)

    def to_encoded(
        self, *, codec: Codec[Any] = DEFAULT_CODEC, default: Callable[[Any], Any] | None = repr
    ) -> dict[str, Any]:
        """`to_dict`'s form in plain JSON values: the item and state through ``codec``.

        This is the form `to_json` writes and a checkpointed run's store
        keeps as a dead letter's `DeadLetterRecord.record`; `from_encoded`
        reads it back. ``codec`` and ``default`` are as for `to_json`.
        """
        data = self.to_dict()
        data["item"] = _encode_with(codec, self.item, default, f"the item of {self.stage}")
        state = self.state
        if state is not None:
            plain: object = dict(state.items()) if isinstance(state, State) else state
            data["state"] = _encode_with(codec, plain, default, f"the state of {self.stage}")
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ErrorRecord[Any]:
        """Rebuild a record from `to_dict`'s form; raise `ValueError` if malformed."""
        if not _has_keys(data, _RECORD_KEYS):
            raise ValueError(f"an error record needs the keys {sorted(_RECORD_KEYS)}: {data!r}")
        stage, index, attempts, elapsed = (
            data["stage"],
            data["index"],
            data["attempts"],
            data["elapsed"],
        )
        if not isinstance(stage, str):
            raise ValueError(f"stage must be a string, got {stage!r}")
        for name, value in (("index", index), ("attempts", attempts)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"{name} must be an int, got {value!r}")
        if not isinstance(elapsed, int | float) or isinstance(elapsed, bool):
            raise ValueError(f"elapsed must be a number, got {elapsed!r}")
        return cls(
            stage=stage,
            index=index,
            item=data["item"],
            state=data["state"],
            exception=ExceptionInfo.from_dict(data["exception"]),
            attempts=attempts,
            elapsed=float(elapsed),
        )

    @classmethod
    def from_encoded(
        cls, data: dict[str, Any], *, codec: Codec[Any] = DEFAULT_CODEC
    ) -> ErrorRecord[Any]:
        """Rebuild a record from `to_encoded`'s form, decoding the item and state.

        A dead letter a checkpointed run saved (`DeadLetterRecord.record`) is
        in this form, encoded with the run's codec: pass that codec to get
        the item back, of its own type, to replay it. The state comes back as
        a `State`. Raise `ValueError` if ``data`` is malformed, `CodecError`
        if the codec cannot decode it.
        """
        if not _has_keys(data, _RECORD_KEYS):
            raise ValueError(f"an error record needs the keys {sorted(_RECORD_KEYS)}: {data!r}")
        decoded = dict(data)
        decoded["item"] = codec.decode(data["item"])
        if data["state"] is not None:
            state: object = codec.decode(data["state"])
            if isinstance(state, dict):
                keys = cast("dict[object, Any]", state)
                if all(isinstance(key, str) for key in keys):
                    state = State(cast("dict[str, Any]", keys), limits=StateLimits.UNLIMITED)
            decoded["state"] = state
        return cls.from_dict(decoded)

    @classmethod
    def from_json(cls, text: str | bytes, *, codec: Codec[Any] = DEFAULT_CODEC) -> ErrorRecord[Any]:
        """Rebuild a record from `to_json`'s output (`from_encoded` of its JSON)."""
        data: object = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"an error record is a JSON object, got {type(data).__name__}")
        return cls.from_encoded(cast("dict[str, Any]", data), codec=codec)


def _encode_with(
    codec: Codec[Any], value: object, default: Callable[[Any], Any] | None, what: str
) -> Any:
    """``value`` through ``codec``, else through ``default`` (None: a `TypeError`)."""
    try:
        return codec.encode(value)
    except (TypeError, ValueError) as exc:
        if default is None:
            raise TypeError(f"{what} cannot be encoded: {exc}") from exc
    fallback = default(value)
    try:
        return codec.encode(fallback)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{what} cannot be encoded, even as {fallback!r}: {exc}") from exc


# --------------------------------------------------------------------------- statistics


@dataclass(frozen=True, slots=True)
class FailureStatistics:
    """A snapshot of what guarded calls did (see `ErrorReport.statistics`).

    Every item that entered a guarded call is, at any moment, in exactly one
    of: ``succeeded``, ``failed`` (= ``raised + skipped + collected +
    dead_lettered + returned``), ``cancelled``, or still ``in_flight``.

    Examples:
        >>> stats = FailureStatistics(items=3, attempts=5, retries=2, succeeded=2, skipped=1)
        >>> stats.failed, stats.in_flight
        (1, 0)
    """

    items: int = 0
    """Items that entered the guarded call."""
    attempts: int = 0
    """Calls of the function, first attempts and retries."""
    retries: int = 0
    """Attempts after the first (``attempts - items`` once all are done)."""
    timeouts: int = 0
    """Attempts ended by the per-call timeout."""
    succeeded: int = 0
    """Items whose call finally succeeded."""
    recovered: int = 0
    """Succeeded items that needed more than one attempt."""
    raised: int = 0
    """Failed items whose error propagated (``"fail"``, or a failing sink)."""
    skipped: int = 0
    """Failed items dropped (``"skip"``)."""
    collected: int = 0
    """Failed items recorded in the report (``"collect"``)."""
    dead_lettered: int = 0
    """Failed items delivered to the dead-letter sink (``"split"``)."""
    returned: int = 0
    """Failed items yielded as ``Failure(record)`` (``"result"``)."""
    cancelled: int = 0
    """Items whose call or backoff was interrupted by a cancellation."""

    @property
    def failed(self) -> int:
        """Items given up on, however they were handled."""
        return self.raised + self.skipped + self.collected + self.dead_lettered + self.returned

    @property
    def in_flight(self) -> int:
        """Items whose call has not ended yet."""
        return self.items - self.succeeded - self.failed - self.cancelled

    def __add__(self, other: FailureStatistics) -> FailureStatistics:
        if not isinstance(other, FailureStatistics):  # pyright: ignore[reportUnnecessaryIsInstance] - untyped callers
            return NotImplemented
        return FailureStatistics(
            *(
                getattr(self, name.name) + getattr(other, name.name)
                for name in dataclasses.fields(self)
            )
        )


class _Counters:
    """The live counters behind `FailureStatistics` (one per stage label)."""

    __slots__ = tuple(f.name for f in dataclasses.fields(FailureStatistics))

    def __init__(self) -> None:
        for name in self.__slots__:
            setattr(self, name, 0)

    if TYPE_CHECKING:
        items: int
        attempts: int
        retries: int
        timeouts: int
        succeeded: int
        recovered: int
        raised: int
        skipped: int
        collected: int
        dead_lettered: int
        returned: int
        cancelled: int

    def snapshot(self) -> FailureStatistics:
        return FailureStatistics(*(getattr(self, name) for name in self.__slots__))


class ErrorReport:
    """A live report of guarded stages: their counters and collected records.

    Pass one as ``report=`` to `with_retry` (or to an operator's guard) and
    hold on to it: it is updated while the pipeline runs and can be read at
    any time, during or after the run. One report may serve several stages;
    counters are kept per stage label. Without ``report=``, a guarded stage
    makes its own report, reachable with `error_report`. A report keeps
    counting across runs of its stage; use `clear` or a new report per run.

    The records of ``on_error="collect"`` are kept in order of failure (all
    of them: the list is unbounded). Updates happen on the event loop, never
    across an ``await``, so readers on the same loop always see a consistent
    report; it is not meant to be shared between threads.

    Examples:
        >>> import asyncio
        >>> from streamkit import collect, map_
        >>> report = ErrorReport()
        >>> inverse = with_retry(
        ...     map_(lambda x: 1 / x), attempts=1, on_error="collect", report=report
        ... )
        >>> asyncio.run(collect([1, 0, 2] | inverse))
        [1.0, 0.5]
        >>> [(r.index, r.item, r.info.type) for r in report.records]
        [(1, 0, 'builtins.ZeroDivisionError')]
        >>> report.statistics().collected
        1
    """

    __slots__ = ("_counters", "_records")

    def __init__(self) -> None:
        self._records: list[ErrorRecord[Any]] = []
        self._counters: dict[str, _Counters] = {}

    def __repr__(self) -> str:
        stats = self.statistics()
        return (
            f"<ErrorReport stages={len(self._counters)} records={len(self._records)} "
            f"items={stats.items} failed={stats.failed} retries={stats.retries}>"
        )

    @property
    def records(self) -> tuple[ErrorRecord[Any], ...]:
        """The collected error records, oldest first (a snapshot)."""
        return tuple(self._records)

    @property
    def stages(self) -> tuple[str, ...]:
        """The labels of the stages that reported here."""
        return tuple(self._counters)

    def statistics(self, stage: str | None = None) -> FailureStatistics:
        """The counters of one stage (by label), or the totals of all.

        Raises:
            KeyError: No stage with that label reported here.
        """
        if stage is not None:
            return self._counters[stage].snapshot()
        total = FailureStatistics()
        for counters in self._counters.values():
            total += counters.snapshot()
        return total

    def add(self, record: ErrorRecord[Any]) -> None:
        """Collect a record (what ``on_error="collect"`` does for each failure)."""
        if not isinstance(record, ErrorRecord):  # pyright: ignore[reportUnnecessaryIsInstance] - untyped callers
            raise TypeError(f"an ErrorReport collects ErrorRecords, got {type(record).__name__}")
        self._records.append(record)

    def raise_if_failed(self, message: str = "items failed") -> None:
        """Raise an `ExceptionGroup` of the collected live exceptions, if any.

        Restored records (holding an `ExceptionInfo`) are represented by a
        `RuntimeError` carrying their traceback text.
        """
        if not self._records:
            return
        errors: list[Exception] = []
        for record in self._records:
            exception = record.exception
            if isinstance(exception, Exception):
                errors.append(exception)
            else:
                errors.append(
                    RuntimeError(f"{record.stage}, item {record.index}:\n{record.info.traceback}")
                )
        raise ExceptionGroup(f"{message}: {len(errors)}", errors)

    def clear(self) -> None:
        """Forget every record and counter."""
        self._records.clear()
        self._counters.clear()

    def _stage_counters(self, stage: str) -> _Counters:
        """The live counters of ``stage`` (created on first use; internal)."""
        counters = self._counters.get(stage)
        if counters is None:
            counters = self._counters[stage] = _Counters()
        return counters


# --------------------------------------------------------------------------- dead letters


class DeadLetters:
    """An async channel of error records: a dead-letter sink and an output stream.

    Give it as ``dead_letter=`` with ``on_error="split"``: failed items' records
    are put into it, and it is an async iterable over them, a second output of
    the pipeline. Consume it concurrently with the main flow, or after the run.
    Iteration ends when the channel is closed (`close`) and empty; whoever
    runs the pipeline closes it when the pipeline is done.

    With ``maxsize=0`` (the default) it is unbounded, so a pipeline never
    waits on it and it can be read after the run; with ``maxsize=n`` a full
    channel makes the failing item's stage wait (backpressure), so it must
    then be consumed concurrently.

    Examples:
        >>> import asyncio
        >>> from streamkit import collect, map_
        >>> async def main() -> tuple[list[float], list[object]]:
        ...     dead = DeadLetters()
        ...     inverse = with_retry(
        ...         map_(lambda x: 1 / x), attempts=2, backoff=constant(0),
        ...         on_error="split", dead_letter=dead,
        ...     )
        ...     good = await collect([1, 0, 4] | inverse)
        ...     dead.close()
        ...     return good, [(r.item, r.attempts) async for r in dead]
        >>> asyncio.run(main())
        ([1.0, 0.25], [(0, 2)])
    """

    __slots__ = ("_closed", "_getters", "_items", "_maxsize", "_putters")

    def __init__(self, maxsize: int = 0) -> None:
        self._maxsize = check_count(maxsize, "maxsize", minimum=0)
        self._items: deque[ErrorRecord[Any]] = deque()
        self._closed = False
        self._getters: list[asyncio.Future[None]] = []
        self._putters: list[asyncio.Future[None]] = []

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<DeadLetters {state} pending={len(self._items)} maxsize={self._maxsize}>"

    @property
    def closed(self) -> bool:
        """Whether `close` was called."""
        return self._closed

    @property
    def pending(self) -> int:
        """How many records wait to be read."""
        return len(self._items)

    def _full(self) -> bool:
        return 0 < self._maxsize <= len(self._items)

    def put_nowait(self, record: ErrorRecord[Any]) -> None:
        """Add a record without waiting.

        Raises:
            RuntimeError: The channel is closed, or bounded and full.
        """
        if self._closed:
            raise RuntimeError(f"cannot put into a closed {type(self).__name__}: {record!r}")
        if self._full():
            raise RuntimeError(f"{type(self).__name__} is full (maxsize={self._maxsize})")
        self._items.append(record)
        _wake_all(self._getters)

    async def put(self, record: ErrorRecord[Any]) -> None:
        """Add a record, waiting while a bounded channel is full.

        Raises:
            RuntimeError: The channel is (or gets) closed.
        """
        while self._full() and not self._closed:
            await _wait_on(self._putters)
        self.put_nowait(record)

    def close(self) -> None:
        """No more records: iteration ends once those pending are read."""
        self._closed = True
        _wake_all(self._getters)
        _wake_all(self._putters)

    def drain(self) -> list[ErrorRecord[Any]]:
        """Take every pending record now, without waiting."""
        items = list(self._items)
        self._items.clear()
        _wake_all(self._putters)
        return items

    def __aiter__(self) -> AsyncIterator[ErrorRecord[Any]]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[ErrorRecord[Any]]:
        items = self._items
        while True:
            if items:
                record = items.popleft()
                _wake_all(self._putters)
                yield record
                continue
            if self._closed:
                return
            await _wait_on(self._getters)


async def _wait_on(waiters: list[asyncio.Future[None]]) -> None:
    signal = signal_maker()()
    waiters.append(signal)
    try:
        await signal
    finally:
        if signal in waiters:
            waiters.remove(signal)


def _wake_all(waiters: list[asyncio.Future[None]]) -> None:
    for signal in waiters:
        if not signal.done():
            signal.set_result(None)
    waiters.clear()


# --------------------------------------------------------------------------- timeout


async def call_with_timeout(call: Coroutine[Any, Any, T], seconds: float, clock: Clock) -> T:
    """Await ``call`` for at most ``seconds`` on ``clock``; `TimeoutError` after that.

    The call runs as a task. On timeout it is cancelled and awaited before
    `TimeoutError` is raised; if the caller is cancelled, so is the call.
    Only awaits can be interrupted: a synchronous function runs to its end.
    """
    task = spawn(call)
    try:
        done = await wait_done(task, seconds, clock)
    except BaseException:
        await cancel_and_wait(task)
        raise
    if not done:
        await cancel_and_wait(task)
        raise TimeoutError(f"the call did not finish within {seconds:g} s")
    return task.result()


# --------------------------------------------------------------------------- guard


def _retry_predicate(retry_on: object) -> Callable[[Exception], bool]:
    def is_error_type(value: object) -> bool:
        return isinstance(value, type) and issubclass(value, BaseException)

    types: tuple[type[BaseException], ...] | None = None
    if is_error_type(retry_on):
        types = (cast("type[BaseException]", retry_on),)
    elif isinstance(retry_on, tuple):
        members = cast("tuple[object, ...]", retry_on)
        if not all(is_error_type(member) for member in members):
            raise TypeError(f"retry_on must hold exception types, got {retry_on!r}")
        types = cast("tuple[type[BaseException], ...]", members)
    elif callable(retry_on):
        return cast("Callable[[Exception], bool]", retry_on)
    else:
        raise TypeError(
            "retry_on must be an exception type, a tuple of them, or a predicate, "
            f"got {type(retry_on).__name__}: {retry_on!r}"
        )
    for kind in types:
        if not issubclass(kind, Exception):
            raise TypeError(
                f"retry_on cannot include {kind.__name__}: only Exception subclasses are "
                "retried (cancellation and other BaseExceptions never are)"
            )
    matched = types
    return lambda exc: isinstance(exc, matched)


def _sink_function(sink: object, parameter: str) -> Callable[[Any], object]:
    put = getattr(sink, "put", None)
    if put is not None and callable(put):
        return cast("Callable[[Any], object]", put)
    if callable(sink):
        return cast("Callable[[Any], object]", sink)
    raise TypeError(
        f"{parameter} must be a callable or a channel with put(), got {type(sink).__name__}"
    )


_NO_WAIT: Final = constant(0)


class RetryObserver:
    """Told about each backoff wait of a guarded step (a `streamkit.Run` sets one).

    The guard knows nothing of runs: a run sets an observer on its own copy
    of the guard (`Guard.observer`). The base class ignores what it is told.
    """

    __slots__ = ()

    async def retrying(self, index: int, attempt: int, delay: float, error: Exception) -> None:
        """Before the wait: ``attempt`` (1-based) on item ``index`` failed with ``error``."""

    def retried(self) -> None:
        """After the wait, however it ended."""


@dataclass(frozen=True, slots=True)
class Guard:
    """The validated failure options of one guarded stage (build with `make_guard`)."""

    label: str
    attempts: int = 1
    backoff: Backoff = _NO_WAIT
    retry_on: RetryOn = Exception
    deadline: float | None = None
    timeout: float | None = None
    on_error: OnError = "fail"
    dead_letter: DeadLetterSink | None = None
    report: ErrorReport = field(default_factory=ErrorReport)
    report_given: bool = False
    """Whether ``report`` was given by the user (else made for this stage)."""
    retryable: Callable[[Exception], bool] = field(init=False, repr=False, compare=False)
    sink: Callable[[Any], object] | None = field(init=False, repr=False, compare=False)
    observer: RetryObserver | None = field(default=None, repr=False, compare=False)
    """Told about each backoff wait (set by a run on its copy of the guard)."""
    staging: Slot | None = field(default=None, repr=False, compare=False)
    """Set by a checkpointed run on its copy of the guard: a dead-lettered item
    also becomes a write, committed with the next checkpoint."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "retryable", _retry_predicate(self.retry_on))
        sink = None
        if self.dead_letter is not None:
            sink = _sink_function(self.dead_letter, "dead_letter")
        object.__setattr__(self, "sink", sink)

    def run(
        self, kind: str, fn: Callable[..., Any], *, with_state: bool = False
    ) -> Callable[[Any], Any]:
        """The per-item function for one run: ``item -> awaitable outcome``.

        ``kind`` is that of the wrapped step (map, filter, tap, flat_map);
        the outcome is the value to pass on, `SKIP` to drop the item (a list
        for flat_map), or a `Result` with ``on_error="result"``. Given an
        `Envelope`, the function gets its value (and state, ``with_state``)
        and the outcome comes back in an envelope whose state records this
        stage's attempts (see `attempts_key`).
        """
        return _GuardRun(self, kind, fn, with_state).call


def _check_optional_seconds(value: object, parameter: str) -> float | None:
    return None if value is None else check_seconds(value, parameter)


def attempts_key(label: str) -> Key[dict[str, Any]]:
    """The state key under which a guarded stage records each item's attempts.

    On envelope streams, every item that passes a stage with retries or an
    error strategy carries, under ``Key("attempts", scope=Scope.stage(label))``,
    the stage's node state for that item: ``status`` ("succeeded" or
    "failed"), ``attempts``, ``retry_count``, the last ``error`` (type and
    message, or None) and ``execution_time`` in seconds.

    Examples:
        >>> attempts_key("map_(fetch)").qualified
        'stage:map_(fetch)/attempts'
    """
    return Key[dict[str, Any]]("attempts", scope=Scope.stage(label))


def make_guard(
    label: str,
    *,
    attempts: int = 1,
    backoff: Backoff | None = None,
    retry_on: RetryOn = Exception,
    deadline: float | None = None,
    timeout: float | None = None,
    on_error: OnError = "fail",
    dead_letter: DeadLetterSink | None = None,
    report: ErrorReport | None = None,
) -> Guard:
    """Validate failure options into a `Guard`; errors name the parameter."""
    check_count(attempts, "attempts", minimum=1)
    checked_backoff = _NO_WAIT if backoff is None else check_backoff(backoff)
    if on_error not in _STRATEGIES:
        choices = ", ".join(map(repr, _STRATEGIES))
        raise ValueError(f"on_error must be one of {choices}; got {on_error!r}")
    if on_error == "split" and dead_letter is None:
        raise TypeError(
            "on_error='split' needs dead_letter= (a DeadLetters, a queue or a callable)"
        )
    if on_error != "split" and dead_letter is not None:
        raise TypeError(f"dead_letter= is used with on_error='split' only, not {on_error!r}")
    if report is not None and not isinstance(report, ErrorReport):  # pyright: ignore[reportUnnecessaryIsInstance] - untyped callers
        raise TypeError(f"report must be an ErrorReport, got {type(report).__name__}")
    return Guard(
        label=label,
        attempts=attempts,
        backoff=checked_backoff,
        retry_on=retry_on,
        deadline=_check_optional_seconds(deadline, "deadline"),
        timeout=_check_optional_seconds(timeout, "timeout"),
        on_error=on_error,
        dead_letter=dead_letter,
        report=ErrorReport() if report is None else report,
        report_given=report is not None,
    )


class _GuardRun:
    """One run of a guarded function: the item index, clock and counters."""

    __slots__ = (
        "attempts",
        "clock",
        "counters",
        "deadline",
        "failure",
        "fn",
        "guard",
        "index",
        "kind",
        "make_schedule",
        "notes",
        "result",
        "state_key",
        "success",
        "timeout",
        "with_state",
    )

    def __init__(
        self, guard: Guard, kind: str, fn: Callable[..., Any], with_state: bool = False
    ) -> None:
        self.guard = guard
        self.kind = kind
        self.fn = fn
        self.with_state = with_state
        self.state_key = attempts_key(guard.label)
        self.index = 0
        self.clock = current_clock()
        # The report's counters are private to this module, not to the class.
        self.counters = guard.report._stage_counters(guard.label)  # pyright: ignore[reportPrivateUsage]
        self.make_schedule = schedule_maker(guard.backoff)
        self.attempts = guard.attempts
        self.deadline = guard.deadline
        self.timeout = guard.timeout
        self.result = guard.on_error == "result"
        if self.result:
            self.success, self.failure, _ = _result_types()
        self.notes = guard.attempts > 1 or guard.on_error != "fail"

    def call(self, *args: Any) -> Coroutine[Any, Any, Any]:
        # A plain function: the index is taken when the call is made, in
        # input order, even when concurrent calls start their work later.
        # ``args`` is ``(item,)``, or ``(value, state)`` for a step that
        # takes the state on envelope streams (``ItemOp.with_state``).
        index = self.index
        self.index = index + 1
        if len(args) == 1 and is_envelope(args[0]):
            return self._enveloped(args[0], index)
        return self._item(args, index)

    async def _enveloped(self, envelope: Envelope[Any], index: int) -> Any:
        """Run one envelope's value and record the attempts in its state."""
        value, state = envelope.value, envelope.state
        args = (value, state) if self.with_state else (value,)
        trace: list[Any] = []
        outcome = await self._item(args, index, trace, state)
        attempts, error, elapsed, status = trace
        record = {
            "status": status,
            "attempts": attempts,
            "retry_count": attempts - 1,
            "error": None if error is None else f"{type(error).__name__}: {error}",
            "execution_time": elapsed,
        }
        if outcome is SKIP or type(outcome) is CONTROL:
            return outcome
        kind = self.kind
        if kind == "flat_map":
            recorded = state.set(self.state_key, record)
            return [
                element if type(element) is CONTROL else Envelope(element, recorded)
                for element in outcome
            ]
        if kind != "map":  # filter, tap: the outcome is the item's value
            return Envelope(value, state.set(self.state_key, record))
        if self.with_state and is_envelope(outcome):
            return Envelope(outcome.value, outcome.state.set(self.state_key, record))
        return Envelope(outcome, state.set(self.state_key, record))

    async def _once(self, args: tuple[Any, ...]) -> Any:
        result = self.fn(*args)
        if self.kind == "flat_map":
            # The retried unit of a flat_map is the call *and* reading its
            # result: elements are buffered, so a retry never re-emits any.
            return await flat_elements(result, self.guard.label)
        if inspect.isawaitable(result):
            result = await result
        return result

    async def _timed(self, args: tuple[Any, ...]) -> Any:
        # call_with_timeout, counting the timeouts.
        assert self.timeout is not None
        task = spawn(self._once(args))
        try:
            done = await wait_done(task, self.timeout, self.clock)
        except BaseException:
            await cancel_and_wait(task)
            raise
        if not done:
            await cancel_and_wait(task)
            self.counters.timeouts += 1
            raise TimeoutError(
                f"{self.guard.label}: the call did not finish within {self.timeout:g} s"
            )
        return task.result()

    async def _item(
        self,
        args: tuple[Any, ...],
        index: int,
        trace: list[Any] | None = None,
        state: State | None = None,
    ) -> Any:
        # ``trace``, when given, receives [attempts, last error, elapsed, status].
        counters = self.counters
        clock = self.clock
        counters.items += 1
        started = clock.now()
        schedule: Iterator[float] | None = None
        attempt = 0
        last_error: Exception | None = None
        while True:
            attempt += 1
            counters.attempts += 1
            if attempt > 1:
                counters.retries += 1
            try:
                if self.timeout is None:
                    value = await self._once(args)
                else:
                    value = await self._timed(args)
            except Exception as exc:
                error = last_error = exc
            except BaseException:
                counters.cancelled += 1
                raise
            else:
                counters.succeeded += 1
                if attempt > 1:
                    counters.recovered += 1
                if trace is not None:
                    trace[:] = [attempt, last_error, clock.now() - started, "succeeded"]
                return self._success(args[0], value)
            delay = 0.0
            try:
                reason = None
                if attempt >= self.attempts:
                    reason = (
                        "no retry allowed" if attempt == 1 else f"all {attempt} attempts failed"
                    )
                elif not self.guard.retryable(error):
                    reason = f"not retried: retry_on does not match {type(error).__name__}"
                else:
                    if schedule is None:
                        schedule = self.make_schedule()
                    delay = next(schedule)
                    if self.deadline is not None and clock.now() - started + delay > self.deadline:
                        reason = (
                            f"waiting {delay:g} s more for another attempt would pass the "
                            f"deadline of {self.deadline:g} s"
                        )
            except Exception as bad:
                # A failing retry_on predicate or backoff is a bug: it surfaces.
                counters.raised += 1
                bad.add_note(f"streamkit: {self.guard.label} failed deciding whether to retry")
                raise bad from error
            if reason is None:
                observer = self.guard.observer
                try:
                    if observer is not None:
                        await observer.retrying(index, attempt, delay, error)
                    await clock.sleep(delay)
                except BaseException:
                    counters.cancelled += 1
                    raise
                finally:
                    if observer is not None:
                        observer.retried()
                continue
            elapsed = clock.now() - started
            if trace is not None:
                trace[:] = [attempt, error, elapsed, "failed"]
            return await self._give_up(args, index, error, attempt, elapsed, reason, state)

    def _success(self, item: Any, value: Any) -> Any:
        kind = self.kind
        if kind == "map":
            if value is SKIP:
                return SKIP
        elif kind == "filter":
            if not value:
                return SKIP
            value = item
        elif kind == "tap":
            value = item
        elif self.result:  # flat_map
            return [self.success(element) for element in value]
        return self.success(value) if self.result else value

    async def _give_up(
        self,
        args: tuple[Any, ...],
        index: int,
        error: Exception,
        attempts: int,
        elapsed: float,
        reason: str,
        state: State | None = None,
    ) -> Any:
        guard = self.guard
        counters = self.counters
        if self.notes:
            plural = "attempt" if attempts == 1 else "attempts"
            error.add_note(
                f"streamkit: {guard.label} gave up on item {index} after {attempts} {plural} "
                f"in {elapsed:.6g} s ({reason})"
            )
        strategy = guard.on_error
        if strategy == "fail":
            counters.raised += 1
            raise error
        dropped: Any = [] if self.kind == "flat_map" else SKIP
        if strategy == "skip":
            counters.skipped += 1
            return dropped
        record: ErrorRecord[Any] = ErrorRecord(
            stage=guard.label,
            index=index,
            item=args[0],
            exception=error,
            attempts=attempts,
            elapsed=elapsed,
            state=state if state is not None else (args[1] if len(args) > 1 else None),
        )
        if strategy == "collect":
            guard.report.add(record)
            counters.collected += 1
            return dropped
        if strategy == "result":
            counters.returned += 1
            failure = self.failure(record)
            return [failure] if self.kind == "flat_map" else failure
        sink = guard.sink
        assert sink is not None  # make_guard checks it
        try:
            delivered = sink(record)
            if inspect.isawaitable(delivered):
                await delivered
        except Exception as sink_error:
            counters.raised += 1
            sink_error.add_note(
                f"streamkit: the dead_letter sink of {guard.label} failed on the record of "
                f"item {index}; the item's own error is chained as __cause__"
            )
            raise sink_error from error
        except BaseException:
            counters.cancelled += 1
            raise
        counters.dead_lettered += 1
        staging = guard.staging
        if staging is not None:
            write = Control("write", write=_dead_letter_write(staging, record))
            return [write] if self.kind == "flat_map" else write
        return dropped


def _dead_letter_write(slot: Slot, record: ErrorRecord[Any]) -> DeadLetterWrite:
    """A dead-lettered item as a write of a checkpointed run (encoded with its codec)."""
    state: Any = record.state
    data = {
        "stage": record.stage,
        "index": record.index,
        "item": slot.encode(record.item, f"the dead-lettered item {record.index}"),
        "state": None
        if state is None
        else slot.encode(
            dict(state) if isinstance(state, State) else state,  # a State as its keys, as to_json
            f"the state of dead-lettered item {record.index}",
        ),
        "exception": record.info.to_dict(),
        "attempts": record.attempts,
        "elapsed": record.elapsed,
    }
    return DeadLetterWrite(slot.key, record.index, data)


# --------------------------------------------------------------------------- guarded steps


@dataclass(frozen=True, slots=True)
class GuardedItem:
    """The ``per_run`` of a guarded `ItemOp`: makes each run's guarded function."""

    guard: Guard
    base: ItemOp
    """The step as it was before guarding (kind, user function, options)."""

    def __call__(self) -> Callable[[Any], Any]:
        base = self.base
        return self.guard.run(base.kind, base.function_for_run(), with_state=base.with_state)


@dataclass(frozen=True, slots=True)
class GuardedTransform:
    """The ``run`` of a guarded concurrent (or flat_map) `Transform`."""

    guard: Guard
    base: ConcurrentOp
    """The per-item operation as it was before guarding."""

    def __call__(self, upstream: AsyncIterator[Any]) -> AsyncIterator[Any]:
        op = self.base
        fn = self.guard.run(op.kind, op.fn, with_state=op.with_state)
        if op.kind == "flat_map" and op.concurrency == 1:
            return _flat_sequential(upstream, fn, self.guard.label)
        kind: Literal["map", "flat_map"] = "flat_map" if op.kind == "flat_map" else "map"
        wrapped = dataclasses.replace(
            op, kind=kind, fn=fn, label=self.guard.label, is_async=True, sees_envelope=True
        )
        results = concurrent_transform(wrapped).run(upstream)
        return results if kind == "flat_map" else _without_skips(results)


async def _flat_sequential(
    upstream: AsyncIterator[Any], fn: Callable[[Any], Any], label: str
) -> AsyncIterator[Any]:
    index = -1
    try:
        async for item in upstream:
            if type(item) is CONTROL:
                yield item
                continue
            index += 1
            try:
                elements = await fn(item)
            except Exception as exc:
                annotate(exc, label, index)
                raise
            for element in elements:
                yield element
    finally:
        await aclose(upstream)


async def _without_skips(results: AsyncIterator[Any]) -> AsyncIterator[Any]:
    # The concurrent map passes every result on; a guarded one may drop items.
    try:
        async for result in results:
            if result is not SKIP:
                yield result
    finally:
        await aclose(results)


def guard_item(op: ItemOp, guard: Guard) -> ItemOp:
    """Wrap a fusable item step: it stays fusable, as an async dropping map.

    Filters and taps become maps that return the item or `SKIP`, so that one
    shape serves every strategy (a ``Result`` per item, a dropped failure).
    """
    return dataclasses.replace(
        op,
        kind="map",
        label=guard.label,
        is_async=True,
        may_drop=True,
        per_run=GuardedItem(guard, op),
        sees_envelope=True,
    )


def guard_concurrent(op: ConcurrentOp, guard: Guard) -> Transform:
    """Wrap the per-item function of a concurrent (or flat_map) step.

    The retry loop runs inside each call, so retries count against the same
    ``concurrency``; ``Transform.item`` still describes the user's function.
    """
    item = dataclasses.replace(op, label=guard.label)
    return Transform(guard.label, GuardedTransform(guard, op), item, barriers=True)


def unguarded(step: Step) -> tuple[Step, Guard | None]:
    """The step as it was before guarding, and its guard (None if not guarded)."""
    if isinstance(step, ItemOp):
        if isinstance(step.per_run, GuardedItem):
            return step.per_run.base, step.per_run.guard
        return step, None
    if isinstance(step.run, GuardedTransform):
        base = step.run.base
        return concurrent_transform(base), step.run.guard
    return step, None


def _only_step(stage: object, caller: str) -> Step:
    if not is_stage(stage):
        raise TypeError(f"{caller} takes a stage, got {type(stage).__name__}: {stage!r}")
    steps = stage.steps
    if len(steps) != 1:
        raise TypeError(
            f"{caller} wraps the per-item function of one item stage (map_, filter_, "
            f"flat_map, tap), but {stage.label} has {len(steps)} steps; wrap each item "
            "stage on its own"
        )
    step = steps[0]
    if isinstance(step, Transform) and step.item is None:
        raise TypeError(
            f"{caller} cannot wrap {step.label}: it has no per-item function to call again "
            "(it transforms the whole stream); wrap a map_, filter_, flat_map or tap stage"
        )
    return step


def guard_stage(stage: Stage[Any, Any], guard: Guard) -> Stage[Any, Any]:
    """Wrap the per-item function of a one-step item stage in ``guard``."""
    step = _only_step(stage, "guard_stage()")
    if isinstance(step, ItemOp):
        return Stage((guard_item(step, guard),))
    assert step.item is not None  # checked by _only_step
    return Stage((guard_concurrent(step.item, guard),))


# --------------------------------------------------------------------------- with_retry


DEFAULT_BACKOFF: Final = exponential()
"""`with_retry`'s backoff: ``exponential(initial=0.1, multiplier=2.0, maximum=30.0)``."""


def _merge(name: str, given: Any, existing: Any, default: Any) -> Any:
    if given is None:
        return existing
    if existing is not None and existing != default and existing != given:
        raise TypeError(
            f"the wrapped stage already has {name}={existing!r}; give {name} in one place"
        )
    return given


@overload
def with_retry(
    stage: Stage[T, R],
    /,
    *,
    attempts: int = 3,
    backoff: Backoff = ...,
    retry_on: RetryOn = Exception,
    deadline: float | None = None,
    timeout: float | None = None,
    on_error: Literal["result"],
    report: ErrorReport | None = None,
    name: str | None = None,
) -> Stage[T, Result[R, ErrorRecord[T]]]: ...
@overload
def with_retry(
    stage: Stage[T, R],
    /,
    *,
    attempts: int = 3,
    backoff: Backoff = ...,
    retry_on: RetryOn = Exception,
    deadline: float | None = None,
    timeout: float | None = None,
    on_error: Literal["fail", "skip", "collect", "split"] | None = None,
    dead_letter: DeadLetterSink | None = None,
    report: ErrorReport | None = None,
    name: str | None = None,
) -> Stage[T, R]: ...
def with_retry(
    stage: Stage[Any, Any],
    /,
    *,
    attempts: int = 3,
    backoff: Backoff = DEFAULT_BACKOFF,
    retry_on: RetryOn = Exception,
    deadline: float | None = None,
    timeout: float | None = None,
    on_error: OnError | None = None,
    dead_letter: DeadLetterSink | None = None,
    report: ErrorReport | None = None,
    name: str | None = None,
) -> Stage[Any, Any]:
    """Retry the per-item function of an item stage, with backoff.

    ``stage`` is a `map_`, `filter_`, `flat_map` or `tap` stage, sequential or
    concurrent. For each item, its function is called up to ``attempts``
    times, waiting ``backoff`` between attempts, while the error is
    retryable; the upstream is never read again and nothing already yielded
    is yielded again (a flat_map's elements are buffered per call, see
    docs/errors.md). What remains failed after the last attempt is handled by
    ``on_error``. Retries run inside the per-item call, so with
    ``concurrency=N`` they count against the same ``N``. Sleeps and timeouts
    use the current clock (`streamkit.testing.VirtualClock` in tests).
    Cancellation is never retried, and cancels a backoff sleep at once.

    Args:
        stage: A one-step item stage.
        attempts: The most calls per item (1 or more; 1 means no retry).
        backoff: The delay before each retry: a policy (`exponential` by
            default, `constant`) or a callable ``attempt -> seconds``.
        retry_on: The exception types to retry, or a predicate on the error.
            Other errors are handled by ``on_error`` at once.
        deadline: Seconds per item across all attempts; no attempt is made
            if its backoff would end after the deadline.
        timeout: Seconds per attempt; a slower call is cancelled and fails
            with `TimeoutError` (retried when ``retry_on`` matches it).
        on_error: ``"fail"`` (default), ``"skip"``, ``"collect"``,
            ``"split"`` or ``"result"``: see docs/errors.md.
        dead_letter: With ``"split"``: a `DeadLetters`, a queue, or a sync or
            async callable receiving each `ErrorRecord`.
        report: The `ErrorReport` that counts (and, with ``"collect"``,
            keeps) failures; one is made if not given (see `error_report`).
        name: The stage's label in statistics, events, errors, error records
            and the history (``with_retry(map_(fn), attempts=3)`` by default).

    Raises:
        TypeError: ``stage`` has no single per-item function, or an option
            has the wrong type or is given twice.
        ValueError: An option is out of range.

    Examples:
        >>> import asyncio
        >>> from streamkit import collect, map_
        >>> calls = []
        >>> def flaky(x: int) -> int:
        ...     calls.append(x)
        ...     if calls.count(x) < 3:
        ...         raise ConnectionError(x)
        ...     return x * 10
        >>> fetch = with_retry(map_(flaky), attempts=3, backoff=constant(0))
        >>> asyncio.run(collect([1, 2] | fetch))
        [10, 20]
        >>> calls
        [1, 1, 1, 2, 2, 2]
    """
    step = _only_step(stage, "with_retry()")
    check_count(attempts, "attempts", minimum=1)
    base, existing = unguarded(step)
    if existing is None:
        existing = Guard(label=base.label)
    elif existing.attempts > 1:
        raise TypeError(f"{step.label} is already retried; wrap a stage in with_retry() once")
    merged_on_error = _merge("on_error", on_error, existing.on_error, "fail")
    merged_report: ErrorReport | None = existing.report if existing.report_given else None
    if report is not None:
        if merged_report is not None and merged_report is not report:
            raise TypeError("the wrapped stage already has a report=; give report in one place")
        merged_report = report
    label = stage_label(name, f"with_retry({step.label}, attempts={attempts})")
    guard = make_guard(
        label,
        attempts=attempts,
        backoff=backoff,
        retry_on=retry_on,
        deadline=deadline,
        timeout=_merge("timeout", timeout, existing.timeout, None),
        on_error=merged_on_error,
        dead_letter=_merge("dead_letter", dead_letter, existing.dead_letter, None),
        report=merged_report,
    )
    if isinstance(base, ItemOp):
        return Stage((guard_item(base, guard),))
    assert base.item is not None
    return Stage((guard_concurrent(base.item, guard),))


def error_report(stage: Stage[Any, Any]) -> ErrorReport:
    """The `ErrorReport` of the guarded step in ``stage`` (e.g. a `with_retry`).

    Raises:
        LookupError: ``stage`` has no guarded step, or several with
            different reports (pass ``report=`` to share one instead).

    Examples:
        >>> import asyncio
        >>> from streamkit import collect, map_
        >>> inverse = with_retry(map_(lambda x: 1 / x), attempts=2, on_error="skip",
        ...                      backoff=constant(0))
        >>> asyncio.run(collect([0, 1, 0] | inverse))
        [1.0]
        >>> stats = error_report(inverse).statistics()
        >>> stats.items, stats.attempts, stats.retries, stats.skipped
        (3, 5, 2, 2)
    """
    reports = {id(guard.report): guard.report for guard in _guards(stage)}
    if len(reports) != 1:
        found = "no guarded step" if not reports else f"{len(reports)} different reports"
        raise LookupError(f"{stage.label} has {found}")
    return next(iter(reports.values()))


def _guards(stage: Stage[Any, Any]) -> Iterator[Guard]:
    for step in stage.steps:
        guard = unguarded(step)[1]
        if guard is not None:
            yield guard


# --------------------------------------------------------------------------- results


class UnhandledFailure(Exception):
    """Raised by `successes` for a failure that is not an exception or record."""

    def __init__(self, failure: object) -> None:
        super().__init__(f"successes() met a failure with nowhere to go: {failure!r}")
        self.failure = failure


def _failure_handler(
    on_failure: DeadLetterSink | ErrorReport | None,
) -> tuple[Callable[[Any], object], bool]:
    """A function taking a failure's payload, and whether it may be async."""
    if on_failure is None:

        def fail(payload: object) -> object:
            failure = payload
            if isinstance(payload, ErrorRecord):
                exception = payload.exception
                if isinstance(exception, BaseException):
                    raise exception
            if isinstance(payload, BaseException):
                raise payload
            raise UnhandledFailure(failure)

        return fail, False
    if isinstance(on_failure, ErrorReport):
        return on_failure.add, False
    return _sink_function(on_failure, "on_failure"), True


@functools.cache
def _result_types() -> tuple[type[Success[Any]], type[Failure[Any]], type[Result[Any, Any]]]:
    # Imported on first use: `import streamkit` stays fast without `returns`.
    from returns.result import Failure, Result, Success

    return Success, Failure, Result


def _is_result(value: object) -> TypeGuard[Result[Any, Any]]:
    return isinstance(value, _result_types()[2])


def _check_result(value: object, label: str) -> Result[Any, Any]:
    if not _is_result(value):
        raise TypeError(f"{label} needs Result items (Success or Failure), got {value!r}")
    return value


class SuccessStage(ShapeStage):
    """The stage `successes` returns: ``Result[S, ...]`` items in, ``S`` out.

    Like the other shape stages (`streamkit.typing`) it keeps the value type
    after a source or a stage, and after ``Envelope[Result[S, ...]]`` items
    gives ``Envelope[S]``; at run time it is an ordinary stage.

    Examples:
        >>> import asyncio
        >>> from returns.result import Success
        >>> from streamkit import collect
        >>> asyncio.run(collect([Success("a")] | successes()))
        ['a']
    """

    __slots__ = ()

    @overload
    def __call__(self, source: Source[Envelope[Result[S, Any]]], /) -> Flow[Envelope[S]]: ...
    @overload
    def __call__(self, source: Source[Result[S, Any]], /) -> Flow[S]: ...
    def __call__(self, source: Source[Any], /) -> Flow[Any]:
        """Apply the stage to ``source``."""
        return super().__call__(source)

    @overload
    def __ror__(self, source: Stage[A, Envelope[Result[S, Any]]], /) -> Stage[A, Envelope[S]]: ...  # type: ignore[misc]  # mypy: Stage.__or__ overlaps it, but cannot take a shape stage
    @overload
    def __ror__(self, source: Stage[A, Result[S, Any]], /) -> Stage[A, S]: ...  # type: ignore[misc]  # mypy: as above
    @overload
    def __ror__(self, source: Source[Envelope[Result[S, Any]]], /) -> Flow[Envelope[S]]: ...
    @overload
    def __ror__(self, source: Source[Result[S, Any]], /) -> Flow[S]: ...
    def __ror__(self, source: Any, /) -> Any:  # pyright: ignore[reportIncompatibleMethodOverride]
        return super().__ror__(source)


class FailureStage(ShapeStage):
    """The stage `failures` returns: ``Result[..., E]`` items in, ``E`` out.

    Like `SuccessStage` it keeps the error type after a source or a stage,
    envelopes included; at run time it is an ordinary stage.

    Examples:
        >>> import asyncio
        >>> from returns.result import Failure
        >>> from streamkit import collect
        >>> asyncio.run(collect([Failure("e")] | failures()))
        ['e']
    """

    __slots__ = ()

    @overload
    def __call__(self, source: Source[Envelope[Result[Any, E]]], /) -> Flow[Envelope[E]]: ...
    @overload
    def __call__(self, source: Source[Result[Any, E]], /) -> Flow[E]: ...
    def __call__(self, source: Source[Any], /) -> Flow[Any]:
        """Apply the stage to ``source``."""
        return super().__call__(source)

    @overload
    def __ror__(self, source: Stage[A, Envelope[Result[Any, E]]], /) -> Stage[A, Envelope[E]]: ...  # type: ignore[misc]  # mypy: Stage.__or__ overlaps it, but cannot take a shape stage
    @overload
    def __ror__(self, source: Stage[A, Result[Any, E]], /) -> Stage[A, E]: ...  # type: ignore[misc]  # mypy: as above
    @overload
    def __ror__(self, source: Source[Envelope[Result[Any, E]]], /) -> Flow[Envelope[E]]: ...
    @overload
    def __ror__(self, source: Source[Result[Any, E]], /) -> Flow[E]: ...
    def __ror__(self, source: Any, /) -> Any:  # pyright: ignore[reportIncompatibleMethodOverride]
        return super().__ror__(source)


def successes(
    *, on_failure: DeadLetterSink | ErrorReport | None = None, name: str | None = None
) -> SuccessStage:
    """Unwrap ``Success`` values; send each ``Failure`` somewhere, never nowhere.

    For the ``Result`` items of ``on_error="result"`` (or any
    `returns.result.Result` stream). A failure's payload (an `ErrorRecord`
    for streamkit's own) goes to ``on_failure``:

    * None (the default): it is raised: the record's exception, an
      exception payload itself, or `UnhandledFailure`;
    * an `ErrorReport`: the record is collected (`ErrorReport.add`);
    * a `DeadLetters`, a queue or a callable: the payload is delivered.

    Args:
        on_failure: Where each failure goes (see above).
        name: The stage's label in statistics, events, errors and the
            history (see `map_`).

    Examples:
        >>> import asyncio
        >>> from returns.result import Failure, Success
        >>> from streamkit import collect
        >>> failed = []
        >>> items = [Success(1), Failure("boom"), Success(3)]
        >>> asyncio.run(collect(items | successes(on_failure=failed.append)))
        [1, 3]
        >>> failed
        ['boom']
    """
    handle, may_await = _failure_handler(on_failure)
    label = stage_label(name, "successes()")
    success = _result_types()[0]

    def unwrap(value: Any) -> Any:
        result = _check_result(value, label)
        if isinstance(result, success):
            return result.unwrap()
        handle(result.failure())
        return SKIP

    async def unwrap_async(value: Any) -> Any:
        result = _check_result(value, label)
        if isinstance(result, success):
            return result.unwrap()
        delivered = handle(result.failure())
        if inspect.isawaitable(delivered):
            await delivered
        return SKIP

    fn = unwrap_async if may_await else unwrap
    return SuccessStage((ItemOp("map", fn, label, is_async=may_await, may_drop=True),))


def failures(
    *, on_success: Callable[[Any], object] | SupportsPut | None = None, name: str | None = None
) -> FailureStage:
    """Yield the payloads of ``Failure`` items (`ErrorRecord` for streamkit's own).

    The ``Success`` items are the other branch: they go to ``on_success`` (a
    sync or async callable, or a channel with ``put``) or, without it, are
    dropped on purpose.

    Args:
        on_success: Where each success goes; dropped when omitted.
        name: The stage's label in statistics, events, errors and the
            history (see `map_`).

    Examples:
        >>> import asyncio
        >>> from returns.result import Failure, Success
        >>> from streamkit import collect
        >>> items = [Success(1), Failure("boom"), Success(3)]
        >>> asyncio.run(collect(items | failures()))
        ['boom']
    """
    label = stage_label(name, "failures()")
    deliver = None if on_success is None else _sink_function(on_success, "on_success")
    success = _result_types()[0]

    def pick(value: Any) -> Any:
        result = _check_result(value, label)
        if isinstance(result, success):
            return SKIP
        return result.failure()

    async def pick_async(value: Any) -> Any:
        result = _check_result(value, label)
        if isinstance(result, success):
            assert deliver is not None
            delivered = deliver(result.unwrap())
            if inspect.isawaitable(delivered):
                await delivered
            return SKIP
        return result.failure()

    if deliver is None:
        op = ItemOp("map", pick, label, is_async=False, may_drop=True)
    else:
        op = ItemOp("map", pick_async, label, is_async=True, may_drop=True)
    return FailureStage((op,))
