"""Resumable document ingest: ``python -m examples.ingest [--docs DIR] [--db PATH]``."""

import argparse
import asyncio
import hashlib
import json
import math
import os
import random
import re
import sqlite3
import tempfile
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import streamkit as sk

WORDS, OVERLAP, BATCH, DIMS, TOP = 80, 20, 32, 64, 5  # chunks of 80 words, 20 of them shared
LIMIT, RATE, ERRORS, CRASHED = 8, 10, 0.05, 3  # the service takes 8 calls a second, we make 10
REQUEST = "POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n"
SCHEMA = "CREATE TABLE IF NOT EXISTS chunks (file, idx, text, vector, top, PRIMARY KEY(file, idx))"
TERM, STATS = re.compile(r"[a-z][a-z0-9_]+"), "  {:>5} {:>5} {:>8} {:>7} {:>4}  {:.60}"
DF = sk.Key[dict[str, int]]("document frequencies")  # per term, the number of chunks it is in
Chunk = tuple[str, int, str, dict[str, float]]  # file, index, text, top terms by tf-idf


def embedding(text: str) -> list[float]:  # the service's: signed feature hashing, normalised
    hashes = [int(hashlib.sha256(t.encode()).hexdigest(), 16) for t in TERM.findall(text.lower())]
    vector = [sum(1 if h >> 255 else -1 for h in hashes if h % DIMS == i) for i in range(DIMS)]
    return [round(x / (math.hypot(*vector) or 1), 5) for x in vector]


class Service(BaseHTTPRequestHandler):  # POST {"texts": [...]} -> {"vectors": [...]}
    latency, rng, lock, recent = 0.005, random.Random(9), threading.Lock(), list[float]()

    def do_POST(self) -> None:
        texts = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["texts"]
        with self.lock:  # over LIMIT calls in the last second: 429
            now, failed = time.monotonic(), self.rng.random() < ERRORS
            self.recent[:] = [t for t in self.recent if now - t < 1] + [now]
            limited = len(self.recent) > LIMIT
        time.sleep(self.latency)
        self.send_response_only(429 if limited else 500 if failed else 200)  # not logged
        self.send_header("Retry-After", "1")  # read only with a 429
        self.end_headers()
        if not (limited or failed):
            self.wfile.write(json.dumps({"vectors": [embedding(t) for t in texts]}).encode())


class Ingest:  # the pipeline's functions and the counts they keep
    def __init__(self, db: sqlite3.Connection, port: int, stop_after: int) -> None:
        self.db, self.port, self.stop_after, self.batches = db, port, stop_after, 0
        self.http, self.stored, self.read, self.terms = Counter[int](), Counter[str](), 0, 0

    async def split(self, item: tuple[str, Path]) -> list[Chunk]:  # windows of WORDS words
        file, words = item[0], (await asyncio.to_thread(item[1].read_text, "utf-8")).split()
        self.read += 1
        starts = range(0, max(len(words) - OVERLAP, 1), WORDS - OVERLAP)
        return [(file, i, " ".join(words[s : s + WORDS]), {}) for i, s in enumerate(starts)]

    def count(self, df: dict[str, int], chunk: Chunk) -> dict[str, int]:  # reduce_point's fold
        for term in {"", *TERM.findall(chunk[2].lower())}:  # "" is in every chunk: df[""] is n
            df[term] = df.get(term, 0) + 1  # a dict, not a Counter: JSON keeps it as it is
        return df

    def weigh(self, chunk: Chunk, state: sk.State) -> Chunk:  # tf-idf against the whole corpus
        n, df, tf = state[DF][""], state[DF], Counter(TERM.findall(chunk[2].lower()))
        self.terms = len(df) - 1  # "" counts the chunks, not a term
        w = {t: k / tf.total() * math.log(n / df[t]) for t, k in tf.items()}
        return *chunk[:3], {t: round(w[t], 4) for t in sorted(w, key=w.__getitem__)[-TOP:]}

    async def embed(self, batch: list[Chunk]) -> list[tuple[Chunk, list[float]]]:
        body = json.dumps({"texts": [c[2] for c in batch]}).encode()
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write(REQUEST.format(len(body)).encode() + body)  # a minimal HTTP/1.1 POST
        head, _, payload = (await reader.read()).partition(b"\r\n\r\n")
        writer.close()
        self.http[status := int(head.split()[1])] += 1
        await asyncio.sleep((status == 429) * int(re.findall(rb"Retry-After: (\d+)", head)[0]))
        if status != 200:  # 429 and 5xx are retried (ConnectionError), others dead-lettered
            raise (ConnectionError if status == 429 or status >= 500 else LookupError)(status)
        return list(zip(batch, json.loads(payload)["vectors"], strict=True))

    async def write(self, pairs: list[tuple[Chunk, list[float]]]) -> list[str]:
        rows = [(*c[:3], json.dumps(v), json.dumps(c[3])) for c, v in pairs]
        with self.db:  # one transaction per batch; upserts: a file done twice is stored once
            self.db.executemany("INSERT OR REPLACE INTO chunks VALUES (?, ?, ?, ?, ?)", rows)
        self.stored.update(row[0] for row in rows)
        if (batches := self.batches + 1) == self.stop_after:  # after the commit: a crash, as
            os._exit(CRASHED)  # abrupt as a SIGKILL, before the run's next checkpoint
        self.batches = batches
        return list(dict.fromkeys(row[0] for row in rows))


async def main() -> None:
    parser = argparse.ArgumentParser(description="Ingest Markdown files into SQLite, resumably.")
    parser.add_argument("--docs", type=Path, default=Path(__file__).parent.parent / "docs")
    parser.add_argument("--db", default=os.path.join(tempfile.gettempdir(), "ingest.db"))
    parser.add_argument("--stop-after", type=int, default=0, help="crash after N batches stored")
    parser.add_argument("--latency", type=float, default=0.005, help="service latency, seconds")
    args = parser.parse_args()
    server, Service.latency = ThreadingHTTPServer(("127.0.0.1", 0), Service), args.latency
    threading.Thread(target=server.serve_forever, daemon=True).start()
    files = [(p.relative_to(args.docs).as_posix(), p) for p in sorted(args.docs.rglob("*.md"))]
    print(f"streamkit example: ingest {len(files)} Markdown files from {args.docs} into {args.db}")
    version = hashlib.sha256(str([f for f, _ in files]).encode()).hexdigest()  # of the file list
    (db := sqlite3.connect(args.db)).execute(SCHEMA)  # vector and top {term: tf-idf}: JSON
    ingest = Ingest(db, server.server_address[1], args.stop_after)
    lost = list[sk.ErrorRecord[object]]()  # the batches that still failed after 5 attempts
    async with sk.SQLiteStore(f"{args.db}.checkpoints") as store:
        if (last := await store.load("ingest")) and last.version != version:  # other files:
            await store.delete("ingest")  # the checkpoint's position and idf would be stale
        done = last.items if last and last.version == version else 0
        print(f"resumed: {done} files already read, {len(files) - done} to do", flush=True)
        embed = sk.map_(ingest.embed, concurrency=4, on_error="split", dead_letter=lost.append)
        pipeline = (
            sk.envelop(limits=sk.StateLimits.UNLIMITED)  # the corpus statistics exceed 16 KiB
            | sk.flat_map(ingest.split, concurrency=4)  # reads 4 files at once
            | sk.reduce_point(DF, ingest.count, sk.Factory(dict))  # its totals: in each checkpoint
            | sk.map_(ingest.weigh, with_state=True)
            | sk.unwrap()
            | sk.chunk(BATCH)
            | sk.throttle(RATE)
            | sk.with_retry(embed, attempts=5, backoff=sk.exponential(0.05), retry_on=OSError)
            | sk.map_(ingest.write)
        )
        # A checkpoint after each file read: a resume reads only the files after it
        run = sk.Run(pipeline, files, name="ingest", checkpoint=store, every=1, version=version)
        await run.drain()
    server.shutdown()
    server.server_close()
    tops = Counter(t for (top,) in db.execute("SELECT top FROM chunks") for t in json.loads(top))
    db.close()
    stats, http, stored = run.statistics(), ingest.http, ingest.stored
    print(
        f"read {ingest.read} files; stored {len(stored)} files, {stored.total():,} chunks,", end=""
    )
    print(f" in {stats.wall_time:.1f} s")
    print(f"{http[200]} batches in {http.total()} HTTP calls ({http[429]} HTTP 429,", end=" ")
    print(f"{http[500]} HTTP 500), {stats.stages[7].retries} retries, {len(lost)} dead letters")
    print(f"corpus: {ingest.terms:,} terms; top:", ", ".join(t for t, _ in tops.most_common(10)))
    print(f"\nrun statistics ({stats.status}, {stats.wall_time:.2f} s):")
    print(STATS.format("in", "out", "filtered", "retries", "dead", "stage"))
    for s in stats.stages:
        print(STATS.format(s.items_in, s.items_out, s.filtered, s.retries, s.dead_lettered, s.key))


if __name__ == "__main__":
    asyncio.run(main())
