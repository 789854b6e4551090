"""Per-item state records: `Envelope`, `State`, `Key`, `Scope`, `StateLimits`.

These are the small records every layer needs, kept beside the core so that
operators can be envelope-transparent without importing the state machinery
(the stages that build on them live in ``_state``).

`State` is an immutable mapping with structural sharing: ``state.set(k, v)``
returns a new state that points at the old one and holds only the new entry,
so setting a key on a state shared by a million items costs one small node per
item, and a state shared by every item is one object referenced by all. A
chain of nodes is flattened into one when it grows deeper than a few levels,
which bounds lookups; the cost is amortised over the sets that grew it.

Every state carries its `StateLimits` (and passes them on to the states made
from it): the size of the state's compact JSON form and its number of keys.
Sizes are measured once per entry, when it is set, and summed, so a set never
re-serialises the whole state.
"""

from __future__ import annotations

import json
import os as _os
from collections.abc import Iterator, Mapping
from dataclasses import FrozenInstanceError, dataclass, field
from importlib.machinery import EXTENSION_SUFFIXES as _EXTENSION_SUFFIXES
from typing import (
    TYPE_CHECKING,
    Any,
    ClassVar,
    Final,
    Generic,
    Literal,
    TypeAlias,
    TypeVar,
    cast,
    overload,
)

if TYPE_CHECKING:
    from ._codec import Codec

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)
R = TypeVar("R")
D = TypeVar("D")

ScopeKind: TypeAlias = Literal["global", "pipeline", "stage", "custom"]

_MAX_DEPTH: Final = 8
_COMPACT_LIMIT: Final = 32
"""Nodes with at most this many entries of their own are merged when a chain
grows past `_MAX_DEPTH`; larger ones (shared states) stay as parents."""
"""A state chain deeper than this is flattened into one node on the next set."""

_KEYS_IN_MESSAGES: Final = 20
"""How many present keys a missing-key error lists."""


# --------------------------------------------------------------------------- errors


class StateLimitError(ValueError):
    """Setting a key would take a state over its `StateLimits`.

    Attributes:
        key: The (qualified) name of the key being set.
        size: The size the state would have had: bytes of compact JSON for
            ``max_bytes``, a number of keys for ``max_keys``.
        limit: The limit exceeded.
    """

    def __init__(self, message: str, *, key: str, size: int, limit: int) -> None:
        super().__init__(message)
        self.key = key
        self.size = size
        self.limit = limit


class _MissingKeyError(KeyError):
    """A `KeyError` whose message is readable (`KeyError` shows a repr)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def _missing(state: State, name: str) -> KeyError:
    present = list(state)
    shown = ", ".join(repr(key) for key in present[:_KEYS_IN_MESSAGES])
    if len(present) > _KEYS_IN_MESSAGES:
        shown += f", ... ({len(present)} keys)"
    return _MissingKeyError(f"state has no key {name!r}; keys present: [{shown}]")


# --------------------------------------------------------------------------- limits


@dataclass(frozen=True, slots=True)
class StateLimits:
    """The most a per-item `State` may hold; ``None`` switches a limit off.

    ``max_bytes`` bounds the length of the state's compact JSON form
    (``json.dumps(dict(state), separators=(",", ":"), default=repr)``):
    values that JSON cannot encode count as the JSON string of their
    ``repr``, so they are measured, never rejected for their type. Each
    entry is measured once, when it is set. ``max_keys`` bounds the number
    of keys. Exceeding either raises `StateLimitError` from the ``set`` that
    would exceed it. A state passes its limits on to every state made from
    it; give them to `envelop` (or `State`) where the states start.

    Args:
        max_bytes: The largest JSON size in bytes (16 KiB by default).
        max_keys: The most keys (256 by default).

    Examples:
        >>> small = State(limits=StateLimits(max_bytes=20))
        >>> small.set("name", "ada").nbytes
        14
        >>> try:
        ...     small.set("name", "a" * 30)
        ... except StateLimitError as error:
        ...     print(error.size, error.limit)
        41 20
    """

    max_bytes: int | None = 16384
    max_keys: int | None = 256

    UNLIMITED: ClassVar[StateLimits]
    """No limit at all (nothing is measured)."""

    def __post_init__(self) -> None:
        for parameter, value in (("max_bytes", self.max_bytes), ("max_keys", self.max_keys)):
            if value is None:
                continue
            _check_limit(value, parameter)


def _check_limit(value: object, parameter: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(
            f"{parameter} must be an int or None, got {type(value).__name__}: {value!r}"
        )
    if value < 1:
        raise ValueError(f"{parameter} must be >= 1 or None, got {value}")


StateLimits.UNLIMITED = StateLimits(max_bytes=None, max_keys=None)
DEFAULT_LIMITS: Final = StateLimits()


# --------------------------------------------------------------------------- scopes and keys


def _refuse_assignment(self: object, name: str, value: object) -> None:
    raise FrozenInstanceError(
        f"cannot assign to field {name!r}: {type(self).__name__} is immutable"
    )


def _refuse_deletion(self: object, name: str) -> None:
    raise FrozenInstanceError(f"cannot delete field {name!r}: {type(self).__name__} is immutable")


def _freeze_generic(cls: type) -> None:
    # On Python 3.11, the __setattr__ that `dataclass(frozen=True, slots=True)`
    # generates for a generic class raises TypeError (not AttributeError) when
    # `Key[int](...)` tries to record `__orig_class__`; replace it with one that
    # raises FrozenInstanceError for every attribute, which typing ignores.
    setattr(cls, "__setattr__", _refuse_assignment)  # noqa: B010 - hidden from the type checkers on purpose
    setattr(cls, "__delattr__", _refuse_deletion)  # noqa: B010


@dataclass(frozen=True, slots=True)
class Scope:
    """A namespace for state keys, so that two stages' ``count`` never collide.

    `Scope.GLOBAL` keys are stored under their plain name; the others under a
    qualified name: ``pipeline:<name>/<key>``, ``stage:<name>/<key>``,
    ``custom:<name>/<key>``. Scopes are plain values: any code holding the
    same scope (or the same `Key`) reads the same entry.

    Examples:
        >>> Scope.stage("dedupe").qualify("count")
        'stage:dedupe/count'
        >>> Scope.GLOBAL.qualify("count")
        'count'
    """

    kind: ScopeKind
    name: str = ""

    GLOBAL: ClassVar[Scope]
    """The global scope: keys are stored under their plain name."""

    def __post_init__(self) -> None:
        if self.kind not in ("global", "pipeline", "stage", "custom"):
            raise ValueError(
                f"kind must be 'global', 'pipeline', 'stage' or 'custom', got {self.kind!r}"
            )
        if not isinstance(self.name, str):  # pyright: ignore[reportUnnecessaryIsInstance] - untyped callers
            raise TypeError(f"name must be a str, got {type(self.name).__name__}")
        if self.kind == "global":
            if self.name:
                raise ValueError("the global scope has no name")
        elif not self.name or "/" in self.name or ":" in self.name:
            raise ValueError(
                f"a {self.kind} scope needs a non-empty name without '/' or ':', got {self.name!r}"
            )

    @classmethod
    def pipeline(cls, name: str) -> Scope:
        """The scope of one pipeline (a workflow, in the seeds' words)."""
        return cls("pipeline", name)

    @classmethod
    def stage(cls, name: str) -> Scope:
        """The scope of one stage (a step)."""
        return cls("stage", name)

    @classmethod
    def custom(cls, name: str) -> Scope:
        """A namespace of your own."""
        return cls("custom", name)

    def qualify(self, key: str) -> str:
        """The name under which ``key`` of this scope is stored in a `State`."""
        if self.kind == "global":
            return key
        return f"{self.kind}:{self.name}/{key}"

    def __repr__(self) -> str:
        if self.kind == "global":
            return "Scope.GLOBAL"
        return f"Scope.{self.kind}({self.name!r})"


Scope.GLOBAL = Scope("global")


@dataclass(frozen=True, slots=True)
class Key(Generic[T]):
    """A typed state key: ``TOTAL = Key[int]("total")``.

    ``state[TOTAL]`` is typed ``int``, the type checker checks the value of
    ``state.set(TOTAL, 3)`` (nothing is checked at run time), and
    ``state.get(TOTAL, None)`` is ``int | None``. A key is
    stored in the state under its `qualified` name, so a plain string key
    with that name reads the same entry (typed ``Any``). Keys are hashable
    and compare by name and scope (not by codec).

    Args:
        name: The key's name within its scope.
        scope: The namespace (`Scope.GLOBAL` by default).
        codec: The `Codec` that encodes the key's values in a checkpoint
            (`encode_state`); `DEFAULT_CODEC` when None.

    Examples:
        >>> TOTAL = Key[int]("total")
        >>> state = State().set(TOTAL, 3)
        >>> state[TOTAL], state["total"]
        (3, 3)
        >>> Key[int]("count", scope=Scope.stage("dedupe")).qualified
        'stage:dedupe/count'
    """

    name: str
    scope: Scope = Scope.GLOBAL
    qualified: str = field(init=False, repr=False, compare=False)
    """The name the key is stored under (``stage:dedupe/count``)."""
    codec: Codec[T] | None = field(default=None, kw_only=True, compare=False)
    """The codec of the key's values in a checkpoint; None for `DEFAULT_CODEC`."""

    def __post_init__(self) -> None:
        _check_name(self.name, "name")
        if not isinstance(self.scope, Scope):  # pyright: ignore[reportUnnecessaryIsInstance] - untyped callers
            raise TypeError(f"scope must be a Scope, got {type(self.scope).__name__}")
        codec: object = self.codec
        if codec is not None and not (
            callable(getattr(codec, "encode", None)) and callable(getattr(codec, "decode", None))
        ):
            raise TypeError(
                f"codec must be a Codec (with encode and decode) or None, "
                f"got {type(codec).__name__}: {codec!r}"
            )
        object.__setattr__(self, "qualified", self.scope.qualify(self.name))

    def __repr__(self) -> str:
        scope = "" if self.scope.kind == "global" else f", scope={self.scope!r}"
        codec = "" if self.codec is None else f", codec={self.codec!r}"
        return f"Key({self.name!r}{scope}{codec})"


_freeze_generic(Key)


def _check_name(value: object, parameter: str) -> None:
    if not isinstance(value, str) or not value:
        raise TypeError(f"{parameter} must be a non-empty str, got {value!r}")


def key_name(key: object, parameter: str = "key") -> str:
    """The stored name of a `Key` or a string key; `TypeError` naming ``parameter`` otherwise."""
    if type(key) is str:
        return key
    if isinstance(key, Key):
        return cast("Key[object]", key).qualified
    if isinstance(key, str):
        return str(key)
    raise TypeError(f"{parameter} must be a Key or a str, got {type(key).__name__}: {key!r}")


# --------------------------------------------------------------------------- measuring

_encode = json.JSONEncoder(separators=(",", ":"), default=repr).encode


def measure(value: object) -> int:
    """The length of ``value``'s compact JSON form (non-JSON values: their repr's)."""
    kind = type(value)
    if kind is int:
        return len(int.__repr__(cast("int", value)))
    if kind is str:
        text = cast("str", value)
        if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
            return len(text) + 2
    elif value is None or value is True:
        return 4
    elif value is False:
        return 5
    try:
        return len(_encode(value))
    except (TypeError, ValueError):  # keys JSON cannot encode, circular references
        return len(_encode(repr(value)))


_NAME_SIZES: dict[str, int] = {}
"""``measure(name) + 2`` for the key names seen (a few; bounded below)."""


def _name_size(name: str) -> int:
    size = measure(name) + 2  # the ":" after the name and the "," after the value
    if len(_NAME_SIZES) < 4096:
        _NAME_SIZES[name] = size
    return size


def entry_size(name: str, value: object) -> int:
    """The bytes an entry adds to the compact JSON form: ``"name":value,``."""
    name_size = _NAME_SIZES.get(name)
    if name_size is None:
        name_size = _name_size(name)
    return name_size + measure(value)


class _Deleted:
    """Tombstone: the key was deleted in this node."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<deleted>"

    def __reduce__(self) -> str:
        return "_DELETED"


_DELETED: Final = _Deleted()
_MISSING: Final = object()
_new_state = object.__new__


# --------------------------------------------------------------------------- State


class State(Mapping[str, Any]):
    """An immutable mapping of state keys to values, with structural sharing.

    Build one with ``State(mapping)`` (keys are strings or `Key` objects) or
    start from the empty state, then derive new states: ``set``,
    ``set_many`` and ``delete`` return a new `State` and leave this one
    unchanged. Reading a missing key raises `KeyError` naming the key and
    listing the keys present. Typed access goes through `Key`.

    States compare equal to any mapping with the same items, and are hashable
    when their values are.

    Args:
        mapping: The initial entries.
        limits: The `StateLimits` enforced on this state and every state
            derived from it (16 KiB of JSON and 256 keys by default).

    Examples:
        >>> TOTAL = Key[int]("total")
        >>> base = State({"run": "nightly"})
        >>> state = base.set(TOTAL, 10).set("source", "db")
        >>> state[TOTAL], state.get("missing", 0), len(state), len(base)
        (10, 0, 3, 1)
        >>> dict(state.delete("source"))
        {'run': 'nightly', 'total': 10}
        >>> try:
        ...     state["nope"]
        ... except KeyError as error:
        ...     print(error)
        state has no key 'nope'; keys present: ['run', 'total', 'source']
    """

    # A node holds one entry in slots (``_key`` set), several in dicts
    # (``_own``), or none; ``_parent`` is the state it was derived from.
    __slots__ = (
        "_bytes",
        "_count",
        "_depth",
        "_key",
        "_limits",
        "_own",
        "_parent",
        "_size",
        "_sizes",
        "_value",
    )

    _parent: State | None
    _key: str | None
    _value: Any
    _size: int
    _own: dict[str, Any] | None
    _sizes: dict[str, int] | None
    _depth: int
    _count: int
    _bytes: int
    _limits: StateLimits

    def __init__(
        self,
        mapping: Mapping[Any, Any] = {},
        /,
        *,
        limits: StateLimits = DEFAULT_LIMITS,
    ) -> None:
        if not isinstance(limits, StateLimits):  # pyright: ignore[reportUnnecessaryIsInstance] - untyped callers
            raise TypeError(f"limits must be a StateLimits, got {type(limits).__name__}")
        if not isinstance(mapping, Mapping):  # pyright: ignore[reportUnnecessaryIsInstance] - untyped callers
            raise TypeError(f"mapping must be a mapping, got {type(mapping).__name__}")
        self._parent = None
        self._key = None
        self._value = None
        self._size = 0
        self._own = None
        self._sizes = None
        self._depth = 0
        self._count = 0
        self._bytes = 1  # "{" plus every entry with its trailing "," (the last one is "}")
        self._limits = limits
        if mapping:
            built = self.set_many(mapping)
            self._own, self._sizes = built._flat_with_sizes()
            self._count = built._count
            self._bytes = built._bytes

    # -- building -----------------------------------------------------------

    @classmethod
    def _node(
        cls,
        parent: State | None,
        limits: StateLimits,
        count: int,
        nbytes: int,
        depth: int,
    ) -> State:
        node = cls.__new__(cls)
        node._parent = parent
        node._key = None
        node._value = None
        node._size = 0
        node._own = None
        node._sizes = None
        node._depth = depth
        node._count = count
        node._bytes = nbytes
        node._limits = limits
        return node

    def _find(self, name: str) -> tuple[Any, int]:
        """The value stored for ``name`` (or a sentinel) and its entry size."""
        node: State | None = self
        while node is not None:
            if node._key is not None:
                if node._key == name:
                    return node._value, node._size
            else:
                own = node._own
                if own is not None and name in own:
                    sizes = node._sizes
                    return own[name], (sizes[name] if sizes is not None else 0)
            node = node._parent
        return _MISSING, 0

    def _chain(self) -> list[State]:
        nodes: list[State] = []
        node: State | None = self
        while node is not None:
            nodes.append(node)
            node = node._parent
        nodes.reverse()
        return nodes

    def _flat_with_sizes(self) -> tuple[dict[str, Any], dict[str, int] | None]:
        values: dict[str, Any] = {}
        sizes: dict[str, int] | None = {} if self._limits.max_bytes is not None else None
        for node in self._chain():
            if node._key is not None:
                values[node._key] = node._value
                if sizes is not None:
                    sizes[node._key] = node._size
            elif node._own is not None:
                values.update(node._own)
                if sizes is not None:
                    if node._sizes is None:
                        sizes.update((k, entry_size(k, v)) for k, v in node._own.items())
                    else:
                        sizes.update(node._sizes)
        deleted = [k for k, v in values.items() if v is _DELETED]
        for k in deleted:
            del values[k]
            if sizes is not None:
                del sizes[k]
        return values, sizes

    def _flat(self) -> dict[str, Any]:
        if self._parent is None:
            if self._key is not None:
                return {self._key: self._value}
            return {} if self._own is None else self._own
        return self._flat_with_sizes()[0]

    def _check(self, name: str, count: int, nbytes: int, size: int) -> None:
        limits = self._limits
        if limits.max_keys is not None and count > limits.max_keys:
            raise StateLimitError(
                f"setting state key {name!r} would make {count} keys, "
                f"over the state's limit of {limits.max_keys}",
                key=name,
                size=count,
                limit=limits.max_keys,
            )
        if limits.max_bytes is not None and nbytes > limits.max_bytes:
            raise StateLimitError(
                f"setting state key {name!r} would make the state {nbytes} bytes of JSON, "
                f"over its limit of {limits.max_bytes} (the entry alone is {size} bytes)",
                key=name,
                size=nbytes,
                limit=limits.max_bytes,
            )

    def _set(self, name: str, value: Any, size: int | None = None) -> State:
        """``set`` by stored name; ``size`` is the entry size when already known.

        This is the per-item hot path (one call per item per state step), so
        the lookup and the measuring are written out here.
        """
        old: Any = _MISSING
        old_size = 0
        node: State | None = self
        while node is not None:
            key = node._key
            if key is not None:
                if key == name:
                    old = node._value
                    old_size = node._size
                    break
            else:
                own = node._own
                if own is not None and name in own:
                    old = own[name]
                    sizes = node._sizes
                    old_size = sizes[name] if sizes is not None else 0
                    break
            node = node._parent
        present = old is not _MISSING and old is not _DELETED
        count = self._count if present else self._count + 1
        limits = self._limits
        max_bytes = limits.max_bytes
        if max_bytes is None:
            size = 0
            nbytes = 1
        else:
            if size is None:
                name_size = _NAME_SIZES.get(name)
                if name_size is None:
                    name_size = _name_size(name)
                size = name_size + (
                    len(int.__repr__(value)) if type(value) is int else measure(value)
                )
            nbytes = self._bytes + size - (old_size if present else 0)
            if nbytes > max_bytes:
                self._check(name, count, nbytes, size)
        max_keys = limits.max_keys
        if max_keys is not None and count > max_keys:
            self._check(name, count, nbytes, size)
        depth = self._depth + 1
        if depth > _MAX_DEPTH:
            return self._merge_top({name: value}, {name: size}, count, nbytes)
        node = _new_state(State)
        if self._count == 0 and self._parent is None:
            node._parent = None
            node._depth = 0
        else:
            node._parent = self
            node._depth = depth
        node._key = name
        node._value = value
        node._size = size
        node._own = None
        node._sizes = None
        node._count = count
        node._bytes = nbytes
        node._limits = limits
        return node

    def _merge_top(
        self,
        entries: dict[str, Any],
        entry_sizes: dict[str, int] | None,
        count: int,
        nbytes: int,
    ) -> State:
        """Set ``entries`` by merging them with the small nodes atop the chain.

        Only nodes that hold few entries (an item's own recent keys) are
        copied; the first node that holds many, typically a state shared by
        every item, stays as the parent. So setting keys per item never copies
        the shared entries, and lookups stay short.
        """
        small: list[State] = []
        node: State | None = self
        while node is not None and (node._own is None or len(node._own) <= _COMPACT_LIMIT):
            small.append(node)
            node = node._parent
        limits = self._limits
        own: dict[str, Any] = {}
        sizes: dict[str, int] | None = {} if limits.max_bytes is not None else None
        for each in reversed(small):
            if each._key is not None:
                own[each._key] = each._value
                if sizes is not None:
                    sizes[each._key] = each._size
            elif each._own is not None:
                own.update(each._own)
                if sizes is not None:
                    if each._sizes is None:
                        sizes.update((k, entry_size(k, v)) for k, v in each._own.items())
                    else:
                        sizes.update(each._sizes)
        own.update(entries)
        if sizes is not None:
            if entry_sizes is None:
                sizes.update((k, entry_size(k, v)) for k, v in entries.items())
            else:
                sizes.update(entry_sizes)
        if node is None:
            # Nothing below to shadow: deletion markers have done their work.
            for key in [key for key, entry in own.items() if entry is _DELETED]:
                del own[key]
                if sizes is not None:
                    del sizes[key]
        merged = State._node(node, limits, count, nbytes, 1)
        merged._own = own
        merged._sizes = sizes
        return merged

    @overload
    def set(self, key: Key[T], value: T, /) -> State: ...
    @overload
    def set(self, key: str, value: Any, /) -> State: ...
    def set(self, key: Key[Any] | str, value: Any, /) -> State:
        """A new state with ``key`` set to ``value`` (this one is unchanged).

        Raises:
            StateLimitError: The new state would exceed the limits.
        """
        return self._set(key_name(key), value)

    def set_many(
        self,
        mapping: Mapping[Any, Any],
        /,
    ) -> State:
        """A new state with every entry of ``mapping`` set (keys: `Key` or str).

        Raises:
            StateLimitError: The new state would exceed the limits.
        """
        if not mapping:
            return self
        entries = {key_name(key): value for key, value in mapping.items()}
        if len(entries) == 1:
            ((name, value),) = entries.items()
            return self._set(name, value)
        measuring = self._limits.max_bytes is not None
        count = self._count
        nbytes = self._bytes
        sizes: dict[str, int] | None = {} if measuring else None
        for name, value in entries.items():
            old, old_size = self._find(name)
            present = old is not _MISSING and old is not _DELETED
            if not present:
                count += 1
            size = 0
            if sizes is not None:
                size = sizes[name] = entry_size(name, value)
                nbytes += size - (old_size if present else 0)
            self._check(name, count, nbytes, size)
        depth = self._depth + 1
        if depth > _MAX_DEPTH:
            return self._merge_top(entries, sizes, count, nbytes)
        if self._count == 0 and self._parent is None:
            own, own_sizes = self._flat_with_sizes()
            own = {**own, **entries}
            if sizes is not None and own_sizes is not None:
                sizes = {**own_sizes, **sizes}
            node = State._node(None, self._limits, count, nbytes, 0)
        else:
            own = entries
            node = State._node(self, self._limits, count, nbytes, depth)
        node._own = own
        node._sizes = sizes
        return node

    def delete(self, key: Key[Any] | str, /) -> State:
        """A new state without ``key``.

        Raises:
            KeyError: The key is not present.
        """
        name = key_name(key)
        old, old_size = self._find(name)
        if old is _MISSING or old is _DELETED:
            raise _missing(self, name)
        nbytes = self._bytes - old_size if self._limits.max_bytes is not None else 1
        count = self._count - 1
        if count == 0:
            return State(limits=self._limits)
        depth = self._depth + 1
        if depth > _MAX_DEPTH:
            # A marker, kept while a node below may still hold the key.
            return self._merge_top({name: _DELETED}, {name: 0}, count, nbytes)
        node = State._node(self, self._limits, count, nbytes, depth)
        node._key = name
        node._value = _DELETED
        return node

    def with_limits(self, limits: StateLimits, /) -> State:
        """The same entries under other limits (checked now)."""
        if limits == self._limits:
            return self
        return State(self._flat(), limits=limits)

    # -- reading -------------------------------------------------------------

    @property
    def limits(self) -> StateLimits:
        """The limits this state and the states derived from it enforce."""
        return self._limits

    @property
    def nbytes(self) -> int:
        """The length of the state's compact JSON form, as the limit measures it."""
        if not self._count:
            return 2
        if self._limits.max_bytes is not None:
            return self._bytes
        return 1 + sum(entry_size(k, v) for k, v in self._flat().items())

    @overload
    def __getitem__(self, key: Key[T], /) -> T: ...
    @overload
    def __getitem__(self, key: str, /) -> Any: ...
    def __getitem__(self, key: Key[Any] | str, /) -> Any:
        if type(key) is str:
            name = key
        elif isinstance(key, Key):
            name = key.qualified
        else:
            raise _missing(self, repr(key))
        value, _ = self._find(name)
        if value is _MISSING or value is _DELETED:
            raise _missing(self, name)
        return value

    @overload
    def get(self, key: Key[T], /) -> T | None: ...
    @overload
    def get(self, key: Key[T], default: D, /) -> T | D: ...
    @overload
    def get(self, key: str, /) -> Any: ...
    @overload
    def get(self, key: str, default: Any, /) -> Any: ...
    def get(self, key: Key[Any] | str, default: Any = None, /) -> Any:  # pyright: ignore[reportIncompatibleMethodOverride] - adds typed-key overloads
        """The value of ``key``, or ``default`` when it is missing."""
        if type(key) is str:
            name = key
        elif isinstance(key, Key):
            name = key.qualified
        else:
            return default
        value, _ = self._find(name)
        if value is _MISSING or value is _DELETED:
            return default
        return value

    def __contains__(self, key: object, /) -> bool:
        if type(key) is str:
            name = key
        elif isinstance(key, Key):
            name = cast("Key[object]", key).qualified
        else:
            return False
        value, _ = self._find(name)
        return value is not _MISSING and value is not _DELETED

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._flat()))

    def __len__(self) -> int:
        return self._count

    def __eq__(self, other: object) -> bool:
        if other is self:
            return True
        if isinstance(other, State):
            return self._count == other._count and self._flat() == other._flat()
        if isinstance(other, Mapping):
            return self._flat() == dict(cast("Mapping[object, object]", other))
        return NotImplemented

    def __hash__(self) -> int:
        return hash(frozenset(self._flat().items()))

    def __repr__(self) -> str:
        limits = "" if self._limits == DEFAULT_LIMITS else f", limits={self._limits!r}"
        return f"State({self._flat()!r}{limits})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Nodes are pickled as they are, so that states sharing a parent
        # share it after unpickling too (within one pickle).
        return (
            _restore,
            (
                self._parent,
                self._key,
                self._value,
                self._size,
                self._own,
                self._sizes,
                self._depth,
                self._count,
                self._bytes,
                self._limits,
            ),
        )


def _restore(
    parent: State | None,
    key: str | None,
    value: Any,
    size: int,
    own: dict[str, Any] | None,
    sizes: dict[str, int] | None,
    depth: int,
    count: int,
    nbytes: int,
    limits: StateLimits,
) -> State:
    node = State._node(parent, limits, count, nbytes, depth)  # pyright: ignore[reportPrivateUsage] - the module's own constructor
    node._key = key  # pyright: ignore[reportPrivateUsage]
    node._value = value  # pyright: ignore[reportPrivateUsage]
    node._size = size  # pyright: ignore[reportPrivateUsage]
    node._own = own  # pyright: ignore[reportPrivateUsage]
    node._sizes = sizes  # pyright: ignore[reportPrivateUsage]
    return node


EMPTY: Final = State()
"""The shared empty state (default limits) of ``Envelope(value)``."""


# --------------------------------------------------------------------------- Envelope


class _Unset:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<unset>"


_UNSET: Final = _Unset()


@dataclass(frozen=True, slots=True)
class Envelope(Generic[T_co]):
    """An item with the state that travels with it: ``.value`` and ``.state``.

    ``Envelope(value)`` carries the shared empty state; the record is
    immutable (assigning an attribute raises), and ``replace`` and
    ``with_state`` return new envelopes. Envelopes compare by value and
    state.

    Args:
        value: The item.
        state: Its `State` (the shared empty state by default).

    Examples:
        >>> TOTAL = Key[int]("total")
        >>> item = Envelope("row").with_state(TOTAL, 3)
        >>> item
        Envelope(value='row', state=State({'total': 3}))
        >>> item.replace(value=4).value, item.state[TOTAL]
        (4, 3)
    """

    value: T_co
    state: State = EMPTY

    @overload
    def replace(self, *, state: State = ...) -> Envelope[T_co]: ...
    @overload
    def replace(self, *, value: R, state: State = ...) -> Envelope[R]: ...
    def replace(self, *, value: Any = _UNSET, state: Any = _UNSET) -> Envelope[Any]:
        """A new envelope with the given value and/or state."""
        return Envelope(
            self.value if value is _UNSET else value,
            self.state if state is _UNSET else state,
        )

    @overload
    def with_state(self, key: Key[T], value: T, /) -> Envelope[T_co]: ...
    @overload
    def with_state(self, key: str, value: Any, /) -> Envelope[T_co]: ...
    def with_state(self, key: Key[Any] | str, value: Any, /) -> Envelope[T_co]:
        """A new envelope whose state has ``key`` set to ``value``."""
        return Envelope(self.value, self.state._set(key_name(key), value))  # pyright: ignore[reportPrivateUsage] - same module

    def __reduce__(self) -> tuple[Any, ...]:
        # Through a function, so that a pickle loads in the pure and the compiled build alike.
        return (rebuild_envelope, (self.value, self.state))


_freeze_generic(Envelope)
_set_value = Envelope.__dict__["value"].__set__
_set_state = Envelope.__dict__["state"].__set__


def _envelope_init(self: Envelope[Any], value: Any, state: State = EMPTY) -> None:
    # Twice as fast as the generated frozen __init__ (one envelope per item
    # per stage in envelope mode): the slots' own descriptors, called directly.
    _set_value(self, value)
    _set_state(self, state)


setattr(Envelope, "__init__", _envelope_init)  # noqa: B010 - same signature as the generated one


def rebuild_envelope(value: Any, state: State) -> Envelope[Any]:
    """``Envelope(value, state)`` of the build in use: what pickles of envelopes call."""
    return Envelope(value, state)


if TYPE_CHECKING:

    def new_envelope(value: T, state: State, /) -> Envelope[T]:
        """``Envelope(value, state)``, made the fastest way the build in use has."""
        ...

else:
    # The class itself in the pure build; the compiled core's factory function
    # (a fast call, where calling its class is not) in the compiled one.
    new_envelope = Envelope


# The compiled envelope (streamkit/_native.py built with mypyc), when it was
# built and STREAMKIT_NO_COMPILED is not set; the type checkers see the record above.
COMPILED: bool = False
PURE_ENVELOPE: Final = Envelope
"""The pure record, whichever build is in use (the tests compare the two)."""
if not TYPE_CHECKING and not _os.environ.get("STREAMKIT_NO_COMPILED"):
    from . import _native

    if _native.__file__.endswith(tuple(_EXTENSION_SUFFIXES)):
        _native.Envelope.__doc__ = Envelope.__doc__  # mypyc keeps no class docstring
        Envelope = _native.Envelope
        new_envelope = _native.envelope
        COMPILED = True
