"""A `SQLiteStore`'s writer process, seen from the event loop.

The process (`_sqlite_save.serve`) applies save plans in the order they are
sent and answers each with a reply. This side sends a plan without blocking
the loop (the pipe is non-blocking; what does not fit waits for the loop to
say the pipe is writable) and reads the replies when the loop says they
came, so a save costs the loop's thread the encoding and two system calls.
"""

from __future__ import annotations

import asyncio
import collections
import os
import subprocess
import sys
from typing import IO, Final

from . import _sqlite_save
from ._sqlite_save import Frames, Reply, frame

_SCRIPT: Final = _sqlite_save.__file__
_CLOSE_SECONDS: Final = 10.0


class WriterProcess:
    """One writer process for the database file ``path``.

    Started at construction; `ready` once it has connected. `apply` sends a
    plan and returns its reply. If the process ends unexpectedly, every plan
    waiting and every later one is answered ``("ended", message)``.
    """

    __slots__ = (
        "_ended",
        "_frames",
        "_inbox",
        "_loop",
        "_out",
        "_outgoing",
        "_pending",
        "_process",
        "_reading",
        "_writing",
        "ready",
    )

    def __init__(self, path: str) -> None:
        # A session of its own: a Ctrl-C at the terminal reaches the run, which
        # may still want its last save made, and not its writer. The writer
        # ends when its input does: when the store closes it, or when this
        # process dies.
        self._process = subprocess.Popen(
            [sys.executable, "-I", "-S", _SCRIPT, path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        stdin, stdout = self._process.stdin, self._process.stdout
        assert stdin is not None  # PIPE
        assert stdout is not None
        self._outgoing: IO[bytes] = stdin
        self._inbox: IO[bytes] = stdout
        self._frames = Frames()
        self._pending: collections.deque[asyncio.Future[Reply]] = collections.deque()
        self._out = bytearray()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reading = False
        self._writing = False
        self._ended: str | None = None
        self.ready = False
        """Whether the process has connected to the database."""
        try:
            os.set_blocking(stdin.fileno(), False)
            # The first reply is the process's ("ready",).
            self._expect()
        except BaseException:  # the loop cannot watch pipes (NotImplementedError), say
            self._outgoing.close()
            self._process.kill()
            self._process.wait()
            self._inbox.close()
            raise

    @property
    def busy(self) -> bool:
        """Whether a plan sent has not been answered yet."""
        return len(self._pending) > (0 if self.ready else 1)

    def _bind(self) -> asyncio.AbstractEventLoop:
        """The running loop, which from now on watches the pipes and completes the replies.

        A store may serve one ``asyncio.run`` after another. When the loop
        changes, the replies still to come are given futures of the new loop
        (the old loop's went with it); the old loop must be closed by then.
        """
        loop = asyncio.get_running_loop()
        old = self._loop
        if old is loop:
            return loop
        if self._pending and old is not None and not old.is_closed():
            raise RuntimeError("a SQLiteStore's writer process serves one event loop at a time")
        if old is not None and not old.is_closed():
            self._stop_writing()
            self._stop_reading()
        self._loop = loop
        self._reading = self._writing = False
        self._pending = collections.deque(loop.create_future() for _ in self._pending)
        # The loop watches the replies for as long as the process lives (an end
        # is seen as it happens), rather than from each request to its reply.
        self._start_reading()
        if self._out:
            self._flush()
        return loop

    def _start_reading(self) -> None:
        if not self._reading and self._ended is None:
            assert self._loop is not None
            self._loop.add_reader(self._inbox.fileno(), self._on_readable)
            self._reading = True

    def _expect(self) -> asyncio.Future[Reply]:
        future: asyncio.Future[Reply] = self._bind().create_future()
        self._pending.append(future)
        self._start_reading()
        return future

    async def wait_ready(self) -> Reply:
        """Wait until the process has connected: ``("ready",)`` or ``("ended", message)``."""
        self._bind()
        if self.ready or self._ended is not None:
            return ("ready",) if self.ready else ("ended", self._ended)
        return await asyncio.shield(self._pending[0])

    async def idle(self) -> None:
        """Wait until every plan sent so far is answered."""
        self._bind()
        if self.busy:
            await asyncio.wait([self._pending[-1]])

    def apply(self, plan: bytes) -> asyncio.Future[Reply]:
        """Send ``plan`` (its `marshal` bytes); a future of its reply.

        The future completes even if its waiter is cancelled.
        """
        future = self._expect()
        if self._ended is not None:
            self._settle(self._ended)
            return future
        data = frame(plan)
        if not self._out:  # nothing waits for the pipe: write now
            try:
                sent = os.write(self._outgoing.fileno(), data)
            except BlockingIOError:
                sent = 0
            except OSError as exc:  # the process has gone: its replies say so
                self._ending(f"could not write to it: {exc}")
                return future
            data = data[sent:]
            if not data:
                return future
        self._out += data
        self._flush()
        return future

    def _flush(self) -> None:
        """Write what waits for the pipe, then have the loop say when it takes more."""
        loop = self._loop
        assert loop is not None
        fd = self._outgoing.fileno()
        try:
            while self._out:
                sent = os.write(fd, self._out)
                del self._out[:sent]
        except BlockingIOError:
            if not self._writing:
                loop.add_writer(fd, self._on_writable)
                self._writing = True
            return
        except OSError as exc:  # the process has gone: its replies say so
            self._out.clear()
            self._ending(f"could not write to it: {exc}")
            return
        self._stop_writing()

    def _stop_writing(self) -> None:
        loop = self._loop
        if self._writing and loop is not None and not loop.is_closed():
            loop.remove_writer(self._outgoing.fileno())
        self._writing = False

    def _on_writable(self) -> None:
        self._flush()

    def _on_readable(self) -> None:
        try:
            data = os.read(self._inbox.fileno(), 1 << 16)
        except OSError as exc:
            data = b""
            reason = f"could not read from it: {exc}"
        else:
            reason = ""
        if not data:
            self._ending(reason or self._exit_reason())
            return
        for reply in self._frames.feed(data):
            if reply[0] == "crashed":
                self._ending(f"it failed: {reply[1]}")
                return
            future = self._pending.popleft()
            if reply[0] == "ready":
                self.ready = True
            if not future.done():
                future.set_result(tuple(reply))

    def _exit_reason(self) -> str:
        code = self._process.poll()
        return "it ended" if code is None else f"it ended with exit code {code}"

    def _ending(self, reason: str) -> None:
        self._ended = f"the store's writer process (pid {self._process.pid}) stopped: {reason}"
        self._settle(self._ended)
        self._stop_reading()
        self._stop_writing()

    def _settle(self, reason: str) -> None:
        while self._pending:
            future = self._pending.popleft()
            if not future.done():
                future.set_result(("ended", reason))

    def _stop_reading(self) -> None:
        loop = self._loop
        if self._reading and loop is not None and not loop.is_closed():
            loop.remove_reader(self._inbox.fileno())
        self._reading = False

    @property
    def ended(self) -> str | None:
        """Why the process stopped unexpectedly, or None."""
        return self._ended

    def end(self) -> None:
        """Close the process's input (it ends once it has answered what it was sent)."""
        if self._out:  # unsent bytes of plans nobody waits for any more
            self._out.clear()
        self._stop_writing()
        self._stop_reading()
        self._outgoing.close()

    def wait(self) -> int:
        """Block until the process has ended (after `end`); its exit code. Not on the loop."""
        try:
            code = self._process.wait(_CLOSE_SECONDS)
        except subprocess.TimeoutExpired:
            self._process.kill()
            code = self._process.wait()
        self._inbox.close()
        return code
