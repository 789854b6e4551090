"""Run metrics: a bounded-memory quantile sketch, statistics snapshots, exporters.

`QuantileSketch` estimates quantiles of call durations with a fixed relative
error, in bounded memory (a log-bucketed histogram, as in DDSketch). The
snapshots (`StageStatistics`, `RunStatistics`) are frozen slotted records
that `streamkit.Run.statistics` returns; `to_prometheus` renders one in the
Prometheus text exposition format. Nothing here touches the event loop.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Any, Final

from ._core import check_count

_MIN_VALUE: Final = 1e-9
"""Values at or below this (one nanosecond, for durations) count as zero."""


class QuantileSketch:
    """Quantiles of a stream of non-negative numbers, with bounded memory.

    Values fall into logarithmic buckets ``(g**(i-1), g**i]`` with ``g =
    (1 + a) / (1 - a)``; a quantile is read as the middle of the bucket that
    holds the value of that rank, so it is within the relative error ``a``
    (``relative_accuracy``) of the exact value ``sorted(values)[floor(q *
    (n - 1))]``. Values at or below 1e-9 are counted as 0. At most
    ``max_buckets`` buckets are kept: past that, the lowest ones are merged
    (only the smallest quantiles then lose accuracy). Samples are never kept.

    Args:
        relative_accuracy: The relative error bound ``a``, 0 < a < 1.
        max_buckets: The most buckets kept (at least 16).

    Raises:
        TypeError: An argument has the wrong type.
        ValueError: An argument is out of range.

    Examples:
        >>> sketch = QuantileSketch(relative_accuracy=0.01)
        >>> for value in range(1, 101):
        ...     sketch.add(float(value))
        >>> sketch.count, round(sketch.quantile(0.5)), round(sketch.quantile(0.99))
        (100, 50, 99)
    """

    __slots__ = ("_buckets", "_gamma_log", "_zeros", "count", "max_buckets", "relative_accuracy")

    def __init__(self, relative_accuracy: float = 0.01, max_buckets: int = 2048) -> None:
        accuracy: object = relative_accuracy
        if not isinstance(accuracy, float | int) or isinstance(accuracy, bool):  # pyright: ignore[reportUnnecessaryIsInstance] - untyped callers
            raise TypeError(f"relative_accuracy must be a number, got {type(accuracy).__name__}")
        if not 0 < accuracy < 1:
            raise ValueError(f"relative_accuracy must be in (0, 1), got {accuracy}")
        check_count(max_buckets, "max_buckets", minimum=16)
        self.relative_accuracy = float(relative_accuracy)
        self.max_buckets = max_buckets
        gamma = (1 + self.relative_accuracy) / (1 - self.relative_accuracy)
        self._gamma_log = math.log(gamma)
        self._buckets: dict[int, int] = {}
        self._zeros = 0
        self.count = 0
        """How many values were added."""

    def __repr__(self) -> str:
        return f"<QuantileSketch count={self.count} buckets={len(self._buckets)}>"

    def add(self, value: float) -> None:
        """Add one value (negative values raise `ValueError`)."""
        if not value >= 0:
            raise ValueError(f"a QuantileSketch takes non-negative values, got {value!r}")
        self.count += 1
        if value <= _MIN_VALUE:
            self._zeros += 1
            return
        index = math.ceil(math.log(value) / self._gamma_log)
        buckets = self._buckets
        buckets[index] = buckets.get(index, 0) + 1
        if len(buckets) > self.max_buckets:
            self._collapse()

    def _collapse(self) -> None:
        # Merge the two lowest buckets into the higher one.
        low, second = sorted(self._buckets)[:2]
        self._buckets[second] += self._buckets.pop(low)

    def quantile(self, q: float) -> float | None:
        """The estimated ``q``-quantile (0 <= q <= 1); None when empty."""
        if not 0 <= q <= 1:
            raise ValueError(f"q must be in [0, 1], got {q}")
        if self.count == 0:
            return None
        rank = math.floor(q * (self.count - 1))
        seen = self._zeros
        if rank < seen:
            return 0.0
        for index in sorted(self._buckets):
            seen += self._buckets[index]
            if rank < seen:
                return 2 * math.exp(index * self._gamma_log) / (1 + math.exp(self._gamma_log))
        raise AssertionError("unreachable: the ranks add up to the count")  # pragma: no cover


@dataclass(frozen=True, slots=True)
class StageStatistics:
    """A snapshot of one step of a run's pipeline (see `streamkit.Run.statistics`).

    Examples:
        >>> stats = StageStatistics(key="filter_(odd)", label="filter_(odd)", kind="filter",
        ...                         status="succeeded", items_in=4, items_out=2, filtered=2)
        >>> stats.to_dict()["filtered"]
        2
    """

    key: str
    """The step's label, with ``#<n>`` appended when several steps share it."""
    label: str
    """The step's label."""
    kind: str
    """``map``, ``filter``, ``tap``, ``flat_map`` or ``transform``."""
    status: str
    """``pending``, ``executing``, ``retrying``, ``succeeded``, ``failed`` or ``cancelled``."""
    items_in: int = 0
    """Items that entered the step."""
    items_out: int = 0
    """Items the step passed on."""
    filtered: int = 0
    """Items a filter dropped (not counting failures a guard dropped)."""
    errors: int = 0
    """Items whose call failed for good (raised, or handled by the step's guard)."""
    retries: int = 0
    """Retried attempts (guarded steps)."""
    skipped: int = 0
    """Failed items dropped by ``on_error="skip"``."""
    collected: int = 0
    """Failed items recorded by ``on_error="collect"``."""
    dead_lettered: int = 0
    """Failed items sent to a dead-letter sink (``on_error="split"``)."""
    abandoned: int = 0
    """Items that entered but were neither passed on, dropped nor failed when the step stopped."""
    in_flight: int = 0
    """Calls running now (concurrent steps; fused steps: at most 1)."""
    timed_calls: int = 0
    """Calls whose duration was measured (a sample; see docs/observability.md)."""
    time_sum: float = 0.0
    """Total seconds of the timed calls."""
    time_p50: float | None = None
    """Median seconds per call (None before any call was timed)."""
    time_p95: float | None = None
    """95th percentile of seconds per call."""
    time_p99: float | None = None
    """99th percentile of seconds per call."""
    throughput: float = 0.0
    """Items out per second of the run's wall time."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict of the fields."""
        return asdict(self)


@dataclass(frozen=True, slots=True)
class RunStatistics:
    """A snapshot of a whole run (returned by `streamkit.Run.statistics`).

    Examples:
        >>> import json
        >>> stats = RunStatistics(run_id="r", name=None, version="0", config_hash="ab",
        ...                       status="pending", started_at=None, wall_time=0.0,
        ...                       items_out=0, stages=())
        >>> json.loads(stats.to_json())["status"]
        'pending'
    """

    run_id: str
    """The run's id."""
    name: str | None
    """The run's name, if given."""
    version: str
    """The pipeline version given to the run ("0" by default)."""
    config_hash: str
    """A short hash of the pipeline's structure."""
    status: str
    """``pending``, ``running``, ``paused``, ``succeeded``, ``failed`` or ``cancelled``."""
    started_at: float | None
    """Wall-clock start (POSIX seconds), None before the run starts."""
    wall_time: float
    """Seconds on the run's clock since it started (until it ended, once ended)."""
    items_out: int
    """Items the run yielded."""
    stages: tuple[StageStatistics, ...]
    """One entry per step of the pipeline, in order."""

    def stage(self, key: str) -> StageStatistics:
        """The entry of the step with this key; `KeyError` if there is none."""
        for entry in self.stages:
            if entry.key == key:
                return entry
        raise KeyError(key)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict; ``stages`` is a list of dicts."""
        return {
            "run_id": self.run_id,
            "name": self.name,
            "version": self.version,
            "config_hash": self.config_hash,
            "status": self.status,
            "started_at": self.started_at,
            "wall_time": self.wall_time,
            "items_out": self.items_out,
            "stages": [entry.to_dict() for entry in self.stages],
        }

    def to_json(self) -> str:
        """`to_dict` as JSON text (keys sorted)."""
        return json.dumps(self.to_dict(), sort_keys=True)


_STATUS_CODES: Final = {
    "pending": 0,
    "running": 1,
    "executing": 1,
    "retrying": 1,
    "paused": 2,
    "succeeded": 3,
    "failed": 4,
    "cancelled": 5,
}

_STAGE_COUNTERS: Final = (
    ("items_in", "Items that entered the stage."),
    ("items_out", "Items the stage passed on."),
    ("filtered", "Items a filter dropped."),
    ("errors", "Items whose call failed for good."),
    ("retries", "Retried attempts."),
    ("skipped", "Failed items skipped."),
    ("collected", "Failed items collected."),
    ("dead_lettered", "Failed items dead-lettered."),
    ("abandoned", "Items left unfinished when the stage stopped."),
)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    return repr(float(value))


def to_prometheus(stats: RunStatistics, *, prefix: str = "streamkit") -> str:
    """Render a snapshot in the Prometheus text exposition format (version 0.0.4).

    Counters end in ``_total``; every sample carries the ``run_id`` label, and
    stage samples a ``stage`` label (the stage key). Call durations are a
    ``summary`` with quantiles 0.5, 0.95 and 0.99. Status is exported as a
    gauge code: pending 0, running/executing 1, paused 2, succeeded 3,
    failed 4, cancelled 5.

    Args:
        stats: A snapshot from `streamkit.Run.statistics`.
        prefix: The metric name prefix.

    Examples:
        >>> stats = RunStatistics(run_id="r1", name=None, version="0", config_hash="ab",
        ...                       status="succeeded", started_at=0.0, wall_time=2.0,
        ...                       items_out=4, stages=())
        >>> print(to_prometheus(stats).splitlines()[2])
        streamkit_run_items_out_total{run_id="r1"} 4
    """
    if not isinstance(stats, RunStatistics):  # pyright: ignore[reportUnnecessaryIsInstance] - untyped callers
        raise TypeError(f"stats must be a RunStatistics, got {type(stats).__name__}")
    run = f'run_id="{_escape(stats.run_id)}"'
    lines = [
        f"# HELP {prefix}_run_items_out_total Items the run yielded.",
        f"# TYPE {prefix}_run_items_out_total counter",
        f"{prefix}_run_items_out_total{{{run}}} {stats.items_out}",
        f"# HELP {prefix}_run_wall_time_seconds Seconds since the run started.",
        f"# TYPE {prefix}_run_wall_time_seconds gauge",
        f"{prefix}_run_wall_time_seconds{{{run}}} {_number(stats.wall_time)}",
        f"# HELP {prefix}_run_status Run status code (see docs/observability.md).",
        f"# TYPE {prefix}_run_status gauge",
        f"{prefix}_run_status{{{run}}} {_STATUS_CODES.get(stats.status, -1)}",
    ]
    if not stats.stages:
        return "\n".join(lines) + "\n"
    labels = [f'{run},stage="{_escape(entry.key)}"' for entry in stats.stages]
    for field_name, help_text in _STAGE_COUNTERS:
        name = f"{prefix}_stage_{field_name}_total"
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} counter"]
        lines += [
            f"{name}{{{label}}} {getattr(entry, field_name)}"
            for label, entry in zip(labels, stats.stages, strict=True)
        ]
    gauges = (
        ("in_flight", "Calls running now.", [str(e.in_flight) for e in stats.stages]),
        (
            "throughput",
            "Items out per second of wall time.",
            [_number(e.throughput) for e in stats.stages],
        ),
        (
            "status",
            "Stage status code.",
            [str(_STATUS_CODES.get(e.status, -1)) for e in stats.stages],
        ),
    )
    for field_name, help_text, values in gauges:
        name = f"{prefix}_stage_{field_name}"
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
        lines += [f"{name}{{{label}}} {value}" for label, value in zip(labels, values, strict=True)]
    name = f"{prefix}_stage_call_seconds"
    lines += [f"# HELP {name} Seconds per call (sampled).", f"# TYPE {name} summary"]
    for label, entry in zip(labels, stats.stages, strict=True):
        for quantile, value in (
            ("0.5", entry.time_p50),
            ("0.95", entry.time_p95),
            ("0.99", entry.time_p99),
        ):
            shown = "NaN" if value is None else _number(value)
            lines.append(f'{name}{{{label},quantile="{quantile}"}} {shown}')
        lines.append(f"{name}_sum{{{label}}} {_number(entry.time_sum)}")
        lines.append(f"{name}_count{{{label}}} {entry.timed_calls}")
    return "\n".join(lines) + "\n"
