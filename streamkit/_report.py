"""A run's report: one self-contained HTML file with plots, written from its state history.

`write_report` reads a run's history folder (``run_start.json``,
``timeline.jsonl``, ``stage_<n>_failures.json``, ``final.json``, as `Run`
writes them with ``state_history=``), replays its timeline into a `View` and
writes the dashboard's page with that view embedded: throughput over time,
latency percentiles per stage, errors and retries, the status timeline and
the state keys. The file holds the chart library, its styles and its script:
it opens offline and fetches nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, cast

from ._feed import TIMELINE
from ._view import View, clip, new_nonce, render_page

if TYPE_CHECKING:
    import os

REPORT_POINTS: Final = 2000
"""The most time-series points a report plots (a longer timeline is thinned evenly)."""

_RECORDS: Final = 50
"""Failed items listed per stage."""


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data: object = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return cast("dict[str, Any]", data) if isinstance(data, dict) else None


def _timeline(path: Path) -> list[dict[str, Any]]:
    """The lines of a timeline; a line cut short (a run killed while writing) is skipped."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return []
    lines: list[dict[str, Any]] = []
    for raw in text.splitlines():
        try:
            line: object = json.loads(raw)
        except ValueError:
            continue
        if isinstance(line, dict) and isinstance(
            cast("dict[str, Any]", line).get("t"), int | float
        ):
            lines.append(cast("dict[str, Any]", line))
    return lines


def _flat(statistics: dict[str, Any]) -> dict[str, Any]:
    """`RunStatistics.to_dict` as the fields of `streamkit.Run.events`."""
    fields: dict[str, Any] = {
        f"run.{name}": statistics.get(name)
        for name in ("run_id", "status", "items_out", "wall_time")
    }
    fields["run.id"] = fields.pop("run.run_id")
    for entry in cast("list[Any]", statistics.get("stages") or []):
        if isinstance(entry, dict):
            stage = cast("dict[str, Any]", entry)
            for name, value in stage.items():
                if name not in ("key", "label", "kind"):
                    fields[f"stages.{stage.get('key')}.{name}"] = value
    return fields


def _exception(info: object) -> tuple[str, str]:
    if not isinstance(info, dict):
        return "?", ""
    data = cast("dict[str, Any]", info)
    return clip(str(data.get("type", "?")).removeprefix("builtins.")), clip(
        str(data.get("message", "")), 500
    )


def history_view(folder: str | os.PathLike[str]) -> View:
    """The `View` of a run, from its history folder.

    Raises:
        FileNotFoundError: ``folder`` is not a run's history folder.
    """
    root = Path(folder)
    start = _read_json(root / "run_start.json")
    final = _read_json(root / "final.json")
    if start is None and final is None:
        raise FileNotFoundError(f"no run history in {root} (no run_start.json nor final.json)")
    start = start or {}
    statistics: dict[str, Any] = (final or {}).get("statistics") or {}
    stages: list[dict[str, Any]] = [
        cast("dict[str, Any]", entry)
        for entry in cast("list[Any]", start.get("stages") or statistics.get("stages") or [])
        if isinstance(entry, dict)
    ]
    view = View(
        {
            "id": start.get("id", statistics.get("run_id", root.name)),
            "name": start.get("name", statistics.get("name")),
            "version": start.get("version", statistics.get("version", "?")),
            "config_hash": start.get("config_hash", statistics.get("config_hash", "?")),
            "started_at": start.get("started_at", statistics.get("started_at")),
        },
        [
            {
                "key": s.get("key", "?"),
                "label": s.get("label", s.get("key", "?")),
                "kind": s.get("kind", "?"),
            }
            for s in stages
        ],
        points=None,
        state_history=None,
    )
    fatal = False
    for line in _timeline(root / TIMELINE):
        t = float(line["t"])
        error = line.get("error")
        if isinstance(error, dict):
            entry = cast("dict[str, Any]", error)
            fatal = fatal or entry.get("kind") == "fatal"
            view.error(entry)
        elif isinstance(line.get("fields"), dict):
            state = line.get("state")
            view.update(
                t,
                cast("dict[str, Any]", line["fields"]),
                cast("dict[str, Any]", state) if isinstance(state, dict) else None,
            )
    end = statistics.get("wall_time")
    end_t = float(end) if isinstance(end, int | float) else (view.t[-1] if view.t else 0.0)
    if statistics and (not view.t or view.fields.get("run.status") != statistics.get("status")):
        # No timeline (or one cut short): the final statistics are the last point.
        view.update(max(end_t, view.t[-1] if view.t else 0.0), _flat(statistics))
    if final is not None and final.get("error") is not None and not fatal:
        kind, message = _exception(final["error"])
        view.error(
            {
                "t": end_t,
                "stage": None,
                "kind": "fatal",
                "type": kind,
                "message": message,
                "attempt": None,
                "index": None,
            }
        )
    for path in sorted(root.glob("stage_*_failures.json")):
        data = _read_json(path) or {}
        records = cast("list[Any]", data.get("records") or [])
        for record in records[:_RECORDS]:
            if isinstance(record, dict):
                entry = cast("dict[str, Any]", record)
                kind, message = _exception(entry.get("exception"))
                index, attempts = entry.get("index"), entry.get("attempts")
                view.error(
                    {
                        "t": end_t,
                        "stage": data.get("stage"),
                        "kind": "item",
                        "type": kind,
                        "message": message,
                        "attempt": attempts if isinstance(attempts, int) else None,
                        "index": index if isinstance(index, int) else None,
                    }
                )
    view.thin(REPORT_POINTS)
    return view


def write_report(folder: str | os.PathLike[str], path: str | os.PathLike[str]) -> Path:
    """Write the HTML report of one run, from its state-history folder.

    The report is one file that needs no network: the run's stages with their
    final statistics, plots of throughput over time, latency percentiles per
    stage, errors and retries, the status timeline, the state keys and the
    failed items. Its data comes from the folder `Run` writes with
    ``state_history=`` (``run.history_path``); the plots need its
    ``timeline.jsonl``.

    Args:
        folder: The run's history folder (``<state_history>/<run id>``).
        path: The HTML file to write (replaced if it exists).

    Returns:
        The path written.

    Raises:
        FileNotFoundError: ``folder`` holds no run history.

    Examples:
        >>> import asyncio, tempfile
        >>> from pathlib import Path
        >>> from streamkit import Run, map_
        >>> with tempfile.TemporaryDirectory() as directory:
        ...     run = Run(map_(str), range(3), state_history=directory)
        ...     _ = asyncio.run(run.drain())
        ...     written = write_report(run.history_path, Path(directory) / "report.html")
        ...     "<canvas" in written.read_text() or "uPlot" in written.read_text()
        True
    """
    snapshot = history_view(folder).snapshot()
    target = Path(path)
    target.write_text(render_page(snapshot, nonce=new_nonce()), encoding="utf-8")
    return target
