"""Static checks for initial accumulators given as a `Factory` (mypy --strict, pyright strict).

Nothing here runs: pytest does not collect this file and the functions are
never called. ``assert_type`` fails the type checkers when a type drifts.
"""

from __future__ import annotations

from typing import assert_type

from streamkit import Envelope, Factory, Key, Stage, reduce_point, scan, scan_state
from streamkit.typing import StateStage

COUNTS = Key[dict[str, int]]("counts")


def count(counts: dict[str, int], word: str) -> dict[str, int]:
    counts[word] = counts.get(word, 0) + 1
    return counts


def factories() -> None:
    assert_type(Factory(list[int]), Factory[list[int]])
    assert_type(scan(count, Factory(dict[str, int])), Stage[str, dict[str, int]])
    assert_type(
        scan_state(COUNTS, count, Factory(dict[str, int])),
        StateStage[str | Envelope[str], Envelope[str]],
    )
    assert_type(
        reduce_point(COUNTS, count, Factory(dict[str, int])),
        StateStage[str | Envelope[str], Envelope[str]],
    )
    assert_type(
        reduce_point(COUNTS, count, Factory(dict[str, int]), emit="aggregate"),
        StateStage[str | Envelope[str], Envelope[dict[str, int]]],
    )
