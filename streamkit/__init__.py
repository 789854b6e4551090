"""streamkit: typed, pipeable stages over async iterables.

Build stages with the operator functions, compose them with ``|``, apply them
to any iterable or async iterable, and consume the resulting `Flow` with
``async for`` or a terminal helper such as `collect`.

Examples:
    >>> import asyncio
    >>> from streamkit import collect, filter_, map_, take
    >>> words = ["3", "x", "14", "15", "", "92"]
    >>> asyncio.run(collect(words | filter_(str.isdigit) | map_(int) | take(3)))
    [3, 14, 15]
"""

from ._aggregate import chunk as chunk
from ._aggregate import collect as collect
from ._aggregate import count as count
from ._aggregate import drain as drain
from ._aggregate import first as first
from ._aggregate import fold as fold
from ._aggregate import last as last
from ._aggregate import pairwise as pairwise
from ._aggregate import window as window
from ._backoff import Backoff as Backoff
from ._backoff import BackoffPolicy as BackoffPolicy
from ._backoff import ConstantBackoff as ConstantBackoff
from ._backoff import ExponentialBackoff as ExponentialBackoff
from ._backoff import constant as constant
from ._backoff import exponential as exponential
from ._barrier import SnapshotError as SnapshotError
from ._barrier import Stateful as Stateful
from ._batch import BatchPipeline as BatchPipeline
from ._codec import DEFAULT_CODEC as DEFAULT_CODEC
from ._codec import Codec as Codec
from ._codec import CodecError as CodecError
from ._codec import TypedCodec as TypedCodec
from ._codec import decode_state as decode_state
from ._codec import encode_state as encode_state
from ._combine import broadcast as broadcast
from ._combine import concat as concat
from ._combine import merge as merge
from ._combine import tee as tee
from ._combine import zip_ as zip_
from ._concurrency import buffer as buffer
from ._core import Flow as Flow
from ._core import Source as Source
from ._core import Stage as Stage
from ._core import pipe as pipe
from ._core import stage as stage
from ._create import empty as empty
from ._create import iterate as iterate
from ._create import repeat as repeat
from ._dashboard import Dashboard as Dashboard
from ._events import StateUpdate as StateUpdate
from ._failures import DeadLetters as DeadLetters
from ._failures import ErrorRecord as ErrorRecord
from ._failures import ErrorReport as ErrorReport
from ._failures import ExceptionInfo as ExceptionInfo
from ._failures import FailureStatistics as FailureStatistics
from ._failures import OnError as OnError
from ._failures import UnhandledFailure as UnhandledFailure
from ._failures import attempts_key as attempts_key
from ._failures import error_report as error_report
from ._failures import failures as failures
from ._failures import successes as successes
from ._failures import with_retry as with_retry
from ._group import group_by as group_by
from ._group import switch_map as switch_map
from ._hooks import HookError as HookError
from ._hooks import Hooks as Hooks
from ._hooks import RetryEvent as RetryEvent
from ._initial import Factory as Factory
from ._keyed import scan_by as scan_by
from ._keyed import scan_state_by as scan_state_by
from ._keyed import throttle_by as throttle_by
from ._metrics import QuantileSketch as QuantileSketch
from ._metrics import RunStatistics as RunStatistics
from ._metrics import StageStatistics as StageStatistics
from ._metrics import to_prometheus as to_prometheus
from ._partitioned import Broker as Broker
from ._partitioned import Partitioned as Partitioned
from ._partitioned import Partitions as Partitions
from ._partitioned import PartitionSource as PartitionSource
from ._postgres import PostgresStore as PostgresStore
from ._records import Envelope as Envelope
from ._records import Key as Key
from ._records import Scope as Scope
from ._records import State as State
from ._records import StateLimitError as StateLimitError
from ._records import StateLimits as StateLimits
from ._report import write_report as write_report
from ._resumable import Resumable as Resumable
from ._resumable import lines as lines
from ._resumable import resumable as resumable
from ._run import Run as Run
from ._run import RunStatus as RunStatus
from ._run import StageStatus as StageStatus
from ._run import config_hash as config_hash
from ._runtime import Clock as Clock
from ._runtime import current_clock as current_clock
from ._runtime import use_clock as use_clock
from ._select import distinct as distinct
from ._select import filter_ as filter_
from ._select import skip as skip
from ._select import skip_while as skip_while
from ._select import take as take
from ._select import take_while as take_while
from ._sinks import Sink as Sink
from ._sinks import TableSink as TableSink
from ._sinks import write_to as write_to
from ._state import BRANCH as BRANCH
from ._state import branch as branch
from ._state import envelop as envelop
from ._state import fork as fork
from ._state import reduce_point as reduce_point
from ._state import scan_state as scan_state
from ._state import set_state as set_state
from ._state import unwrap as unwrap
from ._store import Checkpoint as Checkpoint
from ._store import CheckpointError as CheckpointError
from ._store import MemoryStore as MemoryStore
from ._store import SQLiteStore as SQLiteStore
from ._store import StaleCheckpointError as StaleCheckpointError
from ._store import Store as Store
from ._template import render as render
from ._time import debounce as debounce
from ._time import spaced as spaced
from ._time import throttle as throttle
from ._time import timeout as timeout
from ._transform import enumerate_ as enumerate_
from ._transform import flat_map as flat_map
from ._transform import flatten as flatten
from ._transform import map_ as map_
from ._transform import scan as scan
from ._transform import tap as tap
from ._windows import Hopping as Hopping
from ._windows import Late as Late
from ._windows import LateItemError as LateItemError
from ._windows import Session as Session
from ._windows import Sliding as Sliding
from ._windows import Tumbling as Tumbling
from ._windows import Window as Window
from ._windows import WindowKind as WindowKind
from ._windows import chunk_until as chunk_until
from ._windows import windowed as windowed
from ._writes import DeadLetterRecord as DeadLetterRecord
from ._writes import DeadLetterRow as DeadLetterRow
from ._writes import SQLValue as SQLValue
from ._writes import TableRows as TableRows
from ._writes import Write as Write

__version__ = "0.1.0.dev0"

__all__ = [
    "BRANCH",
    "DEFAULT_CODEC",
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
