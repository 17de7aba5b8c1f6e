"""Group commit under writemap, close() while transactions are open, the bookkeeping of
writes queued behind a session, a commit that finds the map full."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import lmdb
import pytest
from conftest import (
    EnvFactory,
    WriterGate,
    bounded,
    detached,
    lmdb_engine,
    open_sessions,
    raw_records,
)

import aiolmdb
from aiolmdb.storage.postgres.session import PostgresSession


@pytest.mark.lmdb_only
async def test_writemap_one_failing_write_fails_alone(open_env: EnvFactory) -> None:
    env = open_env(writemap=True)
    db = await env.open_db_async("t")
    await db.put(b"taken", b"1")
    gate = WriterGate(db)
    await gate.hold()
    calls: list[asyncio.Future[Any]] = [
        asyncio.ensure_future(db.put(b"k%d" % i, b"v")) for i in range(5)
    ]
    calls.insert(2, asyncio.ensure_future(db.insert(b"taken", b"2")))
    for _ in range(5):  # every call reaches the queue: one batch
        await asyncio.sleep(0)
    await gate.release()
    out = await bounded(asyncio.gather(*calls, return_exceptions=True))
    refused = out.pop(2)
    assert isinstance(refused, aiolmdb.KeyExistsError), refused
    assert "taken" in str(refused)
    assert out == [True] * 5  # each put stored its record
    assert await db.get(b"taken") == b"1"
    assert [await db.get(b"k%d" % i) for i in range(5)] == [b"v"] * 5


async def test_a_block_ended_by_close_raises_closed_error(env_path: Path) -> None:
    # The writer ends a session just after aborting its transaction: held back
    # there, the block's own abort reaches the session between the two.
    env = aiolmdb.open(env_path)
    paused: list[float] = []

    def pause() -> None:
        paused.append(0.1)
        time.sleep(0.1)

    lmdb_engine(env).after_session_abort = pause
    db = await env.open_db_async("a")
    began = asyncio.Event()

    async def holder() -> None:
        async with env.transaction():
            await db.put(b"a", b"1")
            began.set()
            await asyncio.sleep(0.2)
            await db.put(b"a", b"2")

    async def queued() -> None:
        await began.wait()
        async with env.transaction():  # queued behind holder's transaction
            await db.put(b"b", b"2")

    tasks = [asyncio.create_task(holder()), asyncio.create_task(queued())]
    await bounded(began.wait())
    for _ in range(10):  # queued()'s transaction is queued behind holder's
        await asyncio.sleep(0)
    await bounded(env.close())
    out = await bounded(asyncio.gather(*tasks, return_exceptions=True))
    for outcome in out:
        assert isinstance(outcome, aiolmdb.ClosedError), repr(outcome)
        assert str(env_path) in str(outcome)
    assert paused  # the writer was held back where the race happens
    assert raw_records(env_path, "a") == {}


async def close_inside_a_transaction_with_others_queued(env: aiolmdb.AsyncEnvironment) -> None:
    db = await env.open_db_async("a")

    async def queued() -> None:
        async with env.transaction():
            await db.put(b"b", b"2")

    closed = False
    with pytest.raises(aiolmdb.ClosedError):
        async with env.transaction():
            await db.put(b"a", b"1")
            others = [detached(queued()) for _ in range(5)]
            await asyncio.sleep(0)  # each is queued behind this transaction
            await bounded(asyncio.shield(env.close()), timeout=2)
            closed = True
    assert closed
    for outcome in await bounded(asyncio.gather(*others, return_exceptions=True)):
        assert isinstance(outcome, aiolmdb.ClosedError), repr(outcome)


@pytest.mark.needs("serial_writes")
async def test_close_inside_a_transaction_with_others_queued(open_env: EnvFactory) -> None:
    # close() used to wait for the sessions one by one, in no set order: a
    # queued one first meant waiting forever for this block to end.
    for _ in range(3):  # the order differs from one environment to the next
        await close_inside_a_transaction_with_others_queued(open_env())


@pytest.mark.lmdb_only
async def test_close_from_another_event_loop_waits_for_the_close_under_way(
    env: aiolmdb.AsyncEnvironment,
) -> None:
    db = await env.open_db_async("a")
    gate = WriterGate(db)
    await gate.hold()
    write = asyncio.ensure_future(db.put(b"k", b"v"))  # queued: close lets it commit
    await asyncio.sleep(0)
    closing = asyncio.ensure_future(env.close())
    await asyncio.sleep(0)
    # From a thread of its own, with an event loop of its own, while this
    # loop's close waits for the writer.
    other = asyncio.ensure_future(asyncio.to_thread(asyncio.run, bounded(env.close())))
    await asyncio.sleep(0.05)
    assert not other.done() and not closing.done()
    await gate.release()
    await bounded(other)
    await bounded(closing)
    assert await bounded(write) is True
    assert env.closed


@pytest.mark.needs("serial_writes")
async def test_writes_queued_behind_a_transaction_are_forgotten_once_done(
    env: aiolmdb.AsyncEnvironment,
) -> None:
    db = await env.open_db_async("a")
    async with env.transaction():
        await db.put(b"a", b"1")
        (session,) = open_sessions(env)
        assert not isinstance(session, PostgresSession)  # serial writes: a session has a watch
        # Auto-commit writes of other tasks, and a transaction: all wait behind it.
        writes = [detached(db.put(b"k%d" % i, b"v")) for i in range(100)]
        other = detached(env.transaction().__aenter__())
        await asyncio.sleep(0)
        assert len(session.watch.behind) == 101
        for task in [*writes, other]:  # given up on, while the transaction stays busy
            task.cancel()
        await asyncio.gather(*writes, other, return_exceptions=True)
        assert session.watch.behind == set()
    assert await db.get(b"k0") is None


@pytest.mark.needs("map_size")
async def test_a_transaction_whose_commit_finds_the_map_full_is_told_why(
    open_env: EnvFactory,
) -> None:
    # Pages freed by earlier transactions make the commit itself need pages
    # (to save the free list): filled one transaction at a time, the map is
    # found full by a commit, not by a put.
    env = open_env(map_size=1 << 20, max_map_size=1 << 20)
    db = await env.open_db_async("a")
    for round_ in range(40):
        await db.put_multi([(b"k%03d" % (i % 300), bytes([round_]) * 200) for i in range(30)])
    with pytest.raises(lmdb.MapFullError) as raised:
        for step in range(1000):
            async with env.transaction():
                await db.put(b"x%06d" % step, b"y" * 1500)
    assert "at max_map_size (1048576 bytes) and cannot grow" in str(raised.value)
    assert "will not fit however often it runs" in str(raised.value)
    assert await db.get(b"k000") == bytes([39]) * 200
