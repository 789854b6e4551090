"""The ``streamkit`` command, run as a user runs it: ``python -m streamkit`` in a subprocess.

Each test works in its own directory holding a small pipeline module (``jobs.py``) and an
input file of numbers. The subprocesses run with ``-W error``. What the command prints is
asserted exactly where it is meant for people to read (error lines), and through JSON or
the output files otherwise; docs/cli.md's session is replayed with timings and ids
normalised.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import tomllib
from pathlib import Path

import pytest

import streamkit

ROOT = Path(__file__).resolve().parent.parent
NUMBERS = [str(n) for n in range(1, 31)]

JOBS = """
import asyncio
import os

from collections.abc import AsyncIterator

from streamkit import Stage, filter_, map_, set_state, stage


def parse(line: str) -> int:
    return int(line)


async def check(n: int) -> int:
    if os.environ.get("SLOW"):
        await asyncio.sleep(float(os.environ["SLOW"]))
    if os.environ.get("FAIL_AT") == str(n):
        raise ValueError(f"bad number {n}")
    return n


def keep(n: int) -> bool:
    return n % 3 != 0


def describe(n: int) -> dict[str, int]:
    return {"n": n, "square": n * n}


pipeline = map_(parse) | map_(check) | filter_(keep) | map_(describe)
texts = map_(str.upper)
enveloped = set_state("length", len)
unordered = map_(parse) | map_(check, concurrency=2, ordered=False)
not_a_stage = 42


@stage
async def numbered(items: AsyncIterator[int]) -> AsyncIterator[str]:
    n = 0  # kept between items, and not declared: a checkpoint could not restore it
    async for item in items:
        n += 1
        yield f"{n}: {item}"


undeclared = map_(parse) | numbered()
lenient = map_(parse) | map_(check, on_error="split", dead_letter=lambda record: None)


def build() -> Stage[str, str]:
    return map_(str.lower)


def needs_arguments(factor: int) -> Stage[str, str]:
    return map_(str.lower)
"""


def expected(numbers: range) -> list[str]:
    """The lines ``jobs:pipeline`` writes for these input numbers."""
    return [json.dumps({"n": n, "square": n * n}) for n in numbers if n % 3 != 0]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "jobs.py").write_text(JOBS, encoding="utf-8")
    (tmp_path / "raises.py").write_text('raise RuntimeError("no database configured")\n')
    (tmp_path / "numbers.txt").write_text("\n".join(NUMBERS) + "\n", encoding="utf-8")
    return tmp_path


def environment(**extra: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "COLUMNS")
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env | extra


def command(*args: str) -> list[str]:
    return [sys.executable, "-W", "error", "-m", "streamkit", *args]


def streamkit_run(
    cwd: Path, *args: str, stdin: str = "", merged: bool = False, **env: str
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        command(*args),
        cwd=cwd,
        input=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merged else subprocess.PIPE,
        text=True,
        encoding="utf-8",
        env=environment(**env),
        timeout=60,
        check=False,
    )
    # No traceback escapes, unless asked for (a dead letter's record holds one as data).
    shown = (result.stderr or "") + ("" if args[:1] == ("dead-letters",) else result.stdout)
    assert "Traceback" not in shown or "--traceback" in args
    return result


def last_line(text: str) -> str:
    return text.rstrip("\n").splitlines()[-1]


# --------------------------------------------------------------------------- packaging


def test_console_script_and_cli_extra_are_declared() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["scripts"] == {"streamkit": "streamkit._cli:main"}
    extras = project["optional-dependencies"]
    assert any(requirement.startswith("rich>=13") for requirement in extras["cli"])
    dev = extras["dev"]
    assert len(dev) == 1
    assert "cli" in re.split(r"[\[\],]", dev[0])


def test_version_and_help(tmp_path: Path) -> None:
    version = streamkit_run(tmp_path, "--version")
    assert (version.returncode, version.stdout) == (0, f"streamkit {streamkit.__version__}\n")
    helped = streamkit_run(tmp_path, "run", "--help")
    assert helped.returncode == 0
    assert "MODULE:ATTR" in helped.stdout
    assert "--checkpoint DB" in helped.stdout


# --------------------------------------------------------------------------- running


def test_run_writes_one_result_per_line_and_the_statistics(project: Path) -> None:
    result = streamkit_run(project, "run", "jobs:pipeline", "--input", "numbers.txt")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == expected(range(1, 31))
    stderr = result.stderr.splitlines()
    assert stderr[0].split() == [
        "stage",
        "status",
        "in",
        "out",
        "filtered",
        "errors",
        "retries",
        "p50",
        "p95",
        "items/s",
    ]
    rows = {line.split()[0]: line.split()[1:6] for line in stderr[2:6]}
    assert rows == {
        "map_(parse)": ["succeeded", "30", "30", "0", "0"],
        "map_(check)": ["succeeded", "30", "30", "0", "0"],
        "filter_(keep)": ["succeeded", "30", "20", "10", "0"],
        "map_(describe)": ["succeeded", "20", "20", "0", "0"],
    }
    assert re.fullmatch(
        r"run [0-9]{8}T[0-9]{12}Z-jobs\.pipeline-[0-9a-f]{8} succeeded: 20 items out in \S+ \S+",
        stderr[6],
    )
    assert len(stderr) == 7


def test_the_statistics_table_shows_stage_names(project: Path) -> None:
    (project / "named.py").write_text(
        "from streamkit import filter_, map_\n"
        "pipeline = map_(int, name='parse') | filter_(lambda n: n % 3 != 0, name='no-threes')\n",
        encoding="utf-8",
    )
    result = streamkit_run(project, "run", "named:pipeline", "--input", "numbers.txt")
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split()[1:5] for line in result.stderr.splitlines()[2:4]}
    assert rows == {
        "parse": ["succeeded", "30", "30", "0"],
        "no-threes": ["succeeded", "30", "20", "10"],
    }


def test_run_reads_stdin_and_writes_files_strings_as_they_are(project: Path) -> None:
    result = streamkit_run(
        project, "run", "jobs.py:texts", "--output", "out.txt", stdin="ab\r\ncd\n\nzoë"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert (project / "out.txt").read_text(encoding="utf-8") == "AB\nCD\n\nZOË\n"


def test_envelopes_are_written_as_their_value_and_factories_are_called(project: Path) -> None:
    enveloped = streamkit_run(project, "run", "jobs:enveloped", "--no-progress", stdin="a\nB\n")
    assert (enveloped.returncode, enveloped.stdout) == (0, "a\nB\n")
    built = streamkit_run(project, "run", "jobs:build", "--metrics", "json", stdin="A\nB\n")
    assert (built.returncode, built.stdout) == (0, "a\nb\n")
    assert json.loads(built.stderr)["name"] == "jobs.build"


def test_metrics_json_is_the_run_statistics(project: Path) -> None:
    result = streamkit_run(
        project,
        "run",
        "jobs:pipeline",
        "--input",
        "numbers.txt",
        "--metrics",
        "json",
        "--name",
        "squares",
    )
    assert result.returncode == 0, result.stderr
    stats = json.loads(last_line(result.stderr))
    assert len(result.stderr.splitlines()) == 1
    assert (stats["name"], stats["status"], stats["items_out"]) == ("squares", "succeeded", 20)
    assert [(s["key"], s["items_in"], s["items_out"]) for s in stats["stages"]] == [
        ("map_(parse)", 30, 30),
        ("map_(check)", 30, 30),
        ("filter_(keep)", 30, 20),
        ("map_(describe)", 20, 20),
    ]


# --------------------------------------------------------------------------- usage errors


USAGE_ERRORS = [
    (["run", "jobs"], "expected MODULE:ATTR (a module or a .py file, a colon, a name), got 'jobs'"),
    (
        ["run", "jobs:"],
        "expected MODULE:ATTR (a module or a .py file, a colon, a name), got 'jobs:'",
    ),
    (
        ["run", "nowhere:pipeline"],
        "no module named 'nowhere' (in the current directory or the installed packages)",
    ),
    (["run", "missing.py:pipeline"], "no such file: missing.py"),
    (["run", "raises:pipeline"], "importing raises raised RuntimeError: no database configured"),
    (
        ["run", "raises.py:pipeline"],
        "importing raises.py raised RuntimeError: no database configured",
    ),
    (["run", "jobs:nothing"], "module jobs has no attribute 'nothing'"),
    (["run", "jobs:not_a_stage"], "jobs:not_a_stage is an int, not a streamkit Stage"),
    (
        ["run", "jobs:needs_arguments"],
        "jobs:needs_arguments is a function that takes arguments: name a Stage, "
        "or a function of no arguments that returns one",
    ),
    (
        ["run", "jobs:texts", "--input", "absent.txt"],
        "cannot read the input absent.txt: No such file or directory",
    ),
    (
        ["run", "jobs:texts", "--checkpoint", "runs.db"],
        "--checkpoint needs --input FILE: standard input cannot be resumed",
    ),
    (
        ["run", "jobs:texts", "--input", "numbers.txt", "--resume"],
        "--resume needs --checkpoint DB",
    ),
    (
        ["run", "jobs:texts", "--every", "0"],
        "argument --every: expected a positive integer, got '0' (see 'streamkit run --help')",
    ),
    (
        ["run", "jobs:texts", "--metrics", "xml"],
        "argument --metrics: invalid choice: 'xml' (choose from 'table', 'json') "
        "(see 'streamkit run --help')",
    ),
    (
        ["run", "jobs:texts", "--name", "../etc"],
        "--name must be 1 to 64 letters, digits, '_', '.' or '-', starting with a letter "
        "or a digit, got '../etc'",
    ),
    (
        ["run", "jobs:texts", "--state-history", "numbers.txt"],
        "cannot use numbers.txt as the state history: not a directory",
    ),
    (["history", "nowhere"], "no state-history directory nowhere"),
    ([], "the following arguments are required: COMMAND (see 'streamkit --help')"),
]


@pytest.mark.parametrize(("args", "message"), USAGE_ERRORS, ids=lambda v: " ".join(v)[:40])
def test_usage_errors_are_one_line(project: Path, args: list[str], message: str) -> None:
    result = streamkit_run(project, *args)
    assert (result.returncode, result.stderr) == (2, f"streamkit: error: {message}\n")
    assert result.stdout == ""


def test_a_corrupt_checkpoint_file_is_a_usage_error(project: Path) -> None:
    (project / "runs.db").write_bytes(b"not a database " * 100)
    result = streamkit_run(
        project, "run", "jobs:pipeline", "--input", "numbers.txt", "--checkpoint", "runs.db"
    )
    assert (result.returncode, result.stderr) == (
        2,
        "streamkit: error: runs.db: run 'jobs.pipeline': file is not a database\n",
    )


def test_a_stage_that_keeps_undeclared_state_is_a_usage_error(project: Path) -> None:
    result = streamkit_run(
        project, "run", "jobs:undeclared", "--input", "numbers.txt", "--checkpoint", "runs.db"
    )
    assert result.returncode == 2
    assert result.stderr.startswith(
        "streamkit: error: checkpoint=: step 1, numbered(), does not say what state it keeps"
    )
    assert result.stderr.count("\n") == 1


def test_dead_letters_are_saved_once_and_printed_by_the_command(project: Path) -> None:
    args = ("run", "jobs:lenient", "--input", "numbers.txt", "--output", "out.txt")
    args += ("--checkpoint", "runs.db", "--every", "5")
    result = streamkit_run(project, *args, FAIL_AT="23")
    assert result.returncode == 0, result.stderr
    again = streamkit_run(project, *args, "--resume", FAIL_AT="23")  # a finished run: no-op
    assert again.returncode == 0, again.stderr
    listed = streamkit_run(project, "dead-letters", "runs.db", "jobs.lenient")
    assert listed.returncode == 0, listed.stderr
    letters = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(d["stage"], d["index"], d["record"]["item"]) for d in letters] == [("1", 22, 23)]
    assert letters[0]["record"]["exception"]["message"] == "bad number 23"
    assert letters[0]["name"] == "jobs.lenient"
    missing = streamkit_run(project, "dead-letters", "nothing.db", "jobs.lenient")
    assert (missing.returncode, missing.stderr) == (
        2,
        "streamkit: error: nothing.db: no such file\n",
    )


def test_an_unordered_concurrent_pipeline_checkpoints(project: Path) -> None:
    args = ("run", "jobs:unordered", "--input", "numbers.txt", "--output", "out.txt")
    result = streamkit_run(project, *args, "--checkpoint", "runs.db", "--every", "4")
    assert result.returncode == 0, result.stderr
    assert "checkpoint: 30 input lines done, saved in runs.db\n" in result.stderr
    written = (project / "out.txt").read_text().splitlines()
    assert sorted(map(int, written)) == list(range(1, 31))


def test_without_rich_the_command_says_what_to_install(project: Path) -> None:
    hide_rich = (
        "import sys; sys.modules['rich'] = None; from streamkit._cli import main; "
        "sys.exit(main(['run', 'jobs:texts']))"
    )
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", hide_rich],
        cwd=project,
        capture_output=True,
        text=True,
        env=environment(),
        timeout=60,
        check=False,
    )
    assert (result.returncode, result.stderr) == (
        2,
        "streamkit: error: the streamkit command needs rich, which is not installed: "
        "pip install 'streamkit[cli]'\n",
    )


# --------------------------------------------------------------------------- failures


def test_a_failing_pipeline_is_one_line_naming_the_stage(project: Path) -> None:
    args = ("run", "jobs:pipeline", "--input", "numbers.txt")
    result = streamkit_run(project, *args, FAIL_AT="7")
    assert result.returncode == 1
    assert result.stdout.splitlines() == expected(range(1, 7))
    assert last_line(result.stderr) == (
        "streamkit: error: the pipeline failed: ValueError: bad number 7 "
        "(raised by map_(check) on item 6 of its input)"
    )
    assert re.search(r"^map_\(check\) +failed +7 +6 ", result.stderr, re.MULTILINE)
    shown = streamkit_run(project, *args, "--traceback", FAIL_AT="7")
    assert shown.returncode == 1
    assert "Traceback (most recent call last)" in shown.stderr
    assert "ValueError: bad number 7" in shown.stderr


def test_resume_continues_after_the_last_checkpoint(project: Path) -> None:
    args = ("run", "jobs:pipeline", "--input", "numbers.txt", "--output", "out.txt")
    args += ("--checkpoint", "runs.db", "--every", "5", "--state-history", "history")
    failed = streamkit_run(project, *args, FAIL_AT="23")
    assert failed.returncode == 1
    first = (project / "out.txt").read_text().splitlines()
    assert first == expected(range(1, 23))
    found = re.search(
        r"^checkpoint: (\d+) input lines done, saved in runs\.db "
        r"\(--resume continues from there\)$",
        failed.stderr,
        re.MULTILINE,
    )
    assert found is not None, failed.stderr
    done = int(found[1])
    assert 15 <= done <= 22
    failed_id = re.search(r"^run (\S+) failed: ", failed.stderr, re.MULTILINE)
    assert failed_id is not None

    resumed = streamkit_run(project, *args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert f"streamkit: resuming jobs.pipeline after {done} input lines\n" in resumed.stderr
    # At least once: the lines after the checkpoint are written again, appended.
    assert (project / "out.txt").read_text().splitlines() == first + expected(range(done + 1, 31))
    assert "checkpoint: 30 input lines done, saved in runs.db\n" in resumed.stderr

    again = streamkit_run(project, *args)
    assert again.returncode == 0, again.stderr
    assert again.stderr.startswith(
        "streamkit: run jobs.pipeline has a checkpoint after 30 input lines in runs.db: "
        "starting over (--resume continues it)\n"
    )
    assert (project / "out.txt").read_text().splitlines() == expected(range(1, 31))

    # The three runs are in the history; a run that never ended shows as such.
    history = project / "history"
    killed = history / "29991231T235959999999Z-jobs.pipeline-0123abcd"
    killed.mkdir()
    shutil.copy(history / failed_id[1] / "run_start.json", killed / "run_start.json")
    listed = streamkit_run(project, "history", "history")
    assert listed.returncode == 0, listed.stderr
    rows = [line.split() for line in listed.stderr.splitlines()[2:]]
    assert [row[1:4] for row in rows[:3]] == [
        ["jobs.pipeline", "failed", str(len(first))],
        ["jobs.pipeline", "succeeded", str(len(expected(range(done + 1, 31))))],
        ["jobs.pipeline", "succeeded", "20"],
    ]
    assert rows[3][1:7] == ["jobs.pipeline", "running", "or", "killed", "-", "-"]

    shown = streamkit_run(project, "history", "history", failed_id[1][:26])
    assert shown.returncode == 0, shown.stderr
    assert (
        "status     failed: ValueError: bad number 23 "
        "(raised by map_(check) on item 22 of its input)\n"
    ) in shown.stderr
    assert (
        "failures in stage 1, map_(check):\n"
        "  the run failed here: ValueError: bad number 23 "
        "(raised by map_(check) on item 22 of its input)\n"
    ) in shown.stderr
    latest = streamkit_run(project, "history", "history", "latest")
    assert "status     running or killed\n" in latest.stderr
    assert "  1  map_(check)\n" in latest.stderr

    unknown = streamkit_run(project, "history", "history", "2024")
    assert (unknown.returncode, unknown.stderr) == (
        2,
        "streamkit: error: no run '2024' in history\n",
    )


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT is POSIX")
def test_ctrl_c_exits_130_and_keeps_the_checkpoint(project: Path) -> None:
    numbers = project / "numbers.txt"
    numbers.write_text("\n".join(str(n) for n in range(1, 301)) + "\n")
    args = ("run", "jobs:pipeline", "--input", "numbers.txt", "--output", "out.txt")
    args += ("--checkpoint", "runs.db", "--every", "5")
    process = subprocess.Popen(
        command(*args),
        cwd=project,
        stderr=subprocess.PIPE,
        text=True,
        env=environment(SLOW="0.01"),
    )
    out = project / "out.txt"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (
        not out.exists() or len(out.read_text().splitlines()) < 15
    ):
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=20)
    assert process.returncode == 130
    assert stderr.endswith("streamkit: interrupted\n")
    assert "Traceback" not in stderr
    assert "(--resume continues from there)" in stderr
    resumed = streamkit_run(project, *args, "--resume", "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    written = out.read_text().splitlines()
    assert sorted(set(written), key=written.index) == expected(range(1, 301))


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT is POSIX")
def test_ctrl_c_while_waiting_for_stdin_does_not_hang(project: Path) -> None:
    process = subprocess.Popen(
        command("run", "jobs:texts"),
        cwd=project,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment(),
    )
    assert process.stdin is not None
    process.stdin.write("hello\n")
    process.stdin.flush()
    time.sleep(1)  # the command waits for the next line
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=20)
    assert (process.returncode, stdout) == (130, "HELLO\n")
    assert re.search(r"^run \S+ cancelled: 1 item out in ", stderr, re.MULTILINE)
    assert stderr.endswith("streamkit: interrupted\n")


@pytest.mark.skipif(sys.platform == "win32", reason="no pty")
def test_live_progress_on_a_terminal(project: Path) -> None:
    import pty

    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        command("run", "jobs:pipeline", "--input", "numbers.txt", "--output", "out.txt"),
        cwd=project,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=terminal,
        env=environment(SLOW="0.02"),
    )
    os.close(terminal)
    shown = b""
    while True:
        try:
            data = os.read(controller, 65536)
        except OSError:  # the command closed its end
            break
        if not data:
            break
        shown += data
    os.close(controller)
    assert process.wait(timeout=30) == 0
    text = shown.decode()
    assert ": running, " in text  # the live table's title
    assert "succeeded: 20 items out" in text
    assert (project / "out.txt").read_text().splitlines() == expected(range(1, 31))


# --------------------------------------------------------------------------- docs/cli.md


_RUN_ID = re.compile(r"[0-9]{8}T[0-9]{12}Z-[A-Za-z0-9_.-]+-[0-9a-f]{8}")


def normalised(text: str) -> list[str]:
    """Lines without what changes from run to run: ids, times, rates, column widths."""
    text = _RUN_ID.sub("<id>", text)
    text = re.sub(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}", "<date>", text)
    text = re.sub(r"\d+(\.\d+)? ?(µs|ms|s)\b", "<time>", text)
    lines = []
    for line in text.splitlines():
        line = re.sub(r"[\d,]+$", "<n>", line.rstrip())  # items/s, the last column
        lines.append(" ".join(re.sub(r"─+", "─", line).split()))
    return lines


def sessions(page: Path, language: str = "console") -> list[list[tuple[str, str]]]:
    """The blocks of a page that hold commands (``$ ...``): (command, output) pairs."""
    text = page.read_text(encoding="utf-8")
    blocks = re.findall(rf"^```{language}\n(\$ .*?)^```$", text, re.M | re.S)
    sessions = []
    for block in blocks:
        pairs: list[tuple[str, list[str]]] = []
        for line in block.splitlines():
            if line.startswith("$ "):
                pairs.append((line[2:], []))
            else:
                pairs[-1][1].append(line)
        sessions.append([(cmd, "\n".join(out)) for cmd, out in pairs])
    return sessions


@pytest.mark.parametrize("page", ["cli.md", "observability.md"])
def test_the_documented_session_matches(tmp_path: Path, page: str) -> None:
    (tmp_path / "examples" / "data").mkdir(parents=True)
    shutil.copy(ROOT / "examples" / "orders.py", tmp_path / "examples")
    shutil.copy(ROOT / "examples" / "data" / "orders.csv", tmp_path / "examples" / "data")
    documented = [
        session
        for session in sessions(ROOT / "docs" / page)
        if session[0][0].startswith("streamkit ")
    ]
    assert len(documented) == 2
    for session in documented:
        for line, shown in session:
            args = textwrap.dedent(line).split()
            assert args[0] == "streamkit"
            result = streamkit_run(tmp_path, *args[1:], merged=True)
            assert result.returncode == 0, result.stdout
            assert normalised(result.stdout) == normalised(shown), line


@pytest.mark.parametrize("page", ["cli.md", "persistence.md"])
def test_the_documented_resume_matches(project: Path, page: str) -> None:
    (session,) = [
        session
        for session in sessions(ROOT / "docs" / page, "text")
        if session[0][0].startswith("streamkit run jobs:pipeline")
    ]
    (failing, shown_failing), (resuming, shown_resuming) = session
    failed = streamkit_run(project, *failing.split()[1:], merged=True, FAIL_AT="23")
    assert failed.returncode == 1
    assert normalised(failed.stdout) == normalised(shown_failing)
    resumed = streamkit_run(project, *resuming.split()[1:], merged=True)
    assert resumed.returncode == 0
    assert normalised(resumed.stdout) == normalised(shown_resuming)
