"""Static checks: types flow through chains (mypy --strict and pyright strict).

Nothing here runs as a test: pytest collects no ``test_`` file or function
here, and the ``check_*`` functions are never called. ``assert_type`` makes the
type checkers fail when an inferred type drifts; a ``# type: ignore[code]``
line proves that a misuse *is* reported, since both checkers are configured
to flag ignores that are not needed.

Known limit, un-annotated lambdas
---------------------------------
A lambda's parameter type cannot be inferred from a stage's *source*: the
stage is built first (``map_(lambda x: x + 1)``), and only then applied to a
source. So in ``range(3) | map_(lambda x: x + 1)``:

* mypy solves the item type to ``Never`` and reports
  ``Unsupported operand types for | ("range" and "Stage[Never, int]")``;
* pyright leaves it unknown: ``Operator "+" not supported for types "T@map_"
  and "Literal[1]"``, ``Return type of lambda is unknown``, and the flow is
  ``Flow[Unknown]``.

Even ``map_(lambda x: x)`` loses the item type (mypy: ``Flow[Any]``; pyright:
``Flow[Unknown]``, an error in strict mode). A lambda typed through a variable
(``inc: Callable[[int], int] = lambda x: x + 1``) keeps it, and named,
annotated functions, as below, always do.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, assert_type

from streamkit import (
    Flow,
    Stage,
    chunk,
    collect,
    concat,
    count,
    distinct,
    drain,
    empty,
    enumerate_,
    filter_,
    first,
    flat_map,
    flatten,
    fold,
    iterate,
    last,
    map_,
    merge,
    pairwise,
    pipe,
    repeat,
    scan,
    skip,
    skip_while,
    stage,
    take,
    take_while,
    tap,
    window,
    zip_,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable


def to_str(x: int) -> str:
    return str(x)


def double(x: int) -> int:
    return x * 2


def is_nonempty(s: str) -> bool:
    return bool(s)


def is_small(x: int) -> bool:
    return x < 10


async def fetch(x: int) -> bytes:
    return bytes(x)


async def is_cached(x: int) -> bool:
    return x > 0


def add_len(total: int, s: str) -> int:
    return total + len(s)


async def add_len_later(total: int, s: str) -> int:
    return total + len(s)


def letters(s: str) -> list[str]:
    return list(s)


async def letters_later(s: str) -> list[str]:
    return list(s)


async def letters_one_by_one(s: str) -> AsyncIterator[str]:
    for letter in s:
        yield letter


async def ints() -> AsyncIterator[int]:
    yield 1


@stage
async def repeat_each(
    items: AsyncIterator[str], times: int, *, sep: str = ""
) -> AsyncIterator[str]:
    async for item in items:
        for _ in range(times):
            yield item + sep


def check_item_stages() -> None:
    assert_type(map_(to_str), Stage[int, str])
    assert_type(map_(fetch), Stage[int, bytes])
    assert_type(filter_(is_small), Stage[int, int])
    assert_type(filter_(is_cached), Stage[int, int])
    assert_type(tap(print), Stage[object, object])
    assert_type(flat_map(letters), Stage[str, str])
    assert_type(flat_map(letters_later), Stage[str, str])
    assert_type(flat_map(letters_one_by_one), Stage[str, str])
    assert_type(take_while(is_small), Stage[int, int])
    assert_type(skip_while(is_cached), Stage[int, int])
    assert_type(scan(add_len, 0), Stage[str, int])
    assert_type(scan(add_len_later, 0), Stage[str, int])


def check_composition() -> None:
    assert_type(map_(double) | map_(to_str), Stage[int, str])
    assert_type(map_(double) | filter_(is_small) | map_(to_str), Stage[int, str])
    assert_type(map_(double) | take(2), Stage[int, int])
    assert_type(map_(double) | chunk(2), Stage[int, list[int]])
    assert_type(map_(double) | window(2), Stage[int, tuple[int, ...]])
    assert_type(map_(double) | pairwise(), Stage[int, tuple[int, int]])
    assert_type(map_(to_str) | enumerate_(), Stage[int, tuple[int, str]])
    assert_type(map_(letters) | flatten(), Stage[str, str])
    assert_type(take(2) | map_(to_str), Stage[int, str])
    assert_type(map_(fetch) | map_(len), Stage[int, int])
    # `pipe` of a dynamic list of stages cannot be typed precisely.
    assert_type(pipe(map_(double), map_(to_str)), Stage[Any, Any])


def check_flows() -> None:
    assert_type(range(3) | map_(to_str) | filter_(is_nonempty), Flow[str])
    assert_type(map_(to_str)(range(3)), Flow[str])
    assert_type(ints() | map_(fetch), Flow[bytes])
    assert_type(range(9) | chunk(3), Flow[list[int]])
    assert_type(range(9) | chunk(3, within=0.5), Flow[list[int]])
    assert_type(range(9) | window(3), Flow[tuple[int, ...]])
    assert_type(range(9) | pairwise(), Flow[tuple[int, int]])
    assert_type(["a"] | enumerate_(), Flow[tuple[int, str]])
    assert_type([[1, 2], [3]] | flatten(), Flow[int])
    assert_type(range(9) | take(2), Flow[int])
    assert_type(ints() | skip(2), Flow[int])
    assert_type(["a", "b"] | distinct(), Flow[str])
    assert_type(["a", "bb"] | scan(add_len, 0), Flow[int])
    assert_type(["a", "b"] | repeat_each(2, sep="!"), Flow[str])
    assert_type(zip_(range(3), "abc"), Flow[tuple[int, str]])
    assert_type(zip_(range(3), "abc", ints()), Flow[tuple[int, str, int]])
    assert_type(merge(range(3), ints()), Flow[int])
    assert_type(concat(["a"], ["b"]), Flow[str])
    assert_type(iterate(ints()), Flow[int])
    assert_type(repeat("x", 3), Flow[str])
    assert_type(empty(), Flow[Any])


def check_stage_decorator() -> None:
    assert_type(repeat_each(2), Stage[str, str])
    assert_type(repeat_each(2, sep="-"), Stage[str, str])
    repeat_each("2")  # type: ignore[arg-type]  # pyright: ignore
    repeat_each(2, separator="-")  # type: ignore[call-arg]  # pyright: ignore
    # The factory keeps the generator's own parameters (after `items`).
    factory: Callable[[int], Stage[str, str]] = repeat_each
    assert_type(factory(3), Stage[str, str])


def check_misuse_is_reported() -> None:
    range(3) | map_(is_nonempty)  # type: ignore[operator]  # pyright: ignore
    map_(to_str) | map_(double)  # type: ignore[arg-type]  # pyright: ignore
    zip_(range(3), strict=1)  # type: ignore[call-overload]  # pyright: ignore


async def check_terminals() -> None:
    assert_type(await collect(range(3) | map_(to_str)), list[str])
    assert_type(await collect(range(3) | chunk(2)), list[list[int]])
    assert_type(await fold(["a", "bb"], add_len, 0), int)
    assert_type(await fold(["a", "bb"], add_len_later, 0), int)
    assert_type(await first(range(3)), int)
    assert_type(await first(range(3), default=None), int | None)
    assert_type(await last(range(3) | map_(to_str)), str)
    assert_type(await last(range(3), default="none"), int | str)
    assert_type(await count(range(3)), int)
    assert_type(await drain(range(3)), None)
    async with range(3) | map_(to_str) as items:
        assert_type(items, Flow[str])
        async for item in items:
            assert_type(item, str)
