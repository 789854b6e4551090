"""A polite crawler of a local site: ``python -m examples.crawler [--pages N]``.

It serves generated pages on 127.0.0.1 (broken links, slow pages, pages failing once with a
503) and crawls them. The crawl feeds itself: the source, `Frontier.links()`, is a queue of
links in the order they were found (breadth-first) that `tap(frontier.discover)` refills
from each page; links that failed for good go to the dead-letter sink. It ends when nothing
is queued or in flight, or after --pages links; ordered=True makes every run crawl alike.
"""

import argparse
import asyncio
import random
import re
import threading
import time
from collections import Counter, deque
from collections.abc import AsyncIterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar, NamedTuple
from urllib.parse import urljoin, urlsplit

from streamkit import ErrorRecord, Run, constant, map_, tap, throttle, with_retry

RATE, TRANSIENT = 50, (ConnectionError, TimeoutError)  # at most 50 requests a second
REQUEST = "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: streamkit\r\nConnection: close\r\n\r\n"
STATS = "  {:>5} {:>5} {:>6} {:>7} {:>4} {:>6} {:>6}  {}"


class Page(NamedTuple):
    url: str
    seconds: float
    hrefs: list[str]


def build_site(size: int, seed: int) -> dict[str, tuple[str, str]]:  # path -> (kind, html)
    rng, site = random.Random(seed), {}
    for i in range(size):
        links = [f"/p/{j}" for j in dict.fromkeys([i + 1, *rng.sample(range(size), 3)]) if j < size]
        links += [f"/gone/{rng.randrange(12)}"] * (rng.random() < 0.12)  # broken links
        links += ["https://example.org/"] * (rng.random() < 0.1)  # off-site links
        items = "".join(f'<li><a href="{href}">{href}</a></li>' for href in links)
        kind = rng.choices(["ok", "slow", "flaky"], [92, 4, 4])[0]
        site[f"/p/{i}"] = kind, f"<html><title>Page {i}</title><ul>{items}</ul></html>"
    return site


class Site(BaseHTTPRequestHandler):
    pages: ClassVar[dict[str, tuple[str, str]]] = {}

    def do_GET(self) -> None:
        kind, html = self.pages.get(self.path, ("missing", ""))
        if kind == "flaky":  # fails once, then recovers
            self.pages[self.path] = "ok", html
        time.sleep(0.3 if kind == "slow" else 0)
        self.send_response({"missing": 404, "flaky": 503}.get(kind, 200))
        self.end_headers()
        self.wfile.write(html.encode())

    def log_message(self, format: str, *args: object) -> None: ...  # no access log on stderr


async def fetch(url: str) -> Page:  # a minimal HTTP/1.1 GET on asyncio streams
    started, parts = time.perf_counter(), urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        writer.write(REQUEST.format(parts.path, parts.netloc).encode())
        head, _, body = (await reader.read()).partition(b"\r\n\r\n")  # to the end of the stream
    finally:
        writer.close()
        await writer.wait_closed()
    if (status := int(head.split()[1])) != 200:  # a 5xx is transient: retry_on matches it
        raise (ConnectionError if status >= 500 else LookupError)(f"HTTP {status}")
    return Page(url, time.perf_counter() - started, re.findall(r'href="([^"]+)"', body.decode()))


class Frontier:
    def __init__(self, root: str, limit: int) -> None:
        self.origin, self.queue, self.depth = root[: root.index("/", 8)], deque([root]), {root: 0}
        self.limit, self.handed_out, self.in_flight, self.off_site = limit, 0, 0, 0
        self.referrers: dict[str, list[str]] = {}
        self.dead: list[ErrorRecord[str]] = []
        self.settled = asyncio.Event()

    async def links(self) -> AsyncIterator[str]:
        while self.handed_out < self.limit and (self.queue or self.in_flight):
            if self.queue:
                self.handed_out, self.in_flight = self.handed_out + 1, self.in_flight + 1
                yield self.queue.popleft()
            else:
                self.settled.clear()
                await self.settled.wait()

    def discover(self, page: Page) -> None:
        for url in (urljoin(page.url, href) for href in page.hrefs):
            self.off_site += not url.startswith(self.origin)  # polite: stay on the given site
            if url.startswith(self.origin) and url not in self.depth:
                self.depth[url] = self.depth[page.url] + 1
                self.queue.append(url)
            self.referrers.setdefault(url, []).append(urlsplit(page.url).path)
        self.in_flight -= 1
        self.settled.set()

    def failed(self, record: ErrorRecord[str]) -> None:  # the dead-letter sink
        self.dead.append(record)
        self.in_flight -= 1
        self.settled.set()


async def main() -> None:
    parser = argparse.ArgumentParser(description="A polite crawler of a local site.")
    parser.add_argument("--pages", type=int, default=500, help="follow at most this many links")
    args = parser.parse_args()
    Site.pages = build_site(300, seed=7)
    n = Counter(kind for kind, _ in Site.pages.values())
    server = ThreadingHTTPServer(("127.0.0.1", 0), Site)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    frontier = Frontier(f"http://127.0.0.1:{server.server_address[1]}/p/0", args.pages)
    print("streamkit example: a polite crawler of a local site\n")
    print(f"serving {n.total()} pages ({n['slow']} slow, {n['flaky']} flaky) at", frontier.origin)
    fetching = map_(fetch, concurrency=4, timeout=2, on_error="split", dead_letter=frontier.failed)
    fetching = with_retry(fetching, attempts=3, backoff=constant(0.05), retry_on=TRANSIENT)
    # One host: one token bucket is the per-host limit (several: one per host, then merge()).
    run = Run(throttle(RATE) | fetching | tap(frontier.discover), frontier.links(), name="crawl")
    try:
        pages = await run.collect()
    finally:
        server.shutdown()
        server.server_close()
    stats, dead = run.statistics(), sorted(frontier.dead, key=lambda record: record.item)
    depth = max((frontier.depth[page.url] for page in pages), default=0)
    print(f"followed {frontier.handed_out} links in {stats.wall_time:.1f} s, to depth {depth}:")
    print(f"  {len(pages)} pages, {len(dead)} broken, {frontier.off_site} off-site links skipped")
    print("\nbroken links (dead letters), with the pages that link to them:")
    for d in dead:
        referrers = ", ".join(frontier.referrers[d.item])
        print(f"  {urlsplit(d.item).path:<9} {d.exception}  from {referrers}")
    print("\nslowest pages:")
    for p in sorted(pages, key=lambda p: -p.seconds)[:5]:
        print(f"  {urlsplit(p.url).path:<9} {p.seconds:.3f} s, depth {frontier.depth[p.url]}")
    print(f"\nrun statistics ({stats.status}, {stats.wall_time:.2f} s):")
    print(STATS.format("in", "out", "errors", "retries", "dead", "p50 ms", "p95 ms", "stage"))
    for s in stats.stages:
        p50, p95 = (f"{t * 1e3:.1f}" if t is not None else "-" for t in (s.time_p50, s.time_p95))
        cells = (s.items_in, s.items_out, s.errors, s.retries, s.dead_lettered, p50, p95)
        print(STATS.format(*cells, s.key))


if __name__ == "__main__":
    asyncio.run(main())
