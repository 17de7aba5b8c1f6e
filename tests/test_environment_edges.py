"""The environment at its edges: use after close, a cancelled close, fork, opening databases."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    TIMEOUT,
    BusyWriter,
    EnvFactory,
    Ticker,
    WriterGate,
    bounded,
    detached,
    raw_records,
)
from helpers.forking import in_forked_child

import aiolmdb
from aiolmdb.coders import StringCoder

# -- helpers ------------------------------------------------------------------


def step(name: str, call: Callable[[], Awaitable[object]]) -> str:
    """Run ``call()`` in the child without an event loop: ``name:ok``, ``name:<error type>``,
    or ``name:suspended`` when it waited for something (nothing can wake it in the child).
    """
    coro: Any = None
    try:
        coro = call()
        coro.send(None)
    except StopIteration:
        return f"{name}:ok"
    except BaseException as exc:
        return f"{name}:{type(exc).__name__}"
    coro.close()
    return f"{name}:suspended"


def own_readers(env: aiolmdb.AsyncEnvironment) -> list[str]:
    """Reader-table lines of this process's read transactions still open."""
    lines = env.readers().strip().splitlines()[1:]
    return [
        line for line in lines if line.split()[0] == str(os.getpid()) and line.split()[-1] != "-"
    ]


def path_key(path: Path) -> str:
    """How the environment at ``path`` names itself in errors."""
    return repr(os.path.realpath(path))


# -- 24: every call after close raises ClosedError -----------------------------


async def test_committing_a_write_transaction_after_close_raises_closed_error(
    tmp_path: Path,
) -> None:
    path = tmp_path / "e"
    env = aiolmdb.open(path)
    db = env.open_db("records")
    outer = env.transaction()
    await outer.__aenter__()
    await db.put(b"lost", b"1")
    inner = env.transaction()
    await inner.__aenter__()
    await db.put(b"lost-too", b"2")
    await bounded(env.close())
    with pytest.raises(aiolmdb.ClosedError, match="closed") as raised:
        await inner.commit()
    assert path_key(path) in str(raised.value)
    with pytest.raises(aiolmdb.ClosedError, match="closed"):
        await inner.__aexit__(None, None, None)
    with pytest.raises(aiolmdb.ClosedError, match="closed"):
        await outer.commit()
    with pytest.raises(aiolmdb.ClosedError, match="closed"):
        await outer.__aexit__(None, None, None)
    await outer.abort()  # ending it is harmless
    assert raw_records(path, "records") == {}


async def test_leaving_a_write_block_after_close_raises_closed_error(tmp_path: Path) -> None:
    env = aiolmdb.open(tmp_path / "e")
    db = env.open_db("records")
    with pytest.raises(aiolmdb.ClosedError, match="closed"):
        async with env.transaction():
            await db.put(b"k", b"v")
            await bounded(env.close())


@pytest.mark.parametrize("write", [True, False], ids=["write", "read"])
async def test_a_scan_in_a_transaction_begun_before_close_raises_closed_error(
    tmp_path: Path, write: bool
) -> None:
    env = aiolmdb.open(tmp_path / "e")
    db = env.open_db("records")
    await db.put_multi([(b"%05d" % i, b"v") for i in range(3000)])
    with pytest.raises(aiolmdb.ClosedError, match="closed"):
        async with env.transaction(write=write):
            seen = []
            async for key in db.keys():
                seen.append(key)
                if len(seen) == 1:
                    await bounded(env.close())
    assert len(seen) < 3000


async def test_put_multi_in_a_transaction_closed_while_encoding_raises_closed_error(
    tmp_path: Path,
) -> None:
    path = tmp_path / "e"
    env = aiolmdb.open(path)
    db = env.open_db("records")
    many = [(b"%05d" % i, b"v") for i in range(3000)]
    with pytest.raises(aiolmdb.ClosedError, match="closed"):
        async with env.transaction():
            writing = asyncio.ensure_future(db.put_multi(many))
            await asyncio.sleep(0)  # put_multi is encoding its records, in slices
            closing = asyncio.ensure_future(env.close())
            try:
                await bounded(writing)
            finally:
                await bounded(closing)
    assert raw_records(path, "records") == {}


async def test_a_scan_of_large_values_resumed_after_close_raises_closed_error(
    open_env: EnvFactory,
) -> None:
    env = open_env(inline_value_limit=16)
    db = env.open_db("records")
    await db.put_multi([(b"%05d" % i, b"v" * 100) for i in range(100)])
    iterator = db.values().__aiter__()
    assert await iterator.__anext__() == b"v" * 100
    await bounded(env.close())
    with pytest.raises(aiolmdb.ClosedError, match="closed"):
        for _ in range(100):
            await bounded(iterator.__anext__())


# -- 18: a cancelled close can be completed ----------------------------------


def _writer_threads(path: Path) -> list[threading.Thread]:
    key = repr(os.path.realpath(path))
    return [t for t in threading.enumerate() if t.name == f"aiolmdb-writer {key}" and t.is_alive()]


async def _cancelled_close(path: Path) -> tuple[aiolmdb.AsyncEnvironment, WriterGate]:
    """An environment whose close() was cancelled while the writer was busy."""
    env = aiolmdb.open(path)
    db = env.open_db("records")
    await db.put(b"k", b"v")
    gate = WriterGate(db)
    await gate.hold()
    closing = asyncio.ensure_future(env.close())
    await asyncio.sleep(0.05)  # close() waits for the writer thread to end
    assert not closing.done()
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    return env, gate


async def test_close_after_a_cancelled_close_releases_everything(tmp_path: Path) -> None:
    path = tmp_path / "e"
    env, gate = await _cancelled_close(path)
    await gate.release()
    await bounded(env.close())
    assert env.closed
    assert _writer_threads(path) == []
    # The path is free again: the handle and its registration were released.
    async with aiolmdb.open(path) as again:
        assert await again.open_db("records").get(b"k") == b"v"


async def test_a_cancelled_close_goes_on_finishing_in_the_background(tmp_path: Path) -> None:
    path = tmp_path / "e"
    env, gate = await _cancelled_close(path)
    await gate.release()
    deadline = time.monotonic() + TIMEOUT
    while True:  # nobody awaits the close any more: it finishes on its own
        try:
            again = aiolmdb.open(path)
            break
        except aiolmdb.AiolmdbError:
            assert time.monotonic() < deadline, "the cancelled close never finished"
            await asyncio.sleep(0.01)
    try:
        assert await again.open_db("records").get(b"k") == b"v"
    finally:
        await bounded(again.close())
    await bounded(env.close())  # and closing again is harmless


def test_close_finishes_a_close_whose_event_loop_ended(tmp_path: Path) -> None:
    path = tmp_path / "e"
    release = threading.Event()

    async def cancel_a_close() -> aiolmdb.AsyncEnvironment:
        env = aiolmdb.open(path)
        db = env.open_db("records")
        await db.put(b"k", b"v")
        started = threading.Event()

        def block(_: aiolmdb.DatabaseTxn[bytes, bytes]) -> bool:
            started.set()
            return release.wait(TIMEOUT)

        blocking = asyncio.ensure_future(db.run(block, write=True))
        assert await bounded(asyncio.to_thread(started.wait, TIMEOUT))
        closing = asyncio.ensure_future(env.close())
        await asyncio.sleep(0.05)
        assert not blocking.done() and not closing.done()
        closing.cancel()
        # The loop ends, cancelling the close's work too (asyncio.run then
        # waits for the thread joining the writer: let the writer finish soon).
        threading.Timer(0.1, release.set).start()
        return env

    env = asyncio.run(cancel_a_close())
    assert env.closed
    asyncio.run(bounded(env.close()))
    assert env.closed
    assert _writer_threads(path) == []

    async def reopen() -> bytes | None:
        async with aiolmdb.open(path) as again:
            return await again.open_db("records").get(b"k")

    assert asyncio.run(reopen()) == b"v"


# -- 5: a forked child leaves the parent's transactions alone -----------------


def _leave(snapshot: aiolmdb.Transaction, action: str) -> Awaitable[object]:
    if action == "abort":
        return snapshot.abort()
    if action == "exit":
        return snapshot.__aexit__(None, None, None)
    return snapshot.__aexit__(ValueError, ValueError("child"), None)


@pytest.mark.lmdb_only
@pytest.mark.parametrize("action", ["abort", "exit", "exit_with_error"])
async def test_a_forked_child_leaves_the_parents_read_snapshot_alone(
    open_env: EnvFactory, action: str
) -> None:
    env = open_env()
    db = env.open_db("data")
    await db.put_multi([(b"k%03d" % i, b"before") for i in range(200)])
    snapshot = env.transaction(write=False)
    await snapshot.__aenter__()
    try:
        assert await db.get(b"k000") == b"before"
        held = own_readers(env)
        assert len(held) == 1

        def child() -> list[str]:
            return [
                step("get", lambda: db.get(b"k000")),
                step("scan", lambda: db.items().__anext__()),
                step("leave", lambda: _leave(snapshot, action)),
                step("abort", lambda: snapshot.abort()),
            ]

        report = await in_forked_child(child)
        assert report == ["get:ClosedError", "scan:ClosedError", "leave:ok", "abort:ok"]
        # The parent's reader slot is untouched: LMDB keeps the snapshot's pages.
        assert own_readers(env) == held
        for i in range(50):  # commits that would reuse the snapshot's pages were it gone
            # From a task of its own: this one's calls join the snapshot.
            await detached(db.put_multi([(b"k%03d" % j, b"after%d" % i) for j in range(200)]))
        assert own_readers(env) == held
        assert await db.get(b"k000") == b"before"
        assert [value async for _, value in db.items()] == [b"before"] * 200
    finally:
        await snapshot.__aexit__(None, None, None)
    assert own_readers(env) == []
    assert await db.get(b"k000") == b"after49"


@pytest.mark.lmdb_only
async def test_a_forked_child_leaves_the_parents_write_transaction_alone(
    open_env: EnvFactory,
) -> None:
    env = open_env()
    db = env.open_db("data")
    txn = env.transaction()
    await txn.__aenter__()
    try:
        await db.put(b"k", b"parent")
        savepoint = env.transaction()
        await savepoint.__aenter__()
        await db.put(b"s", b"parent")

        def child() -> list[str]:
            return [
                step("put", lambda: db.put(b"k", b"child")),
                step("savepoint_commit", lambda: savepoint.commit()),
                step("savepoint_exit", lambda: savepoint.__aexit__(ValueError, ValueError(), None)),
                step("commit", lambda: txn.commit()),
                step("exit", lambda: txn.__aexit__(None, None, None)),
                step("abort", lambda: txn.abort()),
            ]

        assert await in_forked_child(child) == [
            "put:ClosedError",
            "savepoint_commit:ClosedError",
            "savepoint_exit:ok",
            "commit:ClosedError",
            "exit:ClosedError",
            "abort:ok",
        ]
        await savepoint.__aexit__(None, None, None)
        await db.put(b"k2", b"parent")  # the parent's transaction goes on
    finally:
        await txn.__aexit__(None, None, None)
    assert await db.get_multi([b"k", b"s", b"k2"]) == {
        b"k": b"parent",
        b"s": b"parent",
        b"k2": b"parent",
    }


# -- 15: what a forked child may open -----------------------------------------


@pytest.mark.lmdb_only
async def test_a_forked_child_is_told_it_cannot_reopen_an_inherited_environment(
    open_env: EnvFactory, tmp_path: Path
) -> None:
    path = tmp_path / "shared"
    env = open_env(path)
    await env.open_db("data").put(b"k", b"v")

    async def child() -> list[str]:
        words: list[str] = []
        try:
            env.info()
        except aiolmdb.ClosedError as exc:
            words.append("info:ClosedError")
            message = str(exc)
            assert "open it again in the child" not in message, message
            assert "spawn" in message, message
        try:
            aiolmdb.open(path)
            words.append("open:ok")
        except aiolmdb.AiolmdbError as exc:
            words.append(f"open:{type(exc).__name__}")
            message = str(exc)
            assert path_key(path) in message, message
            assert "fork" in message and "spawn" in message, message
        except Exception as exc:
            words.append(f"open:{type(exc).__module__}.{type(exc).__name__}")
        other = aiolmdb.open(tmp_path / "other")  # any other environment opens
        await other.open_db("x").put(b"k", b"child")
        words.append(f"other:{(await other.open_db('x').get(b'k') or b'').decode()}")
        await other.close()
        return words

    assert await in_forked_child(child) == ["info:ClosedError", "open:AiolmdbError", "other:child"]
    assert await env.open_db("data").get(b"k") == b"v"


async def test_an_environment_closed_before_fork_opens_in_the_child(tmp_path: Path) -> None:
    path = tmp_path / "e"
    async with aiolmdb.open(path) as env:
        await env.open_db("data").put(b"k", b"parent")

    async def child() -> list[str]:
        async with aiolmdb.open(path) as again:
            db = again.open_db("data")
            await db.put(b"c", b"child")
            return [(await db.get(b"k") or b"").decode()]

    assert await in_forked_child(child) == ["parent"]
    assert raw_records(path, "data") == {b"k": b"parent", b"c": b"child"}


# -- 17: opening a database never blocks the event loop on the writer --------


async def test_open_db_async_keeps_the_loop_running_while_the_writer_is_busy(
    tmp_path: Path,
) -> None:
    path = tmp_path / "e"
    async with aiolmdb.open(path) as env:
        await env.open_db("existing").put(b"k", b"v")
        await env.open_db("flagged", integerkey=True).put((7).to_bytes(8, "little"), b"7")
    async with aiolmdb.open(path) as env:
        busy = env.open_db("busy")
        job = BusyWriter(busy)
        await job.started()
        ticker = Ticker()
        try:
            opening = asyncio.ensure_future(
                asyncio.gather(
                    env.open_db_async("existing", create=False),
                    env.open_db_async("flagged", integerkey=True),
                    env.open_db_async("created", value_coder=StringCoder()),
                )
            )
            await asyncio.sleep(0.05)
            # The opens wait for the writer, the loop does not.
            assert not opening.done()
            assert ticker.ticks > 10
            await job.release()
            existing, flagged, created = await bounded(opening)
        finally:
            ticker.stop()
            await job.release()
        assert await existing.get(b"k") == b"v"
        assert await flagged.get((7).to_bytes(8, "little")) == b"7"
        assert await created.put(b"k", "text")
        assert await created.get(b"k") == "text"
        # Once open, opening it again needs no writer at all.
        assert await env.open_db("existing", create=False).get(b"k") == b"v"
        with pytest.raises(aiolmdb.DatabaseNotFoundError, match="'missing'"):
            await bounded(env.open_db_async("missing", create=False))
    assert raw_records(path, "created") == {b"k": b"text"}


async def test_open_db_async_in_a_transaction(tmp_path: Path) -> None:
    path = tmp_path / "e"
    async with aiolmdb.open(path) as env:
        db = env.open_db("records")
        async with env.transaction():
            await db.put(b"a", b"1")
            # The writer serves this very transaction: waiting for it would deadlock.
            with pytest.raises(aiolmdb.TransactionError, match="'late'"):
                await bounded(env.open_db_async("late"), timeout=3)
            assert (await bounded(env.open_db_async("records"))).name == "records"
            await db.put(b"b", b"2")
        inside = asyncio.Event()
        done = asyncio.Event()

        async def hold() -> None:
            async with env.transaction():
                await db.put(b"c", b"3")
                inside.set()
                await done.wait()

        holder = asyncio.ensure_future(hold())
        await bounded(inside.wait())
        # Another task's transaction: the open waits for it to end.
        opening = asyncio.ensure_future(env.open_db_async("other"))
        await asyncio.sleep(0.05)
        assert not opening.done()
        done.set()
        other = await bounded(opening)
        await bounded(holder)
        assert await other.put(b"k", b"v")
    assert raw_records(path, "records") == {b"a": b"1", b"b": b"2", b"c": b"3"}
    assert raw_records(path, "other") == {b"k": b"v"}
