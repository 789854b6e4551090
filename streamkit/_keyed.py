"""Keyed streams: operators that keep their state per key.

A key function maps each item (its value, for `Envelope` items) to a key;
the operator keeps one state per key and applies it to the items of that
key only. Under a checkpoint the per-key states are saved as a list of
``[key, state]`` pairs, so keys (and states) must be values the run's codec
encodes: strings, numbers, tuples, dataclasses, ... .
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, TypeVar, overload

from ._barrier import CONTROL
from ._core import (
    Passthrough,
    aclose,
    annotate,
    check_callable,
    check_count,
    check_seconds,
    describe,
    is_async_callable,
    is_envelope,
    transform_stage,
)
from ._records import Envelope
from ._runtime import current_clock

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Hashable

    from ._barrier import RunFunction, Slot
    from ._core import Stage

T = TypeVar("T")
A = TypeVar("A")


def _check_rate(rate: object, per: object) -> float:
    if not isinstance(rate, int | float) or isinstance(rate, bool):
        raise TypeError(f"rate must be a number, got {type(rate).__name__}")
    if not 0 < rate < float("inf"):
        raise ValueError(f"rate must be positive and finite, got {rate}")
    return float(rate) / check_seconds(per, "per")


def _pairs(states: dict[Any, Any]) -> list[list[Any]]:
    return [[key, value] for key, value in states.items()]


def _restored(pairs: Any) -> dict[Any, Any]:
    if pairs is None:  # a fresh start
        return {}
    return {_hashable(key): value for key, value in pairs}


def _hashable(key: Any) -> Any:
    # A codec may decode a tuple key as a list; a list key cannot be hashed.
    if isinstance(key, list):
        items: list[Any] = key  # pyright: ignore[reportUnknownVariableType]
        return tuple(items)
    return key


# --------------------------------------------------------------------------- scan_by


@overload
def scan_by(
    key: Callable[[T], Hashable], fn: Callable[[A, T], Awaitable[A]], initial: A, /
) -> Stage[T, A]: ...
@overload
def scan_by(
    key: Callable[[T], Hashable], fn: Callable[[A, T], A], initial: A, /
) -> Stage[T, A]: ...
def scan_by(
    key: Callable[[Any], Any], fn: Callable[[Any, Any], Any], initial: Any, /
) -> Stage[Any, Any]:
    """Yield the running accumulation of each item's key: `scan` with one accumulator per key.

    Every key starts at ``initial``; each item updates (and yields) the
    accumulator of its own key. Order is kept. Under a checkpoint all keys'
    accumulators are saved, so keys and accumulators must be values the
    run's codec encodes. On `Envelope` items ``key`` and ``fn`` receive the
    value and the accumulator keeps the item's state.

    Args:
        key: Maps an item to its key (sync, hashable result).
        fn: Combines a key's accumulator with the next item of that key (sync or async).
        initial: Every key's accumulator before its first item (not mutated in place
            by streamkit; use an immutable value).

    Examples:
        >>> import asyncio
        >>> from streamkit import collect, scan_by
        >>> words = ["a1", "b1", "a2", "b5"]
        >>> asyncio.run(collect(words | scan_by(lambda w: w[0], lambda n, w: n + int(w[1]), 0)))
        [1, 1, 3, 6]
    """
    check_callable(key, "key")
    check_callable(fn, "fn")
    label = f"scan_by({describe(key)}, {describe(fn)})"
    known_async = is_async_callable(fn)

    def run(upstream: AsyncIterator[Any]) -> AsyncIterator[Any]:
        return _scan_by(upstream, key, fn, initial, {}, known_async, label, None)

    def restorable(slot: Slot) -> RunFunction:
        def checkpointed(upstream: AsyncIterator[Any]) -> AsyncIterator[Any]:
            states = _restored(slot.restore(None))
            return _scan_by(upstream, key, fn, initial, states, known_async, label, slot)

        return checkpointed

    return transform_stage(label, run, restorable=restorable)


async def _scan_by(
    upstream: AsyncIterator[Any],
    key: Callable[[Any], Any],
    fn: Callable[[Any, Any], Any],
    initial: Any,
    states: dict[Any, Any],
    known_async: bool,
    label: str,
    slot: Slot | None,
) -> AsyncIterator[Any]:
    awaits: bool | None = True if known_async else None
    index = -1
    try:
        async for item in upstream:
            if type(item) is CONTROL:
                if slot is not None and item.kind == "barrier":
                    slot.save(item, _pairs(states))
                yield item
                continue
            index += 1
            enveloped = is_envelope(item)
            value = item.value if enveloped else item
            try:
                k = key(value)
                result = fn(states.get(k, initial), value)
                if awaits is None:
                    awaits = inspect.isawaitable(result)
                if awaits:
                    result = await result
            except Exception as exc:
                annotate(exc, label, index)
                raise
            states[k] = result
            yield Envelope(result, item.state) if enveloped else result
    finally:
        await aclose(upstream)


# --------------------------------------------------------------------------- throttle_by


def throttle_by(
    key: Callable[[Any], Hashable],
    rate: float,
    /,
    per: float = 1.0,
    *,
    burst: int = 1,
) -> Passthrough:
    """`throttle` with one token bucket per key: at most ``rate`` items of a key every ``per`` s.

    Each key's bucket holds up to ``burst`` tokens, starts full and refills
    at ``rate / per`` tokens a second; an item takes one token of its key's
    bucket. Items stay in order: an item waiting for its key's tokens holds
    back the items after it (whatever their key). Under a checkpoint the
    buckets of all keys are saved (keys must be codec-encodable).

    Args:
        key: Maps an item (its value, for `Envelope` items) to its key (sync).
        rate: Tokens added to each key's bucket every ``per`` seconds.
        per: The period, in seconds.
        burst: Each bucket's size.

    Examples:
        >>> import asyncio
        >>> from streamkit import throttle_by
        >>> from streamkit.testing import virtual_clock
        >>> async def main() -> list[tuple[str, float]]:
        ...     with virtual_clock() as clock:
        ...         return [(x, clock.now()) async for x in ["a", "b", "a"] | throttle_by(str, 1)]
        >>> asyncio.run(main())
        [('a', 0.0), ('b', 0.0), ('a', 1.0)]
    """
    check_callable(key, "key")
    per_second = _check_rate(rate, per)
    check_count(burst, "burst", minimum=1)
    label = f"throttle_by({describe(key)}, {rate:g}, {per:g})"

    def run(upstream: AsyncIterator[Any]) -> AsyncIterator[Any]:
        return _throttle_by(upstream, key, per_second, burst, {}, label, None)

    def restorable(slot: Slot) -> RunFunction:
        def checkpointed(upstream: AsyncIterator[Any]) -> AsyncIterator[Any]:
            buckets = _restored(slot.restore(None))
            return _throttle_by(upstream, key, per_second, burst, buckets, label, slot)

        return checkpointed

    return Passthrough(transform_stage(label, run, restorable=restorable).steps)


async def _throttle_by(
    upstream: AsyncIterator[Any],
    key: Callable[[Any], Any],
    per_second: float,
    burst: int,
    restored: dict[Any, Any],
    label: str,
    slot: Slot | None,
) -> AsyncIterator[Any]:
    clock = current_clock()
    start = clock.now()
    # key -> [tokens, when they were counted]; restored buckets count from now.
    buckets: dict[Any, list[float]] = {k: [float(t), start] for k, t in restored.items()}
    index = -1
    try:
        async for item in upstream:
            if type(item) is CONTROL:
                if slot is not None and item.kind == "barrier":
                    now = clock.now()
                    full = float(burst)
                    saved = {
                        k: min(full, tokens + (now - last) * per_second)
                        for k, (tokens, last) in buckets.items()
                    }
                    # A full bucket is the same as no bucket: keep the snapshot small.
                    slot.save(item, _pairs({k: t for k, t in saved.items() if t < full}))
                yield item
                continue
            index += 1
            value = item.value if is_envelope(item) else item
            try:
                k = key(value)
                bucket = buckets.get(k)
            except Exception as exc:
                annotate(exc, label, index)
                raise
            now = clock.now()
            if bucket is None:
                bucket = buckets[k] = [float(burst), now]
            tokens = min(burst, bucket[0] + (now - bucket[1]) * per_second)
            if tokens < 1.0:
                await clock.sleep((1.0 - tokens) / per_second)
                later = clock.now()
                tokens = min(burst, tokens + (later - now) * per_second)
                now = later
            bucket[0] = tokens - 1.0
            bucket[1] = now
            yield item
    finally:
        await aclose(upstream)
