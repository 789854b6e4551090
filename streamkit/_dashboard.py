"""A live web page of a run: `Dashboard`, served by aiohttp for as long as the run lasts.

``Run(pipeline, source, dashboard=...)`` opens the dashboard when the run
starts and closes it when the run ends (`streamkit._feed.Feed` drives it).
The server has two read-only routes: ``/``, the page (`streamkit._view.render_page`,
self-contained), and ``/events``, a stream of server-sent events: an ``init``
snapshot of the run's view, a ``patch`` per update (4 a second by default),
and ``end`` with the final snapshot. A client that connects late gets the
snapshot, so every client shows the same thing.

Security: it binds 127.0.0.1 by default, and then only answers requests whose
``Host`` is a loopback name (a page of another site cannot reach it through
DNS rebinding). Binding any other interface requires a token, generated
unless given, that every request must carry (``?token=...``, in the URL the
dashboard prints). Every response forbids framing, sniffing and referrers;
the page may run only its own script. aiohttp is imported only here (the
``dashboard`` extra).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
from typing import TYPE_CHECKING, Any, Final

from ._runtime import shielded, spawn
from ._view import content_security_policy, new_nonce, render_page, to_json

if TYPE_CHECKING:
    from aiohttp import web

    from ._feed import Feed

DEFAULT_HOST: Final = "127.0.0.1"

_TOKEN: Final = re.compile(r"[A-Za-z0-9_-]{16,128}")
_HOST: Final = re.compile(r"[A-Za-z0-9.:_-]{1,253}")
_ADDRESS: Final = re.compile(
    r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^:\[\]]*)):(?P<port>[0-9]{1,5})"
)
_QUEUE: Final = 256
"""Messages waiting for one client; a client that falls this far behind is disconnected
(its page reconnects and starts again from a snapshot)."""
_CLOSE_SECONDS: Final = 2.0
"""How long closing waits for the clients to receive the end of the run."""
_HEADERS: Final = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (``localhost``, 127.0.0.0/8, ``::1``).

    Examples:
        >>> is_loopback("127.0.0.1"), is_loopback("localhost"), is_loopback("0.0.0.0")
        (True, True, False)
    """
    if host.lower() == "localhost":
        return True
    import ipaddress  # here, as the other imports of a dashboard: not at `import streamkit`

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Client:
    """One page connected to ``/events``: its queue of messages, and whether it has left."""

    __slots__ = ("gone", "queue")

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=_QUEUE)
        self.gone = asyncio.Event()

    def stop(self, last: bytes | None) -> None:
        """Send what is waiting and ``last`` (if any), then close the stream.

        A client too far behind to take two more messages gets ``last`` only.
        """
        if self.queue.maxsize - self.queue.qsize() < 2:
            while not self.queue.empty():
                self.queue.get_nowait()
        if last is not None:
            self.queue.put_nowait(last)
        self.queue.put_nowait(None)


def _message(event: str, data: object) -> bytes:
    return f"event: {event}\ndata: {to_json(data)}\n\n".encode()


class Dashboard:
    """A live web page of one run: its stages, rates, latencies, errors, state keys and status.

    Give it to a run (``Run(pipeline, source, dashboard=Dashboard())``, or
    ``dashboard=True`` / ``dashboard="HOST:PORT"``): it serves while the run
    runs, from its first pull to its end, and stops with it. `url` is the
    address to open (the dashboard's hooks run before yours, so it is known
    in your ``on_run_start``). A dashboard serves one run.

    It binds 127.0.0.1 by default and then answers only requests addressed
    to a loopback name. Any other ``host`` requires a ``token`` (one is
    generated if none is given), carried by the URL: requests without it are
    refused (403). The page only reads; it never changes the run.

    Args:
        host: The interface to bind (``"127.0.0.1"``; ``"0.0.0.0"`` for all).
        port: The TCP port (0: any free port).
        token: The secret every request must carry (at least 16 letters,
            digits, ``-`` or ``_``); required, and generated when None, for a
            host that is not a loopback address.
        rate: Updates per second sent to the page (positive, at most 60).

    Raises:
        TypeError: An argument has the wrong type.
        ValueError: An argument is out of range or malformed.
        ImportError: aiohttp is not installed (``pip install 'streamkit[dashboard]'``).

    Examples:
        >>> board = Dashboard(port=0)
        >>> board.host, board.token is None, board.url is None
        ('127.0.0.1', True, True)
        >>> Dashboard(host="0.0.0.0").token is not None  # another interface: a token
        True
    """

    __slots__ = (
        "_clients",
        "_closing",
        "_feed",
        "_hosts",
        "_runner",
        "_url",
        "_used",
        "host",
        "port",
        "rate",
        "token",
    )

    def __init__(
        self,
        *,
        host: str = DEFAULT_HOST,
        port: int = 0,
        token: str | None = None,
        rate: float = 4.0,
    ) -> None:
        if not isinstance(host, str):  # pyright: ignore[reportUnnecessaryIsInstance] - untyped callers
            raise TypeError(f"host must be a string, got {type(host).__name__}")
        if not _HOST.fullmatch(host):
            raise ValueError(f"host must be a host name or an IP address, got {host!r}")
        given_port: object = port
        if not isinstance(given_port, int) or isinstance(given_port, bool):  # pyright: ignore[reportUnnecessaryIsInstance] - untyped callers
            raise TypeError(f"port must be an int, got {type(given_port).__name__}")
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be in 0..65535 (0: any free port), got {port}")
        if token is not None:
            if not isinstance(token, str):  # pyright: ignore[reportUnnecessaryIsInstance] - untyped callers
                raise TypeError(f"token must be a string or None, got {type(token).__name__}")
            if not _TOKEN.fullmatch(token):
                raise ValueError(
                    "token must be 16 to 128 letters, digits, '-' or '_' (it is part of the URL)"
                )
        given: object = rate
        if not isinstance(given, int | float) or isinstance(given, bool):  # pyright: ignore[reportUnnecessaryIsInstance] - untyped callers
            raise TypeError(f"rate must be a number, got {type(given).__name__}")
        if not (0 < given <= 60 and math.isfinite(given)):
            raise ValueError(f"rate must be positive and at most 60, got {given}")
        try:  # now rather than when the run starts: its import takes a while
            import aiohttp.web  # noqa: F401  # pyright: ignore[reportUnusedImport]
        except ImportError:
            raise ImportError(
                "the dashboard needs aiohttp, which is not installed: "
                "pip install 'streamkit[dashboard]'"
            ) from None
        self.host = host
        """The interface it binds."""
        self.port = port
        """The port asked for (0: any free port; `url` has the one bound)."""
        if token is None and not is_loopback(host):
            import secrets

            token = secrets.token_urlsafe(24)
        self.token = token
        """The secret requests must carry (None: none needed on a loopback address)."""
        self.rate = float(rate)
        """Updates per second sent to the page."""
        self._url: str | None = None
        self._used = False
        self._feed: Feed | None = None
        self._runner: web.AppRunner | None = None
        self._clients: set[_Client] = set()
        self._closing = False
        self._hosts: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, address: str, **options: Any) -> Dashboard:
        """A dashboard for ``"HOST:PORT"``, ``":PORT"``, ``"PORT"``, ``"[IPv6]:PORT"``, ``"HOST"``.

        Args:
            address: Where to serve; a missing host is 127.0.0.1, a missing port 0.
            **options: ``token`` and ``rate``, as for `Dashboard`.

        Raises:
            ValueError: ``address`` is malformed.

        Examples:
            >>> board = Dashboard.parse("127.0.0.1:8765")
            >>> board.host, board.port
            ('127.0.0.1', 8765)
            >>> Dashboard.parse(":0").host
            '127.0.0.1'
        """
        if not isinstance(address, str):  # pyright: ignore[reportUnnecessaryIsInstance] - untyped callers
            raise TypeError(f"dashboard address must be a string, got {type(address).__name__}")
        text = address.strip()
        if text.isdigit():
            host, port = DEFAULT_HOST, text
        elif (match := _ADDRESS.fullmatch(text)) is not None:
            host = match["v6"] or match["host"] or DEFAULT_HOST
            port = match["port"]
        elif text and ":" not in text:
            host, port = text, "0"
        else:
            raise ValueError(
                f"dashboard address must be HOST:PORT, :PORT, PORT or HOST, got {address!r}"
            )
        return cls(host=host, port=int(port), **options)

    def __repr__(self) -> str:
        where = self._url or f"{self.host}:{self.port}"
        return f"<Dashboard {where} {'serving' if self.serving else 'not serving'}>"

    @property
    def url(self) -> str | None:
        """The page's address (with the token, if any) once serving; None before."""
        return self._url

    @property
    def serving(self) -> bool:
        """Whether it is serving now (from the run's start to its end)."""
        return self._runner is not None

    # -- the run's side ----------------------------------------------------

    def claim(self) -> None:
        """Mark it as the dashboard of a run; a second run is refused (`ValueError`)."""
        if self._used:
            raise ValueError("this Dashboard already belongs to a run: a Dashboard serves one run")
        self._used = True

    async def open(self, feed: Feed) -> None:
        """Start serving the view of ``feed`` (called when the run starts)."""
        from aiohttp import web

        self._feed = feed

        @web.middleware
        async def guard(request: web.Request, handler: Any) -> web.StreamResponse:
            reason = self._allowed(request)
            if reason is not None:
                return web.Response(status=403, text=f"forbidden: {reason}\n", headers=_HEADERS)
            response: web.StreamResponse = await handler(request)
            return response

        app = web.Application(middlewares=[guard])
        app.router.add_get("/", self._page)
        app.router.add_get("/events", self._events)
        runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=_CLOSE_SECONDS
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        address: Any = runner.addresses[0]
        port = int(address[1])
        shown = f"[{self.host}]" if ":" in self.host else self.host
        self._hosts = frozenset(
            f"{name}:{port}" for name in ("127.0.0.1", "localhost", "[::1]", shown.lower())
        )
        query = "" if self.token is None else f"?token={self.token}"
        self._url = f"http://{shown}:{port}/{query}"

    def publish(self, patch: dict[str, Any]) -> None:
        """Send a patch of the view to every page connected."""
        if not self._clients:
            return
        message = _message("patch", patch)
        for client in list(self._clients):
            try:
                client.queue.put_nowait(message)
            except asyncio.QueueFull:
                self._clients.discard(client)
                client.stop(None)

    async def close(self) -> None:
        """Tell the pages the run has ended, and stop serving (called when the run ends)."""
        runner = self._runner
        if runner is None:
            return
        await shielded(spawn(self._shutdown(runner)))

    async def _shutdown(self, runner: web.AppRunner) -> None:
        self._closing = True
        end = self._end()
        clients = list(self._clients)
        for client in clients:
            client.stop(end)
        if clients:
            await asyncio.wait(
                [spawn(client.gone.wait()) for client in clients], timeout=_CLOSE_SECONDS
            )
        try:
            await runner.cleanup()
        finally:
            self._runner = None
            self._clients.clear()

    def _end(self) -> bytes:
        """The last message: the run's final status and its whole view."""
        feed = self._feed
        view = None if feed is None else feed.view
        if view is None:  # pragma: no cover - served only once started
            return _message("end", {"status": None, "view": None})
        return _message("end", {"status": view.fields.get("run.status"), "view": view.snapshot()})

    # -- the server's side -------------------------------------------------

    def _allowed(self, request: web.Request) -> str | None:
        """Why ``request`` is refused (None: it is allowed)."""
        if self.token is not None:
            import hmac

            given = request.query.get("token", "")
            if not hmac.compare_digest(given.encode(), self.token.encode()):
                return "this dashboard needs its token: open the URL it printed"
            return None
        if request.host.lower() not in self._hosts:
            return "this dashboard answers only requests to a loopback address"
        return None

    async def _page(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        nonce = new_nonce()
        headers = {
            **_HEADERS,
            "Content-Security-Policy": content_security_policy(nonce, live=True)
            + "; frame-ancestors 'none'",
        }
        return web.Response(
            text=render_page(None, nonce=nonce),
            content_type="text/html",
            charset="utf-8",
            headers=headers,
        )

    async def _events(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        response = web.StreamResponse(
            headers={**_HEADERS, "Content-Type": "text/event-stream; charset=utf-8"}
        )
        await response.prepare(request)
        feed = self._feed
        if feed is None or feed.view is None:  # pragma: no cover - served only once started
            return response
        client = _Client()
        # The snapshot is queued and the client registered at once, with no await
        # between them: no patch can fall between the snapshot and the first patch.
        client.queue.put_nowait(b"retry: 1000\n" + _message("init", feed.view.snapshot()))
        if self._closing:
            client.stop(self._end())
        else:
            self._clients.add(client)
        try:
            while (message := await client.queue.get()) is not None:
                await response.write(message)
        except ConnectionError:  # the page went away
            pass
        finally:
            self._clients.discard(client)
            client.gone.set()
        with contextlib.suppress(ConnectionError):
            await response.write_eof()
        return response


def check_dashboard(dashboard: object) -> Dashboard | None:
    """The `Dashboard` for ``Run(dashboard=...)``: a Dashboard, ``"HOST:PORT"``, a bool or None."""
    if dashboard is None or dashboard is False:
        return None
    if dashboard is True:
        board = Dashboard()
    elif isinstance(dashboard, str):
        board = Dashboard.parse(dashboard)
    elif isinstance(dashboard, Dashboard):
        board = dashboard
    else:
        raise TypeError(
            "dashboard must be a Dashboard, an address 'HOST:PORT', a bool or None, "
            f"got {type(dashboard).__name__}"
        )
    board.claim()
    return board
