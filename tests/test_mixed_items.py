"""A stream mixing `Envelope` and plain items fails with a TypeError naming the stage and item."""

from __future__ import annotations

import asyncio
import re
from typing import TYPE_CHECKING, Any

import pytest

from streamkit import (
    Envelope,
    MemoryStore,
    Run,
    State,
    collect,
    distinct,
    filter_,
    flat_map,
    map_,
    scan,
    skip_while,
    take_while,
    tap,
)
from tests.conftest import agen

if TYPE_CHECKING:
    from collections.abc import Callable

    from streamkit import Stage


def wrap(value: int) -> Envelope[int]:
    return Envelope(value, State())


async def slow_increment(x: int) -> int:
    await asyncio.sleep(0)
    return x + 1


STAGES: dict[str, Callable[[], Stage[Any, Any]]] = {
    "map_": lambda: map_(lambda x: x + 1),
    "async map_": lambda: map_(slow_increment),
    "map_ | filter_": lambda: map_(lambda x: x + 1) | filter_(lambda x: x > 0),
    "filter_ | map_": lambda: filter_(lambda x: x > 0) | map_(lambda x: x + 1),
    "map_ concurrent": lambda: map_(slow_increment, concurrency=2),
    "map_ unordered": lambda: map_(slow_increment, concurrency=2, ordered=False),
    "filter_ concurrent": lambda: filter_(lambda x: x > 0, concurrency=2),
    "flat_map": lambda: flat_map(lambda x: [x + 1]),
    "flat_map concurrent": lambda: flat_map(lambda x: [x + 1], concurrency=2),
    "scan": lambda: scan(lambda acc, x: acc + x, 0),
    "distinct": lambda: distinct(key=lambda x: x + 1),
    "take_while": lambda: take_while(lambda x: x > 0),
    "skip_while": lambda: skip_while(lambda x: x < 100),  # checks every item
}
# The first stage of each pipeline, as its note and the TypeError name it.
LABEL = re.compile(r"^(map_|filter_|flat_map|scan|distinct|take_while|skip_while)\(")

ORDERS = {
    "envelope first": ([wrap(1), wrap(2), 3, wrap(4)], "a plain int", "an Envelope"),
    "plain first": ([1, 2, wrap(3), 4], "an Envelope", "a plain item"),
}


def check(error: BaseException, got: str, first: str) -> None:
    assert isinstance(error, TypeError)
    message = str(error)
    assert LABEL.match(message), message
    assert f"got {got} as item 2 of its input" in message
    assert f"whose first item was {first}" in message
    assert "envelop()" in message
    assert error.__cause__ is not None  # what the item made fail, kept
    notes = getattr(error, "__notes__", [])
    assert any(note.endswith("on item 2 of its input") for note in notes), notes


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("name", STAGES)
@pytest.mark.parametrize("source", ["list", "async generator"])
async def test_a_mixed_stream_fails_naming_the_stage_and_the_item(
    name: str, order: str, source: str
) -> None:
    items, got, first = ORDERS[order]
    stream: Any = items if source == "list" else agen(items)
    with pytest.raises(TypeError) as raised:
        await collect(stream | STAGES[name]())
    check(raised.value, got, first)


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("checkpointed", [False, True])
async def test_a_mixed_stream_fails_clearly_inside_a_run(order: str, checkpointed: bool) -> None:
    items, got, first = ORDERS[order]
    pipeline = map_(lambda x: x + 1) | tap(lambda x: None)
    if checkpointed:
        run = Run(pipeline, items, name="mixed", checkpoint=MemoryStore(), every=1)
    else:
        run = Run(pipeline, items, name="mixed")
    with pytest.raises(TypeError) as raised:
        await run.collect()
    check(raised.value, got, first)


async def test_a_function_that_fails_on_a_plain_stream_keeps_its_own_error() -> None:
    with pytest.raises(ZeroDivisionError) as raised:
        await collect([1, 0] | map_(lambda x: 1 // x))
    (note,) = raised.value.__notes__
    assert note.startswith("streamkit: raised by map_(")
    assert note.endswith("on item 1 of its input")
    with pytest.raises(KeyError):
        await collect([wrap(1), wrap(2)] | map_(lambda x: {}[x], concurrency=2))
