"""Command line: ``python -m benchmarks [--quick] [--cases a,b] [--repeat N] [--[no-]write]``."""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING

from benchmarks import CASES, Settings, run_cases
from benchmarks.report import (
    DOC_PATH,
    collect_environment,
    load_average,
    plain_text,
    python_command,
    read_notes,
    render_markdown,
    render_text,
    write_doc,
)

if TYPE_CHECKING:
    from collections.abc import Sequence


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Time streamkit against hand-written code and other libraries, print the "
        "results, and (for a full run of all cases) rewrite docs/performance.md.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny sizes and 1 repetition; does not write the doc unless --write is given",
    )
    parser.add_argument(
        "--cases",
        default=",".join(sorted(CASES)),
        help=f"comma-separated cases to run (default: all of {','.join(sorted(CASES))}); a subset "
        "does not write the doc unless --write is given",
    )
    parser.add_argument("--repeat", type=int, default=None, help="timed repetitions (default 5)")
    write = parser.add_mutually_exclusive_group()
    write.add_argument("--write", action="store_true", help=f"rewrite {DOC_PATH.name}")
    write.add_argument("--no-write", action="store_true", help=f"do not rewrite {DOC_PATH.name}")
    parser.add_argument("--verbose", action="store_true", help="report each repetition")
    args = parser.parse_args(argv)
    keys = [key.strip() for key in args.cases.split(",") if key.strip()]
    unknown = [key for key in keys if key not in CASES]
    if unknown or not keys:
        parser.error(f"unknown case(s) {','.join(unknown)}; choose from {','.join(sorted(CASES))}")
    if args.repeat is not None and args.repeat < 1:
        parser.error("--repeat must be at least 1")
    args.keys = keys
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    repeat = args.repeat if args.repeat is not None else (1 if args.quick else 5)
    settings = Settings(quick=args.quick, repeat=repeat, verbose=args.verbose)
    full_run = not args.quick and set(args.keys) == set(CASES)
    write = args.write or (full_run and not args.no_write)

    env = collect_environment()  # before the run: the load average shows what else was running
    start = time.perf_counter()
    results = run_cases(
        args.keys, settings, on_result=lambda result: print(render_text(result) + "\n", flush=True)
    )
    seconds = time.perf_counter() - start

    print("Targets:")
    for result in results:
        for verdict in result.verdicts:
            print(f"  ({result.key}) {plain_text(verdict.line())}")
    print(f"\n{len(results)} case(s) in {seconds:.0f} s.")

    if write:
        markdown = render_markdown(
            results,
            settings,
            env=env,
            notes=read_notes(),
            command=python_command(argv),
            seconds=seconds,
            load_at_end=load_average(),
        )
        write_doc(markdown)
        print(f"Wrote {DOC_PATH}.")
    else:
        print(f"{DOC_PATH.name} not rewritten (use --write to rewrite it).")
    failures = [
        f"({result.key}) {row.label}: {row.note}"
        for result in results
        for row in result.rows
        if row.note.startswith("error:")
    ]
    if failures:
        print("\nSome competitors failed (exit status 1):", *failures, sep="\n  ")
    return 1 if failures else 0
