"""Benchmark harness for streamkit: ``python -m benchmarks`` (``make bench``).

Cases live in the ``cases_*`` modules and register themselves with :func:`case`; a new case is
a function ``Settings -> CaseResult`` decorated with ``@case("f", "title", *targets)`` in a
module imported below. Results are rendered to the terminal and to docs/performance.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from benchmarks import (
    cases_checkpoint,
    cases_combine,
    cases_concurrency,
    cases_kafka,
    cases_keyed,
    cases_memory,
    cases_paths,
    cases_pipeline,
    cases_redis,
    cases_run,
    cases_state,
    cases_windows,
)
from benchmarks.harness import CASES, Case, CaseResult, Competitor, Row, Settings, Target, case
from benchmarks.report import render_markdown, render_table, render_text

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

__all__ = [
    "CASES",
    "Case",
    "CaseResult",
    "Competitor",
    "Row",
    "Settings",
    "Target",
    "case",
    "cases_checkpoint",
    "cases_combine",
    "cases_concurrency",
    "cases_kafka",
    "cases_keyed",
    "cases_memory",
    "cases_paths",
    "cases_pipeline",
    "cases_redis",
    "cases_run",
    "cases_state",
    "cases_windows",
    "render_markdown",
    "render_table",
    "render_text",
    "run_cases",
]


def run_cases(
    keys: Iterable[str] | None = None,
    settings: Settings | None = None,
    *,
    on_result: Callable[[CaseResult], None] | None = None,
) -> list[CaseResult]:
    """Run the named cases (all registered cases by default) and return their results."""
    settings = settings or Settings()
    selected = sorted(CASES) if keys is None else list(keys)
    unknown = [key for key in selected if key not in CASES]
    if unknown:
        raise KeyError(f"unknown case(s) {', '.join(unknown)}; known: {', '.join(CASES)}")
    results: list[CaseResult] = []
    for key in selected:
        settings.log(f"({key}) {CASES[key].title} ...")
        result = CASES[key].execute(settings)
        if on_result is not None:
            on_result(result)
        results.append(result)
    return results
