"""The compiled envelope's rows: the same competitors, timed in a child process that loads it.

``python -m benchmarks`` runs with the pure envelope (``STREAMKIT_NO_COMPILED=1``, set by
``benchmarks/__main__.py``); the cases that report both builds time their competitors a second
time in a child without that variable, where the compiled envelope is used when it is built
(``make compiled``); `main` is that child.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence

from benchmarks.harness import Competitor, Settings, Timing, time_competitors

#: Per case: its competitors and the ``verify`` of their results.
Rows = Callable[[Settings], tuple[Sequence[Competitor], Callable[[int, object], "str | None"]]]
ROWS: dict[str, Rows] = {}

PREFIX = "compiled_"
_CHILD = "import sys; from benchmarks.compiled import main; raise SystemExit(main(sys.argv[1:]))"


@functools.cache
def available() -> bool:
    """Whether a child process of the harness gets the compiled envelope (it is built)."""
    script = "import streamkit._records as r; print(r.COMPILED)"
    done = subprocess.run(
        [sys.executable, "-c", script], env=_child_env(), capture_output=True, text=True, check=True
    )
    return done.stdout.strip() == "True"


def _child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "STREAMKIT_NO_COMPILED"}
    env["STREAMKIT_BENCH_CHILD"] = "1"
    return env


def compiled_timings(
    case_key: str, keys: Sequence[str], n: int, settings: Settings
) -> list[Timing]:
    """Time the competitors ``keys`` of ``case_key`` with the compiled envelope, in a child.

    Their keys get the prefix ``compiled_`` and their labels "compiled envelope: ". Empty
    when the compiled envelope is not built, or when this process is that child.
    """
    if os.environ.get("STREAMKIT_BENCH_CHILD"):
        return []
    request = {"case": case_key, "keys": list(keys), "n": n, "quick": settings.quick}
    request["repeat"] = settings.repeat
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(request)],
        env=_child_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the compiled envelope's child failed: {done.stderr.strip()[-500:]}")
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    if not answer["compiled"]:
        return []
    competitors, _ = ROWS[case_key](settings)
    by_key = {c.key: c for c in competitors}
    timings: list[Timing] = []
    for key in keys:
        base = by_key[key]
        competitor = Competitor(PREFIX + key, f"compiled envelope: {base.label}", base.factory)
        got = answer["timings"][key]
        timings.append(Timing(competitor, samples=got["samples"], note=got["note"]))
    return timings


def main(argv: Sequence[str]) -> int:
    """The child: time the requested competitors, print their samples as JSON."""
    import importlib

    import streamkit._records

    importlib.import_module("benchmarks.cases_state")  # registers its ROWS

    request = json.loads(argv[0])
    answer: dict[str, object] = {"compiled": streamkit._records.COMPILED, "timings": {}}
    if streamkit._records.COMPILED:
        settings = Settings(quick=request["quick"], repeat=request["repeat"])
        competitors, verify = ROWS[request["case"]](settings)
        chosen = [c for c in competitors if c.key in request["keys"]]
        timings = time_competitors(chosen, request["n"], settings, verify)
        answer["timings"] = {
            t.competitor.key: {"samples": t.samples, "note": t.note} for t in timings
        }
    print(json.dumps(answer))
    return 0
