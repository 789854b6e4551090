"""Dead letters and error records keep their item through the codec, so they can be replayed."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
from typing import TYPE_CHECKING, Any

import pytest

from streamkit import (
    DEFAULT_CODEC,
    DeadLetters,
    Envelope,
    ErrorRecord,
    ErrorReport,
    Key,
    MemoryStore,
    Run,
    State,
    collect,
    envelop,
    map_,
    unwrap,
)

if TYPE_CHECKING:
    from pathlib import Path

PRIORITY = Key[int]("priority")


@dataclasses.dataclass(frozen=True)
class Order:
    id: int
    placed: dt.date
    tags: tuple[str, ...] = ()


ORDERS = [
    Order(1, dt.date(2026, 1, 2)),
    Order(2, dt.date(2026, 1, 3), ("rush",)),
    Order(3, dt.date(2026, 1, 4)),
]


def price(order: Order) -> float:
    if order.tags:
        raise ValueError(f"cannot price a {order.tags[0]} order")
    return 10.0 * order.id


def replay(records: list[ErrorRecord[Any]]) -> list[Any]:
    """Every record through its JSON form and back: the items, as they were."""
    return [ErrorRecord.from_json(record.to_json()).item for record in records]


async def test_a_collected_record_round_trips_its_dataclass_item() -> None:
    report = ErrorReport()
    assert await collect(ORDERS | map_(price, on_error="collect", report=report)) == [10.0, 30.0]
    (record,) = report.records
    data = json.loads(record.to_json())
    assert data["item"] != repr(ORDERS[1])  # not a repr: the codec's form
    (back,) = replay([record])
    assert back == ORDERS[1]
    assert type(back) is Order
    assert type(back.tags) is tuple


async def test_a_dead_letter_of_an_envelope_stream_round_trips_item_and_state() -> None:
    dead = DeadLetters()
    flow = envelop({PRIORITY: 5}) | map_(price, on_error="split", dead_letter=dead) | unwrap()
    assert await collect(ORDERS | flow) == [10.0, 30.0]
    dead.close()
    (record,) = [record async for record in dead]
    restored = ErrorRecord.from_json(record.to_json())
    assert restored.item == ORDERS[1]
    assert isinstance(restored.state, State)
    assert restored.state[PRIORITY] == 5
    # Replayed through the same stage, the item fails the same way.
    again = ErrorReport()
    replayed = Envelope(restored.item, restored.state)
    await collect([replayed] | map_(price, on_error="collect", report=again))
    assert [r.item for r in again.records] == [ORDERS[1]]


async def test_a_checkpointed_run_saves_dead_letters_the_store_gives_back_as_items() -> None:
    store = MemoryStore()
    pipeline = envelop({PRIORITY: 1}) | map_(price, on_error="split", dead_letter=[].append)
    await Run(pipeline, ORDERS, name="orders", checkpoint=store, every=1).collect()
    (letter,) = await store.dead_letters("orders")
    restored = ErrorRecord.from_encoded(letter.record)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    assert restored.item == ORDERS[1]
    assert restored.state is not None
    assert restored.state[PRIORITY] == 1  # type: ignore[index]  # pyright: ignore[reportIndexIssue]


def test_the_run_history_keeps_failed_items_through_the_codec(tmp_path: Path) -> None:
    report = ErrorReport()
    pipeline = map_(price, on_error="collect", report=report)
    asyncio.run(Run(pipeline, ORDERS, name="orders", state_history=tmp_path).collect())
    (failures,) = tmp_path.glob("*/stage_0_failures.json")
    (data,) = json.loads(failures.read_text(encoding="utf-8"))["records"]
    assert ErrorRecord.from_encoded(data).item == ORDERS[1]


def test_an_item_the_codec_cannot_encode_falls_back_to_default() -> None:
    class Opaque:
        def __repr__(self) -> str:
            return "<opaque>"

    record = ErrorRecord(stage="s", index=0, item=Opaque(), exception=KeyError("k"), attempts=1)
    assert json.loads(record.to_json())["item"] == "<opaque>"
    assert json.loads(record.to_json(default=lambda value: "?"))["item"] == "?"
    with pytest.raises(TypeError, match="the item of s cannot be encoded"):
        record.to_json(default=None)


def test_a_custom_codec_encodes_and_decodes_the_item() -> None:
    codec = DEFAULT_CODEC.with_type(
        complex, encode=lambda c: [c.real, c.imag], decode=lambda d: complex(*d), name="complex"
    )
    record = ErrorRecord(stage="s", index=0, item=1 + 2j, exception=KeyError("k"), attempts=1)
    assert ErrorRecord.from_json(record.to_json(codec=codec), codec=codec).item == 1 + 2j
    assert ErrorRecord.from_json(record.to_json()).item == "(1+2j)"  # the default: a repr


def test_plain_json_items_keep_their_plain_form() -> None:
    record = ErrorRecord(stage="s", index=0, item={"a": [1, "x"]}, exception=KeyError(), attempts=1)
    assert json.loads(record.to_json())["item"] == {"a": [1, "x"]}
    assert ErrorRecord.from_json(record.to_json()).item == {"a": [1, "x"]}
