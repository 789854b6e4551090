"""The source of the optional compiled envelope (built with mypyc; see docs/performance.md).

`streamkit._records` uses this module's `Envelope` only when it was compiled
(``make compiled``, or a wheel built with ``STREAMKIT_COMPILE=1``); as plain
Python it is never used, and `streamkit._records.Envelope` is the pure record.
The two behave alike: same constructor, attributes, equality, hashing, repr,
immutability (`FrozenInstanceError`), pattern matching, ``Envelope[int]``,
pickling and copying, ``dataclasses.replace``, ``replace`` and
``with_state``. A mypyc native class cannot derive from `typing.Generic`, so
this one is subscripted through ``__class_getitem__``; the type checkers see
the generic pure record.
"""

from __future__ import annotations

from dataclasses import FrozenInstanceError, dataclass
from types import GenericAlias
from typing import Any, Final

from ._records import EMPTY, State, key_name, rebuild_envelope


class _Unset:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<unset>"


_UNSET: Final = _Unset()


@dataclass(init=False, repr=False, eq=False)
class Envelope:
    """An item with the state that travels with it: ``.value`` and ``.state``.

    The compiled form of `streamkit.Envelope` (whose documentation applies).

    Examples:
        >>> Envelope("row").replace(value=4)
        Envelope(value=4, state=State({}))
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
