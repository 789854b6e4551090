"""OpenTelemetry traces and metrics for streamkit runs.

Install with ``pip install 'streamkit[otel]'`` (the OpenTelemetry API; your
application brings the SDK and its exporters). `OpenTelemetry` turns a run's
lifecycle into spans and metrics through `streamkit.Hooks`::

    telemetry = OpenTelemetry()                     # the global providers
    run = Run(pipeline, source, hooks=telemetry.hooks())

Every run gets a ``streamkit.run`` span, each step of its pipeline a
``streamkit.stage`` child span (they overlap: the steps of a streaming
pipeline run at once) carrying the step's final statistics as attributes;
retries are span events, failures set the ERROR status and record the
exception. Counters of items, errors and retries, gauges of call-time
quantiles and a histogram of run durations go through the metrics API. The
names are listed in docs/observability.md.

``import streamkit`` never imports OpenTelemetry; only this module does.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, ParamSpec, Protocol

try:
    from opentelemetry import metrics, trace
except ImportError as error:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "streamkit.otel needs the OpenTelemetry API: pip install 'streamkit[otel]'"
    ) from error

from . import __version__
from ._hooks import Hooks

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from opentelemetry.context import Context
    from opentelemetry.util.types import AttributeValue

    from ._metrics import RunStatistics, StageStatistics

__all__ = ["OpenTelemetry"]

P = ParamSpec("P")

logger: Final = logging.getLogger("streamkit.otel")

_SCOPE: Final = "streamkit"
"""The instrumentation scope of the tracer and the meter."""

_COUNTERS: Final = (
    ("items_in", "{item}", "Items that entered the stage."),
    ("items_out", "{item}", "Items the stage passed on."),
    ("filtered", "{item}", "Items a filter dropped."),
    ("errors", "{error}", "Items whose call failed for good."),
    ("retries", "{retry}", "Retried attempts."),
    ("skipped", "{item}", "Failed items skipped (on_error='skip')."),
    ("collected", "{item}", "Failed items collected (on_error='collect')."),
    ("dead_lettered", "{item}", "Failed items sent to a dead-letter sink (on_error='split')."),
    ("abandoned", "{item}", "Items left unfinished when the stage stopped."),
)
"""The stage counters: (``StageStatistics`` field, unit, description)."""

_QUANTILES: Final = (("0.5", "time_p50"), ("0.95", "time_p95"), ("0.99", "time_p99"))

_RUN_DURATION_BUCKETS: Final = (
    0.01,
    0.05,
    0.1,
    0.5,
    1.0,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    600.0,
    1800.0,
    3600.0,
    7200.0,
    21600.0,
    86400.0,
)
"""Seconds, from 10 ms to a day: runs last from a blink to a nightly batch."""


class _Retry(Protocol):
    """What ``Hooks.on_retry`` passes (a ``streamkit.RetryEvent``), as far as we read it."""

    @property
    def index(self) -> int: ...
    @property
    def attempt(self) -> int: ...
    @property
    def delay(self) -> float: ...
    @property
    def error(self) -> BaseException: ...


def _never_raises(method: Callable[P, None]) -> Callable[P, None]:
    """Log what a hook raises instead of raising it into the run."""

    @functools.wraps(method)
    def hook(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            method(*args, **kwargs)
        except Exception:
            logger.exception("streamkit.otel: %s raised", method.__name__)

    return hook


def _error_type(error: BaseException) -> str:
    """The ``error.type`` of an exception: its fully qualified class name."""
    cls = type(error)
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


def _stage_attributes(stage: StageStatistics) -> dict[str, AttributeValue]:
    """Every field of a stage snapshot as a ``streamkit.stage.<field>`` attribute.

    None (a quantile before any timed call) is left out, as is any value an
    attribute cannot hold.
    """
    return {
        f"streamkit.stage.{name}": value
        for name, value in stage.to_dict().items()
        if isinstance(value, bool | int | float | str)
    }


@dataclass(frozen=True, slots=True)
class _Instruments:
    """The tracer and the metric instruments of one `OpenTelemetry`."""

    tracer: trace.Tracer
    counters: Mapping[str, metrics.Counter]
    """Per ``StageStatistics`` field (see ``_COUNTERS``)."""
    set_quantile: Callable[[float, Mapping[str, AttributeValue]], None]
    """``set`` of the call-time gauge (its class is not public in opentelemetry.metrics)."""
    run_duration: metrics.Histogram


class OpenTelemetry:
    """Export streamkit runs as OpenTelemetry spans and metrics.

    Pass ``telemetry.hooks()`` to a `streamkit.Run`: the run becomes a
    ``streamkit.run`` span with one ``streamkit.stage`` child span per step,
    and its statistics feed the ``streamkit.stage.*`` counters and gauges
    and the ``streamkit.run.duration`` histogram. The tracer and the meter
    are taken once, here, with the instrumentation scope ``streamkit``.

    Args:
        tracer_provider: Where spans go; None: the global provider
            (`opentelemetry.trace.get_tracer_provider`), looked up lazily so
            that a provider set later is used.
        meter_provider: Where metrics go; None: the global provider
            (`opentelemetry.metrics.get_meter_provider`).

    Examples:
        >>> import asyncio
        >>> from opentelemetry.sdk.trace import TracerProvider
        >>> from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        >>> from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
        ...     InMemorySpanExporter,
        ... )
        >>> from streamkit import Run, filter_, map_
        >>> exporter = InMemorySpanExporter()
        >>> provider = TracerProvider()
        >>> provider.add_span_processor(SimpleSpanProcessor(exporter))
        >>> telemetry = OpenTelemetry(tracer_provider=provider)
        >>> run = Run(map_(int) | filter_(bool), ["0", "1", "2"], name="nightly",
        ...           hooks=telemetry.hooks())
        >>> asyncio.run(run.collect())
        [1, 2]
        >>> [span.name for span in exporter.get_finished_spans()]
        ['streamkit.stage map_(int)', 'streamkit.stage filter_(bool)', 'streamkit.run nightly']
        >>> exporter.get_finished_spans()[1].attributes["streamkit.stage.filtered"]
        1
    """

    __slots__ = ("_instruments",)

    def __init__(
        self,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        meter = metrics.get_meter(_SCOPE, __version__, meter_provider)
        self._instruments = _Instruments(
            tracer=trace.get_tracer(_SCOPE, __version__, tracer_provider),
            counters={
                field: meter.create_counter(f"streamkit.stage.{field}", unit, description)
                for field, unit, description in _COUNTERS
            },
            set_quantile=meter.create_gauge(
                "streamkit.stage.call.duration",
                "s",
                "Seconds per call of the stage's function at the quantile named by the "
                "streamkit.quantile attribute (sampled calls; the latest run's value).",
            ).set,
            run_duration=meter.create_histogram(
                "streamkit.run.duration",
                "s",
                "Wall time of finished runs, by run name and status.",
                explicit_bucket_boundaries_advisory=_RUN_DURATION_BUCKETS,
            ),
        )

    def __repr__(self) -> str:
        return "<streamkit.otel.OpenTelemetry>"

    def hooks(self, *, context: Context | None = None) -> Hooks:
        """Hooks that export one run: pass them to ``Run(..., hooks=...)``.

        Stage hooks do not say which run they belong to, so give each run
        its own ``hooks()`` (reusing them for a later run is fine; sharing
        them between runs at the same time is not: the second run is
        ignored, with a warning on the ``streamkit.otel`` logger). Retries
        are recorded when `streamkit.Hooks` has ``on_retry``.

        Args:
            context: The parent of the run span; None: the context current
                when the run starts (so a span you opened around the run is
                its parent).

        Examples:
            >>> from opentelemetry.trace import NoOpTracerProvider
            >>> from opentelemetry.metrics import NoOpMeterProvider
            >>> telemetry = OpenTelemetry(tracer_provider=NoOpTracerProvider(),
            ...                           meter_provider=NoOpMeterProvider())
            >>> telemetry.hooks().on_run_start is not None
            True
        """
        recorder = _Recorder(self._instruments, context)
        callbacks: dict[str, Callable[..., object]] = {
            "on_run_start": recorder.on_run_start,
            "on_stage_start": recorder.on_stage_start,
            "on_error": recorder.on_error,
            "on_stage_end": recorder.on_stage_end,
            "on_run_end": recorder.on_run_end,
        }
        if "on_retry" in {field.name for field in dataclasses.fields(Hooks)}:
            callbacks["on_retry"] = recorder.on_retry
        return Hooks(**callbacks)


class _Recorder:
    """The spans and metrics of one run (the state behind one `OpenTelemetry.hooks`).

    Stage hooks carry no run id. So that the hooks of another run started
    with the same `Hooks` cannot end this run's spans, what ``on_error`` and
    ``on_stage_end`` report (with the time they report it) is applied by
    ``on_run_end``, once it has checked the run id; streamkit calls
    ``on_error``, ``on_stage_end`` and ``on_run_end`` of one run in a row.
    """

    __slots__ = (
        "_context",
        "_error",
        "_final",
        "_indexes",
        "_instruments",
        "_metric_attributes",
        "_parent",
        "_run_id",
        "_run_span",
        "_stage_spans",
    )

    def __init__(self, instruments: _Instruments, parent: Context | None) -> None:
        self._instruments = instruments
        self._parent = parent
        self._run_id: str | None = None
        self._run_span: trace.Span | None = None
        """The span of the run being exported (None between runs)."""
        self._context: Context | None = None
        """The parent context of the stage spans: the run span's."""
        self._metric_attributes: dict[str, AttributeValue] = {}
        """The metric attributes of the run (its name, if given)."""
        self._indexes: dict[str, int] = {}
        """The run's stage keys and their positions in the pipeline."""
        self._stage_spans: dict[str, trace.Span] = {}
        self._final: dict[str, tuple[StageStatistics, int]] = {}
        """What ``on_stage_end`` reported, and when (ns), per stage key."""
        self._error: tuple[StageStatistics | None, BaseException, int] | None = None
        """What ``on_error`` reported, and when (ns)."""

    # -- start -------------------------------------------------------------

    @_never_raises
    def on_run_start(self, stats: RunStatistics) -> None:
        if self._run_span is not None:
            logger.warning(
                "streamkit.otel: run %s is not exported: its hooks already export run %s "
                "(give each run its own OpenTelemetry.hooks())",
                stats.run_id,
                self._run_id,
            )
            return
        attributes: dict[str, AttributeValue] = {
            "streamkit.run.id": stats.run_id,
            "streamkit.run.version": stats.version,
            "streamkit.run.config_hash": stats.config_hash,
        }
        self._metric_attributes = {}
        if stats.name is not None:
            attributes["streamkit.run.name"] = stats.name
            self._metric_attributes["streamkit.run.name"] = stats.name
        name = "streamkit.run" if stats.name is None else f"streamkit.run {stats.name}"
        span = self._instruments.tracer.start_span(
            name, context=self._parent, attributes=attributes
        )
        self._run_id = stats.run_id
        self._run_span = span
        self._context = trace.set_span_in_context(span, self._parent)
        self._indexes = {stage.key: index for index, stage in enumerate(stats.stages)}
        self._stage_spans = {}
        self._final = {}
        self._error = None

    @_never_raises
    def on_stage_start(self, stage: StageStatistics) -> None:
        if self._run_span is not None and stage.key in self._indexes:
            self._stage_span(stage)

    # -- during the run ----------------------------------------------------

    @_never_raises
    def on_retry(self, stage: StageStatistics, retry: _Retry) -> None:
        if self._run_span is None or stage.key not in self._indexes:
            return
        error = retry.error
        self._stage_span(stage).add_event(
            "retry",
            {
                "streamkit.retry.index": retry.index,
                "streamkit.retry.attempt": retry.attempt,
                "streamkit.retry.delay": float(retry.delay),
                "exception.type": _error_type(error),
                "exception.message": str(error),
            },
        )

    # -- end ---------------------------------------------------------------

    @_never_raises
    def on_error(self, stage: StageStatistics | None, error: BaseException) -> None:
        if self._run_span is not None:
            self._error = (stage, error, time.time_ns())

    @_never_raises
    def on_stage_end(self, stage: StageStatistics) -> None:
        if self._run_span is not None:
            self._final[stage.key] = (stage, time.time_ns())

    @_never_raises
    def on_run_end(self, stats: RunStatistics) -> None:
        span = self._run_span
        final, self._final = self._final, {}
        failure, self._error = self._error, None
        if span is None or stats.run_id != self._run_id:
            return  # the end of a run these hooks do not export: drop what it reported
        try:
            failed_key = None if failure is None else self._record_failure(span, *failure)
            for last in stats.stages:
                stage, end_time = final.get(last.key, (last, time.time_ns()))
                stage_span = self._stage_span(stage)
                stage_span.set_attributes(_stage_attributes(stage))
                if stage.status == "failed" and stage.key != failed_key:
                    stage_span.set_status(trace.StatusCode.ERROR)
                stage_span.end(end_time)
                self._record_stage_metrics(stage)
        finally:
            # Whatever failed above, the run span ends and the hooks are ready for a next run.
            self._run_span = None
            self._context = None
            span.set_attributes(
                {
                    "streamkit.run.status": stats.status,
                    "streamkit.run.items_out": stats.items_out,
                    "streamkit.run.wall_time": stats.wall_time,
                }
            )
            if stats.status == "failed" and failure is None:
                span.set_status(trace.StatusCode.ERROR)
            span.end()
        self._instruments.run_duration.record(
            stats.wall_time, {**self._metric_attributes, "streamkit.run.status": stats.status}
        )

    # -- helpers -----------------------------------------------------------

    def _record_failure(
        self, run_span: trace.Span, stage: StageStatistics | None, error: BaseException, when: int
    ) -> str | None:
        """Mark the run span and the failed stage's span; return that stage's key."""
        spans = [run_span]
        failed_key = None
        if stage is not None and stage.key in self._indexes:
            failed_key = stage.key
            spans.append(self._stage_span(stage))
        for span in spans:
            span.record_exception(error, timestamp=when)
            span.set_attribute("error.type", _error_type(error))
            span.set_status(trace.StatusCode.ERROR, f"{type(error).__name__}: {error}")
        return failed_key

    def _stage_span(self, stage: StageStatistics) -> trace.Span:
        """The stage's span, started now if it was not yet."""
        span = self._stage_spans.get(stage.key)
        if span is None:
            attributes: dict[str, AttributeValue] = {
                "streamkit.stage.key": stage.key,
                "streamkit.stage.label": stage.label,
                "streamkit.stage.kind": stage.kind,
            }
            index = self._indexes.get(stage.key)
            if index is not None:
                attributes["streamkit.stage.index"] = index
            span = self._instruments.tracer.start_span(
                f"streamkit.stage {stage.key}", context=self._context, attributes=attributes
            )
            self._stage_spans[stage.key] = span
        return span

    def _record_stage_metrics(self, stage: StageStatistics) -> None:
        """Add a stage's counts of this run to the counters; set its call-time gauges."""
        instruments = self._instruments
        attributes: dict[str, AttributeValue] = {
            **self._metric_attributes,
            "streamkit.stage.key": stage.key,
        }
        for field, counter in instruments.counters.items():
            value: int = getattr(stage, field)
            if value > 0:
                counter.add(value, attributes)
        for quantile, field in _QUANTILES:
            seconds: float | None = getattr(stage, field)
            if seconds is not None:
                instruments.set_quantile(seconds, {**attributes, "streamkit.quantile": quantile})
