"""Create operators: flows from values."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

from ._core import (
    COOPERATE_EVERY,
    Flow,
    Source,
    check_count,
    cooperate,
    generated,
    open_async,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

T = TypeVar("T")


def iterate(source: Source[T], /) -> Flow[T]:
    """Turn any iterable or async iterable into a `Flow`.

    Useful to give a plain source the flow's context-manager protocol, or to
    start a chain from an aiostream stream.

    Examples:
        >>> import asyncio
        >>> from streamkit import collect, iterate
        >>> asyncio.run(collect(iterate("ab")))
        ['a', 'b']
    """
    if not hasattr(source, "__aiter__") and not hasattr(source, "__iter__"):
        raise TypeError(
            f"source must be an iterable or an async iterable, got {type(source).__name__}"
        )

    def factory() -> AsyncIterator[T]:
        return open_async(source)

    return generated("iterate()", factory)


def empty() -> Flow[Any]:
    """A flow with no items.

    Examples:
        >>> import asyncio
        >>> from streamkit import collect, empty
        >>> asyncio.run(collect(empty()))
        []
    """
    return iterate(())


def repeat(value: T, /, times: int | None = None) -> Flow[T]:
    """Yield ``value`` ``times`` times, or forever when ``times`` is None.

    Examples:
        >>> import asyncio
        >>> from streamkit import collect, repeat
        >>> asyncio.run(collect(repeat("x", 3)))
        ['x', 'x', 'x']
    """
    if times is not None:
        check_count(times, "times", minimum=0)

    # Never waits for anything: let other tasks run between chunks.
    async def forever() -> AsyncIterator[T]:
        while True:
            for _ in range(COOPERATE_EVERY):
                yield value
            await cooperate()

    async def counted(n: int) -> AsyncIterator[T]:
        for _ in range(n // COOPERATE_EVERY):
            for _ in range(COOPERATE_EVERY):
                yield value
            await cooperate()
        for _ in range(n % COOPERATE_EVERY):
            yield value

    def factory() -> AsyncIterator[T]:
        return forever() if times is None else counted(times)

    return generated(f"repeat({value!r})", factory)
