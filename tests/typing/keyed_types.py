"""Static checks: keyed operators keep item types through chains (not run)."""

from __future__ import annotations

from typing import TYPE_CHECKING, assert_type

from streamkit import (
    Envelope,
    Flow,
    Key,
    Stage,
    State,
    chunk,
    enumerate_,
    envelop,
    group_by,
    map_,
    scan_by,
    scan_state_by,
    switch_map,
    take,
    throttle_by,
)
from streamkit.typing import StateStage

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


def key(order: tuple[str, int]) -> str:
    return order[0]


def spend(total: int, order: tuple[str, int]) -> int:
    return total + order[1]


async def spend_async(total: int, order: tuple[str, int]) -> int:
    return total + order[1]


def label(total: int) -> str:
    return str(total)


def check_keyed(orders: list[tuple[str, int]]) -> None:
    assert_type(scan_by(key, spend, 0), Stage[tuple[str, int], int])
    assert_type(scan_by(key, spend_async, 0), Stage[tuple[str, int], int])
    assert_type(orders | scan_by(key, spend, 0) | map_(label), Flow[str])
    assert_type(orders | throttle_by(key, 2) | scan_by(key, spend, 0), Flow[int])


SPENT = Key[int]("spent")


async def countdown(order: tuple[str, int]) -> AsyncIterator[int]:
    for n in range(order[1], 0, -1):
        yield n


def check_group_by(orders: list[tuple[str, int]]) -> None:
    totals = group_by(key, scan_by(key, spend, 0) | map_(label), concurrency=4, max_keys=100)
    assert_type(totals, Stage[tuple[str, int], str])
    assert_type(orders | totals, Flow[str])
    assert_type(orders | group_by(key, map_(spend_async_one)) | map_(label), Flow[str])
    assert_type(orders | group_by(key, chunk(2)), Flow[list[tuple[str, int]]])
    assert_type(orders | group_by(key, take(1)), Flow[tuple[str, int]])
    assert_type(group_by(key, enumerate_()), Stage[tuple[str, int], tuple[int, tuple[str, int]]])
    enveloped = orders | envelop() | group_by(key, map_(amount))
    assert_type(enveloped, Flow[Envelope[int]])


def amount(order: tuple[str, int]) -> int:
    return order[1]


def spent(order: tuple[str, int], state: State) -> int:
    return state[SPENT]


async def spend_async_one(order: tuple[str, int]) -> int:
    return order[1]


def check_switch_map(orders: list[tuple[str, int]]) -> None:
    assert_type(switch_map(key, countdown), Stage[tuple[str, int], int])
    assert_type(orders | switch_map(key, countdown) | map_(label), Flow[str])


def check_scan_state_by(orders: list[tuple[str, int]]) -> None:
    stage = scan_state_by(key, SPENT, spend, 0)
    assert_type(
        stage, StateStage[tuple[str, int] | Envelope[tuple[str, int]], Envelope[tuple[str, int]]]
    )
    flow = orders | stage | map_(spent, with_state=True)
    assert_type(flow, Flow[Envelope[int]])
    assert_type(
        orders | scan_state_by(key, SPENT, spend_async, 0, max_keys=10),
        Flow[Envelope[tuple[str, int]]],
    )
