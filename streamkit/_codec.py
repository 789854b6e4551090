"""Typed codecs: checkpointed state values to plain JSON and back, never pickled.

A `Codec` turns a value into a JSON value (``encode``) and back (``decode``).
`DEFAULT_CODEC`, a `TypedCodec`, passes the JSON types through and writes
every other type it knows in a tagged form, a JSON object with exactly two
keys, ``{"$type": tag, "value": payload}``:

=========================  ====================================  ===========================
value                      tag                                   payload
=========================  ====================================  ===========================
``float`` inf, -inf, nan   ``float``                             ``"inf"``, ``"-inf"``, ``"nan"``
``tuple``                  ``tuple``                             list of the elements
``set``, ``frozenset``     ``set``, ``frozenset``                list, sorted (strs, ints, JSON)
``dict`` (other keys)      ``dict``                              list of ``[key, value]`` pairs
``bytes``                  ``bytes``                             base64 text
``decimal.Decimal``        ``decimal``                           ``str(value)``
``uuid.UUID``              ``uuid``                              ``str(value)``
``datetime.date``          ``date``                              ISO 8601 text
``datetime.datetime``      ``datetime``                          ISO 8601 text, or an object
``datetime.time``          ``time``                              ISO 8601 text, or an object
``datetime.timedelta``     ``timedelta``                         ISO 8601 duration
dataclass instance         ``module:qualname``                   object of its init fields
``NamedTuple`` instance    ``module:qualname``                   object of its fields
``enum.Enum`` member       ``module:qualname``                   the member's name
``enum.Flag`` member       ``module:qualname``                   the member's value
a type of ``with_type``    ``module:qualname`` (or ``name=``)    what its ``encode`` returns
=========================  ====================================  ===========================

A dict whose keys are not all strings, or one that has a ``"$type"`` key of
its own, is written with the ``dict`` tag, so user data is never mistaken
for a tagged value. A datetime or time is ISO text when its tzinfo is
``None`` or a `datetime.timezone` with its default name and an offset of
whole seconds (and ``fold`` is 0);
otherwise an object ``{"wall": ..., "fold": 1, "offset": ..., "name": ...}``
or ``{"wall": ..., "zone": "Europe/Paris"}`` keeps the fold, the zone's name
and a `zoneinfo.ZoneInfo` zone exactly.

Types are matched exactly: a subclass of ``int``, ``str``, ``list`` or
``dict`` (an ``IntEnum`` member aside, which is an enum), or of ``datetime``,
is not one of these types, since decoding would give back the base type. It
is refused unless a codec is registered for it with `TypedCodec.with_type`.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime as dt
import decimal
import enum
import importlib
import json
import math
import re
import sys
import uuid
import zoneinfo
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, NoReturn, Protocol, TypeVar, cast, runtime_checkable

from ._records import Key
from ._resumable import JSONValue

T = TypeVar("T")
U = TypeVar("U")

TAG: Final = "$type"
"""The key that marks a tagged value."""
_PAYLOAD: Final = "value"
_ROOT: Final = "value"
"""The name the path of a value encoded on its own starts with."""
_REPR_LIMIT: Final = 40
_BUILTIN_TAGS: Final = frozenset(
    {
        "float",
        "tuple",
        "set",
        "frozenset",
        "dict",
        "bytes",
        "decimal",
        "uuid",
        "date",
        "datetime",
        "time",
        "timedelta",
    }
)
_JSON_TYPES: Final = frozenset({str, int, float, bool, type(None), list, dict})
_PLAIN: Final = frozenset({str, int, bool, type(None)})
"""Types written as they are (floats are too, when finite): the fast path."""
_PLAIN_DATA: Final = frozenset({str, int, bool, float, type(None)})


# --------------------------------------------------------------------------- errors


class CodecError(TypeError):
    """A value could not be encoded, or data could not be decoded.

    The message names where the value belongs (`where`: the state key or the
    operator whose state is encoded), the `path` to the offending part and
    its type.

    Args:
        problem: What is wrong with the part at ``path``, as the end of a
            sentence that starts with the path (``"is a complex"``).
        value_type: The type of the offending part.
        where: The state key or operator the value belongs to, if known.
        path: The offending part: ``totals['a'][3]``. A path that starts
            with ``value`` (a value encoded on its own) is renamed after the
            key when `encode_state` or `decode_state` catches the error.
        decoding: Whether decoding failed (encoding by default).

    Attributes:
        problem: What is wrong, as given.
        value_type: The type of the offending part.
        where: The state key or operator, or None.
        path: The offending part.
        decoding: Whether decoding failed.

    Examples:
        >>> try:
        ...     encode_state({"totals": {"a": [1, 2, 3, 4j]}})
        ... except CodecError as error:
        ...     print(error.where, error.path, error.value_type.__name__)
        totals totals['a'][3] complex
    """

    def __init__(
        self,
        problem: str,
        *,
        value_type: type[Any],
        where: str | None = None,
        path: str = _ROOT,
        decoding: bool = False,
    ) -> None:
        subject = "the value" if where is None else repr(where)
        verb = "decode" if decoding else "encode"
        super().__init__(f"cannot {verb} {subject}: {path} {problem}")
        self.problem = problem
        self.value_type = value_type
        self.where = where
        self.path = path
        self.decoding = decoding

    def __reduce__(self) -> tuple[Any, ...]:
        # The constructor's arguments are keywords: pickle them (errors cross processes).
        fields = (self.problem, self.value_type, self.where, self.path, self.decoding)
        return (_rebuild_error, fields)

    def _located(self, where: str, root: str) -> CodecError:
        """This error for the value of ``where``, whose path starts at ``root``."""
        path = self.path
        if self.where is None and path.startswith(_ROOT):
            path = root + path[len(_ROOT) :]
        located = CodecError(
            self.problem,
            value_type=self.value_type,
            where=where,
            path=path,
            decoding=self.decoding,
        )
        located.__cause__ = self.__cause__
        return located


def _rebuild_error(
    problem: str, value_type: type[Any], where: str | None, path: str, decoding: bool
) -> CodecError:
    return CodecError(problem, value_type=value_type, where=where, path=path, decoding=decoding)


class _Failure(Exception):
    """Raised inside the codec; the path is collected on the way out."""

    def __init__(self, problem: str, value_type: type[Any]) -> None:
        super().__init__(problem)
        self.problem = problem
        self.value_type = value_type
        self.steps: list[str] = []
        self.about_payload = False

    def error(self, *, decoding: bool) -> CodecError:
        return CodecError(
            self.problem,
            value_type=self.value_type,
            path=_ROOT + "".join(reversed(self.steps)),
            decoding=decoding,
        )


def _type(value: object) -> type[Any]:
    return type(value)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _REPR_LIMIT else text[: _REPR_LIMIT - 3] + "..."


def _unknown(value: object, registered: Mapping[type[Any], object]) -> _Failure:
    kind = type(value)
    for base in kind.__mro__[1:]:
        if base in _JSON_TYPES or base in _ENCODERS or base in registered:
            return _Failure(
                f"is a {kind.__qualname__}, a subclass of {base.__qualname__}: decoding would "
                f"give a {base.__qualname__}; register a codec for {kind.__qualname__} "
                "with TypedCodec.with_type",
                kind,
            )
    return _Failure(
        f"is a {kind.__qualname__}, which the codec does not know; register one with "
        f"TypedCodec.with_type({kind.__qualname__}, encode=..., decode=...)",
        kind,
    )


def _bad_data(data: object, expected: str) -> _Failure:
    failure = _Failure(f"is {_short(data)}, not {expected}", type(data))
    failure.about_payload = True
    return failure


# --------------------------------------------------------------------------- the protocol


@runtime_checkable
class Codec(Protocol[T]):
    """Turns values of type ``T`` into JSON values and back.

    ``decode(encode(value))`` must equal ``value`` and have its type, and
    ``encode`` must return plain JSON: None, bool, int, finite float, str,
    and lists and str-keyed dicts of them (``json.dumps`` needs no
    ``default=``). Raise `CodecError` for a value the codec cannot encode
    and for data it cannot decode. Give a codec to a `Key` (``codec=``) to
    encode that key's values; `DEFAULT_CODEC` encodes the others.

    Examples:
        >>> import fractions
        >>> from typing import Any
        >>> class FractionCodec:
        ...     def encode(self, value: fractions.Fraction) -> Any:
        ...         return [value.numerator, value.denominator]
        ...
        ...     def decode(self, data: Any) -> fractions.Fraction:
        ...         return fractions.Fraction(*data)
        >>> isinstance(FractionCodec(), Codec)
        True
        >>> codec: Codec[fractions.Fraction] = FractionCodec()
        >>> codec.decode(codec.encode(fractions.Fraction(1, 3)))
        Fraction(1, 3)
    """

    def encode(self, value: T, /) -> JSONValue:
        """The JSON form of ``value``."""
        ...

    def decode(self, data: JSONValue, /) -> T:
        """The value whose JSON form is ``data``."""
        ...


# --------------------------------------------------------------------------- class paths


def _class_path(cls: type[Any]) -> str:
    """``module:qualname`` of a class that can be found again by that path."""
    qualname = cls.__qualname__
    if "<locals>" in qualname:
        raise _Failure(
            f"is a {qualname}, a class defined inside a function: the codec finds classes "
            "again by their import path; define it at module level",
            cls,
        )
    path = f"{cls.__module__}:{qualname}"
    found: object = sys.modules.get(cls.__module__)
    for part in qualname.split("."):
        found = getattr(found, part, None)
    if found is not cls:
        raise _Failure(
            f"is a {qualname}, which cannot be found again at {path!r}: the codec finds "
            "classes again by their import path",
            cls,
        )
    return path


def _import_class(path: str) -> object:
    module_name, _, qualname = path.partition(":")
    try:
        found: object = importlib.import_module(module_name)
        for part in qualname.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError, ValueError) as exc:
        failed = _Failure(
            f"names the class {path!r}, which cannot be imported ({type(exc).__name__}: {exc})",
            str,
        )
        raise failed from exc
    return found


# --------------------------------------------------------------------------- times


_MICROSECOND: Final = dt.timedelta(microseconds=1)
_DURATION: Final = re.compile(
    r"(?P<sign>-)?P(?:(?P<days>\d+)D)?"
    r"(?:T(?:(?P<hours>\d+)H)?(?:(?P<minutes>\d+)M)?(?:(?P<seconds>\d+)(?:\.(?P<fraction>\d{1,6}))?S)?)?"
)


def _duration(value: dt.timedelta) -> str:
    """ISO 8601 duration: ``P1DT2H3M4.000005S``; ``-P...`` when negative; ``PT0S``."""
    micros = value // _MICROSECOND
    sign = "-" if micros < 0 else ""
    days, micros = divmod(abs(micros), 86_400_000_000)
    seconds, micros = divmod(micros, 1_000_000)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    clock = ""
    if hours:
        clock += f"{hours}H"
    if minutes:
        clock += f"{minutes}M"
    if micros:
        clock += f"{seconds}.{micros:06d}S"
    elif seconds:
        clock += f"{seconds}S"
    text = f"{sign}P{days}D" if days else f"{sign}P"
    if clock:
        text += "T" + clock
    elif not days:
        text += "T0S"
    return text


def _parse_duration(data: object) -> dt.timedelta:
    match = _DURATION.fullmatch(data) if isinstance(data, str) else None
    if match is None or data in ("P", "-P") or cast("str", data).endswith("T"):
        raise _bad_data(data, "an ISO 8601 duration such as 'P1DT2H3M4.5S'")
    parts = match.groupdict()
    try:
        value = dt.timedelta(
            days=int(parts["days"] or 0),
            hours=int(parts["hours"] or 0),
            minutes=int(parts["minutes"] or 0),
            seconds=int(parts["seconds"] or 0),
            microseconds=int((parts["fraction"] or "0").ljust(6, "0")),
        )
    except OverflowError as exc:
        raise _bad_data(data, "a duration a timedelta can hold") from exc
    return -value if parts["sign"] else value


def _moment(value: dt.datetime | dt.time) -> JSONValue:
    """A datetime or time: ISO text when that keeps everything, else an object."""
    tz = value.tzinfo
    if type(tz) is dt.timezone:
        offset = tz.utcoffset(None)
        named = tz.tzname(None) != dt.timezone(offset).tzname(None)
        # fromisoformat (Python 3.11) drops an offset's microseconds: keep those apart
        if not named and value.fold == 0 and not offset.microseconds:
            return value.isoformat()
        fields: dict[str, JSONValue] = {"wall": value.replace(tzinfo=None).isoformat()}
        if value.fold:
            fields["fold"] = 1
        fields["offset"] = _duration(offset)
        if named:
            fields["name"] = tz.tzname(None)
        return fields
    if tz is None:
        if value.fold == 0:
            return value.isoformat()
        return {"wall": value.isoformat(), "fold": 1}
    key = getattr(tz, "key", None) if isinstance(tz, zoneinfo.ZoneInfo) else None
    if key is None:
        raise _Failure(
            f"has a tzinfo of type {type(tz).__qualname__}, which the codec does not know: "
            "use a datetime.timezone or a zoneinfo.ZoneInfo made from a key",
            type(tz),
        )
    fields = {"wall": value.replace(tzinfo=None).isoformat()}
    if value.fold:
        fields["fold"] = 1
    fields["zone"] = key
    return fields


def _parse_moment(data: JSONValue, kind: type[dt.datetime | dt.time]) -> dt.datetime | dt.time:
    what = f"an ISO 8601 {kind.__name__}"
    raw: object = data
    if type(data) is str:
        try:
            return kind.fromisoformat(data)
        except ValueError as exc:
            raise _bad_data(raw, what) from exc
    fields = cast("dict[str, object]", data) if type(data) is dict else {}
    wall_text = fields.get("wall")
    if type(wall_text) is not str:
        raise _bad_data(raw, f"{what} or an object with a 'wall' time")
    fold = fields.get("fold", 0)
    if set(fields) - {"wall", "fold", "offset", "name", "zone"} or fold not in (0, 1):
        raise _bad_data(raw, "an object of 'wall', 'fold', 'offset', 'name' or 'zone'")
    try:
        wall = kind.fromisoformat(wall_text)
    except ValueError as exc:
        raise _bad_data(wall_text, what) from exc
    tz: dt.tzinfo | None = None
    zone, name = fields.get("zone"), fields.get("name")
    if "zone" in fields:
        if type(zone) is not str or "offset" in fields or "name" in fields:
            raise _bad_data(raw, "a 'zone' key without 'offset' or 'name'")
        try:
            tz = zoneinfo.ZoneInfo(zone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise _Failure(f"names the time zone {zone!r}, which is not known", str) from exc
    elif "offset" in fields:
        offset = _parse_duration(fields["offset"])
        if name is not None and type(name) is not str:
            raise _bad_data(raw, "an object whose 'name' is a str")
        try:
            tz = dt.timezone(offset) if name is None else dt.timezone(offset, name)
        except ValueError as exc:
            raise _bad_data(raw, "a UTC offset within a day") from exc
    elif "name" in fields:
        raise _bad_data(raw, "a 'name' with an 'offset'")
    return wall.replace(tzinfo=tz, fold=1 if fold else 0)


# --------------------------------------------------------------------------- the codec


@dataclasses.dataclass(frozen=True, slots=True)
class _Custom:
    cls: type[Any]
    name: str
    encode: Callable[[Any], object]
    decode: Callable[[Any], Any]


_Encoder = Callable[["TypedCodec", Any], JSONValue]


def _is_named_tuple(cls: object) -> bool:
    """Whether ``cls`` is a `typing.NamedTuple` (or `collections.namedtuple`) class."""
    return isinstance(cls, type) and "_fields" in vars(cls) and issubclass(cls, tuple)


class TypedCodec:
    """The codec for checkpointed state: JSON types, plus a tagged form for many more.

    `DEFAULT_CODEC` is the instance the checkpoints use. It passes str, int,
    bool, None, finite floats, lists and str-keyed dicts through, and writes
    tuples, sets, frozensets, other dicts, bytes, Decimal, UUID, dates,
    datetimes, times, timedeltas, enum members, dataclass instances and
    NamedTuples in a tagged form (listed in
    [Encoding state](persistence.md#encoding-state)), however they are
    nested, so that ``decode(encode(value)) == value`` with the same types
    throughout. Non-finite floats are tagged too, so the encoded form is
    strict JSON. Nothing is ever pickled: classes are found again by their
    import path (``module:qualname``), so a class defined inside a function
    is refused, and a dataclass is rebuilt by calling it with its init
    fields (``__post_init__`` runs; fields with ``init=False`` are computed
    again, not stored). Decoding imports the module a tag names, and calls
    only dataclasses, NamedTuples, enums and registered decoders.

    The encoded form is deterministic: a set's elements are sorted (strings
    or ints in their order, anything else by its JSON text), and dicts keep
    their order. A value the codec
    cannot encode raises `CodecError` naming the path to it and its type.

    A codec is immutable; `with_type` returns a new codec that also
    encodes one more type.

    Examples:
        >>> import datetime as dt
        >>> value = {"seen": {3, 1, 2}, "at": dt.date(2026, 1, 2), "pair": (1, "a")}
        >>> data = DEFAULT_CODEC.encode(value)
        >>> data["seen"]
        {'$type': 'set', 'value': [1, 2, 3]}
        >>> data["at"]
        {'$type': 'date', 'value': '2026-01-02'}
        >>> DEFAULT_CODEC.decode(data) == value
        True
    """

    __slots__ = ("_by_name", "_by_type")

    _by_type: Mapping[type[Any], _Custom]
    _by_name: Mapping[str, _Custom]

    def __init__(self) -> None:
        object.__setattr__(self, "_by_type", {})
        object.__setattr__(self, "_by_name", {})

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError(f"cannot assign to {name!r}: a TypedCodec is immutable")

    def __delattr__(self, name: str) -> NoReturn:
        raise AttributeError(f"cannot delete {name!r}: a TypedCodec is immutable")

    def __repr__(self) -> str:
        if not self._by_type:
            return "TypedCodec()"
        names = ", ".join(custom.cls.__qualname__ for custom in self._by_type.values())
        return f"TypedCodec(with_types=[{names}])"

    @property
    def types(self) -> tuple[type[Any], ...]:
        """The types registered with `with_type`, in the order they were."""
        return tuple(self._by_type)

    def with_type(
        self,
        cls: type[U],
        /,
        *,
        encode: Callable[[U], object],
        decode: Callable[[Any], U],
        name: str | None = None,
    ) -> TypedCodec:
        """A new codec that also encodes ``cls``, with ``encode`` and ``decode``.

        ``encode`` turns an instance into anything this codec can encode (a
        dict of Decimals, a tuple, ...), and ``decode`` gets that back,
        decoded, and returns the instance. The value is written as
        ``{"$type": name, "value": ...}``. Only instances of exactly ``cls``
        use it (a subclass would come back as ``cls``); a registered type
        takes precedence over the built-in forms (a dataclass can choose its
        own), and registering ``cls`` again replaces its codec. This codec is
        left unchanged.

        Args:
            cls: The type.
            encode: Turns an instance of ``cls`` into an encodable value.
            decode: Turns that value back into an instance of ``cls``.
            name: The tag written for it: ``module:qualname`` of ``cls`` by
                default. Give one to keep checkpoints readable after the
                class moves.

        Returns:
            The new codec.

        Raises:
            TypeError: ``cls`` is not a class or is a JSON type, or
                ``encode`` or ``decode`` is not callable.
            ValueError: ``name`` is empty, is a built-in tag, or is the tag of
                another registered type.

        Examples:
            >>> import decimal
            >>> @dataclasses.dataclass(frozen=True)
            ... class Money:
            ...     cents: int
            ...     currency: str
            >>> codec = DEFAULT_CODEC.with_type(
            ...     Money,
            ...     encode=lambda money: f"{money.cents} {money.currency}",
            ...     decode=lambda text: Money(int(text.split()[0]), text.split()[1]),
            ...     name="money",
            ... )
            >>> codec.encode([Money(1250, "EUR")])
            [{'$type': 'money', 'value': '1250 EUR'}]
            >>> codec.decode(codec.encode(Money(5, "USD")))
            Money(cents=5, currency='USD')
        """
        if not isinstance(cls, type):  # pyright: ignore[reportUnnecessaryIsInstance] - untyped callers
            raise TypeError(f"cls must be a class, got {type(cls).__name__}: {cls!r}")
        if cls in _JSON_TYPES:
            raise TypeError(f"cls must not be a JSON type ({cls.__name__} passes through)")
        for parameter, function in (("encode", encode), ("decode", decode)):
            if not callable(function):
                raise TypeError(
                    f"{parameter} must be callable, got {type(function).__name__}: {function!r}"
                )
        if name is None:
            tag = f"{cls.__module__}:{cls.__qualname__}"
        elif not isinstance(name, str) or not name:  # type: ignore[redundant-expr]  # pyright: ignore[reportUnnecessaryIsInstance] - untyped callers
            raise TypeError(f"name must be a non-empty str or None, got {name!r}")
        else:
            tag = name
        if tag in _BUILTIN_TAGS:
            raise ValueError(f"name must not be a built-in tag, got {tag!r}")
        other = self._by_name.get(tag)
        if other is not None and other.cls is not cls:
            raise ValueError(
                f"name {tag!r} is already the tag of {other.cls.__qualname__}; choose another name"
            )
        custom = _Custom(cls, tag, cast("Callable[[Any], object]", encode), decode)
        by_type = {kind: entry for kind, entry in self._by_type.items() if kind is not cls}
        by_type[cls] = custom
        codec = TypedCodec()
        object.__setattr__(codec, "_by_type", by_type)
        object.__setattr__(codec, "_by_name", {entry.name: entry for entry in by_type.values()})
        return codec

    # ----------------------------------------------------------------------- encoding

    def encode(self, value: Any, /) -> JSONValue:
        """The JSON form of ``value``.

        Raises:
            CodecError: A part of ``value`` has a type the codec cannot encode
                (the error's ``path`` starts with ``value``).

        Examples:
            >>> DEFAULT_CODEC.encode({"ids": (1, 2), "ratio": 0.5})
            {'ids': {'$type': 'tuple', 'value': [1, 2]}, 'ratio': 0.5}
        """
        try:
            return self._encode(value)
        except _Failure as failure:
            raise failure.error(decoding=False) from failure.__cause__
        except RecursionError:
            raise CodecError(
                "is nested too deeply, or contains itself", value_type=_type(value)
            ) from None

    def _encode(self, value: Any) -> JSONValue:
        kind = _type(value)
        if kind is str or kind is int or kind is bool or value is None:
            return value
        if kind is float:
            return value if math.isfinite(value) else {TAG: "float", _PAYLOAD: repr(value)}
        if kind is list:
            return self._items(value)
        if kind is dict:
            return self._dict(value)
        custom = self._by_type.get(kind)
        if custom is not None:
            return self._custom(custom, value)
        encoder = _ENCODERS.get(kind)
        if encoder is not None:
            return encoder(self, value)
        if isinstance(value, enum.Enum):
            payload = value.value if isinstance(value, enum.Flag) else value.name
            return {TAG: _class_path(kind), _PAYLOAD: payload}
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return self._dataclass(value)
        if _is_named_tuple(kind):
            return self._named_tuple(value)  # pyright: ignore[reportArgumentType] - a NamedTuple
        raise _unknown(value, self._by_type)

    def _named_tuple(self, value: tuple[Any, ...]) -> JSONValue:
        names: tuple[str, ...] = getattr(type(value), "_fields")  # noqa: B009 - a NamedTuple's
        fields: dict[str, JSONValue] = {}
        for name, item in zip(names, value, strict=True):
            try:
                fields[name] = self._encode(item)
            except _Failure as failure:
                failure.steps.append(f".{name}")
                raise
        return {TAG: _class_path(type(value)), _PAYLOAD: fields}

    def _items(self, values: Iterable[Any]) -> list[JSONValue]:
        encoded: list[JSONValue] = []
        for index, item in enumerate(values):
            if type(item) in _PLAIN:
                encoded.append(item)
                continue
            try:
                encoded.append(self._encode(item))
            except _Failure as failure:
                failure.steps.append(f"[{index}]")
                raise
        return encoded

    def _dict(self, value: dict[Any, Any]) -> JSONValue:
        if TAG not in value and all(type(key) is str for key in value):
            encoded: dict[str, JSONValue] = {}
            for key, item in value.items():
                if type(item) in _PLAIN:
                    encoded[key] = item
                    continue
                try:
                    encoded[key] = self._encode(item)
                except _Failure as failure:
                    failure.steps.append(f"[{key!r}]")
                    raise
            return encoded
        pairs: list[JSONValue] = []
        for key, item in value.items():
            try:
                encoded_key = self._encode(key)
            except _Failure as failure:
                failure.steps.append(f"<key {_short(key)}>")
                raise
            try:
                pairs.append([encoded_key, self._encode(item)])
            except _Failure as failure:
                failure.steps.append(f"[{_short(key)}]")
                raise
        return {TAG: "dict", _PAYLOAD: pairs}

    def _set(self, value: set[Any] | frozenset[Any]) -> JSONValue:
        encoded: list[JSONValue] = []
        for item in value:
            if type(item) in _PLAIN:
                encoded.append(item)
                continue
            try:
                encoded.append(self._encode(item))
            except _Failure as failure:
                failure.steps.append(f"{{{_short(item)}}}")
                raise
        kinds = {_type(item) for item in encoded}
        if kinds == {str} or kinds == {int}:
            encoded.sort()  # strings, or ints, in their natural order
        else:
            encoded.sort(key=_sort_key)  # anything else by its JSON text
        return {TAG: "set" if type(value) is set else "frozenset", _PAYLOAD: encoded}

    def _dataclass(self, value: Any) -> JSONValue:
        tag = _class_path(_type(value))
        fields: dict[str, JSONValue] = {}
        for field in dataclasses.fields(value):
            if not field.init:
                continue
            try:
                fields[field.name] = self._encode(getattr(value, field.name))
            except _Failure as failure:
                failure.steps.append(f".{field.name}")
                raise
        return {TAG: tag, _PAYLOAD: fields}

    def _custom(self, custom: _Custom, value: Any) -> JSONValue:
        try:
            form = custom.encode(value)
        except Exception as exc:
            failed = _Failure(
                f"is a {custom.cls.__qualname__}, whose encode raised {type(exc).__name__}: {exc}",
                custom.cls,
            )
            raise failed from exc
        return {TAG: custom.name, _PAYLOAD: self._encode(form)}

    # ----------------------------------------------------------------------- decoding

    def decode(self, data: JSONValue, /) -> Any:
        """The value whose JSON form is ``data`` (what `encode` returned, or its JSON).

        Raises:
            CodecError: ``data`` is not JSON, or holds a tagged value that is
                malformed or names a type the codec cannot rebuild.

        Examples:
            >>> DEFAULT_CODEC.decode({"$type": "bytes", "value": "aGk="})
            b'hi'
            >>> DEFAULT_CODEC.decode({"pair": {"$type": "tuple", "value": [1, 2]}})
            {'pair': (1, 2)}
        """
        try:
            return self._decode(data)
        except _Failure as failure:
            raise failure.error(decoding=True) from failure.__cause__
        except RecursionError:
            raise CodecError(
                "is nested too deeply", value_type=_type(data), decoding=True
            ) from None

    def _decode(self, data: JSONValue) -> Any:
        kind = _type(data)
        if kind is str or kind is int or kind is bool or kind is float or data is None:
            return data
        if kind is list:
            return self._decode_items(data)
        if kind is dict:
            if TAG in data:
                return self._tagged(data)
            decoded: dict[str, Any] = {}
            for key, item in data.items():
                if type(key) is not str:
                    raise _Failure(
                        f"is a dict with the key {_short(key)}: JSON objects have str keys",
                        dict,
                    )
                try:
                    decoded[key] = self._decode(item)
                except _Failure as failure:
                    failure.steps.append(f"[{key!r}]")
                    raise
            return decoded
        raise _Failure(f"is a {kind.__qualname__}, which is not a JSON value", kind)

    def _decode_items(self, data: list[object]) -> list[Any]:
        decoded: list[Any] = []
        for index, item in enumerate(data):
            if type(item) in _PLAIN_DATA:
                decoded.append(item)
                continue
            try:
                decoded.append(self._decode(item))
            except _Failure as failure:
                failure.steps.append(f"[{index}]")
                raise
        return decoded

    def _tagged(self, data: dict[str, JSONValue]) -> Any:
        tag = data[TAG]
        if len(data) != 2 or _PAYLOAD not in data or not isinstance(tag, str):
            raise _Failure(
                f"is a dict with a {TAG!r} key but is not a tagged value "
                f'{{"{TAG}": <str>, "{_PAYLOAD}": ...}}',
                dict,
            )
        payload = data[_PAYLOAD]
        try:
            return self._untag(tag, payload)
        except _Failure as failure:
            if failure.about_payload and not failure.steps:
                failure.problem = f"is tagged {tag!r}, but its payload {failure.problem}"
                failure.about_payload = False
            raise

    def _untag(self, tag: str, payload: JSONValue) -> Any:
        custom = self._by_name.get(tag)
        if custom is not None:
            value = self._decode(payload)
            try:
                return custom.decode(value)
            except Exception as exc:
                failed = _Failure(
                    f"could not be decoded by the codec of {custom.cls.__qualname__}: "
                    f"{type(exc).__name__}: {exc}",
                    _type(payload),
                )
                raise failed from exc
        decoder = _DECODERS.get(tag)
        if decoder is not None:
            return decoder(self, payload)
        if ":" not in tag:
            raise _Failure(f"has the unknown tag {tag!r}", dict)
        cls = _import_class(tag)
        if isinstance(cls, type) and issubclass(cls, enum.Enum):
            return _member(cls, payload)
        if isinstance(cls, type) and dataclasses.is_dataclass(cls):
            return self._rebuild(cls, payload)
        if _is_named_tuple(cls):  # pyright: ignore[reportUnknownArgumentType] - any class
            return self._rebuild(cast("type[Any]", cls), payload)
        raise _Failure(
            f"names {tag!r}, which is not a dataclass, a NamedTuple or an Enum, and the codec has "
            "no codec registered for it (TypedCodec.with_type)",
            dict,
        )

    def _rebuild(self, cls: type[Any], payload: JSONValue) -> Any:
        if type(payload) is not dict:
            raise _bad_data(payload, f"an object of {cls.__qualname__}'s fields")
        fields: dict[str, Any] = {}
        for name, item in cast("dict[str, object]", payload).items():
            try:
                fields[name] = self._decode(item)
            except _Failure as failure:
                failure.steps.append(f".{name}")
                raise
        try:
            return cls(**fields)
        except Exception as exc:
            failed = _Failure(
                f"could not be rebuilt: {cls.__qualname__}(...) raised {type(exc).__name__}: {exc}",
                dict,
            )
            raise failed from exc

    def _decode_list(self, payload: JSONValue, what: str) -> list[Any]:
        if type(payload) is not list:
            raise _bad_data(payload, f"a list of the {what}")
        return self._decode_items(cast("list[object]", payload))

    def _decode_set(self, payload: JSONValue) -> set[Any]:
        items = self._decode_list(payload, "elements")
        try:
            return set(items)
        except TypeError as exc:
            raise _Failure(f"holds an element that cannot be in a set: {exc}", list) from exc

    def _decode_dict(self, payload: JSONValue) -> dict[Any, Any]:
        if type(payload) is not list:
            raise _bad_data(payload, "a list of [key, value] pairs")
        decoded: dict[Any, Any] = {}
        for index, pair in enumerate(cast("list[object]", payload)):
            entry: object = pair  # as given, for the message
            if type(pair) is not list or len(cast("list[object]", pair)) != 2:
                failed = _bad_data(entry, "a [key, value] pair")
                failed.steps.append(f"[{index}]")
                raise failed
            try:
                key = self._decode(pair[0])
            except _Failure as failure:
                failure.steps.append(f"<key {index}>")
                raise
            try:
                decoded[key] = self._decode(pair[1])
            except _Failure as failure:
                failure.steps.append(f"[{_short(key)}]")
                raise
            except TypeError as exc:  # an unhashable key
                raise _Failure(f"has a key that cannot be a dict key: {exc}", list) from exc
        return decoded


def _member(cls: type[enum.Enum], payload: JSONValue) -> enum.Enum:
    if issubclass(cls, enum.Flag):
        if type(payload) is not int:
            raise _bad_data(payload, f"the int value of a {cls.__qualname__}")
        try:
            return cls(payload)
        except ValueError as exc:
            raise _bad_data(payload, f"a value of {cls.__qualname__}") from exc
    if type(payload) is not str:
        raise _bad_data(payload, f"the name of a {cls.__qualname__} member")
    try:
        return cls[payload]
    except KeyError as exc:
        raise _bad_data(payload, f"the name of a {cls.__qualname__} member") from exc


_sort_key: Final = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
).encode
"""The order of a set's elements: their JSON text (keys sorted)."""


def _text(tag: str, value: str) -> JSONValue:
    return {TAG: tag, _PAYLOAD: value}


def _encode_bytes(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


_ENCODERS: Final[dict[type[Any], _Encoder]] = {
    tuple: lambda codec, value: {TAG: "tuple", _PAYLOAD: codec._items(value)},  # pyright: ignore[reportPrivateUsage] - the codec's own table
    set: TypedCodec._set,  # pyright: ignore[reportPrivateUsage]
    frozenset: TypedCodec._set,  # pyright: ignore[reportPrivateUsage]
    bytes: lambda codec, value: _text("bytes", _encode_bytes(value)),
    decimal.Decimal: lambda codec, value: _text("decimal", str(value)),
    uuid.UUID: lambda codec, value: _text("uuid", str(value)),
    dt.date: lambda codec, value: _text("date", value.isoformat()),
    dt.datetime: lambda codec, value: {TAG: "datetime", _PAYLOAD: _moment(value)},
    dt.time: lambda codec, value: {TAG: "time", _PAYLOAD: _moment(value)},
    dt.timedelta: lambda codec, value: _text("timedelta", _duration(value)),
}


def _expect_str(payload: JSONValue, what: str) -> str:
    if type(payload) is not str:
        raise _bad_data(payload, what)
    return payload


def _decode_float(payload: JSONValue) -> float:
    if payload not in ("inf", "-inf", "nan"):
        raise _bad_data(payload, "'inf', '-inf' or 'nan'")
    return float(cast("str", payload))


def _decode_bytes(payload: JSONValue) -> bytes:
    text = _expect_str(payload, "base64 text")
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise _bad_data(payload, "base64 text") from exc


def _decode_decimal(payload: JSONValue) -> decimal.Decimal:
    text = _expect_str(payload, "a decimal number")
    try:
        return decimal.Decimal(text)
    except decimal.InvalidOperation as exc:
        raise _bad_data(payload, "a decimal number") from exc


def _decode_uuid(payload: JSONValue) -> uuid.UUID:
    text = _expect_str(payload, "a UUID")
    try:
        return uuid.UUID(text)
    except ValueError as exc:
        raise _bad_data(payload, "a UUID") from exc


def _decode_date(payload: JSONValue) -> dt.date:
    text = _expect_str(payload, "an ISO 8601 date")
    try:
        return dt.date.fromisoformat(text)
    except ValueError as exc:
        raise _bad_data(payload, "an ISO 8601 date") from exc


_Decoder = Callable[[TypedCodec, JSONValue], Any]

_DECODERS: Final[dict[str, _Decoder]] = {
    "float": lambda codec, payload: _decode_float(payload),
    "tuple": lambda codec, payload: tuple(codec._decode_list(payload, "elements")),  # pyright: ignore[reportPrivateUsage] - the codec's own table
    "set": TypedCodec._decode_set,  # pyright: ignore[reportPrivateUsage]
    "frozenset": lambda codec, payload: frozenset(codec._decode_set(payload)),  # pyright: ignore[reportPrivateUsage]
    "dict": TypedCodec._decode_dict,  # pyright: ignore[reportPrivateUsage]
    "bytes": lambda codec, payload: _decode_bytes(payload),
    "decimal": lambda codec, payload: _decode_decimal(payload),
    "uuid": lambda codec, payload: _decode_uuid(payload),
    "date": lambda codec, payload: _decode_date(payload),
    "datetime": lambda codec, payload: _parse_moment(payload, dt.datetime),
    "time": lambda codec, payload: _parse_moment(payload, dt.time),
    "timedelta": lambda codec, payload: _parse_duration(payload),
}


DEFAULT_CODEC: Final = TypedCodec()
"""The codec checkpoints use for state values whose `Key` names no codec of its own."""


# --------------------------------------------------------------------------- state


def _codecs_of(keys: Iterable[Key[Any]]) -> dict[str, Codec[Any]]:
    given: object = keys
    if isinstance(given, (str, bytes)) or not isinstance(given, Iterable):  # pyright: ignore[reportUnnecessaryIsInstance] - untyped callers
        raise TypeError(f"keys must be an iterable of Key, got {type(given).__name__}")
    codecs: dict[str, Codec[Any]] = {}
    for key in keys:
        if not isinstance(key, Key):  # pyright: ignore[reportUnnecessaryIsInstance] - untyped callers
            raise TypeError(f"keys must hold Key objects, got {type(key).__name__}: {key!r}")
        codec = key.codec
        if codec is None:
            continue
        other = codecs.get(key.qualified)
        if other is not None and other is not codec:
            raise ValueError(f"keys name two codecs for {key.qualified!r}")
        codecs[key.qualified] = codec
    return codecs


def _check_codec(codec: object, parameter: str) -> None:
    if not isinstance(codec, Codec):
        raise TypeError(
            f"{parameter} must be a codec (with encode and decode), got {type(codec).__name__}"
        )


def encode_state(
    values: Mapping[str, Any],
    /,
    keys: Iterable[Key[Any]] = (),
    *,
    codec: Codec[Any] = DEFAULT_CODEC,
    where: str | None = None,
) -> dict[str, JSONValue]:
    """The JSON form of a state, entry by entry, each with its key's codec.

    The value of an entry whose name is the `qualified` name of one of
    ``keys`` with a codec (``Key(..., codec=...)``) is encoded with that
    codec; every other value with ``codec``. A value that cannot be encoded
    raises `CodecError` whose ``where`` is ``where`` (the operator, say),
    or else the entry's name, and whose ``path`` starts with the entry's
    name: ``totals['a'][3]``. A codec that raises another exception is
    reported the same way.

    Args:
        values: The state: a `State`, or any mapping with str keys.
        keys: The keys whose codecs to use.
        codec: The codec of the other entries.
        where: What the state belongs to, for the error messages.

    Returns:
        A new dict of plain JSON values (``json.dumps`` needs no ``default=``).

    Raises:
        CodecError: An entry cannot be encoded.
        TypeError: ``values`` is not a mapping with str keys, or ``keys`` or
            ``codec`` is not what it should be.
        ValueError: Two of ``keys`` name different codecs for one entry.

    Examples:
        >>> import datetime as dt
        >>> from streamkit import Key
        >>> SEEN = Key[set[str]]("seen")
        >>> encode_state({"seen": {"b", "a"}, "day": dt.date(2026, 1, 2)}, [SEEN])["seen"]
        {'$type': 'set', 'value': ['a', 'b']}
        >>> try:
        ...     encode_state({"acc": [1, 2j]}, where="scan")
        ... except CodecError as error:
        ...     print(error.where, error.path, error.value_type.__name__)
        scan acc[1] complex
    """
    return _convert(values, keys, codec, where, decoding=False)


def decode_state(
    data: Mapping[str, JSONValue],
    /,
    keys: Iterable[Key[Any]] = (),
    *,
    codec: Codec[Any] = DEFAULT_CODEC,
    where: str | None = None,
) -> dict[str, Any]:
    """The state whose JSON form is ``data``: `encode_state` the other way round.

    Each entry is decoded with the codec of its key among ``keys``, or with
    ``codec``. Errors are reported as by `encode_state`.

    Args:
        data: What `encode_state` returned (or its JSON, loaded again).
        keys: The keys whose codecs to use: the same as when encoding.
        codec: The codec of the other entries.
        where: What the state belongs to, for the error messages.

    Returns:
        A new dict of the values (``State(decode_state(...))`` makes a `State`).

    Raises:
        CodecError: An entry cannot be decoded.
        TypeError: ``data`` is not a mapping with str keys, or ``keys`` or
            ``codec`` is not what it should be.
        ValueError: Two of ``keys`` name different codecs for one entry.

    Examples:
        >>> import json
        >>> from streamkit import Key
        >>> data = json.loads(json.dumps(encode_state({"pair": (1, 2), "total": 3})))
        >>> decode_state(data)
        {'pair': (1, 2), 'total': 3}
    """
    return _convert(data, keys, codec, where, decoding=True)


def _convert(
    values: Mapping[str, Any],
    keys: Iterable[Key[Any]],
    codec: Codec[Any],
    where: str | None,
    *,
    decoding: bool,
) -> dict[str, Any]:
    parameter = "data" if decoding else "values"
    if not isinstance(values, Mapping):  # pyright: ignore[reportUnnecessaryIsInstance] - untyped callers
        raise TypeError(f"{parameter} must be a mapping, got {type(values).__name__}")
    _check_codec(codec, "codec")
    if where is not None and not isinstance(where, str):  # pyright: ignore[reportUnnecessaryIsInstance] - untyped callers
        raise TypeError(f"where must be a str or None, got {type(where).__name__}")
    codecs = _codecs_of(keys)
    converted: dict[str, Any] = {}
    for name, value in values.items():
        if type(name) is not str:
            raise TypeError(f"{parameter} must have str keys, got {type(name).__name__}: {name!r}")
        chosen = codecs.get(name, codec)
        try:
            converted[name] = chosen.decode(value) if decoding else chosen.encode(value)
        except CodecError as error:
            raise error._located(name if where is None else where, name) from error.__cause__  # pyright: ignore[reportPrivateUsage] - same module
        except Exception as exc:
            failed = CodecError(
                f"could not be {'decoded' if decoding else 'encoded'} by its codec "
                f"{type(chosen).__qualname__}: {type(exc).__name__}: {exc}",
                value_type=_type(value),
                where=name if where is None else where,
                path=name,
                decoding=decoding,
            )
            raise failed from exc
    return converted
