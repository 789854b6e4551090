"""The dashboard and the report in a real browser: headless Chromium, driven by Playwright.

A run with a dashboard runs in a thread of its own (`LiveRun`), with its own
event loop, so that the test drives the browser from the main thread with
Playwright's synchronous API, and the run's loop holds nothing but the run:
when it ends, no task of it may be left. Its source waits behind a gate
until the page has loaded, so the page sees the run from its start.

The tests take screenshots of the dashboard and of the report; with
``STREAMKIT_SCREENSHOTS=DIR`` (``make screenshots``: docs/img) they are also
written to ``DIR``, for docs/observability.md.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from streamkit import (
    ConstantBackoff,
    Key,
    Run,
    branch,
    fork,
    map_,
    scan_state,
    with_retry,
    write_report,
)
from tests.browsers import browser as browser
from tests.browsers import context as context
from tests.dashboards import Gate, listening, open_sockets, watched

if TYPE_CHECKING:
    from collections.abc import Callable

    from playwright.sync_api import BrowserContext, ConsoleMessage, Dialog, Page, Route

    from streamkit import Stage

ROOT = Path(__file__).resolve().parent.parent
WAIT_MS = 30_000
"""How long a step may wait for the page (ms): generous, it is a bound, not a measure."""


def inc(x: int) -> int:
    return x + 1


def double(x: int) -> int:
    return 2 * x


def add(total: int, x: int) -> int:
    return total + x


_FAILED_ONCE: set[int] = set()
"""The items `priced` and `flaky` have failed once (cleared by the tests that use them)."""


def priced(x: int) -> int:
    """Fails the first call for 5, 102, 199, 296 and 393."""
    if x % 97 == 5 and x not in _FAILED_ONCE:
        _FAILED_ONCE.add(x)
        raise ConnectionError("rate service: connection reset")
    return x


def flaky(x: int) -> int:
    """Fails the first call for every item that is 7 modulo 500."""
    if x % 500 == 7 and x not in _FAILED_ONCE:
        _FAILED_ONCE.add(x)
        raise TimeoutError("upstream slow")
    return x


async def slow(x: int) -> int:
    await asyncio.sleep(0.002)
    return x


def fails_at_30(x: int) -> int:
    if x == 30:
        raise ValueError("item 30 is <b>not</b> a number & never was")
    return x


def named(name: str) -> Callable[[Any], Any]:
    def identity(x: Any) -> Any:
        return x

    identity.__name__ = identity.__qualname__ = name
    return identity


class LiveRun:
    """A run with a dashboard, in its own thread and event loop.

    `start` returns the page's address once the dashboard serves; `open`
    lets the items flow; `join` waits for the end and re-raises what the
    thread raised. What was left when the run ended (tasks, a listening
    socket) is recorded by the thread, in its loop.
    """

    def __init__(
        self,
        pipeline: Stage[Any, Any],
        items: list[Any],
        *,
        pause: float = 0.0,
        **options: Any,
    ) -> None:
        self.pipeline = pipeline
        self.items = items
        self.pause = pause
        self.options = options
        self.run: Run[Any] | None = None
        self.url = ""
        self.port = 0
        self.error: BaseException | None = None
        self.leftover_tasks: list[asyncio.Task[Any]] = []
        self.still_listening = True
        self._serving = threading.Event()
        self._gate: Gate | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._main, name="live-run", daemon=True)

    def start(self) -> str:
        self._thread.start()
        if not self._serving.wait(timeout=WAIT_MS / 1000):
            raise AssertionError(f"the dashboard did not start: {self.error!r}")
        return self.url

    def open(self) -> None:
        assert self._gate is not None
        self._gate.open()

    def pause_run(self) -> None:
        assert self._loop is not None
        assert self.run is not None
        self._loop.call_soon_threadsafe(self.run.pause)

    def join(self) -> Run[Any]:
        self._thread.join(timeout=WAIT_MS / 1000)
        assert not self._thread.is_alive(), "the run did not end"
        assert self.run is not None
        return self.run

    def _main(self) -> None:
        try:
            asyncio.run(self._follow())
        except BaseException as exc:  # reported to the test thread
            self.error = exc
            self._serving.set()

    async def _follow(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._gate = Gate(self.items, pause=self.pause)
        watch = watched(self.pipeline, self._gate, **self.options)
        self.run = watch.run
        task = asyncio.create_task(watch.run.collect())
        await watch.serving.wait()
        self.url, self.port = watch.url, watch.port
        self._serving.set()
        try:
            await task
        finally:
            current = asyncio.current_task()
            self.leftover_tasks = [t for t in asyncio.all_tasks() if t is not current]
            self.still_listening = listening(self.port)


def screenshot(page: Page, name: str, folder: Path) -> None:
    """Take a screenshot of the whole page; also into ``$STREAMKIT_SCREENSHOTS``, if set."""
    path = folder / name
    page.screenshot(path=path, full_page=True)
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(data) > 10_000  # a drawn page, not a blank one
    wanted = os.environ.get("STREAMKIT_SCREENSHOTS")
    if wanted:
        Path(wanted).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, Path(wanted) / name)


def problems_of(page: Page) -> list[str]:
    """What goes wrong on ``page`` from now on: dialogs (dismissed), errors, console errors."""
    problems: list[str] = []

    def dialog_opened(dialog: Dialog) -> None:
        problems.append(f"dialog: {dialog.message}")
        dialog.dismiss()

    def logged(message: ConsoleMessage) -> None:
        if message.type == "error":
            problems.append(f"console: {message.text}")

    page.on("dialog", dialog_opened)
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("console", logged)
    return problems


def watch_page(context: BrowserContext, url: str) -> tuple[Page, list[str]]:
    """Open the dashboard; (the page, the problems it reports)."""
    page = context.new_page()
    problems = problems_of(page)
    page.goto(url)
    page.wait_for_selector("body[data-ready=true]", timeout=WAIT_MS)
    return page, problems


def ended(page: Page) -> None:
    page.wait_for_selector("body[data-ended=true]", timeout=WAIT_MS)


def stage_values(page: Page, field: str) -> list[str]:
    """The text of one metric of every stage card, in order."""
    return page.locator(f"#graph li.stage dd[data-field={field}]").all_text_contents()


# --------------------------------------------------------------------------- the dashboard


def test_after_the_run_every_stage_shows_every_item(
    context: BrowserContext, tmp_path: Path
) -> None:
    n = 400
    _FAILED_ONCE.clear()
    pipeline = (
        map_(inc)
        | scan_state(Key[int]("total"), add, 0)
        | with_retry(map_(priced, concurrency=4), attempts=3, backoff=ConstantBackoff(0.05))
        | map_(double)
    )
    live = LiveRun(pipeline, list(range(n)), pause=0.004, name="orders")
    page, problems = watch_page(context, live.start())
    assert page.locator("#status").text_content() == "running"
    live.open()
    ended(page)
    run = live.join()
    assert live.error is None
    assert stage_values(page, "items_in") == [f"{n}"] * 4
    assert stage_values(page, "items_out") == [f"{n}"] * 4
    assert page.locator("#items-out").text_content() == f"{n}"
    assert page.locator("#status").text_content() == "succeeded"
    assert page.locator("#graph li.stage .badge").all_text_contents() == ["succeeded"] * 4
    retries = run.statistics().stages[2].retries
    assert retries == 5  # 5, 102, 199, 296, 393 (inputs 4, 101, ...)
    assert stage_values(page, "retries")[2] == "5"
    assert page.locator("#errors li").count() == 5
    total = page.locator("#state tr[data-key=total] td.value").text_content()
    assert total == str(sum(range(1, n + 1)))
    assert page.locator("#charts-section .uplot").count() == 4  # rate, latency, errors, state
    assert problems == []
    screenshot(page, "dashboard.png", tmp_path)


def test_the_page_updates_at_least_three_times_a_second(context: BrowserContext) -> None:
    # The browser timestamps every change of the items-out figure (a MutationObserver and
    # its own clock); the run lasts long enough for many updates at 4 a second.
    live = LiveRun(map_(inc), list(range(300)), pause=0.01)
    page, problems = watch_page(context, live.start())
    page.evaluate(
        """() => {
            window.changes = [];
            const shown = document.getElementById("items-out");
            new MutationObserver(() => {
                if (document.body.dataset.ended !== "true") {
                    window.changes.push([performance.now(), shown.textContent]);
                }
            }).observe(shown, {childList: true, characterData: true, subtree: true});
        }"""
    )
    live.open()
    ended(page)
    live.join()
    changes: list[list[Any]] = page.evaluate("window.changes")
    assert len(changes) >= 5, changes
    span = (changes[-1][0] - changes[0][0]) / 1000
    assert (len(changes) - 1) / span >= 3, f"{len(changes)} updates in {span:.2f} s"
    shown = [int(text.replace(",", "")) for _, text in changes]
    assert shown == sorted(shown)
    assert problems == []


def test_a_failing_stage_shows_its_error(context: BrowserContext) -> None:
    live = LiveRun(map_(inc) | map_(fails_at_30), list(range(100)), pause=0.002)
    page, problems = watch_page(context, live.start())
    live.open()
    ended(page)
    live.join()
    assert isinstance(live.error, ValueError)
    message = "ValueError: item 30 is <b>not</b> a number & never was"
    cards = page.locator("#graph li.stage")
    assert cards.nth(1).get_attribute("data-status") == "failed"
    assert cards.nth(1).locator(".stage-error").text_content() == f"failed: {message}"
    assert cards.nth(0).locator(".stage-error").text_content() == ""
    assert page.locator("#status").text_content() == "failed"
    error = page.locator("#errors li")
    assert error.count() == 1
    assert message in (error.text_content() or "")
    assert "in map_(fails_at_30)" in (error.text_content() or "")
    assert page.locator("#errors b").count() == 0  # the message's <b> is text
    assert problems == []


def test_fork_and_branch_show_their_branches_as_lanes(context: BrowserContext) -> None:
    n = 60
    pipeline = (
        map_(inc)
        | branch(totals=scan_state(Key[int]("total"), add, 0) | map_(double), raw=map_(inc))
        | fork(map_(double), map_(inc) | map_(double))
    )
    live = LiveRun(pipeline, list(range(n)), pause=0.002)
    page, problems = watch_page(context, live.start())
    live.open()
    ended(page)
    live.join()
    assert live.error is None
    cards = page.locator("#graph li.stage")
    assert cards.count() == 3
    assert cards.nth(0).locator(".lane").count() == 0
    lanes = [cards.nth(n).locator(".lane") for n in (1, 2)]
    assert [lane.locator(".lane-name").all_text_contents() for lane in lanes] == [
        ["totals", "raw"],
        ["branch 0", "branch 1"],
    ]
    steps = [
        [lane.nth(k).locator("li").all_text_contents() for k in range(lane.count())]
        for lane in lanes
    ]
    assert steps == [
        [["scan_state('total', add)", "map_(double)"], ["map_(inc)"]],
        [["map_(double)"], ["map_(inc)", "map_(double)"]],
    ]
    # Each branch gets every item; the fork merges both branches' outputs.
    assert stage_values(page, "items_in") == [f"{n}", f"{n}", f"{2 * n}"]
    assert stage_values(page, "items_out") == [f"{n}", f"{2 * n}", f"{4 * n}"]
    assert problems == []


def test_a_stage_named_like_a_script_is_text(context: BrowserContext) -> None:
    label = "<script>alert(1)</script>"
    pipeline = (
        map_(named(label))
        | scan_state("note", lambda _, x: f"<img src=x onerror=alert({x})>", "")
        | map_(fails_at_30)
    )
    live = LiveRun(pipeline, list(range(50)), pause=0.005)
    page, problems = watch_page(context, live.start())
    live.open()
    ended(page)
    live.join()
    assert page.locator("#graph .stage-label").first.text_content() == f"map_({label})"
    assert page.locator("#state tr[data-key=note] td.value").text_content() == (
        "<img src=x onerror=alert(29)>"
    )
    assert page.locator("img").count() == 0
    # The page's own: the data element and the two scripts; none from the run.
    assert page.evaluate("document.scripts.length") == 3
    assert problems == []  # no dialog opened, no error


def test_a_second_client_gets_the_same_view(context: BrowserContext) -> None:
    live = LiveRun(map_(inc) | map_(double), list(range(300)), pause=0.005)
    url = live.start()
    first, problems = watch_page(context, url)
    live.open()
    first.wait_for_function(
        "() => Number(document.getElementById('items-out').textContent.replace(/,/g, '')) >= 50",
        timeout=WAIT_MS,
    )
    second, more = watch_page(context, url)
    # A late client starts from the snapshot, not from nothing.
    assert int((second.locator("#items-out").text_content() or "0").replace(",", "")) >= 50
    assert second.locator("#timeline .bar").count() == 3
    ended(first)
    ended(second)
    live.join()
    for selector in ("#title", "#status", "#items-out", "#graph", "#errors", "#timeline"):
        assert first.locator(selector).inner_text() == second.locator(selector).inner_text(), (
            selector
        )
    assert stage_values(second, "items_out") == ["300", "300"]
    assert problems == more == []


def test_the_server_stops_with_the_run(context: BrowserContext) -> None:
    before = open_sockets()
    live = LiveRun(map_(inc), list(range(100)), pause=0.002)
    page, problems = watch_page(context, live.start())
    live.open()
    ended(page)
    run = live.join()
    assert live.error is None
    assert run.status == "succeeded"
    assert live.leftover_tasks == []
    assert not live.still_listening
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", live.port), timeout=5).close()
    assert open_sockets() <= before
    assert "has ended" in (page.locator("#connection").text_content() or "")
    assert page.locator("#status").text_content() == "succeeded"  # the final state stays
    assert problems == []


# --------------------------------------------------------------------------- the report


def open_offline(context: BrowserContext, path: Path) -> tuple[Page, list[str], list[str]]:
    """Open a report with every request but its own file refused; (page, refused, problems)."""
    page = context.new_page()
    refused: list[str] = []
    problems = problems_of(page)

    def only_the_file(route: Route) -> None:
        if route.request.url == path.as_uri():
            route.continue_()
        else:
            refused.append(route.request.url)
            route.abort()

    context.route("**/*", only_the_file)
    page.goto(path.as_uri())
    page.wait_for_selector("body[data-ready=true]", timeout=WAIT_MS)
    return page, refused, problems


def plots(page: Page) -> list[str]:
    """The charts drawn: the id of each container that holds a uPlot canvas."""
    found: list[str] = page.eval_on_selector_all(
        ".chart",
        """charts => charts
            .filter(chart => {
                const canvas = chart.querySelector(".uplot canvas");
                return canvas !== null && canvas.width > 0 && canvas.height > 0;
            })
            .map(chart => chart.id)""",
    )
    return found


def history_run(folder: Path, n: int) -> Run[Any]:
    """A run of ``n`` items (``n / 1000`` seconds or more) that records its history."""
    _FAILED_ONCE.clear()
    pipeline = (
        map_(inc)
        | scan_state(Key[int]("total"), add, 0)
        | with_retry(map_(flaky), attempts=3, backoff=ConstantBackoff(0.01))
        | map_(slow, concurrency=2)
    )
    run = Run(pipeline, range(n), name="nightly", state_history=folder, dashboard=True)
    # In a thread: Playwright's synchronous API keeps an event loop running in this one.
    worker = threading.Thread(target=asyncio.run, args=(run.drain(),))
    worker.start()
    worker.join(timeout=WAIT_MS / 1000)
    assert run.status == "succeeded"
    return run


def test_the_report_opens_offline_with_its_plots(context: BrowserContext, tmp_path: Path) -> None:
    run = history_run(tmp_path / "runs", 3000)  # 3 s or more: a point a second
    assert run.history_path is not None
    report = write_report(run.history_path, tmp_path / "report.html")
    page, refused, problems = open_offline(context, report)
    assert plots(page) == ["chart-rate", "chart-latency", "chart-errors", "chart-state"]
    assert page.locator("#status").text_content() == "succeeded"
    assert stage_values(page, "items_out") == ["3,000"] * 4
    assert page.locator("#errors li").count() == run.statistics().stages[2].retries == 6
    assert page.locator("#timeline .bar").count() == 5
    assert "report" in (page.locator("#connection").text_content() or "")
    assert refused == []
    assert problems == []
    screenshot(page, "report.png", tmp_path)


def test_the_commands_report_opens_offline(context: BrowserContext, tmp_path: Path) -> None:
    history_run(tmp_path / "runs", 500)
    result = subprocess.run(
        [sys.executable, "-W", "error", "-m", "streamkit", "history", "runs", "--html", "r.html"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    page, refused, problems = open_offline(context, tmp_path / "r.html")
    assert plots(page) == ["chart-rate", "chart-latency", "chart-errors", "chart-state"]
    assert page.locator("#title").text_content() == (
        f"nightly ({next((tmp_path / 'runs').iterdir()).name})"
    )
    assert refused == []
    assert problems == []


def test_the_offline_check_sees_a_request(context: BrowserContext, tmp_path: Path) -> None:
    # The check itself: a page that asks for anything else has that request refused and listed.
    page_file = tmp_path / "page.html"
    page_file.write_text(
        '<!doctype html><body data-ready="true"><img src="https://example.com/x.png"></body>'
    )
    _, refused, _ = open_offline(context, page_file)
    assert refused == ["https://example.com/x.png"]
