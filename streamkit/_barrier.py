"""Checkpoint barriers and operator snapshots: the in-band protocol of checkpointed runs.

A checkpointed `streamkit.Run` sends *control elements* through the pipeline
along with the items (the asynchronous barrier snapshotting of Flink, after
Chandy and Lamport):

* a **barrier** goes in after every ``every`` source items. Each step
  forwards it once everything it owes for the items before it has been
  emitted; a step that keeps state records a snapshot of that state in the
  barrier as it passes; a step with several inputs forwards it once it has
  come from all of them. When the barrier comes out of the pipeline, every
  output of the items before it has been handed to the consumer: the run
  saves the barrier's source position and snapshots as one checkpoint.
* a **write** is something to commit in the transaction of the next
  checkpoint: a dead-lettered item, rows for a sink. It travels in order
  with the items, so it is committed with the first checkpoint after the
  item it came from, and never twice.

Between barriers nothing is tracked per item: a step checks each element for
``type(element) is Control``, once. Without a checkpoint no control element
is ever sent, and steps behave as they always did.

A step that keeps state gets a `Slot` when the run starts: its key in the
checkpoint, the snapshot to restore (if the run resumes), and `Slot.save`
to record a snapshot in a passing barrier. Custom stages take part through
the `Stateful` protocol (see `streamkit.stage`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import (
    TYPE_CHECKING,
    Any,
    Final,
    Literal,
    Protocol,
    TypeAlias,
    TypeVar,
    runtime_checkable,
)

if TYPE_CHECKING:
    from ._core import Stage

T = TypeVar("T")

RunFunction: TypeAlias = Callable[[AsyncIterator[Any]], AsyncIterator[Any]]
"""What runs a whole-stream step: its upstream in, its output out."""

ControlKind: TypeAlias = Literal["barrier", "write"]


class Control:
    """An in-band element of a checkpointed run that is never an item.

    Steps forward control elements in the order they arrive, relative to one
    another; a barrier waits until what the step owes for earlier items has
    been emitted. Only streamkit makes them.
    """

    __slots__ = ("counts", "kind", "positions", "sequence", "snapshots", "write")

    def __init__(self, kind: ControlKind, sequence: int = 0, write: object = None) -> None:
        self.kind: ControlKind = kind
        self.sequence = sequence
        """The checkpoint's number (barriers)."""
        self.snapshots: dict[str, Any] = {}
        """The snapshot of every stateful step it passed, by step key (barriers)."""
        self.positions: dict[str, Any] = {}
        """The position of every source it came from, by source key (barriers)."""
        self.counts: dict[str, int] = {}
        """How many items every source it came from had sent before it (barriers)."""
        self.write = write
        """What to commit with the next checkpoint (writes)."""

    def __repr__(self) -> str:
        if self.kind == "barrier":
            return f"<barrier {self.sequence}>"
        return f"<write {self.write!r}>"


CONTROL: Final[type[Any]] = Control
"""`Control`, typed so that ``type(item) is CONTROL`` leaves an ``Any`` item ``Any``."""


def is_barrier(element: object) -> bool:
    """True for a barrier."""
    return type(element) is Control and element.kind == "barrier"


@runtime_checkable
class Stateful(Protocol):
    """State a checkpoint can save and restore: the protocol of custom stateful stages.

    ``snapshot()`` returns the state as a value the run's codec can encode
    (JSON types, dataclasses, datetimes, decimals, bytes, ...); it is called
    between two items, when a checkpoint barrier passes. ``restore(snapshot)``
    gets that value back, decoded, before the first item of a resumed run.

    Examples:
        >>> class Count:
        ...     def __init__(self) -> None:
        ...         self.n = 0
        ...     def snapshot(self) -> int:
        ...         return self.n
        ...     def restore(self, snapshot: int) -> None:
        ...         self.n = snapshot
        >>> isinstance(Count(), Stateful)
        True
    """

    def snapshot(self) -> Any:
        """The state, as a value the run's codec encodes."""
        ...

    def restore(self, snapshot: Any) -> None:
        """Take back a state that `snapshot` returned (decoded)."""
        ...


@dataclass(frozen=True, slots=True)
class DeadLetterWrite:
    """The write of a dead-lettered item: committed with the next checkpoint."""

    stage: str
    """The key of the step that gave up on the item."""
    index: int
    """The item's index in that step's input (counted from the start of this attempt)."""
    record: Any
    """The error record as JSON (item and state through the run's codec)."""


class Encoder(Protocol):
    """What a slot needs from the run's codec."""

    def encode(self, value: Any, /) -> Any:
        """``value`` as JSON."""
        ...

    def decode(self, data: Any, /) -> Any:
        """A value back from `encode`'s JSON."""
        ...


Binder: TypeAlias = "Callable[[Stage[Any, Any], Slot], Stage[Any, Any]]"
"""How a checkpointed run prepares a sub-pipeline (a branch of `fork`) under a slot."""

_NOTHING: Final = object()


class SnapshotError(TypeError):
    """A step's state cannot be saved with the run's codec (raised at the checkpoint)."""


class Slot:
    """One step's place in a checkpointed run: its key, its restored state, its saves.

    ``key`` names the step in the checkpoint (``"3"``: the fourth step;
    ``"5/left/0"``: the first step of branch ``left`` of the sixth step).
    """

    __slots__ = ("_attached", "_binder", "_codec", "_restored", "key", "label")

    def __init__(
        self,
        key: str,
        label: str,
        restored: dict[str, Any],
        codec: Encoder,
        binder: Binder,
    ) -> None:
        self.key = key
        self.label = label
        self._restored = restored
        self._codec = codec
        self._binder = binder
        self._attached: Stateful | None = None

    def __repr__(self) -> str:
        return f"<Slot {self.key} {self.label}>"

    @property
    def resumed(self) -> bool:
        """Whether the run restores a snapshot of this step."""
        return self.key in self._restored

    def restore(self, default: T) -> T:
        """The step's restored state (decoded), or ``default`` when the run starts afresh."""
        data = self._restored.get(self.key, _NOTHING)
        if data is _NOTHING:
            return default
        try:
            value: T = self._codec.decode(data)
        except Exception as exc:
            raise SnapshotError(
                f"checkpoint: the saved state of {self.label} (step {self.key}) cannot be "
                f"decoded: {exc}"
            ) from exc
        return value

    def save(self, barrier: Control, state: object) -> None:
        """Record ``state`` as this step's snapshot in ``barrier`` (encoded now)."""
        try:
            barrier.snapshots[self.key] = self._codec.encode(state)
        except Exception as exc:
            raise SnapshotError(
                f"checkpoint: the state of {self.label} (step {self.key}) cannot be saved "
                f"with the run's codec: {exc}"
            ) from exc

    def attach(self, state: Stateful) -> None:
        """Keep ``state`` for `capture`, restoring it first when the run resumes."""
        self._attached = state
        if self.resumed:
            state.restore(self.restore(None))

    def capture(self, barrier: Control) -> None:
        """Save the attached state's snapshot in ``barrier`` (nothing attached: nothing)."""
        state = self._attached
        if state is not None:
            self.save(barrier, state.snapshot())

    def child(self, name: str, label: str) -> Slot:
        """The slot of a part of this step (a branch, an inner step)."""
        return Slot(f"{self.key}/{name}", label, self._restored, self._codec, self._binder)

    def instance(self, restored: dict[str, Any]) -> Slot:
        """This slot for one of several instances of the step's parts (a key of `group_by`).

        The instance's steps restore from ``restored`` (step key to saved state,
        as `save` records them) instead of the run's checkpoint.
        """
        return Slot(self.key, self.label, restored, self._codec, self._binder)

    @property
    def snapshots(self) -> dict[str, Any]:
        """What this slot and the slots of its parts restore from, by step key."""
        return self._restored

    def bind(self, stage: Stage[Any, Any], name: str) -> Stage[Any, Any]:
        """``stage`` prepared for this run, its steps keyed under ``<key>/<name>``."""
        return self._binder(stage, self.child(name, stage.label))

    def encode(self, value: object, where: str) -> Any:
        """``value`` through the run's codec (for writes); the error names ``where``."""
        try:
            return self._codec.encode(value)
        except Exception as exc:
            raise SnapshotError(
                f"checkpoint: {where} of {self.label} (step {self.key}) cannot be encoded "
                f"with the run's codec: {exc}"
            ) from exc
