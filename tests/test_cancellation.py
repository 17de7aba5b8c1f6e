"""Cancellation and shutdown: cancelled writes and transactions, close with work
in flight, environments never closed, and use after ``fork()``."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import EnvFactory, WriterGate, abort_orphans, bounded, raw_records
from helpers.forking import in_forked_child

import aiolmdb
from aiolmdb.coders import StringCoder

HELPERS = Path(__file__).parent / "helpers"


def writer_threads(env_path: Path) -> list[threading.Thread]:
    """Live writer threads of the environment at ``env_path``."""
    key = repr(os.path.realpath(env_path))
    return [
        t
        for t in threading.enumerate()
        if t.name.startswith("aiolmdb-writer") and t.name.endswith(key) and t.is_alive()
    ]


def active_readers(env: aiolmdb.AsyncEnvironment) -> list[str]:
    """Reader-table lines of read transactions still open (txnid other than '-')."""
    lines = env.readers().strip().splitlines()[1:]
    return [line for line in lines if line.split()[-1] != "-"]


def batch(tag: str, n: int) -> dict[str, bytes]:
    return {f"{tag}-{i:03d}": f"{tag}:{i}".encode() for i in range(n)}


async def cancel_soon(task: asyncio.Task[object], rng: random.Random) -> None:
    """Cancel ``task`` after a random number of loop iterations (or a tiny sleep)."""
    if rng.random() < 0.5:
        for _ in range(rng.randrange(6)):
            await asyncio.sleep(0)
    else:
        await asyncio.sleep(rng.uniform(0, 0.003))
    task.cancel()


async def test_cancelled_put_multi_is_all_or_nothing(open_env: EnvFactory) -> None:
    env = open_env(lmdb_options={"map_size": 64 * 1024 * 1024, "max_batch_writes": 8})
    db = env.open_db("data", key_coder=StringCoder())
    gate_db = env.open_db("gate")
    rng = random.Random(1)
    finished: set[str] = set()
    batches: dict[str, int] = {}
    for round_ in range(40):
        gate = WriterGate(gate_db) if round_ % 4 == 0 else None
        if gate is not None:
            await gate.hold()  # the writes below are queued when they are cancelled
        tasks: dict[str, asyncio.Task[object]] = {}
        for j in range(8):
            tag = f"r{round_:02d}b{j}"
            batches[tag] = rng.choice([1, 5, 31, 33, 80])  # > 32: encoded off the loop
            tasks[tag] = asyncio.create_task(db.put_multi(batch(tag, batches[tag])))
        # One batch of every round is left to finish: acknowledged batches are checked too.
        cancellers = [cancel_soon(t, rng) for t in list(tasks.values())[1:]]
        if gate is not None:
            await asyncio.gather(*cancellers)
            await gate.release()
        else:
            await asyncio.gather(*cancellers)
        for tag, task in tasks.items():
            try:
                assert await bounded(task) == batches[tag]
                finished.add(tag)
            except asyncio.CancelledError:
                pass
    stored = {k: v async for k, v in db.items()}
    cancelled_present = cancelled_absent = 0
    for tag, n in batches.items():
        expected = batch(tag, n)
        present = {k for k in expected if k in stored}
        assert present in (set(), set(expected)), f"batch {tag} is partly stored"
        if tag in finished:
            assert present, f"batch {tag} was acknowledged but is missing"
        elif present:
            cancelled_present += 1
        else:
            cancelled_absent += 1
        for key in present:
            assert stored[key] == expected[key]
    assert cancelled_absent > 0  # cancellation really happened before the writer
    assert len(finished) > 0
    # The environment keeps working.
    assert await bounded(db.put("after", b"ok"))
    assert await db.get("after") == b"ok"


async def test_cancelled_single_puts_leave_each_key_old_or_new(open_env: EnvFactory) -> None:
    env = open_env()
    db = env.open_db("data", key_coder=StringCoder())
    rng = random.Random(2)
    await db.put_multi({f"k{i}": b"old" for i in range(200)})
    tasks = [asyncio.create_task(db.put(f"k{i}", b"new")) for i in range(200)]
    await asyncio.gather(*(cancel_soon(t, rng) for t in tasks))
    done = await asyncio.gather(*tasks, return_exceptions=True)
    for i, outcome in enumerate(done):
        value = await db.get(f"k{i}")
        if outcome is True:
            assert value == b"new"
        else:
            assert isinstance(outcome, asyncio.CancelledError)
            assert value in (b"old", b"new")


async def test_task_cancelled_inside_a_transaction_aborts_it(open_env: EnvFactory) -> None:
    env = open_env()
    a, b = env.open_db("a"), env.open_db("b")
    inside = asyncio.Event()

    async def in_transaction() -> None:
        async with env.transaction():
            await a.put(b"k", b"1")
            await b.put(b"k", b"1")
            inside.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(in_transaction())
    try:
        await bounded(inside.wait())
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await bounded(task)
        assert await a.get(b"k") is None
        assert await b.get(b"k") is None
        # The writer is free again: a plain write and a new transaction work.
        assert await bounded(a.put(b"after", b"2"))
        async with env.transaction():
            await b.put(b"after", b"2")
        assert await b.get(b"after") == b"2"
    finally:
        await abort_orphans(env)


@pytest.mark.lmdb_only
async def test_transactions_cancelled_at_random_points_are_all_or_nothing(
    open_env: EnvFactory,
) -> None:
    env = open_env()
    a, b = env.open_db("a", key_coder=StringCoder()), env.open_db("b", key_coder=StringCoder())
    rng = random.Random(3)
    acknowledged: set[str] = set()
    tags: list[str] = []

    async def move(tag: str) -> None:
        async with env.transaction():
            await a.put(tag, b"A")
            async with env.transaction():  # a savepoint
                await b.put(tag, b"B")
            await a.put(tag + "-2", b"A2")
        acknowledged.add(tag)

    try:
        for round_ in range(30):
            tasks = []
            for j in range(6):
                tag = f"t{round_:02d}-{j}"
                tags.append(tag)
                tasks.append(asyncio.create_task(move(tag)))
            await asyncio.gather(*(cancel_soon(t, rng) for t in tasks[::2]))
            await bounded(asyncio.gather(*tasks, return_exceptions=True), timeout=20)
        stored_a = {k: v async for k, v in a.items()}
        stored_b = {k: v async for k, v in b.items()}
        for tag in tags:
            parts = (tag in stored_a, tag + "-2" in stored_a, tag in stored_b)
            assert parts in ((True, True, True), (False, False, False)), (tag, parts)
            if tag in acknowledged:
                assert parts[0]
        assert len(acknowledged) < len(tags)
        assert await bounded(a.put("after", b"ok"))
    finally:
        await abort_orphans(env)


@pytest.mark.needs("serial_writes")
async def test_task_cancelled_while_waiting_to_begin_a_transaction(open_env: EnvFactory) -> None:
    """Cancelled while queued behind another transaction: the writer must not be left
    serving a session nobody will end."""
    env = open_env()
    db = env.open_db("data")
    release = asyncio.Event()
    inside = asyncio.Event()

    async def holder() -> None:
        async with env.transaction():
            await db.put(b"holder", b"1")
            inside.set()
            await release.wait()

    async def victim() -> None:
        async with env.transaction():
            await db.put(b"victim", b"1")

    held = asyncio.create_task(holder())
    try:
        await bounded(inside.wait())
        waiting = asyncio.create_task(victim())
        await asyncio.sleep(0.05)  # queued behind the holder's session
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await bounded(waiting)
        release.set()
        await bounded(held)
        assert await bounded(db.put(b"after", b"1"), timeout=5)
        assert await db.get(b"victim") is None
        assert await db.get(b"holder") == b"1"
    finally:
        release.set()
        await abort_orphans(env)


async def test_close_with_writes_in_flight(tmp_path: Path) -> None:
    path = tmp_path / "env"
    env = aiolmdb.open(path, max_pending_writes=50)
    db = env.open_db("data", key_coder=StringCoder())
    other = env.open_db("other", key_coder=StringCoder())
    await db.put("seed", b"1")
    # Leave reads of every kind behind: inline, offloaded, scans, a snapshot.
    await db.get_multi([f"x{i}" for i in range(100)])
    _ = [k async for k in db.keys()]
    snapshot_open = asyncio.Event()

    async def snapshot_holder() -> None:
        async with env.transaction(write=False):
            await db.get("seed")
            snapshot_open.set()
            await asyncio.sleep(3600)

    holder = asyncio.create_task(snapshot_holder())
    await bounded(snapshot_open.wait())

    async def txn_write(i: int) -> None:
        async with env.transaction():
            await db.put(f"txn-{i}", b"t")
            await other.put(f"txn-{i}", b"t")

    puts = [asyncio.create_task(db.put(f"put-{i}", b"p")) for i in range(300)]
    multis = [
        asyncio.create_task(db.put_multi(batch(f"multi{i}", 20), txn=None)) for i in range(10)
    ]
    txns = [asyncio.create_task(txn_write(i)) for i in range(5)]
    await asyncio.sleep(0)
    await bounded(env.close())
    outcomes = await bounded(asyncio.gather(*puts, *multis, *txns, return_exceptions=True))
    holder.cancel()
    await asyncio.gather(holder, return_exceptions=True)

    assert not writer_threads(path), "the writer thread outlived close()"
    with pytest.raises(aiolmdb.ClosedError):
        await db.get("seed")
    with pytest.raises(aiolmdb.ClosedError):
        await db.put("late", b"x")

    records = raw_records(path, "data")
    other_records = raw_records(path, "other")
    for i, outcome in enumerate(outcomes[:300]):
        if outcome is True:
            assert records[f"put-{i}".encode()] == b"p"
        else:
            assert isinstance(outcome, aiolmdb.ClosedError), repr(outcome)
            assert f"put-{i}".encode() not in records
    for i, outcome in enumerate(outcomes[300:310]):
        keys = {k.encode() for k in batch(f"multi{i}", 20)}
        if outcome == 20:
            assert keys <= records.keys()
        else:
            assert isinstance(outcome, aiolmdb.ClosedError), repr(outcome)
            assert not keys & records.keys()
    for i, outcome in enumerate(outcomes[310:]):
        key = f"txn-{i}".encode()
        assert (key in records) == (key in other_records)
        if outcome is None:
            assert key in records
        else:
            assert isinstance(outcome, (aiolmdb.ClosedError, aiolmdb.TransactionError))
            assert key not in records

    async with aiolmdb.open(path) as again:
        assert not active_readers(again), again.readers()
        assert again.info()["num_readers"] <= 1
        assert await again.open_db("data").get(b"seed") == b"1"


async def test_close_twice_and_use_after_close(open_env: EnvFactory) -> None:
    env = open_env()
    db = env.open_db("data")
    await db.put(b"k", b"v")
    await bounded(env.close())
    await bounded(env.close())
    with pytest.raises(aiolmdb.ClosedError):
        env.transaction()
    with pytest.raises(aiolmdb.ClosedError):
        env.info()
    with pytest.raises(aiolmdb.ClosedError):
        await db.put(b"k", b"w")


def run_forgetful(mode: str, path: Path) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            [sys.executable, str(HELPERS / "forgetful.py"), mode, str(path)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except subprocess.TimeoutExpired as exc:  # run() kills the child on timeout
        raise AssertionError(f"{mode}: the child did not exit: {exc.stderr!r}") from exc


@pytest.mark.parametrize("mode", ["awaited", "queued"])
def test_interpreter_exit_without_close_commits_queued_writes(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "env"
    done = run_forgetful(mode, path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "QUEUED"
    records = raw_records(path, "data")
    if mode == "awaited":
        assert len([k for k in records if k.startswith(b"awaited-")]) == 50
        assert len([k for k in records if k.startswith(b"multi-")]) == 50
    else:
        assert records[b"first"] == b"1"
        for i in range(300):
            assert records[b"queued-%03d" % i] == b"q%d" % i
        assert len([k for k in records if k.startswith(b"qmulti-")]) == 50


def test_interpreter_exit_with_a_transaction_left_open(tmp_path: Path) -> None:
    """The writer thread is stuck serving the session; exit must not hang on it."""
    path = tmp_path / "env"
    done = run_forgetful("open-transaction", path)
    assert done.returncode == 0, done.stderr
    records = raw_records(path, "data")
    assert records[b"first"] == b"1"
    assert b"in-transaction" not in records


@pytest.mark.lmdb_only
async def test_environment_used_in_a_forked_child_raises_closed_error(
    open_env: EnvFactory,
) -> None:
    env = open_env()
    db = env.open_db("data")
    await db.put(b"k", b"parent")

    async def child() -> list[str]:
        report: list[str] = []
        for name, call in (
            ("get", lambda: db.get(b"k")),
            ("put", lambda: db.put(b"k", b"child")),
            ("transaction", lambda: env.transaction().__aenter__()),
        ):
            try:
                await asyncio.wait_for(call(), 5)
                report.append(f"{name}:no error")
            except BaseException as exc:
                report.append(f"{name}:{type(exc).__name__}")
        try:
            env.info()
            report.append("info:no error")
        except BaseException as exc:
            report.append(f"info:{type(exc).__name__}")
        return report

    assert await in_forked_child(child) == [
        "get:ClosedError",
        "put:ClosedError",
        "transaction:ClosedError",
        "info:ClosedError",
    ]
    # The parent keeps working.
    assert await bounded(db.put(b"k2", b"parent"))
    assert await db.get(b"k") == b"parent"
    assert await db.get(b"k2") == b"parent"
