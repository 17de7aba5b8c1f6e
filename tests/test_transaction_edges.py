"""Transactions at their edges: tasks that share one, outlive one, or wait on the writer."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from typing import Any

import lmdb
import pytest
from conftest import EnvFactory, abort_orphans, bounded, detached, open_sessions

import aiolmdb
from aiolmdb.coders import JSONCoder, StringCoder

Env = aiolmdb.AsyncEnvironment
BytesDB = aiolmdb.AsyncDatabase[bytes, bytes]
JsonDB = aiolmdb.AsyncDatabase[str, Any]

MANY = 2000  # records: put_multi encodes them in slices, yielding in between


@pytest.fixture
def db(env: Env) -> BytesDB:
    return env.open_db("edges")


@pytest.fixture
def accounts(env: Env) -> JsonDB:
    return env.open_db("accounts", key_coder=StringCoder(), value_coder=JSONCoder())


def owner_name() -> str:
    task = asyncio.current_task()
    assert task is not None
    return task.get_name()


def keys(n: int = MANY) -> list[bytes]:
    return [b"%05d" % i for i in range(n)]


# -- a savepoint of one task, a multi-record call of another ------------------


async def _call_across_a_savepoint(env: Env, db: BytesDB, call: Any) -> BaseException | None:
    """Run ``call`` in a task sharing the block's transaction while the block holds a
    savepoint that it then rolls back; return what the call raised (None: it returned)."""
    task = asyncio.create_task(call())
    await asyncio.sleep(0)  # the call checked the transaction and encodes its first slice
    with pytest.raises(RuntimeError):
        async with env.transaction():
            await db.put(b"savepoint", b"rolled back")
            await bounded(asyncio.wait([task]))
            raise RuntimeError("roll the savepoint back")
    return task.exception()


async def test_put_multi_is_refused_when_another_task_opened_a_savepoint_meanwhile(
    env: Env, db: BytesDB
) -> None:
    items = [(key, b"v") for key in keys()]
    async with env.transaction():
        error = await _call_across_a_savepoint(env, db, lambda: db.put_multi(items))
        assert isinstance(error, aiolmdb.TransactionError), error
        assert "savepoint" in str(error)
        await db.put(b"outer", b"v")  # the outer transaction goes on
    assert await db.count() == 1
    assert await db.get(b"outer") == b"v"


async def test_delete_multi_is_refused_when_another_task_opened_a_savepoint_meanwhile(
    env: Env, db: BytesDB
) -> None:
    await db.put_multi([(key, b"v") for key in keys()])
    async with env.transaction():
        error = await _call_across_a_savepoint(env, db, lambda: db.delete_multi(keys()))
        assert isinstance(error, aiolmdb.TransactionError), error
        assert "savepoint" in str(error)
    # Not acknowledged and then rolled back with the savepoint: refused, so all stay.
    assert await db.count() == MANY


async def test_get_multi_is_refused_when_another_task_opened_a_savepoint_meanwhile(
    env: Env, db: BytesDB
) -> None:
    wanted = [*keys(), b"savepoint"]
    async with env.transaction():
        error = await _call_across_a_savepoint(env, db, lambda: db.get_multi(wanted))
        # It never reads what the savepoint wrote and then rolled back.
        assert isinstance(error, aiolmdb.TransactionError), error
        assert "savepoint" in str(error)
    assert await db.get(b"savepoint") is None


async def test_the_writer_refuses_a_call_made_outside_the_innermost_savepoint(
    env: Env, db: BytesDB
) -> None:
    # What the loop side checks first, the writer checks again when it applies the
    # call: a call of the outer transaction never lands in a savepoint.
    async with env.transaction() as txn:
        (session,) = open_sessions(env)
        await session.savepoint()
        session.savepoints.clear()  # the loop side's view drifts
        with pytest.raises(aiolmdb.TransactionError, match="savepoint"):
            await db.put(b"outer", b"v")
        with pytest.raises(aiolmdb.TransactionError, match="savepoint"):
            await db.get(b"outer")
        await txn.abort()
    assert await db.count() == 0
    assert await bounded(db.put(b"after", b"v"))


# -- tasks that outlive their transaction --------------------------------------


async def test_tasks_of_an_aborted_transaction_never_auto_commit(
    env: Env, accounts: JsonDB
) -> None:
    await accounts.put_multi({"alice": 100, "bob": 0})
    aborted = asyncio.Event()

    async def debit() -> None:
        await accounts.put("log", ["debit started"])  # joins the transaction
        await aborted.wait()
        await accounts.put("alice", 90)

    async def credit() -> None:
        await aborted.wait()
        await accounts.put("bob", 10)

    async def check() -> None:
        raise ValueError("insufficient funds")

    tasks: list[asyncio.Task[None]] = []
    with pytest.raises(ValueError):
        async with env.transaction():
            name = owner_name()
            tasks = [asyncio.create_task(fn()) for fn in (debit, check, credit)]
            await asyncio.gather(*tasks)
    aborted.set()
    outcomes = await bounded(asyncio.gather(*tasks, return_exceptions=True))
    for outcome in (outcomes[0], outcomes[2]):
        assert isinstance(outcome, aiolmdb.TransactionError), outcome
        assert "ended" in str(outcome)
        assert repr(name) in str(outcome)  # names the transaction: its opener
    assert await accounts.get_multi(["alice", "bob", "log"]) == {
        "alice": 100,
        "bob": 0,
        "log": None,
    }


async def test_a_task_of_an_ended_transaction_cannot_open_one_of_its_own(
    env: Env, db: BytesDB
) -> None:
    # A savepoint it meant to open would otherwise commit on its own.
    ended = asyncio.Event()

    async def late() -> None:
        await ended.wait()
        async with env.transaction():
            await db.put(b"late", b"v")

    with pytest.raises(KeyError):
        async with env.transaction():
            task = asyncio.create_task(late())
            raise KeyError("abort")
    ended.set()
    with pytest.raises(aiolmdb.TransactionError, match="ended"):
        await bounded(task)
    assert await db.get(b"late") is None


async def test_a_task_of_an_ended_read_snapshot_does_not_read_outside_it(
    env: Env, db: BytesDB
) -> None:
    ended = asyncio.Event()

    async def late_read() -> bytes | None:
        await ended.wait()
        return await db.get(b"k")

    async with env.transaction(write=False):
        task = asyncio.create_task(late_read())
    ended.set()
    with pytest.raises(aiolmdb.TransactionError, match=r"read snapshot.*ended"):
        await bounded(task)


async def test_a_task_started_inside_a_savepoint_does_not_escape_the_outer_abort(
    env: Env, db: BytesDB
) -> None:
    ended = asyncio.Event()

    async def inner_work() -> None:
        await db.put(b"in-savepoint", b"v")
        await ended.wait()
        await db.put(b"after-abort", b"v")

    with pytest.raises(LookupError):
        async with env.transaction():
            async with env.transaction():
                task = asyncio.create_task(inner_work())
                await asyncio.sleep(0.01)
            raise LookupError("abort the whole transaction")
    ended.set()
    with pytest.raises(aiolmdb.TransactionError, match="ended"):
        await bounded(task)
    assert await db.count() == 0


async def test_a_task_of_an_ended_savepoint_awaited_by_the_outer_transaction(
    env: Env, db: BytesDB
) -> None:
    go = asyncio.Event()

    async def inner_work() -> None:
        await go.wait()
        await db.put(b"late", b"v")

    try:
        async with env.transaction():
            await db.put(b"outer", b"v")
            async with env.transaction():
                task = asyncio.create_task(inner_work())
            go.set()
            with pytest.raises(aiolmdb.TransactionError, match=r"savepoint.*ended"):
                await bounded(task, timeout=3)  # raises, never deadlocks
            await db.put(b"outer2", b"v")
    finally:
        await abort_orphans(env)  # a failing run must not hang the close
    assert [key async for key in db.keys()] == [b"outer", b"outer2"]


async def test_a_task_in_a_fresh_context_outlives_the_block(env: Env, db: BytesDB) -> None:
    ended = asyncio.Event()

    async def background() -> None:
        await ended.wait()
        await db.put(b"background", b"v")

    with pytest.raises(KeyError):
        async with env.transaction():
            task = detached(background())
            raise KeyError("abort")
    ended.set()
    await bounded(task)
    assert await db.get(b"background") == b"v"


# -- a full map that cannot grow ----------------------------------------------


@pytest.mark.needs("map_size")
async def test_a_transaction_at_max_map_size_is_not_told_to_retry(open_env: EnvFactory) -> None:
    env = open_env(map_size=1 << 20, max_map_size=1 << 20)
    db = env.open_db("m")
    with pytest.raises(lmdb.MapFullError) as info:
        async with env.transaction():
            await db.put_multi([(b"%05d" % i, b"x" * 1000) for i in range(3000)])
    message = str(info.value)
    assert "max_map_size" in message
    assert "retried" not in message
    assert env.info()["map_size"] == 1 << 20


@pytest.mark.needs("map_size")
async def test_a_transaction_that_fills_a_growable_map_can_be_retried(
    open_env: EnvFactory,
) -> None:
    env = open_env(map_size=1 << 20, max_map_size=64 << 20)
    db = env.open_db("m")
    records = [(b"%05d" % i, b"x" * 1000) for i in range(3000)]
    failures = 0
    while failures < 6:  # as the message says: the map grows behind each failure
        try:
            async with env.transaction():
                assert await db.put_multi(records) == len(records)
            break
        except lmdb.MapFullError as exc:
            assert "can be retried" in str(exc)
            failures += 1
    assert 0 < failures < 6
    assert await db.count() == len(records)


# -- a write made outside the transaction, awaited inside it ------------------


@pytest.mark.needs("serial_writes")
async def test_awaiting_an_outside_write_from_inside_a_transaction_raises(
    env: Env, db: BytesDB
) -> None:
    try:
        with pytest.raises(aiolmdb.TransactionError) as info:
            async with env.transaction():
                name = owner_name()
                await db.put(b"inside", b"v")
                await bounded(detached(db.put(b"outside", b"v")), timeout=3)
        assert repr(name) in str(info.value)  # names the transaction
    finally:
        await abort_orphans(env)
    assert await db.get(b"inside") is None
    assert await db.get(b"outside") is None  # refused, so never applied later
    assert await bounded(db.put(b"after", b"v"))  # every writer goes on


@pytest.mark.parametrize("how", ["await", "gather", "wait", "shield", "task group"])
@pytest.mark.needs("serial_writes")
async def test_an_outside_write_awaited_through_wrappers_is_refused(
    env: Env, db: BytesDB, how: str
) -> None:
    started = asyncio.Event()

    async def outside() -> bool:
        started.set()
        return await db.put(b"outside", b"v")

    try:
        async with env.transaction():
            task = detached(outside())
            await started.wait()
            with contextlib.suppress(aiolmdb.TransactionError):
                if how == "await":
                    await bounded(task, timeout=3)
                elif how == "gather":
                    await bounded(asyncio.gather(task, db.put(b"inside", b"v")), timeout=3)
                elif how == "wait":
                    await bounded(asyncio.wait([task]), timeout=3)
                elif how == "shield":
                    await bounded(asyncio.shield(task), timeout=3)
                elif sys.version_info < (3, 11):
                    pytest.skip("asyncio.TaskGroup needs Python 3.11")
                else:

                    async def in_group() -> None:
                        async with asyncio.TaskGroup() as group:
                            group.create_task(db.put(b"inside", b"v"))
                            group.create_task(asyncio.wait([task]))

                    await bounded(in_group(), timeout=3)
            with pytest.raises(aiolmdb.TransactionError, match="transaction"):
                task.result()
    finally:
        await abort_orphans(env)
    assert await db.get(b"outside") is None
    assert await bounded(db.put(b"after", b"v"))


@pytest.mark.needs("serial_writes")
async def test_awaiting_another_transaction_from_inside_a_transaction_raises(
    env: Env, db: BytesDB
) -> None:
    async def other() -> None:
        async with env.transaction():
            await db.put(b"other", b"v")

    try:
        async with env.transaction():
            name = owner_name()
            await db.put(b"inside", b"v")
            with pytest.raises(aiolmdb.TransactionError, match="another write transaction") as info:
                await bounded(detached(other()), timeout=3)
            assert repr(name) in str(info.value)
            await db.put(b"inside2", b"v")  # the transaction goes on
    finally:
        await abort_orphans(env)
    assert [key async for key in db.keys()] == [b"inside", b"inside2"]
    async with env.transaction():  # the writer serves transactions again
        await db.put(b"after", b"v")
    assert await db.get(b"other") is None


@pytest.mark.needs("serial_writes")
async def test_an_awaited_outside_write_is_found_among_many_queued(env: Env, db: BytesDB) -> None:
    try:
        async with env.transaction():
            await db.put(b"inside", b"v")
            others = [detached(db.put(b"q%04d" % i, b"v")) for i in range(1000)]
            awaited = detached(db.put(b"awaited", b"v"))
            more = [detached(db.put(b"r%04d" % i, b"v")) for i in range(1000)]
            with pytest.raises(aiolmdb.TransactionError, match="awaits a write made outside it"):
                await bounded(awaited, timeout=5)
            await db.put(b"inside2", b"v")
    finally:
        await abort_orphans(env)
    assert all(await bounded(asyncio.gather(*others, *more)))  # the others commit after it
    assert await db.count() == 2002
    assert await db.get(b"awaited") is None


@pytest.mark.needs("serial_writes")
async def test_outside_writes_not_awaited_by_the_transaction_wait_for_it(
    env: Env, db: BytesDB
) -> None:
    async with env.transaction():
        await db.put(b"inside", b"v")
        others = [detached(db.put(b"auto%d" % i, b"v")) for i in range(5)]
        await asyncio.sleep(0.2)  # idle: the writer looks for a deadlock and finds none
        assert not any(task.done() for task in others)
    assert await bounded(asyncio.gather(*others)) == [True] * 5
    assert await db.count() == 6
