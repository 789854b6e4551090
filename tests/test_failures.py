"""Failure handling: with_retry, timeouts, strategies, records, and the conservation law.

Every test runs on a virtual clock (``RecordingClock``, which also records the
sleeps asked of it), so backoffs take no real time and schedules are exact.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import random
from collections import Counter
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from returns.result import Failure, Result, Success

from streamkit import chunk, collect, filter_, flat_map, map_, pipe, take, tap
from streamkit._backoff import constant, exponential
from streamkit._core import ConcurrentOp, ItemOp, Segment, Transform, item_stage
from streamkit._failures import (
    DeadLetters,
    ErrorRecord,
    ErrorReport,
    ExceptionInfo,
    FailureStatistics,
    GuardedItem,
    GuardedTransform,
    UnhandledFailure,
    call_with_timeout,
    error_report,
    failures,
    guard_stage,
    make_guard,
    successes,
    with_retry,
)
from streamkit._records import Envelope
from streamkit.testing import (
    VirtualClock,
    assert_no_pending_tasks,
    check_stage,
    use_clock,
    virtual_clock,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator

    from streamkit import Stage

STRATEGIES = ["fail", "skip", "collect", "split", "result"]
DROPPING = ["skip", "collect", "split"]


class RecordingClock:
    """A virtual clock that also records every sleep requested from it."""

    def __init__(self) -> None:
        self.virtual = VirtualClock()
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.virtual.now()

    def sleep(self, seconds: float) -> Any:
        self.sleeps.append(seconds)
        return self.virtual.sleep(seconds)


@pytest.fixture
def clock() -> Iterator[RecordingClock]:
    recording = RecordingClock()
    with use_clock(recording):
        yield recording


class Flaky:
    """Fails the first ``failures[item]`` calls for each item (default ``times``)."""

    def __init__(
        self,
        times: int = 0,
        failures: dict[Any, int] | None = None,
        error: type[Exception] = ConnectionError,
    ) -> None:
        self.times = times
        self.failures = failures or {}
        self.error = error
        self.calls: Counter[Any] = Counter()
        self.raised: list[Exception] = []

    def __call__(self, item: Any) -> Any:
        self.calls[item] += 1
        if self.calls[item] <= self.failures.get(item, self.times):
            error = self.error(f"{item} failed on call {self.calls[item]}")
            self.raised.append(error)
            raise error
        return item


def notes(error: BaseException) -> list[str]:
    return list(getattr(error, "__notes__", []))


# --------------------------------------------------------------------------- retrying


async def test_retries_each_item_until_it_succeeds(clock: RecordingClock) -> None:
    flaky = Flaky(failures={1: 2, 3: 1})
    stage = with_retry(map_(flaky), attempts=3, backoff=constant(1))
    assert await collect(range(5) | stage) == [0, 1, 2, 3, 4]
    assert flaky.calls == {0: 1, 1: 3, 2: 1, 3: 2, 4: 1}
    assert clock.sleeps == [1, 1, 1]
    stats = error_report(stage).statistics()
    assert (stats.items, stats.attempts, stats.retries, stats.recovered) == (5, 8, 3, 2)
    assert (stats.succeeded, stats.failed, stats.in_flight) == (5, 0, 0)


async def test_the_upstream_is_read_once_and_nothing_is_yielded_twice(
    clock: RecordingClock,
) -> None:
    pulled: list[int] = []

    async def source() -> AsyncIterator[int]:
        for item in range(6):
            pulled.append(item)
            yield item

    flaky = Flaky(times=2)
    assert await collect(source() | with_retry(map_(flaky), attempts=3)) == list(range(6))
    assert pulled == list(range(6))


async def test_giving_up_raises_the_last_error_with_notes(clock: RecordingClock) -> None:
    flaky = Flaky(failures={2: 9})
    stage = with_retry(map_(flaky), attempts=3, backoff=exponential(0.5))
    got: list[int] = []

    async def consume() -> None:
        async for item in range(5) | stage:
            got.append(item)

    with pytest.raises(ConnectionError) as raised:
        await consume()
    assert got == [0, 1]
    assert raised.value is flaky.raised[-1]
    label = f"with_retry(map_({Flaky.__qualname__}), attempts=3)"
    assert repr(flaky) not in label
    assert notes(raised.value) == [
        f"streamkit: {stage.label} gave up on item 2 after 3 attempts in 1.5 s "
        "(all 3 attempts failed)",
        f"streamkit: raised by {stage.label} on item 2 of its input",
    ]
    assert clock.sleeps == [0.5, 1.0]
    assert error_report(stage).statistics().raised == 1


async def test_retry_on_types_and_predicates(clock: RecordingClock) -> None:
    flaky = Flaky(times=1, error=KeyError)
    stage = with_retry(map_(flaky), attempts=3, retry_on=ConnectionError)
    with pytest.raises(KeyError) as raised:
        await collect([1] | stage)
    assert flaky.calls[1] == 1
    assert "not retried: retry_on does not match KeyError" in notes(raised.value)[0]

    flaky = Flaky(times=1, error=KeyError)
    tuple_stage = with_retry(map_(flaky), attempts=3, retry_on=(ValueError, LookupError))
    assert await collect([1] | tuple_stage) == [1]

    flaky = Flaky(times=2)
    predicate = with_retry(map_(flaky), attempts=5, retry_on=lambda exc: "call 1" in str(exc))
    with pytest.raises(ConnectionError, match="call 2"):
        await collect([1] | predicate)


async def test_a_failing_retry_predicate_surfaces_chained(clock: RecordingClock) -> None:
    def broken(exc: Exception) -> bool:
        raise RuntimeError("bad predicate")

    stage = with_retry(map_(Flaky(times=1)), retry_on=broken)
    with pytest.raises(RuntimeError, match="bad predicate") as raised:
        await collect([1] | stage)
    assert isinstance(raised.value.__cause__, ConnectionError)
    assert error_report(stage).statistics().raised == 1


@pytest.mark.parametrize(
    "retry_on", [asyncio.CancelledError, KeyboardInterrupt, (ValueError, BaseException)]
)
def test_base_exceptions_cannot_be_made_retryable(retry_on: Any) -> None:
    with pytest.raises(TypeError, match="never"):
        with_retry(map_(abs), retry_on=retry_on)


@pytest.mark.parametrize("retry_on", [3, "ValueError", (ValueError, 3)])
def test_retry_on_must_be_types_or_a_predicate(retry_on: Any) -> None:
    with pytest.raises(TypeError, match="retry_on"):
        with_retry(map_(abs), retry_on=retry_on)


async def test_the_deadline_stops_retrying_before_a_backoff_would_pass_it(
    clock: RecordingClock,
) -> None:
    flaky = Flaky(times=10)
    stage = with_retry(
        map_(flaky), attempts=10, backoff=exponential(1), deadline=10, on_error="collect"
    )
    assert await collect(["a"] | stage) == []
    # 1 + 2 + 4 = 7 s slept; the next backoff (8 s) would end at 15 s > 10 s.
    assert clock.sleeps == [1, 2, 4]
    (record,) = error_report(stage).records
    assert record.attempts == 4
    assert record.elapsed == 7
    assert "would pass the deadline of 10 s" in notes(record.exception)[0]


class Abort(BaseException):
    """A BaseException that is not a cancellation (like KeyboardInterrupt)."""


@pytest.mark.parametrize("error", [asyncio.CancelledError, Abort])
async def test_cancellation_and_base_exceptions_are_never_retried(
    clock: RecordingClock, error: type[BaseException]
) -> None:
    calls = 0

    def fn(item: int) -> int:
        nonlocal calls
        calls += 1
        raise error()

    stage = with_retry(map_(fn), attempts=5, retry_on=lambda exc: True, on_error="skip")
    with pytest.raises(error):
        await collect([1, 2] | stage)
    assert calls == 1
    assert clock.sleeps == []
    stats = error_report(stage).statistics()
    assert (stats.cancelled, stats.skipped) == (1, 0)


class BlockingClock:
    """A clock whose sleeps never end; records them and whether they were cancelled."""

    def __init__(self) -> None:
        self.sleeps: list[float] = []
        self.cancelled: list[float] = []
        self.sleeping = asyncio.Event()

    def now(self) -> float:
        return 0.0

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.sleeping.set()
        try:
            await asyncio.get_running_loop().create_future()
        except asyncio.CancelledError:
            self.cancelled.append(seconds)
            raise


@pytest.mark.parametrize("concurrency", [1, 3])
async def test_a_cancelled_pipeline_leaves_its_backoff_sleep_at_once(concurrency: int) -> None:
    blocking = BlockingClock()
    flaky = Flaky(times=1)
    with use_clock(blocking):
        stage = with_retry(map_(flaky, concurrency=concurrency), attempts=3, backoff=constant(3600))
        task = asyncio.ensure_future(collect([1] | stage))
        await blocking.sleeping.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert blocking.sleeps == [3600]
    assert blocking.cancelled == [3600]
    assert flaky.calls[1] == 1
    assert error_report(stage).statistics().cancelled == 1
    assert_no_pending_tasks()


async def test_cancelling_during_a_virtual_backoff_does_not_advance_time() -> None:
    failed = asyncio.Event()

    def fn(item: int) -> int:
        failed.set()
        raise ConnectionError(item)

    with virtual_clock() as virtual:
        stage = with_retry(map_(fn), attempts=2, backoff=constant(3600))
        task = asyncio.ensure_future(collect([1] | stage))
        await failed.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert virtual.now() == 0  # the hour-long backoff was abandoned, not slept
    assert_no_pending_tasks()


async def test_with_concurrency_retries_count_against_the_same_limit(
    clock: RecordingClock,
) -> None:
    in_flight = peak = 0
    calls: Counter[int] = Counter()

    async def fn(item: int) -> int:
        nonlocal in_flight, peak
        calls[item] += 1
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            await clock.sleep(1 + item % 3)
            if calls[item] < 3:
                raise ConnectionError(item)
            return item
        finally:
            in_flight -= 1

    stage = with_retry(map_(fn, concurrency=3), attempts=3, backoff=constant(0.5))
    assert await collect(range(12) | stage) == list(range(12))
    assert peak == 3
    # Retrying items hold their slot: 12 items, 3 slots, 3 attempts each.
    stats = error_report(stage).statistics()
    assert (stats.attempts, stats.retries) == (36, 24)


async def test_unordered_concurrency_lets_others_pass_a_retrying_item(
    clock: RecordingClock,
) -> None:
    flaky = Flaky(failures={0: 2})
    stage = with_retry(map_(flaky, concurrency=2, ordered=False), attempts=3, backoff=constant(10))
    assert await collect(range(4) | stage) == [1, 2, 3, 0]


# --------------------------------------------------------------------------- item stages


async def test_filter_and_tap_are_retried(clock: RecordingClock) -> None:
    flaky_predicate = Flaky(times=1)
    evens = with_retry(filter_(lambda x: flaky_predicate(x) % 2 == 0), attempts=2)
    assert await collect(range(6) | evens) == [0, 2, 4]

    seen: list[int] = []
    flaky_tap = Flaky(times=1)
    logged = with_retry(tap(lambda x: seen.append(flaky_tap(x))), attempts=2)
    assert await collect(range(3) | logged) == [0, 1, 2]
    assert seen == [0, 1, 2]


@pytest.mark.parametrize("concurrency", [1, 2])
async def test_flat_map_retries_the_call_and_its_iteration(
    clock: RecordingClock, concurrency: int
) -> None:
    calls: Counter[int] = Counter()

    async def elements(item: int) -> AsyncIterator[int]:
        calls[item] += 1
        yield item * 10
        if calls[item] < 3:
            raise ConnectionError(item)  # fails after one element was produced
        yield item * 10 + 1

    stage = with_retry(flat_map(elements, concurrency=concurrency), attempts=3)
    assert await collect(range(3) | stage) == [0, 1, 10, 11, 20, 21]
    assert calls == {0: 3, 1: 3, 2: 3}


async def test_flat_map_skips_a_failed_item_as_a_whole(clock: RecordingClock) -> None:
    def elements(item: int) -> Iterator[int]:
        yield item
        if item == 1:
            raise ValueError(item)
        yield item

    stage = with_retry(flat_map(elements), attempts=2, on_error="skip")
    assert await collect(range(3) | stage) == [0, 0, 2, 2]


async def test_flat_map_results_wrap_each_element(clock: RecordingClock) -> None:
    stage = with_retry(flat_map(lambda x: [x, -x] if x else 1 / x), on_error="result")
    results = await collect(range(2) | stage)
    assert results[1:] == [Success(1), Success(-1)]
    assert isinstance(results[0], Failure)
    assert results[0].failure().index == 0


async def test_a_flat_map_must_return_an_iterable(clock: RecordingClock) -> None:
    stage = with_retry(flat_map(lambda x: x), attempts=2)  # type: ignore[arg-type,return-value]
    with pytest.raises(TypeError, match="must return an iterable"):
        await collect([1] | stage)


@pytest.mark.parametrize(
    "make",
    [
        lambda: take(3),
        lambda: chunk(2),
        lambda: map_(abs) | map_(abs),
        lambda: pipe(),
        lambda: map_(abs) | take(2),
    ],
    ids=["take", "chunk", "two maps", "empty", "map then take"],
)
def test_stages_without_one_per_item_function_are_refused(make: Callable[[], Any]) -> None:
    with pytest.raises(TypeError, match="per-item function"):
        with_retry(make())


def test_non_stages_are_refused() -> None:
    with pytest.raises(TypeError, match="takes a stage"):
        with_retry(abs)  # type: ignore[call-overload]


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"attempts": 0}, ValueError, "attempts"),
        ({"attempts": 2.5}, TypeError, "attempts"),
        ({"deadline": 0}, ValueError, "deadline"),
        ({"deadline": "1"}, TypeError, "deadline"),
        ({"timeout": -1}, ValueError, "timeout"),
        ({"on_error": "ignore"}, ValueError, "on_error"),
        ({"on_error": "split"}, TypeError, "dead_letter"),
        ({"dead_letter": print}, TypeError, "dead_letter"),
        ({"on_error": "split", "dead_letter": 3}, TypeError, "dead_letter"),
        ({"report": []}, TypeError, "report"),
    ],
)
def test_options_are_validated_at_construction(
    options: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        with_retry(map_(abs), **options)


# --------------------------------------------------------------------------- timeouts


async def test_a_slow_call_is_cancelled_and_times_out(clock: RecordingClock) -> None:
    cancelled: list[int] = []

    async def slow(item: int) -> int:
        try:
            await clock.sleep(item)
        except asyncio.CancelledError:
            cancelled.append(item)
            raise
        return item

    stage = with_retry(map_(slow), attempts=1, timeout=2.5, on_error="collect")
    assert await collect(range(5) | stage) == [0, 1, 2]
    assert cancelled == [3, 4]
    assert clock.now() == pytest.approx(0 + 1 + 2 + 2.5 + 2.5)
    records = error_report(stage).records
    assert [type(r.exception) for r in records] == [TimeoutError, TimeoutError]
    assert error_report(stage).statistics().timeouts == 2
    assert_no_pending_tasks()


async def test_timeouts_are_retried_when_retry_on_matches(clock: RecordingClock) -> None:
    calls: Counter[int] = Counter()

    async def slow_at_first(item: int) -> int:
        calls[item] += 1
        await clock.sleep(10 if calls[item] < 3 else 1)
        return item

    stage = with_retry(map_(slow_at_first), attempts=3, backoff=constant(1), timeout=2)
    assert await collect([7] | stage) == [7]
    assert clock.now() == pytest.approx(2 + 1 + 2 + 1 + 1)
    not_retried = with_retry(map_(slow_at_first), attempts=3, timeout=2, retry_on=ConnectionError)
    calls.clear()
    with pytest.raises(TimeoutError):
        await collect([7] | not_retried)
    assert calls[7] == 1


async def test_call_with_timeout(clock: RecordingClock) -> None:
    async def answer(delay: float) -> int:
        await clock.sleep(delay)
        return 42

    assert await call_with_timeout(answer(1), 2, clock) == 42
    with pytest.raises(TimeoutError):
        await call_with_timeout(answer(3), 2, clock)
    assert_no_pending_tasks()


# --------------------------------------------------------------------------- strategies


async def test_skip_drops_and_counts(clock: RecordingClock) -> None:
    stage = with_retry(map_(lambda x: 10 // x), attempts=2, on_error="skip")
    assert await collect([5, 0, 2, 0] | stage) == [2, 5]
    stats = error_report(stage).statistics()
    assert (stats.items, stats.skipped, stats.succeeded, stats.attempts) == (4, 2, 2, 6)


async def test_collect_gathers_records_in_the_report(clock: RecordingClock) -> None:
    report = ErrorReport()
    stage = with_retry(map_(lambda x: 10 // x), attempts=2, on_error="collect", report=report)
    assert error_report(stage) is report
    assert await collect([5, 0, 2] | stage) == [2, 5]
    (record,) = report.records
    assert (record.stage, record.index, record.item, record.attempts) == (stage.label, 1, 0, 2)
    assert record.state is None
    assert isinstance(record.exception, ZeroDivisionError)
    assert "gave up on item 1 after 2 attempts" in notes(record.exception)[0]
    with pytest.raises(ExceptionGroup) as group:
        report.raise_if_failed()
    assert group.value.exceptions == (record.exception,)


async def test_the_report_is_live_while_the_pipeline_runs(clock: RecordingClock) -> None:
    report = ErrorReport()
    seen: list[tuple[int, int]] = []
    stage = with_retry(map_(lambda x: 1 // (x % 2)), attempts=1, on_error="collect", report=report)
    watch = tap(lambda _: seen.append((len(report.records), report.statistics().items)))
    await collect(range(5) | stage | watch)
    assert seen == [(1, 2), (2, 4)]


async def test_split_sends_records_to_dead_letters_read_concurrently(
    clock: RecordingClock,
) -> None:
    dead = DeadLetters(maxsize=1)
    stage = with_retry(
        map_(lambda x: 10 // x, concurrency=3), attempts=2, on_error="split", dead_letter=dead
    )
    letters: list[ErrorRecord[Any]] = []

    async def read() -> None:
        letters.extend([letter async for letter in dead])

    reader = asyncio.ensure_future(read())
    assert await collect([0, 1, 0, 2, 0] | stage) == [10, 5]
    dead.close()
    await reader
    assert [(r.index, r.item, r.attempts) for r in letters] == [(0, 0, 2), (2, 0, 2), (4, 0, 2)]
    assert error_report(stage).statistics().dead_lettered == 3


async def test_a_bounded_dead_letter_channel_applies_backpressure(clock: RecordingClock) -> None:
    dead = DeadLetters(maxsize=1)
    stage = with_retry(map_(lambda x: 1 // 0), attempts=1, on_error="split", dead_letter=dead)
    task = asyncio.ensure_future(collect(range(3) | stage))
    for _ in range(10):
        await asyncio.sleep(0)
    assert not task.done()
    assert dead.pending == 1  # the second record waits for room
    got = []
    async for letter in dead:
        got.append(letter.item)
        if len(got) == 3:
            break
    assert await task == []
    assert got == [0, 1, 2]


@pytest.mark.parametrize("kind", ["queue", "sync", "async"])
async def test_split_accepts_queues_and_callables(clock: RecordingClock, kind: str) -> None:
    queue: asyncio.Queue[ErrorRecord[Any]] = asyncio.Queue()
    received: list[ErrorRecord[Any]] = []

    async def async_sink(record: ErrorRecord[Any]) -> None:
        await asyncio.sleep(0)
        received.append(record)

    sink: Any = {"queue": queue, "sync": received.append, "async": async_sink}[kind]
    stage = with_retry(map_(lambda x: 1 // x), attempts=1, on_error="split", dead_letter=sink)
    assert await collect([1, 0] | stage) == [1]
    if kind == "queue":
        received.append(queue.get_nowait())
    assert [r.item for r in received] == [0]


async def test_a_failing_dead_letter_sink_raises_with_the_items_error_as_cause(
    clock: RecordingClock,
) -> None:
    def broken(record: ErrorRecord[Any]) -> None:
        raise OSError("disk full")

    stage = with_retry(map_(lambda x: 1 // x), attempts=1, on_error="split", dead_letter=broken)
    with pytest.raises(OSError, match="disk full") as raised:
        await collect([0] | stage)
    assert isinstance(raised.value.__cause__, ZeroDivisionError)
    assert "dead_letter sink" in notes(raised.value)[0]
    assert error_report(stage).statistics().raised == 1


async def test_dead_letters_channel() -> None:
    dead = DeadLetters()
    record = ErrorRecord(stage="s", index=0, item=1, exception=ValueError(), attempts=1)
    await dead.put(record)
    dead.put_nowait(record)
    assert dead.pending == 2
    assert dead.drain() == [record, record]
    dead.put_nowait(record)
    dead.close()
    assert dead.closed
    assert [r async for r in dead] == [record]
    with pytest.raises(RuntimeError, match="closed"):
        dead.put_nowait(record)
    with pytest.raises(RuntimeError, match="closed"):
        await dead.put(record)
    bounded = DeadLetters(maxsize=1)
    bounded.put_nowait(record)
    with pytest.raises(RuntimeError, match="full"):
        bounded.put_nowait(record)
    with pytest.raises(ValueError, match="maxsize"):
        DeadLetters(maxsize=-1)
    assert "closed" in repr(dead)


async def test_result_yields_success_and_failure(clock: RecordingClock) -> None:
    stage = with_retry(map_(lambda x: 10 // x), attempts=2, on_error="result")
    results = await collect([5, 0, 2] | stage)
    assert results[0] == Success(2)
    assert results[2] == Success(5)
    failure = results[1]
    assert isinstance(failure, Failure)
    record = failure.failure()
    assert (record.index, record.item, record.attempts) == (1, 0, 2)
    assert error_report(stage).statistics().returned == 1


async def test_filtered_items_are_not_results(clock: RecordingClock) -> None:
    stage = with_retry(filter_(lambda x: 10 // x > 2), attempts=1, on_error="result")
    results = await collect([1, 0, 5] | stage)
    assert results[0] == Success(1)
    assert isinstance(results[1], Failure)
    assert len(results) == 2


async def test_successes_and_failures_route_results(clock: RecordingClock) -> None:
    railway = with_retry(map_(lambda x: 10 // x), attempts=1, on_error="result")
    dead = DeadLetters()
    assert await collect([5, 0, 2] | railway | successes(on_failure=dead)) == [2, 5]
    assert [r.item for r in dead.drain()] == [0]

    report = ErrorReport()
    assert await collect([5, 0] | railway | successes(on_failure=report)) == [2]
    assert [r.item for r in report.records] == [0]

    with pytest.raises(ZeroDivisionError):
        await collect([5, 0] | railway | successes())

    kept: list[int] = []
    records = await collect([5, 0] | railway | failures(on_success=kept.append))
    assert [r.item for r in records] == [0]
    assert kept == [2]

    queue: asyncio.Queue[int] = asyncio.Queue()
    assert len(await collect([5, 0] | railway | failures(on_success=queue))) == 1
    assert queue.get_nowait() == 2


async def test_successes_with_foreign_failures() -> None:
    items: list[Result[int, object]] = [Success(1), Failure(ValueError("v")), Failure("x")]
    with pytest.raises(ValueError, match="v"):
        await collect(items | successes())
    with pytest.raises(UnhandledFailure) as raised:
        await collect(items[2:] | successes())
    assert raised.value.failure == "x"
    with pytest.raises(TypeError, match="ErrorRecord"):
        await collect(items[2:] | successes(on_failure=ErrorReport()))
    with pytest.raises(TypeError, match="Result items"):
        await collect([1] | successes())
    with pytest.raises(TypeError, match="on_failure"):
        successes(on_failure=3)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- records


def test_error_record_json_round_trip() -> None:
    try:
        {}["missing"]
    except KeyError as exc:
        exc.add_note("context")
        record = ErrorRecord(
            stage="map_(lookup)", index=7, item={"id": [1, 2]}, exception=exc, attempts=3
        )
    text = record.to_json()
    data = json.loads(text)
    assert data["exception"]["type"] == "builtins.KeyError"
    assert data["exception"]["message"] == "'missing'"
    assert data["exception"]["notes"] == ["context"]
    assert "Traceback (most recent call last)" in data["exception"]["traceback"]
    restored = ErrorRecord.from_json(text)
    assert restored == record.replace(exception=record.info)
    assert isinstance(restored.exception, ExceptionInfo)
    assert restored.to_json() == text
    assert ErrorRecord.from_dict(record.to_dict()) == restored


def test_error_records_are_frozen_slotted_and_serialize_any_item() -> None:
    record = ErrorRecord(stage="s", index=0, item=object(), exception=ValueError(), attempts=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.index = 1  # type: ignore[misc]
    assert not hasattr(record, "__dict__")
    assert json.loads(record.to_json())["item"].startswith("<object object")
    with pytest.raises(TypeError):
        record.to_json(default=None)


@pytest.mark.parametrize(
    "data",
    [
        {},
        [],
        {"stage": 1, "index": 0, "item": 0, "state": None, "exception": {}, "attempts": 1},
        {
            "stage": "s",
            "index": "0",
            "item": 0,
            "state": None,
            "exception": {},
            "attempts": 1,
            "elapsed": 0,
        },
        {
            "stage": "s",
            "index": 0,
            "item": 0,
            "state": None,
            "exception": {"type": 1, "message": "", "traceback": ""},
            "attempts": 1,
            "elapsed": 0,
        },
        {
            "stage": "s",
            "index": 0,
            "item": 0,
            "state": None,
            "exception": {"type": "t", "message": "", "traceback": ""},
            "attempts": 1,
            "elapsed": "late",
        },
    ],
)
def test_malformed_records_are_refused(data: Any) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the messages differ by field
        ErrorRecord.from_dict(data)


def test_statistics_snapshots_add_up() -> None:
    a = FailureStatistics(items=2, succeeded=1, skipped=1)
    b = FailureStatistics(items=1, cancelled=1)
    assert a + b == FailureStatistics(items=3, succeeded=1, skipped=1, cancelled=1)
    assert (a + b).in_flight == 0


async def test_a_report_counts_per_stage_and_can_be_cleared(clock: RecordingClock) -> None:
    report = ErrorReport()
    first = with_retry(map_(lambda x: 1 // x), attempts=1, on_error="skip", report=report)
    second = with_retry(map_(lambda x: x - 1), attempts=2, on_error="collect", report=report)
    assert await collect([0, 1, 2] | first | second) == [0, -1]
    assert report.stages == (first.label, second.label)
    assert report.statistics(first.label).skipped == 1
    assert report.statistics(second.label).items == 2
    assert report.statistics().items == 5
    with pytest.raises(KeyError):
        report.statistics("nope")
    assert "items=5" in repr(report)
    report.clear()
    assert report.statistics() == FailureStatistics()
    with pytest.raises(TypeError):
        report.add("not a record")  # type: ignore[arg-type]


def test_error_report_needs_one_guarded_step() -> None:
    with pytest.raises(LookupError, match="no guarded step"):
        error_report(map_(abs))
    two = with_retry(map_(abs)) | with_retry(map_(abs))
    with pytest.raises(LookupError, match="2 different reports"):
        error_report(two)
    shared = ErrorReport()
    both = with_retry(map_(abs), report=shared) | with_retry(map_(abs), report=shared)
    assert error_report(both) is shared


# --------------------------------------------------------------------------- building blocks


def test_a_guarded_item_step_stays_fusable() -> None:
    guarded = with_retry(map_(abs), attempts=2)
    (step,) = guarded.steps
    assert isinstance(step, ItemOp)
    assert isinstance(step.per_run, GuardedItem)
    assert step.fn is abs
    pipeline = map_(abs) | guarded | filter_(bool)
    assert [type(part) for part in pipeline._plan] == [Segment]


def test_a_guarded_concurrent_step_still_describes_the_users_function() -> None:
    guarded = with_retry(map_(abs, concurrency=4, ordered=False), attempts=2)
    (step,) = guarded.steps
    assert isinstance(step, Transform)
    assert isinstance(step.run, GuardedTransform)
    assert isinstance(step.item, ConcurrentOp)
    assert (step.item.fn, step.item.concurrency, step.item.ordered) == (abs, 4, False)


async def test_item_indexes_restart_with_every_run(clock: RecordingClock) -> None:
    stage = with_retry(map_(lambda x: 1 // x), attempts=1, on_error="collect")
    await collect([0, 1, 0] | stage)
    await collect([1, 0] | stage)
    assert [r.index for r in error_report(stage).records] == [0, 2, 1]


async def test_guard_stage_serves_operator_options(clock: RecordingClock) -> None:
    # What map_(fn, on_error="skip", timeout=2) will do: one guard, no retry.
    async def slow(x: int) -> int:
        await clock.sleep(x)
        return x

    guard = make_guard("map_(slow, on_error='skip')", on_error="skip", timeout=2)
    stage = guard_stage(map_(slow), guard)
    assert stage.label == "map_(slow, on_error='skip')"
    assert await collect([1, 5, 0] | stage) == [1, 0]
    assert guard.report.statistics().skipped == 1

    # with_retry around it keeps the timeout and the strategy, adding retries.
    retried = with_retry(stage, attempts=3, backoff=constant(1))
    assert await collect([1, 5] | retried) == [1]
    stats = error_report(retried).statistics()
    assert (stats.attempts, stats.timeouts, stats.skipped) == (4, 3, 1)
    assert retried.label == "with_retry(map_(slow, on_error='skip'), attempts=3)"

    with pytest.raises(TypeError, match="already retried"):
        with_retry(retried)
    with pytest.raises(TypeError, match="on_error"):
        with_retry(stage, on_error="collect")
    with pytest.raises(TypeError, match="timeout"):
        with_retry(stage, timeout=5)
    with pytest.raises(TypeError, match="report"):
        with_retry(
            guard_stage(map_(abs), make_guard("m", report=ErrorReport())), report=ErrorReport()
        )


async def test_a_step_taking_the_state_keeps_it_and_records_it(clock: RecordingClock) -> None:
    # On envelope streams an ItemOp with with_state=True is called as fn(value, state).
    def scaled(value: int, state: Any) -> int:
        if value == 2:
            raise ValueError(value)
        return value * 10

    inner = item_stage("map", scaled, "map_(scaled)", with_state=True)
    stage = with_retry(inner, attempts=2, on_error="collect")
    (step,) = stage.steps
    assert isinstance(step, ItemOp)
    assert step.with_state
    items = [Envelope(1).with_state("k", "a"), Envelope(2).with_state("k", "b")]
    out = await collect(items | stage)
    assert [(e.value, e.state["k"]) for e in out] == [(10, "a")]
    (record,) = error_report(stage).records
    assert (record.item, record.state["k"], record.attempts) == (2, "b", 2)


async def test_results_compose_with_successes_as_stages(clock: RecordingClock) -> None:
    pipeline = with_retry(map_(lambda x: 10 // x), attempts=1, on_error="result") | successes(
        on_failure=ErrorReport()
    )
    assert await collect([5, 0, 2] | pipeline) == [2, 5]
    assert [type(step) for step in pipeline.steps] == [ItemOp, ItemOp]


# --------------------------------------------------------------------------- conformance


@pytest.mark.parametrize("strategy", ["fail", "skip", "result"])
@pytest.mark.parametrize("concurrency", [1, 3])
@pytest.mark.parametrize("kind", ["map", "filter", "flat_map"])
async def test_guarded_stages_pass_the_stage_checks(
    strategy: Any, concurrency: int, kind: str
) -> None:
    def make() -> Stage[Any, Any]:
        flaky = Flaky(times=1)
        if kind == "map":
            op = map_(flaky, concurrency=concurrency)
        elif kind == "filter":
            op = filter_(lambda x: flaky(x) % 2, concurrency=concurrency)
        else:
            op = flat_map(lambda x: [flaky(x)] * 2, concurrency=concurrency)
        return with_retry(op, attempts=2, backoff=constant(1), on_error=strategy)

    await check_stage(make, range(6))


async def test_a_guarded_tap_passes_the_stage_checks() -> None:
    await check_stage(lambda: with_retry(tap(Flaky(times=1)), attempts=2), range(6))


# --------------------------------------------------------------------------- conservation


async def test_10000_items_with_30_percent_failing_calls_lose_and_duplicate_none(
    clock: RecordingClock,
) -> None:
    rng = random.Random(2024)
    calls = 0

    def flaky(item: int) -> int:
        nonlocal calls
        calls += 1
        if rng.random() < 0.3:
            raise ConnectionError(item)
        return item

    dead = DeadLetters()
    stage = with_retry(
        map_(flaky),
        attempts=5,
        backoff=exponential(0.01, jitter="full", seed=1),
        on_error="split",
        dead_letter=dead,
    )
    out = await collect(range(10_000) | stage)
    letters = [record.item for record in dead.drain()]
    assert len(out) + len(letters) == 10_000
    assert sorted(out + letters) == list(range(10_000))
    assert len(set(out)) == len(out)
    assert out == sorted(out)
    stats = error_report(stage).statistics()
    assert stats.attempts == calls
    assert stats.dead_lettered == len(letters)
    assert stats.succeeded == len(out)
    assert stats.retries == calls - 10_000
    assert 0 < len(letters) < 60  # 0.3 ** 5 of 10,000 is about 24


@pytest.mark.parametrize("concurrency", [1, 8])
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("kind", ["map", "filter", "flat_map"])
async def test_every_strategy_keeps_the_conservation_law(
    clock: RecordingClock, strategy: Any, concurrency: int, kind: str
) -> None:
    n = 2000
    rng = random.Random(f"{strategy}-{concurrency}-{kind}")
    failed_calls: Counter[int] = Counter()

    async def flaky(item: int) -> Any:
        if concurrency > 1:
            await clock.sleep(rng.random())
        if rng.random() < 0.3:
            failed_calls[item] += 1
            raise ConnectionError(item)
        if kind == "filter":
            return item % 3 != 0
        if kind == "flat_map":
            return [item, item]
        return item

    make = {"map": map_, "filter": filter_, "flat_map": flat_map}[kind]
    dead = DeadLetters()
    options: dict[str, Any] = {"dead_letter": dead} if strategy == "split" else {}
    stage = with_retry(
        make(flaky, concurrency=concurrency, ordered=False),
        attempts=3,
        backoff=constant(0.5),
        on_error=strategy,
        **options,
    )
    report = error_report(stage)
    out: list[Any] = []
    with contextlib.suppress(ConnectionError):
        async for value in range(n) | stage:
            out.append(value)
    stats = report.statistics()
    # The function's own witness: the items whose three calls all failed.
    doomed = {item for item, count in failed_calls.items() if count == 3}

    delivered: list[int] = []
    if strategy == "result":
        delivered = [r.failure().item for r in out if isinstance(r, Failure)]
        out = [r.unwrap() for r in out if isinstance(r, Success)]
    elif strategy == "collect":
        delivered = [r.item for r in report.records]
    elif strategy == "split":
        delivered = [r.item for r in dead.drain()]
    passed = sorted(set(out))
    # Nothing duplicated: each item once (a flat_map item's two elements once each).
    assert sorted(out) == (sorted(passed * 2) if kind == "flat_map" else passed)
    assert stats.in_flight == 0
    assert stats.items == stats.succeeded + stats.failed + stats.cancelled
    assert doomed.isdisjoint(passed)
    if strategy == "fail":
        assert out == [] or stats.succeeded >= len(passed)
        assert stats.raised == 1
        assert len(doomed) == 1
        return

    filtered = {i for i in range(n) if kind == "filter" and i % 3 == 0} - doomed
    # in = out + filtered + skipped + dead-lettered (collected, returned as Failure)
    assert stats.items == n
    assert len(passed) + len(filtered) + stats.failed == n
    assert set(passed) | filtered | doomed == set(range(n))
    assert stats.failed == len(doomed) > 0
    if strategy != "skip":
        assert sorted(delivered) == sorted(doomed)
    assert stats.skipped == (len(doomed) if strategy == "skip" else 0)


@settings(max_examples=60)
@given(
    failures_per_item=st.lists(st.integers(0, 4), max_size=12),
    attempts=st.integers(1, 4),
    strategy=st.sampled_from(["skip", "collect", "split", "result"]),
    concurrency=st.sampled_from([1, 3]),
)
async def test_exactly_the_items_that_fail_every_attempt_are_handled(
    failures_per_item: list[int], attempts: int, strategy: str, concurrency: int
) -> None:
    flaky = Flaky(failures=dict(enumerate(failures_per_item)))
    dead = DeadLetters()
    options: dict[str, Any] = {"dead_letter": dead} if strategy == "split" else {}
    stage = with_retry(
        map_(flaky, concurrency=concurrency),
        attempts=attempts,
        backoff=constant(1),
        on_error=strategy,
        **options,
    )
    with virtual_clock():
        out = await collect(range(len(failures_per_item)) | stage)
    doomed = [i for i, f in enumerate(failures_per_item) if f >= attempts]
    survivors = [i for i, f in enumerate(failures_per_item) if f < attempts]
    if strategy == "result":
        assert [r.unwrap() for r in out if isinstance(r, Success)] == survivors
        handled = [r.failure().item for r in out if isinstance(r, Failure)]
    else:
        assert out == survivors
        handled = {
            "skip": doomed,
            "collect": [r.item for r in error_report(stage).records],
            "split": [r.item for r in dead.drain()],
        }[strategy]
    assert handled == doomed
    for i, f in enumerate(failures_per_item):
        assert flaky.calls[i] == min(f + 1, attempts)
