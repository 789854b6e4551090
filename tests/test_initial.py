"""Initial accumulators of reusable stages: a new one per run, never a shared mutable value."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from streamkit import (
    Factory,
    Key,
    MemoryStore,
    Run,
    collect,
    map_,
    reduce_point,
    scan,
    scan_state,
)

if TYPE_CHECKING:
    from streamkit import Stage

COUNTS = Key[dict[str, int]]("counts")


def count_in_place(counts: dict[str, int], letter: str) -> dict[str, int]:
    counts[letter] = counts.get(letter, 0) + 1
    return counts


def counting_stages(initial: Any) -> list[Stage[Any, Any]]:
    return [
        scan(count_in_place, initial),
        scan_state(COUNTS, count_in_place, initial),
        reduce_point(COUNTS, count_in_place, initial),
        reduce_point(COUNTS, count_in_place, initial, emit="aggregate"),
    ]


def last_counts(items: list[Any]) -> Any:
    last = items[-1]
    return last if isinstance(last, dict) else last.state[COUNTS]


@pytest.mark.parametrize("index", range(4), ids=["scan", "scan_state", "reduce", "aggregate"])
async def test_two_runs_of_one_stage_each_start_from_a_new_accumulator(index: int) -> None:
    made: list[dict[str, int]] = []

    def make() -> dict[str, int]:
        made.append({})
        return made[-1]

    stage = counting_stages(Factory(make))[index]
    first = last_counts(await collect(["a", "b", "a"] | stage))
    second = last_counts(await collect(["a", "b", "a"] | stage))
    assert first == second == {"a": 2, "b": 1}
    assert first is not second
    assert len(made) == 2  # one accumulator per run, made when the run starts


@pytest.mark.parametrize("initial", [{}, [], set(), {"a": 0}, bytearray()])
@pytest.mark.parametrize("index", range(4), ids=["scan", "scan_state", "reduce", "aggregate"])
def test_a_mutable_initial_value_is_refused_when_the_stage_is_built(
    initial: Any, index: int
) -> None:
    kind = type(initial).__name__
    with pytest.raises(
        ValueError, match=rf"initial must not be a mutable {kind}.*Factory\({kind}\)"
    ):
        counting_stages(initial)[index]
    assert initial == {"a": 0} or not initial  # the user's value is left as it was


async def test_immutable_initial_values_are_used_as_they_are() -> None:
    marker = ("start",)
    assert await collect([1, 2] | scan(lambda acc, x: (*acc, x), marker)) == [
        ("start", 1),
        ("start", 1, 2),
    ]
    assert marker == ("start",)


def test_a_factory_must_be_callable() -> None:
    with pytest.raises(TypeError, match="Factory's make must be callable"):
        Factory({})  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]


async def test_a_checkpointed_run_resumes_from_the_saved_accumulator_not_the_factory() -> None:
    made = 0

    def make() -> list[int]:
        nonlocal made
        made += 1
        return []

    def append(seen: list[int], x: int) -> list[int]:
        seen.append(x)
        return seen

    pipeline = scan(append, Factory(make)) | map_(list)  # a copy of each accumulator
    store = MemoryStore()
    first: list[list[int]] = []
    async with Run(pipeline, range(6), name="job", checkpoint=store, every=2) as run:
        async for item in run:
            first.append(item)
            if len(first) == 3:
                break
    assert first[-1] == [0, 1, 2]
    rest = await Run(pipeline, range(6), name="job", checkpoint=store, every=2).collect()
    # Resumed at the checkpoint after item 1: the accumulator is the saved [0, 1].
    assert rest == [[0, 1, 2], [0, 1, 2, 3], [0, 1, 2, 3, 4], [0, 1, 2, 3, 4, 5]]
    fresh = await Run(pipeline, range(2), name="other", checkpoint=MemoryStore()).collect()
    assert fresh == [[0], [0, 1]]
    assert made == 3
