"""Static checks: the types of `windowed` and `chunk_until` in ``|`` chains.

Never run: mypy --strict and pyright strict check it (see chains.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import assert_type

from streamkit import (
    Envelope,
    Flow,
    Hopping,
    Late,
    Session,
    Sliding,
    Stage,
    Tumbling,
    Window,
    chunk_until,
    map_,
    windowed,
)


@dataclass(frozen=True)
class Click:
    user: str
    at: float


def at(click: Click) -> float:
    return click.at


def user(click: Click) -> str:
    return click.user


def count(total: int, click: Click) -> int:
    return total + 1


def parse(line: str) -> Click:
    return Click(line, 0.0)


def is_end(click: Click) -> bool:
    return click.user == ""


def on_late(record: Late) -> None:
    print(record.item, record.watermark)


def check_windowed(clicks: list[Click], lines: list[str], wrapped: list[Envelope[Click]]) -> None:
    assert_type(windowed(Tumbling(60), time=at), Stage[Click, Window[None, list[Click]]])
    assert_type(
        windowed(Hopping(60, hop=10), time=at, key=user), Stage[Click, Window[str, list[Click]]]
    )
    assert_type(
        windowed(Sliding(60), time=at, aggregate=count, initial=int),
        Stage[Click, Window[None, int]],
    )
    keyed = windowed(
        Session(gap=30), time=at, key=user, aggregate=count, initial=int, on_late=on_late
    )
    assert_type(keyed, Stage[Click, Window[str, int]])
    assert_type(clicks | keyed, Flow[Window[str, int]])
    assert_type(lines | map_(parse) | keyed, Flow[Window[str, int]])
    assert_type(map_(parse) | keyed, Stage[str, Window[str, int]])
    assert_type(wrapped | keyed, Flow[Envelope[Window[str, int]]])
    processing = windowed(Tumbling(1), time="processing", key=user)
    assert_type(processing, Stage[Click, Window[str, list[Click]]])
    windowed(Tumbling(60), time=user)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    windowed(Tumbling(60), time=at, emit="often")  # type: ignore[call-overload]  # pyright: ignore[reportArgumentType]


def check_chunk_until(clicks: list[Click], wrapped: list[Envelope[Click]]) -> None:
    assert_type(clicks | chunk_until(is_end), Flow[list[Click]])
    assert_type(clicks | chunk_until(is_end, max_size=10, within=5), Flow[list[Click]])
    assert_type(wrapped | chunk_until(is_end), Flow[Envelope[list[Click]]])
