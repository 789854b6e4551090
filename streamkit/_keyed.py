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
    StateStage,
    aclose,
    annotate,
    check_callable,
    check_count,
    check_seconds,
    describe,
    is_async_callable,
    is_envelope,
    stage_label,
    transform_stage,
)
from ._initial import initial_maker
from ._records import EMPTY, Envelope, Key, State, StateLimits, key_name
from ._runtime import current_clock

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Hashable

    from ._barrier import RunFunction, Slot
    from ._core import Stage
    from ._initial import Factory

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


# --------------------------------------------------------------------------- scan_state_by


@overload
def scan_state_by(
    key: Callable[[T], Hashable],
    state_key: Key[A] | str,
    fn: Callable[[A, T], Awaitable[A]],
    initial: A | Factory[A],
    /,
    *,
    max_keys: int | None = None,
    name: str | None = None,
) -> StateStage[T | Envelope[T], Envelope[T]]: ...
@overload
def scan_state_by(
    key: Callable[[T], Hashable],
    state_key: Key[A] | str,
    fn: Callable[[A, T], A],
    initial: A | Factory[A],
    /,
    *,
    max_keys: int | None = None,
    name: str | None = None,
) -> StateStage[T | Envelope[T], Envelope[T]]: ...
def scan_state_by(
    key: Callable[[Any], Any],
    state_key: Key[Any] | str,
    fn: Callable[[Any, Any], Any],
    initial: Any,
    /,
    *,
    max_keys: int | None = None,
    name: str | None = None,
) -> Stage[Any, Any]:
    """`scan_state` with one aggregate per key: each item's state gets its own key's aggregate.

    Every key's aggregate starts at ``initial``; each item updates the
    aggregate of its key (``acc = fn(acc, value)``) and goes on in an envelope
    whose state holds it under ``state_key``, so later stages read it as
    ``state[state_key]`` (typed by a `Key`). Plain items are put into
    envelopes. With ``max_keys`` at most that many aggregates are kept: a new
    key drops the least recently updated one, whose next item starts again
    from ``initial``. Under a checkpoint every kept aggregate is saved (keys
    and aggregates must be values the run's codec encodes, or the `Key`'s
    codec for aggregates).

    Args:
        key: Maps an item (its value, for `Envelope` items) to its key (sync, hashable).
        state_key: The `Key` (or string key) the aggregate is set under.
        fn: Combines a key's aggregate with the next value of that key (sync or async).
        initial: Every key's aggregate before its first item: an immutable value, or
            a `Factory` that makes a new one for each key.
        max_keys: Keep at most this many keys' aggregates (None: every key's).
        name: The stage's label in statistics, events, errors and the history.

    Examples:
        >>> import asyncio
        >>> from streamkit import Key, collect
        >>> SPENT = Key[int]("spent")
        >>> orders = [("ann", 3), ("bob", 5), ("ann", 4)]
        >>> stage = scan_state_by(lambda o: o[0], SPENT, lambda n, o: n + o[1], 0)
        >>> [item.state[SPENT] for item in asyncio.run(collect(orders | stage))]
        [3, 5, 7]
    """
    check_callable(key, "key")
    state_name = key_name(state_key, "state_key")
    check_callable(fn, "fn")
    if max_keys is not None:
        check_count(max_keys, "max_keys", minimum=1)
    label = stage_label(name, f"scan_state_by({describe(key)}, {state_name!r}, {describe(fn)})")
    make = initial_maker(initial, label)
    codec_keys: tuple[Key[Any], ...] = (
        (state_key,) if isinstance(state_key, Key) and state_key.codec is not None else ()
    )
    spec = _StateBy(key, state_name, fn, make, max_keys, is_async_callable(fn), label)
    spec.coded = bool(codec_keys)

    def run(upstream: AsyncIterator[Any]) -> AsyncIterator[Any]:
        return spec.run(upstream, {}, None)

    def restorable(slot: Slot) -> RunFunction:
        def checkpointed(upstream: AsyncIterator[Any]) -> AsyncIterator[Any]:
            saved = _restored(slot.restore(None))
            if codec_keys:
                saved = {k: state[state_name] for k, state in saved.items()}
            return spec.run(upstream, saved, slot)

        return checkpointed

    steps = transform_stage(label, run, restorable=restorable, keys=codec_keys).steps
    return StateStage(steps)


class _StateBy:
    """What a `scan_state_by` stage keeps between runs: its parameters."""

    __slots__ = ("coded", "fn", "key", "known_async", "label", "make", "max_keys", "name")

    def __init__(
        self,
        key: Callable[[Any], Any],
        name: str,
        fn: Callable[[Any, Any], Any],
        make: Callable[[], Any],
        max_keys: int | None,
        known_async: bool,
        label: str,
    ) -> None:
        self.key = key
        self.coded = False
        """The state key has a codec: the aggregates are saved in states, for it."""
        self.name = name
        self.fn = fn
        self.make = make
        self.max_keys = max_keys
        self.known_async = known_async
        self.label = label

    def _saved(self, states: dict[Any, Any]) -> list[list[Any]]:
        if not self.coded:
            return _pairs(states)
        name = self.name
        return [[k, State({name: v}, limits=StateLimits.UNLIMITED)] for k, v in states.items()]

    async def run(
        self, upstream: AsyncIterator[Any], states: dict[Any, Any], slot: Slot | None
    ) -> AsyncIterator[Any]:
        key, fn, make, name, label = self.key, self.fn, self.make, self.name, self.label
        max_keys = self.max_keys
        awaits: bool | None = True if self.known_async else None
        index = -1
        try:
            async for item in upstream:
                if type(item) is CONTROL:
                    if slot is not None and item.kind == "barrier":
                        slot.save(item, self._saved(states))
                    yield item
                    continue
                index += 1
                if is_envelope(item):
                    value, state = item.value, item.state
                else:
                    value, state = item, EMPTY
                try:
                    k = key(value)
                    acc = states.get(k, _MISSING)
                    result = fn(make() if acc is _MISSING else acc, value)
                    if awaits is None:
                        awaits = inspect.isawaitable(result)
                    if awaits:
                        result = await result
                except Exception as exc:
                    annotate(exc, label, index)
                    raise
                if acc is _MISSING:
                    if max_keys is not None and len(states) >= max_keys:
                        del states[next(iter(states))]  # the least recently updated
                else:
                    del states[k]  # to go last: the most recently updated
                states[k] = result
                yield Envelope(value, state.set(name, result))
        finally:
            await aclose(upstream)


_MISSING: Any = object()
