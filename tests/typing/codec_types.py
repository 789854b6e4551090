"""Static checks for the codecs (mypy --strict, pyright strict).

Nothing here runs: pytest does not collect this file and the functions are
never called. ``assert_type`` fails the type checkers when a type drifts.
"""

from __future__ import annotations

import dataclasses
import decimal
from typing import Any, assert_type

from streamkit import (
    DEFAULT_CODEC,
    Codec,
    CodecError,
    Key,
    State,
    TypedCodec,
    decode_state,
    encode_state,
)


@dataclasses.dataclass(frozen=True)
class Money:
    amount: decimal.Decimal
    currency: str


class MoneyCodec:
    def encode(self, value: Money, /) -> Any:
        return [str(value.amount), value.currency]

    def decode(self, data: Any, /) -> Money:
        return Money(decimal.Decimal(data[0]), data[1])


def money_from(data: Any) -> Money:
    return Money(data["amount"], data["currency"])


def money_to(money: Money) -> object:
    return {"amount": money.amount, "currency": money.currency}


def codecs() -> None:
    codec: Codec[Money] = MoneyCodec()
    assert_type(codec.encode(Money(decimal.Decimal(1), "EUR")), Any)
    assert_type(codec.decode([]), Money)
    assert_type(DEFAULT_CODEC, TypedCodec)
    assert_type(DEFAULT_CODEC.with_type(Money, encode=money_to, decode=money_from), TypedCodec)
    assert_type(DEFAULT_CODEC.types, tuple[type[Any], ...])
    default: Codec[Any] = DEFAULT_CODEC
    assert_type(default.decode(None), Any)
    DEFAULT_CODEC.with_type(Money, encode=money_to, decode=str)  # type: ignore[arg-type]  # pyright: ignore


def keys() -> None:
    price = Key[Money]("price", codec=MoneyCodec())
    assert_type(price.codec, Codec[Money] | None)
    Key[int]("count", codec=MoneyCodec())  # type: ignore[arg-type]  # pyright: ignore
    assert_type(encode_state(State(), [price]), dict[str, Any])
    assert_type(decode_state({}, [price], where="pricing"), dict[str, Any])


def errors(error: CodecError) -> None:
    assert_type(error.where, str | None)
    assert_type(error.path, str)
    assert_type(error.value_type, type[Any])
    assert_type(error.decoding, bool)
