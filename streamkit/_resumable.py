"""Resumable sources: async iterators that can say where they are and go back there.

A run that keeps checkpoints saves its source's ``position()`` with its
state; to resume, it calls ``seek(position)`` on a fresh source before
iterating. `Resumable` is the protocol; `resumable` (sequences) and `lines`
(text files) implement it.
"""

from __future__ import annotations

import codecs
import collections
import os
from collections.abc import AsyncIterable, Sequence
from typing import Any, BinaryIO, Final, Protocol, TypeAlias, TypeVar, runtime_checkable

from ._runtime import Cancelled, Handle, in_thread, settled, shielded

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)

_BLOCK_SIZE: Final = 64 * 1024

JSONValue: TypeAlias = Any
"""A value ``json.dumps`` encodes: None, bool, int, float, str, lists and dicts of them."""


@runtime_checkable
class Resumable(AsyncIterable[T_co], Protocol[T_co]):
    """An async iterator that knows where it is and can start again from there.

    Implement it for your own sources (a paginated API, a queue with
    offsets): besides ``__anext__`` and ``aclose``,

    * ``position()`` returns a JSON value that identifies the point *after*
      the last item handed out (before any item: where iteration will start);
    * ``seek(position)`` is called before iteration starts, with a value
      ``position()`` returned earlier, so that iteration continues with the
      item that followed it. It should only record the position; do the I/O
      on the first pull.

    A resumable source is single-use: iterating it moves its position.

    Examples:
        >>> import asyncio
        >>> class Countdown:
        ...     def __init__(self, start: int) -> None:
        ...         self.next = start
        ...     def __aiter__(self) -> "Countdown":
        ...         return self
        ...     async def __anext__(self) -> int:
        ...         if self.next <= 0:
        ...             raise StopAsyncIteration
        ...         self.next -= 1
        ...         return self.next + 1
        ...     async def aclose(self) -> None:
        ...         self.next = 0
        ...     def position(self) -> int:
        ...         return self.next
        ...     def seek(self, position: object) -> None:
        ...         assert isinstance(position, int)
        ...         self.next = position
        >>> async def main() -> list[int]:
        ...     source = Countdown(5)
        ...     assert isinstance(source, Resumable)
        ...     source.seek(2)
        ...     return [item async for item in source]
        >>> asyncio.run(main())
        [2, 1]
    """

    __slots__ = ()

    def __aiter__(self) -> Resumable[T_co]: ...

    async def __anext__(self) -> T_co:
        """The next item; `StopAsyncIteration` when there is none."""
        ...

    def position(self) -> JSONValue:
        """Where the source is: just after the last item it handed out."""
        ...

    def seek(self, position: JSONValue) -> None:
        """Continue, when iteration starts, from ``position``."""
        ...

    async def aclose(self) -> None:
        """Stop: release what the source holds; later pulls end the iteration."""
        ...


@runtime_checkable
class Suspending(Protocol):
    """A resumable source whose end may be a pause (a partition handed to another worker).

    When iteration ends and ``suspended()`` is true, a checkpointed run sends
    one last barrier, saves it, and stops without flushing its steps and
    without marking the run complete: another run of the same name resumes
    from that checkpoint.
    """

    __slots__ = ()

    def suspended(self) -> bool:
        """Whether the end of the iteration is a pause rather than the end of the data."""
        ...


def file_name(location: object, path: object) -> str:
    """``os.fspath(path)``, which must be a non-empty str (not bytes)."""
    if not isinstance(location, str) or not location:
        raise ValueError(f"path must name a file with a non-empty str, got {path!r}")
    return location


def _check_offset(position: object, parameter: str = "position") -> int:
    if type(position) is not int:
        raise TypeError(f"{parameter} must be an int, got {type(position).__name__}: {position!r}")
    if position < 0:
        raise ValueError(f"{parameter} must be >= 0, got {position}")
    return position


# --------------------------------------------------------------------------- sequences


class SequenceSource(Resumable[T]):
    """The items of a sequence; the position is the index of the next item."""

    __slots__ = ("_closed", "_index", "_items", "_started")

    def __init__(self, items: Sequence[T]) -> None:
        self._items = items
        self._index = 0
        self._started = False
        self._closed = False

    def __repr__(self) -> str:
        return f"resumable(<{len(self._items)} items>, position={self._index})"

    def __aiter__(self) -> SequenceSource[T]:
        return self

    async def __anext__(self) -> T:
        self._started = True
        if self._closed or self._index >= len(self._items):
            raise StopAsyncIteration
        item = self._items[self._index]
        self._index += 1
        return item

    async def aclose(self) -> None:
        """End the iteration (the position stays where it is)."""
        self.stop()

    def stop(self) -> None:
        """`aclose`, without awaiting."""
        self._closed = True

    def take(self, count: int) -> list[T]:
        """Up to ``count`` next items at once, as ``count`` pulls would hand them out."""
        self._started = True
        if self._closed:
            return []
        start = self._index
        taken = list(self._items[start : start + count])
        self._index = start + len(taken)
        return taken

    def put_back(self, count: int) -> None:
        """Undo the handing out of the last ``count`` items `take` gave (never sent on)."""
        self._index -= count

    def position(self) -> int:
        """The index of the next item (the number of items handed out since 0)."""
        return self._index

    def seek(self, position: JSONValue) -> None:
        """Start at index ``position`` (past the end: nothing is left)."""
        if self._started:
            raise RuntimeError("seek() must be called before iteration starts")
        self._index = _check_offset(position)


def resumable(items: Sequence[T]) -> Resumable[T]:
    """A resumable source over a list, tuple, range or other sequence.

    The position is an index: the number of items before the next one.

    Args:
        items: The sequence (it is read, not copied: do not change it while
            the source is in use).

    Examples:
        >>> import asyncio
        >>> from streamkit import collect, take
        >>> async def main() -> None:
        ...     source = resumable(["a", "b", "c", "d"])
        ...     print(await collect(source | take(2)), source.position())
        ...     again = resumable(["a", "b", "c", "d"])
        ...     again.seek(source.position())
        ...     print(await collect(again))
        >>> asyncio.run(main())
        ['a', 'b'] 2
        ['c', 'd']
    """
    if not isinstance(items, Sequence):  # pyright: ignore[reportUnnecessaryIsInstance] - untyped callers
        raise TypeError(f"items must be a sequence, got {type(items).__name__}")
    return SequenceSource(items)


# --------------------------------------------------------------------------- lines


def _strip_newline(raw: bytes) -> bytes:
    if raw.endswith(b"\r\n"):
        return raw[:-2]
    if raw.endswith(b"\n"):
        return raw[:-1]
    return raw


class _LineSource(Resumable[str]):
    """The lines of a text file, read in blocks on a worker thread.

    At most one read is in flight: if the pull that started it is cancelled,
    the read goes on, and the next pull (or ``aclose``) waits for it. Each
    read seeks to the offset just after the last block, so a lost block
    cannot shift the positions.
    """

    __slots__ = (
        "_block_size",
        "_buffer",
        "_closed",
        "_decode",
        "_eof",
        "_file",
        "_offset",
        "_path",
        "_pending",
        "_read_offset",
        "_started",
    )

    def __init__(self, path: str, encoding: str, block_size: int) -> None:
        self._path = path
        self._decode = codecs.getdecoder(encoding)
        self._block_size = block_size
        self._offset = 0
        """Byte offset after the last line handed out."""
        self._read_offset = 0
        """Byte offset after the last line read into the buffer."""
        self._buffer: collections.deque[tuple[bytes, int]] = collections.deque()
        self._file: BinaryIO | None = None
        self._pending: Handle[list[tuple[bytes, int]]] | None = None
        self._eof = False
        self._started = False
        self._closed = False

    def __repr__(self) -> str:
        return f"lines({self._path!r}, position={self._offset})"

    def __aiter__(self) -> _LineSource:
        return self

    def _read_block(self, start: int) -> list[tuple[bytes, int]]:
        """Runs on a worker thread: the raw lines from ``start``, with their end offsets."""
        if self._file is None:
            self._file = open(self._path, "rb")  # noqa: SIM115 - closed by aclose
        file = self._file
        file.seek(start)
        block: list[tuple[bytes, int]] = []
        end, read = start, 0
        while read < self._block_size:
            raw = file.readline()
            if not raw:
                break
            end += len(raw)
            read += len(raw)
            block.append((_strip_newline(raw), end))
        return block

    async def __anext__(self) -> str:
        self._started = True
        while not self._buffer:
            if self._closed:
                raise StopAsyncIteration
            if self._eof:
                await self.aclose()
                raise StopAsyncIteration
            if self._pending is None:
                self._pending = in_thread(self._read_block, self._read_offset)
            try:
                block = await shielded(self._pending)
            except Cancelled:
                raise  # the read goes on; the next pull or aclose waits for it
            except BaseException:
                self._pending = None
                await self.aclose()
                raise
            self._pending = None
            if self._closed:  # closed while the block was being read
                raise StopAsyncIteration
            if not block:
                self._eof = True
                continue
            self._read_offset = block[-1][1]
            self._buffer.extend(block)
        raw, end = self._buffer[0]
        try:
            text, _ = self._decode(raw)
        except UnicodeDecodeError as exc:
            exc.add_note(f"streamkit: in the line at byte {self._offset} of {self._path}")
            raise
        self._buffer.popleft()
        self._offset = end
        return text

    async def aclose(self) -> None:
        """Close the file (after any read in flight); later pulls end the iteration."""
        self._closed = True
        self._buffer.clear()
        pending, self._pending = self._pending, None
        if pending is not None:
            # That read belonged to a pull that was cancelled; its block (or
            # its error) is dropped, but the file must not close under it.
            await settled(pending)
        if self._file is not None:
            self._file.close()
            self._file = None

    def position(self) -> int:
        """The byte offset just after the last line handed out (its newline included)."""
        return self._offset

    def seek(self, position: JSONValue) -> None:
        """Start reading at byte offset ``position`` (a value `position` returned)."""
        if self._started:
            raise RuntimeError("seek() must be called before iteration starts")
        self._offset = self._read_offset = _check_offset(position)


def lines(
    path: str | os.PathLike[str],
    *,
    encoding: str = "utf-8",
    block_size: int = _BLOCK_SIZE,
) -> Resumable[str]:
    r"""A resumable source over the lines of a text file, without their newlines.

    Lines end with ``"\n"`` or ``"\r\n"`` (both removed); a last line
    without a newline is a line too. The position is the byte offset just
    after the last line handed out, exact however far the reading has gone
    ahead. The file is read in blocks of about ``block_size`` bytes on a
    worker thread, opened on the first pull and closed when the lines run
    out or the source is closed (every operator closes its source when it
    stops).

    Args:
        path: The file.
        encoding: Its encoding; one in which ``"\n"`` is the byte ``0x0A``
            (UTF-8, Latin-1, cp1252, ASCII...), so that lines can be found in
            the bytes. UTF-16 and UTF-32 are refused.
        block_size: Bytes to read per trip to the worker thread (whole lines:
            a block ends at the first line end past this size).

    Raises:
        TypeError: An argument has the wrong type.
        ValueError: The encoding is unknown or unsuitable, or ``block_size`` < 1.

    Examples:
        >>> import asyncio, os, tempfile
        >>> from streamkit import collect, take
        >>> async def main(path: str) -> None:
        ...     source = lines(path)
        ...     print(await collect(source | take(2)), source.position())
        ...     rest = lines(path)
        ...     rest.seek(source.position())
        ...     print(await collect(rest))
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = os.path.join(folder, "names.txt")
        ...     with open(path, "wb") as file:
        ...         _ = file.write("ada\r\nbob\n\nzoë".encode())
        ...     asyncio.run(main(path))
        ['ada', 'bob'] 9
        ['', 'zoë']
    """
    if not isinstance(path, str | os.PathLike):  # pyright: ignore[reportUnnecessaryIsInstance] - untyped callers
        raise TypeError(f"path must be a str or a path, got {type(path).__name__}")
    name = file_name(os.fspath(path), path)
    if not isinstance(encoding, str):  # pyright: ignore[reportUnnecessaryIsInstance] - untyped callers
        raise TypeError(f"encoding must be a str, got {type(encoding).__name__}")
    try:
        newline = "\n".encode(encoding)
    except LookupError:
        raise ValueError(f"encoding {encoding!r} is unknown") from None
    if newline != b"\n":
        raise ValueError(
            f"encoding {encoding!r} does not write a newline as the byte 0x0A; "
            "lines() needs an ASCII-compatible encoding such as UTF-8"
        )
    if type(block_size) is not int:
        raise TypeError(f"block_size must be an int, got {type(block_size).__name__}")
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    return _LineSource(name, encoding, block_size)
