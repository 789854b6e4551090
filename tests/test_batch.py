"""BatchPipeline: the batch model, and running the same steps as a stream."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamkit import collect, map_
from streamkit._batch import INPUT, BatchPipeline
from streamkit._records import Envelope, Key, State, StateLimitError, StateLimits
from streamkit._state import reduce_point, set_state
from streamkit.testing import check_stage
from tests.conftest import agen, notes

TOTAL = Key[int]("total")


def words_job() -> BatchPipeline:
    return (
        BatchPipeline()
        .add("words", lambda lines, state: [w for line in lines for w in line.split()])
        .add("lengths", lambda word, state: len(word), per_item=True)
        .add(TOTAL, lambda lengths, state: sum(lengths))
    )


async def test_run_accumulates_every_result_by_key() -> None:
    state = await words_job().run(["to be", "or not"])
    assert dict(state) == {
        "input": ["to be", "or not"],
        "words": ["to", "be", "or", "not"],
        "lengths": [2, 2, 2, 3],
        "total": 9,
    }
    assert state[TOTAL] == 9
    assert state[INPUT] == ["to be", "or not"]


async def test_steps_see_the_previous_data_and_the_state_so_far() -> None:
    seen: list[tuple[Any, dict[str, Any]]] = []

    def record(data: Any, state: State) -> Any:
        seen.append((data, dict(state)))
        return data

    job = BatchPipeline().add("a", lambda data, state: len(data)).add("b", record)
    await job.run("xyz")
    assert seen == [(3, {"input": ["x", "y", "z"], "a": 3})]


async def test_per_item_steps_see_their_own_item_values() -> None:
    views: list[dict[str, Any]] = []

    def record(item: Any, state: State) -> Any:
        views.append(dict(state))
        return item

    job = (
        BatchPipeline()
        .add("double", lambda x, state: 2 * x, per_item=True)
        .add("view", record, per_item=True)
    )
    await job.run([1, 2])
    assert views == [{"input": 1, "double": 2}, {"input": 2, "double": 4}]


async def test_a_whole_step_gets_the_previous_whole_result_as_it_is() -> None:
    job = BatchPipeline().add("sum", lambda d, s: sum(d)).add("pair", lambda d, s: (d, d))
    assert (await job.run([1, 2]))["pair"] == (3, 3)
    items = await collect([1, 2] | job.to_stream())
    assert [item.value for item in items] == [3, 3]
    assert items[0].state["pair"] == (3, 3)


async def test_a_whole_result_that_is_not_a_list_is_one_item() -> None:
    job = BatchPipeline().add("sum", lambda d, s: sum(d)).add("neg", lambda x, s: -x, per_item=True)
    state = await job.run([1, 2, 3])
    assert state["neg"] == [-6]
    items = await collect([1, 2, 3] | job.to_stream())
    assert [item.value for item in items] == [-6]


async def test_async_steps_and_sources() -> None:
    async def total(data: list[int], state: State) -> int:
        await asyncio.sleep(0)
        return sum(data)

    async def double(x: int, state: State) -> int:
        await asyncio.sleep(0)
        return 2 * x

    job = BatchPipeline().add("double", double, per_item=True).add("total", total)
    state = await job.run(agen([1, 2]))
    assert (state["double"], state["total"]) == ([2, 4], 6)
    items = await collect(agen([1, 2]) | job.to_stream())
    assert [item.state["total"] for item in items] == [6]


def test_add_returns_a_new_pipeline() -> None:
    empty = BatchPipeline()
    one = empty.add("a", lambda d, s: d)
    assert empty.keys == ()
    assert one.keys == ("a",)
    assert one.add("b", lambda d, s: d, per_item=True).keys == ("a", "b")
    assert repr(one.add("b", lambda d, s: d, per_item=True)) == "<BatchPipeline [a, b (per item)]>"


def test_add_validates() -> None:
    job = BatchPipeline().add("a", lambda d, s: d)
    with pytest.raises(ValueError, match="'a' is already used"):
        job.add("a", lambda d, s: d)
    with pytest.raises(ValueError, match="'input' is reserved"):
        job.add("input", lambda d, s: d)
    with pytest.raises(TypeError, match="step must be callable"):
        job.add("b", 3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="per_item must be a bool"):
        job.add("b", lambda d, s: d, per_item="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="key must be a Key or a str"):
        job.add(1, lambda d, s: d)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="limits must be a StateLimits"):
        BatchPipeline(limits=1)  # type: ignore[arg-type]


NOTE = "streamkit: raised by per_item step 'check' on item 1 of its input"


async def test_errors_name_the_step() -> None:
    def fail(x: int, state: State) -> int:
        if x == 2:
            raise ArithmeticError("two")
        return x

    job = BatchPipeline().add("check", fail, per_item=True)
    with pytest.raises(ArithmeticError) as raised:
        await job.run([1, 2])
    assert notes(raised.value) == [
        "streamkit: raised by per_item step 'check' on item 1 of its input"
    ]
    with pytest.raises(ArithmeticError) as raised:
        await collect([1, 2] | job.to_stream())
    assert notes(raised.value) == [
        "streamkit: raised by per_item step 'check' on item 1 of its input"
    ]

    whole = BatchPipeline().add("boom", lambda d, s: 1 / 0)
    with pytest.raises(ZeroDivisionError) as raised_whole:
        await whole.run([1])
    assert notes(raised_whole.value) == [
        "streamkit: raised by the batch step 'boom' of a BatchPipeline"
    ]
    with pytest.raises(ZeroDivisionError):
        await collect([1] | whole.to_stream())


async def test_limits_apply_when_given() -> None:
    job = BatchPipeline(limits=StateLimits(max_bytes=50)).add("copy", lambda d, s: d * 10)
    with pytest.raises(StateLimitError, match="'copy'"):
        await job.run(["abc"])
    assert len((await BatchPipeline().add("copy", lambda d, s: d * 9999).run(["abc"]))["copy"]) > 0


async def test_to_stream_gives_items_what_the_batch_would() -> None:
    items = await collect(["to be", "or not"] | words_job().to_stream())
    assert [item.value for item in items] == [9]
    assert dict(items[0].state) == dict(await words_job().run(["to be", "or not"]))

    per_item_end = words_job().add("upper", lambda n, s: n * 10, per_item=True)
    items = await collect(["to be"] | per_item_end.to_stream())
    assert [(item.value, item.state["upper"]) for item in items] == [(40, 40)]


async def test_to_stream_per_item_steps_stream() -> None:
    job = BatchPipeline().add("double", lambda x, s: 2 * x, per_item=True)
    out = await collect(range(1000) | job.to_stream() | map_(lambda x: x + 1))
    assert [item.value for item in out[:3]] == [1, 3, 5]
    assert out[0].state == {"input": 0, "double": 0}


async def test_to_stream_cleans_up_however_it_stops() -> None:
    job = words_job().add("n", lambda x, s: [x, x])
    await check_stage(job.to_stream, ["a b", "c"], expected=None)
    streaming = BatchPipeline().add("double", lambda x, s: 2 * x, per_item=True)
    await check_stage(streaming.to_stream, range(10))


async def test_from_stream_wraps_a_stage_as_a_batch_step() -> None:
    job = (
        BatchPipeline()
        .add("lengths", BatchPipeline.from_stream(map_(len)))
        .add("totals", BatchPipeline.from_stream(reduce_point(TOTAL, lambda a, x: a + x, 0)))
    )
    state = await job.run(["a", "bcd"])
    assert state["lengths"] == [1, 3]
    assert state["totals"] == [1, 3]


async def test_from_stream_with_state_feeds_envelopes() -> None:
    stage = set_state("seen", lambda x, state: len(state["input"]), with_state=True)
    job = BatchPipeline().add("out", BatchPipeline.from_stream(stage, with_state=True))
    assert (await job.run(["a", "b"]))["out"] == ["a", "b"]
    capture: list[Any] = []
    spy = map_(lambda x: capture.append(x) or x)
    await BatchPipeline().add("x", BatchPipeline.from_stream(spy, with_state=True)).run([1])
    assert capture == [1]  # map_ is envelope-transparent: it sees the value


def test_from_stream_validates() -> None:
    with pytest.raises(TypeError, match="stage must be a Stage"):
        BatchPipeline.from_stream(len)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="with_state must be a bool"):
        BatchPipeline.from_stream(map_(len), with_state=None)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- differential

PER_ITEM = {
    "double": lambda x, s: 2 * x,
    "plus_state": lambda x, s: x + sum(v if isinstance(v, int) else len(v) for v in s.values()),
    "mod": lambda x, s: x % 7,
}


def as_list(data: Any) -> list[Any]:
    return list(data) if isinstance(data, list | tuple) else [data]


WHOLE = {
    "sorted": lambda d, s: sorted(as_list(d), reverse=True),
    "sum": lambda d, s: sum(as_list(d)),
    "odd": lambda d, s: [x for x in as_list(d) if x % 2],
    "state_size": lambda d, s: [len(s)] * 2,
    "first_two": lambda d, s: as_list(d)[:2],
    "pair": lambda d, s: (len(as_list(d)), sum(as_list(d))),
}


@given(
    items=st.lists(st.integers(min_value=-20, max_value=20), max_size=8),
    steps=st.lists(
        st.sampled_from(
            [("item", name) for name in PER_ITEM] + [("whole", name) for name in WHOLE]
        ),
        max_size=5,
    ),
)
async def test_to_stream_agrees_with_run(items: list[int], steps: list[tuple[str, str]]) -> None:
    job = BatchPipeline()
    segment: list[str] = ["input"]
    for position, (kind, name) in enumerate(steps):
        key = f"{position}:{name}"
        if kind == "item":
            job = job.add(key, PER_ITEM[name], per_item=True)
            segment.append(key)
        else:
            job = job.add(key, WHOLE[name])
            segment = []
    state = await job.run(items)
    out = await collect(items | job.to_stream())
    data = state[job.keys[-1]] if job.keys else items
    assert [e.value for e in out] == as_list(data)
    for key in state:
        if key in segment:
            assert [e.state[key] for e in out] == state[key]
        else:
            assert all(e.state[key] == state[key] for e in out)
    assert all(set(e.state) == set(state) for e in out)
    assert all(isinstance(e, Envelope) for e in out)
