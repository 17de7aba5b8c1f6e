"""LMDB dupsort databases: several values per key, as aiolmdb 0.1.1 had them through
py-lmdb, and what every other call means on them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lmdb
import pytest
from conftest import EngineKind, bounded

import aiolmdb
from aiolmdb.coders import JSONCoder, StringCoder, UInt32Coder


@pytest.fixture
async def lmdb_env(tmp_path: Path) -> Any:
    env = aiolmdb.open(tmp_path / "env", map_size=64 * 1024 * 1024)
    try:
        yield env
    finally:
        await bounded(env.close())


# -- every engine --------------------------------------------------------------


async def test_only_lmdb_has_dupsort(
    env: aiolmdb.AsyncEnvironment, engine_kind: EngineKind
) -> None:
    assert env.capabilities.duplicate_values is (engine_kind is EngineKind.LMDB)
    if engine_kind is EngineKind.LMDB:
        assert env.open_db("tags", dupsort=True).dupsort
        return
    for opening in (env.open_db, env.open_db_async):
        with pytest.raises(aiolmdb.UnsupportedError) as excinfo:
            result = opening("tags", dupsort=True)
            if not isinstance(result, aiolmdb.AsyncDatabase):
                await result
        message = str(excinfo.value)
        assert "database 'tags'" in message
        assert f"the {engine_kind.value} engine does not support dupsort" in message


async def test_get_all_of_a_database_with_one_value_per_key(env: aiolmdb.AsyncEnvironment) -> None:
    db = env.open_db("plain", key_coder=StringCoder(), value_coder=JSONCoder())
    assert not db.dupsort
    await db.put("k", {"n": 1})
    assert await db.get_all("k") == [{"n": 1}]
    assert await db.get_all("missing") == []


async def test_delete_with_a_value_needs_a_dupsort_database(env: aiolmdb.AsyncEnvironment) -> None:
    db = env.open_db("plain")
    await db.put(b"k", b"v")
    with pytest.raises(TypeError, match=r"database 'plain' is not a dupsort database") as excinfo:
        await db.delete(b"k", b"v")
    assert "use delete(key)" in str(excinfo.value)
    assert await db.get(b"k") == b"v"


async def test_dupdata_changes_nothing_on_a_database_with_one_value_per_key(
    env: aiolmdb.AsyncEnvironment,
) -> None:
    db = env.open_db("plain")
    assert await db.put(b"k", b"1", dupdata=False)
    assert await db.put(b"k", b"2", dupdata=False)  # replaced, as in LMDB
    assert await db.get_all(b"k") == [b"2"]


# -- LMDB ------------------------------------------------------------------------


async def test_put_adds_values_kept_in_byte_order(lmdb_env: aiolmdb.AsyncEnvironment) -> None:
    tags = lmdb_env.open_db("tags", dupsort=True)
    for value in (b"red", b"blue", b"green"):
        assert await tags.put(b"apple", value)
    assert await tags.get_all(b"apple") == [b"blue", b"green", b"red"]
    assert await tags.get(b"apple") == b"blue"  # the first value
    assert await tags.get_multi([b"apple", b"pear"]) == {b"apple": b"blue", b"pear": None}
    assert await tags.contains(b"apple")
    assert await tags.get_all(b"pear") == []


async def test_put_flags_are_lmdbs(lmdb_env: aiolmdb.AsyncEnvironment) -> None:
    tags = lmdb_env.open_db("tags", dupsort=True)
    assert await tags.put(b"k", b"a")
    # The pair is stored already: dupdata=False says so, the default does not.
    assert await tags.put(b"k", b"a")
    assert not await tags.put(b"k", b"a", dupdata=False)
    assert await tags.put(b"k", b"b", dupdata=False)
    # overwrite=False adds nothing to a key that has values.
    assert not await tags.put(b"k", b"c", overwrite=False)
    assert await tags.put(b"other", b"c", overwrite=False)
    assert await tags.get_all(b"k") == [b"a", b"b"]
    with pytest.raises(aiolmdb.KeyExistsError, match="database 'tags': key b'k' already exists"):
        await tags.insert(b"k", b"z")


async def test_delete_one_value_or_every_value(lmdb_env: aiolmdb.AsyncEnvironment) -> None:
    tags = lmdb_env.open_db("tags", dupsort=True)
    await tags.put_multi([(b"k", b"a"), (b"k", b"b"), (b"k", b"c"), (b"j", b"x")])
    assert await tags.delete(b"k", b"b")
    assert not await tags.delete(b"k", b"b")
    assert not await tags.delete(b"nothing", b"b")
    assert await tags.get_all(b"k") == [b"a", b"c"]
    assert await tags.delete(b"k")  # every value
    assert await tags.get_all(b"k") == []
    assert not await tags.delete(b"k")
    assert await tags.delete_multi([b"j", b"k"]) == {b"j": True, b"k": False}
    assert await tags.count() == 0


async def test_drop_empties_or_deletes_it(lmdb_env: aiolmdb.AsyncEnvironment) -> None:
    tags = lmdb_env.open_db("tags", dupsort=True)
    await tags.put_multi([(b"k", b"a"), (b"k", b"b")])
    await tags.drop(delete=False)
    assert await tags.get_all(b"k") == []
    await tags.put(b"k", b"c")
    await tags.drop()
    with pytest.raises(aiolmdb.DatabaseNotFoundError):
        await lmdb_env.open_db_async("tags", create=False, dupsort=True)
    again = await lmdb_env.open_db_async("tags", dupsort=True)
    assert await again.get_all(b"k") == []


async def test_values_take_1_to_511_bytes(lmdb_env: aiolmdb.AsyncEnvironment) -> None:
    tags = lmdb_env.open_db("tags", dupsort=True)
    assert await tags.put(b"k", b"x" * 511)
    for size in (0, 512):
        with pytest.raises(aiolmdb.EncodeError) as excinfo:
            await tags.put(b"k", b"x" * size)
        assert str(excinfo.value) == (
            f"database 'tags': a value of {size} bytes cannot be stored under key b'k': the "
            "values of a dupsort database take 1 to 511 bytes encoded (LMDB keeps them as keys)"
        )
        assert not await tags.delete(b"k", b"x" * size)
    with pytest.raises(aiolmdb.EncodeError, match="a value of 0 bytes"):
        await tags.put_multi([(b"j", b"ok"), (b"j", b"")])
    assert await tags.get_all(b"k") == [b"x" * 511]
    assert await tags.get_all(b"j") == []  # all or none


async def test_put_multi_counts_the_pairs_added(lmdb_env: aiolmdb.AsyncEnvironment) -> None:
    tags = lmdb_env.open_db("tags", dupsort=True)
    assert await tags.put_multi([(b"k", b"a"), (b"k", b"b"), (b"k", b"a")]) == 2
    assert await tags.put_multi({b"k": b"c", b"j": b"a"}, overwrite=False) == 1
    assert await tags.get_all(b"k") == [b"a", b"b"]
    assert await tags.get_all(b"j") == [b"a"]


async def test_reads_see_each_key_once_with_its_first_value(
    lmdb_env: aiolmdb.AsyncEnvironment,
) -> None:
    tags = lmdb_env.open_db("tags", dupsort=True)
    await tags.put_multi(
        [(b"a", b"3"), (b"a", b"1"), (b"b", b"2"), (b"c", b"9"), (b"c", b"8"), (b"c", b"7")]
    )
    assert [item async for item in tags.items()] == [(b"a", b"1"), (b"b", b"2"), (b"c", b"7")]
    assert [item async for item in tags.items(reverse=True)] == [
        (b"c", b"7"),
        (b"b", b"2"),
        (b"a", b"1"),
    ]
    assert [key async for key in tags.keys(b"b")] == [b"b", b"c"]
    assert [key async for key in tags.keys(b"a", b"c", reverse=True)] == [b"b", b"a"]
    assert [value async for value in tags.values(limit=2)] == [b"1", b"2"]
    assert await tags.first() == (b"a", b"1")
    assert await tags.last() == (b"c", b"7")
    assert await tags.count() == 3  # keys, not values
    assert await tags.count(b"b") == 2
    assert await tags.count(b"a", b"c") == 2
    assert (await tags.stat())["entries"] == 6  # LMDB's own statistics count values


async def test_scans_of_many_keys_cross_batches_without_losing_one(
    lmdb_env: aiolmdb.AsyncEnvironment,
) -> None:
    # More keys than several scan batches hold, each with three values.
    tags = lmdb_env.open_db(
        "tags", key_coder=UInt32Coder(), value_coder=UInt32Coder(), dupsort=True
    )
    keys = range(3000)
    await tags.put_multi([(key, key * 10 + n) for key in keys for n in (2, 0, 1)])
    assert [item async for item in tags.items()] == [(key, key * 10) for key in keys]
    assert [key async for key in tags.keys(reverse=True)] == list(reversed(keys))
    assert [v async for v in tags.values(100, 2100, reverse=True)] == [
        key * 10 for key in reversed(range(100, 2100))
    ]
    assert await tags.count() == 3000
    assert await tags.count(10, 20) == 10
    assert await tags.get_all(2999) == [29990, 29991, 29992]


async def test_coders_apply_to_every_value(lmdb_env: aiolmdb.AsyncEnvironment) -> None:
    # Values are kept in the byte order of their encodings (big-endian: numeric order).
    scores = lmdb_env.open_db(
        "scores", key_coder=StringCoder(), value_coder=UInt32Coder(), dupsort=True
    )
    await scores.put_multi([("ann", 300), ("ann", 7), ("ann", 65536), ("bob", 1)])
    assert await scores.get_all("ann") == [7, 300, 65536]
    assert await scores.get("ann") == 7
    assert await scores.delete("ann", 300)
    assert await scores.get_all("ann") == [7, 65536]
    with pytest.raises(aiolmdb.EncodeError, match="UInt32Coder"):
        await scores.delete("ann", -1)
    raw = lmdb_env.open_db("scores", dupsort=True)
    assert await raw.get_all(b"ann") == [b"\x00\x00\x00\x07", b"\x00\x01\x00\x00"]


async def test_get_all_decodes_many_values(lmdb_env: aiolmdb.AsyncEnvironment) -> None:
    docs = lmdb_env.open_db("docs", key_coder=StringCoder(), value_coder=JSONCoder(), dupsort=True)
    many = [{"n": n} for n in range(100)]  # more than are decoded on the event loop
    await docs.put_multi([("many", doc) for doc in many])
    assert sorted((await docs.get_all("many")), key=lambda doc: doc["n"]) == many
    async with lmdb_env.transaction(write=False):
        assert len(await docs.get_all("many")) == 100


async def test_pop_takes_the_first_value_and_replace_replaces_them_all(
    lmdb_env: aiolmdb.AsyncEnvironment,
) -> None:
    tags = lmdb_env.open_db("tags", dupsort=True)
    await tags.put_multi([(b"k", b"a"), (b"k", b"b"), (b"k", b"c")])
    assert await tags.pop(b"k") == b"a"
    assert await tags.get_all(b"k") == [b"b", b"c"]
    assert await tags.replace(b"k", b"z") == b"b"
    assert await tags.get_all(b"k") == [b"z"]
    assert await tags.replace(b"new", b"n") is None
    assert await tags.get_all(b"new") == [b"n"]
    assert await tags.pop(b"missing", b"default") == b"default"


async def test_update_is_refused_naming_what_to_use(lmdb_env: aiolmdb.AsyncEnvironment) -> None:
    tags = lmdb_env.open_db("tags", dupsort=True)
    await tags.put(b"k", b"a")
    with pytest.raises(TypeError, match=r"database 'tags' is a dupsort database: update\(\)"):
        await tags.update(b"k", lambda old: old + b"!")
    assert await tags.get_all(b"k") == [b"a"]


async def test_inside_a_transaction(lmdb_env: aiolmdb.AsyncEnvironment) -> None:
    tags = lmdb_env.open_db("tags", dupsort=True)
    await tags.put(b"k", b"a")
    async with lmdb_env.transaction():
        await tags.put(b"k", b"b")
        assert await tags.delete(b"k", b"a")
        await tags.put(b"k", b"c")
        assert await tags.get_all(b"k") == [b"b", b"c"]  # its own writes
        assert await tags.count() == 1
    assert await tags.get_all(b"k") == [b"b", b"c"]
    with pytest.raises(RuntimeError, match="undo"):
        async with lmdb_env.transaction():
            await tags.put(b"k", b"d")
            await tags.delete(b"k", b"b")
            raise RuntimeError("undo")
    assert await tags.get_all(b"k") == [b"b", b"c"]
    async with lmdb_env.transaction(write=False):
        assert await tags.get_all(b"k") == [b"b", b"c"]


async def test_optimistic_transactions_refuse_dupsort_writes_and_get_all(
    lmdb_env: aiolmdb.AsyncEnvironment,
) -> None:
    tags = lmdb_env.open_db("tags", dupsort=True)
    plain = lmdb_env.open_db("plain")
    await tags.put(b"k", b"a")
    refusal = (
        r"database 'tags' is a dupsort database, which an optimistic transaction .* cannot "
        r"write: it buffers writes by key, one value each; use env\.transaction\(\)"
    )
    for write in (
        lambda: tags.put(b"k", b"b"),
        lambda: tags.delete(b"k", b"a"),
        lambda: tags.delete(b"k"),
        lambda: tags.put_multi([(b"k", b"c")]),
        lambda: tags.pop(b"k"),
    ):
        with pytest.raises(aiolmdb.UnsupportedError, match=refusal):
            async with lmdb_env.transaction(optimistic=True):
                await plain.put(b"p", b"1")
                await write()
    with pytest.raises(aiolmdb.UnsupportedError, match="cannot read every value of a key"):
        async with lmdb_env.transaction(optimistic=True):
            await tags.get_all(b"k")

    async def add_tag() -> None:
        await tags.put(b"k", b"z")

    with pytest.raises(aiolmdb.UnsupportedError, match=refusal):
        await lmdb_env.transact(add_tag)
    # Nothing was applied, and a plain read of the first value works there.
    assert await tags.get_all(b"k") == [b"a"]
    assert await plain.get(b"p") is None
    async with lmdb_env.transaction(optimistic=True):
        assert await tags.get(b"k") == b"a"


async def test_an_open_with_the_other_dupsort_flag_is_refused(
    lmdb_env: aiolmdb.AsyncEnvironment,
) -> None:
    await lmdb_env.open_db("plain").put(b"k", b"v")
    await lmdb_env.open_db("tags", dupsort=True).put(b"k", b"v")
    with pytest.raises(lmdb.IncompatibleError) as excinfo:
        await lmdb_env.open_db_async("plain", dupsort=True)
    assert "database 'plain' could not be opened" in str(excinfo.value)
    assert "it was created without dupsort" in str(excinfo.value)
    with pytest.raises(lmdb.IncompatibleError) as excinfo:
        await lmdb_env.open_db("tags").get(b"k")
    assert "database 'tags' could not be opened" in str(excinfo.value)
    assert "open it with open_db(..., dupsort=True)" in str(excinfo.value)
    # The databases themselves are untouched.
    assert await lmdb_env.open_db("plain").get_all(b"k") == [b"v"]
    assert await lmdb_env.open_db("tags", dupsort=True).get_all(b"k") == [b"v"]


async def test_values_survive_a_reopen(tmp_path: Path) -> None:
    async with aiolmdb.open(tmp_path / "e") as env:
        await env.open_db("tags", dupsort=True).put_multi([(b"k", b"a"), (b"k", b"b")])
    async with aiolmdb.open(tmp_path / "e") as env:
        tags = await env.open_db_async("tags", dupsort=True)
        assert await tags.get_all(b"k") == [b"a", b"b"]


async def test_run_sees_the_raw_duplicates(lmdb_env: aiolmdb.AsyncEnvironment) -> None:
    tags = lmdb_env.open_db("tags", dupsort=True)
    await tags.put_multi([(b"k", b"a"), (b"k", b"b")])

    def every_pair(txn: aiolmdb.DatabaseTxn[bytes, bytes]) -> list[tuple[bytes, bytes]]:
        return [(bytes(k), bytes(v)) for k, v in txn.cursor().iternext()]

    assert await tags.run(every_pair) == [(b"k", b"a"), (b"k", b"b")]
