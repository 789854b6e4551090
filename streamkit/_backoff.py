"""Backoff policies: how long to wait before the next attempt of a failed call.

A backoff is either a policy (`constant`, `exponential`, or any object with a
``schedule(rng)`` method) or a plain callable ``attempt -> seconds``, where
``attempt`` is the number of the attempt that just failed (1 for the first).

Policies are immutable records. Every item a retrying stage processes gets a
fresh *schedule*, an iterator over the delays before its 2nd, 3rd, ...
attempt, so a policy that depends on the previous delay (decorrelated jitter)
keeps that state per item. Random jitter draws from one `random.Random` per
run of the stage, seeded from the policy's ``seed`` (or from the operating
system when the seed is None), so a seeded pipeline repeats its delays.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final, Literal, Protocol, TypeAlias, cast, runtime_checkable

Jitter: TypeAlias = Literal["none", "full", "equal", "decorrelated"]
_JITTERS: Final = ("none", "full", "equal", "decorrelated")


@runtime_checkable
class BackoffPolicy(Protocol):
    """Anything that makes a per-item schedule of delays (in seconds).

    ``schedule(rng)`` returns an endless iterator over the delays after the
    1st, 2nd, ... failed attempt of one item; ``rng`` is the run's random
    source. `constant` and `exponential` make policies; write your own as
    any object with that method.

    Examples:
        >>> import itertools, random
        >>> class Linear:
        ...     def schedule(self, rng: random.Random) -> Iterator[float]:
        ...         return (0.5 * n for n in itertools.count(1))
        >>> isinstance(Linear(), BackoffPolicy)
        True
        >>> list(itertools.islice(Linear().schedule(random.Random()), 3))
        [0.5, 1.0, 1.5]
    """

    def schedule(self, rng: random.Random) -> Iterator[float]:
        """The delays after the 1st, 2nd, ... failed attempt of one item."""
        ...


Backoff: TypeAlias = BackoffPolicy | Callable[[int], float]
"""A backoff policy, or a callable from the failed attempt's number (1, 2, ...) to seconds."""


def _check_number(value: object, parameter: str) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise TypeError(f"{parameter} must be a number, got {type(value).__name__}")
    return float(value)


def _check_seed(seed: object) -> None:
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")


def _check_seconds(value: object, parameter: str) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise TypeError(f"{parameter} must be a number of seconds, got {type(value).__name__}")
    seconds = float(value)
    if not (seconds >= 0 and math.isfinite(seconds)):
        raise ValueError(f"{parameter} must be a finite number of seconds >= 0, got {value!r}")
    return seconds


@dataclass(frozen=True, slots=True)
class ConstantBackoff:
    """The same delay before every retry. Build it with `constant`.

    Examples:
        >>> constant(0.5)
        ConstantBackoff(seconds=0.5)
        >>> constant(0.5)(attempt=3)
        0.5
    """

    seconds: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "seconds", _check_seconds(self.seconds, "seconds"))

    def schedule(self, rng: random.Random) -> Iterator[float]:
        """An endless schedule of ``seconds``."""
        return itertools.repeat(self.seconds)

    def __call__(self, attempt: int) -> float:
        """The delay after failed attempt ``attempt``: always ``seconds``."""
        return self.seconds


def constant(seconds: float) -> ConstantBackoff:
    """Wait ``seconds`` before every retry.

    Args:
        seconds: The delay (0 or more; 0 retries at once).

    Raises:
        TypeError: ``seconds`` is not a number.
        ValueError: ``seconds`` is negative or not finite.

    Examples:
        >>> import itertools, random
        >>> list(itertools.islice(constant(0.5).schedule(random.Random()), 3))
        [0.5, 0.5, 0.5]
    """
    return ConstantBackoff(seconds)


@dataclass(frozen=True, slots=True)
class ExponentialBackoff:
    """Delays growing geometrically up to a cap, with optional jitter.

    Build it with `exponential`, which documents the formulas.

    Examples:
        >>> policy = exponential(1, maximum=10)
        >>> [policy.ceiling(n) for n in range(1, 6)]
        [1.0, 2.0, 4.0, 8.0, 10.0]
        >>> policy.jitter, policy.seed
        ('none', None)
    """

    initial: float = 0.1
    multiplier: float = 2.0
    maximum: float = 30.0
    jitter: Jitter = "none"
    seed: int | None = None

    def __post_init__(self) -> None:
        initial = _check_seconds(self.initial, "initial")
        maximum = _check_seconds(self.maximum, "maximum")
        multiplier = _check_number(self.multiplier, "multiplier")
        if not (multiplier >= 1 and math.isfinite(multiplier)):
            raise ValueError(f"multiplier must be a finite number >= 1, got {self.multiplier!r}")
        if maximum < initial:
            raise ValueError(f"maximum ({maximum}) must be >= initial ({initial})")
        if self.jitter not in _JITTERS:
            choices = ", ".join(map(repr, _JITTERS))
            raise ValueError(f"jitter must be one of {choices}; got {self.jitter!r}")
        _check_seed(self.seed)
        object.__setattr__(self, "initial", initial)
        object.__setattr__(self, "maximum", maximum)
        object.__setattr__(self, "multiplier", multiplier)

    def ceiling(self, attempt: int) -> float:
        """``min(maximum, initial * multiplier ** (attempt - 1))``, without overflow."""
        if attempt < 1:
            raise ValueError(f"attempt must be >= 1, got {attempt}")
        if self.initial == 0:
            return 0.0
        if self.multiplier == 1:
            return self.initial
        if (attempt - 1) * math.log(self.multiplier) >= math.log(self.maximum / self.initial):
            return self.maximum
        return min(self.maximum, self.initial * self.multiplier ** (attempt - 1))

    def schedule(self, rng: random.Random) -> Iterator[float]:
        """The delays after failed attempts 1, 2, ... of one item."""
        jitter = self.jitter
        initial, maximum = self.initial, self.maximum
        previous = initial
        for attempt in itertools.count(1):
            if jitter == "decorrelated":
                previous = min(maximum, rng.uniform(initial, previous * 3))
                yield previous
                continue
            ceiling = self.ceiling(attempt)
            if jitter == "none":
                yield ceiling
            elif jitter == "full":
                yield rng.uniform(0, ceiling)
            else:  # "equal"
                yield ceiling / 2 + rng.uniform(0, ceiling / 2)


def exponential(
    initial: float = 0.1,
    multiplier: float = 2.0,
    maximum: float = 30.0,
    *,
    jitter: Jitter = "none",
    seed: int | None = None,
) -> ExponentialBackoff:
    """Exponential backoff with a cap and the jitter variants of AWS's analysis.

    With ``n`` the number of the attempt that just failed (1, 2, ...) and
    ``ceiling(n) = min(maximum, initial * multiplier ** (n - 1))``, the delay
    before the next attempt is:

    * ``"none"``: ``ceiling(n)``;
    * ``"full"``: ``uniform(0, ceiling(n))``;
    * ``"equal"``: ``ceiling(n) / 2 + uniform(0, ceiling(n) / 2)``;
    * ``"decorrelated"``: ``min(maximum, uniform(initial, previous * 3))``,
      where ``previous`` is this item's previous delay (``initial`` at
      first); ``multiplier`` is not used.

    Random draws come from one `random.Random(seed)` per run of the stage.

    Args:
        initial: The first delay (the base), in seconds.
        multiplier: The growth factor per attempt (1 or more).
        maximum: The cap on any delay, in seconds (at least ``initial``).
        jitter: ``"none"``, ``"full"``, ``"equal"`` or ``"decorrelated"``.
        seed: Seed of the run's random source, for reproducible jitter.

    Raises:
        TypeError: An argument has the wrong type.
        ValueError: An argument is out of range.

    Examples:
        >>> import itertools, random
        >>> policy = exponential(0.5, maximum=3)
        >>> list(itertools.islice(policy.schedule(random.Random()), 5))
        [0.5, 1.0, 2.0, 3.0, 3.0]
        >>> jittered = exponential(1, jitter="full", seed=7)
        >>> all(0 <= d <= 2**n for n, d in enumerate(
        ...     itertools.islice(jittered.schedule(random.Random(7)), 6)))
        True
    """
    return ExponentialBackoff(initial, multiplier, maximum, jitter, seed)


def _check_delay(value: object) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise TypeError(f"backoff must return a number of seconds, got {type(value).__name__}")
    delay = float(value)
    if not (delay >= 0 and math.isfinite(delay)):
        raise ValueError(f"backoff must return a finite number of seconds >= 0, got {value!r}")
    return delay


def _from_callable(fn: Callable[[int], float]) -> Iterator[float]:
    for attempt in itertools.count(1):
        yield _check_delay(fn(attempt))


def _checked(delays: Iterator[float]) -> Iterator[float]:
    for delay in delays:
        yield _check_delay(delay)
    raise ValueError("backoff schedule ended: a schedule must be endless")


def check_backoff(backoff: object) -> Backoff:
    """Validate ``backoff=``: a policy or a callable ``attempt -> seconds``."""
    if isinstance(backoff, BackoffPolicy) or callable(backoff):
        return cast("Backoff", backoff)
    raise TypeError(
        "backoff must be a policy (constant(...), exponential(...)) or a callable "
        f"attempt -> seconds, got {type(backoff).__name__}: {backoff!r}"
    )


def schedule_maker(backoff: Backoff) -> Callable[[], Iterator[float]]:
    """For one run: a function that makes the delay schedule of each item.

    The run's random source is made here, once, from the policy's ``seed``
    when it has one; schedules of our own policies are trusted, others (user
    policies and callables) are checked delay by delay.
    """
    if isinstance(backoff, ExponentialBackoff):
        rng = random.Random(backoff.seed)
        policy = backoff
        return lambda: policy.schedule(rng)
    if isinstance(backoff, ConstantBackoff):
        seconds = backoff.seconds
        return lambda: itertools.repeat(seconds)
    if isinstance(backoff, BackoffPolicy):
        rng = random.Random()
        policy_object = backoff
        return lambda: _checked(iter(policy_object.schedule(rng)))
    fn = backoff
    return lambda: _from_callable(fn)
