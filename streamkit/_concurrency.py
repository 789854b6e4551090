"""Concurrent operators: item calls in flight at once, and prefetching.

`map_`, `filter_` and `flat_map` with ``concurrency > 1`` run here (their
factories import this module only when asked for concurrency), as does
`buffer`.

The model (see docs/concurrency.md):

* a *feeder* task pulls the upstream and starts one task per item while
  fewer than ``concurrency`` calls are in flight and fewer than ``window``
  finished results wait to be yielded;
* each call task runs the user's function and, as it ends, updates the
  counts and wakes whoever waits through one-shot futures: no done-callback,
  no ``asyncio.wait`` over a set, no extra loop turn per item;
* the generator the consumer iterates never runs inside a task group or a
  cancel scope: it only waits on a one-shot signal and yields finished
  results, in input order or in completion order.
"""

from __future__ import annotations

import inspect
from collections import deque
from types import CoroutineType
from typing import TYPE_CHECKING, Any, Final, Literal, TypeAlias, cast

from ._barrier import CONTROL
from ._core import (
    SKIP,
    ConcurrentOp,
    Passthrough,
    Stage,
    Transform,
    aclose,
    annotate,
    check_callable,
    check_count,
    is_async_callable,
    is_async_iterable,
    is_envelope,
    is_iterable,
    mixed_items,
    open_async,
    stage_label,
    transform_stage,
)
from ._records import Envelope
from ._runtime import Cancelled, completed, signal_maker, stop_all, task_starter, wake

if TYPE_CHECKING:
    from asyncio import Future
    from collections.abc import AsyncIterator, Awaitable, Callable

ItemKind: TypeAlias = Literal["map", "filter", "flat_map"]

DEFAULT_WINDOW_FACTOR: Final = 16
"""``window`` defaults to this times ``concurrency``: ordered mode then keeps
every slot busy behind a call up to about 16 times slower than the others."""


# --------------------------------------------------------------------------- building


def concurrent_stage(
    kind: ItemKind,
    fn: Callable[[Any], Any],
    label: str,
    *,
    concurrency: int,
    ordered: bool,
    window: int | None,
    with_state: bool = False,
) -> Stage[Any, Any]:
    """A stage running ``fn`` on up to ``concurrency`` items at once.

    Options are validated by the caller; ``window`` defaults to
    ``16 * concurrency``.
    """
    op = ConcurrentOp(
        kind=kind,
        fn=fn,
        label=label,
        is_async=is_async_callable(fn),
        concurrency=concurrency,
        ordered=ordered,
        window=DEFAULT_WINDOW_FACTOR * concurrency if window is None else window,
        with_state=with_state,
    )
    return Stage((concurrent_transform(op),))


def concurrent_transform(op: ConcurrentOp) -> Transform:
    """The `Transform` that runs ``op`` concurrently (any ``op.concurrency``).

    This is how a wrapper rebuilds an item-level stage around a wrapped
    function: ``concurrent_transform(dataclasses.replace(op, fn=wrapped))``.
    """

    def run(upstream: AsyncIterator[Any]) -> AsyncIterator[Any]:
        return _Calls(op, upstream).results()

    return Transform(op.label, run, op, barriers=True)


# --------------------------------------------------------------------------- one run


def _awaitable_not_iterable(value: object) -> bool:
    # No narrowing on purpose: the caller keeps treating the value as Any.
    return inspect.isawaitable(value) and not hasattr(type(value), "__aiter__")


async def flat_elements(result: Any, label: str) -> list[Any]:
    """The elements of a flat_map call's result (awaited if need be), as a list."""
    if _awaitable_not_iterable(result):
        # Some async iterables are awaitable too (aiostream's streams):
        # iterate those, never await them.
        result = await result
    if is_async_iterable(result):
        inner = open_async(result)
        try:
            return [element async for element in inner]
        finally:
            await aclose(inner)
    if not is_iterable(result):
        raise TypeError(
            f"{label} must return an iterable or an async iterable, got {type(result).__name__}"
        )
    return list(result)


_COROUTINE: Final[type[Any]] = CoroutineType  # `type(x) is` it: the fast test, no narrowing


class _Failed:
    __slots__ = ()


_FAILED: Final = _Failed()
"""What a call that failed returns: its error was recorded on the run."""


class _Inner:
    """The elements of one ordered `flat_map` call, held until their turn comes.

    The call's task puts each element here as its inner stream yields it;
    the consumer takes them out, in order, once the call is at the head of
    the output order (``position == next_out``), while later calls run
    ahead into their own `_Inner`.
    """

    __slots__ = ("elements", "ended", "position")

    def __init__(self, position: int) -> None:
        self.elements: deque[Any] = deque()
        self.ended = False
        self.position = position


class _Calls:
    """The state of one run of a concurrent item stage.

    ``tasks`` maps the index of each item whose call is in flight to its task.
    In ordered mode ``queue`` holds every task not yet yielded, in input
    order, done or not; in unordered mode ``finished`` holds the outcomes of
    finished calls in completion order. Each call runs in `call`, which does
    its own bookkeeping when it ends (no done-callbacks, no extra loop turn).
    """

    __slots__ = (
        "broken",
        "consumer_signal",
        "enveloped",
        "failure",
        "fed",
        "feeder_signal",
        "finished",
        "fn",
        "held",
        "kind",
        "label",
        "limit",
        "new_signal",
        "next_out",
        "ordered",
        "others",
        "queue",
        "room_waiters",
        "sees_envelope",
        "source_error",
        "start",
        "stopping",
        "tasks",
        "upstream",
        "window",
        "with_state",
    )

    def __init__(self, op: ConcurrentOp, upstream: AsyncIterator[Any]) -> None:
        self.kind = op.kind
        self.fn = op.fn
        self.label = op.label
        self.limit = op.concurrency
        self.window = op.window
        self.ordered = op.ordered
        self.upstream = upstream
        self.with_state = op.with_state and not op.sees_envelope
        self.sees_envelope = op.sees_envelope
        self.enveloped: bool | None = None
        self.tasks: dict[int, Future[Any]] = {}
        self.queue: deque[Future[Any] | _Inner] = deque()
        self.finished: deque[Any] = deque()
        self.next_out = 0
        self.failure: BaseException | None = None
        self.others: list[BaseException] = []
        self.broken: list[BaseException] = []
        self.source_error: BaseException | None = None
        self.fed = False
        self.stopping = False
        self.feeder_signal: Future[Any] | None = None
        self.consumer_signal: Future[Any] | None = None
        self.start: Callable[[Any], Future[Any]] = task_starter()
        self.new_signal = signal_maker()
        self.held = 0
        """Elements of ordered `flat_map` calls waiting in their `_Inner`."""
        self.room_waiters: list[Future[Any]] = []
        """`flat_map` calls waiting for room to put an element."""

    # -- signals -----------------------------------------------------------

    def _has_room(self) -> bool:
        running = len(self.tasks)
        held = len(self.queue) - running if self.ordered else len(self.finished)
        return running < self.limit and held < self.window

    def _wake_feeder(self) -> None:
        signal = self.feeder_signal
        if signal is not None and self._has_room():
            self.feeder_signal = None
            if not signal.done():
                signal.set_result(None)

    def _wake_consumer(self) -> None:
        signal = self.consumer_signal
        if signal is not None:
            self.consumer_signal = None
            if not signal.done():
                signal.set_result(None)

    # -- one call ------------------------------------------------------------

    async def call(self, item: Any, index: int, position: int, inner: _Inner | None = None) -> Any:
        """Run ``fn`` on one item in its own task; record how it ended.

        ``index`` is the item's index in the input, ``position`` its place in
        the output order (control elements take places too). A `flat_map`
        call streams its elements out as they come (into ``inner`` in
        ordered mode) and returns nothing.
        """
        try:
            enveloped = self.enveloped
            if enveloped is None:
                # The first item tells whether the stream carries envelopes.
                enveloped = self.enveloped = is_envelope(item)
            if self.kind == "flat_map":
                await self._flat(item, enveloped, inner)
                result: Any = None
            elif enveloped:
                result = await self._call_enveloped(item)
            else:
                if self.with_state:
                    raise TypeError(
                        f"{self.label} was built with with_state=True, which needs a stream "
                        f"of Envelope items; got {type(item).__name__} (use envelop() first)"
                    )
                result = self.fn(item)
                kind = self.kind
                if kind == "map":
                    if type(result) is _COROUTINE or inspect.isawaitable(result):
                        result = await cast("Awaitable[Any]", result)
                elif kind == "filter":
                    keep = (await result) if inspect.isawaitable(result) else result
                    result = item if keep else SKIP
        except Exception as raised:
            error = mixed_items(raised, item, self.enveloped, self.label, index)
            annotate(error, self.label, index)
            if self.stopping:
                # It raised instead of stopping when cancelled: a bug to surface.
                self.broken.append(error)
            elif self.failure is None:
                self.failure = error
                self._wake_consumer()
            else:
                self.others.append(error)
            result = _FAILED
        except Cancelled as cancelled:
            if not self.stopping and self.failure is None:
                # Cancelled by someone else: the stream cannot go on without it.
                self.failure = cancelled
                self._wake_consumer()
            raise
        finally:
            del self.tasks[index]
            if inner is not None:
                inner.ended = True
        if not self.stopping:
            if self.ordered:
                if position == self.next_out:
                    self._wake_consumer()
            elif result is not _FAILED and self.kind != "flat_map":
                self.finished.append(result)
                self._wake_consumer()
            elif self.fed and not self.tasks:
                # The last call ended, maybe with no element to wake the consumer.
                self._wake_consumer()
            if self.feeder_signal is not None:
                self._wake_feeder()
        return result

    async def _call_enveloped(self, envelope: Envelope[Any]) -> Any:
        """One call on an envelope: the function sees the value (and state)."""
        value, state = envelope.value, envelope.state
        call: Callable[..., Any] = self.fn
        if self.sees_envelope:
            result: Any = call(envelope)
        else:
            result = call(value, state) if self.with_state else call(value)
        if _awaitable_not_iterable(result):
            result = await result
        if self.kind == "filter":
            return envelope if result else SKIP
        if (
            result is SKIP
            or type(result) is CONTROL
            or ((self.with_state or self.sees_envelope) and is_envelope(result))
        ):
            return result
        return Envelope(result, state)

    async def _flat(self, item: Any, enveloped: bool, inner: _Inner | None) -> None:
        """One `flat_map` call: put each element out as its inner stream yields it."""
        call: Callable[..., Any] = self.fn
        state: Any = None
        if enveloped:
            state = item.state
            if self.sees_envelope:
                result: Any = call(item)
            else:
                result = call(item.value, state) if self.with_state else call(item.value)
        else:
            if self.with_state:
                raise TypeError(
                    f"{self.label} was built with with_state=True, which needs a stream "
                    f"of Envelope items; got {type(item).__name__} (use envelop() first)"
                )
            result = call(item)
        if _awaitable_not_iterable(result):
            # Some async iterables are awaitable too (aiostream's streams):
            # iterate those, never await them.
            result = await result
        # Envelopes: a function that sees them returns elements already wrapped
        # with the state it recorded (or control elements); others get the item's.
        wrapped = enveloped and not self.sees_envelope
        put = self._put
        if is_async_iterable(result):
            elements = open_async(result)
            try:
                async for element in elements:
                    if wrapped or (
                        enveloped and not is_envelope(element) and type(element) is not CONTROL
                    ):
                        element = Envelope(element, state)
                    await put(element, inner)
            finally:
                await aclose(elements)
            return
        if not is_iterable(result):
            raise TypeError(
                f"{self.label} must return an iterable or an async iterable, "
                f"got {type(result).__name__}"
            )
        try:
            for element in result:
                if wrapped or (
                    enveloped and not is_envelope(element) and type(element) is not CONTROL
                ):
                    element = Envelope(element, state)
                await put(element, inner)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()

    async def _put(self, element: Any, inner: _Inner | None) -> None:
        """Hand one element out, waiting while the held elements reach ``window``.

        Unordered, every call's elements go into ``finished``, at most
        ``window`` of them. Ordered, they wait in their call's `_Inner`: the
        call at the head holds at most ``window``, and the others run ahead
        while fewer than ``window`` elements are held in all.
        """
        window = self.window
        if inner is None:
            finished = self.finished
            while len(finished) >= window:
                await self._wait_for_room()
            finished.append(element)
            self._wake_consumer()
            return
        elements = inner.elements
        while len(elements) >= window or (self.held >= window and inner.position != self.next_out):
            await self._wait_for_room()
        elements.append(element)
        self.held += 1
        if inner.position == self.next_out:
            self._wake_consumer()

    async def _wait_for_room(self) -> None:
        signal = self.new_signal()
        self.room_waiters.append(signal)
        await signal

    def _wake_room(self) -> None:
        """Let every `flat_map` call waiting for room look again."""
        waiters = self.room_waiters
        if waiters:
            self.room_waiters = []
            for signal in waiters:
                if not signal.done():
                    signal.set_result(None)

    def _failed(self) -> bool:
        """Whether a call failed (read anew: calls fail while the feeder waits)."""
        return self.failure is not None

    # -- the feeder task -------------------------------------------------

    async def feed(self) -> None:
        """Pull the upstream and start calls while there is room."""
        pull = self.upstream.__anext__
        tasks = self.tasks
        queue = self.queue
        finished = self.finished
        ordered = self.ordered
        limit = self.limit
        window = self.window
        start = self.start
        call = self.call
        flat = self.kind == "flat_map"
        index = 0
        position = 0
        try:
            while True:
                while True:
                    running = len(tasks)
                    held = len(queue) - running if ordered else len(finished)
                    if running < limit and held < window:
                        break
                    signal = self.feeder_signal = self.new_signal()
                    await signal
                if self.failure is not None:
                    break
                try:
                    item = await pull()
                except StopAsyncIteration:
                    break
                except Exception as exc:
                    # Delivered after the calls already started, like the end.
                    self.source_error = exc
                    break
                if type(item) is CONTROL:
                    # In order: a place of its own in the output order. Out of
                    # order: a barrier waits for every call started before it.
                    if ordered:
                        queue.append(completed(item))
                        if position == self.next_out:
                            self._wake_consumer()  # no call will: it is done already
                        position += 1
                        continue
                    if item.kind == "barrier":
                        while tasks and self.failure is None:
                            signal = self.feeder_signal = self.new_signal()
                            await signal
                        if self._failed():
                            break
                    finished.append(item)
                    self._wake_consumer()
                    continue
                if flat and ordered:
                    inner = _Inner(position)
                    tasks[index] = start(call(item, index, position, inner))
                    queue.append(inner)
                else:
                    task = tasks[index] = start(call(item, index, position))
                    if ordered:
                        queue.append(task)
                index += 1
                position += 1
        finally:
            self.fed = True
            self.feeder_signal = None
            self._wake_consumer()

    # -- the generator the consumer iterates ------------------------------

    async def results(self) -> AsyncIterator[Any]:
        """Yield finished results; stop and clean up however the consumer stops."""
        feeder = self.start(self.feed())
        queue = self.queue
        finished = self.finished
        tasks = self.tasks
        ordered = self.ordered
        kind = self.kind
        reason: BaseException | None = None
        try:
            while True:
                failure = self.failure
                if failure is not None:
                    raise failure
                if ordered:
                    if queue:
                        head = queue[0]
                        if isinstance(head, _Inner):  # a flat_map call: its elements as they come
                            elements = head.elements
                            if elements:
                                self.held -= 1
                                self._wake_room()
                                yield elements.popleft()
                                continue
                            if head.ended:
                                queue.popleft()
                                self.next_out += 1
                                self._wake_room()  # the next call is the head now
                                if self.feeder_signal is not None:
                                    self._wake_feeder()
                                continue
                        elif head.done():
                            queue.popleft()
                            self.next_out += 1
                            if self.feeder_signal is not None:
                                self._wake_feeder()
                            result = head.result()
                            if kind != "filter" or result is not SKIP:
                                yield result
                            continue
                    elif self.fed:
                        break
                elif finished:
                    result = finished.popleft()
                    if kind == "flat_map":
                        self._wake_room()
                    if self.feeder_signal is not None:
                        self._wake_feeder()
                    if kind != "filter" or result is not SKIP:
                        yield result
                    continue
                elif self.fed and not tasks:
                    break
                signal = self.consumer_signal = self.new_signal()
                try:
                    await signal
                finally:
                    self.consumer_signal = None
            if self.source_error is not None:
                raise self.source_error
        except BaseException as exc:
            reason = exc
            raise
        finally:
            await self._shutdown(feeder, reason)

    async def _shutdown(self, feeder: Future[None], reason: BaseException | None) -> None:
        """Cancel and await the feeder and every call; close the upstream.

        See "Failures" in docs/concurrency.md for what happens to the errors
        found here.
        """
        self.stopping = True
        try:
            # One snapshot: the feeder cannot start a call once it is cancelled.
            # It never fails on its own; if it does, that surfaces too.
            broken = await stop_all([feeder, *self.tasks.values()])
        finally:
            await aclose(self.upstream)
        broken += self.broken
        unused = list(self.others)
        for error in (self.failure, self.source_error):
            if error is not None and error is not reason:
                unused.append(error)
        if reason is not None and (reason is self.failure or reason is self.source_error):
            for error in [*unused, *broken]:
                reason.add_note(f"streamkit: {self.label} also failed: {error!r}")
            return
        # The consumer stopped (break, aclose, an error downstream or a
        # cancellation): outcomes it never asked for, failures included, are
        # discarded like unyielded results.
        if not broken:
            return
        if reason is None or isinstance(reason, GeneratorExit):
            first, *others = broken
            for error in others:
                first.add_note(f"streamkit: {self.label} also failed: {error!r}")
            raise first
        for error in broken:
            reason.add_note(f"streamkit: {self.label} failed while being cancelled: {error!r}")


# --------------------------------------------------------------------------- buffer

Overflow: TypeAlias = Literal["wait", "drop_oldest", "drop_newest"]
_OVERFLOWS: Final = ("wait", "drop_oldest", "drop_newest")


def buffer(
    n: int,
    /,
    *,
    overflow: Overflow = "wait",
    on_drop: Callable[[Any], object] | None = None,
    name: str | None = None,
) -> Passthrough:
    """Prefetch up to ``n`` items in a background task.

    A slow producer and a slow consumer then overlap instead of taking turns.
    With ``overflow="wait"`` (the default) the producer pauses while ``n``
    items wait; nothing is lost. With ``"drop_oldest"`` or ``"drop_newest"``
    the producer never pauses: when the buffer is full the oldest buffered
    item, or the item just pulled, is dropped and passed to ``on_drop``,
    which these policies require so that no item disappears unreported.

    Args:
        n: How many items may wait in the buffer (1 or more).
        overflow: What to do when the buffer is full.
        on_drop: Called (synchronously, in the producer task) with each
            dropped item; an exception from it fails the stream.
        name: The stage's label in statistics, events, errors and the
            history (see `map_`).

    Examples:
        >>> import asyncio
        >>> from streamkit import buffer, collect
        >>> asyncio.run(collect(range(5) | buffer(2)))
        [0, 1, 2, 3, 4]
        >>> dropped = []
        >>> lossy = buffer(2, overflow="drop_newest", on_drop=dropped.append)
        >>> asyncio.run(collect(range(5) | lossy))
        [0, 1]
        >>> dropped
        [2, 3, 4]
    """
    check_count(n, "n", minimum=1)
    if overflow not in _OVERFLOWS:
        choices = ", ".join(map(repr, _OVERFLOWS))
        raise ValueError(f"overflow must be one of {choices}; got {overflow!r}")
    if overflow != "wait":
        if on_drop is None:
            raise TypeError(f"overflow={overflow!r} needs on_drop= to report the dropped items")
        check_callable(on_drop, "on_drop")
    label = stage_label(
        name, f"buffer({n})" if overflow == "wait" else f"buffer({n}, overflow={overflow!r})"
    )

    def run(upstream: AsyncIterator[Any]) -> AsyncIterator[Any]:
        return _Buffer(upstream, n, overflow, on_drop, label).results()

    return Passthrough(transform_stage(label, run, barriers=True).steps)


class _Buffer:
    __slots__ = (
        "consumer_signal",
        "ended",
        "error",
        "held",
        "items",
        "label",
        "n",
        "new_signal",
        "on_drop",
        "overflow",
        "producer_signal",
        "pulled",
        "upstream",
    )

    def __init__(
        self,
        upstream: AsyncIterator[Any],
        n: int,
        overflow: Overflow,
        on_drop: Callable[[Any], object] | None,
        label: str,
    ) -> None:
        self.upstream = upstream
        self.n = n
        self.overflow = overflow
        self.on_drop = on_drop
        self.label = label
        self.items: deque[Any] = deque()
        self.held = 0
        """The items (not control elements) in ``items``."""
        self.ended = False
        self.error: BaseException | None = None
        self.pulled = 0
        self.producer_signal: Future[Any] | None = None
        self.consumer_signal: Future[Any] | None = None
        self.new_signal = signal_maker()

    async def produce(self) -> None:
        # Control elements (checkpoint barriers, writes) wait in the buffer in
        # their place, take no room and are never dropped.
        items = self.items
        try:
            while True:
                if self.overflow == "wait":
                    while self.held >= self.n:
                        signal = self.producer_signal = self.new_signal()
                        await signal
                try:
                    item = await anext(self.upstream)
                except StopAsyncIteration:
                    break
                if type(item) is CONTROL:
                    items.append(item)
                    wake(self.consumer_signal)
                    continue
                index = self.pulled
                self.pulled += 1
                if self.held >= self.n:
                    dropped = item
                    if self.overflow == "drop_oldest":
                        dropped = self._pop_oldest_item()
                        items.append(item)
                    assert self.on_drop is not None
                    try:
                        self.on_drop(dropped)
                    except Exception as exc:
                        annotate(exc, f"{self.label} on_drop", index)
                        raise
                else:
                    items.append(item)
                    self.held += 1
                wake(self.consumer_signal)
        except Exception as exc:
            self.error = exc
        finally:
            self.ended = True
            self.producer_signal = None
            wake(self.consumer_signal)

    def _pop_oldest_item(self) -> Any:
        items = self.items
        if type(items[0]) is not CONTROL:
            return items.popleft()
        for position, item in enumerate(items):  # rare: skip the control elements
            if type(item) is not CONTROL:
                del items[position]
                return item
        raise AssertionError("a full buffer holds items")  # pragma: no cover

    async def results(self) -> AsyncIterator[Any]:
        producer = task_starter()(self.produce())
        items = self.items
        reason: BaseException | None = None
        try:
            while True:
                if items:
                    item = items.popleft()
                    if type(item) is not CONTROL:
                        self.held -= 1
                    wake(self.producer_signal)
                    yield item
                    continue
                if self.ended:
                    break
                signal = self.consumer_signal = self.new_signal()
                try:
                    await signal
                finally:
                    self.consumer_signal = None
            if self.error is not None:
                raise self.error
        except BaseException as exc:
            reason = exc
            raise
        finally:
            try:
                broken = await stop_all([producer])
            finally:
                await aclose(self.upstream)
            # A failure the consumer never reached is discarded with the
            # items it never asked for; the producer itself never fails.
            if broken:
                if reason is None or isinstance(reason, GeneratorExit):
                    raise broken[0]
                for error in broken:
                    reason.add_note(f"streamkit: {self.label} failed while stopping: {error!r}")
