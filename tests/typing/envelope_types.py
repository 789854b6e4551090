"""Envelope streams keep their types through item-level stages.

Checked (not run) by mypy --strict and pyright strict.
"""

from __future__ import annotations

from typing import assert_type

from streamkit import (
    Envelope,
    Flow,
    Key,
    Stage,
    State,
    chunk,
    collect,
    envelop,
    filter_,
    flatten,
    map_,
    pairwise,
    set_state,
    take,
    tap,
    unwrap,
    window,
)

TOTAL = Key[int]("total")


def to_str(x: int) -> str:
    return str(x)


def is_even(x: int) -> bool:
    return x % 2 == 0


def show(x: int) -> None:
    print(x)


def add_total(x: int, state: State) -> str:
    return f"{x}/{state[TOTAL]}"


def restate(x: int, state: State) -> Envelope[str]:
    return Envelope(str(x), state.set(TOTAL, x))


async def fetch(x: int) -> bytes:
    return bytes(x)


def items() -> list[Envelope[int]]:
    return [Envelope(1), Envelope(2)]


def check_transparent_stages() -> None:
    assert_type(items() | map_(to_str), Flow[Envelope[str]])
    assert_type(items() | map_(fetch), Flow[Envelope[bytes]])
    assert_type(items() | map_(to_str, concurrency=4), Flow[Envelope[str]])
    assert_type(items() | filter_(is_even), Flow[Envelope[int]])
    assert_type(items() | tap(show), Flow[Envelope[int]])
    assert_type(items() | map_(to_str) | filter_(str.isdigit), Flow[Envelope[str]])
    assert_type(map_(to_str)(items()), Flow[Envelope[str]])


def check_shapes_over_envelopes() -> None:
    assert_type(items() | take(1), Flow[Envelope[int]])
    assert_type(items() | chunk(2), Flow[Envelope[list[int]]])
    assert_type(items() | window(2), Flow[Envelope[tuple[int, ...]]])
    assert_type(items() | pairwise(), Flow[Envelope[tuple[int, int]]])
    lists: list[Envelope[list[str]]] = [Envelope(["a"])]
    assert_type(lists | flatten(), Flow[Envelope[str]])


def check_with_state() -> None:
    assert_type(map_(add_total, with_state=True), Stage[Envelope[int], Envelope[str]])
    assert_type(map_(restate, with_state=True), Stage[Envelope[int], Envelope[str]])
    assert_type(items() | map_(add_total, with_state=True), Flow[Envelope[str]])
    assert_type(items() | map_(restate, with_state=True), Flow[Envelope[str]])
    # A function that reads the state needs envelopes: plain items are refused.
    range(3) | map_(add_total, with_state=True)  # type: ignore[operator]  # pyright: ignore


def check_composed_envelope_stages() -> None:
    assert_type(map_(to_str) | envelop(), Stage[int, Envelope[str]])
    assert_type(envelop() | map_(to_str), Stage[int, Envelope[str]])
    assert_type(envelop() | map_(to_str) | chunk(2), Stage[int, Envelope[list[str]]])
    assert_type(["a"] | envelop() | map_(str.upper), Flow[Envelope[str]])
    assert_type(map_(to_str) | envelop() | unwrap(), Stage[int, str])
    assert_type(range(3) | (map_(to_str) | envelop()), Flow[Envelope[str]])


def check_round_trip() -> None:
    assert_type(range(3) | envelop() | unwrap(), Flow[int])
    assert_type(items() | set_state(TOTAL, len_of) | map_(to_str) | unwrap(), Flow[str])


def len_of(x: int) -> int:
    return x


async def check_collect() -> None:
    assert_type(await collect(items() | map_(to_str)), list[Envelope[str]])
