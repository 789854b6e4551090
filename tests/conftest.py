"""Shared sources, helpers and cross-cutting checks for the streamkit tests.

The helpers are plain functions and classes; test modules import them with
``from tests.conftest import ...``. The hypothesis profile is registered here
so that every module using ``@given`` runs with it.

Every operator module runs the same four contract checks over its own
operators (`OpCase`): empty input, early exit, a failing source and a
cancelled consumer. The checks live here so each module only lists its cases.
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import pytest
from hypothesis import HealthCheck, settings

from streamkit import Stage, _native, collect, take
from streamkit._records import COMPILED
from streamkit.testing import SourceError, TrackedSource, assert_no_pending_tasks
from tests.servers import kafka as kafka
from tests.servers import kafka_session as kafka_session
from tests.servers import postgres as postgres
from tests.servers import postgres_session as postgres_session
from tests.servers import pytest_collection_modifyitems as pytest_collection_modifyitems
from tests.servers import pytest_runtest_logreport as pytest_runtest_logreport
from tests.servers import pytest_terminal_summary as pytest_terminal_summary
from tests.servers import redis as redis
from tests.servers import redis_session as redis_session

T = TypeVar("T")

# Async runs vary in speed from one machine to the next: no per-example deadline.
settings.register_profile(
    "streamkit",
    deadline=None,
    max_examples=100,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("streamkit")


def pytest_sessionstart(session: pytest.Session) -> None:
    """With ``STREAMKIT_TEST_BUILD=pure|compiled`` (the Makefile), that envelope must be in use."""
    expected = os.environ.get("STREAMKIT_TEST_BUILD")
    actual = "compiled" if COMPILED else "pure"
    if expected and expected != actual:
        raise pytest.UsageError(
            f"STREAMKIT_TEST_BUILD={expected}, but the {actual} envelope is in use "
            f"(streamkit._native: {_native.__file__})"
        )


# --------------------------------------------------------------------------- sources


async def agen(items: Iterable[T], log: list[str] | None = None) -> AsyncIterator[T]:
    """An async generator over ``items`` that logs ``"finally"`` when it ends."""
    try:
        for item in items:
            yield item
    finally:
        if log is not None:
            log.append("finally")


def sync_gen(items: Iterable[T], log: list[str] | None = None) -> Iterator[T]:
    """A sync generator over ``items`` that logs ``"finally"`` when it ends."""
    try:
        yield from items
    finally:
        if log is not None:
            log.append("finally")


class Stalling(AsyncIterator[T], Generic[T]):
    """An async iterator that yields ``items`` and then waits forever.

    It is not a generator: nothing in it runs on cancellation, so ``closed``
    becomes true only if a consumer calls `aclose` on it, which every streamkit
    operator must do when it stops.
    """

    def __init__(self, items: Iterable[T] = ()) -> None:
        self._items = iter(items)
        self.stalled = asyncio.Event()
        """Set when the items have run out and the source starts waiting."""
        self.closed = False

    def __aiter__(self) -> Stalling[T]:
        return self

    async def __anext__(self) -> T:
        if self.closed:
            raise StopAsyncIteration
        for item in self._items:
            return item
        self.stalled.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable: the event is never set")  # pragma: no cover

    async def aclose(self) -> None:
        self.closed = True


async def cancel_when_stalled(consume: Awaitable[object], *sources: Stalling[Any]) -> None:
    """Run ``consume`` in a task until every source stalls, then cancel it.

    Fails unless the task ends with `asyncio.CancelledError`.
    """
    task = asyncio.ensure_future(consume)
    for source in sources:
        await asyncio.wait_for(source.stalled.wait(), timeout=5)
    # Let the consumer settle on its pending pull before cancelling it.
    for _ in range(5):
        await asyncio.sleep(0)
    assert not task.done(), "the consumer finished although its source never ends"
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        return
    raise AssertionError("the consumer swallowed the cancellation")


# --------------------------------------------------------------------------- errors


def raise_on(value: object) -> Callable[[T], T]:
    """An identity function that raises ``KeyError(value)`` when it sees ``value``."""

    def check(item: T) -> T:
        if item == value:
            raise KeyError(value)
        return item

    return check


def notes(error: BaseException) -> list[str]:
    """The PEP 678 notes of ``error`` (an empty list when it has none)."""
    return list(getattr(error, "__notes__", []))


def note(label: str, index: int) -> str:
    """The note streamkit adds to an error raised by ``label`` on item ``index``."""
    return f"streamkit: raised by {label} on item {index} of its input"


# --------------------------------------------------------------------------- callables


class Ready(Generic[T]):
    """An awaitable that is not a coroutine: it resolves at once to ``value``."""

    def __init__(self, value: T) -> None:
        self.value = value

    def __await__(self) -> Generator[Any, None, T]:
        return self.value
        yield  # pragma: no cover - makes this a generator


CALLABLE_KINDS = [
    "plain function",
    "coroutine function",
    "partial of plain function",
    "partial of coroutine function",
    "object with async __call__",
    "object with sync __call__",
    "lambda returning a coroutine",
    "function returning a custom awaitable",
    "async bound method",
]


def as_kind(kind: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """A callable of the given kind that computes what ``fn`` computes."""

    def plain(*args: Any) -> Any:
        return fn(*args)

    async def coroutine(*args: Any) -> Any:
        await asyncio.sleep(0)
        return fn(*args)

    class AsyncCall:
        async def __call__(self, *args: Any) -> Any:
            return fn(*args)

        async def method(self, *args: Any) -> Any:
            return fn(*args)

    class SyncCall:
        def __call__(self, *args: Any) -> Any:
            return fn(*args)

    kinds: dict[str, Callable[..., Any]] = {
        "plain function": plain,
        "coroutine function": coroutine,
        "partial of plain function": functools.partial(plain),
        "partial of coroutine function": functools.partial(coroutine),
        "object with async __call__": AsyncCall(),
        "object with sync __call__": SyncCall(),
        "lambda returning a coroutine": lambda *args: coroutine(*args),
        "function returning a custom awaitable": lambda *args: Ready(fn(*args)),
        "async bound method": AsyncCall().method,
    }
    return kinds[kind]


# --------------------------------------------------------------------------- operator cases


@dataclass(frozen=True)
class OpCase:
    """One operator with an input long enough that one output needs only part of it."""

    name: str
    make: Callable[[], Stage[Any, Any]]
    items: list[Any]
    expected: list[Any]

    def __str__(self) -> str:
        return self.name


async def check_normal_flow(case: OpCase) -> None:
    """The operator gives ``expected`` from a list, a sync and an async generator."""
    assert await collect(case.items | case.make()) == case.expected
    assert await collect(sync_gen(case.items) | case.make()) == case.expected
    assert await collect(agen(case.items) | case.make()) == case.expected
    assert await collect(case.make()(TrackedSource(case.items))) == case.expected


async def check_empty_input(case: OpCase) -> None:
    source = TrackedSource[Any]([])
    assert await collect(source | case.make()) == []
    assert await collect([] | case.make()) == []
    source.assert_closed()


async def check_early_exit(case: OpCase) -> None:
    """Taking one output item closes the source before the rest is pulled."""
    assert case.expected, "an early-exit case needs at least one output item"
    source = TrackedSource(case.items)
    assert await collect(source | case.make() | take(1)) == case.expected[:1]
    assert source.closed
    assert not source.exhausted
    assert source.pulls < len(case.items)

    log: list[str] = []
    async with agen(case.items, log) | case.make() as items:
        async for item in items:
            assert item == case.expected[0]
            break
    assert log == ["finally"]

    log = []
    assert await collect(sync_gen(case.items, log) | case.make() | take(1)) == case.expected[:1]
    assert log == ["finally"]


async def check_source_error(case: OpCase, fail_at: int) -> None:
    """A failing source propagates its own error, without a streamkit note, and is closed."""
    source = TrackedSource(case.items, fail_at=fail_at)
    with pytest.raises(SourceError) as raised:
        await collect(source | case.make())
    assert notes(raised.value) == []
    assert source.closed


async def check_cancellation(case: OpCase) -> None:
    """Cancelling the consumer while the source waits closes the source; no task is left."""
    source = Stalling(case.items[:2])
    await cancel_when_stalled(collect(source | case.make()), source)
    assert source.closed
    assert_no_pending_tasks()
