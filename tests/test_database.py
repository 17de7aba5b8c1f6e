"""AsyncDatabase: reads, writes, coders, errors, run(), and group commit."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import lmdb
import pytest
from conftest import EnvFactory, WriterGate, bounded, raw_records

import aiolmdb
from aiolmdb.coders import (
    Coder,
    IdentityCoder,
    JSONCoder,
    PickleCoder,
    StringCoder,
    UInt16Coder,
    UInt32Coder,
)

Env = aiolmdb.AsyncEnvironment
BytesDB = aiolmdb.AsyncDatabase[bytes, bytes]
JsonDB = aiolmdb.AsyncDatabase[str, Any]


@pytest.fixture
def records(env: Env) -> BytesDB:
    """A named bytes -> bytes database."""
    return env.open_db("records")


@pytest.fixture
def docs(env: Env) -> JsonDB:
    """A named str -> JSON database."""
    return env.open_db("docs", key_coder=StringCoder(), value_coder=JSONCoder())


def raw_view(env: Env, name: str) -> BytesDB:
    """The same database seen through IdentityCoder (raw bytes)."""
    return env.open_db(name)


# -- reads --------------------------------------------------------------------


async def test_get_returns_none_or_the_default(records: BytesDB) -> None:
    assert await records.get(b"missing") is None
    assert await records.get(b"missing", default=b"") == b""
    assert await records.get(b"missing", b"fallback") == b"fallback"
    await records.put(b"key", b"value")
    assert await records.get(b"key") == b"value"
    assert await records.get(b"key", default=b"") == b"value"
    assert isinstance(await records.get(b"key"), bytes)


async def test_get_accepts_bytes_like_keys(records: BytesDB) -> None:
    await records.put(bytearray(b"key"), memoryview(b"value"))  # type: ignore[arg-type]
    assert await records.get(b"key") == b"value"
    assert await records.get(memoryview(b"key")) == b"value"  # type: ignore[call-overload]


async def test_get_multi(records: BytesDB) -> None:
    await records.put_multi([(b"a", b"1"), (b"c", b"3"), (b"b", b"2")])
    wanted = [b"c", b"zz", b"a", b"b"]
    found = await records.get_multi(wanted)
    assert found == {b"c": b"3", b"zz": None, b"a": b"1", b"b": b"2"}
    assert list(found) == wanted  # the order asked for is kept
    with_default = await records.get_multi(iter(wanted), default=b"-")
    assert with_default == {b"c": b"3", b"zz": b"-", b"a": b"1", b"b": b"2"}
    assert await records.get_multi([]) == {}


async def test_get_multi_many_keys(docs: JsonDB) -> None:
    await docs.put_multi({f"k{i:03d}": {"n": i} for i in range(0, 200, 2)})
    wanted = [f"k{i:03d}" for i in reversed(range(200))]
    found = await docs.get_multi(wanted, default="absent")
    assert list(found) == wanted
    for i in range(200):
        assert found[f"k{i:03d}"] == ({"n": i} if i % 2 == 0 else "absent")


async def test_contains_and_count(records: BytesDB) -> None:
    assert await records.count() == 0
    assert not await records.contains(b"a")
    await records.put_multi([(b"a", b""), (b"b", b"2")])
    assert await records.contains(b"a")  # an empty value is still a value
    assert await records.get(b"a") == b""
    assert not await records.contains(b"z")
    assert await records.count() == 2


@pytest.mark.lmdb_only  # stat() is LMDB's B-tree statistics
async def test_stat(records: BytesDB) -> None:
    await records.put_multi([(b"a", b""), (b"b", b"2")])
    stat = await records.stat()
    assert stat["entries"] == 2
    assert {"psize", "depth", "leaf_pages"} <= set(stat)


# -- writes -------------------------------------------------------------------


async def test_put_and_overwrite_false(records: BytesDB) -> None:
    assert await records.put(b"k", b"old") is True
    assert await records.put(b"k", b"new", overwrite=False) is False
    assert await records.get(b"k") == b"old"
    assert await records.put(b"k", b"new") is True
    assert await records.get(b"k") == b"new"
    assert await records.put(b"other", b"x", overwrite=False) is True
    assert await records.get(b"other") == b"x"


async def test_put_multi_pairs_and_mapping(records: BytesDB, docs: JsonDB) -> None:
    assert await records.put_multi([(b"k1", b"v1"), (b"k2", b"v2")]) == 2
    assert await records.get_multi([b"k1", b"k2"]) == {b"k1": b"v1", b"k2": b"v2"}
    assert await docs.put_multi({"a": [1], "b": {"x": None}, "c": "s"}) == 3
    assert await docs.get("b") == {"x": None}
    assert await docs.put_multi((f"g{i}", i) for i in range(5)) == 5  # any iterable
    assert await docs.count() == 8
    assert await records.put_multi([]) == 0


async def test_put_multi_overwrite_false_counts_only_new_keys(records: BytesDB) -> None:
    await records.put(b"k1", b"old")
    written = await records.put_multi([(b"k1", b"new"), (b"k2", b"v2")], overwrite=False)
    assert written == 1
    assert await records.get(b"k1") == b"old"
    assert await records.get(b"k2") == b"v2"


@pytest.mark.parametrize("size", [3, 100], ids=["small", "large"])
async def test_put_multi_is_atomic_when_a_value_cannot_be_encoded(docs: JsonDB, size: int) -> None:
    await docs.put("existing", 1)
    items: list[tuple[str, Any]] = [(f"k{i}", i) for i in range(size)]
    items[size // 2] = ("bad", {1, 2})  # a set is not JSON
    with pytest.raises(aiolmdb.EncodeError) as excinfo:
        await docs.put_multi(items)
    message = str(excinfo.value)
    assert "'docs'" in message
    assert "JSONCoder()" in message
    assert "set" in message
    assert "'bad'" in message
    assert isinstance(excinfo.value, TypeError)
    assert await docs.count() == 1
    assert await docs.get("k0") is None


@pytest.mark.parametrize("size", [3, 100], ids=["small", "large"])
async def test_put_multi_is_atomic_when_a_key_cannot_be_encoded(env: Env, size: int) -> None:
    db = env.open_db("ints", key_coder=UInt16Coder(), value_coder=JSONCoder())
    items: list[tuple[Any, Any]] = [(i, i) for i in range(size)]
    items[-1] = (70000, "too big")
    with pytest.raises(aiolmdb.EncodeError, match="70000"):
        await db.put_multi(items)
    assert await db.count() == 0


async def test_delete(records: BytesDB) -> None:
    await records.put(b"k", b"v")
    assert await records.delete(b"k") is True
    assert await records.delete(b"k") is False
    assert await records.get(b"k") is None


async def test_delete_multi(records: BytesDB) -> None:
    await records.put_multi([(b"k1", b"1"), (b"k3", b"3"), (b"keep", b"x")])
    result = await records.delete_multi([b"k1", b"k2", b"k3"])
    assert result == {b"k1": True, b"k2": False, b"k3": True}
    assert list(result) == [b"k1", b"k2", b"k3"]
    assert await records.count() == 1
    assert await records.get(b"keep") == b"x"


@pytest.mark.parametrize("size", [3, 100], ids=["small", "large"])
async def test_delete_multi_is_atomic(env: Env, size: int) -> None:
    db = env.open_db("ints", key_coder=UInt32Coder())
    await db.put_multi([(i, b"v") for i in range(size)])
    keys: list[Any] = list(range(size))
    keys[size // 2] = "not an int"
    with pytest.raises(aiolmdb.EncodeError, match="str"):
        await db.delete_multi(keys)
    assert await db.count() == size


async def test_pop(docs: JsonDB) -> None:
    await docs.put("k", {"v": 1})
    assert await docs.pop("k") == {"v": 1}
    assert await docs.get("k") is None
    assert await docs.pop("k") is None
    assert await docs.pop("k", default="none") == "none"
    assert await docs.count() == 0


async def test_replace(docs: JsonDB) -> None:
    assert await docs.replace("k", 1) is None
    assert await docs.get("k") == 1
    assert await docs.replace("k", [2]) == 1
    assert await docs.get("k") == [2]


async def test_drop_without_delete_empties(env: Env, records: BytesDB) -> None:
    await records.put_multi([(b"%d" % i, b"v") for i in range(50)])
    await records.drop(delete=False)
    assert await records.count() == 0
    assert await records.put(b"again", b"v")  # still usable
    assert await env.open_db("records", create=False).get(b"again") == b"v"


async def test_drop_with_delete_removes_the_database(env: Env, records: BytesDB) -> None:
    await records.put_multi([(b"%d" % i, b"v") for i in range(50)])
    other = env.open_db("other")
    await other.put(b"k", b"v")
    await records.drop(delete=True)
    with pytest.raises(aiolmdb.DatabaseNotFoundError, match="records"):
        await env.open_db_async("records", create=False)
    with pytest.raises(aiolmdb.AiolmdbError, match="dropped"):
        await records.get(b"1")
    with pytest.raises(aiolmdb.AiolmdbError, match="dropped"):
        await records.put(b"1", b"v")
    with pytest.raises(aiolmdb.AiolmdbError, match="dropped"):
        await records.count()
    if env.engine.name == "lmdb":  # LMDB keeps named databases as records of the default one
        assert [k async for k in env.get_default_database().keys()] == [b"other"]
    assert await other.get(b"k") == b"v"
    recreated = env.open_db("records")
    assert await recreated.count() == 0
    assert await recreated.put(b"k", b"v")
    assert await recreated.get(b"k") == b"v"


async def test_drop_default_is_seed_delete(env: Env, records: BytesDB) -> None:
    await records.put(b"k", b"v")
    await records.drop()  # the seed's default: delete=True
    with pytest.raises(aiolmdb.DatabaseNotFoundError):
        await env.open_db_async("records", create=False)


@pytest.mark.parametrize("delete", [False, True])
async def test_dropping_the_default_database_keeps_named_databases(
    env: Env, records: BytesDB, delete: bool
) -> None:
    await records.put(b"k", b"v")
    default = env.get_default_database()
    await default.put(b"plain", b"1")
    await default.drop(delete=delete)
    assert await records.get(b"k") == b"v"
    assert await default.get(b"plain") is None
    if env.engine.name == "lmdb":  # LMDB keeps named databases as records of the default one
        assert [k async for k in default.keys()] == [b"records"]


async def test_other_handles_of_a_dropped_database(env: Env) -> None:
    first = env.open_db("x")
    second = env.open_db("x")
    await first.put(b"k", b"v")
    await first.drop(delete=True)
    with pytest.raises(aiolmdb.AiolmdbError):
        await second.get(b"k")


async def test_coders_can_be_reassigned(env: Env) -> None:
    default: aiolmdb.AsyncDatabase[Any, Any] = env.get_default_database()
    default.key_coder = StringCoder()
    default.value_coder = JSONCoder()
    assert await default.put("name", {"a": [1, 2]})
    assert await default.get("name") == {"a": [1, 2]}
    raw = env.get_default_database()
    assert await raw.get(b"name") == b'{"a":[1,2]}'
    default.value_coder = PickleCoder()
    await default.put("p", {1, 2})
    assert await default.get("p") == {1, 2}
    assert "PickleCoder" in repr(default)


# -- run ----------------------------------------------------------------------


@pytest.mark.needs("raw_transactions")
async def test_run_read(docs: JsonDB) -> None:
    await docs.put_multi({"a": 1, "b": 2})

    def read(t: aiolmdb.DatabaseTxn[str, Any]) -> tuple[Any, Any, Any, int, list[bytes]]:
        assert isinstance(t.txn, lmdb.Transaction)
        keys = [bytes(k) for k in t.cursor().iternext(values=False)]
        return t.get("a"), t.get("zz"), t.get("zz", "d"), t.id(), keys

    a, missing, default, txn_id, keys = await bounded(docs.run(read))
    assert (a, missing, default) == (1, None, "d")
    assert isinstance(txn_id, int)
    assert keys == [b"a", b"b"]


async def test_run_read_cannot_write(docs: JsonDB) -> None:
    with pytest.raises(aiolmdb.TransactionError, match=r"'docs'.*read-only"):
        await bounded(docs.run(lambda t: t.put("x", 1)))
    assert await docs.get("x") is None


async def test_run_write(docs: JsonDB) -> None:
    await docs.put_multi({"a": 1, "b": 2, "c": 3})

    def write(t: aiolmdb.DatabaseTxn[str, Any]) -> list[Any]:
        return [
            t.put("d", 4),
            t.put("a", 9, overwrite=False),
            t.delete("b"),
            t.delete("zz"),
            t.pop("c"),
            t.pop("zz", "none"),
            t.replace("a", 10),
            t.replace("e", 5),
            t.get("d"),
        ]

    results = await bounded(docs.run(write, write=True))
    assert results == [True, False, True, False, 3, "none", 1, None, 4]
    assert [item async for item in docs.items()] == [("a", 10), ("d", 4), ("e", 5)]


async def test_run_write_exception_writes_nothing(docs: JsonDB) -> None:
    await docs.put("keep", 1)

    def fail(t: aiolmdb.DatabaseTxn[str, Any]) -> None:
        t.put("new", 1)
        t.delete("keep")
        raise LookupError("nope")

    with pytest.raises(LookupError, match="nope"):
        await bounded(docs.run(fail, write=True))
    assert await docs.get("new") is None
    assert await docs.get("keep") == 1
    assert await docs.put("after", 2)  # the writer goes on


@pytest.mark.needs("raw_transactions")
async def test_run_write_returns_raw_lmdb_access(records: BytesDB) -> None:
    def write(t: aiolmdb.DatabaseTxn[bytes, bytes]) -> int:
        with t.cursor() as cursor:
            cursor.putmulti([(b"x", b"1"), (b"y", b"2")])
        return t.id()

    assert isinstance(await bounded(records.run(write, write=True)), int)
    assert await records.get_multi([b"x", b"y"]) == {b"x": b"1", b"y": b"2"}


# -- large values -------------------------------------------------------------


async def test_large_values_round_trip(open_env: EnvFactory) -> None:
    env = open_env(inline_value_limit=1024)
    db = env.open_db("big")
    big = bytes(range(256)) * 4096  # 1 MiB
    small = b"s" * 10
    assert await db.put(b"big", big)
    await db.put(b"small", small)
    assert await db.get(b"big") == big
    assert await db.get(b"small") == small
    assert await db.get_multi([b"big", b"small"]) == {b"big": big, b"small": small}
    assert [v async for v in db.values()] == [big, small]
    assert await db.run(lambda t: t.get(b"big")) == big
    assert await db.replace(b"big", big[::-1]) == big
    assert await db.pop(b"big") == big[::-1]
    assert await db.get(b"big") is None
    docs = env.open_db("docs", key_coder=StringCoder(), value_coder=JSONCoder())
    document = {"items": list(range(50_000))}
    await docs.put("doc", document)
    assert await docs.get("doc") == document


# -- encode and decode errors -------------------------------------------------


def _encode_cases() -> list[Any]:
    # (key coder, value coder, key, value, words the message must contain)
    return [
        pytest.param(UInt32Coder(), JSONCoder(), "1", 1, ["UInt32Coder()", "str"], id="key-type"),
        pytest.param(UInt32Coder(), JSONCoder(), -1, 1, ["UInt32Coder()", "int"], id="key-neg"),
        pytest.param(
            UInt32Coder(), JSONCoder(), 2**32, 1, ["UInt32Coder()", "int"], id="key-range"
        ),
        pytest.param(UInt16Coder(), JSONCoder(), True, 1, ["UInt16Coder()", "bool"], id="bool"),
        pytest.param(IdentityCoder(), IdentityCoder(), b"", b"v", ["empty"], id="empty-bytes"),
        pytest.param(StringCoder(), JSONCoder(), "", 1, ["empty", "StringCoder()"], id="empty-str"),
        pytest.param(
            IdentityCoder(), IdentityCoder(), b"x" * 512, b"v", ["512", "511"], id="key-too-long"
        ),
        pytest.param(
            IdentityCoder(), IdentityCoder(), "text", b"v", ["IdentityCoder()", "str"], id="key-str"
        ),
        pytest.param(
            StringCoder(), JSONCoder(), "k", object(), ["JSONCoder()", "object"], id="value-json"
        ),
        pytest.param(
            IdentityCoder(), IdentityCoder(), b"k", "text", ["IdentityCoder()", "str"], id="value"
        ),
    ]


@pytest.mark.parametrize(("key_coder", "value_coder", "key", "value", "words"), _encode_cases())
async def test_encode_errors_are_raised_before_writing(
    env: Env,
    key_coder: Coder[Any],
    value_coder: Coder[Any],
    key: Any,
    value: Any,
    words: list[str],
) -> None:
    db = env.open_db("coded", key_coder=key_coder, value_coder=value_coder)
    calls: list[Callable[[], Awaitable[Any]]] = [
        lambda: db.put(key, value),
        lambda: db.put_multi([(key, value)]),
        lambda: db.replace(key, value),
    ]
    if env.capabilities.raw_transactions:
        calls.append(lambda: db.run(lambda t: t.put(key, value), write=True))
    for call in calls:
        with pytest.raises(aiolmdb.EncodeError) as excinfo:
            await bounded(call())
        assert isinstance(excinfo.value, TypeError)
        assert isinstance(excinfo.value, aiolmdb.AiolmdbError)
        message = str(excinfo.value)
        assert "'coded'" in message
        for word in words:
            assert word in message, (word, message)
    assert await db.count() == 0
    if env.engine.name == "lmdb":
        assert await db.stat() == await db.stat()  # nothing in flight


@pytest.mark.parametrize(
    "key",
    [pytest.param("1", id="type"), pytest.param(-1, id="range"), pytest.param(0.5, id="float")],
)
async def test_bad_keys_in_reads_raise_encode_error(env: Env, key: Any) -> None:
    db = env.open_db("ints", key_coder=UInt32Coder())
    for call in (db.get, db.contains, db.delete, db.pop):
        with pytest.raises(aiolmdb.EncodeError, match="'ints'"):
            await call(key)
    with pytest.raises(aiolmdb.EncodeError, match="UInt32Coder"):
        await db.get_multi([1, key])


@pytest.fixture
async def corrupted(env: Env, docs: JsonDB) -> JsonDB:
    """``docs`` with good records around one whose bytes are not JSON."""
    await docs.put_multi({"a": 1, "c": 3})
    await raw_view(env, "docs").put(b"bad", b"\xffnot json")
    return docs


async def test_decode_error_names_the_database_and_the_key(corrupted: JsonDB) -> None:
    with pytest.raises(aiolmdb.DecodeError) as excinfo:
        await corrupted.get("bad")
    assert isinstance(excinfo.value, ValueError)
    assert isinstance(excinfo.value, aiolmdb.AiolmdbError)
    message = str(excinfo.value)
    assert "'docs'" in message
    assert "'bad'" in message
    assert "JSONCoder()" in message
    # Other keys stay readable.
    assert await corrupted.get("a") == 1
    assert await corrupted.get("c") == 3
    assert await corrupted.get_multi(["a", "c"]) == {"a": 1, "c": 3}
    assert await corrupted.contains("bad")
    with pytest.raises(aiolmdb.DecodeError, match="'bad'"):
        await corrupted.get_multi(["a", "bad"])
    with pytest.raises(aiolmdb.DecodeError, match="'bad'"):
        _ = [item async for item in corrupted.items()]
    assert [k async for k in corrupted.keys()] == ["a", "bad", "c"]


async def test_pop_of_undecodable_value_keeps_it(env: Env, corrupted: JsonDB) -> None:
    with pytest.raises(aiolmdb.DecodeError, match="'bad'"):
        await corrupted.pop("bad")
    assert await raw_view(env, "docs").get(b"bad") == b"\xffnot json"
    with pytest.raises(aiolmdb.DecodeError):
        await corrupted.replace("bad", "new")
    assert await raw_view(env, "docs").get(b"bad") == b"\xffnot json"
    assert await corrupted.pop("a") == 1
    assert await corrupted.delete("bad") is True  # deleting needs no decoding


async def test_decode_error_of_a_key(env: Env) -> None:
    await env.open_db("ints").put(b"\x00\x01\x02", b"v")  # 3 bytes: not a UInt32
    ints = env.open_db("ints", key_coder=UInt32Coder())
    with pytest.raises(aiolmdb.DecodeError) as excinfo:
        _ = [k async for k in ints.keys()]
    assert "'ints'" in str(excinfo.value)
    assert "UInt32Coder()" in str(excinfo.value)


# -- LMDB errors --------------------------------------------------------------


@pytest.mark.lmdb_only
async def test_map_full_keeps_its_type_and_the_env_keeps_working(
    open_env: EnvFactory, tmp_path: Path
) -> None:
    path = tmp_path / "tiny"
    env = open_env(path, map_size=1 << 20, max_map_size=1 << 20)
    db = env.open_db("m")
    await db.put(b"before", b"v")
    many = [(b"%05d" % i, b"x" * 1000) for i in range(3000)]
    with pytest.raises(lmdb.MapFullError):
        await bounded(db.put_multi(many))
    with pytest.raises(lmdb.MapFullError):
        await bounded(db.put(b"huge", b"x" * (2 << 20)))
    assert await db.count() == 1
    assert await db.put(b"after", b"v")
    assert await db.get_multi([b"before", b"after"]) == {b"before": b"v", b"after": b"v"}
    await bounded(env.close())
    assert raw_records(path, "m") == {b"after": b"v", b"before": b"v"}


@pytest.mark.needs("map_size")
async def test_full_map_grows_up_to_max_map_size(open_env: EnvFactory) -> None:
    env = open_env(map_size=1 << 20, max_map_size=64 << 20)
    db = env.open_db("m")
    written = await bounded(db.put_multi([(b"%05d" % i, b"x" * 1000) for i in range(3000)]))
    assert written == 3000
    assert env.info()["map_size"] > 1 << 20
    assert await db.count() == 3000


# -- group commit -------------------------------------------------------------


async def test_many_concurrent_writers_all_land(records: BytesDB) -> None:
    async def writer(task: int) -> None:
        for i in range(50):
            assert await records.put(b"%03d-%02d" % (task, i), b"%d" % (task * i))

    await bounded(asyncio.gather(*(writer(t) for t in range(200))), timeout=30)
    assert await records.count() == 200 * 50
    assert await records.get(b"199-49") == b"%d" % (199 * 49)
    assert await records.get(b"000-00") == b"0"


async def test_a_failing_write_fails_alone_in_its_batch(env: Env, corrupted: JsonDB) -> None:
    gate = WriterGate(corrupted)
    await gate.hold()
    good = [asyncio.create_task(corrupted.put(f"g{i}", i)) for i in range(20)]
    bad = asyncio.create_task(corrupted.pop("bad"))  # fails inside the batch
    more = [asyncio.create_task(corrupted.put(f"h{i}", i)) for i in range(20)]
    await asyncio.sleep(0)
    await gate.release()
    with pytest.raises(aiolmdb.DecodeError):
        await bounded(bad)
    assert await bounded(asyncio.gather(*good, *more)) == [True] * 40
    assert await corrupted.count() == 3 + 40
    assert await raw_view(env, "docs").get(b"bad") == b"\xffnot json"


@pytest.mark.needs("map_size")
async def test_a_write_that_overflows_the_map_fails_alone(open_env: EnvFactory) -> None:
    env = open_env(map_size=1 << 20, max_map_size=1 << 20)
    db = env.open_db("m")
    gate = WriterGate(db)
    await gate.hold()
    small = [asyncio.create_task(db.put(b"s%03d" % i, b"v")) for i in range(30)]
    big = asyncio.create_task(db.put_multi([(b"b%05d" % i, b"x" * 1000) for i in range(3000)]))
    later = [asyncio.create_task(db.put(b"t%03d" % i, b"v")) for i in range(30)]
    await asyncio.sleep(0)
    await gate.release()
    with pytest.raises(lmdb.MapFullError):
        await bounded(big)
    assert await bounded(asyncio.gather(*small, *later)) == [True] * 60
    assert await db.count() == 60


async def test_cancelled_writes_land_fully_or_not_at_all(records: BytesDB) -> None:
    gate = WriterGate(records)
    await gate.hold()
    queued = [
        asyncio.create_task(records.put_multi([(b"q%03d-%d" % (i, j), b"v") for j in range(5)]))
        for i in range(40)
    ]
    await asyncio.sleep(0)
    for task in queued[::2]:
        task.cancel()  # cancelled while waiting in the queue
    await gate.release()
    done = await bounded(asyncio.gather(*queued, return_exceptions=True))
    # Tasks cancelled in flight, after the writer took them.
    inflight = [asyncio.create_task(records.put(b"f%03d" % i, b"v" * 1000)) for i in range(100)]
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    for task in inflight[::3]:
        task.cancel()
    done_inflight = await bounded(asyncio.gather(*inflight, return_exceptions=True))

    for i, outcome in enumerate(done):
        keys = [b"q%03d-%d" % (i, j) for j in range(5)]
        values = list((await records.get_multi(keys)).values())
        if i % 2 == 0:
            assert isinstance(outcome, asyncio.CancelledError)
            assert values == [None] * 5  # cancelled before it began: not applied
        else:
            assert outcome == 5
            assert values == [b"v"] * 5
    for i, outcome in enumerate(done_inflight):
        value = await records.get(b"f%03d" % i)
        if outcome is True:
            assert value == b"v" * 1000
        else:
            assert isinstance(outcome, asyncio.CancelledError)
            assert value in (None, b"v" * 1000)
    # The writer keeps working.
    assert await records.put(b"after", b"v")
    assert await records.get(b"after") == b"v"


@pytest.mark.lmdb_only
async def test_backpressure_with_a_small_queue(open_env: EnvFactory) -> None:
    env = open_env(max_pending_writes=2)
    db = env.open_db("records")
    gate = WriterGate(db)
    await gate.hold()
    tasks = [asyncio.create_task(db.put(b"%03d" % i, b"v")) for i in range(100)]
    for _ in range(5):
        await asyncio.sleep(0)
    assert not any(task.done() for task in tasks)  # all wait: the writer is busy
    await gate.release()
    assert await bounded(asyncio.gather(*tasks)) == [True] * 100
    assert await db.count() == 100
    # And without the gate, from many concurrent tasks again.
    results = await bounded(asyncio.gather(*(db.put(b"x%03d" % i, b"v") for i in range(100))))
    assert results == [True] * 100
    assert await db.count() == 200


@pytest.mark.lmdb_only
async def test_max_batch_writes_of_one(open_env: EnvFactory) -> None:
    env = open_env(max_batch_writes=1)
    db = env.open_db("records")
    results = await bounded(asyncio.gather(*(db.put(b"%03d" % i, b"v") for i in range(100))))
    assert results == [True] * 100
    assert await db.count() == 100
