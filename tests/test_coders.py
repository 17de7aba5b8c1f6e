"""Round trips, errors, reprs and fuzzing of every coder in aiolmdb.coders."""

from __future__ import annotations

import pickle
import uuid
import zlib
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict, Field, computed_field, field_serializer
from typing_extensions import assert_type

from aiolmdb.coders import (
    Buffer,
    BytesCoder,
    Coder,
    CompressedCoder,
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
from aiolmdb.errors import DecodeError, EncodeError

# --- models and strategies ---------------------------------------------------


class Address(BaseModel):
    """A nested model."""

    city: str
    zip_code: int


class User(BaseModel):
    """A model with fields of mixed types."""

    id: int
    name: str
    score: float
    active: bool
    tags: list[str]
    seen: datetime | None = None
    address: Address


class AdminUser(User):
    """A subclass with a field of its own."""

    level: int = 1


class Aliased(BaseModel):
    """Fields with aliases and a computed field must still round trip."""

    model_config = ConfigDict(extra="forbid")

    user_id: int = Field(alias="userId")

    @computed_field  # type: ignore[prop-decorator]
    @property
    def double(self) -> int:
        """A derived value, not stored."""
        return self.user_id * 2


INT64 = st.integers(-(2**63), 2**63 - 1)
# Fixed offsets in whole minutes: pydantic's ISO format drops offset seconds.
FIXED_TZ = st.builds(
    lambda minutes: timezone(timedelta(minutes=minutes)), st.integers(-23 * 60 - 59, 23 * 60 + 59)
)
ZONES = st.one_of(st.just(timezone.utc), FIXED_TZ, st.timezones())
# Keep clear of datetime.min/max so that every instant exists in UTC.
AWARE = st.datetimes(min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31), timezones=ZONES)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | INT64 | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
MSGPACK_VALUES = st.recursive(
    st.none() | st.booleans() | INT64 | st.floats(allow_nan=False) | st.text() | st.binary(),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=8) | INT64, children, max_size=4)
    ),
    max_leaves=12,
)
USERS = st.builds(
    User,
    id=INT64,
    name=st.text(),
    score=st.floats(allow_nan=False, allow_infinity=False),
    active=st.booleans(),
    tags=st.lists(st.text(max_size=10), max_size=5),
    seen=st.none()
    | st.datetimes(timezones=st.none() | FIXED_TZ)
    | st.datetimes(min_value=datetime(2, 1, 1), timezones=FIXED_TZ),
    address=st.builds(Address, city=st.text(), zip_code=INT64),
)


def named(coder: Coder[Any]) -> str:
    """The coder an error names: a compressed coder passes its inner coder's errors through."""
    return repr(coder.inner if isinstance(coder, CompressedCoder) else coder)


def both_buffers(data: bytes) -> list[Buffer]:
    """``data`` as bytes and as a memoryview over a private bytearray."""
    return [data, memoryview(bytearray(data))]


# --- round trips ---------------------------------------------------------------


@given(st.binary())
def test_identity_and_bytes_round_trip(value: bytes) -> None:
    for coder in (IdentityCoder(), BytesCoder()):
        assert coder.serialize(value) == value
        assert coder.serialize(bytearray(value)) == value
        assert coder.serialize(memoryview(value)) == value
        for buf in both_buffers(value):
            out = coder.deserialize(buf)
            assert type(out) is bytes
            assert out == value


def test_identity_copies_the_buffer() -> None:
    backing = bytearray(b"abc")
    out = IdentityCoder().deserialize(memoryview(backing))
    backing[0] = ord("z")
    assert out == b"abc"


@given(st.text())
def test_string_round_trip(value: str) -> None:
    for coder in (StringCoder(), StringCoder("utf-16"), StringCoder("utf8")):
        for buf in both_buffers(coder.serialize(value)):
            assert coder.deserialize(buf) == value


@given(st.text(alphabet=st.characters(max_codepoint=255)))
def test_latin1_round_trip(value: str) -> None:
    coder = StringCoder("latin-1")
    assert coder.serialize(value) == value.encode("latin-1")
    assert coder.deserialize(memoryview(coder.serialize(value))) == value


@pytest.mark.parametrize(
    ("coder", "low", "high"),
    [
        (UInt16Coder(), 0, 2**16 - 1),
        (UInt32Coder(), 0, 2**32 - 1),
        (UInt64Coder(), 0, 2**64 - 1),
        (Int64Coder(), -(2**63), 2**63 - 1),
    ],
)
@given(data=st.data())
def test_int_round_trip(coder: Coder[int], low: int, high: int, data: st.DataObject) -> None:
    value = data.draw(st.integers(low, high) | st.sampled_from([low, high, 0, 1]))
    encoded = coder.serialize(value)
    assert len(encoded) == coder.fixed_width
    for buf in both_buffers(encoded):
        assert coder.deserialize(buf) == value


def test_int_encodings() -> None:
    assert UInt16Coder().serialize(65535) == b"\xff\xff"
    assert UInt32Coder().serialize(1) == b"\x00\x00\x00\x01"
    assert Int64Coder().serialize(0) == b"\x80" + bytes(7)
    assert Int64Coder().serialize(-1) == b"\x7f" + b"\xff" * 7


@given(st.uuids())
def test_uuid_round_trip(value: uuid.UUID) -> None:
    coder = UUIDCoder()
    assert coder.serialize(value) == value.bytes
    for buf in both_buffers(coder.serialize(value)):
        assert coder.deserialize(buf) == value


@given(AWARE)
def test_datetime_round_trip(value: datetime) -> None:
    coder = DateTimeCoder()
    for buf in both_buffers(coder.serialize(value)):
        out = coder.deserialize(buf)
        assert out.tzinfo is timezone.utc
        # Compare in UTC: datetimes in a zoneinfo fold never equal other zones'.
        assert out == value.astimezone(timezone.utc)


@given(JSON_VALUES)
def test_json_round_trip(value: Any) -> None:
    coder = JSONCoder()
    for buf in both_buffers(coder.serialize(value)):
        assert coder.deserialize(buf) == value


def test_json_is_compact_utf8() -> None:
    assert JSONCoder().serialize({"a": [1, "é"]}) == '{"a":[1,"é"]}'.encode()


@given(MSGPACK_VALUES)
def test_msgpack_round_trip(value: Any) -> None:
    coder = MsgpackCoder()
    for buf in both_buffers(coder.serialize(value)):
        assert coder.deserialize(buf) == value


@given(MSGPACK_VALUES | st.sets(st.integers()) | st.tuples(st.text(), st.floats(allow_nan=False)))
def test_pickle_round_trip(value: Any) -> None:
    for coder in (PickleCoder(), PickleCoder(protocol=2)):
        for buf in both_buffers(coder.serialize(value)):
            assert coder.deserialize(buf) == value


@pytest.mark.parametrize("fmt", ["json", "msgpack"])
@given(user=USERS)
def test_pydantic_round_trip(fmt: str, user: User) -> None:
    coder = PydanticCoder(User, format="json" if fmt == "json" else "msgpack")
    for buf in both_buffers(coder.serialize(user)):
        out = coder.deserialize(buf)
        assert type(out) is User
        assert out == user


@pytest.mark.parametrize("fmt", ["json", "msgpack"])
def test_pydantic_subclass_aliases_computed_fields(fmt: str) -> None:
    user = User(
        id=1, name="a", score=0.5, active=True, tags=[], address=Address(city="c", zip_code=1)
    )
    admin = AdminUser(**user.model_dump(), level=3)
    coder = PydanticCoder(User, format="json" if fmt == "json" else "msgpack")
    assert coder.deserialize(coder.serialize(admin)) == user
    aliased = PydanticCoder(Aliased, format="json" if fmt == "json" else "msgpack")
    value = Aliased(userId=7)
    assert aliased.deserialize(aliased.serialize(value)) == value


class Measure(BaseModel):
    value: float
    note: str | None = None
    maybe: float | None = None


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_pydantic_json_refuses_a_float_it_would_write_as_null(bad: float) -> None:
    coder = PydanticCoder(Measure)
    with pytest.raises(EncodeError, match=r"Measure.*NaN or infinite float.*msgpack"):
        coder.serialize(Measure(value=bad))
    with pytest.raises(EncodeError, match="NaN or infinite"):
        coder.serialize(Measure(value=1.0, maybe=bad))  # would read back as None
    # None is written as null and reads back: still accepted.
    assert coder.deserialize(coder.serialize(Measure(value=1.0))) == Measure(value=1.0)
    packed = PydanticCoder(Measure, format="msgpack")
    assert packed.deserialize(packed.serialize(Measure(value=bad))).value == pytest.approx(
        bad, nan_ok=True
    )


class Infinite(BaseModel):
    model_config = ConfigDict(ser_json_inf_nan="constants")
    x: float


class HoldsInfinite(BaseModel):
    inner: Infinite
    note: str | None = None


class ToNone(BaseModel):
    n: int

    @field_serializer("n")
    def hide(self, n: int) -> int | None:
        return None


def test_pydantic_json_checks_every_dump_that_holds_null() -> None:
    # A nested model that keeps infinities, next to a None: reads back, stored.
    coder = PydanticCoder(HoldsInfinite)
    value = HoldsInfinite(inner=Infinite(x=float("inf")))
    assert coder.deserialize(coder.serialize(value)) == value
    # A serializer writing None where the field needs an int: refused.
    with pytest.raises(EncodeError, match="would not read back"):
        PydanticCoder(ToNone).serialize(ToNone(n=1))


class Secret(BaseModel):
    name: str
    password: str = Field(exclude=True)


class Hidden(BaseModel):
    name: str
    cache: str = Field("", exclude=True)


class Inner(BaseModel):
    name: str
    secret: str = Field(exclude=True)


class Outer(BaseModel):
    inner: Inner
    others: list[Inner] = []


def test_pydantic_checks_every_dump_when_a_nested_model_excludes_fields() -> None:
    coder = PydanticCoder(Outer)
    with pytest.raises(EncodeError, match=r"Outer.*would not read back.*secret"):
        coder.serialize(Outer(inner=Inner(name="a", secret="s")))


def test_pydantic_refuses_a_model_it_could_never_read_back() -> None:
    with pytest.raises(TypeError, match=r"Secret.*\['password'\].*exclude=True"):
        PydanticCoder(Secret)
    coder = PydanticCoder(Hidden)  # an excluded field with a default is left out
    assert coder.deserialize(coder.serialize(Hidden(name="a", cache="x"))) == Hidden(name="a")


@given(
    st.tuples(st.text(), INT64, st.binary(), st.uuids(), AWARE, st.integers(0, 2**16 - 1)),
    st.integers(1, 6),
)
def test_tuple_round_trip(value: tuple[Any, ...], arity: int) -> None:
    element_coders: list[Coder[Any]] = [
        StringCoder(),
        Int64Coder(),
        BytesCoder(),
        UUIDCoder(),
        DateTimeCoder(),
        UInt16Coder(),
    ]
    coder = TupleCoder(*element_coders[:arity])
    value = value[:arity]
    for buf in both_buffers(coder.serialize(value)):
        out = coder.deserialize(buf)
        assert type(out) is tuple
        assert len(out) == arity
        for got, expected in zip(out, value, strict=True):
            if isinstance(expected, datetime):
                assert got == expected.astimezone(timezone.utc)
            else:
                assert got == expected


@given(st.tuples(st.tuples(st.binary(), st.integers(0, 2**16 - 1)), st.text()))
def test_nested_tuple_round_trip(value: tuple[tuple[bytes, int], str]) -> None:
    coder = TupleCoder(TupleCoder(BytesCoder(), UInt16Coder()), StringCoder())
    assert coder.deserialize(memoryview(coder.serialize(value))) == value


def test_tuple_fixed_width() -> None:
    assert TupleCoder(UInt16Coder(), UUIDCoder(), DateTimeCoder()).fixed_width == 26
    assert TupleCoder(UInt16Coder(), StringCoder()).fixed_width is None
    assert TupleCoder(UInt32Coder(), Int64Coder()).serialize((1, 0)) == (
        b"\x00\x00\x00\x01\x80" + bytes(7)
    )


def test_tuple_escapes_variable_width_elements() -> None:
    coder = TupleCoder(BytesCoder(), BytesCoder())
    assert coder.serialize((b"a\x00", b"")) == b"a\x00\xff\x00\x00\x00\x00"
    # With a bare 0x00 terminator these two would collide.
    assert coder.deserialize(coder.serialize((b"", b"\xff"))) == (b"", b"\xff")
    assert coder.deserialize(coder.serialize((b"\x00", b""))) == (b"\x00", b"")


def test_static_types() -> None:
    assert_type(UInt16Coder(), UInt16Coder)
    as_int: Coder[int] = UInt16Coder()
    as_str: Coder[str] = StringCoder()
    as_bytes: Coder[bytes] = BytesCoder()
    pair = TupleCoder(StringCoder(), Int64Coder())
    assert_type(pair, TupleCoder[tuple[str, int]])
    assert_type(pair.deserialize(pair.serialize(("a", 1))), tuple[str, int])
    six = TupleCoder(
        StringCoder(), Int64Coder(), BytesCoder(), UUIDCoder(), DateTimeCoder(), UInt16Coder()
    )
    assert_type(six, TupleCoder[tuple[str, int, bytes, uuid.UUID, datetime, int]])
    assert_type(PydanticCoder(User), PydanticCoder[User])
    assert_type(JSONCoder().compressed(level=9), Coder[Any])
    assert_type(StringCoder().compressed(), Coder[str])
    assert as_int.ordered and as_str.ordered and as_bytes.ordered


# --- compression ---------------------------------------------------------------


@given(JSON_VALUES)
def test_compressed_round_trip(value: Any) -> None:
    for level in (-1, 0, 1, 9):
        coder = JSONCoder().compressed(level=level)
        for buf in both_buffers(coder.serialize(value)):
            assert coder.deserialize(buf) == value


def test_compression_shrinks_repetitive_values() -> None:
    value = {"text": "spam " * 500, "items": list(range(20)) * 20}
    plain = JSONCoder()
    packed = plain.compressed(level=9)
    assert len(packed.serialize(value)) < len(plain.serialize(value)) // 5
    text = StringCoder().compressed()
    assert len(text.serialize("a" * 1000)) < 100


def test_compressed_passes_inner_errors_through() -> None:
    coder = UInt16Coder().compressed()
    with pytest.raises(EncodeError, match=r"UInt16Coder\(\) cannot encode 70000 \(int\)"):
        coder.serialize(70000)
    with pytest.raises(DecodeError, match=r"UInt16Coder\(\) cannot decode"):
        coder.deserialize(zlib.compress(b"abc"))
    with pytest.raises(DecodeError, match=r"UInt16Coder\(\)\.compressed\(level=6\).*zlib"):
        coder.deserialize(b"not zlib")


@pytest.mark.parametrize("level", [-2, 10, 100])
def test_bad_compression_level(level: int) -> None:
    with pytest.raises(ValueError, match=str(level)):
        JSONCoder().compressed(level=level)


def test_compression_level_must_be_int() -> None:
    with pytest.raises(TypeError, match="int"):
        CompressedCoder(JSONCoder(), level=True)


# --- errors --------------------------------------------------------------------


def check_encode_error(coder: Coder[Any], obj: object, *fragments: str) -> None:
    """``coder.serialize(obj)`` raises EncodeError naming the coder, the type and ``fragments``."""
    with pytest.raises(EncodeError) as info:
        coder.serialize(obj)
    message = str(info.value)
    assert named(coder) in message
    assert f"({type(obj).__name__})" in message
    for fragment in fragments:
        assert fragment in message


@pytest.mark.parametrize(
    ("coder", "obj", "fragments"),
    [
        (IdentityCoder(), "text", ["expected bytes"]),
        (BytesCoder(), 12, ["expected bytes"]),
        (StringCoder(), b"bytes", ["expected str"]),
        (StringCoder(), "lone \ud800 surrogate", ["surrogate"]),
        (StringCoder("latin-1"), "snowman \u2603", ["latin-1"]),
        (StringCoder("ascii"), "é", ["ascii"]),
        (UInt16Coder(), -1, ["out of range 0..65535"]),
        (UInt16Coder(), 2**16, ["65536", "out of range 0..65535"]),
        (UInt16Coder(), 70000, ["70000", "out of range 0..65535"]),
        (UInt32Coder(), 2**32, ["out of range 0..4294967295"]),
        (UInt64Coder(), -1, ["out of range"]),
        (UInt64Coder(), 2**64, ["out of range"]),
        (Int64Coder(), 2**63, ["out of range"]),
        (Int64Coder(), -(2**63) - 1, ["out of range"]),
        (UInt16Coder(), True, ["expected int"]),
        (Int64Coder(), False, ["expected int"]),
        (UInt32Coder(), 1.0, ["expected int"]),
        (Int64Coder(), "1", ["expected int"]),
        (UUIDCoder(), str(uuid.UUID(int=1)), ["expected uuid.UUID"]),
        (DateTimeCoder(), datetime(2024, 1, 1), ["naive", "tzinfo"]),
        (DateTimeCoder(), 0, ["expected datetime"]),
        (DateTimeCoder(), datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1))), ["range"]),
        (JSONCoder(), {1, 2}, ["not JSON serializable"]),
        (JSONCoder(), object(), ["not JSON serializable"]),
        (JSONCoder(), "\ud800", ["surrogate"]),
        (MsgpackCoder(), {1, 2}, ["TypeError"]),
        (MsgpackCoder(), 2**64, ["OverflowError"]),
        (PickleCoder(), lambda: None, ["lambda"]),
        (PydanticCoder(User), Address(city="x", zip_code=1), ["expected an instance of User"]),
        (PydanticCoder(User), {"id": 1}, ["expected an instance of User"]),
        (
            PydanticCoder(Address, format="msgpack"),
            Address(city="x", zip_code=2**65),
            ["out of range"],
        ),
        (TupleCoder(StringCoder(), Int64Coder()), ("a",), ["tuple of 2 elements"]),
        (TupleCoder(StringCoder(), Int64Coder()), ("a", 1, 2), ["tuple of 2 elements"]),
        (TupleCoder(StringCoder(), Int64Coder()), ["a", 1], ["tuple of 2 elements"]),
        (
            TupleCoder(StringCoder(), Int64Coder()),
            ("a", "b"),
            ["element 1", "Int64Coder() cannot encode 'b' (str)"],
        ),
        (
            TupleCoder(StringCoder(), Int64Coder()),
            (1, 1),
            ["element 0", "StringCoder() cannot encode 1 (int)"],
        ),
        (
            TupleCoder(UInt16Coder()),
            (True,),
            ["element 0", "UInt16Coder() cannot encode True (bool)"],
        ),
        (JSONCoder().compressed(), {1}, ["JSONCoder()"]),
    ],
    ids=repr,
)
def test_encode_errors(coder: Coder[Any], obj: object, fragments: list[str]) -> None:
    check_encode_error(coder, obj, *fragments)


def test_encode_error_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        UInt16Coder().serialize(-1)


def test_circular_json_is_an_encode_error() -> None:
    value: list[Any] = []
    value.append(value)
    check_encode_error(JSONCoder(), value, "Circular")


@pytest.mark.parametrize(
    ("coder", "data", "fragment"),
    [
        (StringCoder(), b"\xff", "utf-8"),
        (StringCoder(), b"\xed\xa0\x80", "utf-8"),  # an encoded surrogate
        (StringCoder("utf-16"), b"abc", "utf-16"),
        (UInt16Coder(), b"\x00", "expected 2 bytes"),
        (UInt32Coder(), b"", "expected 4 bytes"),
        (UInt64Coder(), bytes(9), "expected 8 bytes"),
        (Int64Coder(), bytes(7), "expected 8 bytes"),
        (UUIDCoder(), bytes(15), "expected 16 bytes"),
        (DateTimeCoder(), bytes(4), "expected 8 bytes"),
        (DateTimeCoder(), bytes(8), "outside the datetime range"),
        (JSONCoder(), b"{", "Expecting"),
        (JSONCoder(), b'"\xff"', "utf-8"),
        (JSONCoder(), '"x"'.encode("utf-16"), "utf-8"),
        (JSONCoder(), b"[" * 100_000, ""),
        (MsgpackCoder(), b"\xc1", ""),
        (MsgpackCoder(), b"\x01\x02", "ExtraData"),
        (MsgpackCoder(), b"\x81\x90\x00", "unhashable"),
        (PickleCoder(), b"garbage", ""),
        (PickleCoder(), pickle.dumps(1)[:-1], ""),
        (PydanticCoder(User), b'{"id": "x"}', "validation error"),
        (PydanticCoder(User), b"\xff", ""),
        (PydanticCoder(User, format="msgpack"), b"\x80", "validation error"),
        (PydanticCoder(User, format="msgpack"), b"\xc1", ""),
        (TupleCoder(StringCoder()), b"abc", "unterminated"),
        (TupleCoder(StringCoder()), b"a\x00\x01", "invalid escape"),
        (TupleCoder(StringCoder()), b"a\x00\x00z", "trailing"),
        (TupleCoder(StringCoder()), b"\xff\x00\x00", "element 0"),
        (TupleCoder(UInt16Coder(), UInt16Coder()), b"\x00\x01\x00", "element 1"),
        (JSONCoder().compressed(), b"\x78\x9c", "zlib"),
        (JSONCoder().compressed(), zlib.compress(b"{"), "JSONCoder() cannot decode"),
    ],
    ids=repr,
)
def test_decode_errors(coder: Coder[Any], data: bytes, fragment: str) -> None:
    for buf in both_buffers(data):
        with pytest.raises(DecodeError) as info:
            coder.deserialize(buf)
        message = str(info.value)
        assert named(coder) in message
        assert fragment in message
        assert f"({len(data)} bytes)" in message or "compressed" in repr(coder)


def test_decode_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        UInt16Coder().deserialize(b"")


def test_constructor_errors() -> None:
    with pytest.raises(TypeError, match="dict"):
        PydanticCoder(dict)  # type: ignore[type-var]
    with pytest.raises(TypeError, match="Address"):
        PydanticCoder(Address(city="x", zip_code=1))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="yaml"):
        PydanticCoder(User, format="yaml")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"element 1 .*JSONCoder\(\) is not ordered"):
        TupleCoder(StringCoder(), JSONCoder())
    with pytest.raises(TypeError, match=r"StringCoder\(encoding='latin-1'\) is not ordered"):
        TupleCoder(StringCoder("latin-1"))
    with pytest.raises(TypeError, match="not ordered"):
        TupleCoder(UInt16Coder().compressed())
    with pytest.raises(TypeError, match="not a Coder"):
        TupleCoder(UInt16Coder(), int)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="at least one"):
        TupleCoder()
    with pytest.raises(LookupError):
        StringCoder("no-such-encoding")
    with pytest.raises(LookupError):
        StringCoder("base64")  # a bytes-to-bytes codec, not a text encoding
    with pytest.raises(ValueError, match="protocol"):
        PickleCoder(protocol=pickle.HIGHEST_PROTOCOL + 1)


# --- prefixes ------------------------------------------------------------------


def test_prefixes() -> None:
    assert BytesCoder().serialize_prefix(b"ab") == b"ab"
    assert IdentityCoder().serialize_prefix(bytearray(b"a")) == b"a"
    assert StringCoder().serialize_prefix("é") == "é".encode()
    coder = TupleCoder(StringCoder(), UInt16Coder(), BytesCoder())
    assert coder.serialize_prefix(()) == b""
    assert coder.serialize_prefix(("a",)) == b"a\x00\x00"
    assert coder.serialize_prefix(("a", 1)) == b"a\x00\x00\x00\x01"
    assert coder.serialize_prefix(("a", 1, b"")) == coder.serialize(("a", 1, b""))


@pytest.mark.parametrize(
    ("coder", "prefix", "fragment"),
    [
        (BytesCoder(), "a", "bytes"),
        (StringCoder(), b"a", "str"),
        (TupleCoder(StringCoder()), ("a", "b"), "at most 1"),
        (TupleCoder(StringCoder()), "a", "tuple"),
        (TupleCoder(StringCoder(), UInt16Coder()), ("a", -1), "element 1"),
    ],
    ids=repr,
)
def test_bad_prefix(coder: Coder[Any], prefix: object, fragment: str) -> None:
    with pytest.raises(EncodeError) as info:
        coder.serialize_prefix(prefix)
    message = str(info.value)
    assert repr(coder) in message
    assert f"({type(prefix).__name__})" in message
    assert fragment in message


@pytest.mark.parametrize(
    "coder",
    [
        StringCoder("latin-1"),
        UInt16Coder(),
        UUIDCoder(),
        JSONCoder(),
        PickleCoder(),
        MsgpackCoder(),
        PydanticCoder(User),
        StringCoder().compressed(),
    ],
    ids=repr,
)
def test_prefix_unsupported(coder: Coder[Any]) -> None:
    with pytest.raises(TypeError, match="does not support prefix queries") as info:
        coder.serialize_prefix("a")
    assert repr(coder) in str(info.value)
    assert not isinstance(info.value, EncodeError)


# --- repr ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("coder", "expected"),
    [
        (IdentityCoder(), "IdentityCoder()"),
        (BytesCoder(), "BytesCoder()"),
        (StringCoder(), "StringCoder()"),
        (StringCoder("latin-1"), "StringCoder(encoding='latin-1')"),
        (UInt16Coder(), "UInt16Coder()"),
        (UInt32Coder(), "UInt32Coder()"),
        (UInt64Coder(), "UInt64Coder()"),
        (Int64Coder(), "Int64Coder()"),
        (UUIDCoder(), "UUIDCoder()"),
        (DateTimeCoder(), "DateTimeCoder()"),
        (JSONCoder(), "JSONCoder()"),
        (MsgpackCoder(), "MsgpackCoder()"),
        (PickleCoder(), f"PickleCoder(protocol={pickle.HIGHEST_PROTOCOL})"),
        (PickleCoder(protocol=2), "PickleCoder(protocol=2)"),
        (PydanticCoder(User), "PydanticCoder(User)"),
        (PydanticCoder(User, format="msgpack"), "PydanticCoder(User, format='msgpack')"),
        (TupleCoder(StringCoder(), Int64Coder()), "TupleCoder(StringCoder(), Int64Coder())"),
        (
            TupleCoder(TupleCoder(UInt16Coder()), BytesCoder()),
            "TupleCoder(TupleCoder(UInt16Coder()), BytesCoder())",
        ),
        (JSONCoder().compressed(level=9), "JSONCoder().compressed(level=9)"),
    ],
    ids=repr,
)
def test_repr(coder: Coder[Any], expected: str) -> None:
    assert repr(coder) == expected


# --- custom coders ---------------------------------------------------------------


class CustomCoder(Coder[complex]):
    """The seed README's custom coder: implements serialize and deserialize only."""

    def serialize(self, obj: complex) -> bytes:
        """Two big-endian doubles."""
        return f"{obj.real!r},{obj.imag!r}".encode()

    def deserialize(self, buf: Buffer) -> complex:
        """Copy the buffer before it goes away, then parse it."""
        real, imag = bytes(buf).decode().split(",")
        return complex(float(real), float(imag))


class Reversed16(Coder[int]):
    """A user's fixed-width ordered coder: 0..65535 in descending order."""

    ordered = True
    fixed_width = 2

    def serialize(self, obj: int) -> bytes:
        """Store 65535 - obj big-endian."""
        if not 0 <= obj <= 0xFFFF:
            raise ValueError(f"{obj} out of range")
        return (0xFFFF - obj).to_bytes(2, "big")

    def deserialize(self, buf: Buffer) -> int:
        """Invert :meth:`serialize`."""
        return 0xFFFF - int.from_bytes(buf, "big")


class Lowercase(Coder[str]):
    """A user's variable-width ordered coder (ordered on lowercase ASCII)."""

    ordered = True

    def serialize(self, obj: str) -> bytes:
        """ASCII bytes."""
        return obj.encode("ascii")

    def deserialize(self, buf: Buffer) -> str:
        """ASCII text."""
        return str(buf, "ascii")


def test_readme_custom_coder() -> None:
    coder = CustomCoder()
    assert coder.deserialize(memoryview(coder.serialize(1.5 - 2j))) == 1.5 - 2j
    assert not coder.ordered
    assert repr(coder) == "CustomCoder()"
    compressed = coder.compressed(level=9)
    assert compressed.deserialize(compressed.serialize(3j)) == 3j
    with pytest.raises(TypeError, match="does not support prefix queries"):
        coder.serialize_prefix(1j)
    with pytest.raises(TypeError, match=r"CustomCoder\(\) is not ordered"):
        TupleCoder(coder)


def test_custom_ordered_coders_in_tuples() -> None:
    coder = TupleCoder(Reversed16(), Lowercase(), Reversed16())
    value = (5, "ab\x00c", 7)
    encoded = coder.serialize(value)
    assert encoded == b"\xff\xfaab\x00\xffc\x00\x00\xff\xf8"
    assert coder.deserialize(encoded) == value
    assert coder.serialize((6, "z", 0)) < coder.serialize((5, "a", 0))
    with pytest.raises(EncodeError, match=r"element 0: 70000 out of range"):
        coder.serialize((70000, "a", 1))
    with pytest.raises(EncodeError, match=r"element 1: 'ascii' codec"):
        coder.serialize((1, "é", 1))
    with pytest.raises(DecodeError, match=r"element 1: 'ascii' codec"):
        coder.deserialize(b"\x00\x00\xff\x00\x00\x00\x00")


def test_fixed_width_must_hold() -> None:
    class Liar(Reversed16):
        fixed_width = 3

    with pytest.raises(EncodeError, match="fixed_width is 3"):
        TupleCoder(Liar()).serialize((1,))


# --- fuzzing ---------------------------------------------------------------------

BASE_CODERS: list[Coder[Any]] = [
    IdentityCoder(),
    BytesCoder(),
    StringCoder(),
    StringCoder("latin-1"),
    StringCoder("utf-16"),
    UInt16Coder(),
    UInt32Coder(),
    UInt64Coder(),
    Int64Coder(),
    UUIDCoder(),
    DateTimeCoder(),
    JSONCoder(),
    PickleCoder(),
    MsgpackCoder(),
    PydanticCoder(User),
    PydanticCoder(User, format="msgpack"),
    TupleCoder(StringCoder()),
    TupleCoder(StringCoder(), Int64Coder()),
    TupleCoder(BytesCoder(), StringCoder(), UInt16Coder()),
    TupleCoder(UUIDCoder(), DateTimeCoder()),
    TupleCoder(TupleCoder(BytesCoder(), UInt16Coder()), BytesCoder()),
]
ALL_CODERS = BASE_CODERS + [coder.compressed() for coder in BASE_CODERS]

# Random bytes rarely look like a tuple key: also build them from the bytes
# the escaping cares about.
FUZZ_BYTES = st.binary(max_size=64) | st.lists(
    st.sampled_from([b"\x00", b"\xff", b"\x00\x00", b"\x00\xff", b"a", b"\xc3\xa9", b"\x80"]),
    max_size=24,
).map(b"".join)


def decodes_or_raises_decode_error(coder: Coder[Any], data: bytes) -> None:
    """Decode ``data`` as bytes and as a memoryview; only DecodeError may escape."""
    for buf in both_buffers(data):
        try:
            coder.deserialize(buf)
        except DecodeError as e:
            assert named(coder) in str(e)


@pytest.mark.parametrize("coder", ALL_CODERS, ids=repr)
@settings(max_examples=60, deadline=None)
@given(data=FUZZ_BYTES)
def test_fuzz_deserialize(coder: Coder[Any], data: bytes) -> None:
    decodes_or_raises_decode_error(coder, data)


@pytest.mark.parametrize("coder", BASE_CODERS, ids=repr)
@settings(max_examples=40, deadline=None)
@given(data=FUZZ_BYTES)
def test_fuzz_compressed_payload(coder: Coder[Any], data: bytes) -> None:
    # Valid zlib around random bytes reaches the inner coder.
    decodes_or_raises_decode_error(coder.compressed(), zlib.compress(data))
