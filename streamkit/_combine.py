"""Combine operators: several sources into one flow."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, TypeVar, overload

from ._core import Flow, Source, aclose, check_bool, generated, is_sync_source, open_async
from ._runtime import cancel_and_wait, spawn

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

T = TypeVar("T")
T1 = TypeVar("T1")
T2 = TypeVar("T2")
T3 = TypeVar("T3")
T4 = TypeVar("T4")


def _check_sources(sources: tuple[object, ...], name: str) -> None:
    for position, source in enumerate(sources):
        if not hasattr(source, "__aiter__") and not hasattr(source, "__iter__"):
            raise TypeError(
                f"{name}() takes iterables or async iterables; argument {position} is "
                f"{type(source).__name__}"
            )


async def _close_all(iterators: list[AsyncIterator[Any]]) -> None:
    """Close every iterator, even if closing one of them fails."""
    errors: list[BaseException] = []
    for iterator in iterators:
        try:
            await aclose(iterator)
        except BaseException as exc:
            errors.append(exc)
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise BaseExceptionGroup("closing merged sources failed", errors)


# --------------------------------------------------------------------------- concat


def concat(*sources: Source[T]) -> Flow[T]:
    """Yield every item of the first source, then of the second, and so on.

    Each source is opened only when the previous one is exhausted.

    Example:
        >>> import asyncio
        >>> from streamkit import collect, concat
        >>> asyncio.run(collect(concat([1, 2], range(3, 5))))
        [1, 2, 3, 4]
    """
    _check_sources(sources, "concat")

    async def run() -> AsyncIterator[T]:
        for source in sources:
            iterator = open_async(source)
            try:
                async for item in iterator:
                    yield item
            finally:
                await aclose(iterator)

    return generated("concat()", run)


# --------------------------------------------------------------------------- merge


async def _pull(iterator: AsyncIterator[T]) -> T:
    return await anext(iterator)


def merge(*sources: Source[T]) -> Flow[T]:
    """Interleave several sources, yielding items as they arrive.

    Every source is pulled concurrently, with at most one pending item per
    source: a source is pulled again only after its previous item has been
    yielded. The flow ends when every source is exhausted. If a source
    raises, the others are cancelled and closed, and the error propagates.

    Example:
        >>> import asyncio
        >>> from streamkit import collect, merge
        >>> sorted(asyncio.run(collect(merge([1, 3], [2, 4]))))
        [1, 2, 3, 4]
    """
    _check_sources(sources, "merge")

    def factory() -> AsyncIterator[T]:
        return _merge(sources)

    return generated("merge()", factory)


async def _merge(sources: tuple[Source[T], ...]) -> AsyncIterator[T]:
    iterators = [open_async(source) for source in sources]
    pending: dict[asyncio.Task[T], int] = {}
    try:
        for position, iterator in enumerate(iterators):
            pending[spawn(_pull(iterator))] = position
        while pending:
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            # Among the items ready together, yield in source order, so that a
            # run whose sources are all ready is reproducible.
            for task in sorted(done, key=pending.__getitem__):
                position = pending.pop(task)
                try:
                    item = task.result()
                except StopAsyncIteration:
                    continue
                yield item
                pending[spawn(_pull(iterators[position]))] = position
    finally:
        for task in list(pending):
            await cancel_and_wait(task)
        await _close_all(iterators)


# --------------------------------------------------------------------------- zip


@overload
def zip_(s1: Source[T1], /, *, strict: bool = False) -> Flow[tuple[T1]]: ...
@overload
def zip_(s1: Source[T1], s2: Source[T2], /, *, strict: bool = False) -> Flow[tuple[T1, T2]]: ...
@overload
def zip_(
    s1: Source[T1], s2: Source[T2], s3: Source[T3], /, *, strict: bool = False
) -> Flow[tuple[T1, T2, T3]]: ...
@overload
def zip_(
    s1: Source[T1], s2: Source[T2], s3: Source[T3], s4: Source[T4], /, *, strict: bool = False
) -> Flow[tuple[T1, T2, T3, T4]]: ...
@overload
def zip_(*sources: Source[Any], strict: bool = False) -> Flow[tuple[Any, ...]]: ...
def zip_(*sources: Source[Any], strict: bool = False) -> Flow[tuple[Any, ...]]:
    """Yield tuples of the next item of every source; stop at the shortest.

    Async sources are pulled concurrently for each tuple, so one slow source
    does not delay the pulls of the others. When the shortest source ends,
    the items already pulled from the others in that round are discarded and
    every source is closed. With ``strict=True`` sources of different lengths
    raise `ValueError` instead.

    Args:
        *sources: The sources to zip.
        strict: Require every source to have the same length.

    Example:
        >>> import asyncio
        >>> from streamkit import collect, zip_
        >>> asyncio.run(collect(zip_("ab", range(5))))
        [('a', 0), ('b', 1)]
    """
    _check_sources(sources, "zip_")
    check_bool(strict, "strict")

    def factory() -> AsyncIterator[tuple[Any, ...]]:
        if all(is_sync_source(source) for source in sources):
            return _zip_sync(sources, strict)
        return _zip(sources, strict)

    return generated("zip_()", factory)


async def _zip_sync(sources: tuple[Any, ...], strict: bool) -> AsyncIterator[tuple[Any, ...]]:
    iterators = [iter(source) for source in sources]
    try:
        for row in zip(*iterators, strict=strict):
            yield row
    finally:
        for iterator in iterators:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()


class _Ended:
    __slots__ = ()


_ENDED = _Ended()


async def _pull_or_end(iterator: AsyncIterator[Any]) -> Any:
    try:
        return await anext(iterator)
    except StopAsyncIteration:
        return _ENDED


async def _zip_round(iterators: list[AsyncIterator[Any]]) -> tuple[Any, ...]:
    """Pull one item from every iterator concurrently.

    The first failure (in source order) propagates with its own type; the
    pulls still pending are cancelled, and any other failure is attached to
    it as a note rather than lost.
    """
    tasks = [spawn(_pull_or_end(iterator)) for iterator in iterators]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in tasks:
            await cancel_and_wait(task)
    failures = [
        error for task in tasks if not task.cancelled() and (error := task.exception()) is not None
    ]
    if failures:
        for other in failures[1:]:
            failures[0].add_note(f"streamkit: another zip_ source also failed: {other!r}")
        raise failures[0]
    return tuple(task.result() for task in tasks)


async def _zip(sources: tuple[Source[Any], ...], strict: bool) -> AsyncIterator[tuple[Any, ...]]:
    iterators = [open_async(source) for source in sources]
    try:
        if not iterators:
            return
        while True:
            row = await _zip_round(iterators)
            ended = [position for position, value in enumerate(row) if value is _ENDED]
            if not ended:
                yield row
                continue
            if strict and len(ended) != len(row):
                raise ValueError(f"zip_(strict=True): source(s) {ended} ended before the others")
            return
    finally:
        await _close_all(iterators)
