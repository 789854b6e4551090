"""Initial accumulators of reusable stages: a value, or a `Factory` called once per run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ._core import check_callable

if TYPE_CHECKING:
    from collections.abc import Callable

A = TypeVar("A")


@dataclass(frozen=True, slots=True)
class Factory(Generic[A]):
    """Makes a fresh initial accumulator for every run: ``Factory(dict)``.

    A stage is reusable, so an initial accumulator given as a value is shared
    by every run of the stage. That is right for immutable values (``0``,
    ``""``, a tuple, a frozen record), and wrong for a dict or list that the
    function updates in place: the second run would start from the first
    run's result. `scan`, `scan_state` and `reduce_point` therefore accept a
    `Factory` as their initial accumulator, call it once at the start of
    every run, and reject a mutable (unhashable) initial value, as
    `dataclasses` rejects a mutable default.

    Args:
        make: Called with no arguments at the start of every run.

    Examples:
        >>> import asyncio
        >>> from streamkit import collect, scan
        >>> def add(seen: list[int], x: int) -> list[int]:
        ...     seen.append(x)
        ...     return seen
        >>> running = scan(add, Factory(list))
        >>> asyncio.run(collect([1, 2] | running))[-1]
        [1, 2]
        >>> asyncio.run(collect([3] | running))[-1]
        [3]
    """

    make: Callable[[], A]

    def __post_init__(self) -> None:
        check_callable(self.make, "Factory's make")


def initial_maker(initial: object, label: str) -> Callable[[], Any]:
    """What makes ``initial`` for one run; raise `ValueError` if it is a shared mutable value."""
    if isinstance(initial, Factory):
        return initial.make
    if type(initial).__hash__ is None:
        kind = type(initial).__name__
        raise ValueError(
            f"{label}: initial must not be a mutable {kind} ({initial!r}): one value would be "
            f"shared by every run of the stage; pass Factory(make), such as Factory({kind}) or "
            "Factory(lambda: ...), to make a new one for each run"
        )

    def shared() -> Any:
        return initial

    return shared
