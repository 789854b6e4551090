"""Error-rate incidents in an access log: ``python -m examples.log_analytics [--lines N]``."""

import argparse
import asyncio
import random
import re
import tempfile
import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from itertools import groupby
from pathlib import Path
from typing import NamedTuple

from streamkit import Key, Run, State, filter_, lines, map_, reduce_point, set_state, stage

START, STAMP = 1_794_787_200, "%d/%b/%Y:%H:%M:%S +0000"  # 2026-11-16 00:00:00 UTC
INCIDENTS = ((0.21, 0.30), (0.57, 0.60), (0.83, 0.45))  # (where in the log, share of 5xx)
STATUSES = [200] * 88 + [304] * 5 + [301] + [404] * 4 + [403, 500]  # 1 % of 5xx otherwise
PATHS = ["/", "/index.html", "/api/users", "/search?q=shoes", "/static/app.js"]
AGENTS = ["Mozilla/5.0 (X11; Linux x86_64) Firefox/132.0", "curl/8.5.0", "Googlebot/2.1"]
LOG_LINE = re.compile(  # the combined log format
    r'(?P<host>\S+) \S+ (?P<user>\S+) \[(?P<time>[^]]+)\] "(?P<method>\S+) (?P<path>\S+) '
    r'[^"]*" (?P<status>\d{3}) (?P<size>\d+|-) "(?P<referrer>[^"]*)" "(?P<agent>[^"]*)"'
)
TABLE = "  {:<16}  {:<5}  {:>7}  {:>8}  {:>6}  {:>6}  {:>6}"
MINUTE = timedelta(minutes=1)
STATS = "  {:<44} {:>9} {:>9} {:>8} {:>7} {:>7}"


class Hit(NamedTuple):
    host: str
    time: str  # "16/Nov/2026:05:12:37 +0000"
    status: int


class Window(NamedTuple):
    start: datetime  # the minute, in the log's own time
    requests: int
    errors: int  # 5xx responses


Moments = tuple[int, float, float]  # count, sum and sum of squares of the 5xx rates
RATES, Z = Key[Moments]("5xx rate moments"), Key[float]("z")


def generate(path: Path, count: int, seed: int) -> float:  # two requests a second on average
    rng, clock, stamp, last, m = random.Random(seed), 0.0, "", -1, count / 120  # m: minutes
    bad = {round(m * at) + k: p for at, p in INCIDENTS for k in range(int(m) // 250 or 1)}
    with path.open("w", encoding="utf-8") as out:
        for _ in range(count):
            clock += rng.expovariate(2.0)
            if (second := int(clock)) != last:
                last, stamp = second, time.strftime(STAMP, time.gmtime(START + second))
            p = bad.get(second // 60, 0.0)
            status = rng.choice((502, 503, 504)) if rng.random() < p else rng.choice(STATUSES)
            request = "POST /api/orders" if rng.random() < 0.1 else f"GET {rng.choice(PATHS)}"
            line = (
                f"10.0.{rng.randrange(256)}.{rng.randrange(1, 255)} - - [{stamp}] "
                f'"{request} HTTP/1.1" {status} {rng.randrange(200, 60_000)} "-" '
                f'"{rng.choice(AGENTS)}"\n'
            )
            out.write(line[: rng.randrange(20, 60)] + "\n" if rng.random() < 1e-4 else line)
    return clock / 3600


def parse(line: str) -> Hit | None:
    m = LOG_LINE.match(line)  # None for a malformed (here: truncated) line
    return Hit(m["host"], m["time"], int(m["status"])) if m else None


# Windows of the log's own time. chunk(size, within=...) does not fit: `within` is wall-clock
# time in this process (an hour of log is read in milliseconds) and chunk(size) cuts minutes
# anywhere. A log is written in time order: a window closes when the next hit's minute differs.
@stage
async def minute_windows(hits: AsyncIterator[Hit]) -> AsyncIterator[Window]:
    minute, requests, errors = "", 0, 0
    async for hit in hits:
        if hit.time[:17] != minute:  # "16/Nov/2026:05:12"
            if requests:
                yield Window(datetime.strptime(minute, "%d/%b/%Y:%H:%M"), requests, errors)
            minute, requests, errors = hit.time[:17], 0, 0
        requests += 1
        errors += hit.status >= 500
    if requests:
        yield Window(datetime.strptime(minute, "%d/%b/%Y:%H:%M"), requests, errors)


def add_rate(acc: Moments, window: Window) -> Moments:
    return acc[0] + 1, acc[1] + (r := window.errors / window.requests), acc[2] + r * r


def mean_sd(moments: Moments) -> tuple[float, float]:
    n = max(moments[0], 1)  # an empty log has no windows
    mean = moments[1] / n
    return mean, max(moments[2] / n - mean * mean, 0.0) ** 0.5


def z_score(window: Window, state: State) -> float:
    mean, sd = mean_sd(state[RATES])
    return (window.errors / window.requests - mean) / sd if sd else 0.0


async def main() -> None:
    parser = argparse.ArgumentParser(description="Error-rate incidents in an access log.")
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    print(f"streamkit example: error-rate incidents in an access log (seed {args.seed})\n")
    with tempfile.TemporaryDirectory() as folder:
        path, started = Path(folder) / "access.log", time.perf_counter()
        hours = await asyncio.to_thread(generate, path, args.lines, args.seed)
        took, size = time.perf_counter() - started, path.stat().st_size
        print(
            f"generated {args.lines:,} lines ({size / 1e6:.0f} MB, {hours:.0f} h) in {took:.1f} s"
        )
        pipeline = (
            map_(parse)
            | filter_(bool)  # drops the malformed lines
            | minute_windows()
            | reduce_point(RATES, add_rate, (0, 0.0, 0.0))
            | set_state(Z, z_score, with_state=True)
        )
        source = lines(path)  # a resumable source: source.position() is a byte offset
        windows = await (run := Run(pipeline, source, name="log-analytics")).collect()
        position, stats = source.position(), run.statistics()
    moments = windows[0].state[RATES] if windows else (0, 0.0, 0.0)
    (mean, sd), requests = mean_sd(moments), sum(w.value.requests for w in windows)
    print(f"analysed {position:,} bytes in {stats.wall_time:.1f} s:", end=" ")
    print(f"{requests:,} requests, {len(windows):,} windows, {args.lines - requests} bad lines")
    print(f"\n5xx rate per window: mean {mean:.2%}, sd {sd:.2%}, flagged above {mean + 3 * sd:.2%}")
    flagged = enumerate(w.value for w in windows if w.state[Z] > 3)  # runs of consecutive minutes:
    runs = [[w for _, w in g] for _, g in groupby(flagged, lambda p: p[1].start - p[0] * MINUTE)]
    print(f"{sum(map(len, runs))} flagged windows in {len(runs)} incidents:")
    print(TABLE.format("from (UTC)", "to", "minutes", "requests", "5xx", "rate", "peak"))
    for ws in runs:
        total, bad = sum(w.requests for w in ws), sum(w.errors for w in ws)
        cells = (f"{ws[0].start:%Y-%m-%d %H:%M}", f"{ws[-1].start:%H:%M}", len(ws), f"{total:,}")
        rates = (f"{bad / total:.1%}", f"{max(w.errors / w.requests for w in ws):.1%}")
        print(TABLE.format(*cells, f"{bad:,}", *rates), "#" * round(30 * bad / total))
    print(f"\nrun statistics ({stats.status}, {stats.wall_time:.2f} s):")
    print(STATS.format("stage", "in", "out", "filtered", "p50 µs", "p95 µs"))
    for s in stats.stages:
        p50, p95 = (f"{t * 1e6:.1f}" if t is not None else "-" for t in (s.time_p50, s.time_p95))
        print(STATS.format(s.key[:44], f"{s.items_in:,}", f"{s.items_out:,}", s.filtered, p50, p95))


if __name__ == "__main__":
    asyncio.run(main())
