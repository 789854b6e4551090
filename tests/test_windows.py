"""Time windows (`windowed`) and `chunk_until`: against simple list models, under checkpoints."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamkit import (
    DeadLetters,
    Envelope,
    Hopping,
    Late,
    LateItemError,
    MemoryStore,
    Run,
    Session,
    Sliding,
    State,
    Tumbling,
    Window,
    WindowKind,
    chunk_until,
    collect,
    current_clock,
    use_clock,
    windowed,
)
from streamkit.testing import check_stage, virtual_clock

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Coroutine

Event = tuple[int, int]
"""``(key, time)``."""


def time_of(event: Event) -> float:
    return event[1]


def key_of(event: Event) -> int:
    return event[0]


# --------------------------------------------------------------------------- the model


def model(
    kind: WindowKind, events: list[Event], out_of_order: float, grace: float
) -> tuple[list[tuple[int, float, float, list[Event]]], list[int]]:
    """Windows ``(key, start, end, items)`` in emission order, and the indices of late items.

    Written for clarity, not speed: every window is a dict in one list, scanned at each step.
    """
    latest = -math.inf
    windows: list[dict[str, Any]] = []
    out: list[tuple[int, float, float, list[Event]]] = []
    late: list[int] = []
    sliding = isinstance(kind, Sliding)

    def closed(end: float, watermark: float) -> bool:
        return watermark > end + grace if sliding else watermark >= end + grace

    def emit(done: list[dict[str, Any]]) -> None:
        done.sort(key=lambda w: (w["end"], w["start"], w["first"]))
        for w in done:
            windows.remove(w)
            items = [events[i] for i in sorted(w["items"])]
            if sliding:
                items = [e for e in items if w["start"] < e[1] <= w["end"]]
            out.append((w["key"], w["start"], w["end"], items))

    for index, (key, t) in enumerate(events):
        watermark = latest - out_of_order
        if isinstance(kind, Tumbling | Hopping):
            hop = kind.size if isinstance(kind, Tumbling) else kind.hop
            starts = [
                k * hop
                for k in range(math.floor((t - kind.size) / hop) - 1, math.floor(t / hop) + 2)
                if k * hop <= t < k * hop + kind.size
            ]
            if closed(min(starts) + kind.size, watermark):
                late.append(index)
                continue
            for start in starts:
                found = [w for w in windows if w["key"] == key and w["start"] == start]
                if found:
                    found[0]["items"].append(index)
                else:
                    windows.append(
                        {
                            "key": key,
                            "start": start,
                            "end": start + kind.size,
                            "items": [index],
                            "first": index,
                        }
                    )
        elif isinstance(kind, Sliding):
            if closed(t, watermark):
                late.append(index)
                continue
            mine = [w for w in windows if w["key"] == key]
            for w in mine:
                w["items"].append(index)  # filtered by span on emission
            if not any(w["end"] == t for w in mine):
                # The new window holds every earlier on-time item of the key still needed.
                earlier = [
                    i
                    for i, (k, u) in enumerate(events[:index])
                    if k == key and i not in late and t - kind.size < u <= t
                ]
                windows.append(
                    {
                        "key": key,
                        "start": t - kind.size,
                        "end": t,
                        "items": [*earlier, index],
                        "first": index,
                    }
                )
        else:
            assert isinstance(kind, Session)
            if closed(t + kind.gap, watermark):
                late.append(index)
                continue
            start, end, items = t, t + kind.gap, [index]
            for w in [w for w in windows if w["key"] == key]:
                if w["start"] < end and start < w["end"]:
                    start, end = min(start, w["start"]), max(end, w["end"])
                    items += w["items"]
                    windows.remove(w)
            windows.append(
                {"key": key, "start": start, "end": end, "items": items, "first": min(items)}
            )
        latest = max(latest, t)
        watermark = latest - out_of_order
        emit([w for w in windows if closed(w["end"], watermark)])
    emit(list(windows))
    return out, late


def kinds() -> st.SearchStrategy[WindowKind]:
    sizes = st.integers(1, 20)
    return st.one_of(
        sizes.map(Tumbling),
        sizes.flatmap(lambda size: st.integers(1, size).map(lambda hop: Hopping(size, hop=hop))),
        sizes.map(Sliding),
        st.integers(1, 15).map(lambda gap: Session(gap=gap)),
    )


EVENTS = st.lists(st.tuples(st.integers(0, 2), st.integers(0, 100)), max_size=40)


# --------------------------------------------------------------------------- differential


@settings(max_examples=300, deadline=None)
@given(
    kind=kinds(),
    events=EVENTS,
    out_of_order=st.integers(0, 30),
    grace=st.integers(0, 10),
    keyed=st.booleans(),
)
async def test_windows_agree_with_the_list_model(
    kind: WindowKind, events: list[Event], out_of_order: int, grace: int, keyed: bool
) -> None:
    if not keyed:
        events = [(0, t) for _, t in events]
    late: list[Late] = []
    stage = windowed(
        kind,
        time=time_of,
        key=key_of if keyed else None,
        out_of_order=out_of_order,
        grace=grace,
        on_late=late.append,
    )
    out = await collect(events | stage)
    expected, expected_late = model(kind, events, out_of_order, grace)
    got = [(w.key if keyed else 0, w.start, w.end, w.value) for w in out]
    assert got == expected
    assert all(w.final for w in out)
    assert [record.index for record in late] == expected_late
    assert [record.item for record in late] == [events[i] for i in expected_late]
    for record in late:
        assert record.timestamp == record.item[1]


@settings(max_examples=150, deadline=None)
@given(kind=kinds(), events=EVENTS, out_of_order=st.integers(0, 30), grace=st.integers(0, 10))
async def test_aggregate_is_a_fold_of_the_window_items(
    kind: WindowKind, events: list[Event], out_of_order: int, grace: int
) -> None:
    options: dict[str, Any] = {"out_of_order": out_of_order, "grace": grace}
    ignore = lambda _: None  # noqa: E731 - a throwaway handler
    listed = await collect(
        events | windowed(kind, time=time_of, key=key_of, on_late=ignore, **options)
    )
    summed = await collect(
        events
        | windowed(
            kind,
            time=time_of,
            key=key_of,
            aggregate=lambda total, e: total + e[1],
            initial=int,
            on_late=ignore,
            **options,
        )
    )
    assert [(w.key, w.start, w.end) for w in summed] == [(w.key, w.start, w.end) for w in listed]
    assert [w.value for w in summed] == [sum(e[1] for e in w.value) for w in listed]


@settings(max_examples=150, deadline=None)
@given(kind=kinds(), events=EVENTS, out_of_order=st.integers(0, 30), grace=st.integers(0, 10))
async def test_early_updates_end_in_the_final_results(
    kind: WindowKind, events: list[Event], out_of_order: int, grace: int
) -> None:
    options: dict[str, Any] = {"out_of_order": out_of_order, "grace": grace}
    closing = await collect(
        events | windowed(kind, time=time_of, key=key_of, on_late=lambda _: None, **options)
    )
    updating = await collect(
        events
        | windowed(kind, time=time_of, key=key_of, emit="update", on_late=lambda _: None, **options)
    )
    assert [w for w in updating if w.final] == closing
    for n, final in enumerate(updating):
        if final.final:
            before = [
                w
                for w in updating[:n]
                if not w.final and (w.key, w.start, w.end) == (final.key, final.start, final.end)
            ]
            assert before, final
            assert before[-1].value == final.value


# --------------------------------------------------------------------------- examples


async def test_a_tumbling_count_per_key_with_a_late_click() -> None:
    clicks = [("a", 1), ("b", 2), ("a", 61), ("a", 5), ("a", 130), ("b", 10)]
    late: list[Late] = []
    counts = windowed(
        Tumbling(60),
        time=lambda c: c[1],
        key=lambda c: c[0],
        aggregate=lambda n, _: n + 1,
        initial=int,
        out_of_order=10,
        on_late=late.append,
    )
    out = await collect(clicks | counts)
    assert out == [
        Window("a", 0.0, 60.0, 2),
        Window("b", 0.0, 60.0, 1),
        Window("a", 60.0, 120.0, 1),
        Window("a", 120.0, 180.0, 1),
    ]
    assert [(record.item, record.key, record.watermark) for record in late] == [
        (("b", 10), "b", 120.0)
    ]


async def test_grace_keeps_a_window_open_after_the_watermark_passes_it() -> None:
    events = [1, 11, 5, 25, 6]
    late: list[Late] = []
    out = await collect(events | windowed(Tumbling(10), time=float, grace=10, on_late=late.append))
    assert [(w.start, w.value) for w in out] == [(0.0, [1, 5]), (10.0, [11]), (20.0, [25])]
    assert [record.item for record in late] == [6]


async def test_a_late_item_without_a_handler_raises() -> None:
    with pytest.raises(LateItemError, match=r"item 2 at time 1 came after its window closed"):
        await collect([1, 20, 1] | windowed(Tumbling(10), time=float))


async def test_late_items_go_to_dead_letters() -> None:
    dead = DeadLetters()
    out = await collect([1, 20, 2, 3] | windowed(Tumbling(10), time=float, dead_letter=dead))
    dead.close()
    records = [record async for record in dead]
    assert [w.value for w in out] == [[1], [20]]
    assert [(r.item, r.index, type(r.exception)) for r in records] == [
        (2, 2, LateItemError),
        (3, 3, LateItemError),
    ]


async def test_an_async_on_late_is_awaited() -> None:
    seen: list[int] = []

    async def keep(record: Late) -> None:
        seen.append(record.item)

    await collect([1, 20, 2] | windowed(Tumbling(10), time=float, on_late=keep))
    assert seen == [2]


async def test_sessions_merge_when_an_item_bridges_them() -> None:
    events = [1, 10, 5, 30]
    out = await collect(events | windowed(Session(gap=6), time=float, out_of_order=20))
    assert [(w.start, w.end, w.value) for w in out] == [(1.0, 16.0, [1, 10, 5]), (30.0, 36.0, [30])]


async def test_sliding_windows_hold_the_items_of_the_size_before_each_item() -> None:
    out = await collect([1, 3, 6, 12] | windowed(Sliding(5), time=float))
    assert [(w.start, w.end, w.value) for w in out] == [
        (-4.0, 1.0, [1]),
        (-2.0, 3.0, [1, 3]),
        (1.0, 6.0, [3, 6]),
        (7.0, 12.0, [12]),
    ]


async def test_hopping_windows_overlap() -> None:
    out = await collect([3, 7] | windowed(Hopping(10, hop=5), time=float))
    assert [(w.start, w.value) for w in out] == [(-5.0, [3]), (0.0, [3, 7]), (5.0, [7])]


# --------------------------------------------------------------------------- processing time


async def arrivals(times: list[float]) -> AsyncIterator[float]:
    clock = current_clock()
    for t in times:
        await clock.sleep(t - clock.now())
        yield t


@settings(max_examples=80, deadline=None)
@given(
    kind=st.one_of(
        st.integers(1, 20).map(Tumbling),
        st.integers(1, 15).map(lambda gap: Session(gap=gap)),
    ),
    gaps=st.lists(st.integers(1, 10), max_size=20),
    grace=st.integers(0, 5),
)
async def test_processing_time_windows_are_event_time_windows_of_the_arrival_times(
    kind: WindowKind, gaps: list[int], grace: int
) -> None:
    times = [float(sum(gaps[: n + 1])) for n in range(len(gaps))]
    expected = await collect(times | windowed(kind, time=float, grace=grace))
    received: list[tuple[float, Window[None, list[float]]]] = []
    with virtual_clock() as clock:
        stage = windowed(kind, time="processing", grace=grace)
        async for w in arrivals(times) | stage:
            received.append((clock.now(), w))
    assert [w for _, w in received] == [
        Window(None, w.start, w.end, [t for t in times if t in w.value]) for w in expected
    ]
    # A window comes out when the clock reaches its end plus grace (or the input ends).
    for now, w in received:
        assert now == min(w.end + grace, times[-1])


async def test_processing_time_needs_a_monotonic_clock() -> None:
    class Backwards:
        def __init__(self) -> None:
            self.times = [5.0, 5.0, 3.0, 3.0]

        def now(self) -> float:
            return self.times.pop(0) if len(self.times) > 1 else self.times[0]

        def sleep(self, seconds: float) -> Coroutine[Any, Any, None]:
            raise AssertionError("no sleep expected")

    with use_clock(Backwards()), pytest.raises(ValueError, match="the clock went back in time"):
        await collect([1, 2] | windowed(Tumbling(10), time="processing"))


# --------------------------------------------------------------------------- parameters


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: Tumbling(0), ValueError, "size must be a positive"),
        (lambda: Tumbling(-1), ValueError, "size must be a positive"),
        (lambda: Tumbling("60"), TypeError, "size must be a number"),
        (lambda: Hopping(10, hop=0), ValueError, "hop must be a positive"),
        (lambda: Hopping(10, hop=11), ValueError, r"hop must not exceed size \(10\)"),
        (lambda: Sliding(math.inf), ValueError, "size must be a positive, finite"),
        (lambda: Session(gap=-2), ValueError, "gap must be a positive"),
        (lambda: windowed(60, time=float), TypeError, "kind must be Tumbling"),  # type: ignore[call-overload]
        (lambda: windowed(Tumbling(1), time=3), TypeError, "time must be callable"),  # type: ignore[call-overload]
        (lambda: windowed(Tumbling(1), time=float, key=1), TypeError, "key must be callable"),  # type: ignore[call-overload]
        (
            lambda: windowed(Tumbling(1), time=float, aggregate=max),  # type: ignore[call-overload]
            TypeError,
            "aggregate= and initial= go together",
        ),
        (
            lambda: windowed(Tumbling(1), time=float, out_of_order=-1),
            ValueError,
            "out_of_order must be a finite number of seconds >= 0",
        ),
        (
            lambda: windowed(Tumbling(1), time="processing", out_of_order=1),
            ValueError,
            "out_of_order= is for event time",
        ),
        (lambda: windowed(Tumbling(1), time=float, grace=math.nan), ValueError, "grace must be"),
        (lambda: windowed(Tumbling(1), time=float, emit="often"), ValueError, "emit must be"),  # type: ignore[call-overload]
        (
            lambda: windowed(Tumbling(1), time=float, on_late=print, dead_letter=print),
            TypeError,
            "give on_late= or dead_letter=, not both",
        ),
        (lambda: windowed(Tumbling(1), time=float, dead_letter=3), TypeError, "dead_letter must"),  # type: ignore[call-overload]
        (lambda: chunk_until(3), TypeError, "predicate must be callable"),  # type: ignore[arg-type]
        (lambda: chunk_until(bool, max_size=0), ValueError, "max_size must be >= 1"),
        (lambda: chunk_until(bool, within=0), ValueError, "within must be a positive"),
    ],
)
def test_bad_parameters_are_refused_when_the_stage_is_built(
    make: Any, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        make()


@pytest.mark.parametrize("returned", ["7", math.nan, None, True])
async def test_a_bad_timestamp_names_the_stage_and_item(returned: Any) -> None:
    with pytest.raises((TypeError, ValueError), match="time must return") as caught:
        await collect([1, 2] | windowed(Tumbling(1), time=lambda x: x if x == 1 else returned))
    assert any("item 1" in note for note in caught.value.__notes__)


# --------------------------------------------------------------------------- envelopes, cleanup


async def test_envelopes_pass_through_each_window_with_merged_states() -> None:
    events = [Envelope(t, State({"i": i, f"at{t}": True})) for i, t in enumerate([1, 2, 12])]
    out = await collect(events | windowed(Tumbling(10), time=float))
    assert [e.value for e in out] == [
        Window(None, 0.0, 10.0, [1, 2]),
        Window(None, 10.0, 20.0, [12]),
    ]
    assert dict(out[0].state) == {"i": 1, "at1": True, "at2": True}
    assert dict(out[1].state) == {"i": 2, "at12": True}
    chunks = await collect(events | chunk_until(lambda t: t == 2))
    assert [e.value for e in chunks] == [[1, 2], [12]]
    assert dict(chunks[0].state) == {"i": 1, "at1": True, "at2": True}


@pytest.mark.parametrize(
    "kind", [Tumbling(3), Hopping(4, hop=2), Sliding(3), Session(gap=2)], ids=repr
)
async def test_windowed_stops_cleanly_however_the_flow_stops(kind: WindowKind) -> None:
    await check_stage(lambda: windowed(kind, time=float, on_late=lambda _: None), range(12))
    await check_stage(lambda: windowed(kind, time="processing"), range(12))


async def test_chunk_until_stops_cleanly_however_the_flow_stops() -> None:
    await check_stage(lambda: chunk_until(lambda x: x % 4 == 3), range(12))
    await check_stage(lambda: chunk_until(lambda x: x % 4 == 3, within=5), range(12))


# --------------------------------------------------------------------------- chunk_until


@settings(max_examples=150, deadline=None)
@given(items=st.lists(st.integers(0, 9), max_size=40), max_size=st.none() | st.integers(1, 5))
async def test_chunk_until_agrees_with_a_list_model(items: list[int], max_size: int | None) -> None:
    expected: list[list[int]] = []
    batch: list[int] = []
    for x in items:
        batch.append(x)
        if x == 0 or len(batch) == max_size:
            expected.append(batch)
            batch = []
    if batch:
        expected.append(batch)
    assert await collect(items | chunk_until(lambda x: x == 0, max_size=max_size)) == expected


async def test_chunk_until_within_closes_a_partial_chunk_on_time() -> None:
    received: list[tuple[float, list[float]]] = []
    with virtual_clock() as clock:
        async for chunk in arrivals([1, 2, 9, 10, 11]) | chunk_until(lambda t: t == 10, within=4):
            received.append((clock.now(), chunk))
    assert received == [(5.0, [1, 2]), (10.0, [9, 10]), (11.0, [11])]


# --------------------------------------------------------------------------- checkpoints


async def run_until(
    stage: Any, source: list[Any], store: MemoryStore, *, every: int, stop_after: int | None
) -> list[Any]:
    out: list[Any] = []
    async with Run(stage, source, name="w", checkpoint=store, every=every) as run:
        async for item in run:
            out.append(item)
            if len(out) == stop_after:
                break
    return out


@settings(max_examples=60, deadline=None)
@given(
    kind=kinds(),
    events=EVENTS,
    out_of_order=st.integers(0, 30),
    every=st.integers(1, 6),
    stop=st.integers(1, 10),
    emit=st.sampled_from(["close", "update"]),
)
async def test_a_resumed_run_continues_the_uninterrupted_output(
    kind: WindowKind, events: list[Event], out_of_order: int, every: int, stop: int, emit: Any
) -> None:
    def make() -> Any:
        return windowed(
            kind,
            time=time_of,
            key=key_of,
            out_of_order=out_of_order,
            emit=emit,
            on_late=lambda _: None,
        )

    whole = await collect(events | make())
    store = MemoryStore()
    first = await run_until(make(), events, store, every=every, stop_after=stop)
    rest = await run_until(make(), events, store, every=every, stop_after=None)
    # The resumed run yields what followed the last checkpoint, exactly as the whole run did.
    done = len(whole) - len(rest)
    assert 0 <= done <= len(first)
    assert first[:done] == whole[:done]
    assert rest == whole[done:]


async def test_late_items_are_dead_lettered_once_across_a_resume() -> None:
    events = [(0, t) for t in [1, 30, 2, 3, 40, 31, 60, 4, 70, 41, 90, 5]]
    late_ones = model(Tumbling(10), events, 0, 0)[1]
    assert len(late_ones) == 6
    store = MemoryStore()

    def make() -> Any:
        return windowed(Tumbling(10), time=time_of, dead_letter=lambda _: None)

    await run_until(make(), events, store, every=2, stop_after=3)
    await run_until(make(), events, store, every=2, stop_after=None)
    letters = await store.dead_letters("w")
    assert sorted(letter.record["index"] for letter in letters) == late_ones


async def test_chunk_until_resumes_with_its_partial_chunk() -> None:
    items = [1, 2, 0, 3, 4, 5, 0, 6, 0, 7, 8]
    whole = await collect(items | chunk_until(lambda x: x == 0))
    store = MemoryStore()
    first = await run_until(chunk_until(lambda x: x == 0), items, store, every=2, stop_after=1)
    rest = await run_until(chunk_until(lambda x: x == 0), items, store, every=2, stop_after=None)
    done = len(whole) - len(rest)
    assert first[:done] == whole[:done]
    assert rest == whole[done:]
