"""Backoff policies: formulas, validation, schedules, and the sleeps a retry asks for."""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamkit import collect, map_
from streamkit._backoff import (
    BackoffPolicy,
    ConstantBackoff,
    ExponentialBackoff,
    constant,
    exponential,
    schedule_maker,
)
from streamkit._failures import with_retry
from streamkit.testing import VirtualClock, use_clock

if TYPE_CHECKING:
    from collections.abc import Iterator


class RecordingClock:
    """A virtual clock that also records every sleep requested from it."""

    def __init__(self) -> None:
        self.virtual = VirtualClock()
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.virtual.now()

    def sleep(self, seconds: float) -> Any:
        self.sleeps.append(seconds)
        return self.virtual.sleep(seconds)


def first(n: int, delays: Iterator[float]) -> list[float]:
    return list(itertools.islice(delays, n))


def failing(times: int) -> Any:
    """A function failing ``times`` times per item, then returning the item."""
    calls: dict[object, int] = {}

    def fn(item: object) -> object:
        calls[item] = calls.get(item, 0) + 1
        if calls[item] <= times:
            raise ConnectionError(item)
        return item

    return fn


# --------------------------------------------------------------------------- formulas


def test_constant_schedule_is_endless_and_flat() -> None:
    assert first(4, constant(0.25).schedule(random.Random())) == [0.25] * 4
    assert constant(2)(7) == 2.0
    assert constant(0).seconds == 0.0


def test_exponential_without_jitter_grows_to_the_cap() -> None:
    policy = exponential(0.1, 2, 1.0)
    assert first(6, policy.schedule(random.Random())) == pytest.approx(
        [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    )
    assert first(4, exponential(1, 3, 100).schedule(random.Random())) == [1, 3, 9, 27]
    assert first(3, exponential(0.5, 1, 5).schedule(random.Random())) == [0.5, 0.5, 0.5]


def test_exponential_ceiling_never_overflows() -> None:
    policy = exponential(0.1, 10, 30)
    assert policy.ceiling(1) == 0.1
    assert policy.ceiling(10_000) == 30.0
    assert exponential(0, 2, 0).ceiling(5000) == 0.0
    with pytest.raises(ValueError, match="attempt"):
        policy.ceiling(0)
    # A long schedule stays capped and finite.
    assert first(2000, policy.schedule(random.Random()))[-1] == 30.0


@given(seed=st.integers(0, 2**32), initial=st.floats(0.01, 5), attempts=st.integers(1, 40))
def test_full_jitter_lies_between_zero_and_the_ceiling(
    seed: int, initial: float, attempts: int
) -> None:
    policy = exponential(initial, 2, 60, jitter="full")
    delays = first(attempts, policy.schedule(random.Random(seed)))
    for n, delay in enumerate(delays, 1):
        assert 0 <= delay <= policy.ceiling(n)


@given(seed=st.integers(0, 2**32), attempts=st.integers(1, 40))
def test_equal_jitter_keeps_at_least_half_the_ceiling(seed: int, attempts: int) -> None:
    policy = exponential(0.2, 2, 30, jitter="equal")
    delays = first(attempts, policy.schedule(random.Random(seed)))
    for n, delay in enumerate(delays, 1):
        assert policy.ceiling(n) / 2 <= delay <= policy.ceiling(n)


@given(seed=st.integers(0, 2**32), attempts=st.integers(1, 40))
def test_decorrelated_jitter_follows_the_aws_formula(seed: int, attempts: int) -> None:
    base, cap = 0.5, 20.0
    delays = first(
        attempts,
        exponential(base, maximum=cap, jitter="decorrelated").schedule(random.Random(seed)),
    )
    # The reference: sleep = min(cap, random_between(base, sleep * 3)), sleep starting at base.
    reference = random.Random(seed)
    previous = base
    for delay in delays:
        previous = min(cap, reference.uniform(base, previous * 3))
        assert delay == previous
        assert base <= delay <= cap


def test_jitter_draws_are_reproducible_with_a_seed() -> None:
    policy = exponential(1, jitter="full", seed=42)
    make_a, make_b = schedule_maker(policy), schedule_maker(policy)
    run_a = [first(5, make_a()) for _ in range(3)]
    run_b = [first(5, make_b()) for _ in range(3)]
    assert run_a == run_b  # two runs of the same seeded policy repeat their delays
    assert run_a[0] != run_a[1]  # items of one run draw different delays


def test_each_item_gets_its_own_decorrelated_schedule() -> None:
    make = schedule_maker(exponential(1, maximum=1000, jitter="decorrelated", seed=1))
    one, two = make(), make()
    first(30, one)  # one item's long history does not shape another's
    assert 1 <= next(two) <= 3


# --------------------------------------------------------------------------- records


def test_policies_are_frozen_slotted_records() -> None:
    policy = exponential(0.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.initial = 1.0  # type: ignore[misc]
    assert not hasattr(policy, "__dict__")
    assert policy == exponential(0.5)
    assert dataclasses.replace(policy, jitter="full").jitter == "full"
    assert isinstance(policy, BackoffPolicy)
    assert isinstance(constant(1), BackoffPolicy)
    assert isinstance(policy, ExponentialBackoff)
    assert isinstance(constant(1), ConstantBackoff)
    assert hash(constant(1)) == hash(constant(1.0))


@pytest.mark.parametrize(
    ("make", "error", "parameter"),
    [
        (lambda: constant(-1), ValueError, "seconds"),
        (lambda: constant(math.inf), ValueError, "seconds"),
        (lambda: constant(math.nan), ValueError, "seconds"),
        (lambda: constant("1"), TypeError, "seconds"),
        (lambda: constant(True), TypeError, "seconds"),
        (lambda: exponential(-0.1), ValueError, "initial"),
        (lambda: exponential("0.1"), TypeError, "initial"),
        (lambda: exponential(multiplier=0.5), ValueError, "multiplier"),
        (lambda: exponential(multiplier=math.inf), ValueError, "multiplier"),
        (lambda: exponential(multiplier=None), TypeError, "multiplier"),
        (lambda: exponential(1, maximum=0.5), ValueError, "maximum"),
        (lambda: exponential(maximum=math.inf), ValueError, "maximum"),
        (lambda: exponential(jitter="half"), ValueError, "jitter"),
        (lambda: exponential(seed=1.5), TypeError, "seed"),
        (lambda: exponential(seed=True), TypeError, "seed"),
    ],
)
def test_arguments_are_validated_at_construction(
    make: Any, error: type[Exception], parameter: str
) -> None:
    with pytest.raises(error, match=parameter):
        make()


# --------------------------------------------------------------------------- with_retry's sleeps


async def test_with_retry_sleeps_the_exact_exponential_schedule() -> None:
    clock = RecordingClock()
    with use_clock(clock):
        stage = with_retry(map_(failing(4)), attempts=5, backoff=exponential(0.1, 2, 0.5))
        assert await collect(["a"] | stage) == ["a"]
    assert clock.sleeps == pytest.approx([0.1, 0.2, 0.4, 0.5])
    assert clock.now() == pytest.approx(1.2)


async def test_with_retry_takes_any_callable_as_backoff() -> None:
    clock = RecordingClock()
    with use_clock(clock):
        stage = with_retry(map_(failing(3)), attempts=4, backoff=lambda attempt: attempt * 10)
        assert await collect(["a", "b"] | stage) == ["a", "b"]
    assert clock.sleeps == [10, 20, 30, 10, 20, 30]


async def test_a_custom_policy_object_makes_each_items_schedule() -> None:
    class Fibonacci:
        def schedule(self, rng: random.Random) -> Iterator[float]:
            a, b = 1.0, 1.0
            while True:
                yield a
                a, b = b, a + b

    clock = RecordingClock()
    with use_clock(clock):
        stage = with_retry(map_(failing(4)), attempts=5, backoff=Fibonacci())
        assert await collect([1, 2] | stage) == [1, 2]
    assert clock.sleeps == [1, 1, 2, 3] * 2


async def test_seeded_jitter_gives_the_same_sleeps_on_every_run() -> None:
    runs = []
    for _ in range(2):
        clock = RecordingClock()
        with use_clock(clock):
            # A fresh failing function per run: two failures per item.
            flaky = with_retry(
                map_(failing(2)), attempts=3, backoff=exponential(1, jitter="full", seed=5)
            )
            assert await collect(range(5) | flaky) == list(range(5))
        runs.append(clock.sleeps)
    assert runs[0] == runs[1]
    assert len(runs[0]) == 10
    assert len(set(runs[0])) == 10


@pytest.mark.parametrize("bad", [-1, math.nan, "soon", None])
async def test_a_callable_returning_a_bad_delay_fails_loudly(bad: object) -> None:
    stage = with_retry(map_(failing(1)), attempts=2, backoff=lambda attempt: bad)  # type: ignore[arg-type,return-value]
    with use_clock(RecordingClock()), pytest.raises((TypeError, ValueError), match="backoff"):
        await collect([1] | stage)


async def test_an_ending_schedule_fails_loudly() -> None:
    class Twice:
        def schedule(self, rng: random.Random) -> Iterator[float]:
            return iter([0.0, 0.0])

    stage = with_retry(map_(failing(5)), attempts=5, backoff=Twice())
    with use_clock(RecordingClock()), pytest.raises(ValueError, match="endless"):
        await collect([1] | stage)


def test_backoff_must_be_a_policy_or_a_callable() -> None:
    with pytest.raises(TypeError, match="backoff"):
        with_retry(map_(abs), backoff=0.5)  # type: ignore[call-overload]
