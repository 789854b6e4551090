"""streamkit: typed, pipeable stages over async iterables.

Build stages with the operator functions, compose them with ``|``, apply them
to any iterable or async iterable, and consume the resulting `Flow` with
``async for`` or a terminal helper::

    results = await collect(source | map_(parse) | filter_(valid) | take(10))
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
from ._combine import concat as concat
from ._combine import merge as merge
from ._combine import zip_ as zip_
from ._core import FlattenStage as FlattenStage
from ._core import Flow as Flow
from ._core import IndexedStage as IndexedStage
from ._core import ListStage as ListStage
from ._core import PairStage as PairStage
from ._core import Passthrough as Passthrough
from ._core import Source as Source
from ._core import Stage as Stage
from ._core import TupleStage as TupleStage
from ._core import pipe as pipe
from ._core import stage as stage
from ._create import empty as empty
from ._create import iterate as iterate
from ._create import repeat as repeat
from ._runtime import Clock as Clock
from ._select import distinct as distinct
from ._select import filter_ as filter_
from ._select import skip as skip
from ._select import skip_while as skip_while
from ._select import take as take
from ._select import take_while as take_while
from ._transform import enumerate_ as enumerate_
from ._transform import flat_map as flat_map
from ._transform import flatten as flatten
from ._transform import map_ as map_
from ._transform import scan as scan
from ._transform import tap as tap

__version__ = "0.1.0.dev0"

__all__ = [
    "Clock",
    "FlattenStage",
    "Flow",
    "IndexedStage",
    "ListStage",
    "PairStage",
    "Passthrough",
    "Source",
    "Stage",
    "TupleStage",
    "chunk",
    "collect",
    "concat",
    "count",
    "distinct",
    "drain",
    "empty",
    "enumerate_",
    "filter_",
    "first",
    "flat_map",
    "flatten",
    "fold",
    "iterate",
    "last",
    "map_",
    "merge",
    "pairwise",
    "pipe",
    "repeat",
    "scan",
    "skip",
    "skip_while",
    "stage",
    "take",
    "take_while",
    "tap",
    "window",
    "zip_",
]
