"""Static checks for the per-item state records and stages (mypy --strict, pyright strict).

Nothing here runs: pytest does not collect this file and the functions are
never called. ``assert_type`` fails the type checkers when a type drifts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, assert_type

from streamkit import Flow, Stage, collect, map_
from streamkit._batch import BatchPipeline
from streamkit._records import Envelope, Key, Scope, State, StateLimits
from streamkit._state import (
    BRANCH,
    branch,
    envelop,
    fork,
    reduce_point,
    scan_state,
    set_state,
    unwrap,
)
from streamkit._template import render
from streamkit.typing import StateStage

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

TOTAL = Key[int]("total")
NAME = Key[str]("name", scope=Scope.stage("users"))


def length(s: str) -> int:
    return len(s)


async def length_later(s: str) -> int:
    return len(s)


def weighted(s: str, state: State) -> int:
    return len(s) * state[TOTAL]


def add_len(total: int, s: str) -> int:
    return total + len(s)


async def add_len_later(total: int, s: str) -> int:
    return total + len(s)


def add_weighted(total: int, s: str, state: State) -> int:
    return total + len(s) * state.get(TOTAL, 1)


async def words() -> AsyncIterator[str]:
    yield "a"


def check_keys_and_state() -> None:
    state = State({TOTAL: 3})
    assert_type(TOTAL, Key[int])
    assert_type(state[TOTAL], int)
    assert_type(state["total"], Any)
    assert_type(state.get(TOTAL), int | None)
    assert_type(state.get(TOTAL, None), int | None)
    assert_type(state.get(TOTAL, "none"), int | str)
    assert_type(state.get("total", 0), Any)
    assert_type(state.set(TOTAL, 4), State)
    assert_type(state.set("anything", object()), State)
    assert_type(state.set_many({TOTAL: 1, NAME: "x"}), State)
    assert_type(state.delete(TOTAL), State)
    assert_type(state.limits, StateLimits)
    assert_type(list(state), list[str])
    state.set(TOTAL, "three")  # type: ignore[misc]  # pyright: ignore
    state[3]  # type: ignore[call-overload]  # pyright: ignore


def accepts_any_envelope(item: Envelope[object]) -> object:
    return item.value


def check_envelopes() -> None:
    item = Envelope(3)
    assert_type(item, Envelope[int])
    assert_type(item.value, int)
    assert_type(item.state, State)
    assert_type(item.replace(value="x"), Envelope[str])
    assert_type(item.replace(state=State()), Envelope[int])
    assert_type(item.with_state(TOTAL, 1), Envelope[int])
    assert_type(Envelope[int](1, State()).value, int)
    item.with_state(TOTAL, "one")  # type: ignore[misc]  # pyright: ignore
    # Envelopes are covariant in their value type.
    accepts_any_envelope(item)


def check_stages() -> None:
    assert_type(range(3) | envelop(), Flow[Envelope[int]])
    assert_type(envelop({"run": 1})(words()), Flow[Envelope[str]])
    assert_type(range(3) | envelop() | unwrap(), Flow[int])
    assert_type(unwrap()([Envelope("a")]), Flow[str])
    assert_type(set_state(TOTAL, length), StateStage[str | Envelope[str], Envelope[str]])
    assert_type(set_state(TOTAL, length_later), StateStage[str | Envelope[str], Envelope[str]])
    assert_type(
        set_state(TOTAL, weighted, with_state=True), StateStage[str | Envelope[str], Envelope[str]]
    )
    assert_type(words() | set_state(TOTAL, length), Flow[Envelope[str]])
    assert_type(words() | envelop() | set_state(TOTAL, length), Flow[Envelope[str]])
    assert_type(words() | set_state(TOTAL, length) | set_state("n", length) | unwrap(), Flow[str])
    assert_type(scan_state(TOTAL, add_len, 0), StateStage[str | Envelope[str], Envelope[str]])
    assert_type(scan_state(TOTAL, add_len_later, 0), StateStage[str | Envelope[str], Envelope[str]])
    assert_type(
        scan_state(TOTAL, add_weighted, 0, with_state=True),
        StateStage[str | Envelope[str], Envelope[str]],
    )
    assert_type(reduce_point(TOTAL, add_len, 0), StateStage[str | Envelope[str], Envelope[str]])
    assert_type(
        reduce_point(TOTAL, add_len_later, 0, memory_limit=None),
        StateStage[str | Envelope[str], Envelope[str]],
    )
    assert_type(
        reduce_point(TOTAL, add_len, 0, emit="aggregate"),
        StateStage[str | Envelope[str], Envelope[int]],
    )
    assert_type(
        reduce_point(TOTAL, add_weighted, 0, with_state=True, replay=words),
        StateStage[str | Envelope[str], Envelope[str]],
    )
    assert_type(words() | reduce_point(TOTAL, add_len, 0), Flow[Envelope[str]])
    assert_type(fork(map_(length)), Stage[Any, Envelope[Any]])
    assert_type(fork(map_(length), combine="zip"), Stage[Any, Envelope[tuple[Any, ...]]])
    assert_type(branch(a=map_(length)), Stage[Any, Envelope[Any]])
    assert_type(branch(a=map_(length), combine="zip"), Stage[Any, Envelope[dict[str, Any]]])
    assert_type(BRANCH, Key[str])
    set_state(TOTAL, str.upper)  # type: ignore[arg-type]  # pyright: ignore
    reduce_point(TOTAL, add_len, "zero")  # type: ignore[arg-type, misc]  # pyright: ignore
    reduce_point(TOTAL, add_len, 0, emit="all")  # type: ignore[call-overload]  # pyright: ignore


async def check_batch_and_templates() -> None:
    job = BatchPipeline().add(TOTAL, lambda data, state: len(data))
    assert_type(job, BatchPipeline)
    assert_type(await job.run(["a"]), State)
    assert_type(job.to_stream(), Stage[Any, Envelope[Any]])
    assert_type(await collect(range(3) | envelop()), list[Envelope[int]])
    assert_type(render("${total}", State()), str)
