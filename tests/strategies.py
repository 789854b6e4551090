"""Hypothesis strategies: random item lists and random chains of pure operators.

Every operator drawn here comes with a *model*: the same transformation as a
plain list function. Running a chain through streamkit must give what the
models give one after another (see ``tests/test_laws.py``).

Items start as ints, but `chunk`, `window`, `pairwise` and `enumerate_` turn
them into lists and tuples. So that any operator can follow any other, the
fixed item functions work on `weight`, a number defined for every nested item.
"""

from __future__ import annotations

import asyncio
import itertools
import operator
from collections.abc import AsyncIterator, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st

from streamkit import (
    Stage,
    chunk,
    distinct,
    enumerate_,
    filter_,
    flat_map,
    map_,
    pairwise,
    scan,
    skip,
    skip_while,
    take,
    take_while,
    window,
)

Model = Callable[[list[Any]], list[Any]]


def weight(item: Any) -> int:
    """An int for any item: itself, or for lists and tuples, a mix of their elements."""
    if isinstance(item, int):
        return item
    return len(item) + sum(weight(element) for element in item)


def freeze(item: Any) -> Hashable:
    """A hashable key equal for equal items: lists become tuples, recursively."""
    if isinstance(item, list | tuple):
        return tuple(freeze(element) for element in item)
    return item


# --------------------------------------------------------------------------- item functions
#
# Each function has a synchronous twin that the models use.


def add_one(item: Any) -> int:
    return weight(item) + 1


def double(item: Any) -> int:
    return weight(item) * 2


async def async_negate(item: Any) -> int:
    await asyncio.sleep(0)
    return -weight(item)


def later_halve(item: Any) -> Any:
    """A plain function that returns an awaitable."""
    return asyncio.sleep(0, weight(item) // 2)


MAP_FUNCTIONS: list[tuple[Callable[[Any], Any], Callable[[Any], Any]]] = [
    (add_one, add_one),
    (double, double),
    (async_negate, lambda item: -weight(item)),
    (later_halve, lambda item: weight(item) // 2),
]
"""(function, synchronous twin) pairs for `map_`."""


def is_even(item: Any) -> bool:
    return weight(item) % 2 == 0


def is_positive(item: Any) -> bool:
    return weight(item) > 0


def below_7(item: Any) -> bool:
    return weight(item) < 7


async def async_not_multiple_of_3(item: Any) -> bool:
    return weight(item) % 3 != 0


PREDICATES: list[tuple[Callable[[Any], Any], Callable[[Any], bool]]] = [
    (is_even, is_even),
    (is_positive, is_positive),
    (below_7, below_7),
    (async_not_multiple_of_3, lambda item: weight(item) % 3 != 0),
]
"""(predicate, synchronous twin) pairs for `filter_`, `take_while` and `skip_while`."""


def add_weight(total: int, item: Any) -> int:
    return total + weight(item)


async def async_max_weight(best: int, item: Any) -> int:
    return max(best, weight(item))


SCAN_FUNCTIONS: list[tuple[Callable[[int, Any], Any], Callable[[int, Any], int]]] = [
    (add_weight, add_weight),
    (async_max_weight, lambda best, item: max(best, weight(item))),
]


def twice(item: Any) -> list[Any]:
    return [item, item]


def up_to_two_copies(item: Any) -> range:
    return range(weight(item) % 3)


async def async_echo(item: Any) -> AsyncIterator[Any]:
    yield item


FLAT_MAP_FUNCTIONS: list[tuple[Callable[[Any], Any], Callable[[Any], list[Any]]]] = [
    (twice, twice),
    (up_to_two_copies, lambda item: list(up_to_two_copies(item))),
    (async_echo, lambda item: [item]),
]


# --------------------------------------------------------------------------- operators


@dataclass(frozen=True)
class Op:
    """An operator with its list model; ``make()`` builds a fresh stage."""

    name: str
    make: Callable[[], Stage[Any, Any]] = field(repr=False)
    model: Model = field(repr=False)

    def __repr__(self) -> str:
        return self.name


def run_models(ops: list[Op], items: list[Any]) -> list[Any]:
    """What the chain of ``ops`` gives for ``items``, by the list models."""
    for op in ops:
        items = op.model(items)
    return items


def _name(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__name__", repr(fn))


def _map(pair: tuple[Callable[[Any], Any], Callable[[Any], Any]]) -> Op:
    fn, twin = pair
    return Op(f"map_({_name(fn)})", lambda: map_(fn), lambda xs: [twin(x) for x in xs])


def _filter(pair: tuple[Callable[[Any], Any], Callable[[Any], bool]]) -> Op:
    fn, twin = pair
    return Op(f"filter_({_name(fn)})", lambda: filter_(fn), lambda xs: [x for x in xs if twin(x)])


def _take_while(pair: tuple[Callable[[Any], Any], Callable[[Any], bool]]) -> Op:
    fn, twin = pair
    return Op(
        f"take_while({_name(fn)})",
        lambda: take_while(fn),
        lambda xs: list(itertools.takewhile(twin, xs)),
    )


def _skip_while(pair: tuple[Callable[[Any], Any], Callable[[Any], bool]]) -> Op:
    fn, twin = pair
    return Op(
        f"skip_while({_name(fn)})",
        lambda: skip_while(fn),
        lambda xs: list(itertools.dropwhile(twin, xs)),
    )


def _take(n: int) -> Op:
    return Op(f"take({n})", lambda: take(n), lambda xs: xs[:n])


def _skip(n: int) -> Op:
    return Op(f"skip({n})", lambda: skip(n), lambda xs: xs[n:])


def _scan(pair: tuple[Callable[[int, Any], Any], Callable[[int, Any], int]]) -> Op:
    fn, twin = pair
    return Op(
        f"scan({_name(fn)}, 0)",
        lambda: scan(fn, 0),
        lambda xs: list(itertools.accumulate(xs, twin, initial=0))[1:],
    )


def _enumerate(start: int) -> Op:
    return Op(
        f"enumerate_({start})", lambda: enumerate_(start), lambda xs: list(enumerate(xs, start))
    )


def _chunk(size: int) -> Op:
    return Op(
        f"chunk({size})",
        lambda: chunk(size),
        lambda xs: [xs[i : i + size] for i in range(0, len(xs), size)],
    )


def _window(size_step: tuple[int, int]) -> Op:
    size, step = size_step
    return Op(
        f"window({size}, step={step})",
        lambda: window(size, step=step),
        lambda xs: [tuple(xs[i : i + size]) for i in range(0, len(xs) - size + 1, step)],
    )


def _distinct_model(key: Callable[[Any], Hashable]) -> Model:
    def model(xs: list[Any]) -> list[Any]:
        seen: set[Hashable] = set()
        out = []
        for x in xs:
            if key(x) not in seen:
                seen.add(key(x))
                out.append(x)
        return out

    return model


def _distinct(key: Callable[[Any], Hashable]) -> Op:
    return Op(f"distinct(key={key.__name__})", lambda: distinct(key=key), _distinct_model(key))


def _flat_map(pair: tuple[Callable[[Any], Any], Callable[[Any], list[Any]]]) -> Op:
    fn, twin = pair
    return Op(
        f"flat_map({_name(fn)})",
        lambda: flat_map(fn),
        lambda xs: [y for x in xs for y in twin(x)],
    )


PAIRWISE = Op("pairwise()", pairwise, lambda xs: list(itertools.pairwise(xs)))

counts = st.integers(min_value=0, max_value=6)

map_ops = st.sampled_from(MAP_FUNCTIONS).map(_map)
"""`map_` with one of the fixed functions."""

filter_ops = st.sampled_from(PREDICATES).map(_filter)
"""`filter_` with one of the fixed predicates."""

ops: st.SearchStrategy[Op] = st.one_of(
    map_ops,
    filter_ops,
    counts.map(_take),
    counts.map(_skip),
    st.sampled_from(PREDICATES).map(_take_while),
    st.sampled_from(PREDICATES).map(_skip_while),
    st.sampled_from(SCAN_FUNCTIONS).map(_scan),
    st.integers(min_value=-2, max_value=3).map(_enumerate),
    st.integers(min_value=1, max_value=4).map(_chunk),
    st.tuples(st.integers(1, 3), st.integers(1, 3)).map(_window),
    st.just(PAIRWISE),
    st.sampled_from([weight, freeze]).map(_distinct),
    st.sampled_from(FLAT_MAP_FUNCTIONS).map(_flat_map),
)
"""Any of the pure operators, with its model."""

chains = st.lists(ops, min_size=1, max_size=6)
"""A chain of 1 to 6 operators."""

int_lists = st.lists(st.integers(min_value=-10, max_value=20), max_size=25)
"""The items a chain is run on."""


def square(x: int) -> int:
    return x * x


sync_maps = st.sampled_from([add_one, double, abs, square, operator.neg])
"""Synchronous functions from int to int (for the map-fusion law)."""

predicates = st.sampled_from(PREDICATES)
"""(predicate, synchronous twin): sync and async predicates of one item."""
