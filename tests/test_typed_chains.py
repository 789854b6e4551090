"""The stage-to-stage chains of tests/typing/composition_types.py yield what their types say.

The type checkers check the static types there; these tests run the same
chains and check that the items have those shapes at run time.
"""

from __future__ import annotations

from streamkit import (
    Envelope,
    Key,
    chunk,
    collect,
    enumerate_,
    envelop,
    filter_,
    flat_map,
    flatten,
    map_,
    pairwise,
    reduce_point,
    scan_state,
    take,
    unwrap,
    window,
    with_retry,
)

K = Key[int]("k")
SEEN = Key[int]("seen")


def inc(x: int) -> int:
    return x + 1


def add(total: int, x: int) -> int:
    return total + x


def is_even(x: int) -> bool:
    return x % 2 == 0


def total(xs: list[int]) -> int:
    return sum(xs)


def firsts(pair: tuple[int, int]) -> int:
    return pair[0]


def digits(s: str) -> list[str]:
    return list(s)


async def fetch(s: str) -> bytes:
    return s.encode()


async def test_the_issue_examples_yield_envelopes_of_the_typed_values() -> None:
    first = await collect([1, 2, 3] | (envelop() | reduce_point(K, add, 0) | map_(inc)))
    assert [(item.value, item.state[K]) for item in first] == [(2, 6), (3, 6), (4, 6)]
    # Typed Stage[int, Envelope[list[int]]]: one envelope per chunk, not a list of envelopes.
    second = await collect([1, 2, 3] | (map_(inc) | reduce_point(K, add, 0) | chunk(2)))
    assert second == [Envelope([2, 3], second[0].state), Envelope([4], second[1].state)]
    assert [item.state[K] for item in second] == [9, 9]


async def test_a_long_mixed_chain_yields_plain_values_after_unwrap() -> None:
    pipeline = (
        map_(inc)
        | filter_(is_even)
        | envelop()
        | reduce_point(K, add, 0)
        | map_(inc)
        | chunk(2)
        | map_(total)
        | pairwise()
        | map_(firsts)
        | window(3)
        | flatten()
        | map_(str)
        | flat_map(digits)
        | map_(fetch, concurrency=2)
        | unwrap()
        | map_(len)
    )
    items = await collect(range(20) | pipeline)
    # The envelope segment changes no value: the same chain without it agrees.
    plain = (
        map_(inc)
        | filter_(is_even)
        | map_(inc)
        | chunk(2)
        | map_(total)
        | pairwise()
        | map_(firsts)
        | window(3)
        | flatten()
        | map_(str)
        | flat_map(digits)
        | map_(fetch, concurrency=2)
        | map_(len)
    )
    assert items == await collect(range(20) | plain)
    assert items
    assert all(type(item) is int for item in items)


async def test_an_enveloped_chain_keeps_its_envelopes_to_the_end() -> None:
    keyed = (
        envelop()
        | reduce_point(K, add, 0)
        | scan_state(SEEN, add, 0)
        | map_(str)
        | with_retry(map_(fetch), attempts=2)
        | enumerate_()
        | take(10)
    )
    items = await collect([1, 2, 3] | keyed)
    assert [item.value for item in items] == [(0, b"1"), (1, b"2"), (2, b"3")]
    assert [(item.state[K], item.state[SEEN]) for item in items] == [(6, 1), (6, 3), (6, 6)]


async def test_a_composition_ending_in_envelopes_is_not_wrapped_twice() -> None:
    items = await collect([Envelope(1), Envelope(2)] | (map_(inc) | reduce_point(K, add, 0)))
    assert [(item.value, item.state[K]) for item in items] == [(2, 5), (3, 5)]
