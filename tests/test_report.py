"""`write_report` and ``streamkit history --html``: a run's report, from its state history.

The report embeds the run's view as JSON (``<script type="application/json"
id="streamkit-data">``); the tests read it back and compare it with the run.
How a browser draws it, offline, is tested in tests/test_dashboard_browser.py.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamkit import (
    ConstantBackoff,
    Key,
    Run,
    map_,
    scan_state,
    with_retry,
    write_report,
)
from tests.test_cli import JOBS, NUMBERS, streamkit_run

_DATA = re.compile(r'<script type="application/json" id="streamkit-data">(.*?)</script>', re.S)


def embedded(html: str) -> dict[str, Any]:
    """The view a report embeds."""
    (data,) = _DATA.findall(html)
    view: dict[str, Any] = json.loads(data)
    return view


def report_of(run: Run[Any], tmp_path: Path) -> tuple[str, dict[str, Any]]:
    assert run.history_path is not None
    written = write_report(run.history_path, tmp_path / "report.html")
    assert written == tmp_path / "report.html"
    html = written.read_text(encoding="utf-8")
    return html, embedded(html)


def inc(x: int) -> int:
    return x + 1


def fails_at_3(x: int) -> int:
    if x == 3:
        raise ValueError("no <b>3</b>")
    return x


async def test_the_report_of_a_run_that_succeeded(tmp_path: Path) -> None:
    run = Run(map_(inc) | map_(str), range(500), name="nightly", state_history=tmp_path)
    await run.drain()
    html, view = report_of(run, tmp_path)
    stats = run.statistics()
    assert view["run"]["id"] == run.id
    assert view["run"]["name"] == "nightly"
    assert view["run"]["config_hash"] == run.config_hash
    assert [stage["key"] for stage in view["stages"]] == [stage.key for stage in stats.stages]
    assert view["fields"]["run.status"] == "succeeded"
    assert view["fields"]["run.items_out"] == 500
    for stage in stats.stages:
        assert view["fields"][f"stages.{stage.key}.items_out"] == 500
    assert view["t"]  # the timeline's points, for the plots
    assert len(view["series"]["rate"]) == len(view["t"])
    assert view["statuses"][-1][2] == "succeeded"
    assert view["errors"] == []
    assert 'data-mode="report"' in html
    assert "<script src" not in html
    assert "connect-src 'none'" in html  # the report's policy: no request at all


async def test_the_report_of_a_run_that_failed(tmp_path: Path) -> None:
    run = Run(map_(fails_at_3), range(10), state_history=tmp_path)
    with pytest.raises(ValueError, match="no <b>3</b>"):
        await run.drain()
    _, view = report_of(run, tmp_path)
    assert view["fields"]["run.status"] == "failed"
    (error,) = view["errors"]
    assert (error["stage"], error["kind"], error["type"], error["message"]) == (
        "map_(fails_at_3)",
        "fatal",
        "ValueError",
        "no <b>3</b>",
    )


async def test_retries_and_collected_failures(tmp_path: Path) -> None:
    calls: dict[int, int] = {}

    def flaky(x: int) -> int:
        calls[x] = calls.get(x, 0) + 1
        if x == 1 and calls[x] == 1:
            raise ConnectionError("again")
        if x == 4:
            raise KeyError(x)
        return x

    guarded = with_retry(map_(flaky), attempts=2, backoff=ConstantBackoff(0.0), on_error="collect")
    run = Run(guarded, range(6), state_history=tmp_path)
    assert await run.collect() == [0, 1, 2, 3, 5]
    _, view = report_of(run, tmp_path)
    kinds = [(error["kind"], error["type"], error["index"]) for error in view["errors"]]
    assert ("retry", "ConnectionError", 1) in kinds
    assert ("item", "KeyError", 4) in kinds
    key = run.statistics().stages[0].key
    assert view["fields"][f"stages.{key}.retries"] == 2  # 1's first try, 4's first try
    assert view["series"]["retries"][-1] == [2.0]


async def test_state_keys_from_a_watched_run(tmp_path: Path) -> None:
    total = Key[int]("total")
    run = Run(
        scan_state(total, lambda a, x: a + x, 0),
        range(1, 11),
        dashboard=True,
        state_history=tmp_path,
    )
    items = await run.collect()
    _, view = report_of(run, tmp_path)
    assert view["state"]["total"]["value"] == items[-1].state[total] == 55


async def test_without_a_timeline_the_final_statistics_are_the_point(tmp_path: Path) -> None:
    run = Run(map_(inc), range(7), state_history=tmp_path)
    await run.drain()
    assert run.history_path is not None
    (run.history_path / "timeline.jsonl").unlink()
    _, view = report_of(run, tmp_path)
    assert len(view["t"]) == 1
    assert view["fields"]["run.items_out"] == 7
    assert view["fields"]["stages.map_(inc).items_out"] == 7


async def test_a_line_cut_short_is_skipped(tmp_path: Path) -> None:
    run = Run(map_(inc), range(7), state_history=tmp_path)
    await run.drain()
    assert run.history_path is not None
    timeline = run.history_path / "timeline.jsonl"
    whole = timeline.read_text()
    timeline.write_text(whole + '{"t": 99.0, "fields": {"run.items_out": 10')  # killed mid-line
    _, view = report_of(run, tmp_path)
    assert max(view["t"]) < 99.0
    assert view["fields"]["run.items_out"] == 7


async def test_a_long_timeline_is_thinned(tmp_path: Path) -> None:
    run = Run(map_(inc), range(3), state_history=tmp_path)
    await run.drain()
    assert run.history_path is not None
    lines = [
        json.dumps({"t": i / 10, "fields": {"stages.map_(inc).items_out": i}}) for i in range(5000)
    ]
    (run.history_path / "timeline.jsonl").write_text("\n".join(lines) + "\n")
    _, view = report_of(run, tmp_path)
    assert 1000 <= len(view["t"]) <= 2000
    assert view["t"] == sorted(view["t"])
    # The rates were measured before thinning: 10 items a second throughout.
    assert view["series"]["rate"][len(view["t"]) // 2] == [pytest.approx(10.0)]


def test_a_folder_without_history(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no run history"):
        write_report(tmp_path, tmp_path / "report.html")
    assert not (tmp_path / "report.html").exists()


def named(name: str) -> Any:
    def identity(x: Any) -> Any:
        return x

    identity.__name__ = identity.__qualname__ = name
    return identity


@settings(max_examples=25)
@given(st.text(min_size=1, max_size=40))
def test_any_label_is_data_never_markup(
    tmp_path_factory: pytest.TempPathFactory, text: str
) -> None:
    folder = tmp_path_factory.mktemp("history")
    run = Run(map_(named(text)) | map_(fails_at_3), [1, 2, 3], state_history=folder)
    with pytest.raises(ValueError, match="no <b>3</b>"):
        asyncio.run(run.drain())
    html, view = report_of(run, folder)
    assert view["stages"][0]["label"] == run.statistics().stages[0].label
    template = (Path(__file__).parent.parent / "streamkit" / "_assets" / "page.html").read_text()
    assert html.count("</script") == template.count("</script")
    assert html.lower().count("<script") == template.count("<script")


# --------------------------------------------------------------------------- the command


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "jobs.py").write_text(JOBS, encoding="utf-8")
    (tmp_path / "numbers.txt").write_text("\n".join(NUMBERS) + "\n", encoding="utf-8")
    return tmp_path


def test_the_command_prints_the_dashboards_address(project: Path) -> None:
    result = streamkit_run(
        project,
        *("run", "jobs:pipeline", "--input", "numbers.txt", "--output", "out.txt"),
        "--dashboard",
        "--no-progress",
    )
    assert result.returncode == 0, result.stderr
    assert re.search(
        r"^streamkit: dashboard at http://127\.0\.0\.1:\d+/ \(while the run lasts\)$",
        result.stderr,
        re.M,
    ), result.stderr
    assert len((project / "out.txt").read_text().splitlines()) == 20


def test_the_command_refuses_a_bad_address(project: Path) -> None:
    result = streamkit_run(project, "run", "jobs:pipeline", "--dashboard=host:port")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "streamkit: error: --dashboard: dashboard address must be HOST:PORT, :PORT, PORT "
        "or HOST, got 'host:port'"
    )


def test_history_writes_the_report(project: Path) -> None:
    for _ in range(2):
        done = streamkit_run(
            project,
            *("run", "jobs:pipeline", "--input", "numbers.txt", "--output", "out.txt"),
            "--state-history",
            "runs",
            "--no-progress",
        )
        assert done.returncode == 0, done.stderr
    first, latest = sorted(path.name for path in (project / "runs").iterdir())
    result = streamkit_run(project, "history", "runs", "--html", "report.html")
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == f"streamkit: report of run {latest} written to report.html"
    assert embedded((project / "report.html").read_text())["run"]["id"] == latest
    result = streamkit_run(project, "history", "runs", first[:24], "--html", "first.html")
    assert result.returncode == 0, result.stderr
    assert embedded((project / "first.html").read_text())["run"]["id"] == first


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        (None, ["history", "runs", "--html", "r.html"], "no state-history directory runs"),
        ("empty", ["history", "runs", "--html", "r.html"], "no runs in runs: no report to write"),
        ("run", ["history", "runs", "nonexistent", "--html", "r.html"], "no run 'nonexistent'"),
        (
            "run",
            ["history", "runs", "--html", "missing/r.html"],
            "cannot write the report missing/r.html: No such file or directory",
        ),
    ],
)
def test_history_html_errors(
    project: Path, setup: str | None, args: list[str], message: str
) -> None:
    if setup == "empty":
        (project / "runs").mkdir()
    elif setup == "run":
        done = streamkit_run(
            project,
            *("run", "jobs:pipeline", "--input", "numbers.txt", "--output", "out.txt"),
            "--state-history",
            "runs",
            "--no-progress",
        )
        assert done.returncode == 0, done.stderr
    result = streamkit_run(project, *args)
    assert result.returncode == 2
    assert result.stderr.startswith(f"streamkit: error: {message}"), result.stderr
    shutil.rmtree(project / "runs", ignore_errors=True)
