"""Helpers for the dashboard tests: sources that wait to be watched, and a reader of the events.

A run with a dashboard serves only while it runs, so a test that watches it
gives it a `Gate` source: the run starts (and its dashboard serves) at once,
and the items flow only once the test has connected and opens the gate.
`Mirror` applies the server-sent events to a copy of the view, as the page
does, so that what a client ends up with can be compared with the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import urllib.parse
from typing import TYPE_CHECKING, Any

from streamkit import Dashboard, Hooks, Run

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    import aiohttp

    from streamkit import RunStatistics, Stage


class Gate:
    """The items of ``items``, once `open` has been called, ``pause`` seconds apart.

    `open` may be called from any thread (build the gate in the run's loop).
    """

    def __init__(self, items: list[Any], *, pause: float = 0.0) -> None:
        self.items = items
        self.pause = pause
        self._opened = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        with contextlib.suppress(RuntimeError):  # outside the loop: it is known at the first pull
            self._loop = asyncio.get_running_loop()
        self.waiting = asyncio.Event()
        """Set when the source has been pulled and waits for the gate."""

    def open(self) -> None:
        loop = self._loop
        if loop is None:
            self._opened.set()
        else:
            loop.call_soon_threadsafe(self._opened.set)

    async def _items(self) -> AsyncIterator[Any]:
        self._loop = asyncio.get_running_loop()
        self.waiting.set()
        await self._opened.wait()
        for item in self.items:
            if self.pause:
                await asyncio.sleep(self.pause)
            yield item

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._items()


@dataclasses.dataclass
class Watched:
    """A run with a dashboard, and an event set when the dashboard serves."""

    run: Run[Any]
    serving: asyncio.Event

    @property
    def url(self) -> str:
        board = self.run.dashboard
        assert board is not None
        assert board.url is not None, "the dashboard does not serve yet"
        return board.url

    @property
    def port(self) -> int:
        port = urllib.parse.urlsplit(self.url).port
        assert port is not None
        return port


def watched(
    pipeline: Stage[Any, Any],
    source: Any,
    *,
    dashboard: object = True,
    rate: float | None = None,
    on_run_start: Callable[[RunStatistics], object] | None = None,
    **options: Any,
) -> Watched:
    """A run of ``pipeline`` over ``source`` with a dashboard (``dashboard=True`` by default).

    ``rate`` asks for a `Dashboard` on 127.0.0.1 with that many updates a second.
    """
    if rate is not None:
        assert dashboard is True
        dashboard = Dashboard(rate=rate)
    serving = asyncio.Event()

    def started(stats: RunStatistics) -> None:
        serving.set()

    hooks = [Hooks(on_run_start=started)]
    if on_run_start is not None:
        hooks.append(Hooks(on_run_start=on_run_start))
    run: Run[Any] = Run(pipeline, source, dashboard=dashboard, hooks=hooks, **options)
    return Watched(run, serving)


def events_url(url: str) -> str:
    """The address of a dashboard's event stream, from the page's address (token kept)."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(path="/events"))


async def events(response: aiohttp.ClientResponse) -> AsyncIterator[tuple[str, str]]:
    """The (event, data) pairs of a server-sent event stream, until it ends; data as sent."""
    event, data = "message", ""
    async for raw in response.content:
        line = raw.decode("utf-8").rstrip("\r\n")
        if not line:
            if data:
                yield event, data
            event, data = "message", ""
        elif line.startswith("event: "):
            event = line.removeprefix("event: ")
        elif line.startswith("data: "):
            data += line.removeprefix("data: ")


class Mirror:
    """A client's copy of the view: the ``init`` snapshot with every ``patch`` applied."""

    def __init__(self) -> None:
        self.view: dict[str, Any] | None = None
        self.patches = 0
        self.ended: dict[str, Any] | None = None
        self.raw: list[str] = []
        """The data of every message as sent (to look for unescaped text)."""
        self.changed = asyncio.Condition()
        """Notified after each message (`follow` notifies it)."""

    def has_view(self) -> bool:
        """Whether the snapshot has come."""
        return self.view is not None

    async def until(self, predicate: Callable[[], bool]) -> None:
        """Wait until ``predicate()`` holds (it is checked after each message)."""
        async with self.changed:
            await self.changed.wait_for(predicate)

    def apply(self, event: str, raw: str) -> None:
        self.raw.append(raw)
        data = json.loads(raw)
        if event == "init":
            self.view = data
            return
        if event == "end":
            self.ended = data
            return
        assert event == "patch", event
        view = self.view
        assert view is not None, "a patch before the snapshot"
        self.patches += 1
        view["fields"].update(data.get("fields", {}))
        point = data.get("point")
        if point is not None:
            view["t"].append(point["t"])
            for name, values in view["series"].items():
                values.append(point[name])
        view["statuses"] += data.get("statuses", [])
        view["errors"] += data.get("errors", [])
        for name, value in data.get("state", {}).items():
            entry = view["state"].setdefault(name, {"value": None, "history": []})
            entry["value"] = value
            entry["history"].append([data["t"], value])

    @property
    def fields(self) -> dict[str, Any]:
        assert self.view is not None
        fields: dict[str, Any] = self.view["fields"]
        return fields

    def statuses(self, who: str | None) -> list[str]:
        """The statuses of the run (None) or of a step, in order, repeats dropped."""
        assert self.view is not None
        seen: list[str] = []
        for _, whose, status in self.view["statuses"]:
            if whose == who and (not seen or seen[-1] != status):
                seen.append(status)
        return seen


async def follow(session: aiohttp.ClientSession, url: str, mirror: Mirror) -> None:
    """Read a dashboard's events into ``mirror`` until the stream ends."""
    async with session.get(events_url(url)) as response:
        assert response.status == 200, await response.text()
        async for event, raw in events(response):
            mirror.apply(event, raw)
            async with mirror.changed:
                mirror.changed.notify_all()


def open_sockets() -> set[str]:
    """The inodes of this process's open sockets (Linux: ``/proc/self/fd``)."""
    found: set[str] = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:  # closed meanwhile (the listing's own descriptor)
            continue
        if target.startswith("socket:"):
            found.add(target)
    return found


def listening(port: int) -> bool:
    """Whether a socket of this machine listens on TCP ``port`` (``/proc/net/tcp*``)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as file:
                rows = file.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            columns = row.split()
            local, state = columns[1], columns[3]
            if int(local.rsplit(":", 1)[1], 16) == port and state == "0A":  # TCP_LISTEN
                return True
    return False
