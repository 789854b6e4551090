"""Rendering: plain-text tables for the terminal, docs/performance.md, environment facts."""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

    from benchmarks.harness import CaseResult, Row, Settings

REPO_ROOT = Path(__file__).resolve().parent.parent
DOC_PATH = REPO_ROOT / "docs" / "performance.md"
NOTES_START = "<!-- notes:start -->"
NOTES_END = "<!-- notes:end -->"
DEFAULT_NOTES = (
    "_No notes yet. Text written between the `notes:start` and `notes:end` markers in this "
    "file is kept when the file is regenerated; everything else is rewritten._"
)
LIBRARIES = ("streamkit", "aiostream", "asyncstdlib", "aioitertools")


# --------------------------------------------------------------------------------- environment


@dataclass(frozen=True)
class Environment:
    cpu: str
    machine: str
    cpu_count: int
    platform: str
    python: str
    versions: dict[str, str]
    date: str
    load_average: float | None  # 1-minute load average when the environment was collected


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_revision() -> str:
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--", "streamkit"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return f"git {head}" + (", with uncommitted changes in streamkit/" if dirty else "")


def library_version(name: str) -> str:
    if name == "streamkit":
        try:
            import streamkit
        except ImportError as exc:
            return f"not importable ({exc})"
        version = getattr(streamkit, "__version__", None)
        if not isinstance(version, str):
            try:
                version = metadata.version("streamkit")
            except metadata.PackageNotFoundError:
                version = "unknown version"
        revision = _git_revision()
        return f"{version} ({revision})" if revision else version
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def collect_environment() -> Environment:
    return Environment(
        cpu=_cpu_model(),
        machine=platform.machine(),
        cpu_count=os.cpu_count() or 0,
        platform=platform.platform(),
        python=f"{platform.python_implementation()} {platform.python_version()}",
        versions={name: library_version(name) for name in LIBRARIES},
        date=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        load_average=load_average(),
    )


def load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:  # not available on this platform
        return None


# --------------------------------------------------------------------------------- tables


def _cells(row: Row) -> list[str]:
    cells = [row.label, *row.cells]
    if row.note:
        cells[-1] = row.note
    return cells


def _escape(cell: str) -> str:
    return cell.replace("|", r"\|")


def render_table(headers: Sequence[str], rows: Sequence[Row], *, markdown: bool = True) -> str:
    """An aligned table; valid Markdown when ``markdown`` (pipes in cells are escaped)."""
    lines = [list(headers), *(_cells(r) for r in rows)]
    if markdown:
        lines = [[_escape(cell) for cell in line] for line in lines]
    widths = [max(len(line[i]) for line in lines) for i in range(len(headers))]

    def fmt(line: Sequence[str]) -> str:
        padded = [
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(line, widths, strict=True))
        ]
        return ("| " + " | ".join(padded) + " |") if markdown else "  ".join(padded).rstrip()

    if markdown:  # left-align the label column, right-align the numbers
        dashes = [f":{'-' * (widths[0] + 1)}", *(f"{'-' * (w + 1)}:" for w in widths[1:])]
        rule = "|" + "|".join(dashes) + "|"
    else:
        rule = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(lines[0]), rule, *(fmt(line) for line in lines[1:])])


def render_text(result: CaseResult) -> str:
    """What the terminal shows for one case."""
    parts = [
        f"({result.key}) {result.title}  [{result.parameters}; {result.seconds:.1f} s]",
        render_table(result.headers, result.rows, markdown=False),
    ]
    parts.extend(f"  target {plain_text(v.line())}" for v in result.verdicts)
    return "\n".join(parts)


def plain_text(text: str) -> str:
    return text.replace("**", "")


# --------------------------------------------------------------------------------- markdown


def render_markdown(
    results: Sequence[CaseResult],
    settings: Settings,
    *,
    env: Environment | None = None,
    notes: str | None = None,
    command: str = "python -m benchmarks",
    seconds: float | None = None,
    load_at_end: float | None = None,
) -> str:
    env = env or collect_environment()
    out: list[str] = [
        "# Performance",
        "",
        "<!-- Generated by `python -m benchmarks` (`make bench`). Only the text between the "
        "notes:start and notes:end markers survives regeneration. -->",
        "",
        "streamkit is timed against hand-written async generators, hand-rolled asyncio "
        "loops and other async iteration libraries (aiostream, asyncstdlib, aioitertools), "
        "all in one process and side by side. Each timing case runs every competitor once "
        "untimed (warm-up, at a tenth of the size) and then "
        f"{settings.repeat} timed repetition{'s' if settings.repeat != 1 else ''}; within a "
        "repetition the competitors take turns (the starting one rotates), so they share the "
        "machine's noise. Every run gets a fresh event loop (`asyncio.run`) after "
        "`gc.collect()`, the clock (`time.perf_counter`) is read around the pipeline only, and "
        "every competitor's output is checked. Tables give the median and the fastest and "
        f"slowest run. **Ratios are streamkit {_DIV} competitor**: below 1 means streamkit "
        "is faster.",
        "",
    ]
    if settings.quick:
        out += [
            "> **Quick run** (`--quick`): tiny sizes, numbers dominated by fixed costs; "
            "not representative.",
            "",
        ]
    out += [
        "## Environment",
        "",
        f"- Machine: {env.cpu} ({env.machine}), {env.cpu_count} CPUs",
        f"- Platform: `{env.platform}`",
        f"- Python: {env.python}",
        *(f"- {name}: {version}" for name, version in env.versions.items()),
        f"- Date: {env.date}",
        *_load_line(env, load_at_end),
        f"- Command: `{command}`" + (f", {seconds:.0f} s in all" if seconds is not None else ""),
        "",
        "## Targets",
        "",
        "| case | target | result | measured |",
        "|:-----|:-------|:-------|---------:|",
    ]
    for result in results:
        for v in result.verdicts:
            cells = [f"({result.key})", v.target.text, f"**{v.status}**", v.measured]
            out.append("| " + " | ".join(_escape(c) for c in cells) + " |")
    out += ["", "## Notes", "", NOTES_START, notes if notes is not None else DEFAULT_NOTES]
    out += [NOTES_END, ""]
    for result in results:
        out += [
            f"## ({result.key}) {result.title}",
            "",
            result.description,
            "",
            f"Parameters: {result.parameters}. This case took {result.seconds:.1f} s.",
            "",
            render_table(result.headers, result.rows),
            "",
        ]
        if result.footnotes:
            out += [*result.footnotes, ""]
        out += [f"- {v.line()}" for v in result.verdicts]
        if result.verdicts:
            out.append("")
    return "\n".join(out)


_DIV = "\N{DIVISION SIGN}"


def _load_line(env: Environment, load_at_end: float | None) -> list[str]:
    if env.load_average is None:
        return []
    if load_at_end is None:
        return [f"- Load average (1 min) before the run: {env.load_average:.2f}"]
    return [
        f"- Load average (1 min): {env.load_average:.2f} before the run, {load_at_end:.2f} at "
        "the end (the harness accounts for about 1 of the latter; more than that on "
        f"{env.cpu_count} CPUs means other work ran alongside and the numbers are noisier)"
    ]


def extract_notes(text: str) -> str | None:
    """The hand-written text between the notes markers, if the file has them."""
    match = re.search(re.escape(NOTES_START) + r"\n?(.*?)\n?" + re.escape(NOTES_END), text, re.S)
    return match.group(1) if match else None


def read_notes(path: Path = DOC_PATH) -> str | None:
    return extract_notes(path.read_text(encoding="utf-8")) if path.exists() else None


def write_doc(markdown: str, path: Path = DOC_PATH) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(markdown, encoding="utf-8")


def python_command(argv: Sequence[str]) -> str:
    return " ".join(["python -m benchmarks", *argv])
