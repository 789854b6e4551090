"""Everything that touches the event loop: clock, sleeping, tasks, waiting.

Sequential operators never import this module. Time operators read the
current `Clock` once when they start, so tests can swap in a virtual clock
(`streamkit.testing.VirtualClock`) and run exactly, in milliseconds. Keeping
asyncio here is what would let another runtime follow later.
"""

from __future__ import annotations

import asyncio
import contextlib
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

if TYPE_CHECKING:
    from collections.abc import Awaitable, Coroutine, Generator

T = TypeVar("T")


@runtime_checkable
class Clock(Protocol):
    """What time operators need from a clock: the time, and a way to wait."""

    def now(self) -> float:
        """Seconds on a monotonic scale."""
        ...

    def sleep(self, seconds: float) -> Awaitable[None]:
        """Wait for ``seconds`` on this clock's scale."""
        ...


class LoopClock:
    """The event loop's own monotonic clock (the default)."""

    __slots__ = ()

    def now(self) -> float:
        """Return the running loop's time."""
        return asyncio.get_running_loop().time()

    def sleep(self, seconds: float) -> Awaitable[None]:
        """Sleep with `asyncio.sleep`."""
        return asyncio.sleep(seconds)

    def __repr__(self) -> str:
        return "LoopClock()"


LOOP_CLOCK = LoopClock()
_current_clock: ContextVar[Clock] = ContextVar("streamkit_clock", default=LOOP_CLOCK)


def current_clock() -> Clock:
    """The clock time operators use in this context."""
    return _current_clock.get()


@contextlib.contextmanager
def use_clock(clock: Clock) -> Generator[Clock]:
    """Make ``clock`` the current clock for the duration of the block."""
    token = _current_clock.set(clock)
    try:
        yield clock
    finally:
        _current_clock.reset(token)


def spawn(coroutine: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
    """Start a task on the running loop."""
    return asyncio.get_running_loop().create_task(coroutine)


async def wait_done(task: asyncio.Future[Any], seconds: float | None, clock: Clock) -> bool:
    """Wait until ``task`` is done or ``seconds`` elapse on ``clock``.

    Never cancels ``task``: a pull that is still pending stays pending for the
    next wait. Returns whether the task is done.
    """
    if task.done():
        return True
    if seconds is None:
        await asyncio.wait((task,))
        return True
    if seconds <= 0:
        return False
    if clock is LOOP_CLOCK:
        await asyncio.wait((task,), timeout=seconds)
        return task.done()
    timer = spawn(_sleep_on(clock, seconds))
    try:
        await asyncio.wait((task, timer), return_when=asyncio.FIRST_COMPLETED)
    finally:
        await cancel_and_wait(timer)
    return task.done()


async def _sleep_on(clock: Clock, seconds: float) -> None:
    await clock.sleep(seconds)


async def cancel_and_wait(task: asyncio.Future[Any]) -> None:
    """Cancel ``task`` and wait for it to finish, retrieving its outcome.

    The task's own exception, if it ended with one, is retrieved (so asyncio
    never reports it as "never retrieved") and dropped: callers that must
    surface it read ``task.exception()`` before cancelling. If the *caller*
    is cancelled while waiting, that cancellation propagates.
    """
    if not task.done():
        task.cancel()
        await asyncio.wait((task,))
    if not task.cancelled():
        task.exception()
