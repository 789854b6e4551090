"""Runs you can watch: lifecycle, statistics, hooks, events and state history.

A `Run` applies a pipeline (any `Stage`) to a source once, and lets you
watch it while it runs: its status, per-step metrics (`statistics`),
callbacks (`Hooks`), throttled field-level state updates (`Run.events`), a
pause that holds the source, and an on-disk history (``state_history=``).

The pipeline is never rewritten by its author: the run instruments a copy of
its steps. Fusable item steps stay fusable and unwrapped: they carry a
`SegmentWatch`, and the fused segment that runs them counts the items that
enter it and samples call times (only async functions, or every function
with ``timing="full"``, are wrapped through `ItemOp.per_run`); whole-stream
steps get a counting generator on their input and output; the per-item
function of a concurrent step is wrapped to count calls in flight; a guarded
step gets a copy of its guard that reports backoff waits (`RetryObserver`).
Without metrics, hooks or history the stage runs untouched.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import inspect
import logging
import os
import re
import secrets
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, TypeAlias, TypeVar

from ._aggregate import collect as _collect
from ._barrier import CONTROL
from ._checkpointing import DEFAULT_CODEC as RUN_CODEC
from ._checkpointing import DEFAULT_EVERY, Checkpointing, check_every, check_store
from ._concurrency import concurrent_transform
from ._core import (
    ConcurrentOp,
    Ends,
    Flow,
    ItemOp,
    SegmentRun,
    SegmentWatch,
    Stage,
    Step,
    Transform,
    aclose,
    is_sync_source,
    open_async,
)
from ._dashboard import Dashboard, check_dashboard
from ._events import StateUpdate, Updates
from ._failures import (
    ErrorRecord,
    FailureStatistics,
    Guard,
    GuardedItem,
    GuardedTransform,
    RetryObserver,
    unguarded,
)
from ._feed import Feed
from ._history import History
from ._hooks import HookError, Hooks, RetryEvent, call_hook, check_hooks
from ._metrics import QuantileSketch, RunStatistics, StageStatistics
from ._runtime import (
    Handle,
    current_clock,
    signal_maker,
    wait_for_signal,
    wake,
)

if TYPE_CHECKING:
    import datetime as dt

    from ._barrier import Encoder as Codec
    from ._core import Source
    from ._runtime import Clock
    from ._store import Checkpoint, Store

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)

RunStatus: TypeAlias = Literal["pending", "running", "paused", "succeeded", "failed", "cancelled"]
"""The status of a run."""

StageStatus: TypeAlias = Literal[
    "pending", "executing", "retrying", "succeeded", "failed", "cancelled"
]
"""The status of one step of a run's pipeline ("retrying": an item waits to be retried)."""

Timing: TypeAlias = Literal["sampled", "full"]
"""How a run times the calls of fused steps (see `Run`)."""

logger: Final = logging.getLogger("streamkit.run")

_SAMPLE_EVERY: Final = 1024
"""With ``timing="sampled"``, a fused segment times the calls of its first
item and of every 1024th item after it (the 1st, 1025th, ...)."""

_TIMINGS: Final = ("sampled", "full")

_FAILURE_RECORDS_CAP: Final = 100
"""The most error records written per step in the state history."""

_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_RUN_ID: Final = re.compile(r"[0-9]{8}T[0-9]{12}Z(-[A-Za-z0-9][A-Za-z0-9_.-]{0,63})?-[0-9a-f]{8}")

_perf_counter: Final = time.perf_counter


# --------------------------------------------------------------------------- hooks


# --------------------------------------------------------------------------- live counters


class _Live:
    """The live counters of one step in one run.

    A fused step reads its items in and out from the `SegmentRun` that runs
    it (``segment``, at ``position``): the items that entered the segment,
    minus what the earlier operations dropped, failed or hold in flight.
    A whole-stream step counts its input and output in generators around it.
    """

    __slots__ = (
        "baseline",
        "completed",
        "errors",
        "filtered",
        "guard",
        "in_flight",
        "items_in",
        "items_out",
        "key",
        "kind",
        "label",
        "op",
        "own_failure",
        "position",
        "raised",
        "records_start",
        "segment",
        "siblings",
        "sketch",
        "status",
        "time_sum",
        "timed",
        "upstream_error",
        "waiting",
    )

    def __init__(self, key: str, label: str, kind: str, guard: Guard | None) -> None:
        self.key = key
        self.label = label
        self.kind = kind
        self.guard = guard
        self.status: StageStatus = "pending"
        self.items_in = 0
        self.items_out = 0
        self.errors = 0
        self.filtered = 0
        """Items a concurrent filter's predicate rejected."""
        self.completed = 0
        """Calls of a concurrent flat_map that returned (inputs done)."""
        self.raised: set[BaseException] = set()
        """Exceptions of calls already counted in ``errors`` (unguarded steps)."""
        self.in_flight = 0
        self.waiting = 0
        """Items of this step in a backoff wait now (status "retrying")."""
        self.sketch = QuantileSketch()
        self.time_sum = 0.0
        self.own_failure: BaseException | None = None
        self.upstream_error: BaseException | None = None
        self.baseline = FailureStatistics()
        self.records_start = 0
        self.op: ItemOp | None = None
        """For a fused step: the instrumented operation (to find it in a segment)."""
        self.segment: SegmentRun | None = None
        self.position = 0
        self.siblings: list[_Live] = []
        """The lives of the segment's operations, in order (this one included)."""
        self.timed = False
        """Whether a wrapper times every call (else the segment samples them)."""

    @property
    def failure(self) -> BaseException | None:
        """The exception this step raised, if it raised one."""
        segment = self.segment
        if segment is not None and segment.error is not None and segment.failed == self.position:
            return segment.error
        return self.own_failure

    @failure.setter
    def failure(self, exc: BaseException | None) -> None:
        self.own_failure = exc

    def record(self, seconds: float) -> None:
        self.sketch.add(seconds)
        self.time_sum += seconds

    def guard_statistics(self) -> FailureStatistics | None:
        guard = self.guard
        if guard is None:
            return None
        report = guard.report
        if guard.label not in report.stages:
            return FailureStatistics()
        current = report.statistics(guard.label)
        base = self.baseline
        return FailureStatistics(
            *(
                getattr(current, f.name) - getattr(base, f.name)
                for f in dataclasses.fields(FailureStatistics)
            )
        )

    def new_records(self) -> list[ErrorRecord[Any]]:
        if self.guard is None:
            return []
        records = self.guard.report.records[self.records_start :]
        return [record for record in records if record.stage == self.guard.label]

    def _segment_counts(self, segment: SegmentRun) -> tuple[int, int, int]:
        """(items in, items out, raised) of a fused step, from its segment's counters."""
        drops = segment.drops
        failed = segment.failed if segment.error is not None else None
        items = segment.entered
        for j, sibling in enumerate(self.siblings[: self.position]):
            items -= drops[j] + (failed == j) + sibling.in_flight
        k = self.position
        raised = int(failed == k)
        return items, max(0, items - drops[k] - raised - self.in_flight), raised

    def snapshot(self, wall_time: float) -> StageStatistics:
        failures = self.guard_statistics()
        segment = self.segment
        in_flight = self.in_flight
        dropped = 0
        if segment is not None:
            items_in, items_out, errors = self._segment_counts(segment)
        else:
            items_in, items_out, errors = self.items_in, self.items_out, self.errors
        if failures is None:
            retries = skipped = collected = dead_lettered = 0
        else:
            errors = failures.failed
            retries = failures.retries
            skipped = failures.skipped
            collected = failures.collected
            dead_lettered = failures.dead_lettered
            dropped = skipped + collected + dead_lettered
        filtered = 0
        if self.kind == "filter":
            if segment is not None:
                filtered = max(0, segment.drops[self.position] - dropped)
            else:
                filtered = self.filtered
        status = self.status
        abandoned = 0
        if segment is None and status not in ("pending", "executing"):
            done = self.completed if self.kind == "flat_map" else items_out + filtered
            abandoned = max(0, items_in - done - errors - in_flight)
        if status == "executing" and self.waiting > 0:
            status = "retrying"
        sketch = self.sketch
        return StageStatistics(
            key=self.key,
            label=self.label,
            kind=self.kind,
            status=status,
            items_in=items_in,
            items_out=items_out,
            filtered=filtered,
            errors=errors,
            retries=retries,
            skipped=skipped,
            collected=collected,
            dead_lettered=dead_lettered,
            abandoned=abandoned,
            in_flight=in_flight,
            timed_calls=sketch.count,
            time_sum=self.time_sum,
            time_p50=sketch.quantile(0.5),
            time_p95=sketch.quantile(0.95),
            time_p99=sketch.quantile(0.99),
            throughput=items_out / wall_time if wall_time > 0 else 0.0,
        )


# --------------------------------------------------------------------------- instrumentation


class _Watch(SegmentWatch):
    """A run's watch over its fused segments: finds each step's live counters."""

    __slots__ = ("lives", "run")

    def __init__(self, run: Run[Any], lives: list[_Live], *, sample_every: int) -> None:
        super().__init__(sample_every=sample_every)
        self.run = run
        self.lives = lives

    def attach(self, run: SegmentRun) -> None:
        siblings: list[_Live] = []
        for op in run.ops:
            live = next((live for live in self.lives if live.op is op), None)
            if live is None:  # pragma: no cover - every op of a watched segment is the run's
                return
            siblings.append(live)
        for position, live in enumerate(siblings):
            live.segment = run
            live.position = position
            live.siblings = siblings

    def record(self, run: SegmentRun, position: int, seconds: float) -> None:
        for live in self.lives:
            if live.segment is run and live.position == position:
                if not live.timed:
                    live.record(seconds)
                return

    async def wait(self) -> None:
        run = self.run
        while (signal := run._resume_signal) is not None:  # pyright: ignore[reportPrivateUsage]
            await wait_for_signal(signal)
        self.paused = False


class _RetryWatch(RetryObserver):
    """A run's observer of one guarded step's backoff waits."""

    __slots__ = ("live", "run")

    def __init__(self, run: Run[Any], live: _Live) -> None:
        self.run = run
        self.live = live

    async def retrying(self, index: int, attempt: int, delay: float, error: Exception) -> None:
        live = self.live
        live.waiting += 1
        run = self.run
        hooks = run._hooks  # pyright: ignore[reportPrivateUsage]
        if hooks is None or hooks.on_retry is None:
            return
        stats = live.snapshot(run._wall_time())  # pyright: ignore[reportPrivateUsage]
        event = RetryEvent(stage=live.key, index=index, attempt=attempt, delay=delay, error=error)
        await run._call_hook("on_retry", hooks.on_retry, stats, event)  # pyright: ignore[reportPrivateUsage]

    def retried(self) -> None:
        self.live.waiting -= 1


def _timing_function(live: _Live, fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap one run's function of a fused step: time every call, count calls in flight.

    Used for async functions, and for every function with ``timing="full"``.
    Items are counted by the segment; failures are seen there too.
    """
    record = live.record

    async def finish(awaitable: Awaitable[Any], start: float) -> Any:
        live.in_flight += 1
        try:
            result = await awaitable
        finally:
            live.in_flight -= 1
        record(_perf_counter() - start)
        return result

    def timed(*args: Any) -> Any:
        start = _perf_counter()
        result = fn(*args)
        if inspect.isawaitable(result):
            return finish(result, start)
        record(_perf_counter() - start)
        return result

    return timed


@dataclass(frozen=True, slots=True)
class _TimedPerRun:
    """The ``per_run`` of a fused step whose calls are all timed."""

    op: ItemOp
    live: _Live

    def __call__(self) -> Callable[..., Any]:
        return _timing_function(self.live, self.op.function_for_run())


def _counting_call(live: _Live, fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap the per-item function of a concurrent step (every call is timed)."""
    guarded = live.guard is not None
    kind = live.kind

    async def call(*args: Any) -> Any:
        live.in_flight += 1
        start = _perf_counter()
        try:
            result = fn(*args)
            if inspect.isawaitable(result):
                result = await result
        except Exception as exc:
            if not guarded:
                live.errors += 1
                live.raised.add(exc)
            live.failure = exc
            raise
        finally:
            live.in_flight -= 1
            live.record(_perf_counter() - start)
        if kind == "filter":
            if not result:
                live.filtered += 1
        elif kind == "flat_map":
            live.completed += 1
        return result

    return call


async def _count_in(upstream: AsyncIterator[Any], live: _Live) -> AsyncIterator[Any]:
    try:
        while True:
            try:
                item = await upstream.__anext__()
            except StopAsyncIteration:
                return
            except Exception as exc:
                live.upstream_error = exc
                raise
            if type(item) is not CONTROL:
                live.items_in += 1
            yield item
    finally:
        await aclose(upstream)


async def _count_out(results: AsyncIterator[Any], live: _Live) -> AsyncIterator[Any]:
    try:
        while True:
            try:
                item = await results.__anext__()
            except StopAsyncIteration:
                return
            except Exception as exc:
                if exc is not live.upstream_error:
                    if exc in live.raised:
                        live.raised.discard(exc)  # raised by a call, counted there
                    elif live.guard is None:
                        live.errors += 1
                    live.failure = exc  # several calls may fail: this one propagates
                raise
            if type(item) is not CONTROL:
                live.items_out += 1
            yield item
    finally:
        await aclose(results)


def _counting_run(
    run: Callable[[AsyncIterator[Any]], AsyncIterator[Any]], live: _Live
) -> Callable[[AsyncIterator[Any]], AsyncIterator[Any]]:
    def counted(upstream: AsyncIterator[Any]) -> AsyncIterator[Any]:
        return _count_out(run(_count_in(upstream, live)), live)

    return counted


def _instrument(step: Step, live: _Live, run: Run[Any], watch: _Watch, timing: Timing) -> Step:
    """A copy of ``step`` that updates ``live``.

    A fused step carries ``watch`` (its segment counts its items); only its
    async functions (or, with ``timing="full"``, all of them) are wrapped.
    A guarded step gets a copy of its guard that tells the run about retries.
    """
    if isinstance(step, ItemOp):
        op = step
        per_run = op.per_run
        if isinstance(per_run, GuardedItem):
            guard = dataclasses.replace(per_run.guard, observer=_RetryWatch(run, live))
            op = dataclasses.replace(op, per_run=GuardedItem(guard, per_run.base))
        if timing == "full" or op.is_async:
            live.timed = True
            op = dataclasses.replace(op, per_run=_TimedPerRun(op, live))
        op = dataclasses.replace(op, watch=watch)
        live.op = op
        return op
    item = step.item
    counted_run = step.run
    if isinstance(counted_run, GuardedTransform):
        base = counted_run.base
        guard = dataclasses.replace(counted_run.guard, observer=_RetryWatch(run, live))
        wrapped = dataclasses.replace(base, fn=_counting_call(live, base.fn), is_async=True)
        counted_run = GuardedTransform(guard, wrapped)
    elif item is not None:
        wrapped = dataclasses.replace(item, fn=_counting_call(live, item.fn), is_async=True)
        counted_run = concurrent_transform(wrapped).run
    return dataclasses.replace(step, run=_counting_run(counted_run, live))


def _kind(step: Step) -> str:
    base = unguarded(step)[0]
    if isinstance(base, ItemOp):
        return base.kind
    return "transform" if base.item is None else base.item.kind


def _describe(step: Step) -> str:
    """A step's label with the options that shape it (for the config hash)."""
    base, guard = unguarded(step)
    parts = [type(base).__name__, step.label]
    item: ConcurrentOp | None = base.item if isinstance(base, Transform) else None
    if item is not None:
        parts.append(f"concurrency={item.concurrency},ordered={item.ordered},window={item.window}")
    if guard is not None:
        parts.append(
            f"attempts={guard.attempts},on_error={guard.on_error},timeout={guard.timeout},"
            f"deadline={guard.deadline}"
        )
    return " ".join(parts)


def config_hash(pipeline: Stage[Any, Any]) -> str:
    """A short, stable hash of a pipeline's structure (step labels and options).

    The sha256 of the steps' descriptions (kind, label, concurrency and
    guard options), as 16 hex digits. Equal pipelines built twice hash equal;
    the hash does not see inside user functions, only their names.

    Examples:
        >>> from streamkit import filter_, map_
        >>> config_hash(map_(str) | filter_(bool)) == config_hash(map_(str) | filter_(bool))
        True
        >>> config_hash(map_(str)) == config_hash(map_(repr))
        False
    """
    text = "\n".join(_describe(step) for step in pipeline.steps)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _stage_keys(steps: tuple[Step, ...]) -> list[str]:
    labels = [step.label for step in steps]
    return [
        label if labels.count(label) == 1 else f"{label}#{position}"
        for position, label in enumerate(labels)
    ]


# --------------------------------------------------------------------------- pause gate


class _Gate(AsyncIterator[Any]):
    """The run's source: pulls wait while the run is paused."""

    __slots__ = ("iterator", "run", "source")

    def __init__(self, source: Source[Any], run: Run[Any]) -> None:
        self.source = source
        self.run = run
        self.iterator: AsyncIterator[Any] | None = None

    def __aiter__(self) -> _Gate:
        return self

    def __anext__(self) -> Awaitable[Any]:
        iterator = self.iterator
        if iterator is None:
            iterator = self.iterator = open_async(self.source)
        if self.run._resume_signal is not None:  # pyright: ignore[reportPrivateUsage]
            return self._paused_next(iterator)
        return iterator.__anext__()

    async def _paused_next(self, iterator: AsyncIterator[Any]) -> Any:
        run = self.run
        while (signal := run._resume_signal) is not None:  # pyright: ignore[reportPrivateUsage]
            await wait_for_signal(signal)
        return await iterator.__anext__()

    async def aclose(self) -> None:
        iterator = self.iterator
        if iterator is None:
            # Never pulled: close the source itself if it is an iterator.
            source = self.source
            if hasattr(source, "__anext__") or hasattr(source, "__next__"):
                await aclose(source)
            return
        await aclose(iterator)


class _Resumed:
    """What `Run.resume` returns: awaitable, and harmless if not awaited."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        yield from ()


# --------------------------------------------------------------------------- history


def _new_run_id(name: str | None) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    micros = f"{time.time_ns() // 1000 % 1_000_000:06d}"
    middle = "" if name is None else f"-{name}"
    return f"{stamp}{micros}Z{middle}-{secrets.token_hex(4)}"


def _check_name(name: object) -> str | None:
    if name is None:
        return None
    if not isinstance(name, str):
        raise TypeError(f"name must be a string or None, got {type(name).__name__}")
    if not _NAME.fullmatch(name):
        raise ValueError(
            "name must be 1 to 64 letters, digits, '_', '.' or '-', starting with a letter "
            f"or digit (it is part of the run id and of the history folder), got {name!r}"
        )
    return name


def _check_arguments(
    pipeline: object,
    source: object,
    version: object,
    metrics: object,
    timing: object,
    state_history: object,
) -> None:
    """Check the arguments of `Run` that need no more than a look."""
    if not isinstance(pipeline, Stage):
        raise TypeError(f"pipeline must be a Stage, got {type(pipeline).__name__}")
    if not (hasattr(source, "__aiter__") or hasattr(source, "__iter__")):
        raise TypeError(
            f"source must be an iterable or an async iterable, got {type(source).__name__}"
        )
    if version is not None and not isinstance(version, str):
        raise TypeError(f"version must be a string or None, got {type(version).__name__}")
    if not isinstance(metrics, bool):
        raise TypeError(f"metrics must be a bool, got {type(metrics).__name__}")
    if not isinstance(timing, str):
        raise TypeError(f"timing must be a string, got {type(timing).__name__}")
    if timing not in _TIMINGS:
        raise ValueError(f"timing must be 'sampled' or 'full', got {timing!r}")
    if state_history is not None and not isinstance(state_history, str | os.PathLike):
        raise TypeError(f"state_history must be a path or None, got {type(state_history).__name__}")


def _history_folder(root: Path, run_id: str) -> Path:
    if not _RUN_ID.fullmatch(run_id):  # pragma: no cover - guaranteed by construction
        raise ValueError(f"invalid run id {run_id!r}")
    folder = root / run_id
    if folder.parent != root:  # pragma: no cover - the id has no separator
        raise ValueError(f"run id {run_id!r} would escape {root}")
    return folder


def _checkpointing(
    checkpoint: object,
    name: str | None,
    source: Source[Any],
    cadence: tuple[int | None, float | None],
    version: str,
    codec: Codec | None,
    migrate: Callable[[Checkpoint], Checkpoint | None] | None,
) -> Checkpointing | None:
    """The checkpoint layer of a run given ``checkpoint=`` (None without one)."""
    if checkpoint is None:
        if codec is not None or migrate is not None:
            raise TypeError("codec= and migrate= are options of checkpoint=; give a store too")
        return None
    store = check_store(checkpoint)
    if name is None:
        raise ValueError("checkpoint= needs a name=: the checkpoint is saved under it")
    if migrate is not None and not callable(migrate):
        raise TypeError(f"migrate must be callable or None, got {type(migrate).__name__}")
    return Checkpointing(store, name, source, cadence, version, codec=codec, migrate=migrate)


# --------------------------------------------------------------------------- Run


class Run(AsyncIterable[T_co]):
    """One watched run of a pipeline over a source.

    Iterate it (``async for``), or call `collect` or `drain`; use it in
    ``async with`` so that leaving the block early closes the pipeline and
    marks the run ``"cancelled"``. A run is single-use.

    Status: ``"pending"`` until the first pull, then ``"running"`` (or
    ``"paused"`` while `pause` holds the source), then ``"succeeded"`` (the
    pipeline ended), ``"failed"`` (it raised; the error propagates) or
    ``"cancelled"`` (cancelled, or closed before its end).

    Args:
        pipeline: Any stage; the run instruments a copy of it.
        source: What the pipeline consumes (an iterable or async iterable).
        name: Letters, digits, ``_ . -`` (at most 64); part of the run id.
        hooks: A `Hooks`, a mapping of hook names to callables, or a
            sequence of them (each hook called in order).
        metrics: Count items, errors and call times per step (see
            `statistics`). With ``metrics=False``, no hooks and no
            ``state_history`` the stage runs untouched (and `pause` is not
            available).
        timing: How calls of fused steps (``map_``, ``filter_``, ``tap``
            without concurrency) are timed: ``"sampled"`` (the default)
            times their calls on the first item and on every 1024th item
            after it, and every call of an async function; ``"full"`` times
            every call (a wrapper per call: dear for cheap functions).
            Concurrent steps always time every call.
        state_history: A directory; the run writes ``<dir>/<run id>/``
            (``run_start.json``, ``stage_<n>_failures.json``, ``final.json``,
            and ``timeline.jsonl``: the run's statistics once a second).
        version: The pipeline's version, a string ("0" by default).
        checkpoint: A `Store` (`SQLiteStore`, `MemoryStore`, your own): the
            run saves checkpoints under its ``name`` (required) and, if the
            store has one for that name when it starts, resumes after it.
            The source must be resumable (a sequence, `lines`, `resumable`,
            your own `Resumable`, or flows of them combined with `merge`,
            `zip_`, `concat`, `broadcast`). Checkpoints are barriers: one
            goes in behind every ``every`` source items, each step lets it
            pass once it has emitted what it owes for the items before it
            and records its state in it, and when it comes out the run saves
            the source positions, the steps' snapshots and the pending
            writes (dead letters, `TableSink` rows) in one transaction. A
            custom ``@stage`` must declare its state (``stateless=True`` or
            ``state=``). To ``async for``, at least once: a resumed run
            repeats only the outputs since the last completed checkpoint;
            into `write_to` sinks, exactly once.
        every: How often to checkpoint: an int of source items (1000 by
            default), or a `datetime.timedelta`. A run that succeeds saves
            a last checkpoint that marks it complete.
        interval: Also checkpoint every this many seconds (a number or a
            `datetime.timedelta`), whichever comes first.
        codec: Encodes the steps' snapshots and the writes (default: the
            typed codec of `DEFAULT_CODEC`, which knows envelopes too).
        migrate: Called with a checkpoint saved by a pipeline of another
            shape; returns the checkpoint to resume from, or None to refuse
            it (see "Changing a pipeline" in the persistence guide).
        dashboard: A live web page of the run while it runs: a `Dashboard`,
            an address ``"HOST:PORT"``, True (127.0.0.1, any free port) or
            None. ``run.dashboard.url`` says where it is.

    Raises:
        TypeError: An argument has the wrong type, or ``checkpoint`` is given
            with a source that is not resumable.
        ValueError: ``name`` has characters outside the allowed set,
            ``hooks`` names an unknown hook, ``timing`` is neither
            ``"sampled"`` nor ``"full"``, ``every`` is not positive, or
            ``checkpoint`` is given without a name or with a custom stage
            that does not declare its state.
        CheckpointError: (when the run starts) the store cannot read the
            checkpoint, or it was saved by another ``version`` or by a
            pipeline of another shape.

    Examples:
        >>> import asyncio
        >>> from streamkit import filter_, map_
        >>> run = Run(map_(int) | filter_(lambda x: x % 2 == 1), ["1", "2", "3"], name="odd")
        >>> asyncio.run(run.collect())
        [1, 3]
        >>> stats = run.statistics()
        >>> stats.status, [(s.key, s.items_in, s.items_out) for s in stats.stages]
        ('succeeded', [('map_(int)', 3, 3), ('filter_(<lambda>)', 3, 2)])
    """

    __slots__ = (
        "_checkpointing",
        "_clock",
        "_direct",
        "_ended_at",
        "_finished",
        "_flow",
        "_history",
        "_hold_at_consumer",
        "_hook_errors",
        "_hooks",
        "_items_out",
        "_iterated",
        "_lives",
        "_observed",
        "_relay",
        "_resume_signal",
        "_source",
        "_started",
        "_started_clock",
        "_status",
        "_updates",
        "_watch",
        "config_hash",
        "dashboard",
        "history_path",
        "id",
        "name",
        "started_at",
        "version",
    )

    def __init__(
        self,
        pipeline: Stage[Any, T_co],
        source: Source[Any],
        *,
        name: str | None = None,
        hooks: Hooks
        | Mapping[str, Callable[..., object]]
        | Sequence[Hooks | Mapping[str, Callable[..., object]]]
        | None = None,
        metrics: bool = True,
        timing: Timing = "sampled",
        state_history: str | os.PathLike[str] | None = None,
        version: str | None = None,
        checkpoint: Store | None = None,
        every: int | dt.timedelta = DEFAULT_EVERY,
        interval: float | dt.timedelta | None = None,
        codec: Codec | None = None,
        migrate: Callable[[Checkpoint], Checkpoint | None] | None = None,
        dashboard: Dashboard | str | bool | None = None,
    ) -> None:
        _check_arguments(pipeline, source, version, metrics, timing, state_history)
        self.name: str | None = _check_name(name)
        """The run's name, if given."""
        self.version: str = "0" if version is None else version
        """The pipeline's version ("0" unless given)."""
        self._hooks = check_hooks(hooks, self._record_hook_error)
        self.id: str = _new_run_id(self.name)
        """Unique and sortable: UTC start of construction, name, random suffix."""
        self.history_path: Path | None = (
            None if state_history is None else _history_folder(Path(state_history), self.id)
        )
        """The folder of this run's state history (None without ``state_history``)."""
        self.dashboard: Dashboard | None = check_dashboard(dashboard)
        """The run's live page (see `Dashboard`), if it has one."""
        if self.dashboard is not None or self.history_path is not None:
            # Its hooks come first: the dashboard serves before the caller's on_run_start.
            feed = Feed(
                self,
                dashboard=self.dashboard,
                history=self.history_path,
                report=self._record_hook_error,
            )
            given = [] if self._hooks is None else [self._hooks]
            self._hooks = check_hooks([feed.hooks(), *given], self._record_hook_error)
        self.config_hash: str = config_hash(pipeline)
        """A short hash of the pipeline's structure (see `config_hash`)."""
        self.started_at: float | None = None
        """Wall-clock start (POSIX seconds), None before the run starts."""
        self._status: RunStatus = "pending"
        keys = _stage_keys(pipeline.steps)
        self._lives = [
            _Live(key, step.label, _kind(step), unguarded(step)[1])
            for key, step in zip(keys, pipeline.steps, strict=True)
        ]
        self._observed = metrics or self._hooks is not None or state_history is not None
        pipeline_steps = pipeline.steps
        checkpointing = self._checkpointing = _checkpointing(
            checkpoint,
            self.name,
            source,
            check_every(every, interval),
            self.version,
            codec,
            migrate,
        )
        if checkpointing is not None:
            pipeline_steps = checkpointing.prepare(pipeline_steps)
            source = checkpointing.source()
        flow: Flow[Any]
        self._watch = _Watch(
            self, self._lives, sample_every=_SAMPLE_EVERY if timing == "sampled" else 0
        )
        self._direct = False
        if self._observed:
            steps = tuple(
                _instrument(step, live, self, self._watch, timing)
                for step, live in zip(pipeline_steps, self._lives, strict=True)
            )
            instrumented: Stage[Any, Any] = Stage(steps)
            # A pipeline of item steps pulls from its source only when the
            # consumer asks for an item: it is held at the consumer. Others
            # (buffers, concurrent steps) pull on their own: held at the source.
            self._hold_at_consumer = all(isinstance(step, ItemOp) for step in steps)
            gated: Source[Any] = source if self._hold_at_consumer else _Gate(source, self)
            flow = Flow(gated, instrumented)
        else:
            self._hold_at_consumer = False
            stage: Stage[Any, Any] = pipeline
            if checkpointing is not None:
                stage = Stage(pipeline_steps)
            flow = Flow(source, stage)
        self._flow = flow
        self._source = source
        self._relay: AsyncIterator[T_co] | None = None
        self._resume_signal: Handle[Any] | None = None
        self._updates = Updates(self.statistics)
        self._history = (
            None
            if self.history_path is None
            else History(self.history_path, self._record_hook_error)
        )
        self._hook_errors: list[HookError] = []
        self._items_out = 0
        self._iterated = False
        self._started = False
        self._finished = False
        self._clock: Clock | None = None
        self._ended_at: float | None = None
        self._started_clock: float | None = None

    def __repr__(self) -> str:
        return f"<Run {self.id} {self._status}>"

    @property
    def resumed_from(self) -> Checkpoint | None:
        """The checkpoint this run resumed from (None: it started afresh, or has not started)."""
        return None if self._checkpointing is None else self._checkpointing.resumed_from

    @property
    def last_checkpoint(self) -> Checkpoint | None:
        """The run's newest checkpoint: the last it saved, else the one it resumed from.

        None when it has neither (no ``checkpoint=``, or none saved yet).
        """
        layer = self._checkpointing
        return None if layer is None else layer.last_saved or layer.resumed_from

    def _results(self) -> AsyncIterator[Any]:
        """What the run's loops iterate: the flow, untagged when checkpointing."""
        checkpointing = self._checkpointing
        return self._flow if checkpointing is None else checkpointing.outputs(self._flow)

    @property
    def status(self) -> RunStatus:
        """The run's current status."""
        return self._status

    @property
    def hook_errors(self) -> tuple[HookError, ...]:
        """The errors raised by hooks (and state-history writes), in order."""
        return tuple(self._hook_errors)

    # -- statistics --------------------------------------------------------

    def _wall_time(self) -> float:
        clock = self._clock
        if clock is None or self._started_clock is None:
            return 0.0
        end = self._ended_at if self._ended_at is not None else clock.now()
        return max(0.0, end - self._started_clock)

    def statistics(self) -> RunStatistics:
        """An immutable snapshot of the run and each step, at any moment.

        Examples:
            >>> import asyncio
            >>> from streamkit import map_
            >>> run = Run(map_(str), range(3))
            >>> run.statistics().status
            'pending'
            >>> _ = asyncio.run(run.collect())
            >>> run.statistics().stages[0].items_out
            3
        """
        wall_time = self._wall_time()
        stages = tuple(live.snapshot(wall_time) for live in self._lives)
        items_out = self._items_out
        if self._direct and self._observed and not self._finished and stages:
            # Iterated without a relay: the last step's output is the run's.
            items_out = stages[-1].items_out
        return RunStatistics(
            run_id=self.id,
            name=self.name,
            version=self.version,
            config_hash=self.config_hash,
            status=self._status,
            started_at=self.started_at,
            wall_time=wall_time,
            items_out=items_out,
            stages=stages,
        )

    # -- pause -------------------------------------------------------------

    def pause(self) -> None:
        """Hold the source: no item is pulled from it until `resume`.

        Items already pulled go on through the pipeline. Pausing a paused
        or finished run does nothing.

        Raises:
            RuntimeError: The run is not observed (``metrics=False`` without
                hooks or history: its stage runs untouched).

        Examples:
            >>> import asyncio
            >>> from streamkit import map_
            >>> async def main() -> list[str]:
            ...     run = Run(map_(str), range(3))
            ...     run.pause()
            ...     statuses = [run.status]
            ...     run.resume()
            ...     items = await run.collect()
            ...     return statuses + items
            >>> asyncio.run(main())
            ['paused', '0', '1', '2']
        """
        if not self._observed:
            raise RuntimeError(
                "pause() needs an observed run (metrics=True, hooks or state_history): "
                "with none of them the stage runs untouched"
            )
        if self._finished or self._resume_signal is not None:
            return
        self._resume_signal = signal_maker()()
        self._status = "paused"
        # Item steps pull when the consumer asks: their segment holds.
        self._watch.paused = self._hold_at_consumer

    def resume(self) -> Awaitable[None]:
        """Release the source held by `pause`; awaiting the result is optional."""
        signal = self._resume_signal
        if signal is not None:
            self._resume_signal = None
            self._watch.paused = False
            wake(signal)
            if not self._finished:
                self._status = "running" if self._started else "pending"
        return _Resumed()

    # -- running -----------------------------------------------------------

    def _claim(self) -> None:
        if self._iterated:
            raise RuntimeError(f"{self!r} was already iterated: a Run is single-use")
        self._iterated = True

    def __aiter__(self) -> AsyncIterator[T_co]:
        self._claim()
        hooks = self._hooks
        if (
            self._checkpointing is None
            and (hooks is None or hooks.on_item is None)
            and self._flow.end_with(Ends(self._start, self._ended))
        ):
            # Nothing to do per item: hand out the flow's own iterator; its
            # last fused segment starts the run and tells how it ended (and a
            # watched one holds while paused). No relay layer, no cost per item.
            self._direct = True
            iterator = self._relay = aiter(self._flow)
            return iterator
        relay = self._relay = self._relay_items()
        return relay

    async def _ended(self, error: BaseException | None, passed: int) -> None:
        """The end of a run iterated without a relay (see `__aiter__`)."""
        self._items_out = passed
        if error is None:
            await self._finish("succeeded", None)
        elif isinstance(error, Exception):
            await self._finish("failed", error)
        else:
            await self._finish("cancelled", error)

    async def _held(self) -> None:
        """Wait while the run is paused (for pipelines held at the consumer)."""
        while (signal := self._resume_signal) is not None:
            await wait_for_signal(signal)

    async def _relay_items(self) -> AsyncIterator[T_co]:
        if not self._started:
            await self._start()
        hooks = self._hooks
        on_item = None if hooks is None else hooks.on_item
        hold = self._hold_at_consumer
        async with self._ending():
            if hold and self._resume_signal is not None:
                await self._held()
            if on_item is None and not hold:
                async for item in self._results():
                    self._items_out += 1
                    yield item
            else:
                async for item in self._results():
                    self._items_out += 1
                    if on_item is not None:
                        await self._call_hook("on_item", on_item, item)
                    yield item
                    if hold and self._resume_signal is not None:
                        await self._held()

    async def _run_to_end(self, items: list[Any] | None) -> None:
        """Consume the whole flow (keeping the items when given a list)."""
        await self._start()
        hooks = self._hooks
        on_item = None if hooks is None else hooks.on_item
        hold = self._hold_at_consumer
        keep = None if items is None else items.append
        async with self._ending():
            if hold and self._resume_signal is not None:
                await self._held()
            if on_item is None and not hold and keep is None:
                count = 0
                try:
                    async for _ in self._results():
                        count += 1
                finally:
                    self._items_out += count
            else:
                async for item in self._results():
                    self._items_out += 1
                    if keep is not None:
                        keep(item)
                    if on_item is not None:
                        await self._call_hook("on_item", on_item, item)
                    if hold and self._resume_signal is not None:
                        await self._held()

    def _plain_loop(self) -> bool:
        """Whether `collect` may run the flow as a plain loop (nothing to pause in it)."""
        if self._hooks is not None and self._hooks.on_item is not None:
            return False
        if self._checkpointing is not None:
            return False
        if not self._observed:
            return True
        steps = self._flow.stage.steps
        return is_sync_source(self._source) and all(
            isinstance(step, ItemOp) and not step.is_async for step in steps
        )

    async def collect(self) -> list[T_co]:
        """Run to the end and return the items in a list.

        Examples:
            >>> import asyncio
            >>> from streamkit import map_
            >>> asyncio.run(Run(map_(lambda x: x * 2), [1, 2]).collect())
            [2, 4]
        """
        self._claim()
        if not self._plain_loop():
            items: list[T_co] = []
            await self._run_to_end(items)
            return items
        await self._start()
        async with self._ending():
            items = await _collect(self._flow)
            self._items_out = len(items)
        return items

    async def drain(self) -> RunStatistics:
        """Run to the end, dropping the items; return the final statistics.

        Examples:
            >>> import asyncio
            >>> from streamkit import map_
            >>> asyncio.run(Run(map_(str), range(5)).drain()).items_out
            5
        """
        self._claim()
        await self._run_to_end(None)
        return self.statistics()

    async def aclose(self) -> None:
        """Close the pipeline; a run that has not ended becomes ``"cancelled"``."""
        if self._finished:
            return
        if not self._started:
            self._iterated = True
            self._finished = True
            self._status = "cancelled"
            for live in self._lives:
                live.status = "cancelled"
            self._signal_done()
            await self._flow.aclose()
            return
        relay = self._relay
        if relay is not None:
            await aclose(relay)
        await self._finish("cancelled", None)

    async def __aenter__(self) -> Run[T_co]:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- lifecycle ---------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _ending(self) -> AsyncGenerator[None]:
        """Finish the run as its block ends: succeeded, failed (an error) or cancelled."""
        try:
            yield
        except Exception as exc:
            await self._finish("failed", exc)
            raise
        except BaseException as exc:
            await self._finish("cancelled", exc)
            raise
        await self._finish("succeeded", None)

    async def _start(self) -> None:
        self._started = True
        self._iterated = True
        clock = self._clock = current_clock()
        self._started_clock = clock.now()
        self.started_at = time.time()
        if self._status == "pending":
            self._status = "running"
        if self._checkpointing is not None:
            try:
                await self._checkpointing.start(clock)
            except BaseException as exc:
                await self._finish("failed" if isinstance(exc, Exception) else "cancelled", exc)
                raise
        for live in self._lives:
            live.status = "executing"
            guard = live.guard
            if guard is not None:
                report = guard.report
                if guard.label in report.stages:
                    live.baseline = report.statistics(guard.label)
                live.records_start = len(report.records)
        if self._history is not None:
            await self._history.started(self.statistics())
        hooks = self._hooks
        if hooks is None:
            return
        if hooks.on_run_start is not None:
            await self._call_hook("on_run_start", hooks.on_run_start, self.statistics())
        if hooks.on_stage_start is not None:
            for stats in self.statistics().stages:
                await self._call_hook("on_stage_start", hooks.on_stage_start, stats)

    async def _finish(self, status: RunStatus, error: BaseException | None) -> None:
        if self._finished:
            return
        self._finished = True
        checkpoint_error = await self._last_checkpoint(status)
        if checkpoint_error is not None:
            status, error = "failed", checkpoint_error
        clock = self._clock
        if clock is not None:
            self._ended_at = clock.now()
        self._status = status
        signal, self._resume_signal = self._resume_signal, None
        wake(signal)
        failed_stage: _Live | None = None
        for live in self._lives:
            if status == "succeeded":
                live.status = "succeeded"
            elif error is not None and live.failure is error and failed_stage is None:
                live.status = "failed"
                failed_stage = live
            else:
                live.status = "cancelled"
        try:
            await self._flow.aclose()
        finally:
            self._signal_done()
            await self._report_end(status, error, failed_stage)
        if checkpoint_error is not None:
            raise checkpoint_error

    async def _last_checkpoint(self, status: RunStatus) -> Exception | None:
        """End the run's checkpoints; the error, if that fails a succeeding run."""
        checkpointing = self._checkpointing
        if checkpointing is None:
            return None
        try:
            await checkpointing.finish(status == "succeeded")
        except Exception as exc:
            if status == "succeeded":
                return exc
            self._record_hook_error("checkpoint", exc)
        return None

    def _signal_done(self) -> None:
        self._updates.ended()

    async def _report_end(
        self, status: RunStatus, error: BaseException | None, failed_stage: _Live | None
    ) -> None:
        hooks = self._hooks
        stats = self.statistics()
        if hooks is not None:
            if status == "failed" and error is not None and hooks.on_error is not None:
                stage_stats = None
                if failed_stage is not None:
                    stage_stats = stats.stage(failed_stage.key)
                await self._call_hook("on_error", hooks.on_error, stage_stats, error)
            if hooks.on_stage_end is not None:
                for stage_stats in stats.stages:
                    await self._call_hook("on_stage_end", hooks.on_stage_end, stage_stats)
            if hooks.on_run_end is not None:
                await self._call_hook("on_run_end", hooks.on_run_end, stats)
        if self._history is not None:
            failures = [
                (live.new_records(), error if live is failed_stage else None)
                for live in self._lives
            ]
            layer = self._checkpointing
            codec = RUN_CODEC if layer is None else layer.codec  # items can be replayed
            await self._history.ended(stats, error, failures, codec)

    async def _call_hook(self, name: str, hook: Callable[..., object], *args: Any) -> None:
        await call_hook(name, hook, args, self._record_hook_error)

    def _record_hook_error(self, name: str, exc: Exception) -> None:
        self._hook_errors.append(HookError(name, exc))
        logger.error("streamkit: %s of run %s raised %r", name, self.id, exc, exc_info=exc)

    # -- events ------------------------------------------------------------

    def events(self, *, rate: float = 4.0) -> AsyncIterator[StateUpdate]:
        """Field-level state updates, at most ``rate`` per second, until the run ends.

        The first update carries every field; each later one only the fields
        that changed (``update_mask``), on the current clock's ticks of
        ``1 / rate`` seconds. When the run ends, a last update with the
        final state is delivered at once, then the iterator ends. Updates
        are JSON-serializable (ready for a websocket).

        Args:
            rate: Updates per second (positive, finite).

        Raises:
            TypeError: ``rate`` is not a number.
            ValueError: ``rate`` is not positive and finite.

        Examples:
            >>> import asyncio
            >>> from streamkit import map_
            >>> async def main() -> list[str]:
            ...     run = Run(map_(str), range(3))
            ...     await run.drain()
            ...     return [update["payload"]["run.status"] async for update in run.events()]
            >>> asyncio.run(main())
            ['succeeded']
        """
        given: object = rate
        if not isinstance(given, int | float) or isinstance(given, bool):  # pyright: ignore[reportUnnecessaryIsInstance] - untyped callers
            raise TypeError(f"rate must be a number, got {type(given).__name__}")
        if not (0 < given < float("inf")):
            raise ValueError(f"rate must be positive and finite, got {given}")
        return self._updates.stream(1.0 / given)
