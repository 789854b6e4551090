"""A run's field-level state updates (`Run.events`), throttled to a rate."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, TypedDict

from ._runtime import Handle, current_clock, signal_maker, wait_done, wake

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from ._metrics import RunStatistics


class StateUpdate(TypedDict):
    """One message of `Run.events`: the fields that changed since the last one.

    Examples:
        >>> import asyncio
        >>> from streamkit import Run, map_
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


def flat_state(stats: RunStatistics) -> dict[str, Any]:
    """The run's state as dotted paths (``run.status``, ``stages.<key>.items_out``)."""
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


class Updates:
    """The source of one run's state updates; `ended` lets the last one go at once.

    Args:
        statistics: The run's statistics now (`Run.statistics`).
    """

    __slots__ = ("_ended", "_signal", "_statistics")

    def __init__(self, statistics: Callable[[], RunStatistics]) -> None:
        self._statistics = statistics
        self._ended = False
        self._signal: Handle[Any] | None = None

    def ended(self) -> None:
        """The run has ended (its final status is set): wake every reader."""
        self._ended = True
        wake(self._signal)

    async def stream(self, period: float) -> AsyncIterator[StateUpdate]:
        """Updates every ``period`` seconds of the current clock, until the run ends."""
        clock = current_clock()
        last: dict[str, Any] | None = None
        while True:
            ended = self._ended
            state = flat_state(self._statistics())
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
            if ended:
                return
            signal = self._signal
            if signal is None or signal.done():
                signal = self._signal = signal_maker()()
            if not self._ended:
                await wait_done(signal, period, clock)
