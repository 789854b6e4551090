"""Tools for testing stages: tracked sources and cleanup assertions.

Use them to test your own stages the way streamkit tests its operators::

    source = TrackedSource(range(10))
    assert await collect(source | take(3)) == [0, 1, 2]
    source.assert_closed()
    assert source.pulls == 3
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from typing import Generic, TypeVar

T = TypeVar("T")

__all__ = ["SourceError", "TrackedSource", "assert_no_pending_tasks"]


class SourceError(Exception):
    """The error a `TrackedSource` raises when told to fail."""


class TrackedSource(AsyncIterator[T], Generic[T]):
    """An async source that records how it is used.

    It yields ``items`` one by one, counting pulls, and records whether it was
    closed (by `aclose`, as every streamkit operator does when it stops) and
    whether it ran to exhaustion. It can fail on purpose: ``fail_at=k`` raises
    ``error`` (a `SourceError` by default) instead of yielding item ``k``.

    Args:
        items: The items to yield.
        fail_at: The index at which to raise instead of yielding.
        error: The exception to raise at ``fail_at``.
        delay: Seconds to sleep (on the event loop) before each item.

    Example:
        >>> import asyncio
        >>> from streamkit import collect, take
        >>> source = TrackedSource(range(100))
        >>> asyncio.run(collect(source | take(2)))
        [0, 1]
        >>> source.pulls, source.closed, source.exhausted
        (2, True, False)
    """

    def __init__(
        self,
        items: Iterable[T],
        *,
        fail_at: int | None = None,
        error: BaseException | None = None,
        delay: float = 0.0,
    ) -> None:
        self._items = list(items)
        self._fail_at = fail_at
        self._error = error if error is not None else SourceError(f"source failed at {fail_at}")
        self._delay = delay
        self._position = 0
        self.pulls = 0
        """How many times the next item was requested."""
        self.yielded = 0
        """How many items were handed out."""
        self.closed = False
        """Whether `aclose` was called."""
        self.exhausted = False
        """Whether the items ran out (StopAsyncIteration was raised)."""

    def __aiter__(self) -> TrackedSource[T]:
        return self

    async def __anext__(self) -> T:
        if self.closed:
            raise StopAsyncIteration
        self.pulls += 1
        if self._delay:
            await asyncio.sleep(self._delay)
        if self._fail_at is not None and self._position == self._fail_at:
            self._position += 1
            raise self._error
        if self._position >= len(self._items):
            self.exhausted = True
            raise StopAsyncIteration
        item = self._items[self._position]
        self._position += 1
        self.yielded += 1
        return item

    async def aclose(self) -> None:
        """Record the close; later pulls end the iteration."""
        self.closed = True

    @property
    def finished(self) -> bool:
        """Closed or exhausted: nothing more will be pulled."""
        return self.closed or self.exhausted

    def assert_closed(self) -> None:
        """Fail unless the source was closed or ran to its end."""
        assert self.finished, f"source was left open after {self.pulls} pulls"

    def __repr__(self) -> str:
        return (
            f"TrackedSource(pulls={self.pulls}, yielded={self.yielded}, "
            f"closed={self.closed}, exhausted={self.exhausted})"
        )


def assert_no_pending_tasks() -> None:
    """Fail if any task other than the current one is still pending.

    Call it at the end of a test, after a flow has stopped, to prove that
    every task a stage started was awaited.
    """
    current = asyncio.current_task()
    leftover = [task for task in asyncio.all_tasks() if task is not current and not task.done()]
    assert not leftover, f"pending tasks left behind: {leftover}"
