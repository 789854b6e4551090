"""Time operators: everything that waits on a clock."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final, Literal

from ._aggregate import enveloped_list
from ._barrier import CONTROL
from ._core import (
    Passthrough,
    aclose,
    annotate,
    check_callable,
    check_count,
    check_seconds,
    is_envelope,
    stage_label,
    transform_stage,
)
from ._runtime import cancel_and_wait, current_clock, spawn, wait_done

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from ._barrier import RunFunction, Slot


async def _pull(iterator: AsyncIterator[Any]) -> Any:
    return await anext(iterator)


async def chunk_within(
    upstream: AsyncIterator[Any], size: int, within: float, slot: Slot | None
) -> AsyncIterator[Any]:
    """Count-or-time batching: a list at ``size`` items or ``within`` seconds.

    One pull of the upstream is kept pending across batches; a timeout never
    cancels it, so no item is lost and the upstream is never interrupted
    mid-item. On a stream of `Envelope` items each batch is one envelope:
    the list of values, with the items' states merged (later items win).
    A checkpoint keeps the partial batch and how long its oldest item has
    waited; a resumed run waits only for the rest.
    """
    clock = current_clock()
    batch: list[Any] = []
    # Decided by the first item (the first of the first batch), once per run;
    # checked once per batch, never per item.
    enveloped: bool | None = None
    deadline = 0.0
    if slot is not None:
        restored: tuple[list[Any], float] = slot.restore(([], 0.0))
        kept, waited = restored
        batch = list(kept)
        deadline = clock.now() + max(0.0, within - waited)
    pending = None
    try:
        while True:
            if pending is None:
                pending = spawn(_pull(upstream))
            if batch:
                arrived = await wait_done(pending, deadline - clock.now(), clock)
                if not arrived:
                    ready, batch = batch, []
                    if enveloped is None:
                        enveloped = is_envelope(ready[0])
                    yield enveloped_list(ready) if enveloped else ready
                    continue
            else:
                await wait_done(pending, None, clock)
            task, pending = pending, None
            try:
                item = task.result()
            except StopAsyncIteration:
                break
            if type(item) is CONTROL:
                if slot is not None and item.kind == "barrier":
                    waited = within - (deadline - clock.now()) if batch else 0.0
                    slot.save(item, (batch, waited))
                yield item
                continue
            if not batch:
                deadline = clock.now() + within
            batch.append(item)
            if len(batch) == size:
                ready, batch = batch, []
                if enveloped is None:
                    enveloped = is_envelope(ready[0])
                yield enveloped_list(ready) if enveloped else ready
        if batch:
            if enveloped is None:
                enveloped = is_envelope(batch[0])
            yield enveloped_list(batch) if enveloped else batch
    finally:
        try:
            if pending is not None:
                await cancel_and_wait(pending)
        finally:
            await aclose(upstream)


# --------------------------------------------------------------------------- throttle


def throttle(
    rate: float,
    /,
    per: float = 1.0,
    *,
    burst: int = 1,
    cost: Callable[[Any], float] | None = None,
    name: str | None = None,
) -> Passthrough:
    """Let at most ``rate`` items through every ``per`` seconds (a token bucket).

    The bucket holds up to ``burst`` tokens and refills continuously at
    ``rate / per`` tokens a second; it starts full. Each item takes one
    token, or ``cost(item)`` tokens. An item that finds too few tokens waits
    for them: throttle delays, it never drops. An item costing more than
    ``burst`` waits for a full bucket and leaves the bucket in debt.

    Args:
        rate: Tokens added every ``per`` seconds.
        per: The period, in seconds.
        burst: The bucket size: how many items may pass at once after a pause.
        cost: Maps an item to the tokens it takes (a number >= 0, sync).
        name: The stage's label in statistics, events, errors and the
            history (see `map_`).

    Examples:
        >>> import asyncio
        >>> from streamkit import collect, throttle
        >>> from streamkit.testing import virtual_clock
        >>> async def main() -> list[float]:
        ...     with virtual_clock() as clock:
        ...         return [clock.now() async for _ in range(4) | throttle(2)]
        >>> asyncio.run(main())
        [0.0, 0.5, 1.0, 1.5]
    """
    per_second = _check_rate(rate, per)
    check_count(burst, "burst", minimum=1)
    if cost is not None:
        check_callable(cost, "cost")
    label = stage_label(
        name,
        f"throttle({rate:g}, {per:g})"
        if burst == 1
        else f"throttle({rate:g}, {per:g}, burst={burst})",
    )

    def run(upstream: AsyncIterator[Any]) -> AsyncIterator[Any]:
        return _throttle(upstream, per_second, burst, cost, label, None)

    def restorable(slot: Slot) -> RunFunction:
        def checkpointed(upstream: AsyncIterator[Any]) -> AsyncIterator[Any]:
            return _throttle(upstream, per_second, burst, cost, label, slot)

        return checkpointed

    return Passthrough(transform_stage(label, run, restorable=restorable).steps)


def _is_tokens(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value >= 0


def _check_rate(rate: object, per: object) -> float:
    if not isinstance(rate, int | float) or isinstance(rate, bool):
        raise TypeError(f"rate must be a number, got {type(rate).__name__}")
    if not 0 < rate < float("inf"):
        raise ValueError(f"rate must be positive and finite, got {rate}")
    seconds = check_seconds(per, "per")
    return float(rate) / seconds


async def _throttle(
    upstream: AsyncIterator[Any],
    per_second: float,
    burst: int,
    cost: Callable[[Any], float] | None,
    label: str,
    slot: Slot | None,
) -> AsyncIterator[Any]:
    clock = current_clock()
    # A checkpoint keeps the tokens in the bucket (refilled to the moment).
    tokens = float(burst) if slot is None else float(slot.restore(burst))
    last = clock.now()
    index = -1
    try:
        async for item in upstream:
            if type(item) is CONTROL:
                if slot is not None and item.kind == "barrier":
                    slot.save(item, min(burst, tokens + (clock.now() - last) * per_second))
                yield item
                continue
            index += 1
            need: float = 1.0
            if cost is not None:
                try:
                    need = cost(item)
                    if not _is_tokens(need):
                        raise ValueError(f"cost must return a number >= 0, got {need!r}")
                except Exception as exc:
                    annotate(exc, label, index)
                    raise
            now = clock.now()
            tokens = min(burst, tokens + (now - last) * per_second)
            last = now
            wanted = min(need, burst)
            if tokens < wanted:
                await clock.sleep((wanted - tokens) / per_second)
                now = clock.now()
                tokens = min(burst, tokens + (now - last) * per_second)
                last = now
            tokens -= need
            yield item
    finally:
        await aclose(upstream)


# --------------------------------------------------------------------------- spaced


def spaced(seconds: float, /, *, name: str | None = None) -> Passthrough:
    """Keep at least ``seconds`` between two items leaving the stage.

    The first item goes at once; each later one waits until ``seconds`` have
    passed since the previous one left (time the consumer spends counts).

    Args:
        seconds: The smallest gap between two items.
        name: The stage's label in statistics, events, errors and the
            history (see `map_`).

    Examples:
        >>> import asyncio
        >>> from streamkit import spaced
        >>> from streamkit.testing import virtual_clock
        >>> async def main() -> list[float]:
        ...     with virtual_clock() as clock:
        ...         return [clock.now() async for _ in range(3) | spaced(0.25)]
        >>> asyncio.run(main())
        [0.0, 0.25, 0.5]
    """
    gap = check_seconds(seconds, "seconds")

    def run(upstream: AsyncIterator[Any]) -> AsyncIterator[Any]:
        return _spaced(upstream, gap, None)

    def restorable(slot: Slot) -> RunFunction:
        def checkpointed(upstream: AsyncIterator[Any]) -> AsyncIterator[Any]:
            return _spaced(upstream, gap, slot)

        return checkpointed

    label = stage_label(name, f"spaced({gap:g})")
    return Passthrough(transform_stage(label, run, restorable=restorable).steps)


async def _spaced(
    upstream: AsyncIterator[Any], gap: float, slot: Slot | None
) -> AsyncIterator[Any]:
    clock = current_clock()
    last: float | None = None
    if slot is not None:
        # A checkpoint keeps how long ago the last item left (None: none has).
        since: float | None = slot.restore(None)
        last = None if since is None else clock.now() - since
    try:
        async for item in upstream:
            if type(item) is CONTROL:
                if slot is not None and item.kind == "barrier":
                    slot.save(item, None if last is None else clock.now() - last)
                yield item
                continue
            if last is not None:
                wait = last + gap - clock.now()
                if wait > 0:
                    await clock.sleep(wait)
            last = clock.now()
            yield item
    finally:
        await aclose(upstream)


# --------------------------------------------------------------------------- debounce


def debounce(seconds: float, /, *, name: str | None = None) -> Passthrough:
    """Yield an item only once ``seconds`` pass without a newer one.

    Bursts collapse to their last item. When the upstream ends, the item
    still waiting is yielded at once. One pull of the upstream stays pending
    while the quiet period runs; it is never cancelled by the timer.

    Args:
        seconds: The quiet period.
        name: The stage's label in statistics, events, errors and the
            history (see `map_`).

    Examples:
        >>> import asyncio
        >>> from streamkit import collect, debounce
        >>> asyncio.run(collect([1, 2, 3] | debounce(0.01)))
        [3]
    """
    quiet = check_seconds(seconds, "seconds")

    def run(upstream: AsyncIterator[Any]) -> AsyncIterator[Any]:
        return _debounce(upstream, quiet, None)

    def restorable(slot: Slot) -> RunFunction:
        def checkpointed(upstream: AsyncIterator[Any]) -> AsyncIterator[Any]:
            return _debounce(upstream, quiet, slot)

        return checkpointed

    label = stage_label(name, f"debounce({quiet:g})")
    return Passthrough(transform_stage(label, run, restorable=restorable).steps)


_NOTHING: Final = object()


async def _debounce(
    upstream: AsyncIterator[Any], quiet: float, slot: Slot | None
) -> AsyncIterator[Any]:
    clock = current_clock()
    latest: Any = _NOTHING
    deadline = 0.0
    if slot is not None:
        # A checkpoint keeps the waiting item and the rest of its quiet period.
        kept: list[Any] = slot.restore([])
        if kept:
            latest, remaining = kept
            deadline = clock.now() + remaining
    pending = None
    try:
        while True:
            if pending is None:
                pending = spawn(_pull(upstream))
            if latest is _NOTHING:
                await wait_done(pending, None, clock)
            elif not await wait_done(pending, deadline - clock.now(), clock):
                ready, latest = latest, _NOTHING
                yield ready
                continue
            task, pending = pending, None
            try:
                item = task.result()
            except StopAsyncIteration:
                break
            if type(item) is CONTROL:
                if slot is not None and item.kind == "barrier":
                    held = [] if latest is _NOTHING else [latest, max(0.0, deadline - clock.now())]
                    slot.save(item, held)
                yield item
                continue
            latest = item
            deadline = clock.now() + quiet
        if latest is not _NOTHING:
            yield latest
    finally:
        try:
            if pending is not None:
                await cancel_and_wait(pending)
        finally:
            await aclose(upstream)


# --------------------------------------------------------------------------- timeout


def timeout(
    seconds: float,
    /,
    *,
    on_timeout: Literal["raise", "end"] = "raise",
    name: str | None = None,
) -> Passthrough:
    """Limit the wait for each item to ``seconds``.

    The clock starts when the consumer asks for the next item. If the item
    is not there in time, the pending pull is cancelled, the upstream is
    closed, and the stage raises `TimeoutError` (with a note naming the stage
    and the item index), or, with ``on_timeout="end"``, ends the stream.

    Args:
        seconds: The longest wait for one item.
        on_timeout: ``"raise"`` or ``"end"``.
        name: The stage's label in statistics, events, errors and the
            history (see `map_`).

    Examples:
        >>> import asyncio
        >>> from streamkit import collect, current_clock, timeout
        >>> from streamkit.testing import virtual_clock
        >>> async def ticks():
        ...     for delay in (1, 1, 5, 1):
        ...         await current_clock().sleep(delay)
        ...         yield delay
        >>> async def main() -> list[int]:
        ...     with virtual_clock():
        ...         return await collect(ticks() | timeout(2, on_timeout="end"))
        >>> asyncio.run(main())
        [1, 1]
    """
    limit = check_seconds(seconds, "seconds")
    if on_timeout not in ("raise", "end"):
        raise ValueError(f"on_timeout must be 'raise' or 'end', got {on_timeout!r}")
    label = stage_label(
        name,
        f"timeout({limit:g})" if on_timeout == "raise" else f"timeout({limit:g}, on_timeout='end')",
    )

    def run(upstream: AsyncIterator[Any]) -> AsyncIterator[Any]:
        return _timeout(upstream, limit, on_timeout == "end", label)

    return Passthrough(transform_stage(label, run, barriers=True).steps)


async def _timeout(
    upstream: AsyncIterator[Any], limit: float, end: bool, label: str
) -> AsyncIterator[Any]:
    clock = current_clock()
    pending = None
    index = 0
    try:
        while True:
            pending = spawn(_pull(upstream))
            if not await wait_done(pending, limit, clock):
                await cancel_and_wait(pending)
                pending = None
                if end:
                    return
                error = TimeoutError(f"{label}: no item within {limit:g} s")
                annotate(error, label, index)
                raise error
            task, pending = pending, None
            try:
                item = task.result()
            except StopAsyncIteration:
                return
            if type(item) is not CONTROL:
                index += 1
            yield item
    finally:
        try:
            if pending is not None:
                await cancel_and_wait(pending)
        finally:
            await aclose(upstream)
