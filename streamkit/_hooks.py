"""Hooks: the callbacks a `Run` calls as it runs, and how several are combined."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias, cast

if TYPE_CHECKING:
    from ._metrics import RunStatistics, StageStatistics

Recorder: TypeAlias = Callable[[str, Exception], None]
"""Records the error of a hook under the hook's name (see `Run.hook_errors`)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Hooks:
    """Callbacks a `Run` calls as it runs; each may be sync or async.

    Every hook is optional. A hook that raises is logged (logger
    ``streamkit.run``) and recorded in `Run.hook_errors`; it never stops the
    run nor loses an item. `Run` takes one `Hooks` or a sequence of them
    (an exporter's and your own, say): each hook is called in order.

    Attributes:
        on_run_start: ``(RunStatistics)``, once, before the first pull.
        on_stage_start: ``(StageStatistics)``, per step, when the run starts
            (a streaming pipeline runs all its steps at once).
        on_item: ``(item)``, per item the run yields (opt-in: costs a call
            per item).
        on_retry: ``(StageStatistics, RetryEvent)``, before each backoff
            wait of a guarded step (``with_retry``); the step's status is
            then ``"retrying"``.
        on_error: ``(StageStatistics | None, exception)``, when the run
            fails; the step is the one that raised (None: the source did).
        on_stage_end: ``(StageStatistics)``, per step, when the run ends.
        on_run_end: ``(RunStatistics)``, once, when the run ends.

    Examples:
        >>> import asyncio
        >>> from streamkit import Run, map_
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
    on_retry: Callable[[StageStatistics, RetryEvent], object] | None = None
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


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryEvent:
    """One retry of a guarded step, as given to `Hooks.on_retry` before its wait.

    Examples:
        >>> import asyncio
        >>> from streamkit import Run, constant, map_, with_retry
        >>> tries = {}
        >>> def flaky(x: int) -> int:
        ...     tries[x] = tries.get(x, 0) + 1
        ...     if tries[x] < 2:
        ...         raise ConnectionError(x)
        ...     return x
        >>> events = []
        >>> hooks = Hooks(on_retry=lambda stage, event: events.append(event))
        >>> pipeline = with_retry(map_(flaky), attempts=2, backoff=constant(0.0))
        >>> asyncio.run(Run(pipeline, [7], hooks=hooks).collect())
        [7]
        >>> [(e.stage, e.index, e.attempt, e.delay, type(e.error).__name__) for e in events]
        [('with_retry(map_(flaky), attempts=2)', 0, 1, 0.0, 'ConnectionError')]
    """

    stage: str
    """The key of the step (as in `StageStatistics.key`)."""
    index: int
    """The item's index in the step's input (0-based)."""
    attempt: int
    """The attempt that just failed (1-based)."""
    delay: float
    """Seconds before the next attempt."""
    error: Exception
    """What the failed attempt raised."""


def _one_hooks(hooks: object, where: str) -> Hooks:
    if isinstance(hooks, Hooks):
        return hooks
    if isinstance(hooks, Mapping):
        given = cast("Mapping[object, object]", hooks)
        names = {field.name for field in dataclasses.fields(Hooks)}
        unknown = [key for key in given if key not in names]
        if unknown:
            raise ValueError(f"{where}: unknown hook names {unknown!r}; known: {sorted(names)}")
        return Hooks(**cast("dict[str, Any]", dict(given)))
    raise TypeError(
        f"{where} must be a Hooks, a mapping, a sequence of them or None, "
        f"got {type(hooks).__name__}"
    )


def check_hooks(hooks: object, record: Recorder) -> Hooks | None:
    """One `Hooks` for what ``Run(hooks=...)`` was given (None: no hook at all).

    Several `Hooks` are combined: each combined hook calls theirs in order
    and records each one's error with ``record``, so that none is lost.
    """
    if hooks is None:
        return None
    if isinstance(hooks, Sequence) and not isinstance(hooks, str | bytes):
        items = cast("Sequence[object]", hooks)
        given = [_one_hooks(item, f"hooks[{n}]") for n, item in enumerate(items)]
        if len(given) <= 1:
            return given[0] if given else None
        combined: dict[str, Any] = {}
        for field in dataclasses.fields(Hooks):
            found = [getattr(one, field.name) for one in given]
            callbacks = [callback for callback in found if callback is not None]
            if len(callbacks) > 1:
                combined[field.name] = _call_in_order(field.name, callbacks, record)
            elif callbacks:
                combined[field.name] = callbacks[0]
        return Hooks(**combined)
    return _one_hooks(hooks, "hooks")


async def call_hook(
    name: str, hook: Callable[..., object], args: tuple[Any, ...], record: Recorder
) -> None:
    """Call one hook (awaiting it if it is async); what it raises goes to ``record``."""
    try:
        result = hook(*args)
        if inspect.isawaitable(result):
            await result
    except Exception as exc:
        record(name, exc)


def _call_in_order(
    name: str, callbacks: list[Callable[..., object]], record: Recorder
) -> Callable[..., Awaitable[None]]:
    async def call_all(*args: Any) -> None:
        for callback in callbacks:
            await call_hook(name, callback, args, record)

    return call_all
