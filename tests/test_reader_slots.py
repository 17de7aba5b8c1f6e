"""LMDB's reader table: an ended read gives its slot back at once, and a full table is
named.

py-lmdb keeps an aborted read transaction's slot in the reader table for as long
as the Python object lives, so ending a read is not enough: nothing may keep a
reference to it. These tests count every slot this process holds, the reset
ones included (``txnid`` ``-``), which is what fills the table.
"""

from __future__ import annotations

import asyncio
import os

import lmdb
import pytest
from conftest import TIMEOUT, EnvFactory, bounded

import aiolmdb
from aiolmdb.coders import UInt32Coder

MAX_READERS = 8

#: More transactions than the table has slots.
MANY = 5 * MAX_READERS


def slots_held(env: aiolmdb.AsyncEnvironment) -> int:
    """Reader-table slots this process holds: open read transactions and reset ones."""
    lines = env.readers().strip().splitlines()[1:]
    return sum(1 for line in lines if line.split()[0] == str(os.getpid()))


async def small_reader_table(
    open_env: EnvFactory,
) -> tuple[aiolmdb.AsyncEnvironment, aiolmdb.AsyncDatabase[bytes, bytes]]:
    """An environment whose reader table has ``MAX_READERS`` slots, and its database
    ``data`` holding ``b"k": b"v"``."""
    env = open_env(max_readers=MAX_READERS)
    db = env.open_db("data")
    await db.put(b"k", b"v")
    return env, db


async def next_iterations(count: int = 3) -> None:
    """Let the event loop run ``count`` iterations."""
    for _ in range(count):
        await asyncio.sleep(0)


@pytest.mark.lmdb_only
async def test_optimistic_transactions_waiting_for_their_commit_hold_no_reader_slot(
    open_env: EnvFactory,
) -> None:
    env = open_env(max_readers=MAX_READERS)
    db = env.open_db("data", key_coder=UInt32Coder(), value_coder=UInt32Coder())
    await db.put(0, 0)
    committing = 0

    async def body(number: int) -> None:
        nonlocal committing
        async with env.transaction(optimistic=True):
            assert await db.get(0) == 0
            await db.put(number + 1, number)
            committing += 1

    release_writer = asyncio.Event()

    async def hold_the_writer() -> None:
        async with env.transaction():
            await release_writer.wait()

    holder = asyncio.ensure_future(hold_the_writer())
    await next_iterations()
    bodies = []
    for number in range(MANY):
        # Begun in loop iterations of their own: each reads a snapshot of its own.
        bodies.append(asyncio.ensure_future(body(number)))
        await next_iterations()

    async def all_committing() -> None:
        while committing < MANY:
            failed = [b for b in bodies if b.done() and b.exception() is not None]
            if failed:
                raise failed[0].exception()  # type: ignore[misc]
            await asyncio.sleep(0.001)

    await bounded(all_committing(), timeout=TIMEOUT)
    # Every body has read and now waits for the writer to commit it.
    assert slots_held(env) <= 3  # the loop's reused read, py-lmdb's spare, one more
    async with env.transaction(write=False):
        assert await db.get(0) == 0
    release_writer.set()
    await bounded(asyncio.gather(holder, *bodies), timeout=TIMEOUT)
    assert [v async for v in db.values(start=1)] == list(range(MANY))


@pytest.mark.lmdb_only
async def test_a_read_snapshot_kept_after_it_ended_holds_no_reader_slot(
    open_env: EnvFactory,
) -> None:
    env, db = await small_reader_table(open_env)
    kept = []
    for _ in range(MANY):
        async with env.transaction(write=False) as snapshot:
            assert await db.get(b"k") == b"v"
        kept.append(snapshot)  # as a traceback or a log record might keep it
    assert slots_held(env) <= 3
    assert await db.get(b"k") == b"v"


async def fail_to_read(env: aiolmdb.AsyncEnvironment, how: str) -> None:
    """Read a value its coder refuses (a DecodeError), in the way ``how`` names."""
    db = env.open_db("data", value_coder=UInt32Coder())
    if how == "own read":
        await db.get(b"k")
    elif how == "read snapshot":
        async with env.transaction(write=False):
            await db.get(b"k")
    elif how == "transact":

        async def body() -> None:
            await db.get(b"k")

        await env.transact(body)
    else:
        assert how == "scan"
        async for _ in db.items():
            pass


@pytest.mark.lmdb_only
@pytest.mark.parametrize("how", ["own read", "read snapshot", "transact", "scan"])
async def test_a_kept_exception_of_a_failed_read_holds_no_reader_slot(
    open_env: EnvFactory, how: str
) -> None:
    env = open_env(max_readers=MAX_READERS)
    await env.open_db("data").put(b"k", b"not a 4-byte integer")
    kept: list[BaseException] = []
    for _ in range(MANY):
        with pytest.raises(aiolmdb.DecodeError) as raised:
            await fail_to_read(env, how)
        kept.append(raised.value)  # its traceback holds the frames of the read
        await next_iterations()
    assert slots_held(env) <= 3
    assert await env.open_db("data").get(b"k") == b"not a 4-byte integer"


@pytest.mark.lmdb_only
async def test_a_full_reader_table_is_an_error_naming_the_environment(
    open_env: EnvFactory,
) -> None:
    env, db = await small_reader_table(open_env)
    loop = asyncio.get_running_loop()
    release = asyncio.Event()

    async def hold_a_snapshot(opened: asyncio.Future[None]) -> None:
        async with env.transaction(write=False) as snapshot:
            assert await db.get(b"k", txn=snapshot) == b"v"
            opened.set_result(None)
            await release.wait()

    holders: list[asyncio.Future[None]] = []
    with pytest.raises(aiolmdb.ReadersFullError) as raised:
        for _ in range(MAX_READERS + 1):
            opened = loop.create_future()
            holder = asyncio.ensure_future(hold_a_snapshot(opened))
            holders.append(holder)
            await bounded(asyncio.wait([opened, holder], return_when=asyncio.FIRST_COMPLETED))
            if holder.done():
                holder.result()
    assert isinstance(raised.value, lmdb.ReadersFullError)  # as py-lmdb's handlers expect
    message = str(raised.value)
    assert env.path() in message
    assert f"its {MAX_READERS} slots are taken" in message
    assert "max_readers=" in message
    assert "env.transaction(write=False)" in message
    release.set()
    await bounded(asyncio.gather(*holders[:-1]))
    # The snapshots ended: their slots are free again.
    async with env.transaction(write=False) as snapshot:
        assert await db.get(b"k", txn=snapshot) == b"v"
    assert await db.get(b"k") == b"v"
