"""The compiled envelope (streamkit/_native.py built with mypyc) against the pure record.

In the compiled run (``make test-compiled``) `Envelope` is the compiled class and
`PURE_ENVELOPE` the pure one: every behaviour is compared between the two.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import pickle
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamkit import Envelope, Key, State
from streamkit._records import COMPILED, PURE_ENVELOPE

TOTAL = Key[int]("total")

needs_compiled = pytest.mark.skipif(not COMPILED, reason="the compiled envelope is not in use")

values = st.one_of(st.integers(), st.text(max_size=5), st.none(), st.tuples(st.integers()))
states = st.dictionaries(st.text(min_size=1, max_size=3), st.integers(), max_size=3).map(State)


def _build(flag: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "STREAMKIT_NO_COMPILED"}
    if flag is not None:
        env["STREAMKIT_NO_COMPILED"] = flag
    script = "import streamkit._records as r; print(r.COMPILED, r.Envelope.__module__)"
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def test_no_compiled_selects_the_pure_record() -> None:
    assert _build("1") == "False streamkit._records"


@needs_compiled
def test_the_compiled_envelope_is_used_when_built() -> None:
    assert _build(None) == "True streamkit._native"
    assert Envelope is not PURE_ENVELOPE
    assert _build(None) != _build("1")


def _both(value: Any, state: State) -> tuple[Any, Any]:
    return Envelope(value, state), PURE_ENVELOPE(value, state)


@needs_compiled
@given(values, states, values, states)
def test_compiled_and_pure_agree(value: Any, state: State, other: Any, other_state: State) -> None:
    native, pure = _both(value, state)
    native_other, pure_other = _both(other, other_state)
    assert repr(native) == repr(pure)
    assert (native == native_other) == (pure == pure_other)
    assert (native != native_other) == (pure != pure_other)
    assert hash(native) == hash(pure)
    assert native != pure  # one class is not the other, as two dataclasses
    assert repr(native.replace(value=other)) == repr(pure.replace(value=other))
    assert repr(native.replace(state=other_state)) == repr(pure.replace(state=other_state))
    assert repr(native.with_state(TOTAL, 3)) == repr(pure.with_state(TOTAL, 3))
    assert repr(dataclasses.replace(native, value=other)) == repr(
        dataclasses.replace(pure, value=other)
    )
    assert [f.name for f in dataclasses.fields(native)] == ["value", "state"]
    assert type(native).__match_args__ == type(pure).__match_args__ == ("value", "state")
    match native:
        case Envelope(got, got_state):
            assert (got, got_state) == (value, state)
    assert copy.copy(native) == native
    assert copy.deepcopy(native) == native


@needs_compiled
def test_immutability_and_subscripting_agree() -> None:
    for cls in (Envelope, PURE_ENVELOPE):
        item = cls[int](1)
        assert item.state == {}
        with pytest.raises(dataclasses.FrozenInstanceError, match="'value'"):
            item.value = 2
        with pytest.raises(dataclasses.FrozenInstanceError, match="'state'"):
            del item.state
        with pytest.raises(TypeError):
            cls()
    assert Envelope(1).state is PURE_ENVELOPE(1).state


@needs_compiled
def test_pickles_load_in_either_build() -> None:
    shared = State({"run": 1})
    items = [Envelope(i, shared.set(TOTAL, i)) for i in range(3)]
    data = pickle.dumps(items)
    script = (
        "import pickle, sys; import streamkit._records as r; "
        "items = pickle.loads(sys.stdin.buffer.read()); "
        "print(type(items[0]) is r.Envelope, r.COMPILED, [i.state['total'] for i in items], "
        "items[0].state._parent is items[1].state._parent)"
    )
    env = dict(os.environ, STREAMKIT_NO_COMPILED="1")
    done = subprocess.run(
        [sys.executable, "-c", script], input=data, env=env, capture_output=True, check=True
    )
    assert done.stdout.decode().split() == ["True", "False", "[0,", "1,", "2]", "True"]
    # And a pickle made by the pure build loads as the compiled envelope here.
    pure_made = pickle.dumps(PURE_ENVELOPE(5, shared))
    restored = pickle.loads(pure_made)
    assert type(restored) is Envelope
    assert restored == Envelope(5, shared)


def test_the_stages_make_envelopes_of_the_build_in_use() -> None:
    # The re-wrap of a fused segment and the re-emission of a reduction point make
    # their envelopes the fastest way the build has (the compiled core's factory):
    # they are of the same class as `streamkit.Envelope`, pure or compiled.
    import asyncio

    from streamkit import collect, envelop, map_, reduce_point

    async def main() -> list[Any]:
        rewrapped = await collect([1, 2] | envelop() | map_(lambda x: x + 1))
        emitted = await collect([1, 2] | reduce_point(TOTAL, lambda a, x: a + x, 0))
        restamped = await collect(
            [1, 2] | envelop(State({"k": 1})) | reduce_point(TOTAL, lambda a, x: a + x, 0)
        )
        return [*rewrapped, *emitted, *restamped]

    made = asyncio.run(main())
    assert {type(item) for item in made} == {Envelope}
    assert [item.value for item in made] == [2, 3, 1, 2, 1, 2]
    assert [item.state.get(TOTAL) for item in made[2:]] == [3, 3, 3, 3]
