"""Per-item state records: State, Key, Scope, StateLimits, Envelope."""

from __future__ import annotations

import copy
import dataclasses
import json
import pickle
import tracemalloc
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamkit._records import (
    EMPTY,
    Envelope,
    Key,
    Scope,
    State,
    StateLimitError,
    StateLimits,
)

TOTAL = Key[int]("total")
NAME = Key[str]("name")


def compact_json(state: State) -> int:
    return len(json.dumps(dict(state), separators=(",", ":"), default=repr))


# --------------------------------------------------------------------------- State as a mapping


def test_state_is_an_immutable_mapping() -> None:
    base = State({"a": 1})
    derived = base.set("b", 2)
    assert dict(base) == {"a": 1}
    assert dict(derived) == {"a": 1, "b": 2}
    assert list(derived) == ["a", "b"]
    assert list(derived.keys()) == ["a", "b"]
    assert list(derived.items()) == [("a", 1), ("b", 2)]
    assert len(derived) == 2
    assert "a" in derived
    assert "z" not in derived
    assert 3 not in derived
    assert derived == {"a": 1, "b": 2}
    assert derived != {"a": 1}
    assert derived == State({"b": 2, "a": 1})
    with pytest.raises(AttributeError):
        derived.foo = 1  # type: ignore[attr-defined]
    with pytest.raises(TypeError):
        derived["c"] = 3  # type: ignore[index]


def test_overwriting_keeps_the_first_position_and_the_count() -> None:
    state = State().set("a", 1).set("b", 2).set("a", 3)
    assert list(state.items()) == [("a", 3), ("b", 2)]
    assert len(state) == 2


def test_typed_keys_read_and_write() -> None:
    state = State().set(TOTAL, 3).set(NAME, "ada")
    assert state[TOTAL] == 3
    assert state["total"] == 3
    assert state.get(TOTAL) == 3
    assert state.get(Key[int]("other")) is None
    assert state.get(Key[int]("other"), -1) == -1
    assert TOTAL in state
    assert state.get(42, "default") == "default"  # type: ignore[call-overload]


def test_missing_key_error_names_the_key_and_lists_present_keys() -> None:
    state = State({"a": 1, "b": 2})
    with pytest.raises(KeyError) as raised:
        state["nope"]
    assert str(raised.value) == "state has no key 'nope'; keys present: ['a', 'b']"
    with pytest.raises(KeyError, match="stage:dedupe/count"):
        state[Key[int]("count", scope=Scope.stage("dedupe"))]
    big = State({f"k{i}": i for i in range(30)})
    with pytest.raises(KeyError, match=r"\.\.\. \(30 keys\)"):
        big["nope"]


def test_set_many_and_delete() -> None:
    state = State().set_many({TOTAL: 1, "b": 2})
    assert dict(state) == {"total": 1, "b": 2}
    assert state.set_many({}) is state
    deleted = state.delete("b")
    assert dict(deleted) == {"total": 1}
    assert "b" not in deleted
    assert len(deleted) == 1
    assert dict(deleted.set("b", 5)) == {"total": 1, "b": 5}
    assert dict(deleted.delete(TOTAL)) == {}
    with pytest.raises(KeyError, match="'b'"):
        deleted.delete("b")


def test_bad_keys_raise_type_error_naming_the_parameter() -> None:
    with pytest.raises(TypeError, match="key must be a Key or a str"):
        State().set(3, 1)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="mapping must be a mapping"):
        State([("a", 1)])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="limits must be a StateLimits"):
        State(limits=16384)  # type: ignore[arg-type]


def test_hash_and_equality() -> None:
    assert hash(State({"a": 1})) == hash(State().set("a", 1))
    assert len({State({"a": 1}), State().set("a", 1)}) == 1
    with pytest.raises(TypeError):
        hash(State({"a": [1]}))
    assert State() == EMPTY
    assert State().__eq__(3) is NotImplemented


def test_repr() -> None:
    assert repr(State({"a": 1})) == "State({'a': 1})"
    limited = State(limits=StateLimits(max_keys=3))
    assert repr(limited) == "State({}, limits=StateLimits(max_bytes=16384, max_keys=3))"


def test_deep_chains_are_flattened_and_still_correct() -> None:
    state = State()
    for i in range(100):
        state = state.set(f"k{i % 37}", i)
        state = state.delete(f"k{i % 37}") if i % 11 == 0 else state
    model: dict[str, int] = {}
    for i in range(100):
        model[f"k{i % 37}"] = i
        if i % 11 == 0:
            del model[f"k{i % 37}"]
    assert dict(state) == model
    assert len(state) == len(model)
    assert state._depth <= 8  # pyright: ignore[reportPrivateUsage]


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["set", "delete", "set_many"]),
            st.sampled_from(["a", "b", "c", "d", "e"]),
            st.integers() | st.text(max_size=5) | st.none(),
        ),
        max_size=60,
    ),
    st.sampled_from([0, 3, 40]),
)
def test_state_agrees_with_a_dict(ops: list[tuple[str, str, Any]], base_size: int) -> None:
    # A base larger than a node that compaction copies stays shared below
    # the item's own keys: its entries must still read, shadow and delete.
    model: dict[str, Any] = {f"base{i}": i for i in range(base_size)}
    model.update({"a": "base", "c": "base"} if base_size else {})
    state = State(model)
    for op, key, value in ops:
        if op == "set":
            state = state.set(key, value)
            model[key] = value
        elif op == "set_many":
            state = state.set_many({key: value, "z": key})
            model[key] = value
            model["z"] = key
        elif key in model:
            state = state.delete(key)
            del model[key]
        else:
            with pytest.raises(KeyError):
                state.delete(key)
        assert dict(state) == model
        assert len(state) == len(model)
        assert state.nbytes == compact_json(state)
        for probe in [*"abcdez", "base0", "base39"]:
            assert state.get(probe, "missing") == model.get(probe, "missing")


# --------------------------------------------------------------------------- structural sharing


def test_setting_a_key_on_a_shared_state_does_not_copy_it() -> None:
    shared = State({f"key{i}": "x" * 50 for i in range(200)})
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        derived = [shared.set(TOTAL, i) for i in range(10_000)]
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # A copy of the shared entries would be ~20 KB per item; a node is ~100 bytes.
    assert used / len(derived) < 400, used / len(derived)
    assert all(item["key199"] == "x" * 50 for item in derived[:10])
    assert derived[5][TOTAL] == 5


def test_many_keys_per_item_still_never_copy_the_shared_state() -> None:
    # Past the depth at which an item's own nodes are compacted, the shared
    # entries must stay shared: only the item's own keys are merged.
    shared = State({f"key{i}": "x" * 50 for i in range(200)})
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        derived = []
        for item in range(500):
            state = shared
            for step in range(20):
                state = state.set(f"step{step}", item)
            derived.append(state)
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # A copy of the shared entries would be ~20 KB per item; twenty own keys
    # take a few KB at most.
    assert used / len(derived) < 6_000, used / len(derived)
    assert derived[7]["step19"] == 7
    assert derived[7]["key199"] == "x" * 50
    assert len(derived[7]) == 220


def test_envelope_default_state_is_one_shared_object() -> None:
    assert Envelope(1).state is Envelope(2).state is EMPTY


# --------------------------------------------------------------------------- limits


def test_size_is_the_compact_json_length() -> None:
    state = State({"a": 1, "b": "x\n", "c": [1, 2], "d": None, "e": True, "f": 1.5, "g": "é"})
    assert state.nbytes == compact_json(state)
    assert State().nbytes == 2
    unlimited = State({"a": [1, 2]}, limits=StateLimits.UNLIMITED)
    assert unlimited.nbytes == compact_json(unlimited)
    assert State(limits=StateLimits.UNLIMITED).nbytes == 2


def test_non_json_values_are_measured_by_their_repr() -> None:
    class Thing:
        def __repr__(self) -> str:
            return "Thing()"

    state = State({"t": Thing(), "s": {1, 2}})
    assert state.nbytes == compact_json(state)
    odd_keys = State({"m": {(1, 2): 3}})
    assert odd_keys.nbytes == len('{"m":' + json.dumps(repr({(1, 2): 3})) + "}")


def test_max_bytes_error_names_key_and_size() -> None:
    state = State(limits=StateLimits(max_bytes=30)).set("a", "x" * 10)
    with pytest.raises(StateLimitError) as raised:
        state.set("big", "y" * 20)
    error = raised.value
    assert isinstance(error, ValueError)
    assert error.key == "big"
    assert error.limit == 30
    assert error.size == compact_json(State({"a": "x" * 10, "big": "y" * 20}))
    assert "'big'" in str(error)
    assert f"{error.size} bytes" in str(error)
    # Replacing a value subtracts the old entry.
    assert state.set("a", "z" * 15).nbytes == compact_json(State({"a": "z" * 15}))


def test_max_keys_error() -> None:
    state = State(limits=StateLimits(max_keys=2)).set("a", 1).set("b", 2)
    assert state.set("a", 5)["a"] == 5
    with pytest.raises(StateLimitError, match=r"'c'.*3 keys.*limit of 2") as raised:
        state.set("c", 3)
    assert raised.value.size == 3
    with pytest.raises(StateLimitError):
        State(limits=StateLimits(max_keys=2)).set_many({"a": 1, "b": 2, "c": 3})
    with pytest.raises(StateLimitError):
        State({"a": 1, "b": 2, "c": 3}, limits=StateLimits(max_keys=2))


def test_default_limits_are_16_kib_and_256_keys() -> None:
    assert StateLimits() == StateLimits(max_bytes=16384, max_keys=256)
    assert EMPTY.limits == StateLimits()
    with pytest.raises(StateLimitError):
        EMPTY.set("blob", "x" * 16384)
    with pytest.raises(StateLimitError):
        State({str(i): i for i in range(257)})


def test_limits_pass_on_and_can_change() -> None:
    limited = State(limits=StateLimits(max_bytes=100))
    assert limited.set("a", 1).delete("a").limits == StateLimits(max_bytes=100)
    assert limited.set("a", 1).set_many({"b": 1, "c": 2}).limits.max_bytes == 100
    relaxed = limited.set("a", 1).with_limits(StateLimits.UNLIMITED)
    assert relaxed.set("big", "x" * 1000)["a"] == 1
    assert relaxed.with_limits(StateLimits.UNLIMITED) is relaxed
    with pytest.raises(StateLimitError):
        relaxed.set("big", "x" * 20_000).with_limits(StateLimits())


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"max_bytes": 0}, ValueError, "max_bytes must be >= 1"),
        ({"max_keys": -1}, ValueError, "max_keys must be >= 1"),
        ({"max_bytes": 1.5}, TypeError, "max_bytes must be an int"),
        ({"max_keys": True}, TypeError, "max_keys must be an int"),
    ],
)
def test_state_limits_validate(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        StateLimits(**kwargs)


# --------------------------------------------------------------------------- scopes and keys


def test_scopes_qualify_names() -> None:
    assert Key[int]("count").qualified == "count"
    assert Key[int]("count", scope=Scope.pipeline("etl")).qualified == "pipeline:etl/count"
    assert Key[int]("count", scope=Scope.stage("dedupe")).qualified == "stage:dedupe/count"
    assert Key[int]("count", scope=Scope.custom("x")).qualified == "custom:x/count"
    assert repr(Scope.stage("dedupe")) == "Scope.stage('dedupe')"
    assert repr(Scope.GLOBAL) == "Scope.GLOBAL"


def test_same_short_name_in_two_scopes_does_not_collide() -> None:
    first = Key[int]("count", scope=Scope.stage("dedupe"))
    second = Key[int]("count", scope=Scope.stage("enrich"))
    state = State().set(first, 1).set(second, 2)
    assert (state[first], state[second]) == (1, 2)
    assert dict(state) == {"stage:dedupe/count": 1, "stage:enrich/count": 2}
    # Another stage reads it by building (or sharing) the same key.
    assert state[Key[int]("count", scope=Scope.stage("dedupe"))] == 1


@pytest.mark.parametrize(
    "make",
    [
        lambda: Scope.stage(""),
        lambda: Scope.stage("a/b"),
        lambda: Scope.custom("a:b"),
        lambda: Scope("global", "x"),
        lambda: Scope("nope", "x"),  # type: ignore[arg-type]
    ],
)
def test_bad_scopes_raise_value_error(make: Any) -> None:
    with pytest.raises(ValueError, match=r"scope|kind"):
        make()


def test_key_records() -> None:
    key = Key[int]("total")
    assert key == Key[str]("total")  # keys compare by name and scope only
    assert key != Key[int]("total", scope=Scope.custom("x"))
    assert len({key, Key[int]("total")}) == 1
    assert repr(key) == "Key('total')"
    assert repr(Key[int]("n", scope=Scope.stage("s"))) == "Key('n', scope=Scope.stage('s'))"
    with pytest.raises(dataclasses.FrozenInstanceError):
        key.name = "other"  # type: ignore[misc]
    with pytest.raises(TypeError, match="name must be a non-empty str"):
        Key[int]("")
    with pytest.raises(TypeError, match="scope must be a Scope"):
        Key[int]("x", scope="stage")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- Envelope


def test_envelope_record() -> None:
    item = Envelope(1)
    assert item.value == 1
    assert item.state == {}
    with pytest.raises(dataclasses.FrozenInstanceError):
        item.value = 2  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del item.value  # type: ignore[misc]
    assert Envelope(1) == Envelope(1)
    assert Envelope(1) != Envelope(1, State({"a": 1}))
    assert Envelope(1, State({"a": 1})) == Envelope(1, State().set("a", 1))
    assert hash(Envelope(1, State({"a": 1}))) == hash(Envelope(1, State().set("a", 1)))
    assert repr(Envelope("x", State({"a": 1}))) == "Envelope(value='x', state=State({'a': 1}))"
    assert Envelope[int](3).value == 3


def test_envelope_replace_and_with_state() -> None:
    item = Envelope(1, State({"a": 1}))
    assert item.replace(value="one") == Envelope("one", State({"a": 1}))
    assert item.replace(state=EMPTY) == Envelope(1)
    assert item.replace() == item
    tagged = item.with_state(TOTAL, 9)
    assert tagged.state[TOTAL] == 9
    assert tagged.value == 1
    assert item.state == {"a": 1}
    assert dataclasses.replace(item, value=2) == Envelope(2, State({"a": 1}))


def test_states_and_envelopes_pickle_and_copy() -> None:
    shared = State({"run": 1})
    items = [Envelope(i, shared.set(TOTAL, i).delete("run")) for i in range(3)]
    items.append(Envelope(9, shared))
    restored = pickle.loads(pickle.dumps(items))
    assert restored == items
    assert restored[0].state.limits == StateLimits()
    # Shared parents stay shared within one pickle.
    assert restored[0].state._parent._parent is restored[3].state  # type: ignore[union-attr] # pyright: ignore[reportPrivateUsage, reportOptionalMemberAccess]
    assert copy.deepcopy(items) == items
    assert copy.copy(items[0]) == items[0]
