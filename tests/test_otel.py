from __future__ import annotations

import asyncio
import dataclasses
import logging
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    Gauge,
    HistogramDataPoint,
    InMemoryMetricReader,
    NumberDataPoint,
    Sum,
)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from streamkit import Hooks, Run, constant, filter_, map_, with_retry
from streamkit._metrics import RunStatistics, StageStatistics
from streamkit.otel import OpenTelemetry, _Recorder  # pyright: ignore[reportPrivateUsage]
from streamkit.testing import SourceError, TrackedSource, virtual_clock

if TYPE_CHECKING:
    from collections.abc import Iterator

STAGE_COUNTERS = (
    "items_in",
    "items_out",
    "filtered",
    "errors",
    "retries",
    "skipped",
    "collected",
    "dead_lettered",
    "abandoned",
)


@dataclass
class Telemetry:
    spans: InMemorySpanExporter
    reader: InMemoryMetricReader
    tracer_provider: TracerProvider
    otel: OpenTelemetry

    def finished(self) -> list[ReadableSpan]:
        return list(self.spans.get_finished_spans())

    def span(self, name: str) -> ReadableSpan:
        (found,) = [span for span in self.finished() if span.name == name]
        return found

    def points(self) -> dict[str, list[Any]]:
        """Metric name -> its data points (of the streamkit scope)."""
        data = self.reader.get_metrics_data()
        result: dict[str, list[Any]] = {}
        if data is None:
            return result
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                assert scope.scope.name == "streamkit"
                for metric in scope.metrics:
                    result.setdefault(metric.name, []).extend(metric.data.data_points)
        return result

    def value(self, name: str, **attributes: object) -> float:
        """The value of the one data point of ``name`` with exactly these attributes."""
        wanted = {f"streamkit.{key.replace('__', '.')}": v for key, v in attributes.items()}
        found = [
            point for point in self.points().get(name, []) if dict(point.attributes or {}) == wanted
        ]
        assert len(found) == 1, (name, wanted, self.points().get(name))
        point = found[0]
        assert isinstance(point, NumberDataPoint)
        return point.value


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    otel = OpenTelemetry(tracer_provider=tracer_provider, meter_provider=meter_provider)
    yield Telemetry(spans, reader, tracer_provider, otel)
    tracer_provider.shutdown()
    meter_provider.shutdown()


def inc(x: int) -> int:
    return x + 1


def odd(x: int) -> bool:
    return x % 2 == 1


def fail_on_3(x: int) -> int:
    if x == 3:
        raise KeyError(x)
    return x


def parent_id(span: ReadableSpan) -> int | None:
    return None if span.parent is None else span.parent.span_id


def span_id(span: ReadableSpan) -> int:
    context = span.context
    assert context is not None
    value: int = context.span_id
    return value


def trace_id(span: ReadableSpan) -> int:
    context = span.context
    assert context is not None
    value: int = context.trace_id
    return value


# --------------------------------------------------------------------------- spans


async def test_one_run_span_with_a_child_span_per_stage(telemetry: Telemetry) -> None:
    run = Run(map_(inc) | filter_(odd), range(10), name="nightly", hooks=telemetry.otel.hooks())
    assert await run.collect() == [1, 3, 5, 7, 9]
    spans = telemetry.finished()
    assert [span.name for span in spans] == [
        "streamkit.stage map_(inc)",
        "streamkit.stage filter_(odd)",
        "streamkit.run nightly",
    ]
    run_span = spans[-1]
    assert run_span.parent is None
    assert all(span.kind is SpanKind.INTERNAL for span in spans)
    for stage_span in spans[:-1]:
        assert parent_id(stage_span) == span_id(run_span)
        assert trace_id(stage_span) == trace_id(run_span)
    # The steps of a streaming pipeline run at once: their spans overlap, inside the run's.
    starts = [span.start_time or 0 for span in spans[:-1]]
    ends = [span.end_time or 0 for span in spans[:-1]]
    assert max(starts) <= min(ends)
    assert (run_span.start_time or 0) <= min(starts)
    assert max(ends) <= (run_span.end_time or 0)
    assert all(span.status.status_code is StatusCode.UNSET for span in spans)
    assert telemetry.span("streamkit.run nightly").instrumentation_scope is not None
    assert run.hook_errors == ()


async def test_span_attributes_equal_the_statistics(telemetry: Telemetry) -> None:
    run = Run(
        map_(inc) | filter_(odd),
        range(10),
        name="nightly",
        version="7",
        hooks=telemetry.otel.hooks(),
    )
    await run.drain()
    stats = run.statistics()
    run_attributes = dict(telemetry.span("streamkit.run nightly").attributes or {})
    assert run_attributes == {
        "streamkit.run.id": stats.run_id,
        "streamkit.run.name": "nightly",
        "streamkit.run.version": "7",
        "streamkit.run.config_hash": stats.config_hash,
        "streamkit.run.status": "succeeded",
        "streamkit.run.items_out": 5,
        "streamkit.run.wall_time": stats.wall_time,
    }
    for index, stage in enumerate(stats.stages):
        attributes = dict(telemetry.span(f"streamkit.stage {stage.key}").attributes or {})
        expected = {
            f"streamkit.stage.{field}": value
            for field, value in stage.to_dict().items()
            if value is not None
        }
        assert attributes == {**expected, "streamkit.stage.index": index}
    filtered = telemetry.span("streamkit.stage filter_(odd)").attributes or {}
    assert (filtered["streamkit.stage.items_in"], filtered["streamkit.stage.filtered"]) == (10, 5)
    # The quantiles are there once a call was timed (fused steps time every 16th call).
    assert "streamkit.stage.time_p50" in filtered


async def test_an_unnamed_run_has_a_low_cardinality_span_name(telemetry: Telemetry) -> None:
    run = Run(map_(inc), range(3), hooks=telemetry.otel.hooks())
    await run.drain()
    run_span = telemetry.span("streamkit.run")
    attributes = run_span.attributes or {}
    assert "streamkit.run.name" not in attributes
    assert attributes["streamkit.run.id"] == run.id


async def test_a_failing_stage_marks_its_span_and_the_run_span(telemetry: Telemetry) -> None:
    run = Run(map_(fail_on_3) | map_(str), range(5), name="bad", hooks=telemetry.otel.hooks())
    with pytest.raises(KeyError):
        await run.collect()
    failed = telemetry.span("streamkit.stage map_(fail_on_3)")
    other = telemetry.span("streamkit.stage map_(str)")
    run_span = telemetry.span("streamkit.run bad")
    for span in (failed, run_span):
        assert span.status.status_code is StatusCode.ERROR
        assert span.status.description == "KeyError: 3"
        (event,) = [event for event in span.events if event.name == "exception"]
        assert (event.attributes or {})["exception.type"] == "KeyError"
        assert (span.attributes or {})["error.type"] == "KeyError"
    assert (failed.attributes or {})["streamkit.stage.status"] == "failed"
    assert (failed.attributes or {})["streamkit.stage.errors"] == 1
    assert other.status.status_code is StatusCode.UNSET
    assert (other.attributes or {})["streamkit.stage.status"] == "cancelled"
    assert (run_span.attributes or {})["streamkit.run.status"] == "failed"
    assert run.hook_errors == ()


async def test_a_failing_source_marks_only_the_run_span(telemetry: Telemetry) -> None:
    run = Run(map_(inc), TrackedSource(range(5), fail_at=2), hooks=telemetry.otel.hooks())
    with pytest.raises(SourceError):
        await run.drain()
    run_span = telemetry.span("streamkit.run")
    assert run_span.status.status_code is StatusCode.ERROR
    assert (run_span.attributes or {})["error.type"] == "streamkit.testing.SourceError"
    stage_span = telemetry.span("streamkit.stage map_(inc)")
    assert stage_span.status.status_code is StatusCode.UNSET
    assert not stage_span.events


async def test_a_cancelled_run_is_not_an_error(telemetry: Telemetry) -> None:
    async with Run(map_(inc), range(100), hooks=telemetry.otel.hooks()) as run:
        async for item in run:
            if item == 3:
                break
    run_span = telemetry.span("streamkit.run")
    assert run_span.status.status_code is StatusCode.UNSET
    assert (run_span.attributes or {})["streamkit.run.status"] == "cancelled"
    assert run_span.end_time is not None


async def test_the_run_span_is_a_child_of_the_current_span(telemetry: Telemetry) -> None:
    tracer = telemetry.tracer_provider.get_tracer("app")
    with tracer.start_as_current_span("job") as job:
        await Run(map_(inc), range(3), hooks=telemetry.otel.hooks()).drain()
    assert parent_id(telemetry.span("streamkit.run")) == job.get_span_context().span_id


async def test_an_explicit_parent_context(telemetry: Telemetry) -> None:
    tracer = telemetry.tracer_provider.get_tracer("app")
    outer = tracer.start_span("outer")
    hooks = telemetry.otel.hooks(context=trace.set_span_in_context(outer))
    with tracer.start_as_current_span("ambient"):
        await Run(map_(inc), range(3), hooks=hooks).drain()
    outer.end()
    assert parent_id(telemetry.span("streamkit.run")) == outer.get_span_context().span_id


async def test_concurrent_runs_and_concurrent_steps_get_separate_traces(
    telemetry: Telemetry,
) -> None:
    async def slow(x: int) -> int:
        await asyncio.sleep(0)
        return x

    runs = [
        Run(
            map_(slow, concurrency=4) | map_(inc),
            range(20),
            name=name,
            hooks=telemetry.otel.hooks(),
        )
        for name in ("a", "b")
    ]
    results = await asyncio.gather(*(run.collect() for run in runs))
    assert results == [list(range(1, 21))] * 2
    for run in runs:
        run_span = telemetry.span(f"streamkit.run {run.name}")
        children = [span for span in telemetry.finished() if parent_id(span) == span_id(run_span)]
        assert sorted(span.name for span in children) == sorted(
            f"streamkit.stage {stage.key}" for stage in run.statistics().stages
        )
        assert len(children) == 2
        for child in children:
            assert (child.attributes or {})["streamkit.stage.items_out"] == 20


async def test_hooks_combine_with_your_own(telemetry: Telemetry) -> None:
    ended: list[str] = []
    mine = Hooks(on_run_end=lambda stats: ended.append(stats.status))
    run = Run(map_(inc), range(3), hooks=[telemetry.otel.hooks(), mine])
    await run.drain()
    assert ended == ["succeeded"]
    assert (telemetry.span("streamkit.run").attributes or {})["streamkit.run.status"] == "succeeded"


async def test_hooks_may_be_reused_for_a_later_run(telemetry: Telemetry) -> None:
    hooks = telemetry.otel.hooks()
    first = Run(map_(inc), range(3), name="first", hooks=hooks)
    second = Run(map_(inc), range(4), name="second", hooks=hooks)
    await first.drain()
    await second.drain()
    for run, count in ((first, 3), (second, 4)):
        run_span = telemetry.span(f"streamkit.run {run.name}")
        (child,) = [span for span in telemetry.finished() if parent_id(span) == span_id(run_span)]
        assert (child.attributes or {})["streamkit.stage.items_in"] == count


async def test_hooks_shared_by_simultaneous_runs_export_only_the_first(
    telemetry: Telemetry, caplog: pytest.LogCaptureFixture
) -> None:
    hooks = telemetry.otel.hooks()
    first = Run(map_(inc), range(3), name="first", hooks=hooks)
    second = Run(map_(inc), range(5), name="second", hooks=hooks)
    with caplog.at_level(logging.WARNING, logger="streamkit.otel"):
        async with first, second:
            first_items = aiter(first)
            assert await anext(first_items) == 1
            # The second run starts and ends while the first one runs.
            assert await second.collect() == [1, 2, 3, 4, 5]
            assert [item async for item in first_items] == [2, 3]
    assert f"run {second.id} is not exported" in caplog.text
    key = "map_(inc)"
    (run_span,) = [span for span in telemetry.finished() if span.name.startswith("streamkit.run")]
    assert run_span.name == "streamkit.run first"
    (stage_span,) = [span for span in telemetry.finished() if parent_id(span) == span_id(run_span)]
    assert (stage_span.attributes or {})["streamkit.stage.items_in"] == 3
    assert telemetry.value("streamkit.stage.items_in", run__name="first", stage__key=key) == 3
    names = {
        dict(point.attributes or {}).get("streamkit.run.name")
        for points in telemetry.points().values()
        for point in points
    }
    assert names == {"first"}


# --------------------------------------------------------------------------- retries


async def test_guarded_stage_counts_on_its_span(telemetry: Telemetry) -> None:
    calls: dict[int, int] = {}

    def flaky(x: int) -> int:
        calls[x] = calls.get(x, 0) + 1
        if x == 2 and calls[x] < 3:
            raise ValueError("not yet")
        if x == 4:
            raise ValueError("never")
        return x

    guarded = with_retry(map_(flaky), attempts=3, backoff=constant(0), on_error="skip")
    run = Run(guarded, range(6), hooks=telemetry.otel.hooks())
    assert await run.collect() == [0, 1, 2, 3, 5]
    (stage,) = run.statistics().stages
    attributes = telemetry.span(f"streamkit.stage {stage.key}").attributes or {}
    assert attributes["streamkit.stage.retries"] == stage.retries == 4
    assert attributes["streamkit.stage.skipped"] == stage.skipped == 1
    assert telemetry.value("streamkit.stage.retries", stage__key=stage.key) == 4
    assert telemetry.value("streamkit.stage.skipped", stage__key=stage.key) == 1


HAS_ON_RETRY = "on_retry" in {field.name for field in dataclasses.fields(Hooks)}


@pytest.mark.skipif(not HAS_ON_RETRY, reason="streamkit.Hooks has no on_retry yet")
@pytest.mark.parametrize("concurrency", [1, 3])
async def test_retries_are_span_events(telemetry: Telemetry, concurrency: int) -> None:
    calls: dict[int, int] = {}

    async def flaky(x: int) -> int:
        await asyncio.sleep(0)
        calls[x] = calls.get(x, 0) + 1
        if x == 2 and calls[x] < 3:
            raise ValueError(f"not yet {calls[x]}")
        return x

    step = map_(flaky, concurrency=concurrency)
    guarded = with_retry(step, attempts=3, backoff=constant(0.5))
    run = Run(guarded, range(4), hooks=telemetry.otel.hooks())
    with virtual_clock():
        assert await run.collect() == [0, 1, 2, 3]
    (stage,) = run.statistics().stages
    span = telemetry.span(f"streamkit.stage {stage.key}")
    events = [dict(event.attributes or {}) for event in span.events if event.name == "retry"]
    assert [event["streamkit.retry.attempt"] for event in events] == [1, 2]
    for number, event in enumerate(events, start=1):
        assert event["streamkit.retry.index"] == 2
        assert event["streamkit.retry.delay"] == 0.5
        assert event["exception.type"] == "ValueError"
        assert event["exception.message"] == f"not yet {number}"
    assert run.hook_errors == ()


@dataclass(frozen=True)
class FakeRetry:
    """The fields of streamkit's RetryEvent, for a recorder driven by hand."""

    stage: str
    index: int
    attempt: int
    delay: float
    error: Exception


def test_the_retry_hook_adds_span_events(telemetry: Telemetry) -> None:
    # Driven by hand, so it runs whether or not this streamkit calls on_retry.
    recorder = _Recorder(telemetry.otel._instruments, None)  # pyright: ignore[reportPrivateUsage]
    stage = StageStatistics(key="map_(f)", label="map_(f)", kind="map", status="executing")
    stats = RunStatistics(
        run_id="r",
        name=None,
        version="0",
        config_hash="ab",
        status="running",
        started_at=0.0,
        wall_time=0.0,
        items_out=0,
        stages=(stage,),
    )
    recorder.on_run_start(stats)
    recorder.on_stage_start(stage)
    recorder.on_retry(stage, FakeRetry("map_(f)", 7, 1, 0.25, ValueError("flaky")))
    done = dataclasses.replace(stage, status="succeeded", retries=1)
    recorder.on_stage_end(done)
    recorder.on_run_end(dataclasses.replace(stats, status="succeeded", stages=(done,)))
    span = telemetry.span("streamkit.stage map_(f)")
    (event,) = span.events
    assert event.name == "retry"
    assert dict(event.attributes or {}) == {
        "streamkit.retry.index": 7,
        "streamkit.retry.attempt": 1,
        "streamkit.retry.delay": 0.25,
        "exception.type": "ValueError",
        "exception.message": "flaky",
    }
    assert telemetry.value("streamkit.stage.retries", stage__key="map_(f)") == 1


def test_hooks_include_on_retry_when_streamkit_has_it(telemetry: Telemetry) -> None:
    hooks = telemetry.otel.hooks()
    if HAS_ON_RETRY:
        assert getattr(hooks, "on_retry") is not None  # noqa: B009 - not in every version
    else:
        assert not hasattr(hooks, "on_retry")


# --------------------------------------------------------------------------- metrics


async def test_counters_add_each_runs_statistics(telemetry: Telemetry) -> None:
    stats: list[RunStatistics] = []
    for _ in range(2):
        run = Run(map_(inc) | filter_(odd), range(10), name="nightly", hooks=telemetry.otel.hooks())
        stats.append(await run.drain())
    for key in ("map_(inc)", "filter_(odd)"):
        stages: list[StageStatistics] = [entry.stage(key) for entry in stats]
        for field in STAGE_COUNTERS:
            total = sum(getattr(stage, field) for stage in stages)
            if total:
                name = f"streamkit.stage.{field}"
                assert telemetry.value(name, run__name="nightly", stage__key=key) == total
    assert (
        telemetry.value("streamkit.stage.items_in", run__name="nightly", stage__key="filter_(odd)")
        == 20
    )
    # Counters with nothing to add report no point.
    assert "streamkit.stage.errors" not in telemetry.points()


async def test_metric_instruments_follow_the_conventions(telemetry: Telemetry) -> None:
    await Run(map_(fail_on_3), range(2), hooks=telemetry.otel.hooks()).drain()
    data = telemetry.reader.get_metrics_data()
    assert data is not None
    metrics = {
        metric.name: metric
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }
    items_in = metrics["streamkit.stage.items_in"]
    assert items_in.unit == "{item}"
    assert isinstance(items_in.data, Sum)
    assert items_in.data.is_monotonic
    assert isinstance(metrics["streamkit.stage.call.duration"].data, Gauge)
    assert metrics["streamkit.stage.call.duration"].unit == "s"
    assert metrics["streamkit.run.duration"].unit == "s"


async def test_call_time_quantiles_and_run_duration(telemetry: Telemetry) -> None:
    run = Run(map_(inc), range(40), hooks=telemetry.otel.hooks())
    with virtual_clock():
        stats = await run.drain()
    (stage,) = stats.stages
    for quantile, value in (
        ("0.5", stage.time_p50),
        ("0.95", stage.time_p95),
        ("0.99", stage.time_p99),
    ):
        assert value is not None
        seconds = telemetry.value(
            "streamkit.stage.call.duration", stage__key="map_(inc)", quantile=quantile
        )
        assert seconds == value
    (point,) = telemetry.points()["streamkit.run.duration"]
    assert isinstance(point, HistogramDataPoint)
    assert dict(point.attributes or {}) == {"streamkit.run.status": "succeeded"}
    assert (point.count, point.sum) == (1, stats.wall_time)


async def test_failed_runs_are_counted_by_status(telemetry: Telemetry) -> None:
    run = Run(map_(fail_on_3), range(5), name="bad", hooks=telemetry.otel.hooks())
    with pytest.raises(KeyError):
        await run.drain()
    (point,) = telemetry.points()["streamkit.run.duration"]
    assert dict(point.attributes or {}) == {
        "streamkit.run.name": "bad",
        "streamkit.run.status": "failed",
    }
    assert (
        telemetry.value("streamkit.stage.errors", run__name="bad", stage__key="map_(fail_on_3)")
        == 1
    )


# --------------------------------------------------------------------------- robustness


class BrokenTracerProvider(trace.TracerProvider):
    def get_tracer(self, *args: Any, **kwargs: Any) -> trace.Tracer:
        return BrokenTracer()


class BrokenTracer(trace.NoOpTracer):
    def start_span(self, *args: Any, **kwargs: Any) -> trace.Span:
        raise RuntimeError("the exporter is down")


async def test_a_broken_tracer_never_breaks_the_run(
    telemetry: Telemetry, caplog: pytest.LogCaptureFixture
) -> None:
    broken = OpenTelemetry(tracer_provider=BrokenTracerProvider())
    with caplog.at_level(logging.ERROR, logger="streamkit.otel"):
        run = Run(map_(inc), range(3), hooks=broken.hooks())
        assert await run.collect() == [1, 2, 3]
    assert run.hook_errors == ()
    assert "the exporter is down" in caplog.text


class BrokenCounter(metrics.NoOpCounter):
    def add(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("the meter is down")


class BrokenMeter(metrics.NoOpMeter):
    def create_counter(self, name: str, unit: str = "", description: str = "") -> metrics.Counter:
        return BrokenCounter(name)


class BrokenMeterProvider(metrics.NoOpMeterProvider):
    def get_meter(self, name: str, *args: Any, **kwargs: Any) -> metrics.Meter:
        return BrokenMeter(name)


async def test_a_broken_meter_still_ends_the_spans(
    telemetry: Telemetry, caplog: pytest.LogCaptureFixture
) -> None:
    otel = OpenTelemetry(
        tracer_provider=telemetry.tracer_provider, meter_provider=BrokenMeterProvider()
    )
    with caplog.at_level(logging.ERROR, logger="streamkit.otel"):
        run = Run(map_(inc), range(3), hooks=otel.hooks())
        assert await run.collect() == [1, 2, 3]
    assert run.hook_errors == ()
    assert "the meter is down" in caplog.text
    assert telemetry.span("streamkit.run").end_time is not None


async def test_the_global_providers_by_default() -> None:
    # No global provider is set in the tests: the API's proxies take the data and drop it.
    run = Run(map_(inc), range(3), hooks=OpenTelemetry().hooks())
    assert await run.collect() == [1, 2, 3]
    assert run.hook_errors == ()


def test_options_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        OpenTelemetry(TracerProvider())  # type: ignore[call-arg]  # pyright: ignore[reportCallIssue]


# --------------------------------------------------------------------------- imports


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_importing_streamkit_does_not_import_opentelemetry() -> None:
    result = run_python(
        """
        import sys
        import streamkit
        import streamkit.testing
        print(sorted(name for name in sys.modules if name.startswith("opentelemetry")))
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_importing_streamkit_otel_without_opentelemetry_says_what_to_install() -> None:
    result = run_python(
        """
        import sys
        sys.modules["opentelemetry"] = None  # as if it were not installed
        import streamkit
        try:
            import streamkit.otel
        except ImportError as error:
            print(type(error).__name__, error)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        "ImportError streamkit.otel needs the OpenTelemetry API: pip install 'streamkit[otel]'"
    )
