"""Static checks: keyed operators keep item types through chains (not run)."""

from __future__ import annotations

from typing import assert_type

from streamkit import Flow, Stage, map_, scan_by, throttle_by


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
