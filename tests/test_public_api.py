"""The public surface, pinned: a change to it is a deliberate, reviewed change."""

from __future__ import annotations

import importlib

import pytest

import streamkit
import streamkit.testing
import streamkit.typing

PUBLIC = [
    "BRANCH",
    "Backoff",
    "BackoffPolicy",
    "BatchPipeline",
    "Broker",
    "Checkpoint",
    "CheckpointError",
    "Clock",
    "Codec",
    "CodecError",
    "ConstantBackoff",
    "DEFAULT_CODEC",
    "Dashboard",
    "DeadLetterRecord",
    "DeadLetterRow",
    "DeadLetters",
    "Envelope",
    "ErrorRecord",
    "ErrorReport",
    "ExceptionInfo",
    "ExponentialBackoff",
    "Factory",
    "FailureStatistics",
    "Flow",
    "HookError",
    "Hooks",
    "Hopping",
    "Key",
    "Late",
    "LateItemError",
    "MemoryStore",
    "OnError",
    "PartitionSource",
    "Partitioned",
    "Partitions",
    "PostgresStore",
    "QuantileSketch",
    "Resumable",
    "RetryEvent",
    "Run",
    "RunStatistics",
    "RunStatus",
    "SQLValue",
    "SQLiteStore",
    "Scope",
    "Session",
    "Sink",
    "Sliding",
    "SnapshotError",
    "Source",
    "Stage",
    "StageStatistics",
    "StageStatus",
    "StaleCheckpointError",
    "State",
    "StateLimitError",
    "StateLimits",
    "StateUpdate",
    "Stateful",
    "Store",
    "TableRows",
    "TableSink",
    "Tumbling",
    "TypedCodec",
    "UnhandledFailure",
    "Window",
    "WindowKind",
    "Write",
    "attempts_key",
    "branch",
    "broadcast",
    "buffer",
    "chunk",
    "chunk_until",
    "collect",
    "concat",
    "config_hash",
    "constant",
    "count",
    "current_clock",
    "debounce",
    "decode_state",
    "distinct",
    "drain",
    "empty",
    "encode_state",
    "enumerate_",
    "envelop",
    "error_report",
    "exponential",
    "failures",
    "filter_",
    "first",
    "flat_map",
    "flatten",
    "fold",
    "fork",
    "group_by",
    "iterate",
    "last",
    "lines",
    "map_",
    "merge",
    "pairwise",
    "pipe",
    "reduce_point",
    "render",
    "repeat",
    "resumable",
    "scan",
    "scan_by",
    "scan_state",
    "scan_state_by",
    "set_state",
    "skip",
    "skip_while",
    "spaced",
    "stage",
    "successes",
    "switch_map",
    "take",
    "take_while",
    "tap",
    "tee",
    "throttle",
    "throttle_by",
    "timeout",
    "to_prometheus",
    "unwrap",
    "use_clock",
    "window",
    "windowed",
    "with_retry",
    "write_report",
    "write_to",
    "zip_",
]

TESTING = [
    "SourceError",
    "StageCheckError",
    "TrackedSource",
    "VirtualClock",
    "assert_no_pending_tasks",
    "check_flow",
    "check_stage",
    "current_clock",
    "use_clock",
    "virtual_clock",
]

TYPING = [
    "EnvelopStage",
    "FailureStage",
    "FlattenStage",
    "IndexedStage",
    "ListStage",
    "PairStage",
    "Passthrough",
    "StateStage",
    "SuccessStage",
    "TupleStage",
    "UnwrapStage",
]

BUILTINS = {"map", "filter", "zip", "enumerate"}


def test_all_is_pinned() -> None:
    assert sorted(streamkit.__all__) == PUBLIC


def test_testing_all_is_pinned() -> None:
    assert sorted(streamkit.testing.__all__) == TESTING


def test_typing_all_is_pinned() -> None:
    assert sorted(streamkit.typing.__all__) == TYPING


def test_the_typing_classes_are_not_in_the_front_door() -> None:
    # They carry static types; code names them from streamkit.typing.
    assert not set(TYPING) & set(streamkit.__all__)
    assert not any(hasattr(streamkit, name) for name in TYPING)


@pytest.mark.parametrize("module", [streamkit, streamkit.testing, streamkit.typing])
def test_every_name_in_all_exists(module: object) -> None:
    for name in getattr(module, "__all__"):  # noqa: B009 - the module is a parameter
        assert hasattr(module, name), name


def test_the_front_door_exports_everything_it_imports() -> None:
    # streamkit/__init__.py re-exports with `from ._x import y as y` only, so
    # every public-looking attribute must be in __all__.
    names = set(streamkit.__all__)
    public = {
        name
        for name, value in vars(streamkit).items()
        if not name.startswith("_")
        and getattr(value, "__module__", "").startswith("streamkit")
        and not isinstance(value, type(importlib))
    }
    assert public <= names, sorted(public - names)


def test_public_names_are_reexported_from_private_modules() -> None:
    for name in streamkit.__all__:
        value = getattr(streamkit, name)
        module = getattr(value, "__module__", None)
        if module is not None and module.startswith("streamkit"):
            assert module.split(".")[1].startswith("_"), f"{name} lives in public {module}"


def test_trailing_underscore_only_for_builtin_clashes() -> None:
    for name in streamkit.__all__:
        if name.endswith("_"):
            assert name[:-1] in BUILTINS, name
        else:
            assert name not in BUILTINS, name
