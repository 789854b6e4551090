"""Resumable sources: the protocol, resumable(sequence) and lines(path)."""

from __future__ import annotations

import asyncio
import os
import tempfile
import threading
from typing import IO, TYPE_CHECKING, Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamkit import _resumable, collect, map_, take
from streamkit._resumable import Resumable, lines, resumable

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

# --------------------------------------------------------------------------- helpers


def model(data: bytes) -> list[str]:
    """What lines() must give for UTF-8 ``data``: split after each LF, strip LF or CRLF."""
    pieces = data.split(b"\n")
    raw_lines = [piece + b"\n" for piece in pieces[:-1]]
    if pieces[-1]:
        raw_lines.append(pieces[-1])  # a last line without a newline
    result: list[str] = []
    for raw in raw_lines:
        if raw.endswith(b"\r\n"):
            raw = raw[:-2]
        elif raw.endswith(b"\n"):
            raw = raw[:-1]
        result.append(raw.decode())
    return result


def write(folder: str | Path, data: bytes, name: str = "data.txt") -> str:
    path = os.path.join(folder, name)
    with open(path, "wb") as file:
        file.write(data)
    return path


class OpenFiles:
    """Records every file lines() opens, to check that each one is closed."""

    def __init__(self) -> None:
        self.files: list[IO[Any]] = []

    def __call__(self, *args: Any, **kwargs: Any) -> IO[Any]:
        file: IO[Any] = open(*args, **kwargs)  # noqa: SIM115 - the test closes or checks it
        self.files.append(file)
        return file

    def all_closed(self) -> bool:
        return all(file.closed for file in self.files)


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> Iterator[OpenFiles]:
    tracker = OpenFiles()
    monkeypatch.setattr(_resumable, "open", tracker, raising=False)
    yield tracker
    for file in tracker.files:  # never leak a file, even when a test fails
        file.close()


# --------------------------------------------------------------------------- sequences


async def test_resumable_sequence_position_is_an_index() -> None:
    source = resumable(["a", "b", "c"])
    assert isinstance(source, Resumable)
    assert source.position() == 0
    assert await source.__anext__() == "a"
    assert source.position() == 1
    assert await collect(source) == ["b", "c"]
    assert source.position() == 3


@given(items=st.lists(st.integers(), max_size=20), k=st.integers(0, 25))
def test_resumable_sequence_resumes_after_k_items(items: list[int], k: int) -> None:
    async def main() -> None:
        source = resumable(items)
        head = await collect(source | take(k))
        again = resumable(items)
        again.seek(source.position())
        assert head + await collect(again) == items
        assert source.position() == min(k, len(items))

    asyncio.run(main())


async def test_resumable_sequence_seek_and_close() -> None:
    source = resumable(range(10))
    source.seek(7)
    assert source.position() == 7
    assert await collect(source | map_(str)) == ["7", "8", "9"]
    with pytest.raises(RuntimeError, match="before iteration starts"):
        source.seek(0)

    past = resumable((1, 2))
    past.seek(5)
    assert await collect(past) == []

    closed = resumable([1, 2, 3])
    assert await closed.__anext__() == 1
    await closed.aclose()
    assert await collect(closed) == []
    assert closed.position() == 1


def test_resumable_sequence_checks_its_arguments() -> None:
    with pytest.raises(TypeError, match="items must be a sequence"):
        resumable(iter([1, 2]))  # type: ignore[arg-type]
    source = resumable([1])
    with pytest.raises(TypeError, match="position must be an int"):
        source.seek("3")
    with pytest.raises(TypeError, match="position must be an int"):
        source.seek(True)
    with pytest.raises(ValueError, match="position must be >= 0"):
        source.seek(-1)


# --------------------------------------------------------------------------- lines


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", []),
        (b"\n", [""]),
        (b"a", ["a"]),
        (b"a\n", ["a"]),
        (b"a\n\n", ["a", ""]),
        (b"a\r\nb\r\n", ["a", "b"]),
        (b"a\r\nb", ["a", "b"]),
        (b"a\rb\n", ["a\rb"]),  # a lone CR is not a line end
        (b"a\r", ["a\r"]),
        (b"\n\n\n", ["", "", ""]),
        ("zoë\n日本\r\n🙂".encode(), ["zoë", "日本", "🙂"]),
    ],
)
async def test_lines_strips_newlines(tmp_path: Path, data: bytes, expected: list[str]) -> None:
    assert model(data) == expected
    source = lines(write(tmp_path, data))
    assert await collect(source) == expected
    assert source.position() == len(data)


async def test_lines_reads_other_ascii_compatible_encodings(tmp_path: Path) -> None:
    path = write(tmp_path, "café\nnaïve\n".encode("latin-1"))
    assert await collect(lines(path, encoding="latin-1")) == ["café", "naïve"]


@given(
    pieces=st.lists(
        st.tuples(
            st.text(st.characters(codec="utf-8", exclude_characters="\n\r")),
            st.sampled_from(["\n", "\r\n"]),
        ),
        max_size=30,
    ),
    last=st.text(st.characters(codec="utf-8", exclude_characters="\n"), max_size=5),
    k=st.integers(0, 35),
    block_size=st.integers(1, 80),
)
def test_lines_resume_exactly_after_k_items(
    pieces: list[tuple[str, str]], last: str, k: int, block_size: int
) -> None:
    text = "".join(line + end for line, end in pieces) + last
    data = text.encode()
    everything = model(data)

    async def main(path: str) -> None:
        source = lines(path, block_size=block_size)
        head = await collect(source | take(k))
        assert head == everything[:k]
        position = source.position()
        rest = lines(path, block_size=block_size)
        rest.seek(position)
        assert rest.position() == position
        assert await collect(rest) == everything[k:]
        # The position is the byte offset after the k-th line (its newline included).
        assert position == sum(len(line.encode()) + len(end) for line, end in pieces[:k]) + (
            len(last.encode()) if k > len(pieces) and last else 0
        )

    with tempfile.TemporaryDirectory() as folder:
        asyncio.run(main(write(folder, data)))


async def test_lines_closes_the_file_at_the_end(tmp_path: Path, opened: OpenFiles) -> None:
    path = write(tmp_path, b"a\nb\nc\n")
    assert await collect(lines(path)) == ["a", "b", "c"]
    assert len(opened.files) == 1
    assert opened.all_closed()


async def test_lines_closes_the_file_when_stopped_early(tmp_path: Path, opened: OpenFiles) -> None:
    path = write(tmp_path, b"".join(b"line %d\n" % i for i in range(1000)))
    source = lines(path, block_size=100)
    assert await collect(source | take(2)) == ["line 0", "line 1"]
    assert opened.all_closed()
    assert source.position() == 14

    class DownstreamError(Exception):
        pass

    async def consume(source: Resumable[str]) -> None:
        async with source | map_(str.upper) as items:
            async for _ in items:
                raise DownstreamError

    source = lines(path)
    with pytest.raises(DownstreamError):
        await consume(source)
    assert len(opened.files) == 2
    assert opened.all_closed()
    assert await collect(source) == []  # a closed source is finished


async def test_lines_opens_nothing_until_pulled(tmp_path: Path, opened: OpenFiles) -> None:
    source = lines(write(tmp_path, b"a\n"))
    await source.aclose()
    assert opened.files == []
    assert await collect(source) == []


async def test_lines_missing_file_fails_on_first_pull(tmp_path: Path) -> None:
    source = lines(tmp_path / "missing.txt")
    with pytest.raises(FileNotFoundError):
        await collect(source)
    assert await collect(source) == []


async def test_lines_decoding_error_names_the_offset(tmp_path: Path) -> None:
    source = lines(write(tmp_path, b"ok\nbad \xff\nafter\n"))
    assert await source.__anext__() == "ok"
    with pytest.raises(UnicodeDecodeError) as raised:
        await source.__anext__()
    assert any("at byte 3 of" in note for note in raised.value.__notes__)
    assert source.position() == 3
    await source.aclose()


async def test_lines_seek_past_the_end_and_after_start(tmp_path: Path) -> None:
    path = write(tmp_path, b"a\nb\n")
    past = lines(path)
    past.seek(100)
    assert await collect(past) == []
    started = lines(path)
    assert await started.__anext__() == "a"
    with pytest.raises(RuntimeError, match="before iteration starts"):
        started.seek(0)
    await started.aclose()


def test_lines_checks_its_arguments(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="path"):
        lines(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="path"):
        lines(b"x.txt")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="path"):
        lines("")
    with pytest.raises(TypeError, match="encoding"):
        lines("x.txt", encoding=None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown"):
        lines("x.txt", encoding="no-such-codec")
    with pytest.raises(ValueError, match="ASCII-compatible"):
        lines("x.txt", encoding="utf-16")
    with pytest.raises(ValueError, match="block_size"):
        lines("x.txt", block_size=0)
    with pytest.raises(TypeError, match="block_size"):
        lines("x.txt", block_size=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="position"):
        lines("x.txt").seek(1.5)
    assert repr(lines("x.txt")) == "lines('x.txt', position=0)"


# --------------------------------------------------------------------------- a read in flight


class HeldReads:
    """Makes lines()' block reads wait on the worker thread until released."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        read = _resumable._LineSource._read_block  # pyright: ignore[reportPrivateUsage]

        def held(source: Any, start: int) -> Any:
            self.started.set()
            assert self.release.wait(timeout=10), "the test never released the read"
            return read(source, start)

        monkeypatch.setattr(_resumable._LineSource, "_read_block", held)  # pyright: ignore[reportPrivateUsage]

    async def wait_started(self) -> None:
        assert await asyncio.to_thread(self.started.wait, 10)


async def test_a_cancelled_pull_does_not_lose_or_shift_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, opened: OpenFiles
) -> None:
    reads = HeldReads(monkeypatch)
    source = lines(write(tmp_path, b"a\nb\nc\n"), block_size=2)
    pull = asyncio.ensure_future(source.__anext__())
    await reads.wait_started()
    pull.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pull
    assert source.position() == 0
    reads.release.set()
    # The read that was in flight is not repeated in parallel, and nothing is skipped.
    assert await collect(source) == ["a", "b", "c"]
    assert source.position() == 6
    assert opened.all_closed()


async def test_aclose_waits_for_a_read_in_flight(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, opened: OpenFiles
) -> None:
    reads = HeldReads(monkeypatch)
    source = lines(write(tmp_path, b"a\nb\n"))
    pull = asyncio.ensure_future(source.__anext__())
    await reads.wait_started()
    pull.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pull
    closing = asyncio.ensure_future(source.aclose())
    await asyncio.sleep(0)
    assert not closing.done()  # the file must not close under the worker thread
    reads.release.set()
    await closing
    assert len(opened.files) == 1
    assert opened.all_closed()
    assert await collect(source) == []
