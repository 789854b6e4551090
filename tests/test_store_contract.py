"""The Store contract: one set of tests run on MemoryStore, SQLiteStore and PostgresStore.

Every backend must behave alike: what a save keeps (round trip, ``keep``),
how history is ordered and bounded, that a save and its writes (dead
letters, sink rows) land together or not at all, ``expect=`` fencing
between concurrent savers, sink tables per run, the errors of a closed store
and of bad arguments. PostgresStore runs against a real server started by
``tests/servers.py`` (its tests carry the ``server`` marker). A hypothesis
test runs random sequences of saves and deletes on each backend against a
model made of dictionaries.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import itertools
import math
from typing import TYPE_CHECKING, Any, Literal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamkit import (
    Checkpoint,
    CheckpointError,
    DeadLetterRecord,
    DeadLetterRow,
    MemoryStore,
    PostgresStore,
    SQLiteStore,
    StaleCheckpointError,
    Store,
    TableRows,
)
from streamkit._records import State
from tests.servers import fresh_schema

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable
    from pathlib import Path

    from tests.servers import PostgresServer

WHEN = dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)


def point(name: str = "job", items: int = 1, **changes: Any) -> Checkpoint:
    fields: dict[str, Any] = {
        "position": items,
        "state": {"total": items * 10},
        "items": items,
        "version": "v1",
        "created_at": WHEN + dt.timedelta(seconds=items),
    }
    fields.update(changes)
    return Checkpoint(name, **fields)


# --------------------------------------------------------------------------- backends


@dataclasses.dataclass
class Backend:
    """Opens stores of one kind; stores opened at the same ``location`` share their data.

    MemoryStores never share (``shared`` is false): each is its own data.
    """

    kind: str
    make: Callable[[str, dict[str, Any]], Store]
    shared: bool
    persistent: bool

    def open(self, location: str = "main", **options: Any) -> Store:
        return self.make(location, options)


_locations = itertools.count(1)


def fresh_location() -> str:
    """A location no store of this session has used."""
    return f"l{next(_locations)}"


def memory_backend() -> Backend:
    return Backend("memory", lambda _, options: MemoryStore(**options), False, False)


def sqlite_backend(folder: Path, *, writer: Literal["auto", "process"] = "auto") -> Backend:
    """SQLite stores; ``writer="process"`` makes every save in a writer process."""

    def make(location: str, options: dict[str, Any]) -> Store:
        return SQLiteStore(folder / f"{location}.db", writer=writer, **options)

    return Backend("sqlite", make, True, True)


def postgres_backend(server: PostgresServer) -> Backend:
    prefix = fresh_schema("c")

    def make(location: str, options: dict[str, Any]) -> Store:
        return PostgresStore(server.dsn, schema=f"{prefix}_{location}", **options)

    return Backend("postgres", make, True, True)


PERSISTENT = ["sqlite", "sqlite-process", pytest.param("postgres", marks=pytest.mark.server)]
BACKENDS = ["memory", *PERSISTENT]


def open_backend(request: pytest.FixtureRequest, folder: Path) -> Backend:
    if request.param == "memory":
        return memory_backend()
    if request.param == "sqlite":
        return sqlite_backend(folder)
    if request.param == "sqlite-process":
        return sqlite_backend(folder, writer="process")
    return postgres_backend(request.getfixturevalue("postgres"))


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    return open_backend(request, tmp_path)


@pytest.fixture(params=PERSISTENT)
def persistent(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """The backends whose data outlives a store: a second store sees what the first saved."""
    return open_backend(request, tmp_path)


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[Store]:
    async with backend.open() as opened:
        yield opened


def letter(stage: str, index: int, **record: Any) -> DeadLetterRow:
    return DeadLetterRow(stage, index, {"error": "ValueError", **record})


def sales(*rows: tuple[Any, ...]) -> TableRows:
    return TableRows("sales", ("day", "amount"), rows)


async def snapshot(store: Store, name: str = "job") -> tuple[Any, ...]:
    """Everything the store holds for run ``name``, to compare before and after a failed save."""
    return (
        await store.history(name, limit=100),
        await store.dead_letters(name),
        await store.table_rows("sales"),
        await store.table_rows("other"),
    )


def without_ids(rows: tuple[dict[str, Any], ...]) -> list[dict[str, Any]]:
    """The rows without their ``id``, which must increase (PostgreSQL may leave gaps)."""
    ids = [row["id"] for row in rows]
    assert all(isinstance(i, int) for i in ids)
    assert ids == sorted(set(ids)), f"ids do not increase: {ids}"
    return [{key: value for key, value in row.items() if key != "id"} for row in rows]


# --------------------------------------------------------------------------- checkpoints


async def test_a_store_is_a_store(store: Store) -> None:
    assert isinstance(store, Store)


async def test_an_unknown_run_has_nothing(store: Store) -> None:
    assert await store.load("nobody") is None
    assert await store.history("nobody") == ()
    assert await store.dead_letters("nobody") == ()
    assert await store.table_rows("sales") == ()
    assert await store.table_rows("sales", run="nobody") == ()


async def test_a_loaded_checkpoint_equals_the_saved_one(store: Store) -> None:
    saved = Checkpoint(
        "ünïcode run ✓",
        position={"offset": 12, "files": ["a", "b"], "big": 2**70, "neg": -(2**63)},
        state={
            "total": 1.5,
            "tiny": 5e-324,
            "names": ["zoë", "日本", "\x00nul", "emoji 🦀"],
            "none": None,
            "nested": {"k": [True, False, {"deep": []}]},
        },
        items=12,
        version="2.0",
        created_at=dt.datetime(2026, 1, 1, 9, 30, tzinfo=dt.timezone(dt.timedelta(hours=2))),
        sequence=7,
        shape=("map_(parse)", "filter_(valid)"),
        complete=True,
        pending={"out": [1, "two", None]},
    )
    await store.save(saved)
    loaded = await store.load(saved.name)
    assert loaded == saved
    assert loaded is not saved
    assert isinstance(loaded.state, State)
    assert loaded.created_at.utcoffset() == dt.timedelta(hours=2)
    assert await store.history(saved.name) == (saved,)


async def test_load_and_history_give_the_newest_first(store: Store) -> None:
    for items in (1, 2, 3, 4):
        await store.save(point(items=items))
    assert await store.load("job") == point(items=4)
    assert [c.items for c in await store.history("job")] == [4, 3, 2, 1]
    assert [c.items for c in await store.history("job", limit=1)] == [4]
    assert [c.items for c in await store.history("job", limit=3)] == [4, 3, 2]
    assert await store.history("job", limit=100) == tuple(point(items=i) for i in (4, 3, 2, 1))


@pytest.mark.parametrize("keep", [1, 3])
async def test_keep_bounds_the_history_of_each_run(backend: Backend, keep: int) -> None:
    async with backend.open(keep=keep) as store:
        await store.save(point("other", 100))
        for items in range(1, 11):
            await store.save(point(items=items))
        expected = [10, 9, 8][:keep]
        assert [c.items for c in await store.history("job", limit=10)] == expected
        assert await store.load("job") == point(items=10)
        # Pruning one run leaves the others alone.
        assert await store.history("other", limit=10) == (point("other", 100),)


async def test_runs_are_independent_and_delete_forgets_one(store: Store) -> None:
    await store.save(point("a", 1), writes=[letter("parse", 0), sales(("mon", 1))])
    await store.save(point("b", 2), writes=[letter("parse", 1)])
    await store.delete("a")
    await store.delete("never saved")
    assert await store.load("a") is None
    assert await store.history("a") == ()
    assert await store.dead_letters("a") == ()
    assert await store.load("b") == point("b", 2)
    assert [d.index for d in await store.dead_letters("b")] == [1]
    # Sink rows are the pipeline's output: they stay.
    assert without_ids(await store.table_rows("sales")) == [
        {"run": "a", "checkpoint": 0, "day": "mon", "amount": 1}
    ]
    # A deleted run starts again from nothing.
    await store.save(point("a", 5, sequence=1), expect=0)
    assert await store.history("a") == (point("a", 5, sequence=1),)


async def test_concurrent_saves_all_land(backend: Backend) -> None:
    async with backend.open(keep=50) as store:
        await asyncio.gather(*(store.save(point(items=i)) for i in range(20)))
        assert sorted(c.items for c in await store.history("job", limit=50)) == list(range(20))


# --------------------------------------------------------------------------- writes


async def test_dead_letters_are_kept_once_each_in_order(backend: Backend) -> None:
    async with backend.open(keep=1) as store:
        first = point(items=1, sequence=1)
        second = point(items=2, sequence=2)
        third = point(items=3, sequence=3)
        await store.save(first, writes=[letter("parse", 4, item="x4"), letter("parse", 2)])
        await store.save(second)
        await store.save(point("other", 9), writes=[letter("load", 0)])
        await store.save(third, writes=[letter("load", 7, nested={"why": ["ü", None]})])
        found = await store.dead_letters("job")
        one, three = first.created_at, third.created_at
        # Pruned checkpoints (keep=1) keep their dead letters until the run is deleted.
        assert await store.history("job") == (third,)
        assert found == (
            DeadLetterRecord("job", "parse", 4, 1, {"error": "ValueError", "item": "x4"}, one),
            DeadLetterRecord("job", "parse", 2, 1, {"error": "ValueError"}, one),
            DeadLetterRecord(
                "job", "load", 7, 3, {"error": "ValueError", "nested": {"why": ["ü", None]}}, three
            ),
        )
        assert [(d.name, d.stage) for d in await store.dead_letters("other")] == [("other", "load")]


async def test_sink_rows_are_kept_per_run(store: Store) -> None:
    await store.save(point("a", 1, sequence=1), writes=[sales(("mon", 12), ("tue", 7.5))])
    await store.save(point("b", 1, sequence=1), writes=[sales(("mon", 3))])
    await store.save(point("a", 2, sequence=2), writes=[sales(("wed", None)), sales(("thu", -1))])
    everything = without_ids(await store.table_rows("sales"))
    assert everything == [
        {"run": "a", "checkpoint": 1, "day": "mon", "amount": 12.0},
        {"run": "a", "checkpoint": 1, "day": "tue", "amount": 7.5},
        {"run": "b", "checkpoint": 1, "day": "mon", "amount": 3.0},
        {"run": "a", "checkpoint": 2, "day": "wed", "amount": None},
        {"run": "a", "checkpoint": 2, "day": "thu", "amount": -1.0},
    ]
    # An int in a real column comes back as a float, from every store.
    assert all(isinstance(row["amount"], float | None) for row in everything)
    assert without_ids(await store.table_rows("sales", run="b")) == [everything[2]]
    assert without_ids(await store.table_rows("sales", run="a")) == [
        row for row in everything if row["run"] == "a"
    ]
    assert await store.table_rows("sales", run="c") == ()


async def test_sink_values_of_every_type_round_trip(store: Store) -> None:
    rows = TableRows(
        "other",
        ("n", "x", "s", "b"),
        [
            (2**63 - 1, math.inf, "zoë ✓ 日本", b"\x00\xffbytes"),
            (-(2**63), -0.0, "", b""),
            (None, None, None, None),
            (0, 1e-300, "a'b\"c;--", bytes(range(256))),
        ],
        types=("integer", "real", "text", "blob"),
    )
    await store.save(point(), writes=[rows])
    found = without_ids(await store.table_rows("other"))
    assert [tuple(row[c] for c in rows.columns) for row in found] == list(rows.rows)
    assert [type(row["b"]) for row in found] == [bytes, bytes, type(None), bytes]
    # -0.0 is kept as 0.0 by every store (SQLite cannot keep its sign).
    assert math.copysign(1, found[1]["x"]) == 1


async def test_an_empty_write_creates_the_table_with_its_shape(store: Store) -> None:
    await store.save(point(items=1), writes=[TableRows("other", ("a",), [], types=("integer",))])
    assert await store.table_rows("other") == ()
    with pytest.raises(CheckpointError, match="other"):
        await store.save(point(items=2), writes=[TableRows("other", ("a",), [("text",)])])
    assert await store.load("job") == point(items=1)


MISMATCHES = {
    "other columns": TableRows("sales", ("day", "total"), [("mon", 1)]),
    "fewer columns": TableRows("sales", ("day",), [("mon",)]),
    "other types": TableRows("sales", ("day", "amount"), [], types=("text", "text")),
    "a value of another type": TableRows("sales", ("day", "amount"), [("mon", "lots")]),
    "a float in an integer column": TableRows("other", ("n",), [(1.5,)]),
}


@pytest.mark.parametrize("mismatch", MISMATCHES.values(), ids=MISMATCHES.keys())
async def test_a_sink_table_mismatch_writes_nothing(store: Store, mismatch: TableRows) -> None:
    await store.save(
        point(items=1, sequence=1),
        writes=[sales(("mon", 1.5)), TableRows("other", ("n",), [(1,)]), letter("s", 0)],
    )
    before = await snapshot(store)
    # The mismatching rows come after a good checkpoint, a dead letter and good rows:
    # none of them may be written.
    with pytest.raises(CheckpointError, match=mismatch.table) as raised:
        await store.save(
            point(items=2, sequence=2),
            writes=[
                letter("s", 1),
                sales(("tue", 2)),
                TableRows("fresh", ("a",), [(1,)]),
                mismatch,
            ],
            expect=1,
        )
    assert not isinstance(raised.value, StaleCheckpointError)
    assert raised.value.name == "job"
    assert await snapshot(store) == before
    # Not even the new table was made: it can still be created with other columns.
    await store.save(point(items=3, sequence=2), writes=[TableRows("fresh", ("b",), [("x",)])])
    assert without_ids(await store.table_rows("fresh")) == [
        {"run": "job", "checkpoint": 2, "b": "x"}
    ]


async def test_rows_for_a_new_table_that_disagree_write_nothing(store: Store) -> None:
    with pytest.raises(CheckpointError, match="fresh"):
        await store.save(
            point(),
            writes=[
                letter("s", 0),
                TableRows("fresh", ("a",), [("text",)]),
                TableRows("fresh", ("a",), [(1,)]),
            ],
        )
    assert await snapshot(store) == ((), (), (), ())
    assert await store.table_rows("fresh") == ()
    await store.save(point(), writes=[TableRows("fresh", ("a",), [(1,)])])
    assert without_ids(await store.table_rows("fresh")) == [{"run": "job", "checkpoint": 0, "a": 1}]


# --------------------------------------------------------------------------- expect=


async def test_expect_fences_a_stale_save(store: Store) -> None:
    await store.save(point(items=1, sequence=1), expect=0)
    await store.save(point(items=2, sequence=2), writes=[letter("s", 0)], expect=1)
    before = await snapshot(store)
    for wrong in (0, 1, 3):
        with pytest.raises(StaleCheckpointError) as raised:
            await store.save(
                point(items=9, sequence=9), writes=[letter("s", 9), sales(("x", 1))], expect=wrong
            )
        assert (raised.value.expected, raised.value.found, raised.value.name) == (wrong, 2, "job")
        assert isinstance(raised.value, CheckpointError)
        assert await snapshot(store) == before
    await store.save(point(items=3, sequence=3), expect=2)
    assert await store.load("job") == point(items=3, sequence=3)


async def test_expect_zero_means_the_run_has_no_checkpoint(store: Store) -> None:
    await store.save(point("other", sequence=5))
    with pytest.raises(StaleCheckpointError) as raised:
        await store.save(point(sequence=1), expect=1)
    assert (raised.value.expected, raised.value.found) == (1, 0)
    await store.save(point(sequence=1), expect=0)
    with pytest.raises(StaleCheckpointError):
        await store.save(point(sequence=1), expect=0)


async def test_without_expect_a_save_is_not_fenced(store: Store) -> None:
    await store.save(point(items=1, sequence=5))
    await store.save(point(items=2, sequence=3))
    assert await store.load("job") == point(items=2, sequence=3)


@pytest.mark.parametrize("savers", [2, 4])
async def test_of_concurrent_savers_with_the_same_expect_exactly_one_wins(
    backend: Backend, savers: int
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        # Separate stores (separate connections) where the backend shares its data.
        first = await stack.enter_async_context(backend.open(keep=100))
        stores = [first] + [
            await stack.enter_async_context(backend.open(keep=100)) if backend.shared else first
            for _ in range(savers - 1)
        ]
        await first.save(point(sequence=1), expect=0)
        for round_ in range(1, 9):
            attempts = [
                point(items=round_, sequence=round_ + 1, version=f"saver {number}")
                for number in range(savers)
            ]
            results = await asyncio.gather(
                *(
                    store.save(
                        attempt,
                        writes=[letter(f"saver {n}", round_), sales((f"{n}", round_))],
                        expect=round_,
                    )
                    for n, (store, attempt) in enumerate(zip(stores, attempts, strict=True))
                ),
                return_exceptions=True,
            )
            winners = [n for n, result in enumerate(results) if result is None]
            assert len(winners) == 1, results
            for n, result in enumerate(results):
                if n != winners[0]:
                    assert isinstance(result, StaleCheckpointError), result
                    assert (result.expected, result.found) == (round_, round_ + 1)
            assert await stores[-1].load("job") == attempts[winners[0]]
            letters = await first.dead_letters("job")
            assert [d.stage for d in letters if d.index == round_] == [f"saver {winners[0]}"]
            rows = await first.table_rows("sales")
            assert [r["day"] for r in rows if r["amount"] == round_] == [f"{winners[0]}"]
        assert len(await first.history("job", limit=100)) == 9


# --------------------------------------------------------------------------- lifecycle


async def test_a_closed_store_refuses_work(backend: Backend) -> None:
    store = backend.open()
    await store.save(point())
    await store.close()
    await store.close()  # closing twice is allowed
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: store.load("job"),
        lambda: store.save(point()),
        lambda: store.history("job"),
        lambda: store.dead_letters("job"),
        lambda: store.table_rows("sales"),
        lambda: store.delete("job"),
    ]
    for call in calls:
        with pytest.raises(RuntimeError, match="closed"):
            await call()


async def test_async_with_closes_the_store(backend: Backend) -> None:
    async with backend.open() as store:
        await store.save(point())
    with pytest.raises(RuntimeError, match="closed"):
        await store.load("job")


async def test_a_store_closed_unused_is_closed(backend: Backend) -> None:
    store = backend.open()
    await store.close()
    with pytest.raises(RuntimeError, match="closed"):
        await store.save(point())


@pytest.mark.parametrize("ticks", range(6))
async def test_a_cancelled_save_is_all_or_nothing(store: Store, ticks: int) -> None:
    await store.save(point(items=1))
    saving = point(items=2)
    task = asyncio.ensure_future(
        store.save(saving, writes=[letter("s", 0), sales(("mon", 1)), sales(("tue", 2))])
    )
    for _ in range(ticks):
        await asyncio.sleep(0)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    # The save committed entirely or not at all, and the store still works.
    newest = await store.load("job")
    letters = await store.dead_letters("job")
    rows = await store.table_rows("sales")
    if newest == saving:
        assert (len(letters), len(rows)) == (1, 2)
    else:
        assert newest == point(items=1)
        assert (letters, rows) == ((), ())
    await store.save(point(items=3))
    assert await store.load("job") == point(items=3)


# --------------------------------------------------------------------------- arguments

BAD_CALLS: dict[str, tuple[Callable[[Store], Awaitable[object]], type[Exception], str]] = {
    "load empty name": (lambda s: s.load(""), ValueError, "name"),
    "load name not str": (lambda s: s.load(None), TypeError, "name"),  # type: ignore[arg-type]
    "load name with NUL": (lambda s: s.load("a\x00b"), ValueError, "name"),
    "load name with surrogate": (lambda s: s.load("a\ud800"), ValueError, "name"),
    "history name not str": (lambda s: s.history(3), TypeError, "name"),  # type: ignore[arg-type]
    "history limit 0": (lambda s: s.history("job", limit=0), ValueError, "limit"),
    "history limit float": (lambda s: s.history("job", limit=1.5), TypeError, "limit"),  # type: ignore[arg-type]
    "history limit bool": (lambda s: s.history("job", limit=True), TypeError, "limit"),
    "save not a checkpoint": (lambda s: s.save({"name": "job"}), TypeError, "checkpoint"),  # type: ignore[arg-type]
    "save writes str": (lambda s: s.save(point(), writes="ab"), TypeError, "writes"),  # type: ignore[arg-type]
    "save writes None": (lambda s: s.save(point(), writes=None), TypeError, "writes"),  # type: ignore[arg-type]
    "save writes mapping": (
        lambda s: s.save(point(), writes={"stage": "s"}),  # type: ignore[arg-type]
        TypeError,
        "writes",
    ),
    "save writes of dicts": (
        lambda s: s.save(point(), writes=[{"stage": "s", "index": 0}]),  # type: ignore[list-item]
        TypeError,
        "writes",
    ),
    "save expect negative": (lambda s: s.save(point(), expect=-1), ValueError, "expect"),
    "save expect too big": (lambda s: s.save(point(), expect=2**63), ValueError, "expect"),
    "save expect float": (lambda s: s.save(point(), expect=1.0), TypeError, "expect"),  # type: ignore[arg-type]
    "save expect bool": (lambda s: s.save(point(), expect=False), TypeError, "expect"),
    "save expect str": (lambda s: s.save(point(), expect="0"), TypeError, "expect"),  # type: ignore[arg-type]
    "dead_letters empty name": (lambda s: s.dead_letters(""), ValueError, "name"),
    "table_rows not an identifier": (lambda s: s.table_rows("Sales"), ValueError, "table"),
    "table_rows a store table": (lambda s: s.table_rows("checkpoints"), ValueError, "table"),
    "table_rows an index name": (lambda s: s.table_rows("sales_pkey"), ValueError, "table"),
    "table_rows table not str": (lambda s: s.table_rows(5), TypeError, "table"),  # type: ignore[arg-type]
    "table_rows empty run": (lambda s: s.table_rows("sales", run=""), ValueError, "run"),
    "table_rows run not str": (lambda s: s.table_rows("sales", run=7), TypeError, "run"),  # type: ignore[arg-type]
    "delete name not str": (lambda s: s.delete(None), TypeError, "name"),  # type: ignore[arg-type]
    "delete empty name": (lambda s: s.delete(""), ValueError, "name"),
}


@pytest.mark.parametrize("case", BAD_CALLS.values(), ids=BAD_CALLS.keys())
async def test_bad_arguments_name_the_parameter(
    store: Store, case: tuple[Callable[[Store], Awaitable[object]], type[Exception], str]
) -> None:
    call, error, parameter = case
    await store.save(point(items=1, sequence=1))
    with pytest.raises(error, match=rf"^{parameter} "):
        await call(store)
    # Nothing was written or deleted.
    assert await store.history("job") == (point(items=1, sequence=1),)
    assert await store.dead_letters("job") == ()


BAD_OPTIONS: dict[str, tuple[dict[str, Any], type[Exception], str]] = {
    "keep 0": ({"keep": 0}, ValueError, "keep"),
    "keep negative": ({"keep": -3}, ValueError, "keep"),
    "keep str": ({"keep": "3"}, TypeError, "keep"),
    "keep bool": ({"keep": True}, TypeError, "keep"),
    "keep float": ({"keep": 2.0}, TypeError, "keep"),
}


@pytest.mark.parametrize("case", BAD_OPTIONS.values(), ids=BAD_OPTIONS.keys())
def test_bad_options_name_the_parameter(
    backend: Backend, case: tuple[dict[str, Any], type[Exception], str]
) -> None:
    options, error, parameter = case
    with pytest.raises(error, match=rf"^{parameter} "):
        backend.open(**options)


# What one store could keep and another not is refused when the record is built.
UNKEEPABLE: dict[str, tuple[Callable[[], object], type[Exception], str]] = {
    "a name with NUL": (lambda: Checkpoint("a\x00b"), ValueError, "name"),
    "a name with a lone surrogate": (lambda: Checkpoint("a\udc80"), ValueError, "name"),
    "a version with a lone surrogate": (
        lambda: Checkpoint("a", version="\ud800"),
        ValueError,
        "version",
    ),
    "a step with a lone surrogate": (
        lambda: Checkpoint("a", shape=("\ud800",)),
        ValueError,
        "shape",
    ),
    "a state with a lone surrogate": (
        lambda: Checkpoint("a", state={"k": ["\ud800"]}),
        TypeError,
        "state",
    ),
    "a state key with a lone surrogate": (
        lambda: Checkpoint("a", state={"\ud800": 1}),
        TypeError,
        "state",
    ),
    "a position with a lone surrogate": (
        lambda: Checkpoint("a", position="\ud800"),
        TypeError,
        "position",
    ),
    "a pending with a lone surrogate": (
        lambda: Checkpoint("a", pending={"k": "\ud800"}),
        TypeError,
        "pending",
    ),
    "a stage with NUL": (lambda: DeadLetterRow("s\x00", 0, {}), ValueError, "stage"),
    "a stage with a lone surrogate": (lambda: DeadLetterRow("\ud800", 0, {}), ValueError, "stage"),
    "a record with a lone surrogate": (
        lambda: DeadLetterRow("s", 0, "\ud800"),
        TypeError,
        "record",
    ),
    "a cell with a lone surrogate": (
        lambda: TableRows("t", ("a",), [("\ud800",)]),
        ValueError,
        r"rows\[0\] column 'a'",
    ),
    "a table named like an index": (lambda: TableRows("t_pkey", ("a",), []), ValueError, "table"),
    "a table named like a sequence": (
        lambda: TableRows("t_id_seq", ("a",), []),
        ValueError,
        "table",
    ),
    "a table named like a store index": (
        lambda: TableRows("checkpoints_by_run", ("a",), []),
        ValueError,
        "table",
    ),
}


@pytest.mark.parametrize("case", UNKEEPABLE.values(), ids=UNKEEPABLE.keys())
def test_what_a_store_could_not_keep_is_refused_when_built(
    case: tuple[Callable[[], object], type[Exception], str],
) -> None:
    make, error, parameter = case
    with pytest.raises(error, match=rf"^{parameter} "):
        make()


async def test_nul_and_any_unicode_inside_json_values_are_kept(store: Store) -> None:
    text = "\x00 NUL, zoë, 日本, 🦀, \u2028, \uffff"
    saved = point(position=[text], state={text: text}, pending={"p": text})
    await store.save(saved, writes=[DeadLetterRow("s", 0, {text: [text]})])
    assert await store.load("job") == saved
    assert [d.record for d in await store.dead_letters("job")] == [{text: [text]}]


# --------------------------------------------------------------------------- persistent stores


async def test_another_store_sees_what_one_saved(persistent: Backend) -> None:
    async with persistent.open() as store:
        await store.save(point(sequence=1), writes=[letter("s", 3), sales(("mon", 2))])
    async with persistent.open() as again:
        assert await again.load("job") == point(sequence=1)
        assert [(d.stage, d.index) for d in await again.dead_letters("job")] == [("s", 3)]
        assert without_ids(await again.table_rows("sales")) == [
            {"run": "job", "checkpoint": 1, "day": "mon", "amount": 2.0}
        ]
        with pytest.raises(StaleCheckpointError):
            await again.save(point(sequence=2), expect=0)


async def test_stores_opened_at_once_create_the_schema_once(persistent: Backend) -> None:
    location = fresh_location()
    async with contextlib.AsyncExitStack() as stack:
        stores = [
            await stack.enter_async_context(persistent.open(location, keep=20)) for _ in range(4)
        ]
        await asyncio.gather(
            *(store.save(point(f"run{n}", sequence=1), expect=0) for n, store in enumerate(stores))
        )
        for n in range(4):
            assert await stores[0].load(f"run{n}") == point(f"run{n}", sequence=1)


async def test_a_save_under_way_when_the_store_closes_is_kept(persistent: Backend) -> None:
    store = persistent.open()
    await store.save(point(items=1))
    saving = asyncio.ensure_future(store.save(point(items=2), writes=[letter("s", 0)]))
    await asyncio.sleep(0)  # the save has started
    await store.close()
    await saving
    async with persistent.open() as again:
        assert await again.load("job") == point(items=2)
        assert len(await again.dead_letters("job")) == 1


@pytest.fixture
def fernet_key() -> bytes:
    fernet = pytest.importorskip("cryptography.fernet")
    key: bytes = fernet.Fernet.generate_key()
    return key


async def test_an_encrypted_store_needs_its_key(persistent: Backend, fernet_key: bytes) -> None:
    from cryptography.fernet import Fernet

    async with persistent.open(key=fernet_key) as store:
        await store.save(point(state={"token": "s3cret"}), writes=[letter("s", 0, item="s3cret")])
    async with persistent.open(key=fernet_key) as store:
        assert await store.load("job") == point(state={"token": "s3cret"})
        assert [d.record for d in await store.dead_letters("job")] == [
            {"error": "ValueError", "item": "s3cret"}
        ]
    async with persistent.open(key=Fernet.generate_key()) as store:
        with pytest.raises(CheckpointError, match="wrong key") as raised:
            await store.load("job")
        assert raised.value.name == "job"
        with pytest.raises(CheckpointError, match="wrong key"):
            await store.dead_letters("job")
    async with persistent.open() as store:
        with pytest.raises(CheckpointError, match="encrypted"):
            await store.load("job")
        await store.save(point("plain"))
    async with persistent.open(key=fernet_key) as store:
        with pytest.raises(CheckpointError, match="not encrypted"):
            await store.load("plain")


# --------------------------------------------------------------------------- the model


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)
cells = st.tuples(
    st.none() | st.integers(-(2**63), 2**63 - 1),
    st.none() | st.text(max_size=6).filter(lambda text: "\x00" not in text),
    st.none() | st.floats(allow_nan=False),
    st.none() | st.binary(max_size=6),
)
RUNS = ("a", "b", "zoë")


@dataclasses.dataclass(frozen=True)
class Save:
    run: str
    position: Any
    state: dict[str, Any]
    letters: int
    rows: list[tuple[Any, ...]]
    expect: str  # "none", "right" or "wrong"


@dataclasses.dataclass(frozen=True)
class Delete:
    run: str


operations = st.lists(
    st.builds(
        Save,
        run=st.sampled_from(RUNS),
        position=json_values,
        state=st.dictionaries(st.text(max_size=4), json_values, max_size=3),
        letters=st.integers(0, 2),
        rows=st.lists(cells, max_size=3),
        expect=st.sampled_from(["none", "right", "wrong"]),
    )
    | st.builds(Delete, run=st.sampled_from(RUNS)),
    max_size=12,
)


@dataclasses.dataclass
class Model:
    """What a store must hold: plain dictionaries and lists."""

    keep: int
    checkpoints: dict[str, list[Checkpoint]] = dataclasses.field(default_factory=dict)
    letters: dict[str, list[DeadLetterRecord]] = dataclasses.field(default_factory=dict)
    rows: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def newest(self, run: str) -> int:
        kept = self.checkpoints.get(run)
        return kept[-1].sequence if kept else 0


SINK = ("n", "s", "x", "b")
SINK_TYPES = ("integer", "text", "real", "blob")


async def apply(store: Store, model: Model, operation: Save | Delete, number: int) -> None:
    if isinstance(operation, Delete):
        await store.delete(operation.run)
        model.checkpoints.pop(operation.run, None)
        model.letters.pop(operation.run, None)
        return
    run = operation.run
    checkpoint = Checkpoint(
        run,
        operation.position,
        operation.state,
        items=number,
        created_at=WHEN + dt.timedelta(minutes=number),
        sequence=number,
    )
    writes = [
        DeadLetterRow(f"step{k}", number, {"k": k, "p": operation.position})
        for k in range(operation.letters)
    ]
    table = TableRows("out", SINK, operation.rows, types=SINK_TYPES)
    expect = {"none": None, "right": model.newest(run), "wrong": model.newest(run) + 1}[
        operation.expect
    ]
    if operation.expect == "wrong":
        with pytest.raises(StaleCheckpointError):
            await store.save(checkpoint, writes=[*writes, table], expect=expect)
        return
    await store.save(checkpoint, writes=[*writes, table], expect=expect)
    kept = model.checkpoints.setdefault(run, [])
    kept.append(checkpoint)
    del kept[: -model.keep]
    model.letters.setdefault(run, []).extend(
        DeadLetterRecord(run, w.stage, w.index, number, w.record, checkpoint.created_at)
        for w in writes
    )
    model.rows += [
        {"run": run, "checkpoint": number}
        | {
            c: float(v) if c == "x" and isinstance(v, int) else v
            for c, v in zip(SINK, row, strict=True)
        }
        for row in operation.rows
    ]


async def check(store: Store, model: Model) -> None:
    for run in RUNS:
        kept = model.checkpoints.get(run, [])
        assert await store.history(run, limit=model.keep + 2) == tuple(reversed(kept))
        assert await store.load(run) == (kept[-1] if kept else None)
        assert await store.dead_letters(run) == tuple(model.letters.get(run, []))
        assert without_ids(await store.table_rows("out", run=run)) == [
            row for row in model.rows if row["run"] == run
        ]
    assert without_ids(await store.table_rows("out")) == model.rows


# Each example opens a store of its own at a fresh location: the function-scoped
# `backend` fixture only says which kind, so sharing it between examples is safe.
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(keep=st.integers(1, 3), ops=operations)
async def test_random_saves_and_deletes_agree_with_the_model(
    backend: Backend, keep: int, ops: list[Save | Delete]
) -> None:
    model = Model(keep)
    async with backend.open(fresh_location(), keep=keep) as store:
        for number, operation in enumerate(ops, 1):
            await apply(store, model, operation, number)
            await check(store, model)
