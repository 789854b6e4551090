"""Exactly-once sinks: outputs committed with the checkpoints of a run.

A `Sink` takes part in the checkpoints of a `streamkit.Run` in two phases.
`write_to` collects the items that pass between two barriers; when a
barrier reaches it, it asks the sink to *pre-commit* them
(`Sink.pre_commit`), sends what the sink prepared ahead of the barrier, and
the run saves it with the checkpoint. Once the checkpoint is saved, the run
*commits* it (`Sink.commit`). A crash before the checkpoint is saved loses
the prepared work with it (the items are processed again after the last
checkpoint); a crash after it, before the commit, is mended by the resumed
run, which commits the prepared work it finds in its restored state again
(so `commit` must be idempotent).

`TableSink` is the built-in one: rows of a table in the run's own store,
written in the checkpoint's very transaction, so the table holds every
output exactly once, whatever the crashes.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar, cast, runtime_checkable

from ._barrier import CONTROL, Control, Encoder
from ._core import Passthrough, aclose, stage_label, transform_stage
from ._records import Envelope
from ._writes import TableRows

if TYPE_CHECKING:
    from ._barrier import RunFunction, Slot
    from ._store import Store

T_contra = TypeVar("T_contra", contravariant=True)

_COLUMN: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


@runtime_checkable
class Sink(Protocol[T_contra]):
    """Where a checkpointed run's outputs go, exactly once: the two-phase protocol.

    Attributes:
        label: A short name, used in errors and in the pipeline's shape.

    Examples:
        A sink that publishes each checkpoint's items as one file, written
        aside at pre-commit and renamed into place at commit (a rename is
        atomic, and doing it twice is harmless):

        >>> import asyncio, json, os, tempfile
        >>> from streamkit import MemoryStore, Run, map_
        >>> class Files:
        ...     label = "files"
        ...     def __init__(self, folder: str) -> None:
        ...         self.folder = folder
        ...     def pre_commit(self, items: list[int], checkpoint: int, /) -> list[str]:
        ...         final = os.path.join(self.folder, f"part-{checkpoint}.json")
        ...         with open(final + ".tmp", "w") as file:
        ...             json.dump(items, file)
        ...         return [final + ".tmp", final]
        ...     async def commit(self, prepared: list[str], /) -> None:
        ...         if os.path.exists(prepared[0]):
        ...             os.replace(prepared[0], prepared[1])
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     sink = Files(folder)
        ...     print(isinstance(sink, Sink))
        ...     run = Run(map_(lambda x: x * 10) | write_to(sink), range(5), name="parts",
        ...               checkpoint=MemoryStore(), every=2)
        ...     _ = asyncio.run(run.drain())
        ...     print(sorted(os.listdir(folder)))
        True
        ['part--1.json', 'part-1.json', 'part-2.json']

        Checkpoint 1 came after items 0 and 1, checkpoint 2 after 2 and 3;
        the rest went with the run's last checkpoint (``-1``).
    """

    label: str

    def pre_commit(self, items: Sequence[T_contra], checkpoint: int, /) -> Any:
        """Prepare ``items`` (those since the last checkpoint) to be committed.

        Called when barrier ``checkpoint`` reaches the sink. Return what the
        commit needs: a `TableRows` to write in the checkpoint's own
        transaction, or a handle to your own prepared work (a transaction
        id, a staging file), encodable by the run's codec.
        """
        ...

    async def commit(self, prepared: Any, /) -> None:
        """Make prepared work visible, once its checkpoint is saved (idempotent)."""
        ...


@dataclass(frozen=True, slots=True)
class SinkWrite:
    """What a sink prepared at a barrier: committed with that checkpoint."""

    sink: Any
    prepared: Any


def write_to(sink: Sink[Any], /, *, name: str | None = None) -> Passthrough:
    """Write every item to ``sink``, exactly once across the checkpoints of the run.

    Items pass on unchanged (``async for`` still sees them, at least once).
    Between two checkpoints the items wait in the stage; at each checkpoint
    they are pre-committed and saved with it, then committed. It needs a
    `streamkit.Run` with ``checkpoint=``: anywhere else it raises
    `TypeError` at its first item.

    Args:
        sink: The `Sink` (for example a `TableSink` of the run's store).
        name: The stage's label in statistics, events, errors and the
            history (see `map_`).

    Raises:
        TypeError: ``sink`` is not a `Sink`.

    Examples:
        >>> import asyncio, os, tempfile
        >>> from streamkit import Run, SQLiteStore, map_
        >>> async def main(path: str) -> None:
        ...     async with SQLiteStore(path) as store:
        ...         squares = TableSink(store, "squares")
        ...         run = Run(map_(lambda x: x * x) | write_to(squares), range(4),
        ...                   name="squares", checkpoint=store)
        ...         await run.drain()
        ...         print(await squares.rows())
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     asyncio.run(main(os.path.join(folder, "runs.db")))
        [0, 1, 4, 9]
    """
    if not isinstance(sink, Sink):  # pyright: ignore[reportUnnecessaryIsInstance] - untyped callers
        raise TypeError(
            "sink must be a Sink (label, pre_commit(items, checkpoint), commit(prepared)), "
            f"got {type(sink).__name__}"
        )
    label = stage_label(name, f"write_to({sink.label})")

    def run(upstream: AsyncIterator[Any]) -> AsyncIterator[Any]:
        return _unsupported(upstream, label)

    def restorable(slot: Slot) -> RunFunction:
        def checkpointed(upstream: AsyncIterator[Any]) -> AsyncIterator[Any]:
            return _written(upstream, sink, slot)

        return checkpointed

    return Passthrough(transform_stage(label, run, restorable=restorable).steps)


async def _unsupported(upstream: AsyncIterator[Any], label: str) -> AsyncIterator[Any]:
    try:
        async for _ in upstream:
            raise TypeError(
                f"{label} commits with the checkpoints of a run: use it in a "
                "Run(..., checkpoint=store)"
            )
        if False:  # pragma: no cover - makes this an async generator
            yield  # type: ignore[unreachable]
    finally:
        await aclose(upstream)


async def _written(upstream: AsyncIterator[Any], sink: Sink[Any], slot: Slot) -> AsyncIterator[Any]:
    # The state a checkpoint keeps: the sink's own prepared work of the last
    # barrier (None for writes in the store's transaction), committed again
    # on resume in case the crash came between the save and the commit.
    prepared: Any = slot.restore(None)
    if prepared is not None:
        await sink.commit(prepared)
    batch: list[Any] = []
    try:
        async for item in upstream:
            if type(item) is CONTROL:
                if item.kind == "barrier":
                    prepared = None
                    if batch:
                        prepared = sink.pre_commit(batch, item.sequence)
                        batch = []
                        yield Control("write", write=SinkWrite(sink, prepared))
                    kept = None if isinstance(prepared, TableRows) else prepared
                    slot.save(item, kept)
                yield item
                continue
            batch.append(item)
            yield item
        if batch:
            # The rest goes with the run's last checkpoint.
            yield Control("write", write=SinkWrite(sink, sink.pre_commit(batch, -1)))
    finally:
        await aclose(upstream)


class TableSink:
    """A table of the run's store that holds every output exactly once.

    The rows of each checkpoint are written in that checkpoint's own
    transaction. Each row has the store's columns (``id``, ``run``,
    ``checkpoint``), ``value`` (the item as JSON, through the codec) and one
    column per name in ``columns``, read from each item (a mapping's key or
    an attribute; an `Envelope`'s value); a value that is not a number, a
    string, bytes or None is stored as JSON text. Read the items back with
    `rows`, the rows with ``store.table_rows(table)``, or with SQL.

    Args:
        store: The store the run checkpoints into.
        table: The table's name (letters, digits, ``_``).
        columns: Fields of the items to store in columns of their own.
        codec: Encodes the items for ``value`` (JSON values as they are, by default).

    Raises:
        ValueError: A bad table or column name.

    Examples:
        >>> import asyncio
        >>> from streamkit import MemoryStore, Run, map_
        >>> async def main() -> None:
        ...     async with MemoryStore() as store:
        ...         orders = TableSink(store, "orders", columns=["customer"])
        ...         pipeline = map_(lambda n: {"customer": f"c{n}", "total": n * 2.5})
        ...         run = Run(pipeline | write_to(orders), [1, 2], name="nightly", checkpoint=store)
        ...         await run.drain()
        ...         print(await orders.rows())
        ...         for row in await store.table_rows("orders"):
        ...             print(row["id"], row["run"], row["customer"], row["value"])
        >>> asyncio.run(main())
        [{'customer': 'c1', 'total': 2.5}, {'customer': 'c2', 'total': 5.0}]
        1 nightly c1 {"customer": "c1", "total": 2.5}
        2 nightly c2 {"customer": "c2", "total": 5.0}
    """

    __slots__ = ("_codec", "columns", "label", "store", "table")

    def __init__(
        self,
        store: Store,
        table: str,
        *,
        columns: Sequence[str] = (),
        codec: Encoder | None = None,
    ) -> None:
        from ._checkpointing import DEFAULT_CODEC

        self.store = store
        self.columns = tuple(columns)
        for column in self.columns:
            name = cast("object", column)  # untyped callers may pass anything
            if not isinstance(name, str) or not _COLUMN.fullmatch(name):
                raise ValueError(f"columns: {column!r} is not a column name (letters, digits, _)")
        # Checks the names (TableRows refuses bad or reserved ones).
        TableRows(table, ("value", *self.columns), ())
        self.table = table
        self.label = f"table {table!r}"
        self._codec = DEFAULT_CODEC if codec is None else codec

    def __repr__(self) -> str:
        return f"TableSink({self.table!r}, columns={self.columns!r})"

    def _row(self, item: Any) -> tuple[Any, ...]:
        value: Any = item.value if isinstance(item, Envelope) else item  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType] - any value
        encoded = json.dumps(self._codec.encode(value), ensure_ascii=False)
        return (encoded, *(self._column(value, column) for column in self.columns))

    def _column(self, value: Any, column: str) -> Any:
        if isinstance(value, Mapping):
            field = cast("Mapping[str, Any]", value).get(column, _NO_FIELD)
        else:
            field = getattr(value, column, _NO_FIELD)
        if field is _NO_FIELD:
            raise ValueError(f"{self.label}: an item has no field {column!r}: {value!r}")
        if field is None or isinstance(field, int | float | str | bytes):
            return field
        return json.dumps(self._codec.encode(field), ensure_ascii=False)

    def pre_commit(self, items: Sequence[Any], checkpoint: int, /) -> TableRows:
        """The rows of ``items``, to be written in the checkpoint's transaction."""
        return TableRows(
            self.table, ("value", *self.columns), tuple(self._row(item) for item in items)
        )

    async def commit(self, prepared: Any, /) -> None:
        """Nothing more to do: the rows were written with the checkpoint."""

    async def rows(self, *, run: str | None = None) -> list[Any]:
        """The items the table holds (of run ``run``, or all), decoded, in order."""
        found = await self.store.table_rows(self.table, run=run)
        return [self._codec.decode(json.loads(row["value"])) for row in found]


_NO_FIELD: Final = object()
