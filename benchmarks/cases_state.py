"""Cases (f) to (i): the costs of per-item state (envelopes, state steps, reduction points).

(f) envelope mode against plain mode on the map -> filter -> map chain; (g) setting one key on
a shared state is O(1) per item; (h) a reduction point against collecting into a list; (i) the
peak memory of a spilling reduction point.
"""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from collections.abc import Callable, Mapping, Sequence
from functools import cache, partial
from typing import TYPE_CHECKING, Any, cast

from benchmarks.common import (
    arange,
    checksum,
    double,
    drain_sum,
    expected_pipeline,
    inc,
    mismatch,
    not_multiple_of_3,
)
from benchmarks.compiled import ROWS, compiled_timings
from benchmarks.harness import (
    DIVIDE,
    LE,
    TIMES,
    UNAVAILABLE_ERRORS,
    CaseResult,
    Competitor,
    Row,
    Runner,
    Settings,
    Target,
    Timing,
    case,
    describe_error,
    format_bytes,
    format_ms,
    format_ratio,
    partial_result,
    time_competitors,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterable, AsyncIterator

    from streamkit import State

PIPELINE = "`map_(x + 1)` → `filter_(x % 3 != 0)` → `map_(x * 2)`"
KEY_NAME = "bench"
"""The key the state cases set (a `Key[int]` of the global scope)."""

#: Verifies one tagged result: ``(tag, payload)`` -> None or what is wrong.
Check = Callable[[int, Any], "str | None"]


def _verify_tagged(checks: Mapping[str, Check]) -> Callable[[int, object], str | None]:
    """A ``verify`` for :func:`time_competitors` whose runners return ``(tag, payload)``."""

    def verify(n: int, result: object) -> str | None:
        if not (isinstance(result, tuple) and len(result) == 2):  # pyright: ignore[reportUnknownArgumentType]
            return f"unexpected result {result!r:.60}"
        tag, payload = result  # pyright: ignore[reportUnknownVariableType]
        check = checks.get(str(tag))  # pyright: ignore[reportUnknownArgumentType]
        return f"unknown result kind {tag!r}" if check is None else check(n, payload)

    return verify


def _ratio_or_none(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator <= 0 or numerator <= 0:
        return None
    return numerator / denominator


def _value(result: CaseResult, key: str, name: str) -> float | None:
    row = result.row(key)
    return None if row is None or row.note else row.values.get(name)


def _failed_row(timing: Timing, label: str, width: int) -> Row:
    return Row(timing.competitor.key, label, ("-",) * width, note=timing.note)


def _spread(timing: Timing) -> str:
    return f"{format_ms(min(timing.samples) * 1e3)} to {format_ms(max(timing.samples) * 1e3)}"


def _ns(value: float) -> str:
    return f"{value:,.0f}"


# =================================================================== (f) envelope versus plain


async def _envelope_source(
    n: int, envelope: Callable[[int, State], object], state: State
) -> AsyncIterator[Any]:
    """The data of the envelope rows: ``Envelope(i, state)``, one shared state for all."""
    for i in range(n):
        yield envelope(i, state)


async def _drain_values(iterable: AsyncIterable[Any], state: State) -> tuple[int, int]:
    """:func:`drain_sum` for envelopes: adds up the values; the state must pass unchanged."""
    count = total = 0
    item: Any = None
    async for item in iterable:
        count += 1
        total += item.value
    if count and item.state is not state:
        raise AssertionError(f"the items' state was not kept: {item.state!r:.60}")
    return count, total


def _f_plain() -> Runner:
    from streamkit import filter_, map_

    map_(inc)
    filter_(not_multiple_of_3)

    async def run(n: int) -> object:
        chain = arange(n) | map_(inc) | filter_(not_multiple_of_3) | map_(double)
        return "chain", await drain_sum(chain)

    return run


def _f_envelope() -> Runner:
    from streamkit import Envelope, State, filter_, map_

    state = State({"run": "bench"})

    async def run(n: int) -> object:
        source = _envelope_source(n, Envelope, state)
        chain = source | map_(inc) | filter_(not_multiple_of_3) | map_(double)
        return "chain", await _drain_values(chain, state)

    return run


def _f_envelop_unwrap() -> Runner:
    from streamkit import State, envelop, filter_, map_, unwrap

    state = State({"run": "bench"})
    envelop(state)
    unwrap()

    async def run(n: int) -> object:
        chain = (
            arange(n)
            | envelop(state)
            | map_(inc)
            | filter_(not_multiple_of_3)
            | map_(double)
            | unwrap()
        )
        return "chain", await drain_sum(chain)

    return run


def _f_plain_source() -> Runner:
    async def run(n: int) -> object:
        return "source", await drain_sum(arange(n))

    return run


def _f_envelope_source() -> Runner:
    from streamkit import Envelope, State

    state = State({"run": "bench"})

    async def run(n: int) -> object:
        return "source", await _drain_values(_envelope_source(n, Envelope, state), state)

    return run


@cache
def _expected_chain(n: int) -> tuple[int, ...]:
    return checksum(expected_pipeline(n), ordered=False)


def _per_item_rows(
    timings: Sequence[Timing], n: int, reference: str, ratio_key: str = "ratio"
) -> list[Row]:
    """Median, spread, ns per item, and median divided by the ``reference`` row's median."""
    medians = {t.competitor.key: t.median for t in timings if t.ok and t.samples}
    ref = medians.get(reference)
    rows: list[Row] = []
    for t in timings:
        comp = t.competitor
        if not (t.ok and t.samples):
            rows.append(_failed_row(t, comp.label, 4))
            continue
        ratio = _ratio_or_none(t.median, ref)
        rows.append(
            Row(
                comp.key,
                comp.label,
                (
                    format_ms(t.median * 1e3),
                    _spread(t),
                    _ns(t.median / n * 1e9),
                    "1.00 (reference)"
                    if comp.key == reference
                    else ("n/a" if ratio is None else format_ratio(ratio)),
                ),
                values={"median_ms": t.median * 1e3, "ns_per_item": t.median / n * 1e9}
                | ({ratio_key: ratio} if ratio is not None else {}),
                ratio=ratio,
            )
        )
    return rows


def _over_plain(key: str) -> Callable[[CaseResult], float | None]:
    def metric(result: CaseResult) -> float | None:
        return _ratio_or_none(
            _value(result, key, "median_ms"), _value(result, "streamkit_plain", "median_ms")
        )

    return metric


def _f_rows(settings: Settings) -> tuple[list[Competitor], Callable[[int, object], str | None]]:
    competitors = [
        Competitor(
            "streamkit_plain",
            "plain: async generator of ints → chain, drained",
            _f_plain,
        ),
        Competitor(
            "streamkit_envelope",
            "envelope: async generator of `Envelope(i, state)` → chain, drained (the target)",
            _f_envelope,
        ),
        Competitor(
            "streamkit_envelop_unwrap",
            "envelope: async generator of ints → `envelop(state)` → chain → `unwrap()`, drained",
            _f_envelop_unwrap,
        ),
        Competitor(
            "plain_source",
            "the plain source alone (async generator of ints), drained",
            _f_plain_source,
        ),
        Competitor(
            "streamkit_envelope_source",
            "the envelope source alone (async generator of `Envelope(i, state)`), drained",
            _f_envelope_source,
        ),
    ]
    verify = _verify_tagged(
        {
            "chain": lambda size, got: mismatch(got, _expected_chain(size)),
            "source": lambda size, got: mismatch(got, (size, size * (size - 1) // 2)),
        }
    )
    return competitors, verify


ROWS["f"] = _f_rows


@case(
    "f",
    "envelope mode versus plain mode on map → filter → map",
    Target(
        f"envelope mode within 1.3{TIMES} of plain mode (envelope source, no envelop/unwrap)",
        f"envelope {DIVIDE} plain",
        _over_plain("streamkit_envelope"),
        1.3,
    ),
)
def envelope_mode(settings: Settings) -> CaseResult:
    n = settings.size(1_000_000, 2_000)
    competitors, verify = _f_rows(settings)
    timings = time_competitors(competitors, n, settings, verify)
    compiled = compiled_timings("f", ["streamkit_plain", "streamkit_envelope"], n, settings)
    rows = _per_item_rows(timings, n, "streamkit_plain")
    rows += _per_item_rows(compiled, n, "compiled_streamkit_plain")
    result = partial_result("", "", (), rows)
    stages_only = _ratio_or_none(
        _difference(result, "streamkit_envelope", "streamkit_envelope_source"),
        _difference(result, "streamkit_plain", "plain_source"),
    )
    compiled_ratio = _ratio_or_none(
        _value(result, "compiled_streamkit_envelope", "median_ms"),
        _value(result, "compiled_streamkit_plain", "median_ms"),
    )
    notes = [
        _compiled_note(compiled, f"envelope {DIVIDE} plain mode", compiled_ratio),
        f"Envelope mode {DIVIDE} plain mode, as defined above: "
        f"{_fmt(_over_plain('streamkit_envelope')(result))} with an envelope source (the "
        f"target's definition); {_fmt(_over_plain('streamkit_envelop_unwrap')(result))} with "
        "`envelop()` and `unwrap()` stages around the chain. The stages alone (each chain minus "
        f"its source, envelope {DIVIDE} plain): {_fmt(stages_only)}.",
    ]
    return partial_result(
        f"{PIPELINE} (the chain of case (a)) over {n:,} items, drained one item at a time with "
        "`async for` by a consumer that adds the values up, so every row's output is checked. "
        "**Plain mode**: the source is an async generator of ints, "
        "`arange(n) | map_(f) | filter_(p) | map_(g)`. **Envelope mode** (the definition the "
        "target applies to): the same chain over an async generator that yields "
        "`Envelope(i, state)`, every item sharing one `State({'run': 'bench'})`; making the "
        "envelope is part of producing the data, so it happens inside the source and inside "
        "the clock; the consumer reads `item.value` and checks that the last item still "
        "carries the shared state. A second envelope row starts from the plain source and "
        "converts at both ends, `arange(n) | envelop(state) | map_(f) | filter_(p) | map_(g) "
        "| unwrap()`: what making envelopes and taking them apart inside the pipeline adds. "
        "The two source-only rows show how much of each row is the source itself. Ratios are "
        f"row {DIVIDE} plain mode (above 1 = slower than plain mode).",
        f"n = {n:,}",
        (
            "pipeline",
            "median ms",
            "fastest to slowest ms",
            "ns per item",
            f"{DIVIDE} plain mode",
        ),
        rows,
        *notes,
    )


def _compiled_note(compiled: Sequence[Timing], what: str, ratio: float | None) -> str:
    if not compiled:
        return (
            "The compiled envelope is not built, so there are no compiled rows (`make compiled` "
            "builds it; see the section on the compiled envelope below)."
        )
    return (
        f"The rows marked *compiled envelope* are timed in a child process that loads the "
        f"mypyc-compiled `Envelope` (the others use the pure one); their ratios are to the "
        f"child's own reference row. With the compiled envelope, {what}: {_fmt(ratio)}."
    )


def _difference(result: CaseResult, key: str, minus: str) -> float | None:
    a, b = _value(result, key, "median_ms"), _value(result, minus, "median_ms")
    return None if a is None or b is None else a - b


def _fmt(ratio: float | None) -> str:
    return "could not be measured" if ratio is None else format_ratio(ratio)


# =================================================================== (g) setting one key


STATE_SIZES = (1, 1_000)
"""Keys in the shared state of the set_state rows."""
MICRO_STATE_SIZES = (1, 10_000)
"""Keys in the state of the `State.set` micro-timings."""
CHAIN = 9
"""Sets in a row in the chained micro-timing: one more than the depth at which a chain compacts."""


def _big_limits() -> Any:
    from streamkit import StateLimits

    # The default limits (256 keys, 16 KiB) cannot hold these states; every state of the
    # case gets the same generous limits, so the limit accounting runs in every row.
    return StateLimits(max_bytes=4_000_000, max_keys=100_000)


def _shared_state(keys: int) -> State:
    from streamkit import State

    return State({f"k{i}": i for i in range(keys)}, limits=_big_limits())


async def _drain_last(iterable: AsyncIterable[Any]) -> tuple[int, Any]:
    count = 0
    item: Any = None
    async for item in iterable:  # noqa: B007 - the last item is checked after the loop
        count += 1
    return count, item


def _g_pipeline(keys: int, *, with_step: bool) -> Runner:
    from streamkit import Key, envelop, set_state

    state = _shared_state(keys)
    key = Key[int](KEY_NAME)
    set_state(key, inc)

    async def run(n: int) -> object:
        flow = range(n) | envelop(state)
        if with_step:
            flow = flow | set_state(key, inc)
        count, last = await _drain_last(flow)
        if count:
            want_len, want = (keys + 1, n) if with_step else (keys, None)
            got = last.state.get(key)
            if last.value != n - 1 or len(last.state) != want_len or got != want:
                raise AssertionError(f"wrong last item {last!r:.80}")
        return "count", count

    return run


def _g_set(keys: int) -> Runner:
    from streamkit import Key

    state = _shared_state(keys)
    key = Key[int](KEY_NAME)
    set_ = state.set

    async def run(n: int) -> object:
        new = state
        for i in range(n):
            new = set_(key, i)
        if n and (new[key] != n - 1 or len(new) != keys + 1):
            raise AssertionError(f"wrong state after the sets: {len(new)} keys")
        return "count", n

    return run


def _g_chain(keys: int) -> Runner:
    state = _shared_state(keys)
    names = [f"x{j}" for j in range(CHAIN)]

    async def run(n: int) -> object:
        new = state
        for i in range(n):
            new = state
            for name in names:
                new = new.set(name, i)
        if n and (new[names[-1]] != n - 1 or len(new) != keys + CHAIN):
            raise AssertionError(f"wrong state after the sets: {len(new)} keys")
        return "count", n

    return run


def _g_rows(
    label_of: Mapping[str, str], timings: Sequence[Timing], n: int, baselines: Mapping[str, str]
) -> dict[str, Row]:
    """Rows keyed by competitor key; ``baselines`` maps a row to the row its own cost
    excludes (the same pipeline without the step)."""
    medians = {t.competitor.key: t.median for t in timings if t.ok and t.samples}
    rows: dict[str, Row] = {}
    for t in timings:
        key = t.competitor.key
        label = label_of[key]
        if key not in medians:
            rows[key] = _failed_row(t, label, 5)
            continue
        per_item = t.median / n * 1e9
        base = baselines.get(key)
        own: float | None = per_item
        if base is not None:
            own = None if base not in medians else per_item - medians[base] / n * 1e9
        values = {"median_ms": t.median * 1e3, "ns_per_item": per_item}
        if own is not None:
            values["own_ns"] = own
        rows[key] = Row(
            key,
            label,
            (f"{n:,}", format_ms(t.median * 1e3), _ns(per_item), "-" if own is None else _ns(own)),
            values=values,
        )
    return rows


def _with_ratio(row: Row, reference: Row | None) -> Row:
    """Adds the last column: this row's own cost divided by the reference row's."""
    if row.note:
        return row
    ratio = _ratio_or_none(
        row.values.get("own_ns"), None if reference is None else reference.values.get("own_ns")
    )
    if reference is row:
        cell = "1.00 (reference)"
    else:
        cell = "n/a" if ratio is None else format_ratio(ratio)
    note = row.note
    own = row.values.get("own_ns")
    if ratio is None and own is not None and own <= 0:
        # Less than its baseline: the difference is within this run's timing noise.
        note = "n/a: its own cost is within the timing noise of this run (<= 0 ns)"
    return Row(row.key, row.label, (*row.cells, cell), values=row.values, ratio=ratio, note=note)


def _own_ratio(key: str, reference: str) -> Callable[[CaseResult], float | None]:
    def metric(result: CaseResult) -> float | None:
        return _ratio_or_none(_value(result, key, "own_ns"), _value(result, reference, "own_ns"))

    return metric


def _growth_with_n(result: CaseResult) -> float | None:
    """The larger of the two states' own-cost ratios, large N over small N."""
    ratios = [
        _ratio_or_none(_value(result, f"{stem}_large", "own_ns"), _value(result, stem, "own_ns"))
        for stem in (f"streamkit_set_state_{k}" for k in STATE_SIZES)
    ]
    known = [r for r in ratios if r is not None]
    return max(known) if len(known) == len(ratios) else None


@case(
    "g",
    "setting one key on a shared state is O(1) per item",
    Target(
        f"set_state per item on a {STATE_SIZES[1]:,}-key state within 1.5{TIMES} of a 1-key state",
        f"{STATE_SIZES[1]:,} keys {DIVIDE} 1 key (own cost, large N)",
        _own_ratio(f"streamkit_set_state_{STATE_SIZES[1]}_large", "streamkit_set_state_1_large"),
        1.5,
    ),
    Target(
        f"set_state per item does not grow with N (large N within 1.5{TIMES} of small N)",
        f"large N {DIVIDE} small N (own cost, worse state)",
        _growth_with_n,
        1.5,
    ),
    Target(
        f"`State.set` on a {MICRO_STATE_SIZES[1]:,}-key state within 1.5{TIMES} of a 1-key state",
        f"{MICRO_STATE_SIZES[1]:,} keys {DIVIDE} 1 key",
        _own_ratio(f"streamkit_state_set_{MICRO_STATE_SIZES[1]}", "streamkit_state_set_1"),
        1.5,
    ),
)
def set_one_key(settings: Settings) -> CaseResult:
    small_n, large_n = (100_000, 1_000_000) if not settings.quick else (500, 2_000)
    micro_n = settings.size(200_000, 2_000)
    chain_n = settings.size(300, 20)
    verify = _verify_tagged({"count": lambda size, got: mismatch(got, size)})

    def keys_text(keys: int) -> str:
        return "1-key" if keys == 1 else f"{keys:,}-key"

    labels: dict[str, str] = {}
    baselines: dict[str, str] = {}
    reference_of: dict[str, str] = {}  # the same row with the 1-key state
    rows: dict[str, Row] = {}
    for suffix, n in (("", small_n), ("_large", large_n)):
        competitors: list[Competitor] = []
        for keys in STATE_SIZES:
            base, step = f"streamkit_envelop_{keys}{suffix}", f"streamkit_set_state_{keys}{suffix}"
            labels[base] = f"`envelop(state)` only, {keys_text(keys)} state (baseline)"
            labels[step] = f"`envelop(state) | set_state(KEY, f)`, {keys_text(keys)} state"
            baselines[step] = base
            reference_of[base] = f"streamkit_envelop_1{suffix}"
            reference_of[step] = f"streamkit_set_state_1{suffix}"
            competitors += [
                Competitor(base, labels[base], partial(_g_pipeline, keys, with_step=False)),
                Competitor(step, labels[step], partial(_g_pipeline, keys, with_step=True)),
            ]
        rows |= _g_rows(labels, time_competitors(competitors, n, settings, verify), n, baselines)

    micro: list[Competitor] = []
    for keys in MICRO_STATE_SIZES:
        key = f"streamkit_state_set_{keys}"
        labels[key] = f"`state.set(KEY, i)` on a {keys_text(keys)} state (micro-timing)"
        reference_of[key] = "streamkit_state_set_1"
        micro.append(Competitor(key, labels[key], partial(_g_set, keys)))
    rows |= _g_rows(labels, time_competitors(micro, micro_n, settings, verify), micro_n, {})
    chained: list[Competitor] = []
    for keys in MICRO_STATE_SIZES:
        key = f"streamkit_chain_{keys}"
        labels[key] = (
            f"{CHAIN} chained `.set()` calls on a {keys_text(keys)} state, per chain (not a target)"
        )
        reference_of[key] = "streamkit_chain_1"
        chained.append(Competitor(key, labels[key], partial(_g_chain, keys)))
    rows |= _g_rows(labels, time_competitors(chained, chain_n, settings, verify), chain_n, {})

    ordered = [_with_ratio(row, rows.get(reference_of[key])) for key, row in rows.items()]
    big, micro_big = STATE_SIZES[1], MICRO_STATE_SIZES[1]
    return partial_result(
        f"Each item is an envelope whose state is one shared `State` of 1 key or of {big:,} "
        f"keys; `set_state(KEY, f)` (`f = x + 1`) sets one more key on it, making a new state "
        "per item that points at the shared one. The pipelines run over a `range` of "
        f"{small_n:,} and of {large_n:,} items (`range(n) | envelop(state) [| set_state(KEY, "
        "f)]`), drained by a consumer that checks the last item. The step's **own cost** per "
        "item is the pipeline's median minus the median of the same pipeline without it "
        "(`envelop(state)` only, same state, same N). The micro-timings call `state.set(KEY, "
        f"i)` {micro_n:,} times in a plain loop on a state of 1 and of {micro_big:,} keys; the "
        f"last rows chain {CHAIN} sets per item from the shared state (`state.set(...)"
        ".set(...)...`), one more than the depth (8) at which streamkit compacts an item's "
        "own nodes of a chain into one, as a pipeline with nine state steps does (a shared "
        "state below them is never copied). The default "
        f"`StateLimits` (256 keys) cannot hold a {big:,}-key state, so every state here has "
        "`StateLimits(max_bytes=4_000_000, max_keys=100_000)`: the limit accounting runs in "
        f"every row. The last column is the own cost {DIVIDE} the same row with the 1-key "
        "state.",
        f"N = {small_n:,} and {large_n:,}; {micro_n:,} single sets; {chain_n:,} chains",
        (
            "variant",
            "N",
            "median ms",
            "ns per item",
            "own ns per item",
            f"own cost {DIVIDE} 1-key state",
        ),
        ordered,
    )


# =================================================================== (h) a reduction point


async def _counted_range(n: int, done: list[int]) -> AsyncIterator[int]:
    """:func:`arange` that records, after its last item, that it was read to the end."""
    for i in range(n):
        yield i
    done.append(n)


def add(acc: int, x: int) -> int:
    return acc + x


def _h_check_envelopes(n: int, got: object, total: int | None) -> str | None:
    if not isinstance(got, list):
        return f"got {type(got).__name__}, not a list"
    items = cast("list[object]", got)
    if len(items) != n:
        return f"got {len(items):,} items, expected {n:,}"
    for i in (*range(0, n, 997), n - 1) if n else ():
        item: Any = items[i]
        value = getattr(item, "value", None)
        state = getattr(item, "state", None)
        if value != i or state is None or (total is not None and state[KEY_NAME] != total):
            return f"item {i} is {item!r:.60}"
    return None


def _h_runner(kind: str) -> Runner:
    from streamkit import Key, collect, drain, envelop, reduce_point

    key = Key[int](KEY_NAME)
    if kind.startswith("reduce"):
        reduce_point(key, add, 0)
    else:
        envelop()

    async def run(n: int) -> object:
        done: list[int] = []
        source = _counted_range(n, done)
        if kind == "list":
            return "ints", await collect(source)
        if kind == "envelop_collect":
            return "envelopes", await collect(source | envelop())
        if kind == "envelop_drain":
            await drain(source | envelop())
            return "drained", done
        # The reducer as the state issue writes it; `add` (in the check below) is the same.
        reducer: Callable[[int, int], int] = lambda acc, x: acc + x  # noqa: E731
        stage = reduce_point(key, reducer, 0)
        if kind == "reduce_collect":
            return "reduced", await collect(source | stage)
        await drain(source | stage)
        return "drained", done

    if kind == "reduce_drain":
        # `drain` returns nothing: check the same stage's full output once, before timing.
        got = asyncio.run(collect(range(1_000) | reduce_point(key, add, 0)))
        problem = _h_check_envelopes(1_000, got, sum(range(1_000)))
        if problem is not None:
            raise AssertionError(f"reduce_point gives wrong items: {problem}")
    return run


def _h_rows(settings: Settings) -> tuple[list[Competitor], Callable[[int, object], str | None]]:
    competitors = [
        Competitor(
            "streamkit_reduce_drain",
            "`reduce_point(KEY, lambda acc, x: acc + x, 0)`, drained (the target)",
            lambda: _h_runner("reduce_drain"),
        ),
        Competitor(
            "streamkit_reduce_collect",
            "`reduce_point(...)`, `collect()`ed",
            lambda: _h_runner("reduce_collect"),
        ),
        Competitor(
            "list_collect", "`collect(source)` into a list of ints", lambda: _h_runner("list")
        ),
        Competitor(
            "streamkit_envelop_collect",
            "`collect(source | envelop())` (the envelopes alone)",
            lambda: _h_runner("envelop_collect"),
        ),
        Competitor(
            "streamkit_envelop_drain",
            "`drain(source | envelop())`",
            lambda: _h_runner("envelop_drain"),
        ),
    ]
    verify = _verify_tagged(
        {
            "ints": lambda size, got: mismatch(got, list(range(size))),
            "envelopes": lambda size, got: _h_check_envelopes(size, got, None),
            "reduced": lambda size, got: _h_check_envelopes(size, got, size * (size - 1) // 2),
            "drained": lambda size, got: mismatch(got, [size]),
        }
    )
    return competitors, verify


ROWS["h"] = _h_rows


@case(
    "h",
    "a reduction point versus collecting into a list",
    Target(
        f"`reduce_point` over the stream within 3{TIMES} of collecting it into a list",
        f"reduce_point drained {DIVIDE} collect()",
        lambda result: _ratio_or_none(
            _value(result, "streamkit_reduce_drain", "median_ms"),
            _value(result, "list_collect", "median_ms"),
        ),
        3.0,
    ),
)
def reduction_point(settings: Settings) -> CaseResult:
    n = settings.size(1_000_000, 2_000)
    competitors, verify = _h_rows(settings)
    total = n * (n - 1) // 2
    timings = time_competitors(competitors, n, settings, verify)
    compiled = compiled_timings("h", ["streamkit_reduce_drain", "list_collect"], n, settings)
    rows = _per_item_rows(timings, n, "list_collect")
    rows += _per_item_rows(compiled, n, "compiled_list_collect")
    result = partial_result("", "", (), rows)

    def over(key: str, reference: str) -> str:
        return _fmt(
            _ratio_or_none(_value(result, key, "median_ms"), _value(result, reference, "median_ms"))
        )

    return partial_result(
        f"{n:,} ints from an async generator (the same for every row) through "
        "`reduce_point(KEY, lambda acc, x: acc + x, 0)`, which folds the whole input "
        f"(buffering the items: {n:,} is within the default `memory_limit` of 1,000,000, so "
        "nothing spills), then re-emits every item as an envelope with the total in its "
        "state. The target compares it, drained with `streamkit.drain`, with `collect()`ing "
        "the source into a list of ints. A reduction point re-emits envelopes, so the rows "
        "with `envelop()` are the floor of anything that does; collecting envelopes is dearer "
        "than draining them, because a list of a million small container objects makes "
        "Python's cyclic garbage collector walk them repeatedly while the list grows (ints "
        "are not tracked). `drain` returns nothing, so the drained rows check that the source "
        "was read to the end, and the reduce_point stage's full output is checked on 1,000 "
        "items before timing; the collected rows are checked item by item (every 997th). "
        f"Ratios are row {DIVIDE} `collect()` into a list.",
        f"n = {n:,}",
        ("pipeline", "median ms", "fastest to slowest ms", "ns per item", f"{DIVIDE} list"),
        rows,
        f"Drained `reduce_point` {DIVIDE} collect() into a list: "
        f"{over('streamkit_reduce_drain', 'list_collect')}; {DIVIDE} `collect(source | "
        f"envelop())`: {over('streamkit_reduce_drain', 'streamkit_envelop_collect')}; "
        f"{DIVIDE} `drain(source | envelop())`: "
        f"{over('streamkit_reduce_drain', 'streamkit_envelop_drain')}. Collected "
        f"`reduce_point` {DIVIDE} `collect(source | envelop())`: "
        f"{over('streamkit_reduce_collect', 'streamkit_envelop_collect')}. The total of "
        f"{total:,} is in every item's state.",
        _compiled_note(
            compiled,
            f"drained `reduce_point` {DIVIDE} collect() into a list",
            _ratio_or_none(
                _value(result, "compiled_streamkit_reduce_drain", "median_ms"),
                _value(result, "compiled_list_collect", "median_ms"),
            ),
        ),
    )


# =================================================================== (i) spilling memory


def _i_runner(memory_limit: int | None) -> Runner:
    from streamkit import Key, reduce_point

    key = Key[int](KEY_NAME)
    reduce_point(key, add, 0, memory_limit=memory_limit)

    async def run(n: int) -> object:
        stage = reduce_point(key, add, 0, memory_limit=memory_limit)
        count, last = await _drain_last(arange(n) | stage)
        if count != n or (n and (last.value != n - 1 or last.state[key] != n * (n - 1) // 2)):
            raise AssertionError(f"{count} items, the last {last!r:.60}")
        return count

    return run


def _peak(runner: Runner, n: int, limit: float) -> int:
    """tracemalloc's peak above the starting level while ``runner`` processes ``n`` items."""

    async def traced() -> int:
        async with asyncio.timeout(limit):
            gc.collect()
            tracemalloc.reset_peak()
            baseline, _ = tracemalloc.get_traced_memory()
            await runner(n)
            _, peak = tracemalloc.get_traced_memory()
            return peak - baseline

    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    try:
        return asyncio.run(traced())
    finally:
        if started:
            tracemalloc.stop()


def _peak_ratio(key: str, other_key: str, a: str, b: str) -> Callable[[CaseResult], float | None]:
    def metric(result: CaseResult) -> float | None:
        return _ratio_or_none(_value(result, key, a), _value(result, other_key, b))

    return metric


@case(
    "i",
    "peak memory of a spilling reduction point",
    Target(
        f"spilled peak independent of N (large N within 1.5{TIMES} of small N)",
        f"spilled peak, large N {DIVIDE} small N",
        _peak_ratio("streamkit_spill", "streamkit_spill", "peak_large_bytes", "peak_small_bytes"),
        1.5,
    ),
    Target(
        "spilled peak below the buffered peak (large N)",
        f"spilled {DIVIDE} buffered peak",
        _peak_ratio("streamkit_spill", "streamkit_buffer", "peak_large_bytes", "peak_large_bytes"),
        1.0,
    ),
)
def spilling(settings: Settings) -> CaseResult:
    small, large = (200_000, 1_000_000) if not settings.quick else (2_000, 10_000)
    memory_limit = settings.size(10_000, 500)
    modes: list[tuple[str, str, int | None]] = [
        (
            "streamkit_spill",
            f"`reduce_point(..., memory_limit={memory_limit:,})` (spills)",
            memory_limit,
        ),
        ("streamkit_buffer", "`reduce_point(..., memory_limit=None)` (buffers all)", None),
    ]
    rows: list[Row] = []
    for key, label, limit in modes:
        try:
            runner = _i_runner(limit)
            _peak(runner, max(small // 100, 1), settings.run_timeout)  # warm-up, not kept
            peaks = [_peak(runner, size, settings.run_timeout) for size in (small, large)]
        except UNAVAILABLE_ERRORS as exc:
            note = f"n/a: {describe_error(exc)}"
        except TimeoutError:
            note = f"error: a run took longer than {settings.run_timeout:g} s"
        except Exception as exc:
            note = f"error: {describe_error(exc)}"
        else:
            ratio = _ratio_or_none(peaks[1], peaks[0])
            rows.append(
                Row(
                    key,
                    label,
                    (
                        f"{peaks[0] / 1024:,.0f} KiB",
                        f"{peaks[1] / 1024:,.0f} KiB",
                        format_bytes(peaks[1] - peaks[0]),
                        "-" if ratio is None else format_ratio(ratio),
                    ),
                    values={"peak_small_bytes": peaks[0], "peak_large_bytes": peaks[1]},
                    ratio=ratio,
                )
            )
            continue
        settings.log(f"    {label}: {note}")
        rows.append(Row(key, label, ("-",) * 4, note=note))
    return partial_result(
        f"`arange(n) | reduce_point(KEY, add, 0, memory_limit=...)` over N = {small:,} and "
        f"N = {large:,} ints, drained by a consumer that checks the count and the total in "
        "the last item. With a `memory_limit` the stage keeps at most that many items in "
        "memory and pickles the rest, in chunks of up to 4,096, to an anonymous temporary "
        "file, read back a chunk at a time; with `memory_limit=None` it holds every item. Peak "
        "memory is tracemalloc's peak of traced Python allocations above the level at the "
        "start of the run (fresh event loop, after `gc.collect()`), once per mode and size "
        "after a small warm-up run; nothing here is timed. The file's contents are on disk "
        "(or in the page cache), not in the traced heap.",
        f"N = {small:,} and {large:,}, memory_limit = {memory_limit:,}",
        (
            "mode",
            f"peak KiB, N = {small:,}",
            f"peak KiB, N = {large:,}",
            "growth",
            f"large {DIVIDE} small",
        ),
        rows,
        f"Targets: the spilled peak at N = {large:,} is at most 1.5{TIMES} the one at "
        f"N = {small:,}, and at most ({LE}) the buffered peak at N = {large:,}.",
    )
