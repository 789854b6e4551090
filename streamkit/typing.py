"""The stage classes that carry streamkit's static types.

Operators whose output type depends on their *input* type (`take`, `chunk`,
`flatten`, `envelop`, ...) return one of these `Stage` subclasses, so that a
type checker can follow items through ``|`` (see "How the types flow" in the
design notes). Code rarely needs to name them: import them from here to
annotate a variable or a function that returns such a stage. At run time they
are ordinary stages.

Examples:
    >>> from streamkit import chunk, take
    >>> from streamkit.typing import ListStage, Passthrough
    >>> first_ten: Passthrough = take(10)
    >>> pairs: ListStage = chunk(2)
    >>> isinstance(first_ten | pairs, ListStage)
    True
"""

from __future__ import annotations

from ._core import EnvelopStage as EnvelopStage
from ._core import FlattenStage as FlattenStage
from ._core import IndexedStage as IndexedStage
from ._core import ListStage as ListStage
from ._core import PairStage as PairStage
from ._core import Passthrough as Passthrough
from ._core import StateStage as StateStage
from ._core import TupleStage as TupleStage
from ._core import UnwrapStage as UnwrapStage
from ._failures import FailureStage as FailureStage
from ._failures import SuccessStage as SuccessStage

__all__ = [
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
