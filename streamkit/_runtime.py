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
    from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterable
    from concurrent.futures import Executor

T = TypeVar("T")

Cancelled = asyncio.CancelledError
"""The exception a cancelled task sees (re-raise it, always)."""

Handle = asyncio.Future
"""A pending outcome: a task or a future (generic in its result)."""


@runtime_checkable
class Clock(Protocol):
    """What time operators need from a clock: the time, and a way to wait.

    The default is the event loop's clock; `use_clock` installs another for a
    block (`streamkit.testing.VirtualClock` for exact, instant tests).

    Examples:
        >>> import asyncio
        >>> from streamkit import Clock, collect, spaced, use_clock
        >>> class Instant:
        ...     def __init__(self) -> None:
        ...         self.t = 0.0
        ...     def now(self) -> float:
        ...         return self.t
        ...     async def sleep(self, seconds: float) -> None:
        ...         self.t += seconds  # never really waits
        >>> clock = Instant()
        >>> isinstance(clock, Clock)
        True
        >>> async def main() -> list[int]:
        ...     with use_clock(clock):
        ...         return await collect(range(3) | spaced(2))
        >>> asyncio.run(main()), clock.now()
        ([0, 1, 2], 4.0)
    """

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
    """The clock time operators use in this context.

    Time operators read it once, when they start; tasks started inside a
    `use_clock` block see its clock too (it is a context variable).

    Examples:
        >>> import asyncio
        >>> from streamkit import current_clock
        >>> async def main() -> str:
        ...     return repr(current_clock())
        >>> asyncio.run(main())
        'LoopClock()'
    """
    return _current_clock.get()


@contextlib.contextmanager
def use_clock(clock: Clock) -> Generator[Clock]:
    """Make ``clock`` the current clock for the duration of the block.

    Args:
        clock: Any object with ``now()`` and ``sleep(seconds)``.

    Examples:
        >>> import asyncio
        >>> from streamkit import collect, current_clock, throttle, use_clock
        >>> from streamkit.testing import VirtualClock
        >>> async def main() -> float:
        ...     with use_clock(VirtualClock()):
        ...         await collect(range(3) | throttle(1))
        ...         return current_clock().now()
        >>> asyncio.run(main())
        2.0
    """
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
    is cancelled while waiting, the task is cancelled again and still waited
    for (so that what it was iterating can be closed next), then that
    cancellation propagates.
    """
    await _cancel_all([task])
    if not task.cancelled():
        task.exception()


async def _cancel_all(tasks: list[asyncio.Future[Any]]) -> None:
    """Cancel the tasks and wait until every one is done, shielding the wait."""
    pending = [task for task in tasks if not task.done()]
    interrupted: BaseException | None = None
    while pending:
        for task in pending:
            task.cancel()
        try:
            await asyncio.wait(pending)
        except asyncio.CancelledError as exc:
            # Cleanup must finish: a task still running inside an iterator
            # would make closing that iterator fail.
            interrupted = exc
        pending = [task for task in pending if not task.done()]
    if interrupted is not None:
        raise interrupted


# --------------------------------------------------------------------------- task helpers
#
# The concurrent operators fetch these once per run and call them per item:
# they are the bound methods of the running loop, so the per-item cost is
# that of asyncio itself.


def task_starter() -> Callable[[Coroutine[Any, Any, Any]], asyncio.Task[Any]]:
    """The running loop's ``create_task``."""
    return asyncio.get_running_loop().create_task


def signal_maker() -> Callable[[], asyncio.Future[Any]]:
    """The running loop's ``create_future``: one-shot wake-up signals."""
    return asyncio.get_running_loop().create_future


def start_awaitable(awaitable: Awaitable[T]) -> asyncio.Future[T]:
    """Run any awaitable (not only a coroutine) as a future on the running loop."""
    return asyncio.ensure_future(awaitable)


def completed(value: T) -> asyncio.Future[T]:
    """A future that already holds ``value``."""
    future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
    future.set_result(value)
    return future


def wake(signal: asyncio.Future[Any] | None) -> None:
    """Complete a wake-up signal if it is still pending."""
    if signal is not None and not signal.done():
        signal.set_result(None)


async def wait_for_signal(signal: asyncio.Future[Any]) -> None:
    """Wait until ``signal`` is done; if the waiter is cancelled, leave it pending.

    For a signal shared by several waiters: cancelling one of them must not
    cancel it for the others (a plain ``await`` would).
    """
    if not signal.done():
        await asyncio.wait((signal,))


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


async def stop_all(tasks: Iterable[asyncio.Future[Any]]) -> list[BaseException]:
    """Cancel every task, wait until all are done, return their errors.

    The errors returned are those of tasks that ended with an exception other
    than a cancellation (a task that had already failed, or one that raised
    something else when cancelled); every outcome is retrieved, so asyncio
    never reports one as "never retrieved". If the caller is cancelled while
    waiting, the tasks are cancelled again and still waited for, then the
    cancellation propagates (their outcomes retrieved).
    """
    every = list(tasks)
    try:
        await _cancel_all(every)
    finally:
        for task in every:
            if task.done():
                _retrieve(task)
    errors: list[BaseException] = []
    for task in every:
        if not task.cancelled():
            error = task.exception()
            if error is not None:
                errors.append(error)
    return errors


# --------------------------------------------------------------------------- threads
#
# Blocking I/O (files, SQLite) runs off the event loop, in worker threads.


def in_thread(fn: Callable[..., T], /, *args: Any) -> Handle[T]:
    """Start ``fn(*args)`` in the default worker thread pool; a future of its result."""
    return asyncio.ensure_future(asyncio.to_thread(fn, *args))


def in_executor(executor: Executor, fn: Callable[[], T], /) -> Handle[T]:
    """Start ``fn()`` on ``executor`` (e.g. a store's own thread); a future of its result."""
    return asyncio.get_running_loop().run_in_executor(executor, fn)


async def shielded(handle: Handle[T]) -> T:
    """Wait for ``handle`` without cancelling it if the waiter is cancelled."""
    return await asyncio.shield(handle)


async def settled(handle: Handle[Any]) -> None:
    """Wait until ``handle`` is done, whatever its outcome, and retrieve that outcome."""
    await asyncio.wait((handle,))
    _retrieve(handle)
