"""Building blocks shared by the cases: the stage functions, sources, hand-written generators."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar, cast

if TYPE_CHECKING:
    from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable

    from aiostream.stream.combine import MapCallable

T = TypeVar("T")
U = TypeVar("U")


# The three plain functions of the map -> filter -> map pipeline (cases a and b).
def inc(x: int) -> int:
    return x + 1


def not_multiple_of_3(x: int) -> bool:
    return x % 3 != 0


def multiple_of_3(x: int) -> bool:
    """The negation of :func:`not_multiple_of_3`, for libraries that only have filterfalse."""
    return x % 3 == 0


def double(x: int) -> int:
    return x * 2


def expected_pipeline(n: int) -> list[int]:
    """What map(inc) -> filter(not_multiple_of_3) -> map(double) yields for range(n)."""
    return [double(y) for y in map(inc, range(n)) if not_multiple_of_3(y)]


# Sources and hand-written stages: one async generator per stage, as a careful user writes them.
async def arange(n: int) -> AsyncIterator[int]:
    for i in range(n):
        yield i


async def amap(fn: Callable[[T], U], source: AsyncIterable[T]) -> AsyncIterator[U]:
    async for x in source:
        yield fn(x)


async def afilter(pred: Callable[[T], bool], source: AsyncIterable[T]) -> AsyncIterator[T]:
    async for x in source:
        if pred(x):
            yield x


async def amap_sync_source(fn: Callable[[T], U], source: Iterable[T]) -> AsyncIterator[U]:
    for x in source:
        yield fn(x)


async def drain_sum(iterable: AsyncIterable[int]) -> tuple[int, int]:
    """Consume one item at a time; returns (count, sum) so the result can be verified."""
    count = total = 0
    async for y in iterable:
        count += 1
        total += y
    return count, total


async def drain_ordered(iterable: AsyncIterable[int]) -> tuple[int, int, int]:
    """Like :func:`drain_sum`, plus a position-weighted sum that only the right order gives."""
    count = total = weighted = 0
    async for y in iterable:
        total += y
        weighted += count * y
        count += 1
    return count, total, weighted


def checksum(values: Iterable[int], *, ordered: bool) -> tuple[int, ...]:
    count = total = weighted = 0
    for y in values:
        total += y
        weighted += count * y
        count += 1
    return (count, total, weighted) if ordered else (count, total)


def for_aiostream(fn: Callable[[T], U]) -> MapCallable[T, U]:
    """aiostream types ``map``'s function as taking ``*args``; ours take exactly one item."""
    return cast("MapCallable[T, U]", fn)


def mismatch(got: object, expected: object) -> str | None:
    return None if got == expected else f"got {_short(got)}, expected {_short(expected)}"


def _short(value: object) -> str:
    if isinstance(value, list):
        return f"a list of {len(cast('list[object]', value))} items"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
