"""A run's feed: its field-level updates kept as a `View`, for a dashboard and for its history.

`Feed` follows one run through hooks that `Run` adds before the caller's
own: when the run starts it opens the run's `Dashboard` (if any) and starts a
task that reads `Run.events`; each update becomes a patch of the view, sent
to the dashboard, and, with ``state_history``, one line a second of
``timeline.jsonl`` in the run's folder. When the run ends, the last update
is delivered, the timeline is written and the dashboard closed before the
``on_run_end`` hook returns: nothing of the feed outlives the run.

With a dashboard, the feed also keeps the last item the run yielded (an
``on_item`` hook), to show the state keys of its envelope.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Final, cast

from ._records import Envelope
from ._runtime import current_clock, in_thread, settled, spawn
from ._view import STATE_KEYS, View, error_entry, shown

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable
    from pathlib import Path

    from ._dashboard import Dashboard
    from ._hooks import RetryEvent
    from ._metrics import RunStatistics, StageStatistics
    from ._run import Run
    from ._runtime import Clock

TIMELINE: Final = "timeline.jsonl"
"""The file of a run's history folder that holds its timeline."""

TIMELINE_PERIOD: Final = 1.0
"""Seconds between two lines of the timeline (the first and the last are always written)."""

_TIMELINE_ERRORS: Final = 1000
"""The most error lines a timeline holds."""

_FLUSH_EVERY: Final = 10
"""Timeline lines gathered before they are appended to the file."""

_NOTHING: Final = object()


def _append(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as file:
        file.write("".join(lines))


class Feed:
    """Follows one run: its view, its dashboard, its timeline.

    Args:
        run: The run followed.
        dashboard: The dashboard that shows it, if any.
        history: The run's history folder, if any (the timeline goes there).
        report: Called with ``"state_history"`` and the error when the
            timeline cannot be written (the run lists it in ``hook_errors``).
    """

    __slots__ = (
        "_clock",
        "_dashboard",
        "_errors_written",
        "_item",
        "_lines",
        "_report",
        "_run",
        "_start",
        "_state",
        "_task",
        "_timeline",
        "_written",
        "_written_at",
        "_written_state",
        "view",
    )

    def __init__(
        self,
        run: Run[Any],
        *,
        dashboard: Dashboard | None,
        history: Path | None,
        report: Callable[[str, Exception], None],
    ) -> None:
        self._run = run
        self._report = report
        self._dashboard = dashboard
        self._timeline = None if history is None else history / TIMELINE
        self.view: View | None = None
        self._item: object = _NOTHING
        self._state: dict[str, Any] = {}
        self._clock: Clock | None = None
        self._start = 0.0
        self._task: asyncio.Task[None] | None = None
        self._lines: list[str] = []
        self._written: dict[str, Any] = {}
        self._written_state: dict[str, Any] = {}
        self._written_at: float | None = None
        self._errors_written = 0

    def hooks(self) -> dict[str, Callable[..., object]]:
        """The hooks that follow the run (``on_item`` only with a dashboard)."""
        hooks: dict[str, Callable[..., object]] = {
            "on_run_start": self._started,
            "on_retry": self._retried,
            "on_error": self._failed,
            "on_run_end": self._ended,
        }
        if self._dashboard is not None:
            hooks["on_item"] = self._seen
        return hooks

    # -- hooks -------------------------------------------------------------

    def _seen(self, item: object) -> None:
        self._item = item

    async def _started(self, stats: RunStatistics) -> None:
        self._clock = clock = current_clock()
        self._start = clock.now()
        self.view = View(
            {
                "id": stats.run_id,
                "name": stats.name,
                "version": stats.version,
                "config_hash": stats.config_hash,
                "started_at": stats.started_at,
            },
            [{"key": s.key, "label": s.label, "kind": s.kind} for s in stats.stages],
        )
        self._task = spawn(self._follow())
        if self._dashboard is not None:
            await self._dashboard.open(self)

    def _now(self) -> float:
        return 0.0 if self._clock is None else max(0.0, self._clock.now() - self._start)

    def _retried(self, stage: StageStatistics, event: RetryEvent) -> None:
        self._record_error(
            error_entry(
                self._now(),
                stage.key,
                "retry",
                event.error,
                attempt=event.attempt,
                index=event.index,
            )
        )

    def _failed(self, stage: StageStatistics | None, error: BaseException) -> None:
        self._record_error(
            error_entry(self._now(), None if stage is None else stage.key, "fatal", error)
        )

    async def _ended(self, stats: RunStatistics) -> None:
        task, self._task = self._task, None
        try:
            if task is not None:
                await settled(task)
                error = None if task.cancelled() else task.exception()
                if error is not None:
                    raise error
            await self._flush()
        finally:
            if self._dashboard is not None:
                await self._dashboard.close()

    # -- following ---------------------------------------------------------

    async def _follow(self) -> None:
        view = self.view
        assert view is not None
        board = self._dashboard
        rate = 1.0 / TIMELINE_PERIOD if board is None else board.rate
        async for update in self._run.events(rate=rate):
            t = max(0.0, update["timestamp"] - self._start)
            patch = view.update(t, update["payload"], self._state_values())
            self._publish(patch)
            await self._record(t, final=self._run.status not in ("pending", "running", "paused"))

    def _state_values(self) -> dict[str, Any]:
        """The state of the last item the run yielded, if it was an envelope."""
        item = self._item
        if not isinstance(item, Envelope):
            return {}
        state = cast("Envelope[object]", item).state
        values: dict[str, Any] = {}
        for name in state:
            if len(values) >= STATE_KEYS:
                break
            values[name] = shown(state[name])
        self._state = values
        return values

    def _publish(self, patch: dict[str, Any]) -> None:
        if self._dashboard is not None:
            self._dashboard.publish(patch)

    def _record_error(self, entry: dict[str, Any]) -> None:
        view = self.view
        if view is None:
            return
        self._publish(view.error(entry))
        if self._timeline is not None and self._errors_written < _TIMELINE_ERRORS:
            self._errors_written += 1
            self._lines.append(json.dumps({"t": entry["t"], "error": entry}, default=repr) + "\n")

    async def _record(self, t: float, *, final: bool) -> None:
        """Add a timeline line at most once a second (and always the last one)."""
        view = self.view
        if self._timeline is None or view is None:
            return
        if not final and self._written_at is not None and t - self._written_at < TIMELINE_PERIOD:
            return
        fields = {
            path: value
            for path, value in view.fields.items()
            if path not in self._written or self._written[path] != value
        }
        state = {
            name: value
            for name, value in self._state.items()
            if name not in self._written_state or self._written_state[name] != value
        }
        self._written = dict(view.fields)
        self._written_state = dict(self._state)
        self._written_at = t
        line: dict[str, Any] = {"t": t, "fields": fields}
        if state:
            line["state"] = state
        self._lines.append(json.dumps(line, default=repr) + "\n")
        if len(self._lines) >= _FLUSH_EVERY:
            await self._flush()

    async def _flush(self) -> None:
        """Append the lines gathered; a write that fails is reported and ends the timeline."""
        path = self._timeline
        lines, self._lines = self._lines, []
        if path is None or not lines:
            return
        try:
            await in_thread(_append, path, lines)
        except OSError as exc:
            self._timeline = None
            self._report("state_history", exc)
