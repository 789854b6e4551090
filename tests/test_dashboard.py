"""The live dashboard, through `Run(dashboard=...)` and an HTTP client (aiohttp's).

A test starts a run whose source waits (`tests.dashboards.Gate`), connects to
the page's event stream while the dashboard serves, lets the items flow and
reads the stream to its end. What a client ends with (its snapshot with
every patch applied) is compared with the run's own statistics. The page as
a browser draws it is tested in tests/test_dashboard_browser.py.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import textwrap
from typing import Any, Self

import aiohttp
import pytest

from streamkit import (
    ConstantBackoff,
    Dashboard,
    Key,
    Run,
    map_,
    scan_state,
    tap,
    unwrap,
    with_retry,
)
from streamkit.testing import assert_no_pending_tasks
from tests.dashboards import (
    Gate,
    Mirror,
    events,
    events_url,
    follow,
    listening,
    open_sockets,
    watched,
)


def inc(x: int) -> int:
    return x + 1


def double(x: int) -> int:
    return 2 * x


def fails_at_3(x: int) -> int:
    if x == 3:
        raise ValueError("no <b>3</b> & no </script>")
    return x


def named(name: str) -> Any:
    """An identity function whose ``__name__`` (and so its step's label) is ``name``."""

    def identity(x: Any) -> Any:
        return x

    identity.__name__ = identity.__qualname__ = name
    return identity


async def watch_to_end(run_source: Gate, url: str, *, clients: int = 1) -> list[Mirror]:
    """Connect ``clients`` clients, open the gate, read every stream to its end."""
    mirrors = [Mirror() for _ in range(clients)]
    async with aiohttp.ClientSession() as session:
        tasks = [asyncio.create_task(follow(session, url, mirror)) for mirror in mirrors]
        for mirror in mirrors:
            await mirror.until(mirror.has_view)
        run_source.open()
        await asyncio.gather(*tasks)
    return mirrors


# --------------------------------------------------------------------------- parameters


def test_defaults_bind_loopback_without_a_token() -> None:
    board = Dashboard()
    assert (board.host, board.port, board.token, board.rate) == ("127.0.0.1", 0, None, 4.0)
    assert board.url is None
    assert not board.serving
    assert repr(board) == "<Dashboard 127.0.0.1:0 not serving>"


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.7", "dashboard.example"])
def test_another_interface_gets_a_token(host: str) -> None:
    first, second = Dashboard(host=host), Dashboard(host=host)
    assert first.token is not None
    assert len(first.token) >= 16
    assert first.token != second.token
    assert Dashboard(host=host, token="a" * 16).token == "a" * 16


@pytest.mark.parametrize("host", ["127.0.0.1", "127.1.2.3", "localhost", "::1"])
def test_loopback_needs_no_token(host: str) -> None:
    assert Dashboard(host=host).token is None


@pytest.mark.parametrize(
    ("options", "error", "names"),
    [
        ({"host": 127}, TypeError, "host"),
        ({"host": ""}, ValueError, "host"),
        ({"host": "a b"}, ValueError, "host"),
        ({"host": "evil.example/x"}, ValueError, "host"),
        ({"port": "80"}, TypeError, "port"),
        ({"port": True}, TypeError, "port"),
        ({"port": 1.0}, TypeError, "port"),
        ({"port": -1}, ValueError, "port"),
        ({"port": 65536}, ValueError, "port"),
        ({"token": 12345678901234567}, TypeError, "token"),
        ({"token": "short"}, ValueError, "token"),
        ({"token": "x" * 15 + "&"}, ValueError, "token"),
        ({"token": "x" * 129}, ValueError, "token"),
        ({"rate": "4"}, TypeError, "rate"),
        ({"rate": True}, TypeError, "rate"),
        ({"rate": 0}, ValueError, "rate"),
        ({"rate": -1.0}, ValueError, "rate"),
        ({"rate": 61}, ValueError, "rate"),
        ({"rate": float("nan")}, ValueError, "rate"),
        ({"rate": float("inf")}, ValueError, "rate"),
    ],
)
def test_bad_options_name_the_parameter(
    options: dict[str, Any], error: type[Exception], names: str
) -> None:
    with pytest.raises(error, match=rf"^{names} must"):
        Dashboard(**options)


@pytest.mark.parametrize(
    ("address", "host", "port"),
    [
        ("127.0.0.1:8765", "127.0.0.1", 8765),
        (":8765", "127.0.0.1", 8765),
        ("8765", "127.0.0.1", 8765),
        ("localhost", "localhost", 0),
        ("[::1]:9000", "::1", 9000),
        (" 0.0.0.0:0 ", "0.0.0.0", 0),
    ],
)
def test_parse(address: str, host: str, port: int) -> None:
    board = Dashboard.parse(address)
    assert (board.host, board.port) == (host, port)


@pytest.mark.parametrize("address", ["", ":", "host:port", "a:b:1", "1.2.3.4:99999", "[::1]"])
def test_parse_refuses_malformed_addresses(address: str) -> None:
    with pytest.raises(ValueError, match=r"dashboard address|port must"):
        Dashboard.parse(address)


def test_parse_takes_the_other_options() -> None:
    board = Dashboard.parse("0.0.0.0:0", token="t" * 20, rate=10)
    assert (board.token, board.rate) == ("t" * 20, 10.0)
    with pytest.raises(TypeError, match=r"^dashboard address must be a string"):
        Dashboard.parse(8765)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [None, False])
def test_run_without_a_dashboard(value: bool | None) -> None:
    assert Run(map_(inc), [1], dashboard=value).dashboard is None


@pytest.mark.parametrize("value", [True, "127.0.0.1:0", ":0", Dashboard(port=0)])
def test_run_takes_a_dashboard(value: object) -> None:
    board = Run(map_(inc), [1], dashboard=value).dashboard  # type: ignore[arg-type]
    assert isinstance(board, Dashboard)
    assert board.host == "127.0.0.1"
    assert board.port == 0


@pytest.mark.parametrize("value", [1, 8765.0, b"127.0.0.1:0", ["127.0.0.1:0"]])
def test_run_refuses_a_bad_dashboard(value: object) -> None:
    with pytest.raises(TypeError, match=r"^dashboard must be a Dashboard"):
        Run(map_(inc), [1], dashboard=value)  # type: ignore[arg-type]


def test_run_refuses_a_malformed_address() -> None:
    with pytest.raises(ValueError, match=r"^dashboard address must be"):
        Run(map_(inc), [1], dashboard="127.0.0.1:port")


def test_a_dashboard_serves_one_run() -> None:
    board = Dashboard()
    Run(map_(inc), [1], dashboard=board)
    with pytest.raises(ValueError, match="serves one run"):
        Run(map_(inc), [1], dashboard=board)


def test_without_aiohttp_it_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "aiohttp.web", None)
    with pytest.raises(ImportError, match=r"streamkit\[dashboard\]"):
        Dashboard()


# --------------------------------------------------------------------------- what it shows


async def test_every_stage_shows_every_item() -> None:
    n = 250
    source = Gate(list(range(n)))
    pipeline = map_(inc) | tap(print) | map_(double)
    watch = watched(pipeline, source)
    task = asyncio.create_task(watch.run.collect())
    await watch.serving.wait()
    (mirror,) = await watch_to_end(source, watch.url)
    assert await task == [2 * (x + 1) for x in range(n)]
    stats = watch.run.statistics()
    assert mirror.fields["run.items_out"] == n
    for stage in stats.stages:
        assert mirror.fields[f"stages.{stage.key}.items_in"] == n
        assert mirror.fields[f"stages.{stage.key}.items_out"] == n
        assert mirror.fields[f"stages.{stage.key}.status"] == "succeeded"
    assert [s["key"] for s in mirror.view["stages"]] == [s.key for s in stats.stages]  # type: ignore[index]
    assert mirror.ended is not None
    assert mirror.ended["status"] == "succeeded"


async def test_the_patches_add_up_to_the_final_view() -> None:
    # The end message carries the whole final view: the snapshot with every patch applied
    # must equal it (a client that missed nothing sees exactly what the run saw).
    source = Gate(list(range(40)), pause=0.01)
    watch = watched(map_(inc) | map_(fails_at_3), source, rate=20)
    task = asyncio.create_task(watch.run.drain())
    await watch.serving.wait()
    (mirror,) = await watch_to_end(source, watch.url)
    with pytest.raises(ValueError, match="no <b>3</b>"):
        await task
    assert mirror.patches >= 1
    assert mirror.ended is not None
    final = mirror.ended["view"]
    view = mirror.view
    assert view is not None
    for part in ("fields", "t", "series", "statuses", "errors", "state", "stages", "run"):
        assert view[part] == final[part], part


async def test_a_late_client_gets_the_same_view() -> None:
    source = Gate(list(range(60)), pause=0.01)
    pipeline = map_(inc) | scan_state(Key[int]("total"), lambda a, x: a + x, 0)
    watch = watched(pipeline, source, rate=20)
    task = asyncio.create_task(watch.run.drain())
    await watch.serving.wait()
    early, late = Mirror(), Mirror()
    async with aiohttp.ClientSession() as session:
        first = asyncio.create_task(follow(session, watch.url, early))
        await early.until(early.has_view)
        source.open()
        await early.until(lambda: early.patches >= 3)
        second = asyncio.create_task(follow(session, watch.url, late))
        await asyncio.gather(first, second)
    await task
    assert early.view is not None
    assert late.view is not None
    assert late.patches < early.patches  # it did connect later
    for part in ("fields", "t", "series", "statuses", "errors", "state", "stages", "run"):
        assert late.view[part] == early.view[part], part


async def test_status_transitions_of_a_run_that_succeeds() -> None:
    source = Gate([1, 2, 3], pause=0.05)
    watch = watched(map_(inc), source, rate=20)
    task = asyncio.create_task(watch.run.drain())
    await watch.serving.wait()
    (mirror,) = await watch_to_end(source, watch.url)
    await task
    assert mirror.statuses(None)[-2:] == ["running", "succeeded"]
    assert mirror.statuses("map_(inc)")[-2:] == ["executing", "succeeded"]
    assert mirror.ended == {"status": "succeeded", "view": mirror.ended["view"]}  # type: ignore[index]


async def test_a_failing_stage_shows_its_error() -> None:
    source = Gate(list(range(10)))
    watch = watched(map_(inc) | map_(fails_at_3), source)
    task = asyncio.create_task(watch.run.drain())
    await watch.serving.wait()
    (mirror,) = await watch_to_end(source, watch.url)
    with pytest.raises(ValueError, match="no <b>3</b>"):
        await task
    assert mirror.statuses(None)[-1] == "failed"
    assert mirror.fields["stages.map_(fails_at_3).status"] == "failed"
    assert mirror.ended is not None
    assert mirror.ended["status"] == "failed"
    assert mirror.view is not None
    (error,) = mirror.view["errors"]
    assert error["stage"] == "map_(fails_at_3)"
    assert error["kind"] == "fatal"
    assert error["type"] == "ValueError"
    assert error["message"] == "no <b>3</b> & no </script>"


async def test_a_retrying_stage_shows_the_retry() -> None:
    calls: dict[int, int] = {}

    def flaky(x: int) -> int:
        calls[x] = calls.get(x, 0) + 1
        if x == 2 and calls[x] == 1:
            raise ConnectionError("try again")
        return x

    guarded = with_retry(map_(flaky), attempts=3, backoff=ConstantBackoff(0.6))
    source = Gate([1, 2, 3])
    watch = watched(guarded, source)  # 4 updates a second: at least two in the wait
    task = asyncio.create_task(watch.run.collect())
    await watch.serving.wait()
    (mirror,) = await watch_to_end(source, watch.url)
    assert await task == [1, 2, 3]
    key = watch.run.statistics().stages[0].key
    assert "retrying" in mirror.statuses(key)
    assert mirror.statuses(key)[-1] == "succeeded"
    assert mirror.view is not None
    (retry,) = mirror.view["errors"]
    assert (retry["kind"], retry["type"], retry["attempt"], retry["index"]) == (
        "retry",
        "ConnectionError",
        1,
        1,
    )
    assert mirror.fields[f"stages.{key}.retries"] == 1


async def test_a_cancelled_run_ends_its_page() -> None:
    source = Gate(list(range(10_000)), pause=0.001)
    watch = watched(map_(inc), source)

    async def consume() -> None:
        async with watch.run:
            async for item in watch.run:
                if item == 20:
                    break

    task = asyncio.create_task(consume())
    await watch.serving.wait()
    (mirror,) = await watch_to_end(source, watch.url)
    await task
    assert watch.run.status == "cancelled"
    assert mirror.statuses(None)[-1] == "cancelled"
    assert mirror.ended is not None
    assert mirror.ended["status"] == "cancelled"


async def test_state_keys_and_their_history() -> None:
    total = Key[int]("total")
    source = Gate(list(range(1, 41)), pause=0.01)
    watch = watched(scan_state(total, lambda a, x: a + x, 0) | map_(lambda x: x), source, rate=20)
    task = asyncio.create_task(watch.run.collect())
    await watch.serving.wait()
    (mirror,) = await watch_to_end(source, watch.url)
    items = await task
    assert mirror.view is not None
    entry = mirror.view["state"]["total"]
    assert entry["value"] == items[-1].state[total] == sum(range(1, 41))
    values = [value for _, value in entry["history"]]
    assert len(values) >= 2
    assert values == sorted(values)


async def test_user_strings_are_escaped_in_the_stream() -> None:
    label = "<script>alert(1)</script>"
    state = Key[str]("note")
    source = Gate([1, 2, 3, 4], pause=0.05)
    pipeline = (
        map_(named(label))
        | scan_state(state, lambda _, x: f"<img src=x onerror=alert({x})>", "")
        | unwrap()
        | map_(fails_at_3)
    )
    watch = watched(pipeline, source, rate=20)
    task = asyncio.create_task(watch.run.drain())
    await watch.serving.wait()
    (mirror,) = await watch_to_end(source, watch.url)
    with pytest.raises(ValueError, match="no <b>3</b>"):
        await task
    assert mirror.view is not None
    assert mirror.view["stages"][0]["key"] == f"map_({label})"
    assert mirror.view["errors"][0]["message"] == "no <b>3</b> & no </script>"
    # The messages decode to the strings, but carry no raw '<', '>' or '&'.
    assert mirror.raw
    for raw in mirror.raw:
        assert not {"<", ">", "&"} & set(raw), raw[:200]
        assert "\n" not in raw


# --------------------------------------------------------------------------- security


class Served:
    """A run whose dashboard serves, and whose items wait for `finish`."""

    def __init__(self, dashboard: object) -> None:
        self.source = Gate([1, 2, 3])
        self.watch = watched(map_(inc), self.source, dashboard=dashboard)
        self.task: asyncio.Task[list[Any]] | None = None

    async def __aenter__(self) -> Self:
        self.task = asyncio.create_task(self.watch.run.collect())
        await self.watch.serving.wait()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.source.open()
        assert self.task is not None
        assert await self.task == [2, 3, 4]

    def at(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.watch.port}{path}"


async def test_it_binds_loopback_by_default() -> None:
    async with Served(True) as served:
        assert served.watch.url == f"http://127.0.0.1:{served.watch.port}/"
        async with (
            aiohttp.ClientSession() as session,
            session.get(served.at("/")) as page,
        ):
            assert page.status == 200
            assert page.content_type == "text/html"
            html = await page.text()
    assert 'data-mode="live"' in html
    assert "<script src" not in html  # everything is inline: the chart library too
    assert "uPlot" in html


@pytest.mark.parametrize("host", ["evil.example", "192.0.2.1", "localhost.evil.example"])
async def test_loopback_refuses_other_host_names(host: str) -> None:
    # DNS rebinding: a page of another site that reaches 127.0.0.1 still says its own Host.
    async with Served(True) as served, aiohttp.ClientSession() as session:
        for path in ("/", "/events"):
            headers = {"Host": f"{host}:{served.watch.port}"}
            async with session.get(served.at(path), headers=headers) as response:
                assert response.status == 403, path
                assert "loopback" in await response.text()
        headers = {"Host": f"localhost:{served.watch.port}"}
        async with session.get(served.at("/"), headers=headers) as response:
            assert response.status == 200


async def test_another_interface_needs_the_token() -> None:
    async with Served("0.0.0.0:0") as served:
        board = served.watch.run.dashboard
        assert board is not None
        assert board.token is not None
        assert served.watch.url == f"http://0.0.0.0:{served.watch.port}/?token={board.token}"
        # A wrong token differs from the right one in its last character only.
        other = "y" if board.token.endswith("x") else "x"
        async with aiohttp.ClientSession() as session:
            for path in ("/", "/events", "/?token=", f"/?token={board.token[:-1]}{other}"):
                async with session.get(served.at(path)) as response:
                    assert response.status == 403, path
                    assert "token" in await response.text()
            async with session.get(served.at(f"/?token={board.token}")) as response:
                assert response.status == 200
            events_at = events_url(served.at(f"/?token={board.token}"))
            async with session.get(events_at) as response:
                assert response.status == 200
                async for event, raw in events(response):
                    assert event == "init"
                    assert json.loads(raw)["run"]["id"] == served.watch.run.id
                    break


async def test_the_page_only_reads() -> None:
    async with Served(True) as served, aiohttp.ClientSession() as session:
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            for path in ("/", "/events"):
                async with session.request(method, served.at(path)) as response:
                    assert response.status == 405, (method, path)
        async with session.get(served.at("/anything")) as response:
            assert response.status == 404


async def test_responses_forbid_framing_and_foreign_scripts() -> None:
    async with (
        Served(True) as served,
        aiohttp.ClientSession() as session,
        session.get(served.at("/")) as page,
    ):
        headers = page.headers
        policy = headers["Content-Security-Policy"]
        html = await page.text()
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "no-referrer"
    assert "default-src 'none'" in policy
    assert "frame-ancestors 'none'" in policy
    nonce = policy.split("'nonce-", 1)[1].split("'", 1)[0]
    assert html.count(f'nonce="{nonce}"') == 3  # the styles and the two scripts


# --------------------------------------------------------------------------- cleanup


async def finished(consume: str) -> tuple[Run[Any], int]:
    """Run a watched run to its end in one of three ways; (the run, its dashboard's port)."""
    source = Gate(list(range(200)), pause=0.001)
    watch = watched(map_(inc) | map_(fails_at_3 if consume == "fail" else inc), source)

    async def run() -> None:
        if consume == "cancel":
            async with watch.run:
                async for item in watch.run:
                    if item == 10:
                        break
        else:
            await watch.run.drain()

    task = asyncio.create_task(run())
    await watch.serving.wait()
    await watch_to_end(source, watch.url, clients=2)
    if consume == "fail":
        with pytest.raises(ValueError, match="no <b>3</b>"):
            await task
    else:
        await task
    return watch.run, watch.port


@pytest.mark.parametrize(
    ("consume", "status"), [("drain", "succeeded"), ("fail", "failed"), ("cancel", "cancelled")]
)
async def test_the_server_stops_with_the_run(consume: str, status: str) -> None:
    before = open_sockets()
    run, port = await finished(consume)
    assert run.status == status
    board = run.dashboard
    assert board is not None
    assert not board.serving
    assert not listening(port)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    assert_no_pending_tasks()
    for _ in range(20):  # let the client's transports finish closing
        if open_sockets() <= before:
            break
        await asyncio.sleep(0.01)
    assert open_sockets() <= before
    assert not run.hook_errors


async def test_a_port_in_use_does_not_stop_the_run() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = Run(map_(inc), [1, 2], dashboard=f"127.0.0.1:{port}")
        assert await run.collect() == [2, 3]
    assert [error.hook for error in run.hook_errors] == ["on_run_start"]
    assert isinstance(run.hook_errors[0].exception, OSError)
    assert run.dashboard is not None
    assert not run.dashboard.serving
    assert run.dashboard.url is None
    assert_no_pending_tasks()


async def test_a_run_nobody_watches() -> None:
    run = Run(map_(inc), range(100), dashboard=True)
    assert await run.collect() == list(range(1, 101))
    assert run.dashboard is not None
    assert run.dashboard.url is not None  # it served, and stopped
    assert not run.dashboard.serving
    assert not run.hook_errors
    assert_no_pending_tasks()


def test_aiohttp_is_imported_only_for_a_dashboard() -> None:
    code = """
        import asyncio, sys, tempfile
        from pathlib import Path
        import streamkit
        from streamkit import Run, map_, write_report
        print(any(name.startswith("aiohttp") for name in sys.modules))
        sys.modules["aiohttp"] = None  # as if it were not installed
        with tempfile.TemporaryDirectory() as folder:
            run = Run(map_(str), range(3), state_history=folder)
            asyncio.run(run.drain())
            print(write_report(run.history_path, Path(folder) / "r.html").exists())
        try:
            Run(map_(str), range(3), dashboard=True)
        except ImportError as error:
            print(error)
    """
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "False",
        "True",
        "the dashboard needs aiohttp, which is not installed: pip install 'streamkit[dashboard]'",
    ]
