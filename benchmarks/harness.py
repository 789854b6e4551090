"""Core of the benchmark harness: the case registry, result types and the timing loop.

A *case* is a function ``Settings -> CaseResult`` registered with :func:`case`. Timing cases
describe their contestants as :class:`Competitor` objects and hand them to
:func:`time_competitors`, which runs every contestant once per repetition (interleaved, so all
of them share the same machine noise), each run in a fresh ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
import gc
import math
import statistics
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

TIMES = "\N{MULTIPLICATION SIGN}"
LE = "\N{LESS-THAN OR EQUAL TO}"
DIVIDE = "\N{DIVISION SIGN}"

#: Builds and drains one pipeline of ``n`` items; returns whatever the case verifies.
Runner = Callable[[int], Awaitable[object]]
#: Resolves imports and constructs the stages once (so an unimplemented feature is detected
#: before timing starts), then returns the runner. Raising ImportError, AttributeError,
#: TypeError or NotImplementedError marks the competitor "n/a".
RunnerFactory = Callable[[], Runner]

UNAVAILABLE_ERRORS = (ImportError, AttributeError, TypeError, NotImplementedError)


# --------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Settings:
    """How big and how often: ``quick`` selects tiny sizes (used by --quick and the tests)."""

    quick: bool = False
    repeat: int = 5
    warmup: bool = True
    verbose: bool = False

    @property
    def run_timeout(self) -> float:
        """Seconds one run may take before it is abandoned as an error (a hang in a
        half-written feature must not stop the harness)."""
        return 10.0 if self.quick else 120.0

    def size(self, full: int, quick: int) -> int:
        return quick if self.quick else full

    def log(self, message: str) -> None:
        print(message, flush=True)


# --------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Row:
    """One line of a case's table.

    ``cells`` are the formatted values after the label column; ``values`` holds the raw numbers
    (for target checks and tests); ``ratio`` is the case's headline ratio for this row, or None
    when it could not be measured (then ``note`` says why).
    """

    key: str
    label: str
    cells: tuple[str, ...]
    values: Mapping[str, float] = field(default_factory=dict[str, float])
    ratio: float | None = None
    note: str = ""


@dataclass(frozen=True)
class Target:
    """A goal of the form ``metric <= limit``, evaluated on the measured rows."""

    text: str
    metric_label: str
    metric: Callable[[CaseResult], float | None]
    limit: float
    unit: str = TIMES

    def evaluate(self, result: CaseResult) -> Verdict:
        value = self.metric(result)
        if value is not None and not math.isfinite(value):
            value = None
        return Verdict(target=self, value=value)


@dataclass(frozen=True)
class Verdict:
    target: Target
    value: float | None

    @property
    def met(self) -> bool | None:
        return None if self.value is None else self.value <= self.target.limit

    @property
    def status(self) -> str:
        return {True: "met", False: "NOT met", None: "not evaluated"}[self.met]

    @property
    def measured(self) -> str:
        if self.value is None:
            return "could not be measured"
        return f"{self.target.metric_label} = {format_metric(self.value, self.target.unit)}"

    def line(self) -> str:
        limit = format_metric(self.target.limit, self.target.unit)
        return f"{self.target.text}: **{self.status}** ({self.measured}; target {LE} {limit})"


@dataclass(frozen=True)
class CaseResult:
    key: str
    title: str
    description: str
    parameters: str
    headers: tuple[str, ...]
    rows: tuple[Row, ...]
    verdicts: tuple[Verdict, ...] = ()
    footnotes: tuple[str, ...] = ()
    seconds: float = 0.0

    def row(self, key: str) -> Row | None:
        return next((r for r in self.rows if r.key == key), None)

    def ratio(self, key: str) -> float | None:
        row = self.row(key)
        return None if row is None else row.ratio


# --------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Case:
    """A registered benchmark: ``run`` measures and builds the rows; ``targets`` are checked
    against them afterwards."""

    key: str
    title: str
    run: Callable[[Settings], CaseResult]
    targets: tuple[Target, ...] = ()

    def execute(self, settings: Settings) -> CaseResult:
        start = time.perf_counter()
        result = self.run(settings)
        verdicts = tuple(t.evaluate(result) for t in self.targets)
        return CaseResult(
            key=self.key,
            title=self.title,
            description=result.description,
            parameters=result.parameters,
            headers=result.headers,
            rows=result.rows,
            verdicts=verdicts,
            footnotes=result.footnotes,
            seconds=time.perf_counter() - start,
        )


CASES: dict[str, Case] = {}


def case(
    key: str, title: str, *targets: Target
) -> Callable[[Callable[[Settings], CaseResult]], Callable[[Settings], CaseResult]]:
    """Register the decorated function as benchmark case ``key``."""

    def register(fn: Callable[[Settings], CaseResult]) -> Callable[[Settings], CaseResult]:
        if key in CASES:
            raise ValueError(f"duplicate benchmark case {key!r}")
        CASES[key] = Case(key=key, title=title, run=fn, targets=targets)
        return fn

    return register


def partial_result(
    description: str, parameters: str, headers: Sequence[str], rows: Sequence[Row], *notes: str
) -> CaseResult:
    """What a case function returns; :meth:`Case.execute` fills in key, title and verdicts."""
    return CaseResult(
        key="",
        title="",
        description=description,
        parameters=parameters,
        headers=tuple(headers),
        rows=tuple(rows),
        footnotes=notes,
    )


# --------------------------------------------------------------------------------- timing


@dataclass(frozen=True)
class Competitor:
    """One contestant in a timing case.

    ``group`` pairs a competitor with the streamkit competitor it is compared to (cases with
    several variants, such as ordered/unordered, use one group per variant). ``reference``
    marks the streamkit competitor of its group.
    """

    key: str
    label: str
    factory: RunnerFactory
    group: str = ""
    reference: bool = False


@dataclass
class Timing:
    competitor: Competitor
    samples: list[float] = field(default_factory=list[float])  # seconds
    note: str = ""

    @property
    def ok(self) -> bool:
        return not self.note

    @property
    def median(self) -> float:
        return statistics.median(self.samples)


def run_once(runner: Runner, n: int, limit: float) -> tuple[float, object]:
    """One measurement: a fresh event loop, the clock read around the pipeline only."""

    async def timed() -> tuple[float, object]:
        async with asyncio.timeout(limit):
            start = time.perf_counter()
            result = await runner(n)
            return time.perf_counter() - start, result

    gc.collect()
    return asyncio.run(timed())


def describe_error(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text if len(text) <= 160 else text[:157] + "..."


def prepare(
    competitors: Sequence[Competitor], settings: Settings
) -> list[tuple[Timing, Runner | None]]:
    """Call every factory; an unavailable competitor gets an "n/a: ..." note and no runner."""
    prepared: list[tuple[Timing, Runner | None]] = []
    for comp in competitors:
        timing = Timing(comp)
        runner: Runner | None = None
        try:
            runner = comp.factory()
        except UNAVAILABLE_ERRORS as exc:
            timing.note = f"n/a: {describe_error(exc)}"
            settings.log(f"    {comp.label}: {timing.note}")
        prepared.append((timing, runner))
    return prepared


def time_competitors(
    competitors: Sequence[Competitor],
    n: int,
    settings: Settings,
    verify: Callable[[int, object], str | None],
) -> list[Timing]:
    """Time every competitor ``settings.repeat`` times on ``n`` items, interleaved.

    One untimed warm-up run per competitor (at a tenth of the size) precedes the measurements.
    Within each repetition the order of the competitors is rotated so that none is always
    first. ``verify(n, result)`` returns None or a description of what is wrong; a competitor
    that raises or returns a wrong result is dropped with an "error: ..." note.
    """
    prepared = prepare(competitors, settings)
    active: list[tuple[Timing, Runner]] = [(t, r) for t, r in prepared if r is not None]

    def attempt(timing: Timing, runner: Runner, size: int) -> float | None:
        try:
            seconds, result = run_once(runner, size, settings.run_timeout)
        except TimeoutError:
            timing.note = f"error: a run took longer than {settings.run_timeout:g} s"
        except Exception as exc:
            timing.note = f"error: {describe_error(exc)}"
        else:
            problem = verify(size, result)
            if problem is None:
                return seconds
            timing.note = f"error: wrong result ({problem})"
        settings.log(f"    {timing.competitor.label}: {timing.note}")
        return None

    if settings.warmup:
        for timing, runner in active:
            attempt(timing, runner, max(n // 10, 1))
        active = [(t, r) for t, r in active if t.ok]

    for rep in range(settings.repeat):
        shift = rep % len(active) if active else 0
        for timing, runner in active[shift:] + active[:shift]:
            if timing.ok:
                seconds = attempt(timing, runner, n)
                if seconds is not None:
                    timing.samples.append(seconds)
        if settings.verbose:
            settings.log(f"    repetition {rep + 1}/{settings.repeat} done")
    for timing, _ in prepared:
        if timing.ok and not timing.samples:
            timing.note = "error: no sample"
    return [t for t, _ in prepared]


def timing_rows(timings: Sequence[Timing], *, over_reference: bool = False) -> list[Row]:
    """Rows of a timing table: median, spread, and streamkit's time divided by this one's.

    With ``over_reference``, the ratio is the other way round: this one's time divided by
    the reference's (for cases whose reference is the baseline, not streamkit).
    """
    references = {
        t.competitor.group: t for t in timings if t.competitor.reference and t.ok and t.samples
    }
    rows: list[Row] = []
    for t in timings:
        comp = t.competitor
        if not t.ok:
            rows.append(Row(comp.key, comp.label, ("-", "-", "-"), note=t.note))
            continue
        ref = references.get(comp.group)
        if ref is None:
            ratio = None
        else:
            ratio = t.median / ref.median if over_reference else ref.median / t.median
        if comp.reference:
            ratio_cell = "1.00 (reference)"
        elif ratio is None:
            ratio_cell = "n/a"
        else:
            ratio_cell = format_ratio(ratio)
        spread = f"{format_ms(min(t.samples) * 1e3)} to {format_ms(max(t.samples) * 1e3)}"
        rows.append(
            Row(
                comp.key,
                comp.label,
                (format_ms(t.median * 1e3), spread, ratio_cell),
                values={"median_ms": t.median * 1e3, "runs": len(t.samples)},
                ratio=ratio,
            )
        )
    return rows


TIMING_HEADERS = (
    "competitor",
    "median ms",
    "fastest to slowest ms",
    f"streamkit {DIVIDE} competitor (< 1 = streamkit faster)",
)


# --------------------------------------------------------------------------------- formatting


def format_ms(ms: float) -> str:
    if ms >= 100:
        return f"{ms:,.0f}"
    if ms >= 10:
        return f"{ms:.1f}"
    return f"{ms:.2f}"


def format_ratio(ratio: float) -> str:
    return f"{ratio:.2f}{TIMES}" if ratio >= 0.1 else f"{ratio:.3f}{TIMES}"


def format_bytes(n: float) -> str:
    size = abs(n)
    if size >= 1 << 30:
        text = f"{size / (1 << 30):.2f} GiB"
    elif size >= 1 << 20:
        text = f"{size / (1 << 20):.1f} MiB"
    elif size >= 1 << 10:
        text = f"{size / (1 << 10):.1f} KiB"
    else:
        text = f"{size:.0f} B"
    return f"-{text}" if n < 0 else text


def format_metric(value: float, unit: str) -> str:
    if unit == "bytes":
        return format_bytes(value)
    return format_ratio(value) if unit == TIMES else f"{value:.3g} {unit}"


def streamkit_over(key: str, reference: str = "streamkit") -> Callable[[CaseResult], float | None]:
    """Metric: streamkit's median divided by competitor ``key``'s median."""

    def metric(result: CaseResult) -> float | None:
        ref, other = result.row(reference), result.row(key)
        if ref is None or other is None or ref.ratio is None or other.ratio is None:
            return None
        return other.ratio

    return metric
