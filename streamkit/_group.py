"""Keyed sub-streams: `group_by` (a sub-pipeline per key), `switch_map` (a stream per key).

Both run work per key in tasks behind the generator the consumer iterates,
and hand their outputs over through one bounded queue: outputs of one key
keep their order, outputs of different keys interleave as they come.

Under a checkpoint, `group_by` sends a barrier of its own through every open
key's sub-pipeline and forwards the run's barrier once all of them have
passed it (each key's outputs for earlier items are then out); its snapshot
is every open key with the snapshots of its sub-pipeline's steps. `switch_map`
saves each inner stream in flight as its source item and how many elements it
has handed over; a resumed run opens those streams again and skips what was
already handed over.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import TYPE_CHECKING, Any, Final, TypeVar, overload

from ._barrier import CONTROL, Control
from ._core import (
    aclose,
    annotate,
    check_callable,
    check_count,
    check_seconds,
    describe,
    is_envelope,
    is_stage,
    open_async,
    stage_label,
    transform_stage,
)
from ._records import Envelope
from ._runtime import (
    current_clock,
    signal_maker,
    spawn,
    stop_all,
    wait_for_signal,
    wake,
)

if TYPE_CHECKING:
    import asyncio
    from collections.abc import AsyncIterable, AsyncIterator, Callable, Hashable

    from ._barrier import RunFunction, Slot
    from ._core import IndexedStage, ListStage, Passthrough, Stage
    from ._runtime import Clock

T = TypeVar("T")
R = TypeVar("R")

ENVELOPE: Final[type[Any]] = Envelope
"""`Envelope`, typed so that ``isinstance(item, ENVELOPE)`` leaves an ``Any`` item ``Any``."""

_OUTPUTS = 64
"""Outputs waiting for the consumer before the tasks that make them wait."""


def _hashable(key: Any) -> Any:
    # A codec may decode a tuple key as a list; a list key cannot be hashed.
    if isinstance(key, list):
        items: list[Any] = key  # pyright: ignore[reportUnknownVariableType]
        return tuple(items)
    return key


def _value(item: Any) -> Any:
    return item.value if is_envelope(item) else item


class _Keyed:
    """What `group_by` and `switch_map` share: the output queue, failure and shutdown."""

    def __init__(self, upstream: AsyncIterator[Any], label: str) -> None:
        self.upstream = upstream
        self.label = label
        self.new_signal = signal_maker()
        self.outputs: deque[Any] = deque()
        self.room: list[asyncio.Future[Any]] = []
        """The tasks waiting for room in ``outputs``."""
        self.consumer: asyncio.Future[Any] | None = None
        self.failure: BaseException | None = None
        self.done = False
        self.tasks: set[asyncio.Task[Any]] = set()

    def start(self, coroutine: Any) -> asyncio.Task[Any]:
        task = spawn(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def fail(self, error: BaseException) -> None:
        if self.failure is None:
            self.failure = error
        wake(self.consumer)

    def finish(self) -> None:
        self.done = True
        wake(self.consumer)

    async def wait_for_room(self) -> None:
        while len(self.outputs) >= _OUTPUTS:
            signal = self.new_signal()
            self.room.append(signal)
            await signal

    async def put(self, element: Any) -> None:
        if len(self.outputs) >= _OUTPUTS:
            await self.wait_for_room()
        self.outputs.append(element)
        wake(self.consumer)

    async def feed(self) -> None:
        """Read the upstream, start the work per key (in a task)."""
        raise NotImplementedError

    async def results(self) -> AsyncIterator[Any]:
        """Yield the outputs; stop every task and close the upstream however it ends."""
        self.start(self.feed())
        outputs = self.outputs
        reason: BaseException | None = None
        try:
            while True:
                if self.failure is not None:
                    raise self.failure
                if outputs:
                    element = outputs.popleft()
                    if self.room:
                        waiting, self.room = self.room, []
                        for signal in waiting:
                            wake(signal)
                    yield element
                    continue
                if self.done:
                    break
                signal = self.consumer = self.new_signal()
                try:
                    await signal
                finally:
                    self.consumer = None
        except BaseException as exc:
            reason = exc
            raise
        finally:
            await self._shutdown(reason)

    async def _shutdown(self, reason: BaseException | None) -> None:
        try:
            broken = await stop_all(list(self.tasks))
        finally:
            await aclose(self.upstream)
        failure = self.failure
        if failure is not None and failure is not reason:
            broken.insert(0, failure)
        if reason is not None and reason is failure:
            for error in broken:
                reason.add_note(f"streamkit: {self.label} also failed: {error!r}")
            return
        if not broken:
            return
        if reason is None or isinstance(reason, GeneratorExit):
            first, *others = broken
            for error in others:
                first.add_note(f"streamkit: {self.label} also failed: {error!r}")
            raise first
        for error in broken:
            reason.add_note(f"streamkit: {self.label} failed while being cancelled: {error!r}")


# --------------------------------------------------------------------------- group_by


@overload
def group_by(
    key: Callable[[T], Hashable],
    stage: Passthrough,
    /,
    *,
    concurrency: int = ...,
    idle: float | None = ...,
    max_keys: int | None = ...,
    name: str | None = ...,
) -> Stage[T, T]: ...
@overload
def group_by(
    key: Callable[[T], Hashable],
    stage: ListStage,
    /,
    *,
    concurrency: int = ...,
    idle: float | None = ...,
    max_keys: int | None = ...,
    name: str | None = ...,
) -> Stage[T, list[T]]: ...
@overload
def group_by(
    key: Callable[[T], Hashable],
    stage: IndexedStage,
    /,
    *,
    concurrency: int = ...,
    idle: float | None = ...,
    max_keys: int | None = ...,
    name: str | None = ...,
) -> Stage[T, tuple[int, T]]: ...
@overload
def group_by(
    key: Callable[[T], Hashable],
    stage: Stage[T, R],
    /,
    *,
    concurrency: int = ...,
    idle: float | None = ...,
    max_keys: int | None = ...,
    name: str | None = ...,
) -> Stage[T, R]: ...
def group_by(
    key: Callable[[Any], Hashable],
    stage: Stage[Any, Any],
    /,
    *,
    concurrency: int = 16,
    idle: float | None = None,
    max_keys: int | None = None,
    name: str | None = None,
) -> Stage[Any, Any]:
    """Run ``stage`` once per key, each key's items through its own sub-pipeline.

    The first item of a key opens a new run of ``stage`` for that key (its own
    state: a `scan` in it totals that key only); the key's items go through
    it in order, and its outputs are the stage's outputs, in order within a
    key, interleaved across keys as they come. A key is *closed* when it has
    seen no item for ``idle`` seconds, or when a new key would make more than
    ``max_keys`` open keys (the least recently fed one is closed): its
    sub-pipeline's input ends, so it flushes what it holds (a `chunk`'s last
    chunk); a later item of that key opens a new run. A sub-pipeline that
    ends early (`take`) drops its key's later items until the key is closed.

    At most ``concurrency`` keys have an item in their sub-pipeline at once: a
    key holds one of the ``concurrency`` permits from when its sub-pipeline
    takes an item until it asks for the next one; the items of the other keys
    wait in order. An error in a key's sub-pipeline fails the stage, with a
    note naming the key.

    Under a checkpoint every open key's sub-pipeline gets the barrier, which
    goes on once all of them have passed it; the snapshot holds, for every
    open key, the snapshots of its sub-pipeline's steps, so every step of
    ``stage`` must be able to take part in a checkpoint (a step that cannot
    is refused when the run starts, by its name), and keys must be values the
    run's codec encodes. Idle times count from the start of a resumed run.

    Args:
        key: Maps an item (its value, for `Envelope` items) to its key (sync, hashable).
        stage: The sub-pipeline each key runs.
        concurrency: Keys that may have an item in their sub-pipeline at once.
        idle: Close a key after this many seconds without an item (None: never).
        max_keys: Keep at most this many keys open (None: no limit).
        name: The stage's label in statistics, events, errors and the history.

    Examples:
        >>> import asyncio
        >>> from streamkit import collect, group_by, scan
        >>> def joined(seen: str, word: str) -> str:
        ...     return seen + word
        >>> words = ["a", "bb", "c", "dd", "e"]
        >>> sorted(asyncio.run(collect(words | group_by(len, scan(joined, "")))))
        ['a', 'ac', 'ace', 'bb', 'bbdd']
    """
    check_callable(key, "key")
    if not is_stage(stage):
        raise TypeError(f"stage must be a Stage, got {type(stage).__name__}: {stage!r}")
    check_count(concurrency, "concurrency", minimum=1)
    idle_seconds = None if idle is None else check_seconds(idle, "idle")
    if max_keys is not None:
        check_count(max_keys, "max_keys", minimum=1)
    label = stage_label(name, f"group_by({describe(key)}, {stage.label})")
    options = (concurrency, idle_seconds, max_keys)

    def run(upstream: AsyncIterator[Any]) -> AsyncIterator[Any]:
        grouping = _Grouping(upstream, key, stage, options, label, None)
        return grouping.results()

    def restorable(slot: Slot) -> RunFunction:
        slot.bind(stage, "stage")  # checks every step of the sub-pipeline now

        def checkpointed(upstream: AsyncIterator[Any]) -> AsyncIterator[Any]:
            grouping = _Grouping(upstream, key, stage, options, label, slot)
            return grouping.results()

        return checkpointed

    return transform_stage(label, run, restorable=restorable)


class _Permits:
    """At most ``n`` holders at once; waiters served in turn."""

    __slots__ = ("free", "new_signal", "waiters")

    def __init__(self, n: int, new_signal: Callable[[], asyncio.Future[Any]]) -> None:
        self.free = n
        self.new_signal = new_signal
        self.waiters: deque[asyncio.Future[Any]] = deque()

    async def acquire(self) -> None:
        if self.free > 0 and not self.waiters:
            self.free -= 1
            return
        signal = self.new_signal()
        self.waiters.append(signal)
        try:
            await signal
        except BaseException:
            if signal.done() and not signal.cancelled():
                self.release()  # granted as the waiter was cancelled: pass it on
            else:
                self.waiters.remove(signal)
            raise

    def release(self) -> None:
        waiters = self.waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.free += 1


class _Group:
    """One open key: its sub-pipeline's input, its task, where it is in a checkpoint."""

    __slots__ = (
        "closed",
        "dirty",
        "ended",
        "holding",
        "inbox",
        "key",
        "last",
        "owes",
        "previous",
        "reused",
        "signal",
        "snapshots",
        "stopped",
        "task",
    )

    def __init__(self, key: Any, last: float) -> None:
        self.key = key
        self.inbox: deque[Any] = deque()
        self.signal: asyncio.Future[Any] | None = None
        self.closed = False
        """Its input ends once the inbox is empty."""
        self.ended = False
        """Its sub-pipeline has ended."""
        self.stopped = False
        """Its sub-pipeline ended before its input did (its later items are dropped)."""
        self.holding = False
        self.last = last
        self.owes = False
        """A barrier went into its inbox and has not come out of its sub-pipeline yet."""
        self.previous: asyncio.Task[Any] | None = None
        """The task of the key's closed run, still flushing: this one waits for it."""
        self.snapshots: dict[str, Any] = {}
        """Its sub-pipeline's snapshots at the last barrier (or as restored)."""
        self.dirty = True
        """It has taken or yielded something since ``snapshots`` was taken."""
        self.reused = False
        """The barrier being aligned keeps ``snapshots`` without going through it."""
        self.task: asyncio.Task[Any] | None = None


class _Grouping(_Keyed):
    """One run of `group_by`."""

    def __init__(
        self,
        upstream: AsyncIterator[Any],
        key: Callable[[Any], Any],
        stage: Stage[Any, Any],
        options: tuple[int, float | None, int | None],
        label: str,
        slot: Slot | None,
    ) -> None:
        super().__init__(upstream, label)
        self.key = key
        self.stage = stage
        concurrency, self.idle, self.max_keys = options
        self.permits = _Permits(concurrency, self.new_signal)
        self.limit = 4 * concurrency
        """Items handed to keys and not yet taken, before the feeder waits."""
        self.pending = 0
        self.feeder_room: asyncio.Future[Any] | None = None
        self.slot = slot
        self.groups: OrderedDict[Any, _Group] = OrderedDict()
        """The open keys, least recently fed first."""
        self.closing: set[_Group] = set()
        self.flushing: dict[Any, asyncio.Task[Any]] = {}
        """The task of each key's latest closed run, until it has flushed."""
        self.clock: Clock = current_clock()
        self.owed = 0
        self.aligned: asyncio.Future[Any] | None = None
        self.aligning = False
        self.released: list[asyncio.Future[Any]] = []
        """The keys' tasks waiting for the barrier being aligned to go out."""
        self.reaper: asyncio.Future[Any] | None = None

    # -- keys ----------------------------------------------------------------

    def now(self) -> float:
        return self.clock.now() if self.idle is not None else 0.0

    def taken(self, n: int) -> None:
        """``n`` items handed to keys have left their inboxes."""
        self.pending -= n
        room = self.feeder_room
        if room is not None:
            self.feeder_room = None
            wake(room)

    def open(self, key: Any, restored: dict[str, Any] | None = None) -> _Group:
        max_keys = self.max_keys
        groups = self.groups
        if max_keys is not None and len(groups) >= max_keys:
            _, oldest = groups.popitem(last=False)
            self.close(oldest)
        group = groups[key] = _Group(key, self.now())
        group.previous = self.flushing.get(key)
        slot = self.slot
        if slot is None:
            flow = self.stage(self.inbox(group))
        else:
            bound = slot.instance({} if restored is None else restored).bind(self.stage, "stage")
            flow = bound(self.inbox(group))
        group.task = self.start(self.drive(group, flow))
        wake(self.reaper)
        return group

    def close(self, group: _Group) -> None:
        group.closed = True
        if not group.ended:
            self.closing.add(group)
            if group.task is not None:
                self.flushing[group.key] = group.task
            wake(group.signal)

    async def inbox(self, group: _Group) -> AsyncIterator[Any]:
        """A key's sub-pipeline's input: its items, each taken with a permit."""
        permits = self.permits
        inbox = group.inbox
        try:
            while True:
                if group.holding:
                    group.holding = False
                    if permits.waiters:
                        permits.release()
                    else:
                        permits.free += 1
                while not inbox:
                    if group.closed:
                        return
                    signal = group.signal = self.new_signal()
                    try:
                        await signal
                    finally:
                        group.signal = None
                element = inbox.popleft()
                if type(element) is not CONTROL:
                    self.pending -= 1
                    if self.feeder_room is not None:
                        self.taken(0)
                    if permits.free > 0 and not permits.waiters:
                        permits.free -= 1
                    else:
                        await permits.acquire()
                    group.holding = True
                yield element
        finally:
            if group.holding:
                group.holding = False
                permits.release()

    async def drive(self, group: _Group, flow: Any) -> None:
        """Run a key's sub-pipeline, its outputs into the queue."""
        try:
            if group.previous is not None:
                await wait_for_signal(group.previous)
                group.previous = None
            async for element in flow:
                if type(element) is CONTROL and element.kind == "barrier":
                    group.snapshots = element.snapshots
                    group.dirty = False
                    self.passed(group)
                    if self.aligning:  # wait until the run's barrier is out
                        await self.until_released()
                    continue
                if group.reused and self.aligning:
                    # Its last snapshot goes in the barrier: what it yields now goes after.
                    await self.until_released()
                group.dirty = True
                await self.put(element)
            group.stopped = not group.closed
        except Exception as exc:
            exc.add_note(
                f"streamkit: raised by the sub-pipeline of key {group.key!r} of {self.label}"
            )
            self.fail(exc)
        finally:
            group.ended = True
            left = sum(1 for element in group.inbox if type(element) is not CONTROL)
            group.inbox.clear()
            self.taken(left)
            self.closing.discard(group)
            if self.flushing.get(group.key) is group.task:
                del self.flushing[group.key]
            self.passed(group)
            try:
                await aclose(flow)
            except Exception as exc:
                self.fail(exc)

    async def until_released(self) -> None:
        signal = self.new_signal()
        self.released.append(signal)
        await signal

    def passed(self, group: _Group) -> None:
        if group.owes:
            group.owes = False
            self.owed -= 1
            if self.owed == 0:
                wake(self.aligned)

    # -- the feeder ------------------------------------------------------------

    async def feed(self) -> None:
        try:
            await self._feed()
        except Exception as exc:
            self.fail(exc)

    async def _feed(self) -> None:
        slot = self.slot
        if slot is not None:
            saved: list[list[Any]] = slot.restore([])
            for k, snapshots in saved:
                if snapshots is None:  # its sub-pipeline had ended
                    stopped = self.groups[_hashable(k)] = _Group(_hashable(k), self.now())
                    stopped.ended = stopped.stopped = True
                else:
                    restored = self.open(_hashable(k), snapshots)
                    restored.snapshots = snapshots
                    restored.dirty = False
        if self.idle is not None:
            self.reaper = self.new_signal()
            self.start(self.reap())
        key = self.key
        groups = self.groups
        idle = self.idle
        clock = self.clock
        limit = self.limit
        index = -1
        async for item in self.upstream:
            if type(item) is CONTROL:
                if item.kind == "barrier" and slot is not None:
                    await self.align(item, slot)
                else:
                    await self.put(item)
                continue
            index += 1
            try:
                k = key(item.value if isinstance(item, ENVELOPE) else item)
                found = groups.get(k)
            except Exception as exc:
                annotate(exc, self.label, index)
                raise
            if found is None:
                group = self.open(k)
            else:
                group = found
                groups.move_to_end(k)
            if idle is not None:
                group.last = clock.now()
            if group.ended:  # its sub-pipeline has ended: it takes nothing more
                continue
            group.inbox.append(item)
            group.dirty = True
            self.pending += 1
            signal = group.signal
            if signal is not None and not signal.done():
                signal.set_result(None)
            while self.pending >= limit:
                room = self.feeder_room = self.new_signal()
                await room
        for group in list(groups.values()):
            self.close(group)
        waiting = [group.task for group in [*groups.values(), *self.closing] if group.task]
        for task in waiting:
            await wait_for_signal(task)
        self.finish()

    async def align(self, barrier: Control, slot: Slot) -> None:
        """Send the barrier through every open key; forward it once all have passed it."""
        self.aligning = True
        self.aligned = self.new_signal()
        # The keys open now, in their order (least recently fed first), are the
        # snapshot's keys, even if one of them is closed (idle) meanwhile.
        keys = list(self.groups.values())
        for group in keys:
            if group.ended:
                continue
            if not group.dirty:  # nothing in or out since its last snapshot: that one holds
                group.reused = True
            else:
                group.owes = True
                self.owed += 1
                group.inbox.append(Control("barrier", barrier.sequence))
                wake(group.signal)
        closing = [group.task for group in self.closing if group.task is not None]
        if self.owed:
            await self.aligned
        for task in closing:  # keys closed before the barrier flush everything first
            await wait_for_signal(task)
        saved = [[group.key, None if group.stopped else group.snapshots] for group in keys]
        slot.save(barrier, saved)
        await self.put(barrier)
        for group in keys:
            group.reused = False
        self.aligning = False
        released, self.released = self.released, []
        for signal in released:
            wake(signal)

    async def reap(self) -> None:
        """Close the keys that have been idle for ``idle`` seconds."""
        idle = self.idle
        assert idle is not None
        clock = self.clock
        groups = self.groups
        while True:
            if not groups:
                signal = self.reaper = self.new_signal()
                await signal
                continue
            now = clock.now()
            while groups:
                oldest = next(iter(groups.values()))
                if oldest.last + idle > now:
                    break
                del groups[oldest.key]
                self.close(oldest)
            if groups:
                oldest = next(iter(groups.values()))
                await clock.sleep(oldest.last + idle - now)


# --------------------------------------------------------------------------- switch_map


def switch_map(
    key: Callable[[T], Hashable],
    fn: Callable[[T], AsyncIterable[R]],
    /,
    *,
    name: str | None = None,
) -> Stage[T, R]:
    """Stream ``fn(item)`` for each item; a new item of a key cancels that key's stream.

    Each item opens the inner stream ``fn(item)``; its elements are yielded
    as they come. A new item of the same key first closes the key's inner
    stream still running (the elements it has not handed over yet are never
    yielded): only the latest item of a key is streamed. Inner streams of
    different keys run concurrently; their elements interleave as they come.
    When the input ends, the stage ends after every inner stream has. However
    the stage stops (a `break`, an error, a cancellation), every inner stream
    is closed. An error in an inner stream fails the stage, with a note
    naming the key. On `Envelope` items, ``key`` and ``fn`` receive the value
    and each element keeps the item's state.

    Under a checkpoint the inner streams in flight are saved as their items
    and how many elements each has handed over (keys and items must be values
    the run's codec encodes); a resumed run calls ``fn`` on those items again
    and skips the elements already handed over, so ``fn`` must give the same
    elements for the same item.

    Args:
        key: Maps an item to its key (sync, hashable).
        fn: Makes an item's inner stream (an async iterable, or an iterable).
        name: The stage's label in statistics, events, errors and the history.

    Examples:
        >>> import asyncio
        >>> from streamkit import collect, switch_map
        >>> async def countdown(n: int):
        ...     for k in range(n, 0, -1):
        ...         yield k
        >>> asyncio.run(collect([3, 2] | switch_map(lambda n: n, countdown)))
        [3, 2, 1, 2, 1]
    """
    check_callable(key, "key")
    check_callable(fn, "fn")
    label = stage_label(name, f"switch_map({describe(key)}, {describe(fn)})")

    def run(upstream: AsyncIterator[Any]) -> AsyncIterator[Any]:
        switching = _Switching(upstream, key, fn, label, None)
        return switching.results()

    def restorable(slot: Slot) -> RunFunction:
        def checkpointed(upstream: AsyncIterator[Any]) -> AsyncIterator[Any]:
            switching = _Switching(upstream, key, fn, label, slot)
            return switching.results()

        return checkpointed

    built: Stage[Any, Any] = transform_stage(label, run, restorable=restorable)
    return built


class _InnerStream:
    __slots__ = ("handed", "item", "key", "task")

    def __init__(self, key: Any, item: Any) -> None:
        self.key = key
        self.item = item
        self.handed = 0
        """Elements put in the output queue."""
        self.task: asyncio.Task[Any] | None = None


class _Switching(_Keyed):
    """One run of `switch_map`."""

    def __init__(
        self,
        upstream: AsyncIterator[Any],
        key: Callable[[Any], Any],
        fn: Callable[[Any], Any],
        label: str,
        slot: Slot | None,
    ) -> None:
        super().__init__(upstream, label)
        self.key = key
        self.fn = fn
        self.slot = slot
        self.inners: dict[Any, _InnerStream] = {}

    def open(self, key: Any, item: Any, skip: int) -> None:
        inner = self.inners[key] = _InnerStream(key, item)
        inner.task = self.start(self.stream(inner, skip))

    async def stream(self, inner: _InnerStream, skip: int) -> None:
        item = inner.item
        enveloped = is_envelope(item)
        elements: Any = None
        try:
            made = self.fn(item.value if enveloped else item)
            try:
                elements = open_async(made)
            except TypeError as exc:
                raise TypeError(
                    f"fn must return an iterable or an async iterable, got {type(made).__name__}"
                ) from exc
            seen = 0
            async for element in elements:
                seen += 1
                if seen <= skip:
                    continue
                if len(self.outputs) >= _OUTPUTS:
                    await self.wait_for_room()
                self.outputs.append(Envelope(element, item.state) if enveloped else element)
                inner.handed = seen
                wake(self.consumer)
        except Exception as exc:
            exc.add_note(
                f"streamkit: raised by the inner stream of key {inner.key!r} of {self.label}"
            )
            self.fail(exc)
        finally:
            if self.inners.get(inner.key) is inner:
                del self.inners[inner.key]
            if elements is not None:
                try:
                    await aclose(elements)
                except Exception as exc:
                    self.fail(exc)

    async def feed(self) -> None:
        try:
            await self._feed()
        except Exception as exc:
            self.fail(exc)

    async def _feed(self) -> None:
        slot = self.slot
        if slot is not None:
            saved: list[list[Any]] = slot.restore([])
            for k, item, handed in saved:
                self.open(_hashable(k), item, handed)
        key = self.key
        inners = self.inners
        index = -1
        async for item in self.upstream:
            if type(item) is CONTROL:
                if item.kind == "barrier" and slot is not None:
                    await self.wait_for_room()
                    # No await from here to the barrier's place in the queue: every
                    # element counted in the snapshot is before it, every other after.
                    saved = [[k, inner.item, inner.handed] for k, inner in inners.items()]
                    slot.save(item, saved)
                    self.outputs.append(item)
                    wake(self.consumer)
                else:
                    await self.put(item)
                continue
            index += 1
            try:
                k = key(_value(item))
                previous = inners.pop(k, None)
            except Exception as exc:
                annotate(exc, self.label, index)
                raise
            if previous is not None and previous.task is not None:
                previous.task.cancel()
                await wait_for_signal(previous.task)
            self.open(k, item, 0)
        while inners:
            task = next(iter(inners.values())).task
            assert task is not None
            await wait_for_signal(task)
        self.finish()
