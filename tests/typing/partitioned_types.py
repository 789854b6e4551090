"""Static checks for partitioned workers and streamkit.redis (mypy --strict, pyright strict).

Nothing here runs: pytest does not collect this file and the functions are
never called. ``assert_type`` fails the type checkers when a type drifts.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import assert_type

from streamkit import Broker, MemoryStore, Partitioned, Partitions, Stage, map_, write_to
from streamkit.redis import Entry, StreamGroup, StreamSink


def _amount(entry: Entry) -> float:
    return float(entry.fields["amount"])


def check_a_worker_yields_the_pipeline_outputs() -> None:
    group = StreamGroup("redis://localhost/0", "orders", partitions=6)
    worker = Partitioned(map_(_amount), group, store=MemoryStore(), name="orders")
    assert_type(worker, Partitioned[float])
    assert_type(aiter(worker), AsyncIterator[float])
    assert_type(group.partitions, tuple[str, ...])
    assert_type(group.owned(), tuple[str, ...])
    broker: Broker = group  # a StreamGroup is a Broker
    assert_type(broker.stop(), None)


def check_an_entry() -> None:
    entry = Entry("0", "1-0", {"n": "1"})
    assert_type(entry.fields, Mapping[str, str])
    assert_type(entry.id, str)


async def check_partitions(partitions: Partitions) -> None:
    assert_type(partitions.owned(), tuple[str, ...])
    assert_type(partitions.name("3"), str)
    await partitions.revoke("3")
    await partitions.abandon("3")


def check_a_stream_sink() -> None:
    sink = StreamSink("redis://localhost/0", "totals", exactly_once=True)
    assert_type(sink.exactly_once, bool)
    assert_type(map_(_amount) | write_to(sink), Stage[Entry, float])
    Partitioned(map_(_amount), "redis", store=MemoryStore(), name="x")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
