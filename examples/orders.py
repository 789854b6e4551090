"""Orders in local currencies, priced in euros: the pipeline `make demo` runs with `streamkit run`.

    .venv/bin/streamkit run examples/orders.py:pipeline --input examples/data/orders.csv

Each input line is an order, ``day,order,country,quantity,unit price``, priced in the
country's currency. Comments, blank lines and malformed orders are dropped; the orders are
priced in batches of 8 by a (simulated) exchange-rate service, 4 batches at a time, retried
when the service fails; each order comes out as one JSON line.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import NamedTuple

from streamkit import Stage, chunk, constant, filter_, flatten, map_, with_retry

CURRENCIES = {
    "CH": "CHF",
    "DE": "EUR",
    "FR": "EUR",
    "GB": "GBP",
    "IT": "EUR",
    "JP": "JPY",
    "SE": "SEK",
    "US": "USD",
}
EUROS_PER_UNIT = {
    "CHF": Decimal("1.06"),
    "EUR": Decimal("1"),
    "GBP": Decimal("1.19"),
    "JPY": Decimal("0.0062"),
    "SEK": Decimal("0.088"),
    "USD": Decimal("0.92"),
}


class Order(NamedTuple):
    day: str
    order: str
    country: str
    quantity: int
    unit_price: Decimal


def parse(line: str) -> Order | None:
    """An order, or None for a comment, a blank line or a malformed order."""
    fields = line.split(",")
    if line.startswith("#") or len(fields) != 5 or fields[2] not in CURRENCIES:
        return None
    day, order, country, quantity, price = fields
    if not quantity.isdigit():
        return None
    return Order(day, order, country, int(quantity), Decimal(price))


def is_order(order: Order | None) -> bool:
    return order is not None


def as_order(order: Order | None) -> Order:
    assert order is not None
    return order


class RateService:
    """Stands in for an HTTP service: one call prices a batch; its first call fails."""

    def __init__(self) -> None:
        self.calls = 0

    async def rates(self, currencies: set[str]) -> dict[str, Decimal]:
        self.calls += 1
        first = self.calls == 1
        await asyncio.sleep(0.02)  # the round trip
        if first:
            raise ConnectionError("rate service: connection reset")
        return {currency: EUROS_PER_UNIT[currency] for currency in currencies}


SERVICE = RateService()


async def price_batch(orders: list[Order]) -> list[dict[str, object]]:
    rates = await SERVICE.rates({CURRENCIES[order.country] for order in orders})
    return [
        {
            "order": order.order,
            "day": order.day,
            "country": order.country,
            "quantity": order.quantity,
            "eur": float(order.quantity * order.unit_price * rates[CURRENCIES[order.country]]),
        }
        for order in orders
    ]


def rounded(priced: dict[str, object]) -> dict[str, object]:
    eur = priced["eur"]
    assert isinstance(eur, float)
    return {**priced, "eur": round(eur, 2)}


pipeline: Stage[str, dict[str, object]] = (
    map_(parse)
    | filter_(is_order)
    | map_(as_order)
    | chunk(8)
    | with_retry(
        map_(price_batch, concurrency=4),
        attempts=3,
        backoff=constant(0.01),
        retry_on=ConnectionError,
    )
    | flatten()
    | map_(rounded)
)
"""Lines of ``orders.csv`` in, one dict per valid order out."""
