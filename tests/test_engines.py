"""Which engine a location opens, what each engine supports, and how it refuses the rest."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

import aiolmdb
from aiolmdb.coders import UInt32Coder
from aiolmdb.storage import Capabilities
from aiolmdb.storage.lmdb import LmdbEngine
from aiolmdb.storage.memory import MemoryEngine


async def test_a_path_opens_lmdb_and_memory_a_fresh_store_each_time(tmp_path: Path) -> None:
    async with aiolmdb.open(tmp_path / "env") as env:
        assert isinstance(env.engine, LmdbEngine)
        assert env.capabilities == Capabilities(
            raw_transactions=True,
            native_key_orders=True,
            map_size=True,
            reader_table=True,
            backup=True,
            multi_process=True,
            durable=True,
            duplicate_values=True,
        )
        await env.open_db("a").put(b"k", b"on disk")
    async with aiolmdb.open(str(tmp_path / "env")) as env:  # a str path too
        assert await env.open_db("a").get(b"k") == b"on disk"
    async with aiolmdb.open(":memory:") as first, aiolmdb.open(":memory:") as second:
        assert isinstance(first.engine, MemoryEngine)
        assert first.capabilities == Capabilities()  # none of LMDB's; nothing durable
        await first.open_db("a").put(b"k", b"in memory")
        assert await second.open_db("a").get(b"k") is None  # independent stores
        assert repr(first) == "<AsyncEnvironment memory ':memory:' open>"


def test_a_url_of_no_known_engine_is_refused_naming_its_scheme() -> None:
    with pytest.raises(
        aiolmdb.UnsupportedError, match=r"no engine opens redis://.*':memory:' or a postgresql"
    ):
        aiolmdb.open("redis://app@db.example/0")


def test_the_memory_engine_refuses_lmdb_options_naming_them() -> None:
    with pytest.raises(TypeError, match=r"memory engine takes no option map_size.*LMDB's"):
        aiolmdb.open(":memory:", map_size=1 << 20)
    with pytest.raises(TypeError, match=r"max_map_size"):
        aiolmdb.open(":memory:", max_map_size=1 << 30)
    env = aiolmdb.open(":memory:", inline_value_limit=10)
    assert env.inline_value_limit == 10


#: What only LMDB has, called on another engine.
LMDB_ONLY: dict[str, Callable[[aiolmdb.AsyncEnvironment], Any]] = {
    "info()": lambda env: env.info(),
    "stat()": lambda env: env.stat(),
    "flags()": lambda env: env.flags(),
    "readers()": lambda env: env.readers(),
    "path()": lambda env: env.path(),
    "lmdb_env": lambda env: env.lmdb_env,
}

#: The same, awaited: what the message names, and the call.
LMDB_ONLY_ASYNC: dict[str, Callable[[aiolmdb.AsyncEnvironment], Awaitable[Any]]] = {
    "copy()": lambda env: env.copy("/nonexistent"),
    "stat() of database 'db'": lambda env: env.open_db("db").stat(),
    "run()'s raw transaction (txn.txn)": lambda env: env.open_db("db").run(lambda t: t.txn),
}


@pytest.mark.parametrize("call", list(LMDB_ONLY))
async def test_what_only_lmdb_has_is_refused_elsewhere_naming_the_engine(call: str) -> None:
    async with aiolmdb.open(":memory:") as env:
        with pytest.raises(aiolmdb.UnsupportedError, match=rf"{re.escape(call)} is LMDB's.*memory"):
            LMDB_ONLY[call](env)


@pytest.mark.parametrize("call", list(LMDB_ONLY_ASYNC))
async def test_what_only_lmdb_has_is_refused_elsewhere_when_awaited(call: str) -> None:
    async with aiolmdb.open(":memory:") as env:
        with pytest.raises(aiolmdb.UnsupportedError, match=rf"{re.escape(call)} is LMDB's.*memory"):
            await LMDB_ONLY_ASYNC[call](env)


async def test_a_raw_cursor_is_refused_elsewhere() -> None:
    async with aiolmdb.open(":memory:") as env:
        with pytest.raises(aiolmdb.UnsupportedError, match=r"raw transaction.*memory engine"):
            await env.open_db("db").run(lambda t: t.cursor())


@pytest.mark.parametrize("flag", ["integerkey", "reverse_key"])
async def test_lmdb_key_orders_are_refused_elsewhere_naming_the_database(flag: str) -> None:
    async with aiolmdb.open(":memory:") as env:
        with pytest.raises(aiolmdb.UnsupportedError, match=rf"'ints'.*memory engine.*{flag}"):
            env.open_db("ints", key_coder=UInt32Coder(), **{flag: True})


async def test_run_works_on_every_engine_without_its_raw_parts() -> None:
    async with aiolmdb.open(":memory:") as env:
        db = env.open_db("db")
        assert await db.run(lambda t: t.put(b"k", b"v"), write=True)
        assert await db.run(lambda t: t.get(b"k")) == b"v"
        with pytest.raises(aiolmdb.TransactionError, match="read-only"):
            await db.run(lambda t: t.delete(b"k"))


async def test_sync_and_max_key_size_work_on_every_engine(tmp_path: Path) -> None:
    for location in (str(tmp_path / "env"), ":memory:"):
        async with aiolmdb.open(location) as env:
            await env.sync()
            await env.sync(True)
            assert env.max_key_size() == 511  # the same limit: code that runs on one runs on both
