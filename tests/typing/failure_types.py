"""Static checks for failure handling (mypy --strict and pyright strict).

Nothing here runs: pytest does not collect this file and the functions are
never called. ``assert_type`` fails the type checkers when a type drifts.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any, assert_type

from returns.result import Result

from streamkit import Flow, Stage, collect, filter_, flat_map, map_, tap
from streamkit._backoff import (
    Backoff,
    BackoffPolicy,
    ConstantBackoff,
    ExponentialBackoff,
    constant,
    exponential,
)
from streamkit._failures import (
    DeadLetters,
    ErrorRecord,
    ErrorReport,
    ExceptionInfo,
    FailureStatistics,
    failures,
    successes,
    with_retry,
)


def parse(text: str) -> int:
    return int(text)


async def fetch(key: int) -> bytes:
    return bytes(key)


def is_even(x: int) -> bool:
    return x % 2 == 0


def split_words(line: str) -> list[str]:
    return line.split()


def check_backoff_policies() -> None:
    assert_type(constant(1), ConstantBackoff)
    assert_type(exponential(0.5, jitter="full", seed=3), ExponentialBackoff)
    assert_type(exponential().schedule(random.Random()), Iterator[float])
    policy: BackoffPolicy = exponential()
    assert_type(policy.schedule(random.Random(1)), Iterator[float])

    def linear(attempt: int) -> float:
        return 0.1 * attempt

    backoff: Backoff = linear
    assert_type(with_retry(map_(parse), backoff=backoff), Stage[str, int])
    assert_type(with_retry(map_(parse), backoff=linear), Stage[str, int])


def check_with_retry_keeps_item_types() -> None:
    assert_type(with_retry(map_(fetch), attempts=5), Stage[int, bytes])
    assert_type(with_retry(map_(parse), on_error="skip"), Stage[str, int])
    assert_type(with_retry(filter_(is_even), backoff=constant(0)), Stage[int, int])
    assert_type(with_retry(tap(print), on_error="collect"), Stage[object, object])
    assert_type(with_retry(flat_map(split_words), attempts=2), Stage[str, str])
    dead = DeadLetters()
    assert_type(with_retry(map_(fetch), on_error="split", dead_letter=dead), Stage[int, bytes])
    chained = map_(parse) | with_retry(map_(fetch), attempts=5)
    assert_type(chained, Stage[str, bytes])
    assert_type(["1"] | chained, Flow[bytes])


def check_results_railway() -> None:
    railway = with_retry(map_(fetch), on_error="result")
    assert_type(railway, Stage[int, Result[bytes, ErrorRecord[int]]])
    flow = [1, 2] | railway
    assert_type(flow, Flow[Result[bytes, ErrorRecord[int]]])
    assert_type(flow | successes(on_failure=ErrorReport()), Flow[bytes])
    assert_type([1, 2] | railway | failures(), Flow[ErrorRecord[int]])
    # `stage | successes()` is precise for mypy (which prefers a subclass's
    # __ror__) but Stage[int, Any] for pyright: pipe flows for exact types.
    assert_type(successes()(flow), Flow[bytes])
    assert_type(failures()(flow), Flow[ErrorRecord[int]])


async def check_records_and_reports() -> None:
    report = ErrorReport()
    stage = with_retry(map_(parse), on_error="collect", report=report)
    assert_type(await collect(["1"] | stage), list[int])
    assert_type(report.records, tuple[ErrorRecord[Any], ...])
    assert_type(report.statistics(), FailureStatistics)
    record = report.records[0]
    assert_type(record.info, ExceptionInfo)
    assert_type(record.to_json(), str)
    assert_type(ErrorRecord.from_json("{}"), ErrorRecord[Any])
    assert_type(record.exception, BaseException | ExceptionInfo)
    dead = DeadLetters()
    async for letter in dead:
        assert_type(letter, ErrorRecord[Any])
