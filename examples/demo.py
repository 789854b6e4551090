"""The most frequent terms in streamkit's own documentation, counted with streamkit.

Each Markdown file is read in a worker thread and streamed line by line through
its own flow, which drops code blocks; the flows are merged, split into terms,
counted in batches and folded into one table. Run it with ``make demo``.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from streamkit import chunk, filter_, flat_map, fold, map_, merge, scan, tap

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

ROOT = Path(__file__).resolve().parent.parent
COMMON = """also been does each every from have into more most only other same such than that
their them then there they this what when where which while will with would your"""
STOPWORDS = frozenset(COMMON.split())
Key = tuple[str, str]  # (file, term)


class Line(NamedTuple):
    file: str
    text: str


class Marked(NamedTuple):
    line: Line
    in_fence: bool  # inside a ``` block once this line is read
    is_code: bool  # a fence line, or a line inside a fenced block


async def read_lines(path: Path) -> AsyncIterator[Line]:
    text = await asyncio.to_thread(path.read_text, encoding="utf-8")
    for text_line in text.splitlines():
        yield Line(path.relative_to(ROOT).as_posix(), text_line)


def mark_code(previous: Marked, line: Line) -> Marked:
    fence = line.text.lstrip().startswith("```")
    return Marked(line, previous.in_fence != fence, fence or previous.in_fence)


def is_prose(marked: Marked) -> bool:
    # mkdocstrings directives (`::: name`) and their indented options are not prose either.
    return not marked.is_code and not marked.line.text.startswith((":::", "    "))


def unmark(marked: Marked) -> Line:
    return marked.line


def terms(line: Line) -> Iterator[Key]:
    for word in re.findall(r"[a-z][a-z_-]*[a-z_]", line.text.lower()):
        if len(word) >= 4 and word not in STOPWORDS:
            yield line.file, word


def count_batch(batch: list[Key]) -> Counter[Key]:
    return Counter(batch)


def add(total: Counter[Key], batch: Counter[Key]) -> Counter[Key]:
    total.update(batch)
    return total


class Tally:
    def __init__(self) -> None:
        self.read, self.prose = Counter[str](), Counter[str]()

    def line_read(self, line: Line) -> None:
        self.read[line.file] += 1

    def prose_line(self, line: Line) -> None:
        self.prose[line.file] += 1


async def main() -> None:
    # docs/changelog.md only includes CHANGELOG.md: read the original instead.
    docs = [path for path in sorted((ROOT / "docs").glob("*.md")) if path.name != "changelog.md"]
    paths = [path for path in [ROOT / "README.md", ROOT / "CHANGELOG.md", *docs] if path.exists()]
    tally = Tally()
    # Stages are descriptions: build them once, apply them to every file.
    prose = (
        tap(tally.line_read)
        | scan(mark_code, Marked(Line("", ""), in_fence=False, is_code=True))
        | filter_(is_prose)
        | map_(unmark)
        | tap(tally.prose_line)
    )
    counting = flat_map(terms) | chunk(500) | map_(count_batch)
    start = time.perf_counter()
    per_file = [read_lines(path) | prose for path in paths]
    table = await fold(merge(*per_file) | counting, add, Counter[Key]())
    elapsed = time.perf_counter() - start

    by_file: dict[str, Counter[str]] = {}
    for (file, word), times in table.items():
        by_file.setdefault(file, Counter())[word] = times
    overall = sum(by_file.values(), Counter[str]())
    print("streamkit demo: the most frequent terms in the project's own documentation\n")
    print(f"{len(paths)} files, {tally.read.total():,} lines, {tally.prose.total():,} of prose,")
    print(f"{overall.total():,} terms ({len(overall):,} distinct), in {elapsed * 1000:.1f} ms\n")
    width = max(map(len, by_file))
    for name, counts in sorted(by_file.items()):
        top = ", ".join(f"{word} {times}" for word, times in counts.most_common(5))
        print(f"  {name:<{width}}  {counts.total():>5,} terms: {top}")
    print("\ntop 10 overall:")
    most = overall.most_common(1)[0][1]
    for rank, (word, times) in enumerate(overall.most_common(10), 1):
        print(f"  {rank:>2}. {word:<12} {times:>4}  {'#' * round(30 * times / most)}")
    print("\nper file: read_lines(path) |", prose.label)
    print("merged:   merge(*per_file) |", counting.label, "-> fold(..., add, Counter())")


if __name__ == "__main__":
    asyncio.run(main())
