"""Static checks: stage-to-stage compositions keep exact types, envelopes included.

Checked (not run) by mypy --strict and pyright strict. A pipeline handed to
`streamkit.Run` is a stage built from stages, so every operator must type the
same whether its left side is a source or a stage, and whether the items are
plain or `Envelope`s. A ``# type: ignore[code]`` line proves that a wrong
type *is* reported: both checkers flag ignores that are not needed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, assert_type

from returns.result import Result

from streamkit import (
    Envelope,
    ErrorRecord,
    Flow,
    Key,
    Stage,
    State,
    chunk,
    enumerate_,
    envelop,
    filter_,
    flat_map,
    flatten,
    map_,
    pairwise,
    reduce_point,
    scan_state,
    set_state,
    successes,
    take,
    tap,
    unwrap,
    window,
    with_retry,
)
from streamkit.typing import ListStage

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

K = Key[int]("k")
SEEN = Key[int]("seen")


def inc(x: int) -> int:
    return x + 1


def add(total: int, x: int) -> int:
    return total + x


def to_str(x: int) -> str:
    return str(x)


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


def show(x: int) -> None:
    print(x)


def weighted(x: int, state: State) -> str:
    return f"{x}x{state.get(K, 1)}"


def ints() -> list[int]:
    return [1, 2, 3]


async def texts() -> AsyncIterator[str]:
    yield "12"


def check_the_issue_examples() -> None:
    # Both were rejected or mistyped: the reduction point's envelopes are
    # transparent to the stages after it.
    assert_type(envelop() | reduce_point(K, add, 0) | map_(inc), Stage[int, Envelope[int]])
    assert_type(map_(inc) | reduce_point(K, add, 0) | chunk(2), Stage[int, Envelope[list[int]]])
    # What it used to be typed as is now rejected.
    chunked = map_(inc) | reduce_point(K, add, 0) | chunk(2)
    assert_type(chunked, Stage[int, list[Envelope[int]]])  # type: ignore[assert-type]  # pyright: ignore[reportAssertTypeFailure]


def check_every_operator_after_envelopes() -> None:
    enveloped = map_(inc) | envelop()
    assert_type(enveloped, Stage[int, Envelope[int]])
    assert_type(enveloped | map_(to_str), Stage[int, Envelope[str]])
    assert_type(enveloped | map_(to_str, concurrency=4), Stage[int, Envelope[str]])
    assert_type(enveloped | filter_(is_even), Stage[int, Envelope[int]])
    assert_type(enveloped | tap(show), Stage[int, Envelope[int]])
    assert_type(enveloped | take(2), Stage[int, Envelope[int]])
    assert_type(enveloped | chunk(2), Stage[int, Envelope[list[int]]])
    assert_type(enveloped | chunk(2, within=1.0), Stage[int, Envelope[list[int]]])
    assert_type(enveloped | window(2), Stage[int, Envelope[tuple[int, ...]]])
    assert_type(enveloped | pairwise(), Stage[int, Envelope[tuple[int, int]]])
    assert_type(enveloped | enumerate_(), Stage[int, Envelope[tuple[int, int]]])
    assert_type(enveloped | chunk(2) | flatten(), Stage[int, Envelope[int]])
    assert_type(enveloped | map_(to_str) | flat_map(digits), Stage[int, Envelope[str]])
    assert_type(enveloped | with_retry(map_(to_str)), Stage[int, Envelope[str]])
    assert_type(enveloped | unwrap(), Stage[int, int])
    # Stages that take envelopes themselves are used as they are.
    assert_type(enveloped | reduce_point(K, add, 0), Stage[int, Envelope[int]])
    assert_type(enveloped | set_state(SEEN, inc), Stage[int, Envelope[int]])
    assert_type(enveloped | map_(weighted, with_state=True), Stage[int, Envelope[str]])
    assert_type(enveloped | reduce_point(K, add, 0, emit="aggregate"), Stage[int, Envelope[int]])


def check_long_chains() -> None:
    # Plain, then envelopes from `envelop()`, then plain again after `unwrap()`.
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
        | map_(to_str)
        | flat_map(digits)
        | map_(fetch, concurrency=2)
        | unwrap()
        | map_(len)
    )
    assert_type(pipeline, Stage[int, int])
    assert_type(ints() | pipeline, Flow[int])

    # Starting with the envelope segment, and with a state stage on the way in.
    keyed = (
        envelop()
        | reduce_point(K, add, 0)
        | scan_state(SEEN, add, 0)
        | map_(to_str)
        | with_retry(map_(fetch), attempts=2)
        | enumerate_()
        | take(10)
    )
    assert_type(keyed, Stage[int, Envelope[tuple[int, bytes]]])
    assert_type(ints() | keyed, Flow[Envelope[tuple[int, bytes]]])

    # Started by a reduction point, which takes plain items or envelopes.
    reduced = reduce_point(K, add, 0) | map_(inc) | pairwise() | map_(firsts) | chunk(3)
    assert_type(reduced, Stage[int | Envelope[int], Envelope[list[int]]])
    assert_type(ints() | reduced, Flow[Envelope[list[int]]])
    assert_type([Envelope(1)] | reduced, Flow[Envelope[list[int]]])

    # A composition that ends in envelopes is used as it is on envelope sources.
    assert_type([Envelope(1)] | (map_(inc) | reduce_point(K, add, 0)), Flow[Envelope[int]])

    # `Result` items from a retry, unwrapped after the envelope segment.
    results = envelop() | with_retry(map_(to_str), on_error="result") | unwrap()
    assert_type(results, Stage[int, Result[str, ErrorRecord[int]]])
    assert_type(results | successes(), Stage[int, str])

    # The wrong item type in the middle of a chain is reported.
    envelop() | reduce_point(K, add, 0) | map_(digits)  # type: ignore[arg-type]  # pyright: ignore[reportOperatorIssue, reportUnusedExpression]
    grouped = envelop() | map_(inc) | chunk(2)
    assert_type(grouped, Stage[int, list[Envelope[int]]])  # type: ignore[assert-type]  # pyright: ignore[reportAssertTypeFailure]


def check_chains_from_sources() -> None:
    assert_type(
        ints()
        | envelop()
        | reduce_point(K, add, 0)
        | map_(inc)
        | filter_(is_even)
        | chunk(2)
        | map_(total)
        | window(2)
        | flatten()
        | map_(to_str, concurrency=3)
        | flat_map(digits)
        | unwrap(),
        Flow[str],
    )
    assert_type(
        texts() | flat_map(digits) | envelop() | map_(fetch) | pairwise() | enumerate_(),
        Flow[Envelope[tuple[int, tuple[bytes, bytes]]]],
    )
    # A chain composed first, then applied, types the same as one built on the source.
    tail = map_(inc) | chunk(2) | map_(total) | pairwise()
    assert_type(ints() | envelop() | tail, Flow[Envelope[tuple[int, int]]])
    assert_type(tail([Envelope(1)]), Flow[Envelope[tuple[int, int]]])


def check_compositions_that_start_with_a_shape() -> None:
    # Documented in "Known typing limits": the stage on the right types them.
    assert_type(take(2) | chunk(2), ListStage)
    assert_type(take(2) | map_(inc), Stage[int, int])
    assert_type(chunk(2) | map_(total), Stage[Any, int])
    assert_type(chunk(2) | take(1), Stage[Any, Any])
    assert_type(envelop() | take(1), Stage[Any, Envelope[Any]])
    assert_type(ints() | (chunk(2) | map_(total)), Flow[int])
