"""Property tests: streamkit agrees with plain-list models, and its laws hold."""

from __future__ import annotations

import functools
import itertools
import operator
from typing import TYPE_CHECKING, Any

import pytest
import toolz
from hypothesis import given, settings
from hypothesis import strategies as st

from streamkit import (
    collect,
    concat,
    count,
    filter_,
    first,
    fold,
    last,
    map_,
    pipe,
    skip,
    skip_while,
    take,
    take_while,
    tap,
)
from tests.conftest import agen, sync_gen
from tests.strategies import (
    chains,
    int_lists,
    ops,
    predicates,
    run_models,
    sync_maps,
    weight,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from streamkit import Stage
    from tests.strategies import Op

Predicate = tuple["Callable[[Any], Any]", "Callable[[Any], bool]"]

SOURCE_KINDS = ["list", "sync generator", "async generator"]
source_kinds = st.sampled_from(SOURCE_KINDS)


def source_of(kind: str, items: list[Any]) -> Any:
    """``items`` as the given kind of source (the list itself is copied)."""
    if kind == "list":
        return list(items)
    if kind == "sync generator":
        return sync_gen(items)
    return agen(items)


def build(chain: list[Op]) -> Stage[Any, Any]:
    return functools.reduce(operator.or_, (op.make() for op in chain))


# --------------------------------------------------------------------------- differential


@settings(max_examples=300)
@given(items=int_lists, chain=chains, kind=source_kinds)
async def test_a_random_chain_agrees_with_the_list_model(
    items: list[int], chain: list[Op], kind: str
) -> None:
    assert await collect(source_of(kind, items) | build(chain)) == run_models(chain, items)


@given(items=int_lists, chain=chains)
async def test_a_chain_applied_one_stage_at_a_time_agrees_with_the_model(
    items: list[int], chain: list[Op]
) -> None:
    flow: Any = agen(items)
    for op in chain:
        flow = flow | op.make()
    assert await collect(flow) == run_models(chain, items)


@given(items=int_lists, chain=chains, kind=source_kinds)
async def test_the_terminals_agree_with_collect(
    items: list[int], chain: list[Op], kind: str
) -> None:
    expected = run_models(chain, items)
    stage = build(chain)
    assert await count(source_of(kind, items) | stage) == len(expected)
    assert await first(source_of(kind, items) | stage, default=None) == (
        expected[0] if expected else None
    )
    assert await last(source_of(kind, items) | stage, default=None) == (
        expected[-1] if expected else None
    )


def fails_on_4_mod_5(item: Any) -> Any:
    if weight(item) % 5 == 4:
        raise KeyError(item)
    return item


async def async_fails_on_4_mod_5(item: Any) -> Any:
    return fails_on_4_mod_5(item)


FAILING_OPS: list[Callable[[Callable[[Any], Any]], Stage[Any, Any]]] = [map_, filter_, tap]


@given(
    items=int_lists,
    chain=chains,
    make_failing=st.sampled_from(FAILING_OPS),
    fn=st.sampled_from([fails_on_4_mod_5, async_fails_on_4_mod_5]),
    kind=source_kinds,
)
async def test_an_error_note_counts_the_failing_stages_own_input(
    items: list[int],
    chain: list[Op],
    make_failing: Callable[[Callable[[Any], Any]], Stage[Any, Any]],
    fn: Callable[[Any], Any],
    kind: str,
) -> None:
    # The failing stage comes last, so it sees exactly what the model of the
    # chain gives; fused with a preceding map_/filter_, it must still count
    # only the items that reached it.
    failing = make_failing(fn)
    reaching = run_models(chain, items)
    failures = [i for i, item in enumerate(reaching) if weight(item) % 5 == 4]
    flow = source_of(kind, items) | build(chain) | failing
    if not failures:
        kept = [item for item in reaching if item] if make_failing is filter_ else reaching
        assert await collect(flow) == kept
        return
    with pytest.raises(KeyError) as raised:
        await collect(flow)
    assert raised.value.__notes__ == [
        f"streamkit: raised by {failing.label} on item {failures[0]} of its input"
    ]


# --------------------------------------------------------------------------- laws


@given(items=int_lists, kind=source_kinds)
async def test_identity_the_empty_pipe_changes_nothing(items: list[int], kind: str) -> None:
    assert await collect(source_of(kind, items) | pipe()) == items
    assert await collect(pipe()(source_of(kind, items))) == items


@given(items=int_lists, op=ops)
async def test_identity_is_neutral_for_composition(items: list[int], op: Op) -> None:
    expected = op.model(items)
    assert await collect(items | (pipe() | op.make())) == expected
    assert await collect(items | (op.make() | pipe())) == expected
    assert await collect(agen(items) | pipe(pipe(), op.make(), pipe())) == expected


@given(items=int_lists, f=sync_maps, g=sync_maps, kind=source_kinds)
async def test_map_fusion(
    items: list[int], f: Callable[[int], int], g: Callable[[int], int], kind: str
) -> None:
    fused = await collect(source_of(kind, items) | map_(toolz.compose(g, f)))
    assert await collect(source_of(kind, items) | map_(f) | map_(g)) == fused
    assert await collect(source_of(kind, items) | map_(f) | skip(0) | map_(g)) == fused
    assert fused == [g(f(x)) for x in items]


@given(items=int_lists, predicate=predicates, kind=source_kinds)
async def test_filter_is_idempotent(items: list[int], predicate: Predicate, kind: str) -> None:
    p, twin = predicate
    once = await collect(source_of(kind, items) | filter_(p))
    assert await collect(source_of(kind, items) | filter_(p) | filter_(p)) == once
    assert await collect(source_of(kind, items) | filter_(p) | skip(0) | filter_(p)) == once
    assert once == [x for x in items if twin(x)]


@given(items=int_lists, a=chains, b=chains, c=chains, kind=source_kinds)
async def test_composition_is_associative(
    items: list[int], a: list[Op], b: list[Op], c: list[Op], kind: str
) -> None:
    left = (build(a) | build(b)) | build(c)
    right = build(a) | (build(b) | build(c))
    expected = run_models(a + b + c, items)
    assert await collect(source_of(kind, items) | left) == expected
    assert await collect(source_of(kind, items) | right) == expected
    assert await collect(source_of(kind, items) | build(a) | build(b) | build(c)) == expected
    assert await collect(source_of(kind, items) | pipe(build(a), build(b), build(c))) == expected


FOLDS: list[tuple[Callable[[Any, int], Any], Any]] = [
    (operator.add, 0),
    (max, -100),
    (operator.sub, 7),
    (lambda acc, x: [*acc, x], []),
    (lambda acc, x: acc * 31 + x, 1),
]


@given(items=int_lists, fold_case=st.sampled_from(FOLDS), kind=source_kinds)
async def test_fold_agrees_with_reduce(
    items: list[int], fold_case: tuple[Callable[[Any, int], Any], Any], kind: str
) -> None:
    fn, initial = fold_case

    async def async_fn(acc: Any, x: int) -> Any:
        return fn(acc, x)

    expected = functools.reduce(fn, items, initial)
    assert await fold(source_of(kind, items), fn, initial) == expected
    assert await fold(source_of(kind, items), async_fn, initial) == expected


@given(a=int_lists, b=int_lists, kind_a=source_kinds, kind_b=source_kinds)
async def test_concat_is_list_concatenation(
    a: list[int], b: list[int], kind_a: str, kind_b: str
) -> None:
    assert await collect(concat(source_of(kind_a, a), source_of(kind_b, b))) == a + b


@given(items=int_lists, n=st.integers(min_value=0, max_value=30), kind=source_kinds)
async def test_take_and_skip_split_a_stream(items: list[int], n: int, kind: str) -> None:
    head = await collect(source_of(kind, items) | take(n))
    tail = await collect(source_of(kind, items) | skip(n))
    assert head + tail == items
    assert len(head) == min(n, len(items))


@given(items=int_lists, predicate=predicates, kind=source_kinds)
async def test_take_while_and_skip_while_split_a_stream(
    items: list[int], predicate: Predicate, kind: str
) -> None:
    p, twin = predicate
    head = await collect(source_of(kind, items) | take_while(p))
    tail = await collect(source_of(kind, items) | skip_while(p))
    assert head + tail == items
    assert head == list(itertools.takewhile(twin, items))
