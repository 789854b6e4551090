"""Runs you can watch: lifecycle, statistics, hooks, events and state history.

A `Run` applies a pipeline (any `Stage`) to a source once, and lets you
watch it while it runs: its status, per-step metrics (`statistics`),
callbacks (`Hooks`), throttled field-level state updates (`Run.events`), a
pause that holds the source, and an on-disk history (``state_history=``).

The pipeline is never rewritten by its author: the run instruments a copy of
its steps. Fusable item steps stay fusable (their function is wrapped through
`ItemOp.per_run`); whole-stream steps get a counting generator on their input
and output; the per-item function of a concurrent step is wrapped to count
calls in flight. Without metrics, hooks or history the stage runs untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import inspect
import json
import logging
import os
import re
import secrets
import tempfile
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Generator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, TypeAlias, TypedDict, TypeVar, cast

from ._aggregate import collect as _collect
from ._concurrency import concurrent_transform
from ._core import (
    SKIP,
    ConcurrentOp,
    Flow,
    ItemOp,
    Stage,
    Step,
    Transform,
    aclose,
    is_sync_source,
    open_async,
)
from ._failures import (
    ErrorRecord,
    ExceptionInfo,
    FailureStatistics,
    Guard,
    GuardedTransform,
    unguarded,
)
from ._metrics import QuantileSketch, RunStatistics, StageStatistics
from ._runtime import current_clock, signal_maker, wait_done, wait_for_signal, wake

if TYPE_CHECKING:
    from ._core import Source
    from ._runtime import Clock

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)

RunStatus: TypeAlias = Literal["pending", "running", "paused", "succeeded", "failed", "cancelled"]
"""The status of a run."""

StageStatus: TypeAlias = Literal["pending", "executing", "succeeded", "failed", "cancelled"]
"""The status of one step of a run's pipeline."""

logger: Final = logging.getLogger("streamkit.run")

_SAMPLE_MASK: Final = 15
"""Fused item calls are timed once every 16 calls (the 1st, 17th, ...)."""

_FAILURE_RECORDS_CAP: Final = 100
"""The most error records written per step in the state history."""

_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_RUN_ID: Final = re.compile(r"[0-9]{8}T[0-9]{12}Z(-[A-Za-z0-9][A-Za-z0-9_.-]{0,63})?-[0-9a-f]{8}")

_perf_counter: Final = time.perf_counter


# --------------------------------------------------------------------------- hooks


@dataclass(frozen=True, slots=True, kw_only=True)
class Hooks:
    """Callbacks a `Run` calls as it runs; each may be sync or async.

    Every hook is optional. A hook that raises is logged (logger
    ``streamkit.run``) and recorded in `Run.hook_errors`; it never stops the
    run nor loses an item.

    Attributes:
        on_run_start: ``(RunStatistics)``, once, before the first pull.
        on_stage_start: ``(StageStatistics)``, per step, when the run starts
            (a streaming pipeline runs all its steps at once).
        on_item: ``(item)``, per item the run yields (opt-in: costs a call
            per item).
        on_error: ``(StageStatistics | None, exception)``, when the run
            fails; the step is the one that raised (None: the source did).
        on_stage_end: ``(StageStatistics)``, per step, when the run ends.
        on_run_end: ``(RunStatistics)``, once, when the run ends.

    Examples:
        >>> import asyncio
        >>> from streamkit import map_
        >>> seen = []
        >>> hooks = Hooks(on_stage_end=lambda stage: seen.append((stage.key, stage.status)))
        >>> asyncio.run(Run(map_(str), range(2), hooks=hooks).collect())
        ['0', '1']
        >>> seen
        [('map_(str)', 'succeeded')]
    """

    on_run_start: Callable[[RunStatistics], object] | None = None
    on_stage_start: Callable[[StageStatistics], object] | None = None
    on_item: Callable[[Any], object] | None = None
    on_error: Callable[[StageStatistics | None, BaseException], object] | None = None
    on_stage_end: Callable[[StageStatistics], object] | None = None
    on_run_end: Callable[[RunStatistics], object] | None = None

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is not None and not callable(value):
                raise TypeError(
                    f"hooks: {field.name} must be callable or None, got {type(value).__name__}"
                )


@dataclass(frozen=True, slots=True)
class HookError:
    """A hook that raised, as recorded in `Run.hook_errors`.

    Examples:
        >>> HookError("on_item", ValueError("bad")).hook
        'on_item'
    """

    hook: str
    """The hook's name (``on_item``, ...; ``state_history`` for a failed write)."""
    exception: Exception
    """What it raised."""


class StateUpdate(TypedDict):
    """One message of `Run.events`: the fields that changed since the last one.

    Examples:
        >>> import asyncio
        >>> from streamkit import map_
        >>> async def main() -> StateUpdate:
        ...     run = Run(map_(str), range(2))
        ...     await run.drain()
        ...     return [update async for update in run.events()][0]
        >>> update = asyncio.run(main())
        >>> update["event_type"], update["payload"]["stages.map_(str).items_out"]
        ('state_update', 2)
    """

    event_type: Literal["state_update"]
    timestamp: float
    """The time on the run's clock (`streamkit.current_clock`)."""
    update_mask: list[str]
    """The changed fields, as dotted paths (``run.status``, ``stages.<key>.items_out``)."""
    payload: dict[str, Any]
    """The new value of each changed field, keyed by its path."""


# --------------------------------------------------------------------------- live counters


class _Live:
    """The live counters of one step in one run (mutated by the wrappers)."""

    __slots__ = (
        "baseline",
        "counts_out",
        "errors",
        "failure",
        "guard",
        "in_flight",
        "items_in",
        "items_out",
        "key",
        "kind",
        "label",
        "read",
        "records_start",
        "sketch",
        "status",
        "time_sum",
        "upstream_error",
    )

    def __init__(self, key: str, label: str, kind: str, guard: Guard | None) -> None:
        self.key = key
        self.label = label
        self.kind = kind
        self.guard = guard
        self.status: StageStatus = "pending"
        self.items_in = 0
        self.items_out = 0
        self.counts_out = True
        """False for plain maps and taps: their output is derived from input."""
        self.errors = 0
        self.in_flight = 0
        self.sketch = QuantileSketch()
        self.time_sum = 0.0
        self.failure: BaseException | None = None
        self.upstream_error: BaseException | None = None
        self.baseline = FailureStatistics()
        self.records_start = 0
        self.read: Callable[[], tuple[int, int]] | None = None
        """For fused steps: reads the (calls, items out) counted in the closure."""

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

    def snapshot(self, wall_time: float) -> StageStatistics:
        failures = self.guard_statistics()
        read = self.read
        if read is None:
            items_in, counted_out = self.items_in, self.items_out
        else:
            items_in, counted_out = read()
        if failures is None:
            errors = self.errors
            retries = skipped = collected = dead_lettered = dropped = 0
        else:
            errors = failures.failed
            retries = failures.retries
            skipped = failures.skipped
            collected = failures.collected
            dead_lettered = failures.dead_lettered
            dropped = skipped + collected + dead_lettered
        in_flight = self.in_flight
        items_out = counted_out if self.counts_out else max(0, items_in - self.errors - in_flight)
        filtered = (
            max(0, items_in - items_out - dropped - in_flight) if self.kind == "filter" else 0
        )
        sketch = self.sketch
        return StageStatistics(
            key=self.key,
            label=self.label,
            kind=self.kind,
            status=self.status,
            items_in=items_in,
            items_out=items_out,
            filtered=filtered,
            errors=errors,
            retries=retries,
            skipped=skipped,
            collected=collected,
            dead_lettered=dead_lettered,
            in_flight=in_flight,
            timed_calls=sketch.count,
            time_sum=self.time_sum,
            time_p50=sketch.quantile(0.5),
            time_p95=sketch.quantile(0.95),
            time_p99=sketch.quantile(0.99),
            throughput=items_out / wall_time if wall_time > 0 else 0.0,
        )


# --------------------------------------------------------------------------- instrumentation


def _counting_function(op: ItemOp, live: _Live, fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap one run's function of a fused step: count, and time every 16th call.

    The counters live in the closure (cheaper than attributes) and are read
    through ``live.read``. Plain maps and taps count only their calls: their
    output is the calls minus errors and calls in flight.
    """
    counts_out = op.kind == "filter" or op.may_drop
    is_filter = op.kind == "filter"
    record = live.record
    calls = 0
    out = 0
    awaits: bool | None = True if op.is_async else None

    def read() -> tuple[int, int]:
        return calls, out

    live.read = read

    def fail(exc: Exception) -> None:
        live.errors += 1
        live.failure = exc

    def count(result: Any) -> None:
        nonlocal out
        if is_filter:
            if result:
                out += 1
        elif result is not SKIP:
            out += 1

    async def finish(awaitable: Awaitable[Any], start: float | None) -> Any:
        live.in_flight += 1
        try:
            result = await awaitable
        except Exception as exc:
            fail(exc)
            raise
        finally:
            live.in_flight -= 1
        if start is not None:
            record(_perf_counter() - start)
        if counts_out:
            count(result)
        return result

    def slow(*args: Any) -> Any:
        # The timed call (1 in 16), and every call of an awaiting function.
        nonlocal awaits
        start = _perf_counter() if calls & _SAMPLE_MASK == 1 else None
        try:
            result = fn(*args)
        except Exception as exc:
            fail(exc)
            raise
        if awaits is None:
            awaits = inspect.isawaitable(result)
        if awaits:
            return finish(result, start)
        if start is not None:
            record(_perf_counter() - start)
        if counts_out:
            count(result)
        return result

    if op.with_state:

        def counted_args(*args: Any) -> Any:
            nonlocal calls
            calls += 1
            return slow(*args)

        return counted_args

    if not counts_out:

        def counted_call(item: Any) -> Any:
            nonlocal calls
            calls += 1
            if calls & _SAMPLE_MASK == 1 or awaits:
                return slow(item)
            try:
                return fn(item)
            except Exception as exc:
                fail(exc)
                raise

        return counted_call

    if is_filter:

        def counted_filter(item: Any) -> Any:
            nonlocal calls, out
            calls += 1
            if calls & _SAMPLE_MASK == 1 or awaits:
                return slow(item)
            try:
                result = fn(item)
            except Exception as exc:
                fail(exc)
                raise
            if result:
                out += 1
            return result

        return counted_filter

    def counted_dropping(item: Any) -> Any:
        nonlocal calls, out
        calls += 1
        if calls & _SAMPLE_MASK == 1 or awaits:
            return slow(item)
        try:
            result = fn(item)
        except Exception as exc:
            fail(exc)
            raise
        if result is not SKIP:
            out += 1
        return result

    return counted_dropping


@dataclass(frozen=True, slots=True)
class _CountingPerRun:
    """The ``per_run`` of an instrumented `ItemOp`."""

    op: ItemOp
    live: _Live

    def __call__(self) -> Callable[..., Any]:
        return _counting_function(self.op, self.live, self.op.function_for_run())


def _counting_call(live: _Live, fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap the per-item function of a concurrent step (every call is timed)."""
    guarded = live.guard is not None

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
            live.failure = exc
            raise
        finally:
            live.in_flight -= 1
            live.record(_perf_counter() - start)
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
                if exc is not live.upstream_error and exc is not live.failure:
                    live.failure = exc
                    if live.guard is None:
                        live.errors += 1
                raise
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


def _instrument(step: Step, live: _Live) -> Step:
    """A copy of ``step`` that updates ``live``."""
    if isinstance(step, ItemOp):
        live.counts_out = step.kind == "filter" or step.may_drop
        return dataclasses.replace(step, per_run=_CountingPerRun(step, live))
    item = step.item
    run = step.run
    if isinstance(run, GuardedTransform):
        base = run.base
        wrapped = dataclasses.replace(base, fn=_counting_call(live, base.fn), is_async=True)
        run = GuardedTransform(run.guard, wrapped)
    elif item is not None:
        wrapped = dataclasses.replace(item, fn=_counting_call(live, item.fn), is_async=True)
        run = concurrent_transform(wrapped).run
    return Transform(step.label, _counting_run(run, live), item)


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


def _write_atomically(path: Path, text: str) -> None:
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def _write_files(directory: Path, files: list[tuple[str, Any]]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in files:
        _write_atomically(directory / name, json.dumps(data, indent=2, default=repr) + "\n")


async def _write_off_loop(directory: Path, files: list[tuple[str, Any]]) -> None:
    """The one place that does blocking file I/O: in a worker thread."""
    await asyncio.to_thread(_write_files, directory, files)


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
        hooks: A `Hooks`, or a mapping of hook names to callables.
        metrics: Count items, errors and call times per step (see
            `statistics`). With ``metrics=False``, no hooks and no
            ``state_history`` the stage runs untouched (and `pause` is not
            available).
        state_history: A directory; the run writes ``<dir>/<run id>/``
            (``run_start.json``, ``stage_<n>_failures.json``, ``final.json``).
        version: The pipeline's version, a string ("0" by default).

    Raises:
        TypeError: An argument has the wrong type.
        ValueError: ``name`` has characters outside the allowed set, or
            ``hooks`` names an unknown hook.

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
        "_clock",
        "_done_signal",
        "_ended_at",
        "_finished",
        "_flow",
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
        "config_hash",
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
        hooks: Hooks | Mapping[str, Callable[..., object]] | None = None,
        metrics: bool = True,
        state_history: str | os.PathLike[str] | None = None,
        version: str | None = None,
    ) -> None:
        if not isinstance(pipeline, Stage):  # pyright: ignore[reportUnnecessaryIsInstance] - untyped callers
            raise TypeError(f"pipeline must be a Stage, got {type(pipeline).__name__}")
        if not (hasattr(source, "__aiter__") or hasattr(source, "__iter__")):
            raise TypeError(
                f"source must be an iterable or an async iterable, got {type(source).__name__}"
            )
        self.name: str | None = _check_name(name)
        """The run's name, if given."""
        if version is not None and not isinstance(version, str):  # pyright: ignore[reportUnnecessaryIsInstance] - untyped callers
            raise TypeError(f"version must be a string or None, got {type(version).__name__}")
        self.version: str = "0" if version is None else version
        """The pipeline's version ("0" unless given)."""
        if not isinstance(metrics, bool):  # pyright: ignore[reportUnnecessaryIsInstance] - untyped callers
            raise TypeError(f"metrics must be a bool, got {type(metrics).__name__}")
        self._hooks = _check_hooks(hooks)
        if state_history is not None and not isinstance(state_history, str | os.PathLike):  # pyright: ignore[reportUnnecessaryIsInstance] - untyped callers
            raise TypeError(
                f"state_history must be a path or None, got {type(state_history).__name__}"
            )
        self.id: str = _new_run_id(self.name)
        """Unique and sortable: UTC start of construction, name, random suffix."""
        if not _RUN_ID.fullmatch(self.id):  # pragma: no cover - guaranteed by construction
            raise ValueError(f"invalid run id {self.id!r}")
        self.history_path: Path | None = None
        """The folder of this run's state history (None without ``state_history``)."""
        if state_history is not None:
            root = Path(state_history)
            folder = root / self.id
            if folder.parent != root:  # pragma: no cover - the id has no separator
                raise ValueError(f"run id {self.id!r} would escape {root}")
            self.history_path = folder
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
        flow: Flow[Any]
        if self._observed:
            steps = tuple(
                _instrument(step, live)
                for step, live in zip(pipeline.steps, self._lives, strict=True)
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
            flow = pipeline(source)
        self._flow = flow
        self._source = source
        self._relay: AsyncIterator[T_co] | None = None
        self._resume_signal: asyncio.Future[Any] | None = None
        self._done_signal: asyncio.Future[Any] | None = None
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
        return RunStatistics(
            run_id=self.id,
            name=self.name,
            version=self.version,
            config_hash=self.config_hash,
            status=self._status,
            started_at=self.started_at,
            wall_time=wall_time,
            items_out=self._items_out,
            stages=tuple(live.snapshot(wall_time) for live in self._lives),
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

    def resume(self) -> Awaitable[None]:
        """Release the source held by `pause`; awaiting the result is optional."""
        signal = self._resume_signal
        if signal is not None:
            self._resume_signal = None
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
        relay = self._relay = self._relay_items()
        return relay

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
        try:
            if hold and self._resume_signal is not None:
                await self._held()
            if on_item is None and not hold:
                async for item in self._flow:
                    self._items_out += 1
                    yield item
            else:
                async for item in self._flow:
                    self._items_out += 1
                    if on_item is not None:
                        await self._call_hook("on_item", on_item, item)
                    yield item
                    if hold and self._resume_signal is not None:
                        await self._held()
        except Exception as exc:
            await self._finish("failed", exc)
            raise
        except BaseException as exc:
            await self._finish("cancelled", exc)
            raise
        await self._finish("succeeded", None)

    async def _run_to_end(self, items: list[Any] | None) -> None:
        """Consume the whole flow (keeping the items when given a list)."""
        await self._start()
        hooks = self._hooks
        on_item = None if hooks is None else hooks.on_item
        hold = self._hold_at_consumer
        keep = None if items is None else items.append
        try:
            if hold and self._resume_signal is not None:
                await self._held()
            if on_item is None and not hold and keep is None:
                count = 0
                try:
                    async for _ in self._flow:
                        count += 1
                finally:
                    self._items_out += count
            else:
                async for item in self._flow:
                    self._items_out += 1
                    if keep is not None:
                        keep(item)
                    if on_item is not None:
                        await self._call_hook("on_item", on_item, item)
                    if hold and self._resume_signal is not None:
                        await self._held()
        except Exception as exc:
            await self._finish("failed", exc)
            raise
        except BaseException as exc:
            await self._finish("cancelled", exc)
            raise
        await self._finish("succeeded", None)

    def _plain_loop(self) -> bool:
        """Whether `collect` may run the flow as a plain loop (nothing to pause in it)."""
        if self._hooks is not None and self._hooks.on_item is not None:
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
        try:
            items = await _collect(self._flow)
        except Exception as exc:
            await self._finish("failed", exc)
            raise
        except BaseException as exc:
            await self._finish("cancelled", exc)
            raise
        self._items_out = len(items)
        await self._finish("succeeded", None)
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

    async def _start(self) -> None:
        self._started = True
        self._iterated = True
        clock = self._clock = current_clock()
        self._started_clock = clock.now()
        self.started_at = time.time()
        if self._status == "pending":
            self._status = "running"
        for live in self._lives:
            live.status = "executing"
            guard = live.guard
            if guard is not None:
                report = guard.report
                if guard.label in report.stages:
                    live.baseline = report.statistics(guard.label)
                live.records_start = len(report.records)
        if self.history_path is not None:
            await self._write_history(
                [
                    (
                        "run_start.json",
                        {
                            "id": self.id,
                            "name": self.name,
                            "version": self.version,
                            "config_hash": self.config_hash,
                            "started_at": self.started_at,
                            "stages": [
                                {
                                    "index": n,
                                    "key": live.key,
                                    "label": live.label,
                                    "kind": live.kind,
                                }
                                for n, live in enumerate(self._lives)
                            ],
                        },
                    )
                ]
            )
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

    def _signal_done(self) -> None:
        wake(self._done_signal)

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
        if self.history_path is None:
            return
        files: list[tuple[str, Any]] = []
        for index, live in enumerate(self._lives):
            records = live.new_records()
            fatal = error if live is failed_stage else None
            if not records and fatal is None:
                continue
            files.append(
                (
                    f"stage_{index}_failures.json",
                    {
                        "stage": live.key,
                        "records": [
                            json.loads(record.to_json())
                            for record in records[:_FAILURE_RECORDS_CAP]
                        ],
                        "omitted": max(0, len(records) - _FAILURE_RECORDS_CAP),
                        "fatal": None
                        if fatal is None
                        else ExceptionInfo.from_exception(fatal).to_dict(),
                    },
                )
            )
        files.append(
            (
                "final.json",
                {
                    "status": status,
                    "error": None
                    if error is None or status != "failed"
                    else ExceptionInfo.from_exception(error).to_dict(),
                    "statistics": stats.to_dict(),
                },
            )
        )
        await self._write_history(files)

    async def _write_history(self, files: list[tuple[str, Any]]) -> None:
        assert self.history_path is not None
        try:
            await _write_off_loop(self.history_path, files)
        except Exception as exc:
            self._record_hook_error("state_history", exc)

    async def _call_hook(self, name: str, hook: Callable[..., object], *args: Any) -> None:
        try:
            result = hook(*args)
            if inspect.isawaitable(result):
                await result
        except Exception as exc:
            self._record_hook_error(name, exc)

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
        return self._events(1.0 / given)

    def _flat_state(self) -> dict[str, Any]:
        stats = self.statistics()
        state: dict[str, Any] = {
            "run.id": stats.run_id,
            "run.status": stats.status,
            "run.items_out": stats.items_out,
            "run.wall_time": stats.wall_time,
        }
        for entry in stats.stages:
            for field, value in entry.to_dict().items():
                if field not in ("key", "label", "kind"):
                    state[f"stages.{entry.key}.{field}"] = value
        return state

    async def _events(self, period: float) -> AsyncIterator[StateUpdate]:
        clock = current_clock()
        last: dict[str, Any] | None = None
        while True:
            finished = self._finished
            state = self._flat_state()
            if last is None:
                changed = state
            else:
                changed = {
                    path: value
                    for path, value in state.items()
                    if path not in last or last[path] != value
                }
            if changed:
                yield {
                    "event_type": "state_update",
                    "timestamp": clock.now(),
                    "update_mask": list(changed),
                    "payload": changed,
                }
            last = state
            if finished:
                return
            signal = self._done_signal
            if signal is None or signal.done():
                signal = self._done_signal = signal_maker()()
            await wait_done(signal, period, clock)


def _check_hooks(hooks: object) -> Hooks | None:
    if hooks is None or isinstance(hooks, Hooks):
        return hooks
    if isinstance(hooks, Mapping):
        given = cast("Mapping[object, object]", hooks)
        names = {field.name for field in dataclasses.fields(Hooks)}
        unknown = [key for key in given if key not in names]
        if unknown:
            raise ValueError(f"hooks: unknown hook names {unknown!r}; known: {sorted(names)}")
        return Hooks(**cast("dict[str, Any]", dict(given)))
    raise TypeError(f"hooks must be a Hooks, a mapping or None, got {type(hooks).__name__}")
