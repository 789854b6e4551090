"""What a checkpoint's transaction writes besides the checkpoint: dead letters and sink rows.

`Store.save(checkpoint, writes=...)` commits the checkpoint together with a
sequence of `Write` records: `DeadLetterRow` (an item a step gave up on, kept
in the store's dead-letter table) and `TableRows` (rows for a sink table, the
output of a transactional sink). Reading them back gives `DeadLetterRecord`
and plain row dictionaries.

This module also holds the checks every backend shares: identifiers, column
types and the comparison of a write with the sink table it goes to, so that
`MemoryStore`, `SQLiteStore` and `PostgresStore` accept and refuse exactly
the same writes.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, Literal, TypeAlias, cast, get_args

if TYPE_CHECKING:
    from ._resumable import JSONValue

SQLValue: TypeAlias = int | float | str | bytes | None
"""A value of a sink table's cell: ``None``, an int (64-bit), a float, a str or bytes."""

SQLType: TypeAlias = Literal["integer", "real", "text", "blob"]
"""A sink table column's type: what its values are (``None`` fits every type)."""

SQL_TYPES: Final[tuple[SQLType, ...]] = get_args(SQLType)

STORE_TABLES: Final = frozenset({"checkpoints", "dead_letters", "sink_tables", "meta"})
"""The stores' own tables: no sink table may take one of these names."""

STORE_INDEXES: Final = frozenset({"checkpoints_by_run", "dead_letters_by_run"})
"""The stores' own indexes, whose names no sink table may take either."""

RESERVED_SUFFIXES: Final = ("_pkey", "_seq")
"""How the names PostgreSQL gives a table's primary-key index and id sequence end.

An index or a sequence shares its schema's names with the tables, so a sink
table named ``out_pkey`` would collide with the index of a sink table ``out``
in `PostgresStore`; every store refuses these names alike.
"""

RESERVED_COLUMNS: Final = frozenset({"id", "run", "checkpoint"})
"""The columns every sink table starts with."""

_IDENTIFIER: Final = re.compile(r"[a-z_][a-z0-9_]*\Z")
_MAX_IDENTIFIER: Final = 63  # PostgreSQL's limit (NAMEDATALEN - 1)
_INT64: Final = 2**63


def _plain(value: object) -> bool:
    """Whether JSON gives ``value`` back as itself: None, a bool, an int, a UTF-8 str."""
    kind = type(value)
    if value is None or kind is int or kind is bool:
        return True
    if kind is str:
        try:
            cast("str", value).encode()
        except UnicodeEncodeError:
            return False
        return True
    return False


def json_copy(value: object, parameter: str) -> Any:
    """``value`` as it comes back from JSON; `TypeError` naming ``parameter`` otherwise.

    Stores keep JSON as UTF-8, so a str holding a lone surrogate (which UTF-8
    cannot encode) is refused too. Values that JSON gives back as they are
    (None, bools, ints, strs, and dicts of them under str keys) are copied
    without the round trip.
    """
    if _plain(value):
        return value
    if type(value) is dict:
        items = cast("dict[object, object]", value)
        if all(type(k) is str and _plain(k) and _plain(v) for k, v in items.items()):
            return dict(items)
    try:
        text = json.dumps(value, allow_nan=False, ensure_ascii=False)
        text.encode()
    except UnicodeEncodeError as exc:
        raise TypeError(
            f"{parameter} must be JSON-serializable as UTF-8: a str holds the lone "
            f"surrogate {exc.object[exc.start : exc.end]!r}"
        ) from None
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{parameter} must be JSON-serializable: {exc}") from None
    return json.loads(text)


def check_utf8(value: str, parameter: str) -> str:
    """``value``, a str UTF-8 can encode (no lone surrogate); `ValueError` otherwise."""
    try:
        value.encode()
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"{parameter} must be encodable as UTF-8, got the lone surrogate "
            f"{exc.object[exc.start : exc.end]!r} at position {exc.start}"
        ) from None
    return value


def check_text(value: str, parameter: str) -> str:
    """``value``, a str every store keeps in a text column: UTF-8, without NUL characters."""
    if "\x00" in value:
        raise ValueError(
            f"{parameter} must not contain a NUL character (PostgreSQL text cannot hold it)"
        )
    return check_utf8(value, parameter)


def check_int64(value: object, parameter: str) -> int:
    """``value``, an int (not a bool) in ``[0, 2**63)``."""
    if type(value) is not int:
        raise TypeError(f"{parameter} must be an int, got {type(value).__name__}")
    if not 0 <= value < _INT64:
        raise ValueError(f"{parameter} must be >= 0 and < 2**63, got {value}")
    return value


def check_identifier(value: object, parameter: str) -> str:
    """``value``, a safe SQL identifier: lower-case letters, digits and ``_``, at most 63."""
    if not isinstance(value, str):
        raise TypeError(f"{parameter} must be a str, got {type(value).__name__}: {value!r}")
    if not _IDENTIFIER.match(value) or len(value) > _MAX_IDENTIFIER:
        raise ValueError(
            f"{parameter} must be an SQL identifier: lower-case letters, digits and _, "
            f"not starting with a digit, at most {_MAX_IDENTIFIER} characters; got {value!r}"
        )
    return value


def check_table(value: object, parameter: str = "table") -> str:
    """``value``, a name a sink table may take (not one of the store's own tables)."""
    table = check_identifier(value, parameter)
    if table in STORE_TABLES | STORE_INDEXES or table.startswith(("sqlite_", "pg_")):
        raise ValueError(f"{parameter} {table!r} is reserved for the store's own tables")
    if table.endswith(RESERVED_SUFFIXES):
        raise ValueError(
            f"{parameter} {table!r} ends like the name of an index or a sequence "
            f"({' or '.join(RESERVED_SUFFIXES)}): PostgreSQL names a table's own so"
        )
    return table


def _check_value(value: object, row: int, column: str) -> SQLValue:
    where = f"rows[{row}] column {column!r}"
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, bool):
        raise TypeError(f"{where}: a bool is not an SQL value (store it as 0 or 1)")
    if isinstance(value, int):
        if not -_INT64 <= value < _INT64:
            raise ValueError(f"{where}: {value} does not fit in 64 bits")
        return value
    if isinstance(value, float):
        if math.isnan(value):
            raise ValueError(f"{where}: NaN is not stored alike by every store")
        return 0.0 if value == 0.0 else value  # SQLite keeps -0.0 as 0.0: so do the others
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError(
                f"{where}: a str with a NUL character (PostgreSQL text cannot hold it)"
            )
        return check_utf8(value, where)
    raise TypeError(
        f"{where}: {type(value).__name__} is not an SQL value (None, int, float, str or bytes)"
    )


def type_of(value: SQLValue) -> SQLType | None:
    """The column type ``value`` calls for (``None`` for ``None``)."""
    if value is None:
        return None
    if isinstance(value, bytes):
        return "blob"
    if isinstance(value, str):
        return "text"
    if isinstance(value, float):
        return "real"
    return "integer"


def fits(value: SQLValue, column_type: SQLType) -> bool:
    """Whether a column of ``column_type`` takes ``value`` (an int fits a real column)."""
    found = type_of(value)
    return found is None or found == column_type or (found, column_type) == ("integer", "real")


def stored(value: SQLValue, column_type: SQLType) -> SQLValue:
    """``value`` as a column of ``column_type`` gives it back (an int in a real column: a float)."""
    if column_type == "real" and isinstance(value, int):
        return float(value)
    return value


# --------------------------------------------------------------------------- records


@dataclasses.dataclass(frozen=True, slots=True)
class DeadLetterRow:
    """One dead-lettered item, saved in the transaction of a checkpoint.

    Args:
        stage: The key of the step that gave up on the item.
        index: The item's index in that step's input.
        record: The error record, already encoded as JSON (a dict, as a rule);
            the record holds its JSON form.

    Examples:
        >>> row = DeadLetterRow("parse", 7, {"error": "ValueError", "item": "x7"})
        >>> row.stage, row.index, row.record["error"]
        ('parse', 7, 'ValueError')
    """

    stage: str
    index: int
    record: JSONValue

    def __post_init__(self) -> None:
        if not isinstance(self.stage, str):  # pyright: ignore[reportUnnecessaryIsInstance] - untyped callers
            raise TypeError(f"stage must be a str, got {type(self.stage).__name__}")
        if not self.stage:
            raise ValueError("stage must not be empty")
        check_text(self.stage, "stage")
        check_int64(self.index, "index")
        object.__setattr__(self, "record", json_copy(self.record, "record"))


@dataclasses.dataclass(frozen=True, slots=True)
class TableRows:
    """Rows for a sink table, saved in the transaction of a checkpoint.

    The store creates the table on first use, with the columns ``id`` (an
    increasing primary key), ``run`` and ``checkpoint`` (the run's name and
    the checkpoint's sequence number), then ``columns``. Each column has a
    type (`SQLType`): ``types`` when given, else that of its values (an int
    and a float make a real column; a column of ``None`` only is text).

    Names are SQL identifiers: lower-case letters, digits and ``_``, not
    starting with a digit, at most 63 characters. Values are ``None``, ints
    (64-bit), floats (not NaN; ``-0.0`` is kept as ``0.0``), strs (UTF-8,
    without NUL) and bytes. Anything else is refused here, with `TypeError`
    or `ValueError`.

    Args:
        table: The sink table's name (not one of the store's own tables:
            ``checkpoints``, ``dead_letters``, ``sink_tables``, ``meta``, nor
            their indexes, nor a name ending in ``_pkey`` or ``_seq``).
        columns: The columns the rows give values for (not ``id``, ``run``
            or ``checkpoint``).
        rows: The rows, one value per column.
        types: Each column's type; by default, from the values.

    Examples:
        >>> rows = TableRows("totals", ("day", "amount"), [("mon", 12), ("tue", 7.5)])
        >>> rows.rows
        (('mon', 12), ('tue', 7.5))
        >>> rows.column_types()
        ('text', 'real')
        >>> TableRows("checkpoints", ("a",), [])
        Traceback (most recent call last):
        ...
        ValueError: table 'checkpoints' is reserved for the store's own tables
    """

    table: str
    columns: tuple[str, ...]
    rows: tuple[tuple[SQLValue, ...], ...]
    types: tuple[SQLType, ...] | None = None

    def __post_init__(self) -> None:
        check_table(self.table)
        columns = _names(self.columns)
        object.__setattr__(self, "columns", columns)
        object.__setattr__(self, "rows", _rows(self.rows, columns))
        if self.types is not None:
            object.__setattr__(self, "types", _types(self.types, columns))
        self.column_types()  # one type per column, or ValueError

    def column_types(self) -> tuple[SQLType, ...]:
        """Each column's type: ``types``, or the type of its values (text for no value)."""
        if self.types is not None:
            for position, row in enumerate(self.rows):
                for column, value, column_type in zip(self.columns, row, self.types, strict=True):
                    if not fits(value, column_type):
                        raise ValueError(
                            f"rows[{position}] column {column!r}: a {type(value).__name__} "
                            f"in a {column_type} column"
                        )
            return self.types
        found: list[SQLType | None] = [None] * len(self.columns)
        for row in self.rows:
            for position, value in enumerate(row):
                kind, have = type_of(value), found[position]
                if kind is None or kind == have:
                    continue
                if have is None or {kind, have} == {"integer", "real"}:
                    found[position] = "real" if have is not None else kind
                else:
                    raise ValueError(
                        f"column {self.columns[position]!r} mixes {have} and {kind} values: "
                        "pass types= to say which it is"
                    )
        return tuple(kind or "text" for kind in found)


def _names(columns: object) -> tuple[str, ...]:
    if isinstance(columns, str) or not isinstance(columns, Iterable):
        raise TypeError(f"columns must be a sequence of str, got {type(columns).__name__}")
    names = tuple(
        check_identifier(column, "columns") for column in cast("Iterable[object]", columns)
    )
    if not names:
        raise ValueError("columns must not be empty")
    reserved = sorted(RESERVED_COLUMNS.intersection(names))
    if reserved:
        raise ValueError(
            f"columns {reserved} are reserved: every sink table has id, run and checkpoint"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"columns must be distinct, got {list(names)}")
    return names


def _rows(rows: object, columns: tuple[str, ...]) -> tuple[tuple[SQLValue, ...], ...]:
    if isinstance(rows, str | bytes) or not isinstance(rows, Iterable):
        raise TypeError(f"rows must be a sequence of rows, got {type(rows).__name__}")
    result: list[tuple[SQLValue, ...]] = []
    for position, row in enumerate(cast("Iterable[object]", rows)):
        if isinstance(row, str | bytes) or not isinstance(row, Sequence):
            raise TypeError(f"rows[{position}] must be a sequence of values, got {row!r}")
        values = cast("Sequence[object]", row)
        if len(values) != len(columns):
            raise ValueError(
                f"rows[{position}] has {len(values)} values for {len(columns)} columns"
            )
        result.append(
            tuple(
                _check_value(value, position, column)
                for value, column in zip(values, columns, strict=True)
            )
        )
    return tuple(result)


def _types(types: object, columns: tuple[str, ...]) -> tuple[SQLType, ...]:
    if isinstance(types, str) or not isinstance(types, Iterable):
        raise TypeError(f"types must be a sequence of column types, got {type(types).__name__}")
    found = tuple(cast("Iterable[object]", types))
    for kind in found:
        if kind not in SQL_TYPES:
            raise ValueError(f"types must be among {list(SQL_TYPES)}, got {kind!r}")
    if len(found) != len(columns):
        raise ValueError(f"types has {len(found)} entries for {len(columns)} columns")
    return cast("tuple[SQLType, ...]", found)


Write: TypeAlias = DeadLetterRow | TableRows
"""What `Store.save` writes in the checkpoint's transaction, besides the checkpoint."""


@dataclasses.dataclass(frozen=True, slots=True)
class DeadLetterRecord:
    """A dead letter as a store gives it back (`Store.dead_letters`).

    Args:
        name: The run's name.
        stage: The key of the step that gave up on the item.
        index: The item's index in that step's input.
        checkpoint: The sequence number of the checkpoint saved with it.
        record: The error record (JSON).
        created_at: The ``created_at`` of that checkpoint.

    Examples:
        >>> import datetime as dt
        >>> when = dt.datetime(2026, 1, 2, tzinfo=dt.UTC)
        >>> letter = DeadLetterRecord("nightly", "parse", 7, 3, {"error": "ValueError"}, when)
        >>> letter.checkpoint, letter.record
        (3, {'error': 'ValueError'})
    """

    name: str
    stage: str
    index: int
    checkpoint: int
    record: JSONValue
    created_at: dt.datetime


_LETTER_FIELDS: Final = frozenset({"name", "stage", "index", "checkpoint", "record", "created_at"})


def letter_json(name: str, sequence: int, created_at: dt.datetime, row: DeadLetterRow) -> str:
    """The JSON form a store keeps for one dead letter."""
    return json.dumps(
        {
            "name": name,
            "stage": row.stage,
            "index": row.index,
            "checkpoint": sequence,
            "record": row.record,
            "created_at": created_at.isoformat(),
        },
        allow_nan=False,
        ensure_ascii=False,
        separators=(",", ":"),
    )


def letter_from_json(text: str | bytes) -> DeadLetterRecord:
    """Read what `letter_json` wrote; `ValueError` for anything else."""
    try:
        parsed: object = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"invalid JSON: {exc}") from None
    data = cast("dict[str, Any]", parsed) if isinstance(parsed, dict) else {}
    if set(data) != set(_LETTER_FIELDS):
        raise ValueError(f"a dead letter is a JSON object with the fields {sorted(_LETTER_FIELDS)}")
    name, stage = data["name"], data["stage"]
    if not isinstance(name, str) or not isinstance(stage, str):
        raise ValueError("a dead letter's name and stage are strings")
    try:
        index = check_int64(data["index"], "index")
        sequence = check_int64(data["checkpoint"], "checkpoint")
        created = dt.datetime.fromisoformat(data["created_at"])
    except (TypeError, ValueError) as exc:
        raise ValueError(f"invalid dead letter: {exc}") from None
    if created.utcoffset() is None:
        raise ValueError("invalid dead letter: created_at has no timezone")
    return DeadLetterRecord(name, stage, index, sequence, data["record"], created)


# --------------------------------------------------------------------------- checks


def check_writes(writes: object) -> tuple[Write, ...]:
    """``writes`` as a tuple, each a `DeadLetterRow` or a `TableRows`."""
    kind = type(writes).__name__
    if isinstance(writes, str | bytes | Mapping) or not isinstance(writes, Iterable):
        raise TypeError(f"writes must be a sequence of DeadLetterRow and TableRows, got {kind}")
    found = tuple(cast("Iterable[object]", writes))
    for write in found:
        if not isinstance(write, DeadLetterRow | TableRows):
            raise TypeError(
                f"writes must hold DeadLetterRow and TableRows, got {type(write).__name__}"
            )
    return cast("tuple[Write, ...]", found)


def check_expect(expect: object) -> int | None:
    """``expect``: ``None`` or a sequence number."""
    return None if expect is None else check_int64(expect, "expect")


@dataclasses.dataclass(frozen=True, slots=True)
class TableShape:
    """A sink table's columns and their types, as the store registered them."""

    columns: tuple[str, ...]
    types: tuple[SQLType, ...]

    def to_json(self) -> tuple[str, str]:
        """The registry's two text columns."""
        return json.dumps(list(self.columns)), json.dumps(list(self.types))

    @classmethod
    def from_json(cls, columns: object, types: object) -> TableShape:
        """Read the registry's two text columns; `ValueError` if they are not a table's."""
        try:
            names = json.loads(cast("str", columns))
            kinds = json.loads(cast("str", types))
            shape = cls(_names(names), _types(kinds, _names(names)))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"the sink table registry is damaged: {exc}") from None
        return shape


class TableMismatch(ValueError):
    """A write does not fit the sink table it goes to (the store names the table)."""


def shape_for(write: TableRows, existing: TableShape | None) -> TableShape:
    """The table ``write`` needs: a new one, or ``existing`` if the write fits it.

    Raises:
        TableMismatch: The table exists with other columns or other types, or
            a value does not fit its column's type.
    """
    wanted = TableShape(write.columns, write.column_types())
    if existing is None:
        return wanted
    if existing.columns != write.columns:
        raise TableMismatch(
            f"sink table {write.table!r} has the columns {list(existing.columns)}, "
            f"the rows give {list(write.columns)}"
        )
    if write.types is not None and write.types != existing.types:
        raise TableMismatch(
            f"sink table {write.table!r} has the column types {list(existing.types)}, "
            f"the rows say {list(write.types)}"
        )
    for position, row in enumerate(write.rows):
        for column, value, column_type in zip(existing.columns, row, existing.types, strict=True):
            if not fits(value, column_type):
                raise TableMismatch(
                    f"sink table {write.table!r}: rows[{position}] gives a "
                    f"{type(value).__name__} for the {column_type} column {column!r}"
                )
    return existing
