"""`BatchPipeline`: the batch model (whole steps, accumulated state), and the way out of it.

A batch job runs its steps one after another over the whole input; each step
gets the previous step's output and the state accumulated so far, and its own
result is stored under its key. `BatchPipeline.to_stream` runs the same steps
as a stream (per-item steps per item, whole-batch steps as materialisation
points) and `BatchPipeline.from_stream` turns a stage into a batch step, so a
job can move to streaming one step at a time (docs/state.md).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, cast

from ._aggregate import collect
from ._core import (
    Source,
    Stage,
    aclose,
    annotate,
    check_bool,
    check_callable,
    describe,
    is_stage,
    open_async,
    transform_stage,
)
from ._records import Envelope, Key, State, StateLimits, key_name

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

INPUT: Final = Key[Any]("input")
"""The key of a batch run's input (the list of input items)."""


@dataclass(frozen=True, slots=True)
class _Step:
    name: str
    fn: Callable[..., Any]
    per_item: bool
    label: str


async def _call(fn: Callable[..., Any], *args: Any) -> Any:
    result = fn(*args)
    if inspect.isawaitable(result):
        result = await result
    return result


def _as_items(data: Any) -> list[Any] | tuple[Any, ...]:
    """A whole-batch result as items: a list or tuple is the items, anything else one item."""
    if isinstance(data, list | tuple):
        return cast("list[object] | tuple[object, ...]", data)
    return [data]


class BatchPipeline:
    """A batch job: named steps that each see the whole data and the state so far.

    ``add(key, step)`` returns a new pipeline (pipelines are immutable). When
    the pipeline runs, every step is called in turn as ``step(data, state)``
    (sync or async): ``data`` is the previous step's result (the input items,
    as a list, for the first step) and ``state`` a read-only `State` of the
    input (under ``"input"``) and of every earlier result, by key. The
    step's result is stored under its key and becomes the next step's data.
    ``await pipeline.run(items)`` returns the final state.

    A step added with ``per_item=True`` is called once per item as
    ``step(item, state)``; its results, as a list, are stored under its key
    and become the data. Its ``state`` is that of the whole batch, except
    that the keys of the per-item steps since the last whole-batch step (and
    ``"input"`` before the first one) hold *this item's* value, so the step
    reads the same thing in `to_stream`. A whole-batch result that is not a
    list or tuple is one item for the per-item steps after it.

    States of batch pipelines hold whole lists: they have no limits unless
    you pass some.

    Args:
        limits: The `StateLimits` of the states (none by default).

    Examples:
        >>> import asyncio
        >>> job = (
        ...     BatchPipeline()
        ...     .add("words", lambda lines, state: " ".join(lines).split())
        ...     .add("upper", lambda word, state: word.upper(), per_item=True)
        ...     .add("count", lambda words, state: len(words))
        ... )
        >>> state = asyncio.run(job.run(["to be or not"]))
        >>> state["upper"], state["count"]
        (['TO', 'BE', 'OR', 'NOT'], 4)
    """

    __slots__ = ("_limits", "_steps")

    def __init__(self, *, limits: StateLimits = StateLimits.UNLIMITED) -> None:
        if not isinstance(limits, StateLimits):  # pyright: ignore[reportUnnecessaryIsInstance] - untyped callers
            raise TypeError(f"limits must be a StateLimits, got {type(limits).__name__}")
        self._limits = limits
        self._steps: tuple[_Step, ...] = ()

    def __repr__(self) -> str:
        steps = ", ".join(
            f"{step.name}{' (per item)' if step.per_item else ''}" for step in self._steps
        )
        return f"<BatchPipeline [{steps}]>"

    @property
    def keys(self) -> tuple[str, ...]:
        """The keys of the steps, in order."""
        return tuple(step.name for step in self._steps)

    def add(
        self,
        key: Key[Any] | str,
        step: Callable[[Any, State], Any],
        /,
        *,
        per_item: bool = False,
    ) -> BatchPipeline:
        """A new pipeline with ``step`` added at the end, its result stored under ``key``.

        Args:
            key: The `Key` (or string key) of the step's result.
            step: ``step(data, state)``, or ``step(item, state)`` with
                ``per_item=True``; sync or async.
            per_item: Call the step once per item instead of once per batch.

        Raises:
            ValueError: ``key`` is ``"input"`` or already used by a step.
        """
        name = key_name(key)
        check_callable(step, "step")
        check_bool(per_item, "per_item")
        if name == INPUT.qualified:
            raise ValueError(f"key {name!r} is reserved for the batch's input")
        if name in self.keys:
            raise ValueError(f"key {name!r} is already used by a step of this pipeline")
        kind = "per_item" if per_item else "batch"
        new = BatchPipeline(limits=self._limits)
        new._steps = (*self._steps, _Step(name, step, per_item, f"{kind} step {name!r}"))
        return new

    async def run(self, items: Source[Any], /) -> State:
        """Run every step over the whole input; return the final state.

        Args:
            items: The input items (an iterable or async iterable).
        """
        iterator = open_async(items)
        try:
            data: Any = [item async for item in iterator]
        finally:
            await aclose(iterator)
        state = State(limits=self._limits).set(INPUT, data)
        segment = [INPUT.qualified]  # keys whose values are aligned with the current items
        for step in self._steps:
            if step.per_item:
                results: list[Any] = []
                for index, item in enumerate(_as_items(data)):
                    view = state.set_many({key: state[key][index] for key in segment})
                    try:
                        results.append(await _call(step.fn, item, view))
                    except Exception as exc:
                        annotate(exc, step.label, index)
                        raise
                data = results
                segment.append(step.name)
            else:
                try:
                    data = await _call(step.fn, data, state)
                except Exception as exc:
                    exc.add_note(f"streamkit: raised by the {step.label} of a BatchPipeline")
                    raise
                segment = []
            state = state.set(step.name, data)
        return state

    def to_stream(self) -> Stage[Any, Envelope[Any]]:
        """The same steps as a stage over the input items.

        Each input item becomes an envelope with ``"input"`` set to the item.
        A per-item step maps each envelope's value and sets its key in the
        item's state. A whole-batch step is a materialisation point: it
        collects every item (the whole input of that step is in memory, as in
        the batch), calls ``step(values, state)`` with the state the batch
        would pass (per-item keys of the current segment as lists), and
        emits the items of its result (a list or tuple; anything else is one
        item), each with the result under its key. Right after another
        whole-batch step, a whole-batch step gets that step's result itself,
        as in the batch. Items therefore carry what a batch run would let
        the next step read.

        Examples:
            >>> import asyncio
            >>> from streamkit import collect
            >>> job = BatchPipeline().add("double", lambda x, state: 2 * x, per_item=True)
            >>> items = asyncio.run(collect([1, 2] | job.to_stream()))
            >>> print([(item.value, item.state["input"], item.state["double"]) for item in items])
            [(2, 1, 2), (4, 2, 4)]
        """
        steps = self._steps
        limits = self._limits
        label = f"BatchPipeline.to_stream({', '.join(self.keys)})"

        def run(upstream: AsyncIterator[Any]) -> AsyncIterator[Any]:
            run_state = _RunState(State(limits=limits))
            iterator: AsyncIterator[Any] = _start(upstream, run_state)
            segment = [INPUT.qualified]
            after_whole = False
            for step in steps:
                if step.per_item:
                    iterator = _per_item(iterator, step)
                    segment.append(step.name)
                else:
                    iterator = _whole(iterator, step, run_state, tuple(segment), after_whole)
                    segment = []
                after_whole = not step.per_item
            return iterator

        return transform_stage(label, run)

    @staticmethod
    def from_stream(
        stage: Stage[Any, Any], /, *, with_state: bool = False
    ) -> Callable[[Any, State], Awaitable[list[Any]]]:
        """A whole-batch step that runs ``stage`` over the data's items.

        The step returns the stage's output as a list (envelopes are
        unwrapped). By default the stage gets the plain items; with
        ``with_state=True`` it gets envelopes carrying the batch's state.

        Args:
            stage: The stage to run.
            with_state: Feed envelopes with the batch state instead of plain items.

        Examples:
            >>> import asyncio
            >>> from streamkit import map_
            >>> job = BatchPipeline().add("lengths", BatchPipeline.from_stream(map_(len)))
            >>> print(asyncio.run(job.run(["a", "bcd"])).get("lengths"))
            [1, 3]
        """
        if not is_stage(stage):
            raise TypeError(f"stage must be a Stage, got {type(stage).__name__}: {stage!r}")
        check_bool(with_state, "with_state")

        async def step(data: Any, state: State) -> list[Any]:
            items = _as_items(data)
            source = [Envelope(item, state) for item in items] if with_state else items
            out = await collect(source | stage)
            return [_value(item) for item in out]

        step.__qualname__ = f"from_stream({describe(stage.label)})"
        return step


def _value(item: object) -> object:
    if isinstance(item, Envelope):
        return cast("Envelope[object]", item).value
    return item


class _RunState:
    """The whole-batch state of one `to_stream` run (results of whole-batch steps)."""

    __slots__ = ("last", "whole")

    def __init__(self, whole: State) -> None:
        self.whole = whole
        self.last = INPUT.qualified
        """The key of the last whole-batch result."""


async def _start(upstream: AsyncIterator[Any], run: _RunState) -> AsyncIterator[Envelope[Any]]:
    try:
        async for item in upstream:
            yield Envelope(item, run.whole.set(INPUT, item))
    finally:
        await aclose(upstream)


async def _per_item(upstream: AsyncIterator[Envelope[Any]], step: _Step) -> AsyncIterator[Any]:
    index = -1
    try:
        async for envelope in upstream:
            index += 1
            try:
                result = await _call(step.fn, envelope.value, envelope.state)
            except Exception as exc:
                annotate(exc, step.label, index)
                raise
            yield Envelope(result, envelope.state.set(step.name, result))
    finally:
        await aclose(upstream)


async def _whole(
    upstream: AsyncIterator[Envelope[Any]],
    step: _Step,
    run: _RunState,
    segment: tuple[str, ...],
    after_whole: bool,
) -> AsyncIterator[Envelope[Any]]:
    try:
        envelopes = [envelope async for envelope in upstream]
    finally:
        await aclose(upstream)
    whole = run.whole.set_many(
        {key: [envelope.state[key] for envelope in envelopes] for key in segment}
    )
    # Right after another whole-batch step the items are that step's result,
    # unchanged: pass the result itself, as the batch does (a tuple stays a
    # tuple, a single value is not a list of one).
    data = run.whole[run.last] if after_whole else [envelope.value for envelope in envelopes]
    try:
        result = await _call(step.fn, data, whole)
    except Exception as exc:
        exc.add_note(f"streamkit: raised by the {step.label} of a BatchPipeline")
        raise
    whole = run.whole = whole.set(step.name, result)
    run.last = step.name
    for item in _as_items(result):
        yield Envelope(item, whole)
