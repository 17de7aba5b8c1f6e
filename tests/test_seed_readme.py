"""The seed README (aiolmdb 0.1.1) examples, run as written (typos fixed)."""

from __future__ import annotations

import json
import pickle
import zlib
from pathlib import Path
from typing import Any

import pytest
from conftest import bounded, raw_records

import aiolmdb
from aiolmdb.coders import (
    Buffer,
    Coder,
    IdentityCoder,
    JSONCoder,
    PickleCoder,
    StringCoder,
    UInt16Coder,
    UInt32Coder,
    UInt64Coder,
)


async def test_opening_an_environment(tmp_path: Path) -> None:
    (tmp_path / "path" / "to").mkdir(parents=True)  # like lmdb.open, only the last level
    # Open a aiolmdb environment. Takes the same arguments that lmdb.open does.
    environment = aiolmdb.open(str(tmp_path / "path" / "to" / "environment"), map_size=2**24)
    try:
        assert environment.path() == str(tmp_path / "path" / "to" / "environment")
        assert environment.info()["map_size"] == 2**24
    finally:
        await bounded(environment.close())


async def test_opening_a_database(env: aiolmdb.AsyncEnvironment) -> None:
    # Unlike pylmdb, aiolmdb does not return a database handle on open_db,
    # but rather a full Python object.
    records = env.open_db("records")
    assert isinstance(records, aiolmdb.AsyncDatabase)
    # Get the default ("" named database) within an environment
    default = env.get_default_database()
    assert isinstance(default, aiolmdb.AsyncDatabase)


@pytest.mark.lmdb_only  # LMDB keeps named databases as records of the default one
async def test_the_default_database_lists_the_named_ones(env: aiolmdb.AsyncEnvironment) -> None:
    env.open_db("records")
    default = env.get_default_database()
    assert await default.get(b"records") is not None  # the default db lists "records"


async def test_querying_a_database(env: aiolmdb.AsyncEnvironment) -> None:
    db = env.open_db("records")
    await db.put(b"key", b"value")
    await db.put(b"0", b"zero")

    # Get a value(s) from the database
    result: Any = await db.get(b"key")  # Normal fetch, returned b'value'
    assert result == b"value"
    result = await db.get(b"missing", default=b"")  # Defaults to b'' if no key is found
    assert result == b""
    result = await db.get(b"key", default=b"")
    assert result == b"value"
    result = await db.get_multi([b"0", b"1"])  # Gets multiple keys at once
    assert result == {b"0": b"zero", b"1": None}

    # Write a value into the database
    await db.put(b"key", b"value2")
    assert await db.get(b"key") == b"value2"
    # Puts multiple key-values at once, atomically.
    await db.put_multi([(b"k1", b"v1"), (b"k2", b"v2")])
    assert await db.get_multi([b"k1", b"k2"]) == {b"k1": b"v1", b"k2": b"v2"}

    # Delete a key from the database
    await db.delete(b"key")
    assert await db.get(b"key") is None
    await db.delete_multi([b"k1", b"k2", b"k3"])
    assert await db.get_multi([b"k1", b"k2"]) == {b"k1": None, b"k2": None}
    assert await db.count() == 1

    # Drop the database
    await db.drop()
    with pytest.raises(aiolmdb.DatabaseNotFoundError):
        await env.open_db_async("records", create=False)


async def test_dropping_the_default_database_empties_it(env: aiolmdb.AsyncEnvironment) -> None:
    db = env.get_default_database()
    await db.put(b"key", b"value")
    await db.drop()
    assert await db.count() == 0
    assert await db.put(b"key", b"again")  # the default database cannot be removed
    assert await db.get(b"key") == b"again"


@pytest.mark.needs("raw_transactions")
async def test_running_arbitrary_transactions(env: aiolmdb.AsyncEnvironment) -> None:
    db = env.open_db("records")

    # Run any arbitrary transactions
    def transaction_action(txn: aiolmdb.DatabaseTxn[bytes, bytes]) -> int:
        return txn.id()

    txn_id = await db.run(transaction_action)
    assert isinstance(txn_id, int)
    await db.put(b"k", b"v")
    later = await db.run(transaction_action)
    assert later > txn_id  # read transactions see the newer commit
    assert isinstance(await db.run(transaction_action, write=True), int)


async def test_using_coders(env: aiolmdb.AsyncEnvironment) -> None:
    # Opening a database with specific coders
    db = env.open_db("records", key_coder=UInt16Coder(), value_coder=JSONCoder())
    await db.put(65535, {"key": "value"})  # Takes the appropriate matching keys
    assert await db.get(65535) == {"key": "value"}  # Returns {"key": "value"}
    raw = env.open_db("records")
    assert await raw.get(b"\xff\xff") == b'{"key":"value"}'
    with pytest.raises(aiolmdb.EncodeError):
        await db.put(65536, {"key": "value"})


async def test_altering_the_coders_of_the_default_database(tmp_path: Path) -> None:
    path = tmp_path / "e"
    async with aiolmdb.open(path) as env:
        # Alter the coder for an existing database, useful for altering the
        # environment default database.
        db: aiolmdb.AsyncDatabase[Any, Any] = env.get_default_database()
        db.key_coder = StringCoder()
        db.value_coder = JSONCoder()
        await db.put("config", {"debug": True})
        assert await db.get("config") == {"debug": True}
        assert await db.get_multi(["config", "other"]) == {"config": {"debug": True}, "other": None}
    assert raw_records(path, None) == {b"config": b'{"debug":true}'}


@pytest.mark.parametrize(
    ("coder", "value", "encoded"),
    [
        (IdentityCoder(), b"\x00raw", b"\x00raw"),  # Raw bytes coder
        (StringCoder(), "text ✓", "text ✓".encode()),  # String coder
        (UInt16Coder(), 513, b"\x02\x01"),  # 16-bit unsigned integer coder
        (UInt32Coder(), 513, b"\x00\x00\x02\x01"),  # 32-bit unsigned integer coder
        (UInt64Coder(), 2**64 - 1, b"\xff" * 8),  # 64-bit unsigned integer coder
        (JSONCoder(), {"a": [1, None]}, b'{"a":[1,null]}'),  # any JSON serializable object
        (PickleCoder(), {1, 2}, None),  # Pickle coder, works with any picklable object
    ],
    ids=lambda p: type(p).__name__ if isinstance(p, Coder) else "",
)
async def test_supported_coders(
    env: aiolmdb.AsyncEnvironment, coder: Coder[Any], value: Any, encoded: bytes | None
) -> None:
    db = env.open_db("coded", value_coder=coder)
    await db.put(b"k", value)
    assert await db.get(b"k") == value
    stored = await env.open_db("coded").get(b"k")
    assert stored is not None
    if encoded is not None:
        assert stored == encoded
    else:
        assert pickle.loads(stored) == value
    keyed = env.open_db("keyed", key_coder=coder) if coder.ordered else None
    if keyed is not None:
        await keyed.put(value, b"v")
        assert await keyed.get(value) == b"v"
        assert [k async for k in keyed.keys()] == [value]


async def test_compressed_json_coder(env: aiolmdb.AsyncEnvironment) -> None:
    # Create a new JSONCoder, gzipped with compression level 9. Runs the encoded
    # JSON through zlib before writing to database, and decompresses.
    zlib_json_coder = JSONCoder().compressed(level=9)
    compressed_db = env.open_db("records", value_coder=zlib_json_coder)
    document = {"text": "aiolmdb " * 1000, "n": [1, 2, 3]}
    await compressed_db.put(b"doc", document)
    assert await compressed_db.get(b"doc") == document
    stored = await env.open_db("records").get(b"doc")
    assert stored is not None
    assert len(stored) < len(json.dumps(document)) // 10
    assert json.loads(zlib.decompress(stored)) == document
    with pytest.raises(ValueError):
        JSONCoder().compressed(level=10)


class CustomCoder(Coder[complex]):
    """The README's custom coder: complex numbers as text."""

    def serialize(self, obj: complex) -> bytes:
        # must return a bytes-like object
        if not isinstance(obj, complex):
            raise TypeError(f"expected complex, got {type(obj).__name__}")
        return f"{obj.real},{obj.imag}".encode()

    def deserialize(self, buffer: Buffer) -> complex:
        # The buffer is only valid during the call: copy what is kept.
        real, imag = bytes(buffer).decode().split(",")
        return complex(float(real), float(imag))


async def test_custom_coder(env: aiolmdb.AsyncEnvironment) -> None:
    db = env.open_db("complex", key_coder=StringCoder(), value_coder=CustomCoder())
    await db.put("z", 1 + 2j)
    await db.put_multi({"i": 1j, "big": complex(1e300, -1)})
    assert await db.get("z") == 1 + 2j
    assert await db.get_multi(["i", "big"]) == {"i": 1j, "big": complex(1e300, -1)}
    assert [v async for v in db.values()] == [complex(1e300, -1), 1j, 1 + 2j]
    assert await env.open_db("complex").get(b"z") == b"1.0,2.0"
    # A plain TypeError from a custom coder becomes an EncodeError naming the coder.
    with pytest.raises(aiolmdb.EncodeError) as excinfo:
        await db.put("bad", "not complex")  # type: ignore[arg-type]
    assert "CustomCoder()" in str(excinfo.value)
    assert "'complex'" in str(excinfo.value)
    # A failing deserialize becomes a DecodeError naming the key.
    await env.open_db("complex").put(b"broken", b"nonsense")
    with pytest.raises(aiolmdb.DecodeError, match="'broken'"):
        await db.get("broken")
