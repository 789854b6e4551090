"""Cases (a) and (b): a map -> filter -> map pipeline of plain functions."""

from __future__ import annotations

from functools import cache

from benchmarks.common import (
    afilter,
    amap,
    amap_sync_source,
    arange,
    checksum,
    double,
    drain_sum,
    expected_pipeline,
    for_aiostream,
    inc,
    mismatch,
    multiple_of_3,
    not_multiple_of_3,
)
from benchmarks.harness import (
    DIVIDE,
    TIMES,
    TIMING_HEADERS,
    CaseResult,
    Competitor,
    Runner,
    Settings,
    Target,
    case,
    partial_result,
    streamkit_over,
    time_competitors,
    timing_rows,
)

PIPELINE = "`map(x + 1)` → `filter(x % 3 != 0)` → `map(x * 2)`"


@cache
def _expected_sum(n: int) -> tuple[int, ...]:
    return checksum(expected_pipeline(n), ordered=False)


def _verify_sum(n: int, result: object) -> str | None:
    return mismatch(result, _expected_sum(n))


# ------------------------------------------------------------------ (a) async generator source


def _streamkit_a() -> Runner:
    from streamkit import filter_, map_

    map_(inc)  # constructing the stages must work, or the competitor is "n/a"
    filter_(not_multiple_of_3)

    async def run(n: int) -> object:
        return await drain_sum(arange(n) | map_(inc) | filter_(not_multiple_of_3) | map_(double))

    return run


def _handwritten_a() -> Runner:
    async def run(n: int) -> object:
        return await drain_sum(amap(double, afilter(not_multiple_of_3, amap(inc, arange(n)))))

    return run


def _aiostream_a() -> Runner:
    from aiostream import pipe, stream

    async def run(n: int) -> object:
        xs = (
            stream.iterate(arange(n))
            | pipe.map(for_aiostream(inc))
            | pipe.filter(not_multiple_of_3)
            | pipe.map(for_aiostream(double))
        )
        result: object = None
        async with xs.stream() as streamer:
            result = await drain_sum(streamer)
        return result

    return run


def _asyncstdlib_a() -> Runner:
    import asyncstdlib as a

    async def run(n: int) -> object:
        return await drain_sum(a.map(double, a.filter(not_multiple_of_3, a.map(inc, arange(n)))))

    return run


def _aioitertools_a() -> Runner:
    from aioitertools.builtins import map as ai_map
    from aioitertools.itertools import filterfalse

    async def run(n: int) -> object:
        # aioitertools has no filter(); filterfalse with the negated predicate is equivalent.
        return await drain_sum(ai_map(double, filterfalse(multiple_of_3, ai_map(inc, arange(n)))))

    return run


@case(
    "a",
    "map → filter → map over an async generator",
    Target(
        "streamkit at least 5 % faster than hand-written nested async generators",
        f"streamkit {DIVIDE} hand-written",
        streamkit_over("handwritten"),
        0.95,
    ),
    Target(
        f"streamkit at least 5{TIMES} faster than aiostream",
        f"streamkit {DIVIDE} aiostream",
        streamkit_over("aiostream"),
        0.2,
    ),
)
def pipeline_async_source(settings: Settings) -> CaseResult:
    n = settings.size(1_000_000, 2_000)
    competitors = [
        Competitor(
            "streamkit", "streamkit `map_` → `filter_` → `map_`", _streamkit_a, reference=True
        ),
        Competitor("handwritten", "hand-written: one async generator per stage", _handwritten_a),
        Competitor("aiostream", "aiostream `pipe.map` → `pipe.filter` → `pipe.map`", _aiostream_a),
        Competitor("asyncstdlib", "asyncstdlib `map(filter(map(...)))`", _asyncstdlib_a),
        Competitor(
            "aioitertools",
            "aioitertools `map(filterfalse(map(...)))` (it has no `filter`)",
            _aioitertools_a,
        ),
    ]
    rows = timing_rows(time_competitors(competitors, n, settings, _verify_sum))
    return partial_result(
        f"{PIPELINE}, three plain `def` functions, over {n:,} ints produced by an async "
        "generator, consumed one item at a time with `async for` (the consumer adds the items "
        "up so every competitor's output is checked). This is the per-item overhead of the "
        "stages themselves.",
        f"n = {n:,}",
        TIMING_HEADERS,
        rows,
    )


# ------------------------------------------------------------------ (b) list source, collect()


def _streamkit_b(lists: dict[int, list[int]]) -> Runner:
    from streamkit import collect, filter_, map_

    map_(inc)
    filter_(not_multiple_of_3)

    async def run(n: int) -> object:
        return await collect(lists[n] | map_(inc) | filter_(not_multiple_of_3) | map_(double))

    return run


def _sync_loop_b(lists: dict[int, list[int]]) -> Runner:
    async def run(n: int) -> object:
        out: list[int] = []
        for x in lists[n]:
            y = inc(x)
            if not_multiple_of_3(y):
                out.append(double(y))
        return out

    return run


def _handwritten_b(lists: dict[int, list[int]]) -> Runner:
    async def run(n: int) -> object:
        stages = amap(double, afilter(not_multiple_of_3, amap_sync_source(inc, lists[n])))
        return [y async for y in stages]

    return run


@case(
    "b",
    "map → filter → map over a list, collected",
    Target(
        f"streamkit within 1.3{TIMES} of a plain synchronous loop",
        f"streamkit {DIVIDE} sync loop",
        streamkit_over("sync_loop"),
        1.3,
    ),
)
def pipeline_list_source(settings: Settings) -> CaseResult:
    n = settings.size(1_000_000, 2_000)
    sizes = {n, max(n // 10, 1)}  # the measured size and the warm-up size
    lists = {size: list(range(size)) for size in sizes}
    expected = {size: expected_pipeline(size) for size in sizes}

    def verify(size: int, result: object) -> str | None:
        return mismatch(result, expected[size])

    competitors = [
        Competitor(
            "streamkit",
            "streamkit `collect()` of `map_` → `filter_` → `map_`",
            lambda: _streamkit_b(lists),
            reference=True,
        ),
        Competitor(
            "sync_loop",
            "plain synchronous `for` loop appending to a list",
            lambda: _sync_loop_b(lists),
        ),
        Competitor(
            "handwritten",
            "hand-written async generators + `[y async for y in ...]`",
            lambda: _handwritten_b(lists),
        ),
    ]
    rows = timing_rows(time_competitors(competitors, n, settings, verify))
    return partial_result(
        f"The same {PIPELINE} over a list of {n:,} ints that exists before the clock starts, "
        "collected into a list. The baseline is what the work costs without any async "
        "machinery: a plain synchronous loop (run inside the same coroutine wrapper as the "
        "others). A library that fuses consecutive plain-function stages into one loop over a "
        "synchronous source can approach it.",
        f"n = {n:,}",
        TIMING_HEADERS,
        rows,
    )
