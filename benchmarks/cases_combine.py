"""Case (m): merging several async sources."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from benchmarks.common import arange, checksum, drain_sum, mismatch
from benchmarks.harness import (
    DIVIDE,
    TIMES,
    TIMING_HEADERS,
    CaseResult,
    Competitor,
    Runner,
    Settings,
    Target,
    case,
    partial_result,
    streamkit_over,
    time_competitors,
    timing_rows,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

SOURCES = 4


def _sources(n: int) -> list[AsyncIterator[int]]:
    share = n // SOURCES
    return [arange(share) for _ in range(SOURCES)]


def _streamkit() -> Runner:
    from streamkit import merge

    async def run(n: int) -> object:
        return await drain_sum(merge(*_sources(n)))

    return run


_DONE: Any = object()


async def queue_merge(sources: list[AsyncIterator[int]]) -> AsyncIterator[int]:
    """One producer task per source, all putting into one bounded queue."""
    queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=SOURCES)

    async def produce(source: AsyncIterator[int]) -> None:
        async for item in source:
            await queue.put(item)
        await queue.put(_DONE)

    tasks = [asyncio.create_task(produce(source)) for source in sources]
    try:
        open_sources = len(tasks)
        while open_sources:
            item = await queue.get()
            if item is _DONE:
                open_sources -= 1
            else:
                yield item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _queue() -> Runner:
    async def run(n: int) -> object:
        return await drain_sum(queue_merge(_sources(n)))

    return run


async def wait_merge(sources: list[AsyncIterator[int]]) -> AsyncIterator[int]:
    """A task per pull and one ``asyncio.wait`` per item (an earlier streamkit merge)."""
    pending: dict[asyncio.Task[int], AsyncIterator[int]] = {
        asyncio.ensure_future(anext(source)): source for source in sources
    }
    try:
        while pending:
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                source = pending.pop(task)
                try:
                    item = task.result()
                except StopAsyncIteration:
                    continue
                yield item
                pending[asyncio.ensure_future(anext(source))] = source
    finally:
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


def _wait() -> Runner:
    async def run(n: int) -> object:
        return await drain_sum(wait_merge(_sources(n)))

    return run


def _aiostream() -> Runner:
    from aiostream import stream

    async def run(n: int) -> object:
        result: object = None
        async with stream.merge(*_sources(n)).stream() as streamer:
            result = await drain_sum(streamer)
        return result

    return run


@case(
    "m",
    f"merge of {SOURCES} async sources",
    Target(
        f"streamkit within 1.5{TIMES} of a hand-rolled merge of producer tasks into a bounded "
        "queue",
        f"streamkit {DIVIDE} queue merge",
        streamkit_over("queue"),
        1.5,
    ),
    Target(
        f"streamkit at least 2{TIMES} faster than a task per pull + `asyncio.wait` per item",
        f"streamkit {DIVIDE} asyncio.wait merge",
        streamkit_over("wait"),
        0.5,
    ),
)
def merge_sources(settings: Settings) -> CaseResult:
    n = settings.size(200_000, 2_000)

    def verify(size: int, result: object) -> str | None:
        share = size // SOURCES
        expected = checksum([i for _ in range(SOURCES) for i in range(share)], ordered=False)
        return mismatch(result, expected)

    competitors = [
        Competitor("streamkit", "streamkit `merge(*sources)`", _streamkit, reference=True),
        Competitor(
            "queue", "hand-rolled: a producer task per source into one bounded queue", _queue
        ),
        Competitor(
            "wait",
            "hand-rolled: a task per pull + `asyncio.wait(FIRST_COMPLETED)` per item",
            _wait,
        ),
        Competitor("aiostream", "aiostream `stream.merge(*sources)`", _aiostream),
    ]
    rows = timing_rows(time_competitors(competitors, n, settings, verify))
    return partial_result(
        f"{SOURCES} async generators of {n // SOURCES:,} ints each, merged and consumed one "
        "item at a time with `async for`. The producer-task merge is the cheapest correct "
        "scheme in asyncio; a task per pull with one `asyncio.wait` per item is the scheme "
        "streamkit's merge used before.",
        f"n = {n:,}, {SOURCES} sources",
        TIMING_HEADERS,
        rows,
    )
