"""Loops over in-memory data let other tasks run while they go."""

from __future__ import annotations

import asyncio
import threading
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import pytest

from streamkit import (
    collect,
    envelop,
    filter_,
    flatten,
    iterate,
    map_,
    repeat,
    take,
    timeout,
    unwrap,
)

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator

ITEMS = 100_000
LONGEST_GAP = 10_000
"""The most items a loop may handle without letting the ticker run."""


class Ticker:
    """A task that counts how often it gets to run."""

    def __init__(self) -> None:
        self.ticks = 0
        self.seen: list[int] = []

    async def run(self) -> None:
        while True:
            self.ticks += 1
            await asyncio.sleep(0)

    def note(self, item: Any) -> Any:
        """Record, per item, how often the ticker had run by then."""
        self.seen.append(self.ticks)
        return item

    def longest_gap(self) -> int:
        """The most consecutive items during which the ticker did not run."""
        longest = current = 0
        for before, after in zip(self.seen, self.seen[1:], strict=False):
            current = current + 1 if before == after else 0
            longest = max(longest, current)
        return longest


@asynccontextmanager
async def ticking() -> AsyncGenerator[Ticker, None]:
    ticker = Ticker()
    task = asyncio.create_task(ticker.run())
    await asyncio.sleep(0)  # it runs once before the chain starts
    try:
        yield ticker
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def anoop(x: int) -> int:
    return x


def keep(x: int) -> bool:
    return x % 3 != 0


async def drain(flow: AsyncIterator[Any]) -> int:
    n = 0
    async for _ in flow:
        n += 1
    return n


def chains(ticker: Ticker) -> dict[str, Callable[[], Any]]:
    note = ticker.note
    return {
        "collect of a sync chain over a range": lambda: collect(
            range(ITEMS) | map_(note) | filter_(keep)
        ),
        "async for over a sync chain over a list": lambda: drain(
            list(range(ITEMS)) | map_(note) | map_(str)
        ),
        "collect of an async map over a range": lambda: collect(
            range(ITEMS) | map_(anoop) | map_(note)
        ),
        "a list through a non-fused stage": lambda: collect(
            iterate(list(range(ITEMS))) | take(ITEMS) | map_(note)
        ),
        "repeat": lambda: collect(repeat(1, ITEMS) | map_(note)),
        "repeat forever, taken": lambda: collect(repeat(1) | map_(note) | take(ITEMS)),
        "flatten of one long list": lambda: collect([list(range(ITEMS))] | flatten() | map_(note)),
        "flatten, enveloped": lambda: collect(
            [list(range(ITEMS))] | envelop() | flatten() | unwrap() | map_(note)
        ),
    }


CHAIN_NAMES = sorted(chains(Ticker()))


@pytest.mark.parametrize("name", CHAIN_NAMES)
async def test_other_tasks_run_while_a_long_in_memory_chain_runs(name: str) -> None:
    async with ticking() as ticker:
        before = ticker.ticks
        await chains(ticker)[name]()
        ran = ticker.ticks - before
    assert len(ticker.seen) == ITEMS
    assert ran >= ITEMS // LONGEST_GAP
    assert ticker.longest_gap() <= LONGEST_GAP


def many_empty_lists() -> Iterator[list[int]]:
    for _ in range(20_000_000):
        yield []


@pytest.mark.parametrize(
    "source",
    [
        pytest.param(lambda: repeat([], 20_000_000), id="repeat"),
        pytest.param(many_empty_lists, id="generator"),
    ],
)
async def test_timeout_fires_on_a_chain_that_never_waits(
    source: Callable[[], Any],
) -> None:
    # Bounded, so that a loop that never yields ends (after seconds) rather
    # than spinning forever: then no TimeoutError is raised and this fails.
    with pytest.raises(TimeoutError):
        await collect(source() | flatten() | timeout(0.05))


def test_timeout_fires_on_repeat_of_an_empty_list_forever() -> None:
    # A loop that never yields would spin here forever: guard it with a
    # daemon thread, which can be given up on when its event loop cannot.
    outcome: list[BaseException | list[Any]] = []

    def run() -> None:
        try:
            outcome.append(asyncio.run(collect(repeat([]) | flatten() | timeout(0.05))))
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive(), "the chain never let the timeout fire"
    assert len(outcome) == 1
    assert isinstance(outcome[0], TimeoutError)
