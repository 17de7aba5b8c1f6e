"""Ordered coders: byte order equals value order, and tuple prefixes select exactly."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from aiolmdb.coders import (
    BytesCoder,
    Coder,
    DateTimeCoder,
    IdentityCoder,
    Int64Coder,
    JSONCoder,
    MsgpackCoder,
    PickleCoder,
    PydanticCoder,
    StringCoder,
    TupleCoder,
    UInt16Coder,
    UInt32Coder,
    UInt64Coder,
    UUIDCoder,
)


def ints(low: int, high: int) -> st.SearchStrategy[int]:
    """Ints in ``low..high``, often at or next to the edges and the middle."""
    edges = {low, high, 0, 1, -1, low + 1, high - 1, (low + high) // 2, (low + high) // 2 + 1}
    return st.integers(low, high) | st.sampled_from(sorted(e for e in edges if low <= e <= high))


# Small alphabets so that draws share prefixes; they include the bytes that
# escaping handles (0x00, 0xFF) and multi-byte UTF-8 sequences.
TEXT = st.text(alphabet="\x00\x01a\x7f\x80\xff\u0100\u20ac\U0001f600", max_size=5) | st.text()
BINARY = st.lists(st.sampled_from([0x00, 0x01, 0x7F, 0xFE, 0xFF]), max_size=5).map(bytes)
BINARY |= st.binary()
UINT16 = ints(0, 2**16 - 1)
INT64 = ints(-(2**63), 2**63 - 1)
# Fixed offsets only: a zoneinfo datetime in a fold compares unequal to the
# same instant in any other zone, which is Python's rule, not the coder's.
FIXED_TZ = st.builds(
    lambda minutes: timezone(timedelta(minutes=minutes)), st.integers(-24 * 60 + 1, 24 * 60 - 1)
)
AWARE = st.datetimes(
    min_value=datetime(2, 1, 1),
    max_value=datetime(9998, 12, 31),
    timezones=st.just(timezone.utc) | FIXED_TZ,
)

ORDERED: list[tuple[Coder[Any], st.SearchStrategy[Any]]] = [
    (IdentityCoder(), BINARY),
    (BytesCoder(), BINARY),
    (StringCoder(), TEXT),
    (StringCoder("UTF8"), TEXT),
    (UInt16Coder(), UINT16),
    (UInt32Coder(), ints(0, 2**32 - 1)),
    (UInt64Coder(), ints(0, 2**64 - 1)),
    (Int64Coder(), INT64),
    (UUIDCoder(), st.uuids() | ints(0, 2**128 - 1).map(lambda n: uuid.UUID(int=n))),
    (DateTimeCoder(), AWARE),
]

TUPLES: list[tuple[Coder[Any], st.SearchStrategy[tuple[Any, ...]]]] = [
    (TupleCoder(StringCoder()), st.tuples(TEXT)),
    (TupleCoder(StringCoder(), Int64Coder()), st.tuples(TEXT, INT64)),
    (TupleCoder(BytesCoder(), StringCoder()), st.tuples(BINARY, TEXT)),
    (
        TupleCoder(UInt64Coder(), StringCoder(), BytesCoder()),
        st.tuples(ints(0, 2**64 - 1), TEXT, BINARY),
    ),
    # An element that may start with 0xFF right after a variable-width one.
    (TupleCoder(BytesCoder(), BytesCoder()), st.tuples(BINARY, BINARY)),
    (TupleCoder(BytesCoder(), UInt16Coder()), st.tuples(BINARY, UINT16)),
    (TupleCoder(Int64Coder(), StringCoder(), BytesCoder()), st.tuples(INT64, TEXT, BINARY)),
    (TupleCoder(UUIDCoder(), DateTimeCoder()), st.tuples(st.uuids(), AWARE)),
    (
        TupleCoder(TupleCoder(StringCoder(), UInt16Coder()), BytesCoder()),
        st.tuples(st.tuples(TEXT, UINT16), BINARY),
    ),
]


def ids(case: tuple[Coder[Any], Any]) -> str:
    """Name a case by its coder."""
    return repr(case[0])


@pytest.mark.parametrize(
    ("coder", "values"), ORDERED + TUPLES, ids=[ids(c) for c in ORDERED + TUPLES]
)
@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_byte_order_is_value_order(
    coder: Coder[Any], values: st.SearchStrategy[Any], data: st.DataObject
) -> None:
    assert coder.ordered
    a = data.draw(values)
    b = data.draw(values)
    ea, eb = coder.serialize(a), coder.serialize(b)
    assert (a < b) == (ea < eb)
    assert (a == b) == (ea == eb)


@given(TEXT, TEXT)
def test_string_prefix(value: str, prefix: str) -> None:
    coder = StringCoder()
    assert coder.serialize(value).startswith(coder.serialize_prefix(prefix)) == value.startswith(
        prefix
    )


@given(BINARY, BINARY)
def test_bytes_prefix(value: bytes, prefix: bytes) -> None:
    for coder in (IdentityCoder(), BytesCoder()):
        assert coder.serialize(value).startswith(coder.serialize_prefix(prefix)) == (
            value.startswith(prefix)
        )


@pytest.mark.parametrize(("coder", "values"), TUPLES, ids=[ids(c) for c in TUPLES])
@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_tuple_prefix(
    coder: Coder[tuple[Any, ...]], values: st.SearchStrategy[tuple[Any, ...]], data: st.DataObject
) -> None:
    full = data.draw(values)
    other = data.draw(values)
    n = data.draw(st.integers(0, len(full)))
    encoded = coder.serialize(full)
    assert encoded.startswith(coder.serialize_prefix(full[:n]))
    # Exactly the tuples starting with the prefix share its bytes.
    prefix = other[:n]
    assert encoded.startswith(coder.serialize_prefix(prefix)) == (full[:n] == prefix)


@given(st.tuples(TEXT, INT64), st.tuples(TEXT, INT64))
def test_prefix_sorts_before_its_extensions(a: tuple[str, int], b: tuple[str, int]) -> None:
    coder = TupleCoder(StringCoder(), Int64Coder())
    prefix = coder.serialize_prefix(a[:1])
    assert (prefix <= coder.serialize(b)) == (a[:1] <= b[:1])


@pytest.mark.parametrize(
    "coder",
    [
        JSONCoder(),
        PickleCoder(),
        MsgpackCoder(),
        PydanticCoder(BaseModel),
        StringCoder("latin-1"),
        StringCoder("utf-16"),
        StringCoder("utf-8-sig"),
        StringCoder().compressed(),
        UInt16Coder().compressed(),
        TupleCoder(StringCoder()).compressed(),
        BytesCoder().compressed(level=0),
    ],
    ids=repr,
)
def test_unordered(coder: Coder[Any]) -> None:
    assert not coder.ordered
