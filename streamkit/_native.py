"""The source of the optional compiled core (built with mypyc; see docs/performance.md).

`streamkit._records` uses this module's `Envelope` only when it was compiled
(``make compiled``, or a wheel built with ``STREAMKIT_COMPILE=1``); as plain
Python it is never used, and `streamkit._records.Envelope` is the pure record.
The two behave alike: same constructor, attributes, equality, hashing, repr,
immutability (`FrozenInstanceError`), pattern matching, ``Envelope[int]``,
pickling and copying, ``dataclasses.replace``, ``replace`` and
``with_state``. A mypyc native class cannot derive from `typing.Generic`, so
this one is subscripted through ``__class_getitem__``; the type checkers see
the generic pure record.

`fold_buffering` is the compiled form of the fold loop of `reduce_point`
(``streamkit._state._fold_buffering``, which hands over to it when compiled).
"""

from __future__ import annotations

from dataclasses import FrozenInstanceError, dataclass
from types import GenericAlias
from typing import TYPE_CHECKING, Any, Final, Protocol

from ._records import EMPTY, State, key_name, rebuild_envelope

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable


class _Unset:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<unset>"


_UNSET: Final = _Unset()


@dataclass(init=False, repr=False, eq=False)
class Envelope:
    """An item with the state that travels with it: ``.value`` and ``.state``.

    The compiled form of `streamkit.Envelope`, whose documentation applies
    (and becomes this class's docstring, which mypyc does not keep). Only the
    compiled class works: as plain Python, `__setattr__` would refuse the
    assignments of `__init__`, which compiled code makes directly.
    """

    value: Any
    state: State

    def __init__(self, value: Any, state: State = EMPTY) -> None:
        # Compiled code sets the attributes directly; `__setattr__` refuses
        # assignments from anywhere else.
        self.value = value
        self.state = state

    def __setattr__(self, name: str, value: object) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")

    def __class_getitem__(cls, params: object) -> GenericAlias:
        return GenericAlias(cls, params)

    def __eq__(self, other: object) -> bool:
        if type(other) is not Envelope:
            return NotImplemented
        return (self.value, self.state) == (other.value, other.state)

    def __hash__(self) -> int:
        return hash((self.value, self.state))

    def __repr__(self) -> str:
        return f"Envelope(value={self.value!r}, state={self.state!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled as the pure record is: a pickle loads in either build.
        return (rebuild_envelope, (self.value, self.state))

    def replace(self, *, value: Any = _UNSET, state: Any = _UNSET) -> Envelope:
        """A new envelope with the given value and/or state."""
        return Envelope(
            self.value if value is _UNSET else value,
            self.state if state is _UNSET else state,
        )

    def with_state(self, key: Any, value: Any, /) -> Envelope:
        """A new envelope whose state has ``key`` set to ``value``."""
        return Envelope(self.value, self.state._set(key_name(key), value))  # pyright: ignore[reportPrivateUsage] - the records' own hot path


class _Spilling(Protocol):
    count: int

    def write(self, items: list[Any], label: str, first_index: int) -> None: ...


async def fold_buffering(
    upstream: AsyncIterator[Any],
    reducer: Callable[[Any, Any], Any],
    accumulator: Any,
    buffer: list[Any],
    index: int,
    limit: int,
    spill: _Spilling | None,
    label: str,
    plain: bool,
    control: type[Any],
    annotate: Callable[[BaseException, str, int], object],
) -> tuple[Any, list[Any], int, bool]:
    """``streamkit._state._fold_buffering``, compiled (``control``: the control elements' type)."""
    append = buffer.append
    async for item in upstream:
        kind: object = type(item)  # pyright: ignore[reportUnknownVariableType] - any item
        if kind is control:
            plain = False
            append(item)  # goes on in its place among the items
            continue
        index += 1
        try:
            if kind is Envelope or isinstance(item, Envelope):
                plain = False
                accumulator = reducer(accumulator, item.value)
            else:
                accumulator = reducer(accumulator, item)
        except Exception as exc:
            annotate(exc, label, index)
            raise
        append(item)
        if len(buffer) > limit and spill is not None:
            spill.write(buffer, label, spill.count)
            buffer = []
            append = buffer.append
    return accumulator, buffer, index, plain


def envelope(value: Any, state: State) -> Envelope:
    """``Envelope(value, state)``, made by compiled code: cheaper to call than the class.

    Calling a native class from interpreted code goes through the type's
    call and the parsing of an argument tuple; a compiled function taking two
    positional arguments is a fast call that makes the object directly.
    """
    return Envelope(value, state)
