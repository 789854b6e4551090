"""What the dashboard and the report show: a view of one run, and the page that draws it.

A `View` is built from what a run reports: its identity and steps, then a
stream of field-level updates (`streamkit.Run.events`, or the ``timeline.jsonl``
of its state history), the values of state keys, and errors. Each change
returns a small *patch* (a JSON-serializable dict) that the live page applies
to its own copy, and `View.snapshot` is what a page that applied every patch
holds: a client that connects late starts from the snapshot and sees what the
others see. The page itself (`render_page`) is one self-contained HTML file:
the packaged chart library (uPlot), styles and script inline, the snapshot
embedded for a report. Nothing here touches the event loop or the network.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Final, Literal

POINTS: Final = 1200
"""Time-series points a live view keeps (5 minutes at 4 updates a second)."""

STATE_HISTORY: Final = 20
"""Values kept per state key by a live view (its small history)."""

ERRORS: Final = 100
"""Error entries a view keeps (the latest)."""

STATE_KEYS: Final = 50
"""State keys shown at most."""

TEXT_LIMIT: Final = 200
"""Characters of a value or message kept (longer ones end with an ellipsis)."""

RATE_WINDOW: Final = 1.0
"""Seconds over which a point's rates are measured (at least the time since the last point)."""

SERIES: Final = ("rate", "p50", "p95", "errors", "retries")
"""The per-stage time series of a view, one value per stage per point."""

_ASSETS: Final = "streamkit._assets"
_PLACEHOLDER: Final = re.compile(r"__([A-Z_]+)__")


def clip(text: str, limit: int = TEXT_LIMIT) -> str:
    """``text``, cut to ``limit`` characters (the last one an ellipsis when cut)."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def shown(value: object) -> Any:
    """A state value as the page shows it: a JSON number, string, bool or null, else its repr.

    Strings and reprs are cut to 200 characters; NaN and infinities become strings.

    Examples:
        >>> shown(3), shown("a"), shown(float("nan")), shown({1, 2})
        (3, 'a', 'nan', '{1, 2}')
    """
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, str):
        return clip(value)
    try:
        text = repr(value)
    except Exception as exc:  # a broken __repr__ must not break the view
        text = f"<unrepresentable {type(value).__name__}: {type(exc).__name__}>"
    return clip(text)


def error_entry(
    t: float,
    stage: str | None,
    kind: Literal["fatal", "retry"],
    error: BaseException,
    *,
    attempt: int | None = None,
    index: int | None = None,
) -> dict[str, Any]:
    """An error as a view lists it: when, where (step key; None: the source), what.

    ``attempt`` and ``index`` are those of a retry: the attempt that failed
    and the item's index in the step's input.
    """
    cls = type(error)
    name = (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )
    try:
        message = str(error)
    except Exception:  # a broken __str__ must not break the view
        message = "<unprintable message>"
    return {
        "t": t,
        "stage": stage,
        "kind": kind,
        "type": clip(name),
        "message": clip(message, 500),
        "attempt": attempt,
        "index": index,
    }


# --------------------------------------------------------------------------- the stage graph


def _split_top(text: str, separator: str) -> list[str] | None:
    """``text`` split at ``separator`` outside brackets and quotes; None if unbalanced."""
    parts: list[str] = []
    depth = 0
    quote = ""
    start = 0
    i = 0
    while i < len(text):
        char = text[i]
        if quote:
            if char == "\\":
                i += 1
            elif char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
            if depth < 0:
                return None
        elif depth == 0 and text.startswith(separator, i):
            parts.append(text[start:i])
            start = i + len(separator)
            i = start
            continue
        i += 1
    if depth != 0 or quote:
        return None
    parts.append(text[start:])
    return parts


def lanes(label: str) -> list[dict[str, Any]] | None:
    """The branches of a `fork` or `branch` step, read from its label; None for other steps.

    Examples:
        >>> for lane in lanes("branch(a=map_(f) | filter_(g), b=tap(print))"):
        ...     print(lane)
        {'name': 'a', 'stages': ['map_(f)', 'filter_(g)']}
        {'name': 'b', 'stages': ['tap(print)']}
        >>> lanes("map_(f)") is None
        True
    """
    for prefix in ("fork(", "branch("):
        if not (label.startswith(prefix) and label.endswith(")")):
            continue
        parts = _split_top(label[len(prefix) : -1], ",")
        if parts is None:
            return None
        found: list[dict[str, Any]] = []
        for part in parts:
            name, equals, rest = part.strip().partition("=")
            stages = _split_top(rest, " | ") if equals else None
            if not name or stages is None:
                return None
            found.append({"name": name, "stages": [stage.strip() for stage in stages]})
        return found
    return None


# --------------------------------------------------------------------------- the view


def _number(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


class View:
    """The state of one run as a page shows it, kept up to date by patches.

    Args:
        run: The run's identity: ``id``, ``name``, ``version``,
            ``config_hash``, ``started_at``.
        stages: One dict per step, in order: ``key``, ``label``, ``kind``.
        points: The most time-series points kept (None: all).
        state_history: The most values kept per state key (None: all).

    Examples:
        >>> view = View({"id": "r"}, [{"key": "map_(f)", "label": "map_(f)", "kind": "map"}])
        >>> patch = view.update(0.5, {"run.status": "running", "stages.map_(f).items_out": 10})
        >>> view.snapshot()["fields"]["stages.map_(f).items_out"], patch["point"]["rate"]
        (10, [20.0])
    """

    def __init__(
        self,
        run: dict[str, Any],
        stages: list[dict[str, Any]],
        *,
        points: int | None = POINTS,
        state_history: int | None = STATE_HISTORY,
    ) -> None:
        self.run = run
        self.stages: list[dict[str, Any]] = [
            {
                "key": str(stage["key"]),
                "label": str(stage["label"]),
                "kind": str(stage["kind"]),
                "lanes": lanes(str(stage["label"])),
            }
            for stage in stages
        ]
        self.keys: list[str] = [str(stage["key"]) for stage in stages]
        self.points = points
        self.state_history = state_history
        self.fields: dict[str, Any] = {}
        self.t: list[float] = []
        self.series: dict[str, list[list[float | None]]] = {name: [] for name in SERIES}
        self.state: dict[str, dict[str, Any]] = {}
        self.statuses: list[list[Any]] = []
        self.errors: list[dict[str, Any]] = []
        self._recent: list[tuple[float, list[float]]] = [(0.0, [0.0] * len(self.keys))]
        """Recent (time, items out per step): the rates are taken over about a second."""

    def _field(self, key: str, name: str) -> Any:
        return self.fields.get(f"stages.{key}.{name}")

    def update(
        self, t: float, fields: dict[str, Any], state: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Apply the fields that changed at time ``t`` (and state values); the patch.

        ``t`` is in seconds since the run started. A new time-series point is
        added: each step's rate (items out per second since the last point),
        p50 and p95 (seconds), errors and retries.
        """
        self.fields.update(fields)
        statuses: list[list[Any]] = []
        for who, path in [(None, "run.status")] + [
            (key, f"stages.{key}.status") for key in self.keys
        ]:
            if path in fields:
                statuses.append([t, who, fields[path]])
        self.statuses += statuses
        outs = [_number(self._field(key, "items_out")) or 0.0 for key in self.keys]
        rates = self._rates(t, outs)
        point: dict[str, Any] = {
            "t": t,
            "rate": rates,
            "p50": [_number(self._field(key, "time_p50")) for key in self.keys],
            "p95": [_number(self._field(key, "time_p95")) for key in self.keys],
            "errors": [_number(self._field(key, "errors")) or 0.0 for key in self.keys],
            "retries": [_number(self._field(key, "retries")) or 0.0 for key in self.keys],
        }
        self._add_point(point)
        patch: dict[str, Any] = {"t": t, "fields": fields, "point": point, "statuses": statuses}
        if state:
            patch["state"] = self._set_state(t, state)
        return patch

    def _rates(self, t: float, outs: list[float]) -> list[float | None]:
        """Items out per second of each step, over the last second or so (from the run start)."""
        recent = self._recent
        earlier = [(when, counts) for when, counts in recent if when < t]
        within = [(when, counts) for when, counts in earlier if t - when <= RATE_WINDOW]
        base = within[0] if within else (earlier[-1] if earlier else None)
        rates: list[float | None]
        if base is None:
            rates = [0.0] * len(outs)
        else:
            elapsed = t - base[0]
            rates = [
                max(0.0, (out - before) / elapsed)
                for out, before in zip(outs, base[1], strict=True)
            ]
        recent.append((t, outs))
        del recent[: max(0, len(recent) - 16)]
        return rates

    def _add_point(self, point: dict[str, Any]) -> None:
        self.t.append(point["t"])
        for name in SERIES:
            self.series[name].append(point[name])
        if self.points is not None and len(self.t) > self.points:
            del self.t[0]
            for name in SERIES:
                del self.series[name][0]

    def _set_state(self, t: float, values: dict[str, Any]) -> dict[str, Any]:
        changed: dict[str, Any] = {}
        for name, value in values.items():
            entry = self.state.get(name)
            if entry is None:
                if len(self.state) >= STATE_KEYS:
                    continue
                entry = self.state[name] = {"value": None, "history": []}
            elif entry["value"] == value and entry["history"]:
                continue
            entry["value"] = value
            history: list[list[Any]] = entry["history"]
            history.append([t, value])
            if self.state_history is not None and len(history) > self.state_history:
                del history[0]
            changed[name] = value
        return changed

    def set_state(self, t: float, values: dict[str, Any]) -> dict[str, Any]:
        """Record state values seen at ``t`` (only changes are kept); the patch."""
        return {"t": t, "state": self._set_state(t, values)}

    def error(self, entry: dict[str, Any]) -> dict[str, Any]:
        """Record an error (from `error_entry`); the patch."""
        self.errors.append(entry)
        if len(self.errors) > ERRORS:
            del self.errors[0]
        return {"t": entry["t"], "errors": [entry]}

    def thin(self, most: int) -> None:
        """Keep at most ``most`` time-series points, evenly spread (the last one kept)."""
        count = len(self.t)
        if count <= most:
            return
        step = math.ceil(count / most)
        keep = list(range(count - 1, -1, -step))[::-1]
        self.t = [self.t[i] for i in keep]
        for name in SERIES:
            values = self.series[name]
            self.series[name] = [values[i] for i in keep]

    def snapshot(self) -> dict[str, Any]:
        """Everything the page shows, as one JSON-serializable dict."""
        return {
            "run": self.run,
            "stages": self.stages,
            "limits": {
                "points": self.points,
                "state_history": self.state_history,
                "errors": ERRORS,
            },
            "fields": self.fields,
            "t": self.t,
            "series": self.series,
            "state": self.state,
            "statuses": self.statuses,
            "errors": self.errors,
        }


def to_json(data: object) -> str:
    r"""Compact JSON that is safe inside an HTML ``<script>`` element and an SSE line.

    ``<``, ``>`` and ``&`` are written as ``\\u`` escapes, so no value can
    close the element; no raw newline is ever written.

    Examples:
        >>> to_json({"label": "</script>"})
        '{"label":"\\u003c/script\\u003e"}'
    """
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=True, allow_nan=False, default=repr)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


# --------------------------------------------------------------------------- the page


def asset(name: str) -> str:
    """The text of a packaged asset (``streamkit/_assets/<name>``)."""
    from importlib import resources  # here: only a page needs it, not `import streamkit`

    return resources.files(_ASSETS).joinpath(name).read_text(encoding="utf-8")


def content_security_policy(nonce: str, *, live: bool) -> str:
    """The page's policy: only its own script and styles; the live page may reach its server."""
    connect = "'self'" if live else "'none'"
    return (
        f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
        f"connect-src {connect}; img-src 'none'; font-src 'none'; base-uri 'none'; "
        "form-action 'none'"
    )


def new_nonce() -> str:
    """A fresh nonce for a page's scripts and styles."""
    import secrets

    return secrets.token_urlsafe(16)


def render_page(snapshot: dict[str, Any] | None, *, nonce: str) -> str:
    """The dashboard page: live (``snapshot`` None: it connects to ``events``) or a static report.

    The report embeds ``snapshot``; either way the page holds the chart
    library, its styles and its script, and fetches nothing else.
    """
    live = snapshot is None
    values = {
        "CSP": content_security_policy(nonce, live=live),
        "NONCE": nonce,
        "MODE": "live" if live else "report",
        "UPLOT_CSS": asset("uPlot.min.css"),
        "PAGE_CSS": asset("page.css"),
        "UPLOT_JS": asset("uPlot.iife.min.js"),
        "PAGE_JS": asset("page.js"),
        "DATA": "null" if snapshot is None else to_json(snapshot),
    }
    # One pass: text inserted for a placeholder is never scanned again.
    return _PLACEHOLDER.sub(lambda match: values[match[1]], asset("page.html"))
