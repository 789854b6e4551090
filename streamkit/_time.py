"""Time operators: everything that waits on a clock."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._core import aclose
from ._runtime import cancel_and_wait, current_clock, spawn, wait_done

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


async def _pull(iterator: AsyncIterator[Any]) -> Any:
    return await anext(iterator)


async def chunk_within(
    upstream: AsyncIterator[Any], size: int, within: float
) -> AsyncIterator[list[Any]]:
    """Count-or-time batching: a list at ``size`` items or ``within`` seconds.

    One pull of the upstream is kept pending across batches; a timeout never
    cancels it, so no item is lost and the upstream is never interrupted
    mid-item.
    """
    clock = current_clock()
    batch: list[Any] = []
    deadline = 0.0
    pending = None
    try:
        while True:
            if pending is None:
                pending = spawn(_pull(upstream))
            if batch:
                arrived = await wait_done(pending, deadline - clock.now(), clock)
                if not arrived:
                    ready, batch = batch, []
                    yield ready
                    continue
            else:
                await wait_done(pending, None, clock)
            task, pending = pending, None
            try:
                item = task.result()
            except StopAsyncIteration:
                break
            if not batch:
                deadline = clock.now() + within
            batch.append(item)
            if len(batch) == size:
                ready, batch = batch, []
                yield ready
        if batch:
            yield batch
    finally:
        if pending is not None:
            await cancel_and_wait(pending)
        await aclose(upstream)
