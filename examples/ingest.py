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
DF = sk.Key[Counter[str]]("document frequencies")  # per term, the number of chunks it is in
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


class Ingest:  # the pipeline's functions, the counts they keep, the checkpoint they save
    def __init__(self, db: sqlite3.Connection, store: sk.SQLiteStore, port: int) -> None:
        self.db, self.store, self.port, self.stop_after, self.done = db, store, port, 0, list[str]()
        self.http, self.expected, self.stored = Counter[int](), Counter[str](), Counter[str]()

    async def split(self, item: tuple[str, Path]) -> list[Chunk]:  # windows of WORDS words
        file, words = item[0], (await asyncio.to_thread(item[1].read_text, "utf-8")).split()
        self.expected[file] = len(starts := range(0, max(len(words) - OVERLAP, 1), WORDS - OVERLAP))
        return [(file, i, " ".join(words[s : s + WORDS]), {}) for i, s in enumerate(starts)]

    def count(self, df: Counter[str], chunk: Chunk) -> Counter[str]:  # reduce_point's fold
        df.update(set(TERM.findall(chunk[2].lower())))
        return df

    def weigh(self, chunk: Chunk, state: sk.State) -> Chunk:  # tf-idf against the whole corpus
        n, df, tf = self.expected.total(), state[DF], Counter(TERM.findall(chunk[2].lower()))
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
        new = [f for f in dict.fromkeys(r[0] for r in rows) if self.stored[f] == self.expected[f]]
        for file in new:  # all its chunks are committed: into the checkpoint it goes
            self.done.append(file)
            await self.store.save(sk.Checkpoint("ingest", None, {"done": self.done}))
            if len(self.done) == self.stop_after:  # a crash, as abrupt as a SIGKILL
                os._exit(CRASHED)
        return new


async def main() -> None:
    parser = argparse.ArgumentParser(description="Ingest Markdown files into SQLite, resumably.")
    parser.add_argument("--docs", type=Path, default=Path(__file__).parent.parent / "docs")
    parser.add_argument("--db", default=os.path.join(tempfile.gettempdir(), "ingest.db"))
    parser.add_argument("--stop-after", type=int, default=0, help="crash after N files stored")
    parser.add_argument("--latency", type=float, default=0.005, help="service latency, seconds")
    args = parser.parse_args()
    server, Service.latency = ThreadingHTTPServer(("127.0.0.1", 0), Service), args.latency
    threading.Thread(target=server.serve_forever, daemon=True).start()
    files = {p.relative_to(args.docs).as_posix(): p for p in sorted(args.docs.rglob("*.md"))}
    print(f"streamkit example: ingest {len(files)} Markdown files from {args.docs} into {args.db}")
    df, lost = Counter[str](), list[sk.ErrorRecord[list[Chunk]]]()
    (db := sqlite3.connect(args.db)).execute(SCHEMA)  # vector and top {term: tf-idf}: JSON
    async with sk.SQLiteStore(f"{args.db}.checkpoints") as store:
        ingest, last = Ingest(db, store, server.server_address[1]), await store.load("ingest")
        done = ingest.done = list(last.state["done"]) if last else []
        todo, ingest.stop_after = set(files) - set(done), args.stop_after + len(done)
        print(f"resumed: {len(done)} files already stored, {len(todo)} to do", flush=True)
        # On resume all files are still read and split, as idf needs the whole corpus (cheap),
        # but only the chunks of files not stored yet are embedded (costly) and stored.
        embed = sk.map_(ingest.embed, concurrency=4, on_error="split", dead_letter=lost.append)
        pipeline = (
            sk.envelop(limits=sk.StateLimits.UNLIMITED)  # the corpus statistics exceed 16 KiB
            | sk.flat_map(ingest.split, concurrency=4)  # reads 4 files at once
            | sk.reduce_point(DF, ingest.count, df)  # upstream has all run: ingest.expected too
            | sk.filter_(lambda chunk: chunk[0] in todo)
            | sk.map_(ingest.weigh, with_state=True)
            | sk.unwrap()
            | sk.chunk(BATCH)
            | sk.throttle(RATE)
            | sk.with_retry(embed, attempts=5, backoff=sk.exponential(0.05), retry_on=OSError)
            | sk.map_(ingest.write)
        )
        run = sk.Run(pipeline, list(files.items()), name="ingest")
        stored = [file for batch in await run.collect() for file in batch]
    server.shutdown()
    server.server_close()
    tops = Counter(t for (top,) in db.execute("SELECT top FROM chunks") for t in json.loads(top))
    db.close()
    stats, http, chunks = run.statistics(), ingest.http, sum(ingest.expected[f] for f in stored)
    print(f"stored {len(stored)} files, {chunks:,} chunks, in {stats.wall_time:.1f} s")
    print(f"{http[200]} batches in {http.total()} HTTP calls ({http[429]} HTTP 429,", end=" ")
    print(f"{http[500]} HTTP 500), {stats.stages[8].retries} retries, {len(lost)} dead letters")
    print(f"corpus: {len(df):,} terms; top:", ", ".join(t for t, _ in tops.most_common(10)))
    print(f"\nrun statistics ({stats.status}, {stats.wall_time:.2f} s):")
    print(STATS.format("in", "out", "filtered", "retries", "dead", "stage"))
    for s in stats.stages:
        print(STATS.format(s.items_in, s.items_out, s.filtered, s.retries, s.dead_lettered, s.key))


if __name__ == "__main__":
    asyncio.run(main())
