"""Every operator through `check_stage`: break, errors, cancellation, cleanup."""

from __future__ import annotations

import asyncio
import inspect
from typing import TYPE_CHECKING, Any

import pytest

import streamkit
from streamkit import (
    ErrorReport,
    Hopping,
    Session,
    Stage,
    Tumbling,
    branch,
    broadcast,
    buffer,
    chunk,
    chunk_until,
    concat,
    debounce,
    distinct,
    enumerate_,
    envelop,
    failures,
    filter_,
    flat_map,
    flatten,
    fork,
    group_by,
    iterate,
    map_,
    merge,
    pairwise,
    reduce_point,
    scan,
    scan_by,
    scan_state,
    scan_state_by,
    set_state,
    skip,
    skip_while,
    spaced,
    stage,
    successes,
    switch_map,
    take,
    take_while,
    tap,
    tee,
    throttle,
    throttle_by,
    timeout,
    unwrap,
    window,
    windowed,
    with_retry,
    zip_,
)
from streamkit.testing import (
    StageCheckError,
    TrackedSource,
    check_flow,
    check_stage,
    current_clock,
    virtual_clock,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable


async def double(x: int) -> int:
    await current_clock().sleep(0.25 if x % 3 else 1.0)
    return 2 * x


async def is_even(x: int) -> bool:
    await current_clock().sleep(0.5 if x % 2 else 0.125)
    return x % 2 == 0


async def pages(x: int) -> AsyncIterator[int]:
    for i in range(x % 3):
        await current_clock().sleep(0.25)
        yield i


_flaky_calls: dict[int, int] = {}


async def flaky_double(x: int) -> int:
    """Fails the first call for every third item, then succeeds."""
    await current_clock().sleep(0.25)
    if x % 3 == 0:
        _flaky_calls[x] = _flaky_calls.get(x, 0) + 1
        if _flaky_calls[x] % 2:
            raise ConnectionError(f"flaky on {x}")
    return 2 * x


def fails_on_sevens(x: int) -> int:
    if x % 7 == 6:
        raise ValueError(f"no {x}")
    return x


@stage
async def pairs_summed(items: AsyncIterator[int]) -> AsyncIterator[int]:
    previous = 0
    async for item in items:
        yield previous + item
        previous = item


STAGES: dict[str, Callable[[], Stage[Any, Any]]] = {
    "map_": lambda: map_(lambda x: x + 1),
    "map_ async": lambda: map_(double),
    "map_ concurrency": lambda: map_(double, concurrency=3),
    "map_ unordered": lambda: map_(double, concurrency=3, ordered=False),
    "map_ window=1": lambda: map_(double, concurrency=2, window=1),
    "filter_": lambda: filter_(lambda x: x % 2),
    "filter_ concurrency": lambda: filter_(is_even, concurrency=4),
    "filter_ unordered": lambda: filter_(is_even, concurrency=4, ordered=False),
    "flat_map": lambda: flat_map(range),
    "flat_map concurrency": lambda: flat_map(pages, concurrency=2),
    "flat_map unordered": lambda: flat_map(pages, concurrency=2, ordered=False),
    "tap": lambda: tap(lambda x: None),
    "flatten": lambda: map_(lambda x: [x, x]) | flatten(),
    "scan": lambda: scan(lambda a, x: a + x, 0),
    "scan_by": lambda: scan_by(lambda x: x % 3, lambda a, x: a + x, 0),
    "enumerate_": lambda: enumerate_(1),
    "take": lambda: take(4),
    "skip": lambda: skip(2),
    "take_while": lambda: take_while(lambda x: x < 6),
    "skip_while": lambda: skip_while(lambda x: x < 3),
    "distinct": lambda: map_(lambda x: x // 2) | distinct(),
    "chunk": lambda: chunk(3),
    "chunk within": lambda: chunk(3, within=0.5),
    "chunk_until": lambda: chunk_until(lambda x: x % 3 == 2),
    "chunk_until within": lambda: chunk_until(lambda x: x % 3 == 2, max_size=2, within=0.5),
    "windowed": lambda: windowed(Tumbling(3), time=float, on_late=lambda _: None),
    "windowed session": lambda: windowed(Session(gap=2), time=float, emit="update"),
    "windowed processing": lambda: windowed(Hopping(2, hop=1), time="processing"),
    "window": lambda: window(3),
    "pairwise": lambda: pairwise(),
    "stage decorator": lambda: pairs_summed(),
    "buffer": lambda: buffer(3),
    "buffer drop_oldest": lambda: buffer(3, overflow="drop_oldest", on_drop=lambda x: None),
    "buffer drop_newest": lambda: buffer(3, overflow="drop_newest", on_drop=lambda x: None),
    "throttle": lambda: throttle(4, burst=2),
    "throttle_by": lambda: throttle_by(lambda x: x % 2, 4, burst=2),
    "group_by": lambda: group_by(lambda x: x % 3, scan(lambda a, x: a + x, 0) | take(3)),
    "group_by idle": lambda: group_by(lambda x: x % 3, chunk(2), idle=0.5, max_keys=2),
    "switch_map": lambda: switch_map(lambda x: x % 3, lambda x: range(x % 4)),
    "scan_state_by": lambda: scan_state_by(lambda x: x % 3, "n", lambda a, x: a + x, 0),
    "spaced": lambda: spaced(0.5),
    "debounce": lambda: debounce(0.5),
    "timeout": lambda: timeout(1.0),
    "timeout end": lambda: timeout(1.0, on_timeout="end"),
    "envelop": lambda: envelop({"run": 1}),
    "unwrap": lambda: envelop() | unwrap(),
    "set_state": lambda: set_state("double", lambda x: 2 * x),
    "scan_state": lambda: scan_state("running", lambda a, x: a + x, 0),
    "reduce_point": lambda: reduce_point("total", lambda a, x: a + x, 0),
    "reduce_point spilling": lambda: reduce_point("total", lambda a, x: a + x, 0, memory_limit=3),
    "reduce_point aggregate": lambda: reduce_point("n", lambda a, x: a + 1, 0, emit="aggregate"),
    "fork": lambda: fork(map_(lambda x: x + 1), take(3)),
    "fork zip": lambda: fork(unwrap(), set_state("x", abs), combine="zip", buffer=2),
    "branch": lambda: branch(a=reduce_point("t", lambda a, x: a + x, 0), b=take(2)),
    "with_retry": lambda: with_retry(map_(flaky_double), attempts=3),
    "with_retry concurrency": lambda: with_retry(map_(flaky_double, concurrency=3), attempts=3),
    "map_ on_error skip": lambda: map_(fails_on_sevens, on_error="skip", report=ErrorReport()),
    "filter_ on_error collect": lambda: filter_(
        fails_on_sevens, on_error="collect", report=ErrorReport()
    ),
    "tap timeout": lambda: tap(double, timeout=5.0),
    "successes": lambda: (
        map_(fails_on_sevens, on_error="result") | successes(on_failure=ErrorReport())
    ),
    "failures": lambda: (
        map_(fails_on_sevens, on_error="result")
        | failures(on_success=[].append)
        | map_(lambda record: record.index)
    ),
}

UNORDERED = {
    "map_ unordered",
    "filter_ unordered",
    "flat_map unordered",
    "fork",
    "branch",
    "group_by",
    "group_by idle",
    "switch_map",
}
LOSSY = {"buffer drop_oldest", "buffer drop_newest"}


@pytest.mark.parametrize("name", sorted(STAGES))
async def test_every_stage_passes_check_stage(name: str) -> None:
    # Drop policies lose items depending on timing: only cleanup is checked.
    await check_stage(STAGES[name], range(12), ordered=name not in UNORDERED | LOSSY)


@pytest.mark.parametrize("name", ["map_ concurrency", "throttle", "buffer", "chunk within"])
async def test_stages_over_a_slow_source(name: str) -> None:
    # Items arrive over virtual time, so the stages really wait.
    def delayed(source: TrackedSource[Any]) -> Any:
        async def ticking() -> AsyncIterator[Any]:
            try:
                async for item in source:
                    await current_clock().sleep(0.25)
                    yield item
            finally:
                await source.aclose()

        return ticking() | STAGES[name]()

    await check_flow(delayed, range(8))


COMBINATORS: dict[str, Callable[[TrackedSource[Any]], Any]] = {
    "concat": lambda s: concat([-1], s, [-2]),
    "merge": lambda s: merge(s, [100, 101]),
    "zip_": lambda s: zip_(s, range(100)),
    "iterate": lambda s: iterate(s),
    "tee": lambda s: zip_(*tee(s, 2, max_lag=3)),
    "tee merged": lambda s: merge(*tee(s, 3, max_lag=2)),
    "broadcast": lambda s: broadcast(s, map_(lambda x: x), take(2), max_lag=2),
}


@pytest.mark.parametrize("name", sorted(COMBINATORS))
async def test_every_combinator_closes_its_sources(name: str) -> None:
    ordered = name in {"concat", "zip_", "iterate", "tee"}
    await check_flow(COMBINATORS[name], range(10), ordered=ordered)


# Stage and flow factories that have no upstream to close.
NO_UPSTREAM = {"empty", "repeat", "pipe", "stage"}  # stage: "stage decorator" above


def _stage_factories() -> set[str]:
    """Public functions returning a stage or a flow (by their return annotation)."""
    names = set()
    for name in streamkit.__all__:
        obj = getattr(streamkit, name)
        if not inspect.isfunction(obj):
            continue
        returns = str(inspect.signature(obj).return_annotation)
        if any(kind in returns for kind in ("Stage", "Passthrough", "Flow")):
            names.add(name)
    return names


# Stages that only work in a checkpointed Run: outside one they refuse their first item,
# closing their upstream (tests/test_checkpoint_run.py checks them inside one).
CHECKPOINT_ONLY = {"write_to"}


async def test_a_sink_outside_a_checkpointed_run_refuses_its_first_item() -> None:
    source = TrackedSource(range(10))
    sink = streamkit.TableSink(streamkit.MemoryStore(), "out")
    with pytest.raises(TypeError, match=r"write_to\(table 'out'\) commits with the checkpoints"):
        await streamkit.collect(source | streamkit.write_to(sink))
    assert (source.pulls, source.closed) == (1, True)


def test_every_operator_is_covered() -> None:
    covered = {name.split()[0] for name in STAGES} | set(COMBINATORS) | NO_UPSTREAM
    covered |= CHECKPOINT_ONLY
    missing = sorted(_stage_factories() - covered)
    assert not missing, f"add these operators to tests/test_check_stage.py: {missing}"
    assert {"map_", "buffer", "tee", "throttle", "chunk"} <= _stage_factories()


@pytest.mark.parametrize("terminal", ["collect", "count", "drain", "first", "fold", "last"])
async def test_terminals_close_their_source(terminal: str) -> None:
    calls: dict[str, Callable[[Any], Any]] = {
        "collect": streamkit.collect,
        "count": streamkit.count,
        "drain": streamkit.drain,
        "first": streamkit.first,
        "fold": lambda s: streamkit.fold(s, lambda a, x: a + x, 0),
        "last": streamkit.last,
    }
    source = TrackedSource(range(10))
    with virtual_clock():
        await calls[terminal](source | map_(double, concurrency=2))
    source.assert_closed()
    failing = TrackedSource(range(10), fail_at=3)
    if terminal != "first":
        with pytest.raises(type(failing.error)):
            await calls[terminal](failing)
        failing.assert_closed()


# ---------------------------------------------------------------- check_stage itself


async def test_check_stage_catches_a_flow_that_leaves_its_source_open() -> None:
    def leaky(source: TrackedSource[Any]) -> AsyncIterator[Any]:
        async def forward() -> AsyncIterator[Any]:
            async for item in source:  # no `finally: await source.aclose()`
                yield item

        return forward()

    with pytest.raises(StageCheckError, match="left open"):
        await check_flow(leaky, range(5))


async def test_check_stage_catches_a_swallowed_error_and_a_leftover_task() -> None:
    @stage
    async def swallowing(items: AsyncIterator[int]) -> AsyncIterator[int]:
        try:
            async for item in items:
                yield item
        except Exception:
            return

    with pytest.raises(StageCheckError, match="swallowed"):
        await check_stage(lambda: swallowing(), range(5))

    forgotten: list[asyncio.Task[None]] = []

    @stage
    async def orphaning(items: AsyncIterator[int]) -> AsyncIterator[int]:
        forgotten.append(asyncio.create_task(asyncio.Event().wait()))  # type: ignore[arg-type]
        async for item in items:
            yield item

    with pytest.raises(StageCheckError, match="pending tasks"):
        await check_stage(lambda: orphaning(), range(5))
    for task in forgotten:
        task.cancel()
    await asyncio.gather(*forgotten, return_exceptions=True)


async def test_check_stage_compares_with_expected() -> None:
    assert await check_stage(map_(abs), [-1, 2], expected=[1, 2]) == [1, 2]
    with pytest.raises(StageCheckError, match="expected"):
        await check_stage(map_(abs), [-1, 2], expected=[-1, 2])
