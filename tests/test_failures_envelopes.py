"""Retries and error strategies on envelope streams record each item's attempts."""

from __future__ import annotations

from typing import Any

import pytest

from streamkit import (
    DeadLetters,
    Envelope,
    ErrorReport,
    State,
    attempts_key,
    collect,
    constant,
    envelop,
    filter_,
    flat_map,
    map_,
    tap,
    unwrap,
    with_retry,
)
from streamkit.testing import virtual_clock


class Flaky:
    """Fails the first ``failures`` calls for items divisible by three."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: dict[int, int] = {}

    async def __call__(self, x: int) -> int:
        self.calls[x] = self.calls.get(x, 0) + 1
        if x % 3 == 0 and self.calls[x] <= self.failures:
            raise ConnectionError(f"down {x}")
        return x * 10


def attempts(item: Envelope[Any], label: str) -> dict[str, Any]:
    record: dict[str, Any] = item.state[attempts_key(label)]
    return record


@pytest.mark.parametrize("concurrency", [1, 3])
async def test_each_item_records_attempts_last_error_and_time(concurrency: int) -> None:
    stage = with_retry(map_(Flaky(2), concurrency=concurrency), attempts=5, backoff=constant(0.5))
    with virtual_clock():
        out = await collect(range(5) | envelop() | stage)
    assert [item.value for item in out] == [0, 10, 20, 30, 40]
    label = stage.label
    assert attempts(out[0], label) == {
        "status": "succeeded",
        "attempts": 3,
        "retry_count": 2,
        "error": "ConnectionError: down 0",
        "execution_time": 1.0,
    }
    assert attempts(out[1], label) == {
        "status": "succeeded",
        "attempts": 1,
        "retry_count": 0,
        "error": None,
        "execution_time": 0.0,
    }
    assert attempts(out[3], label)["attempts"] == 3


async def test_plain_streams_are_unchanged() -> None:
    stage = with_retry(map_(Flaky(1)), attempts=3, backoff=constant(0.0))
    assert await collect(range(4) | stage) == [0, 10, 20, 30]


async def test_the_items_own_state_is_kept_beside_the_record() -> None:
    start = State().set("run", 7)
    stage = with_retry(map_(Flaky(1)), attempts=2, backoff=constant(0.0))
    out = await collect(range(2) | envelop(start) | stage)
    assert all(item.state["run"] == 7 for item in out)
    assert attempts(out[0], stage.label)["retry_count"] == 1


async def test_failed_items_are_recorded_and_reported_with_their_state() -> None:
    report = ErrorReport()
    stage = map_(Flaky(5), on_error="collect", report=report)
    out = await collect(range(7) | envelop(State().set("run", 1)) | stage)
    assert [item.value for item in out] == [10, 20, 40, 50]
    assert [record.index for record in report.records] == [0, 3, 6]
    assert all(record.state is not None and record.state["run"] == 1 for record in report.records)


async def test_result_strategy_records_failed_status() -> None:
    stage = map_(Flaky(5), on_error="result")
    out = await collect(range(2) | envelop() | stage)
    assert attempts(out[0], stage.label)["status"] == "failed"
    assert attempts(out[0], stage.label)["error"] == "ConnectionError: down 0"
    assert attempts(out[1], stage.label)["status"] == "succeeded"


async def test_split_sends_records_with_state_and_keeps_the_rest() -> None:
    letters = DeadLetters()
    stage = map_(Flaky(5), on_error="split", dead_letter=letters)
    out = await collect(range(4) | envelop(State().set("k", "v")) | stage)
    letters.close()
    records = [record async for record in letters]
    assert [item.value for item in out] == [10, 20]
    assert [record.item for record in records] == [0, 3]
    assert all(record.state is not None and record.state["k"] == "v" for record in records)


async def test_filters_taps_and_flat_maps_keep_values_and_record() -> None:
    seen: list[int] = []
    keep = with_retry(filter_(lambda x: x % 2 == 0), attempts=2)
    note = with_retry(tap(seen.append), attempts=2)
    pairs = with_retry(flat_map(lambda x: [x, x]), attempts=2)
    out = await collect(range(4) | envelop() | keep | note | pairs)
    assert [item.value for item in out] == [0, 0, 2, 2]
    assert seen == [0, 2]
    for label in (keep.label, note.label, pairs.label):
        assert all(attempts(item, label)["attempts"] == 1 for item in out)
    assert await collect(range(4) | envelop() | keep | unwrap()) == [0, 2]


async def test_with_state_functions_still_see_the_state() -> None:
    def scaled(x: int, state: State) -> int:
        return x * int(state["factor"])

    stage = with_retry(map_(scaled, with_state=True), attempts=2)
    out = await collect(range(3) | envelop(State().set("factor", 3)) | stage)
    assert [item.value for item in out] == [0, 3, 6]
    assert attempts(out[2], stage.label)["status"] == "succeeded"
