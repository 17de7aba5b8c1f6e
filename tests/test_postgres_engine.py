"""What only the PostgreSQL engine has: its location, options, storage layout, conflicts
between transactions that run side by side, and its errors when the server is away.

The behaviour every engine shares is tested by the conformance suite (every test
using ``env``/``open_env`` runs on PostgreSQL too); these use the suite's server.
"""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest
from conftest import bounded

import aiolmdb
from aiolmdb.coders import StringCoder, UInt32Coder
from aiolmdb.storage import Capabilities
from aiolmdb.storage.postgres import LAYOUT_VERSION, PostgresEngine


def rows(url: str, query: str) -> list[tuple[Any, ...]]:
    """What ``query`` gives, read with plain psycopg."""
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(query).fetchall()


async def test_a_postgresql_url_opens_the_engine_with_its_capabilities(postgres_url: str) -> None:
    async with aiolmdb.open(postgres_url) as env:
        assert isinstance(env.engine, PostgresEngine)
        assert env.capabilities == Capabilities(
            multi_process=True, durable=True, serial_writes=False
        )
        await env.open_db("a").put(b"k", b"v")
    async with aiolmdb.open(postgres_url.replace("postgresql://", "postgres://")) as env:
        assert await env.open_db("a").get(b"k") == b"v"  # durable, and both schemes


def test_messages_never_show_the_password() -> None:
    env = aiolmdb.open("postgresql://app:s3cret@db.example:5432/app?password=other")
    assert "s3cret" not in repr(env) and "other" not in env.engine.description
    assert env.engine.description == "postgresql://app:***@db.example:5432/app?password=***"


def test_options_of_other_engines_and_bad_settings_are_refused_naming_them() -> None:
    with pytest.raises(TypeError, match=r"PostgreSQL engine takes no option map_size.*LMDB's"):
        aiolmdb.open("postgresql://app@db.example/app", map_size=1 << 20)
    with pytest.raises(ValueError, match="max_connections"):
        aiolmdb.open("postgresql://app@db.example/app", max_connections=0)
    with pytest.raises(ValueError, match="reconnect_timeout"):
        aiolmdb.open("postgresql://app@db.example/app", reconnect_timeout=0)
    with pytest.raises(ValueError, match="not a valid PostgreSQL URL"):
        aiolmdb.open("postgresql://app@db.example/app?nosuchoption=1")
    env = aiolmdb.open("postgresql://app@db.example/app", max_connections=3)
    assert isinstance(env.engine, PostgresEngine) and env.engine.max_connections == 3


async def test_the_storage_layout_is_the_documented_one(postgres_url: str) -> None:
    async with aiolmdb.open(postgres_url) as env:
        users = env.open_db("users", key_coder=UInt32Coder(), value_coder=StringCoder())
        await users.put(7, "seven")
        await env.get_default_database().put(b"d", b"default")
    assert rows(postgres_url, "SELECT version FROM aiolmdb_layout") == [(LAYOUT_VERSION,)]
    keyspaces = dict(rows(postgres_url, "SELECT id, name FROM aiolmdb_keyspaces"))
    assert keyspaces[0] is None  # the default database
    (users_id,) = [ident for ident, name in keyspaces.items() if name == b"users"]
    records = rows(postgres_url, "SELECT keyspace, key, value FROM aiolmdb_records ORDER BY 1, 2")
    assert records == [(0, b"d", b"default"), (users_id, b"\x00\x00\x00\x07", b"seven")]
    # Every write transaction left its commit's marker.
    assert rows(postgres_url, "SELECT count(*) FROM aiolmdb_commits")[0][0] >= 2


async def test_keys_are_ordered_byte_by_byte(postgres_url: str) -> None:
    keys = [b"\x00", b"\x00\x00", b"\x01", b"\x7f", b"\x80", b"\xfe\xff", b"\xff"]
    async with aiolmdb.open(postgres_url) as env:
        db = env.open_db("order")
        await db.put_multi([(key, b"") for key in reversed(keys)])
        assert [key async for key in db.keys()] == keys
        assert [key async for key in db.keys(reverse=True)] == keys[::-1]
        assert [key async for key in db.keys(b"\x01", b"\xfe\xff")] == keys[2:5]


async def test_a_layout_of_a_later_release_is_refused(postgres_url: str) -> None:
    async with aiolmdb.open(postgres_url) as env:
        await env.open_db("a").put(b"k", b"v")
    rows_changed = rows(postgres_url, "UPDATE aiolmdb_layout SET version = 99 RETURNING version")
    assert rows_changed == [(99,)]
    env = aiolmdb.open(postgres_url)
    try:
        with pytest.raises(aiolmdb.UnavailableError, match=r"storage layout 99.*later release"):
            await env.open_db("a").get(b"k")
    finally:
        await env.close()


async def test_transactions_that_conflict_raise_conflict_error_and_transact_runs_them_again(
    postgres_url: str,
) -> None:
    async with aiolmdb.open(postgres_url) as env:
        counters = env.open_db("counters", key_coder=StringCoder(), value_coder=UInt32Coder())
        await counters.put("n", 0)
        reads = 0
        both_read = asyncio.Event()

        async def increment() -> None:
            nonlocal reads
            value = await counters.get("n", 0)
            reads += 1
            if reads >= 2:
                both_read.set()
            await both_read.wait()  # the first two read what the other then changes
            await counters.put("n", value + 1)

        async def in_a_block() -> None:
            async with env.transaction():
                await increment()

        outcomes = await bounded(asyncio.gather(in_a_block(), in_a_block(), return_exceptions=True))
        conflicts = [o for o in outcomes if isinstance(o, aiolmdb.ConflictError)]
        assert len(conflicts) == 1 and isinstance(conflicts[0], aiolmdb.RetryableError)
        assert "run it again" in str(conflicts[0])
        assert await counters.get("n") == 1  # the one that conflicted left nothing

        reads = 0
        both_read.clear()
        await bounded(asyncio.gather(env.transact(increment), env.transact(increment)))
        assert await counters.get("n") == 3  # the conflicting one ran again


async def test_auto_commit_updates_retry_their_conflicts_by_themselves(postgres_url: str) -> None:
    async with aiolmdb.open(postgres_url) as env:
        counters = env.open_db("counters", key_coder=StringCoder(), value_coder=UInt32Coder())
        await counters.put("n", 0)
        await bounded(
            asyncio.gather(*(counters.update("n", lambda n: (n or 0) + 1) for _ in range(50))),
            timeout=60,
        )
        assert await counters.get("n") == 50


async def test_an_unreachable_server_raises_unavailable_error_naming_it() -> None:
    env = aiolmdb.open("postgresql://app@127.0.0.1:1/app?connect_timeout=1", reconnect_timeout=0.5)
    try:
        with pytest.raises(aiolmdb.UnavailableError, match=r"127\.0\.0\.1:1.*reconnect_timeout"):
            await bounded(env.open_db("a").get(b"k"))
    finally:
        await env.close()


async def test_the_pool_is_bounded_and_a_call_finding_it_full_says_so(postgres_url: str) -> None:
    async with aiolmdb.open(postgres_url, max_connections=2, reconnect_timeout=0.5) as env:
        db = env.open_db("a")
        await db.put(b"k", b"v")
        held = asyncio.Semaphore(0)
        done = asyncio.Event()

        async def hold() -> None:
            async with env.transaction():  # a connection of its own, until the block ends
                await db.get(b"k")
                held.release()
                await done.wait()

        holders = [asyncio.create_task(hold()) for _ in range(2)]
        try:
            for _ in holders:
                await bounded(held.acquire())
            # No third connection, not even one made outside the pool.
            with pytest.raises(aiolmdb.UnavailableError, match=r"all 2 connections.*max_connect"):
                await bounded(db.put(b"k", b"w"))
        finally:
            done.set()
            await bounded(asyncio.gather(*holders))
        assert await db.put(b"k", b"w")  # connections given back: calls go on
        assert await db.get(b"k") == b"w"
