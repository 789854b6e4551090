"""Crash tests: real processes, SIGKILLed at random moments, resumed until they finish.

Each case of `tests.checkpoint_worker` runs once uninterrupted (without a checkpoint) and
then, under a checkpointed `Run`, is killed ``KILLS`` times at random moments (during
start-up, mid-stream, during a save) and restarted until an attempt reaches the end. The
contract, for a deterministic pipeline over a replayable source:

* every output of an attempt is an output of the uninterrupted run, and the attempts
  together yield all of them (at least once);
* an ordered pipeline's attempt yields a contiguous slice of the uninterrupted outputs,
  starting no later than where the attempts before it got to, and repeating only the
  outputs since the last completed checkpoint (a bounded replay);
* the table sink ends with exactly the uninterrupted outputs, each once; the store holds
  each dead letter once.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from streamkit import SQLiteStore
from streamkit._checkpointing import SAVE_LAG
from tests.checkpoint_worker import CASES, N
from tests.processes import no_writer_outlives

ROOT = Path(__file__).resolve().parent.parent
KILLS = int(os.environ.get("STREAMKIT_CRASH_KILLS", "20"))
EVERY = 10
REPLAY = (SAVE_LAG + 2) * EVERY + 24
"""The most outputs an attempt repeats: those of the checkpoint intervals a run may get
ahead of its store (`SAVE_LAG`, and the interval being saved, and the one before it) and
what the steps hold (concurrent calls, batches, windows), with room to spare."""


def start(
    folder: Path, case: str, *, attempt: int, plain: bool = False, writer: str = "auto"
) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-W", "error", "-m", "tests.checkpoint_worker"]
    name = "plain" if plain else "runs"
    paths = [str(folder / f"{name}.db"), str(folder / f"{name}.out")]
    extra = ["--plain"] if plain else ["--writer", writer]
    return subprocess.Popen(
        [
            *command,
            *paths,
            "--case",
            case,
            "--every",
            str(EVERY),
            "--attempt",
            str(attempt),
            *extra,
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def outputs(path: Path) -> dict[int, list[str]]:
    """The outputs of each attempt, in the order it wrote them (as JSON text)."""
    found: dict[int, list[str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        attempt, _, item = line.partition("\t")
        found.setdefault(int(attempt), []).append(item)
    return found


def uninterrupted(folder: Path, case: str) -> list[str]:
    process = start(folder, case, attempt=0, plain=True)
    _, error = process.communicate(timeout=60)
    assert process.returncode == 0, error.decode()
    return outputs(folder / "plain.out").get(0, [])


def written(path: Path, since: int) -> int:
    """Outputs written to ``path`` after byte ``since``."""
    try:
        with path.open("rb") as file:
            file.seek(since)
            return file.read().count(b"\n")
    except FileNotFoundError:
        return 0


def crash_and_resume(
    folder: Path,
    case: str,
    rng: random.Random,
    reference: list[str],
    *,
    resumes: bool,
    writer: str,
) -> int:
    """Kill the checkpointed run ``KILLS`` times, then let it finish; the attempts made.

    Each attempt is killed at a random moment: after a random number of outputs (up to a
    tenth of the run's outputs, so that it makes some progress and the run needs many
    attempts), or, one time in four, at a random time from its start (during start-up,
    or between outputs) if that comes first.

    A series of attempts that ends before ``KILLS`` kills starts over from scratch (the
    kills made so far still count). With ``resumes``, a series must also have an attempt
    that resumed past the first output (from a checkpoint that covered outputs); one
    that ended without such an attempt starts over too, with a few more kills to make.
    """
    out = folder / "runs.out"
    place = {item: n for n, item in enumerate(reference)}
    kills = attempt = 0
    wanted = KILLS
    resumed = not resumes
    while True:
        since = out.stat().st_size if out.exists() else 0
        process = start(folder, case, attempt=attempt, writer=writer)
        if kills < wanted:
            # One kill in four at a random moment of start-up or of the first outputs;
            # the others after a random number of outputs, whatever the machine's load.
            early = rng.random() < 0.25
            deadline = time.monotonic() + (rng.uniform(0.02, 0.4) if early else 60.0)
            enough = rng.randrange(max(16, len(reference) // 10))
            while process.poll() is None and time.monotonic() < deadline:
                if written(out, since) >= enough:
                    break
                time.sleep(0.001)
            if process.poll() is None:
                os.kill(process.pid, signal.SIGKILL)
                kills += 1
        _, error = process.communicate(timeout=60)
        assert process.returncode in (0, -signal.SIGKILL), error.decode()
        made = outputs(out).get(attempt, []) if out.exists() else []
        resumed = resumed or (bool(made) and place.get(made[0], 0) > 0)
        attempt += 1
        if process.returncode == 0:
            if kills >= wanted and resumed:
                return attempt
            if kills >= wanted:
                assert wanted < 3 * KILLS, f"no series of attempts resumed in {kills} kills"
                wanted = kills + 4
            # It finished too early: start over from scratch, keeping the count.
            resumed = not resumes
            for path in folder.glob("runs.*"):
                path.unlink()


def check_ordered(reference: list[str], attempts: list[list[str]], *, resumes: bool) -> None:
    place = {item: n for n, item in enumerate(reference)}
    assert len(place) == len(reference), "the case's outputs must be distinct"
    covered = 0
    resumed_later = False
    for n, out in enumerate(attempts):
        if not out:
            continue
        assert out[0] in place, f"attempt {n} yielded {out[0]}, which the run never does"
        begin = place[out[0]]
        assert out == reference[begin : begin + len(out)], f"attempt {n} is not a slice"
        assert begin <= covered, f"attempt {n} skipped outputs {covered}..{begin}"
        assert covered - begin <= REPLAY, f"attempt {n} replayed {covered - begin} outputs"
        resumed_later = resumed_later or begin > 0
        covered = max(covered, begin + len(out))
    assert covered == len(reference)
    if resumes:
        assert resumed_later, "no attempt resumed from a checkpoint"


def check_unordered(reference: list[str], attempts: list[list[str]]) -> None:
    expected = set(reference)
    assert len(expected) == len(reference), "the case's outputs must be distinct"
    for n, out in enumerate(attempts):
        assert set(out) <= expected, f"attempt {n} yielded outputs the run never does"
        assert len(set(out)) == len(out), f"attempt {n} yielded an output twice"
    assert set().union(*attempts) == expected


def check_subsequence(reference: list[str], attempts: list[list[str]]) -> None:
    # debounce: which items survive depends on timing; each attempt yields items of the
    # input, in order, and the last attempt ends with the input's last item, as the
    # uninterrupted run does.
    for out in attempts:
        values = [json.loads(item) for item in out]
        assert values == sorted(set(values))
        assert set(values) <= set(range(1, N + 1))
    assert reference[-1] == json.dumps(N)
    assert attempts[-1][-1] == reference[-1]


async def sink_and_letters(db: Path) -> tuple[list[Any], list[Any]]:
    async with SQLiteStore(db) as store:
        letters = [record.record for record in await store.dead_letters("crash")]
        try:
            rows = [json.loads(row["value"]) for row in await store.table_rows("out")]
        except Exception:  # no such table: the case has no sink
            rows = []
    return rows, letters


# Every case with the default writer, "auto": saves start on the store's thread and move
# to the writer process once it is ready (the attempts are short, so many are killed
# before it is, or just after). Where a save is made does not change what the operators
# snapshot, so the cases whose saves carry the most run with every save in the writer
# process too: the sink table, dead letters, and a few kinds of stage.
IN_PROCESS = (
    "concurrent-ordered",
    "dead-letters",
    "group_by",
    "map-filter",
    "reduce_point",
    "table-sink",
    "windowed-late",
)
WRITERS = [
    *((case, "auto") for case in sorted(CASES)),
    *((case, "process") for case in IN_PROCESS),
]


@pytest.mark.parametrize(("case", "writer"), WRITERS, ids=[f"{c}-{w}" for c, w in WRITERS])
def test_killed_at_random_moments_and_resumed(tmp_path: Path, case: str, writer: str) -> None:
    spec = CASES[case]
    reference = uninterrupted(tmp_path, case)
    assert reference
    rng = random.Random(f"{case} {writer}")
    made = crash_and_resume(
        tmp_path, case, rng, reference, resumes=spec.ordered and spec.resumes, writer=writer
    )
    if sys.platform == "linux":
        no_writer_outlives(tmp_path / "runs.db")
    found = outputs(tmp_path / "runs.out")
    attempts = [found.get(n, []) for n in range(made)]
    # Only the attempts of the last series count (a series that finished too early was
    # thrown away with its store, and its outputs with it).
    if spec.subsequence:
        check_subsequence(reference, attempts)
    elif spec.ordered:
        check_ordered(reference, attempts, resumes=spec.resumes)
    else:
        check_unordered(reference, attempts)
    rows, letters = asyncio.run(sink_and_letters(tmp_path / "runs.db"))
    if spec.table:
        assert [json.dumps(row) for row in rows] == reference  # exactly once, in order
    if spec.dead_letters:
        bad = Counter(letter["item"] for letter in letters)
        assert sorted(bad) == [x for x in range(1, N + 1) if x % 7 == 3]
        assert set(bad.values()) == {1}  # each bad item once, whatever the crashes
        assert len(letters) == spec.dead_letters
