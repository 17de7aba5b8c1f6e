"""env.transaction(): commit, abort, isolation, savepoints, snapshots, cancellation."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import lmdb
import pytest
from conftest import (
    EnvFactory,
    WriterGate,
    abort_orphans,
    bounded,
    detached,
    lmdb_engine,
    open_sessions,
)

import aiolmdb
from aiolmdb.coders import JSONCoder, StringCoder

Env = aiolmdb.AsyncEnvironment
BytesDB = aiolmdb.AsyncDatabase[bytes, bytes]
JsonDB = aiolmdb.AsyncDatabase[str, Any]


@pytest.fixture
def left(env: Env) -> BytesDB:
    return env.open_db("left")


@pytest.fixture
def right(env: Env) -> JsonDB:
    return env.open_db("right", key_coder=StringCoder(), value_coder=JSONCoder())


# -- commit and abort ---------------------------------------------------------


async def test_commit_on_clean_exit_across_two_databases(
    env: Env, left: BytesDB, right: JsonDB
) -> None:
    async with env.transaction() as txn:
        assert isinstance(txn, aiolmdb.Transaction)
        assert txn.active
        await left.put(b"k", b"v")
        await right.put("k", {"v": 1})
        await right.put_multi({"a": 1, "b": 2})
        await left.delete(b"missing")
    assert not txn.active
    assert await left.get(b"k") == b"v"
    assert await right.get_multi(["k", "a", "b"]) == {"k": {"v": 1}, "a": 1, "b": 2}


async def test_abort_on_exception(env: Env, left: BytesDB, right: JsonDB) -> None:
    await left.put(b"old", b"1")
    with pytest.raises(ZeroDivisionError):
        async with env.transaction():
            await left.put(b"k", b"v")
            await left.delete(b"old")
            await right.put("k", 1)
            _ = 1 / 0
    assert await left.get(b"k") is None
    assert await left.get(b"old") == b"1"
    assert await right.get("k") is None
    assert await right.count() == 0
    # The environment keeps working.
    assert await left.put(b"after", b"v")


async def test_reads_inside_see_own_writes(env: Env, left: BytesDB, right: JsonDB) -> None:
    await left.put(b"x", b"0")
    async with env.transaction():
        await left.put(b"k", b"v")
        await right.put("j", [1])
        await left.delete(b"x")
        assert await left.get(b"k") == b"v"
        assert await left.get(b"x") is None
        assert await left.contains(b"k")
        assert await left.count() == 1
        assert await right.get_multi(["j", "z"]) == {"j": [1], "z": None}
        assert [k async for k in left.keys()] == [b"k"]
        assert await left.run(lambda t: t.get(b"k")) == b"v"
        assert await right.pop("j") == [1]
        assert await right.get("j") is None


async def test_other_tasks_see_writes_only_after_commit(env: Env, left: BytesDB) -> None:
    await left.put(b"k", b"old")
    written = asyncio.Event()
    checked = asyncio.Event()

    async def writer() -> None:
        async with env.transaction():
            await left.put(b"k", b"new")
            await left.put(b"k2", b"v")
            written.set()
            await checked.wait()

    task = asyncio.create_task(writer())
    await bounded(written.wait())
    assert await left.get(b"k") == b"old"
    assert await left.get(b"k2") is None
    assert [k async for k in left.keys()] == [b"k"]
    checked.set()
    await bounded(task)
    assert await left.get(b"k") == b"new"
    assert await left.get(b"k2") == b"v"


async def test_explicit_commit_inside_the_block(env: Env, left: BytesDB) -> None:
    async with env.transaction() as txn:
        await left.put(b"k", b"v")
        await txn.commit()
        assert not txn.active
        with pytest.raises(aiolmdb.TransactionError):
            await left.put(b"k2", b"v")  # the block's transaction has ended
    assert await left.get(b"k") == b"v"
    assert await left.get(b"k2") is None


async def test_explicit_abort_inside_the_block(env: Env, left: BytesDB) -> None:
    async with env.transaction() as txn:
        await left.put(b"k", b"v")
        await txn.abort()
        assert not txn.active
        await txn.abort()  # aborting twice is harmless
    assert await left.get(b"k") is None
    assert await left.put(b"after", b"v")


async def test_using_a_transaction_after_it_ended(env: Env, left: BytesDB) -> None:
    async with env.transaction() as txn:
        await left.put(b"k", b"v")
    with pytest.raises(aiolmdb.TransactionError):
        await left.put(b"k2", b"v", txn=txn)
    with pytest.raises(aiolmdb.TransactionError):
        await left.get(b"k", txn=txn)
    with pytest.raises(aiolmdb.TransactionError):
        await txn.commit()
    with pytest.raises(aiolmdb.TransactionError):
        async with txn:
            pass
    assert await left.get(b"k2") is None
    assert await left.get(b"k") == b"v"


async def test_a_transaction_not_entered_cannot_be_used(env: Env, left: BytesDB) -> None:
    txn = env.transaction()
    assert not txn.active
    with pytest.raises(aiolmdb.TransactionError):
        await left.put(b"k", b"v", txn=txn)
    with pytest.raises(aiolmdb.TransactionError):
        await txn.commit()
    assert await left.get(b"k") is None


async def test_transaction_of_another_environment_is_refused(
    env: Env, left: BytesDB, open_env: EnvFactory
) -> None:
    other = open_env()
    async with other.transaction() as txn:
        with pytest.raises(aiolmdb.TransactionError):
            await left.put(b"k", b"v", txn=txn)
        with pytest.raises(aiolmdb.TransactionError):
            await left.get(b"k", txn=txn)
    assert await left.get(b"k") is None


# -- other tasks --------------------------------------------------------------


async def test_txn_passed_to_other_tasks(env: Env, left: BytesDB, right: JsonDB) -> None:
    go = asyncio.Event()
    holder: list[aiolmdb.Transaction] = []

    async def helper() -> None:  # started outside the block: joins only through txn=
        await go.wait()
        await right.put("from-helper", 1, txn=holder[0])
        assert await left.get(b"k", txn=holder[0]) == b"v"

    helper_task = asyncio.create_task(helper())
    async with env.transaction() as txn:
        holder.append(txn)
        await left.put(b"k", b"v")
        go.set()
        await bounded(helper_task)
        inner = asyncio.create_task(left.put(b"from-task", b"1", txn=txn))
        assert await bounded(inner) is True
        assert await right.get("from-helper", txn=txn) == 1
        assert await env.open_db("right", key_coder=StringCoder()).get("x") is None
        # Not visible outside before the commit.
        outside = detached(left.get(b"from-task"))
        assert await bounded(outside) is None
    assert await left.get(b"from-task") == b"1"
    assert await right.get("from-helper") == 1


async def test_txn_from_another_task_is_aborted_with_the_block(env: Env, left: BytesDB) -> None:
    with pytest.raises(KeyError):
        async with env.transaction() as txn:
            await bounded(detached(left.put(b"k", b"v", txn=txn)))
            raise KeyError("abort")
    assert await left.get(b"k") is None


async def test_concurrent_calls_inside_the_block(env: Env, left: BytesDB) -> None:
    async with env.transaction():
        results = await bounded(asyncio.gather(*(left.put(b"%03d" % i, b"v") for i in range(50))))
        assert results == [True] * 50
        assert await left.count() == 50
    assert await left.count() == 50


@pytest.mark.needs("serial_writes")
async def test_auto_commit_writes_of_other_tasks_wait_for_the_transaction(
    env: Env, left: BytesDB
) -> None:
    inside = asyncio.Event()
    finish = asyncio.Event()

    async def hold() -> None:
        async with env.transaction():
            await left.put(b"txn", b"1")
            inside.set()
            await finish.wait()
            await left.put(b"txn2", b"2")

    holder = asyncio.create_task(hold())
    await bounded(inside.wait())
    others = [detached(left.put(b"auto%d" % i, b"v")) for i in range(10)]
    for _ in range(10):
        await asyncio.sleep(0)
    assert not any(task.done() for task in others)  # queued behind the transaction
    assert await left.get(b"auto0") is None
    assert await left.get(b"txn") is None
    finish.set()
    await bounded(holder)
    assert await bounded(asyncio.gather(*others)) == [True] * 10
    assert await left.count() == 12


@pytest.mark.needs("serial_writes")
async def test_concurrent_transactions_are_serialised(env: Env, right: JsonDB) -> None:
    await right.put("counter", 0)

    async def increment() -> None:
        async with env.transaction():
            value = await right.get("counter", 0)
            await asyncio.sleep(0)  # let the other tasks try to interleave
            await right.put("counter", value + 1)

    await bounded(asyncio.gather(*(increment() for _ in range(30))))
    assert await right.get("counter") == 30


# -- savepoints ---------------------------------------------------------------


async def test_nested_block_is_a_savepoint(env: Env, left: BytesDB, right: JsonDB) -> None:
    async with env.transaction():
        await left.put(b"outer1", b"v")
        with pytest.raises(RuntimeError):
            async with env.transaction() as inner:
                await left.put(b"inner", b"v")
                await right.put("inner", 1)
                await left.delete(b"outer1")
                assert await left.get(b"inner") == b"v"
                raise RuntimeError("roll back the savepoint")
        assert not inner.active
        assert await left.get(b"inner") is None
        assert await left.get(b"outer1") == b"v"
        assert await right.get("inner") is None
        async with env.transaction():
            await left.put(b"inner-ok", b"v")
        assert await left.get(b"inner-ok") == b"v"
        await left.put(b"outer2", b"v")
    assert [k async for k in left.keys()] == [b"inner-ok", b"outer1", b"outer2"]
    assert await right.count() == 0


async def test_outer_abort_discards_committed_savepoints(env: Env, left: BytesDB) -> None:
    with pytest.raises(ValueError):
        async with env.transaction():
            async with env.transaction():
                await left.put(b"inner", b"v")
            raise ValueError
    assert await left.get(b"inner") is None


async def test_deeply_nested_savepoints(env: Env, left: BytesDB) -> None:
    async with env.transaction():
        await left.put(b"0", b"v")
        async with env.transaction():
            await left.put(b"1", b"v")
            with pytest.raises(LookupError):
                async with env.transaction():
                    await left.put(b"2", b"v")
                    async with env.transaction():
                        await left.put(b"3", b"v")
                    raise LookupError
            async with env.transaction() as explicit:
                await left.put(b"4", b"v")
                await explicit.abort()
            async with env.transaction() as committed:
                await left.put(b"5", b"v")
                await committed.commit()
    assert [k async for k in left.keys()] == [b"0", b"1", b"5"]


async def test_outer_transaction_is_refused_while_a_savepoint_is_open(
    env: Env, left: BytesDB
) -> None:
    async with env.transaction() as outer, env.transaction():
        with pytest.raises(aiolmdb.TransactionError):
            await left.put(b"k", b"v", txn=outer)
        with pytest.raises(aiolmdb.TransactionError):
            await outer.commit()
        await left.put(b"inner", b"v")
    assert await left.get(b"inner") == b"v"
    assert await left.get(b"k") is None


@pytest.mark.lmdb_only
async def test_a_savepoint_cancelled_while_entering_leaves_the_outer_intact(
    env: Env, left: BytesDB
) -> None:
    async def savepoint() -> None:
        async with env.transaction():
            await left.put(b"b", b"2")

    async with env.transaction():
        await left.put(b"a", b"1")
        entering = asyncio.create_task(savepoint())  # joins the transaction
        await asyncio.sleep(0)  # it has asked the writer for its savepoint
        entering.cancel()
        with pytest.raises(asyncio.CancelledError):
            await entering
        await left.put(b"c", b"3")
    assert [k async for k in left.keys()] == [b"a", b"c"]
    assert await bounded(left.put(b"d", b"4"))  # the writer is free again


async def test_savepoints_of_tasks_sharing_a_transaction_cannot_overlap(
    env: Env, left: BytesDB
) -> None:
    entered = asyncio.Event()

    async def first() -> None:
        async with env.transaction():
            entered.set()
            await asyncio.sleep(0.05)
            await left.put(b"first", b"v")

    async def second() -> None:
        await entered.wait()
        async with env.transaction():
            await left.put(b"second", b"v")

    with pytest.raises(aiolmdb.TransactionError, match="savepoint"):
        async with env.transaction():
            await asyncio.gather(first(), second())
    # The outer block aborted cleanly and the writer is free again.
    assert [k async for k in left.keys()] == []
    assert await bounded(left.put(b"after", b"v"))
    await bounded(env.close())


async def test_abort_always_ends_the_transaction(env: Env, left: BytesDB) -> None:
    async with env.transaction() as outer:
        await left.put(b"a", b"1")
        inner = env.transaction()
        await inner.__aenter__()
        await left.put(b"b", b"2")
        await outer.abort()  # a savepoint still open inside: aborted with it
        with pytest.raises(aiolmdb.TransactionError, match="ended"):
            await left.put(b"c", b"3", txn=inner)
    assert await left.count() == 0
    assert await bounded(left.put(b"after", b"v"))


async def test_a_commit_refused_at_block_exit_still_ends_the_transaction(
    env: Env, left: BytesDB
) -> None:
    with pytest.raises(aiolmdb.TransactionError, match="savepoint"):
        async with env.transaction():
            await left.put(b"a", b"1")
            await env.transaction().__aenter__()  # never exited
    assert await left.count() == 0
    assert await bounded(left.put(b"after", b"v"))


@pytest.mark.lmdb_only  # the writer thread checks again what the loop side checked
async def test_the_writer_refuses_a_commit_with_a_savepoint_still_open(
    env: Env, left: BytesDB
) -> None:
    # What the loop side refuses first, the writer refuses too: it never
    # commits a savepoint into its parent as if it were the whole transaction.
    async with env.transaction() as txn:
        await left.put(b"a", b"1")
        (session,) = open_sessions(env)
        savepoint = await session.savepoint()
        session.savepoints.clear()  # the loop side's view drifts
        with pytest.raises(aiolmdb.TransactionError, match="not the innermost"):
            await session.release(savepoint + 1)
        with pytest.raises(aiolmdb.TransactionError, match=r"savepoint still open.*aborted"):
            await txn.commit()
    assert await left.count() == 0
    assert await bounded(left.put(b"after", b"v"))


# -- read snapshots -----------------------------------------------------------


async def test_read_snapshot_is_consistent(env: Env, left: BytesDB, right: JsonDB) -> None:
    await left.put_multi([(b"a", b"1"), (b"b", b"2")])
    await right.put("x", 1)
    async with env.transaction(write=False) as snap:
        assert await left.get(b"a") == b"1"

        async def change() -> None:
            await left.put(b"a", b"changed")
            await left.delete(b"b")
            await left.put(b"c", b"3")
            await right.put("x", 2)

        await bounded(detached(change()))
        assert await left.get(b"a") == b"1"
        assert await left.get(b"b") == b"2"
        assert await left.get(b"c") is None
        assert await right.get("x") == 1
        assert await left.count() == 2
        assert [k async for k in left.keys()] == [b"a", b"b"]
        assert await left.get_multi([b"a", b"c"]) == {b"a": b"1", b"c": None}
        assert await left.run(lambda t: t.get(b"a")) == b"1"
        # Calls from elsewhere with txn= see the snapshot too.
        passed = detached(left.get(b"a", txn=snap))
        assert await bounded(passed) == b"1"
        # Outside the snapshot, the change is visible.
        fresh = detached(left.get(b"a"))
        assert await bounded(fresh) == b"changed"
    assert await left.get(b"a") == b"changed"
    assert await right.get("x") == 2


@pytest.mark.lmdb_only
async def test_a_snapshot_ends_even_if_its_owner_is_cancelled_while_exiting(
    env: Env, left: BytesDB
) -> None:
    await left.put(b"k", b"v")
    reading = threading.Event()
    finish = threading.Event()

    def slow_read(txn: aiolmdb.DatabaseTxn[bytes, bytes]) -> bytes | None:
        reading.set()
        finish.wait(5)
        return txn.get(b"k")

    async def owner() -> None:
        async with env.transaction(write=False) as snapshot:
            side.append(asyncio.create_task(left.run(slow_read, txn=snapshot)))
            await asyncio.to_thread(reading.wait, 5)
        # The exit waits for the read in flight.

    side: list[asyncio.Task[bytes | None]] = []
    task = asyncio.create_task(owner())
    await asyncio.to_thread(reading.wait, 5)
    await asyncio.sleep(0.05)  # the owner now waits in its exit
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    finish.set()
    assert await bounded(side[0]) == b"v"
    assert lmdb_engine(env).readers_open == 0  # the LMDB read transaction has ended


@pytest.mark.lmdb_only
async def test_a_snapshot_call_cancelled_twice_keeps_its_transaction_until_done(
    env: Env, left: BytesDB
) -> None:
    await left.put(b"k", b"v")
    started = threading.Event()
    finish = threading.Event()
    seen: list[bytes | None] = []

    def slow_read(txn: aiolmdb.DatabaseTxn[bytes, bytes]) -> None:
        started.set()
        finish.wait(5)
        seen.append(txn.get(b"k"))

    snapshot = env.transaction(write=False)
    await snapshot.__aenter__()
    call = asyncio.create_task(left.run(slow_read, txn=snapshot))
    await asyncio.to_thread(started.wait, 5)
    ending = asyncio.create_task(snapshot.abort())  # waits for the call in flight
    await asyncio.sleep(0.01)
    for _ in range(2):
        call.cancel()
        await asyncio.sleep(0.01)
    assert lmdb_engine(env).readers_open == 1  # still in use by the worker
    finish.set()
    with pytest.raises(asyncio.CancelledError):
        await bounded(call)
    await bounded(ending)
    assert seen == [b"v"]
    assert lmdb_engine(env).readers_open == 0


async def test_writing_inside_a_read_snapshot_raises(env: Env, left: BytesDB) -> None:
    await left.put(b"k", b"v")
    async with env.transaction(write=False):
        for call in (
            lambda: left.put(b"x", b"1"),
            lambda: left.put_multi([(b"x", b"1")]),
            lambda: left.delete(b"k"),
            lambda: left.delete_multi([b"k"]),
            lambda: left.pop(b"k"),
            lambda: left.replace(b"k", b"2"),
            lambda: left.drop(delete=False),
            lambda: left.drop(delete=True),
            lambda: left.run(lambda t: t.put(b"x", b"1"), write=True),
        ):
            with pytest.raises(aiolmdb.TransactionError):
                await bounded(call())
        assert await left.get(b"k") == b"v"  # the snapshot still works
    assert await left.get(b"k") == b"v"
    assert await left.get(b"x") is None


async def test_write_block_inside_a_read_snapshot_raises(env: Env, left: BytesDB) -> None:
    async with env.transaction(write=False):
        with pytest.raises(aiolmdb.TransactionError):
            async with env.transaction():
                await left.put(b"never", b"v")
        assert await left.get(b"never") is None
        async with env.transaction(write=False):  # a read block nests fine
            assert await left.count() == 0
    assert await left.get(b"never") is None
    async with env.transaction():
        await left.put(b"after", b"v")
    assert await left.get(b"after") == b"v"


async def test_read_block_inside_a_write_transaction_joins_it(env: Env, left: BytesDB) -> None:
    async with env.transaction():
        await left.put(b"k", b"v")
        async with env.transaction(write=False):
            assert await left.get(b"k") == b"v"
        await left.put(b"k2", b"v")
    assert await left.count() == 2


# -- cancellation -------------------------------------------------------------


async def test_cancelled_task_aborts_its_transaction(env: Env, left: BytesDB) -> None:
    inside = asyncio.Event()

    async def doomed() -> None:
        async with env.transaction():
            await left.put(b"doomed", b"v")
            inside.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(doomed())
    await bounded(inside.wait())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await bounded(task)
    assert await bounded(left.get(b"doomed")) is None
    assert await bounded(left.put(b"after", b"v"))  # the writer is free again
    async with env.transaction():
        await left.put(b"next", b"v")
    assert await left.get(b"next") == b"v"


@pytest.mark.lmdb_only
async def test_cancelled_during_a_call_inside_a_transaction(env: Env, left: BytesDB) -> None:
    some_written = asyncio.Event()

    async def doomed() -> None:
        async with env.transaction():
            for i in range(1000):
                await left.put(b"%04d" % i, b"v")
                if i == 10:
                    some_written.set()

    task = asyncio.create_task(doomed())
    await bounded(some_written.wait())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await bounded(task)
    assert await left.count() == 0
    assert await bounded(left.put(b"after", b"v"))


async def test_cancelled_while_entering_a_transaction(env: Env, left: BytesDB) -> None:
    gate = WriterGate(left)
    await gate.hold()

    async def enter() -> None:
        async with env.transaction():
            await left.put(b"never", b"v")

    task = asyncio.create_task(enter())
    for _ in range(5):
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await bounded(task)
    await gate.release()
    try:
        assert await bounded(left.put(b"after", b"v"), timeout=3)
        assert await left.get(b"never") is None
    finally:
        await abort_orphans(env)  # unstick the writer so that the env can close


async def test_a_scan_inside_a_write_transaction_sees_its_own_writes(
    env: Env, left: BytesDB
) -> None:
    # Records are read in batches (64, then 1024): each batch sees every write
    # made before it is read, so deleting records of later batches is seen.
    await left.put_multi([(b"%04d" % i, b"v") for i in range(3000)])
    seen = []
    async with env.transaction():
        async for key, _ in left.items():
            seen.append(key)
            if int(key) < 1000:
                await left.delete(b"%04d" % (int(key) + 2000))
    assert seen == [b"%04d" % i for i in range(2000)]
    assert await left.count() == 2000


async def test_open_db_while_another_task_holds_a_write_transaction(
    env: Env, left: BytesDB
) -> None:
    inside = asyncio.Event()
    leave = asyncio.Event()

    async def holder() -> None:
        async with env.transaction():
            await left.put(b"k", b"v")
            inside.set()
            await leave.wait()

    task = detached(holder())
    await bounded(inside.wait())
    with pytest.raises(aiolmdb.TransactionError, match="another task"):
        env.open_db("new")
    assert env.open_db("left") is not None  # opened before: no writer needed
    leave.set()
    await bounded(task)
    assert await env.open_db("new").count() == 0


@pytest.mark.lmdb_only
async def test_a_cancelled_drop_still_forgets_its_handle(env: Env) -> None:
    doomed = env.open_db("doomed")
    await doomed.put(b"k", b"v")
    dropping = asyncio.create_task(doomed.drop(delete=True))
    await asyncio.sleep(0)
    dropping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await dropping
    for _ in range(200):  # the drop goes on without its caller
        if b"doomed" not in [k async for k in env.get_default_database().keys()]:
            break
        await asyncio.sleep(0.01)
    with pytest.raises(aiolmdb.AiolmdbError, match="dropped"):
        await doomed.get(b"k")
    for _ in range(200):  # then it forgets the handle, on the event loop
        if all(not opened.dropped for opened in lmdb_engine(env).keyspaces):
            break
        await asyncio.sleep(0.01)
    assert all(not opened.dropped for opened in lmdb_engine(env).keyspaces)
    again = env.open_db("doomed")
    assert await again.get(b"k") is None
    assert await again.put(b"k2", b"v")


# -- multi-record calls and errors inside -------------------------------------


async def test_put_multi_inside_a_transaction_is_atomic(env: Env, right: JsonDB) -> None:
    async with env.transaction():
        await right.put("first", 1)
        with pytest.raises(aiolmdb.EncodeError):
            await right.put_multi([("a", 1), ("b", object()), ("c", 3)])
        assert await right.get("a") is None
        many: list[tuple[str, Any]] = [(f"m{i}", i) for i in range(100)] + [("bad", {1})]
        with pytest.raises(aiolmdb.EncodeError):
            await right.put_multi(many)
        assert await right.count() == 1
        assert await right.put_multi({"x": 1, "y": 2}) == 2
    assert [k async for k in right.keys()] == ["first", "x", "y"]


@pytest.mark.needs("map_size")
async def test_put_multi_failing_inside_lmdb_within_a_transaction(
    open_env: EnvFactory,
) -> None:
    # A full map dooms the LMDB transaction: the block aborts, nothing of it lands.
    env = open_env(map_size=1 << 20, max_map_size=1 << 20)
    db = env.open_db("m")
    with pytest.raises(lmdb.MapFullError, match=r"at max_map_size .* cannot grow"):
        async with env.transaction():
            await db.put(b"a", b"1")
            await db.put_multi([(b"%05d" % i, b"x" * 1000) for i in range(3000)])
    assert await db.get_multi([b"a", b"00001"]) == {b"a": None, b"00001": None}
    async with env.transaction():  # the environment goes on
        await db.put(b"b", b"2")
    assert await db.get(b"b") == b"2"


async def test_errors_inside_do_not_end_the_transaction(env: Env, right: JsonDB) -> None:
    async with env.transaction():
        await right.put("a", 1)
        with pytest.raises(aiolmdb.EncodeError):
            await right.put("b", {1, 2})
        with pytest.raises(ZeroDivisionError):
            await right.run(lambda t: 1 / 0, write=True)
        await right.put("c", 3)
    assert [k async for k in right.keys()] == ["a", "c"]


async def test_run_write_and_drop_inside_a_transaction(env: Env, left: BytesDB) -> None:
    await left.put_multi([(b"a", b"1"), (b"b", b"2")])
    with pytest.raises(RuntimeError):
        async with env.transaction():
            await left.run(lambda t: t.put(b"c", b"3"), write=True)
            assert await left.get(b"c") == b"3"
            await left.drop(delete=False)
            assert await left.count() == 0
            with pytest.raises(aiolmdb.TransactionError):
                await left.drop(delete=True)
            raise RuntimeError("abort")
    assert [k async for k in left.keys()] == [b"a", b"b"]
    async with env.transaction():
        await left.run(lambda t: t.delete(b"a"), write=True)
    assert [k async for k in left.keys()] == [b"b"]


async def test_large_values_inside_transactions(open_env: EnvFactory) -> None:
    env = open_env(inline_value_limit=100)
    db = env.open_db("big")
    big = b"x" * 100_000
    async with env.transaction():
        await db.put(b"big", big)
        assert await db.get(b"big") == big
    async with env.transaction(write=False):
        assert await db.get(b"big") == big
        assert await db.get_multi([b"big"]) == {b"big": big}
