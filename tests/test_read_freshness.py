"""How fresh a read made on the event loop is.

On LMDB the reads made on the event loop thread share one read transaction,
renewed after this process commits anything, once per loop iteration, when
it is older than ``reused_read.MAX_AGE``, and when a resize of the map waits.
The tests that hold the loop in one iteration block its thread (a join, a
child process) or read through the engine's own point read (which, unlike
``get``, never yields to other tasks).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
from conftest import TIMEOUT, EnvFactory, bounded, lmdb_engine
from pydantic import BaseModel

import aiolmdb
from aiolmdb.coders import UInt32Coder, UInt64Coder
from aiolmdb.models import Collection
from aiolmdb.storage import Buffer, NotNowError
from aiolmdb.storage.lmdb import reused_read

T = TypeVar("T")

MiB = 1024 * 1024

#: A child process committing one record with py-lmdb itself: argv is the path, the
#: map size, the database, the key and the value.
COMMIT_IN_A_CHILD = """
import sys
import lmdb

path, map_size, name, key, value = sys.argv[1:]
env = lmdb.open(path, map_size=int(map_size), max_dbs=8)
db = env.open_db(name.encode())
with env.begin(write=True) as txn:
    txn.put(key.encode(), value.encode(), db=db)
env.close()
"""


def commit_from_another_process(env: aiolmdb.AsyncEnvironment, map_size: int, value: str) -> None:
    """Commit ``data[b"k"] = value`` from a child process, blocking this thread meanwhile
    (so this thread's event loop stays in its iteration)."""
    args = [env.path(), str(map_size), "data", "k", value]
    subprocess.run([sys.executable, "-c", COMMIT_IN_A_CHILD, *args], check=True, timeout=60)


def in_another_thread(work: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """``work()`` run to its end in an event loop of another thread, blocking this one
    meanwhile: this thread's event loop stays in the same iteration."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append((True, asyncio.run(work())))
        except BaseException as exc:
            outcome.append((False, exc))

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(TIMEOUT)
    assert not thread.is_alive(), "the other thread's work did not finish"
    ok, value = outcome[0]
    if not ok:
        raise value
    result: T = value
    return result


def read_inline(db: aiolmdb.AsyncDatabase[Any, Any], raw_key: bytes) -> bytes | None:
    """What a hop-free ``get`` reads, through the engine's point read (which never yields)."""

    def decode(_: bytes, buf: Buffer | None) -> bytes | None:
        return None if buf is None else bytes(buf)

    return db.env.engine.read_point(db.access.keyspace, raw_key, decode)


def own_readers(env: aiolmdb.AsyncEnvironment) -> list[str]:
    """Reader-table lines of this process's read transactions open now."""
    lines = env.readers().strip().splitlines()[1:]
    return [
        line for line in lines if line.split()[0] == str(os.getpid()) and line.split()[-1] != "-"
    ]


async def next_iterations() -> None:
    """Let the event loop go round twice."""
    await asyncio.sleep(0)
    await asyncio.sleep(0)


@pytest.fixture
def ageless(monkeypatch: pytest.MonkeyPatch) -> None:
    """The reused read transaction never gets too old (for environments opened afterwards):
    only commits and the loop's iterations renew it."""
    monkeypatch.setattr(reused_read, "MAX_AGE", 3600.0)


# -- this process's commits ----------------------------------------------------------


async def test_a_get_after_a_put_sees_it(env: aiolmdb.AsyncEnvironment) -> None:
    db = env.open_db("data")
    assert await db.get(b"k") is None
    for i in range(300):  # past the reads that yield to other tasks
        await db.put(b"k", b"%d" % i)
        assert await db.get(b"k") == b"%d" % i


async def test_a_get_after_a_transaction_commits_sees_it(env: aiolmdb.AsyncEnvironment) -> None:
    db = env.open_db("data")
    await db.put(b"k", b"before")
    assert await db.get(b"k") == b"before"
    async with env.transaction():
        await db.put(b"k", b"inside")
    assert await db.get(b"k") == b"inside"


Db = aiolmdb.AsyncDatabase[bytes, bytes]


async def _batched_put(env: aiolmdb.AsyncEnvironment, db: Db) -> None:
    await db.put(b"k", b"after")


async def _interactive_put(env: aiolmdb.AsyncEnvironment, db: Db) -> None:
    async with env.transaction():
        await db.put(b"k", b"after")


async def _put_alone(env: aiolmdb.AsyncEnvironment, db: Db) -> None:
    def write(txn: aiolmdb.DatabaseTxn[bytes, bytes]) -> None:
        txn.put(b"k", b"after")

    await db.run(write, write=True)


#: Each way a write of this process commits: a batched commit, an interactive
#: transaction, a write that has the writer alone.
COMMITS: dict[str, Callable[[aiolmdb.AsyncEnvironment, Db], Coroutine[Any, Any, None]]] = {
    "batched": _batched_put,
    "interactive": _interactive_put,
    "alone": _put_alone,
}


@pytest.mark.lmdb_only
@pytest.mark.parametrize("commit", list(COMMITS))
async def test_a_commit_renews_the_reused_read(
    open_env: EnvFactory, ageless: None, commit: str
) -> None:
    env = open_env()
    db = env.open_db("data")
    await db.put(b"k", b"before")
    assert read_inline(db, b"k") == b"before"
    in_another_thread(lambda: COMMITS[commit](env, db))
    assert read_inline(db, b"k") == b"after"


@pytest.mark.lmdb_only
async def test_a_database_opened_meanwhile_is_read_through_a_renewed_read(
    open_env: EnvFactory, ageless: None
) -> None:
    # A read transaction begun before a database was opened cannot read it at all.
    env = open_env()
    first = env.open_db("first")
    await first.put(b"k", b"first")
    assert read_inline(first, b"k") == b"first"

    async def open_second() -> None:
        await env.open_db_async("second")

    in_another_thread(open_second)
    second = env.open_db("second")
    assert not second.access.pending  # open already: the read goes straight to LMDB
    assert read_inline(second, b"k") is None
    await second.put(b"k", b"second")
    assert read_inline(second, b"k") == b"second"


class Item(BaseModel):
    id: int
    name: str


class Items(Collection[int, Item]):
    key_coder = UInt64Coder()


@pytest.mark.lmdb_only
async def test_a_collection_opened_meanwhile_is_read_through_a_renewed_read(
    open_env: EnvFactory, ageless: None
) -> None:
    env = open_env()
    other = env.open_db("other")
    await other.put(b"k", b"v")
    assert read_inline(other, b"k") == b"v"

    async def open_and_write() -> None:
        items = await Items.open(env)
        await items.put(1, Item(id=1, name="one"))

    in_another_thread(open_and_write)
    items = Items(env)  # its databases are open already
    stored = Item(id=1, name="one").model_dump_json().encode()
    assert read_inline(items, UInt64Coder().serialize(1)) == stored
    assert await items.get(1) == Item(id=1, name="one")


# -- other processes' commits ----------------------------------------------------------


@pytest.mark.lmdb_only
async def test_another_process_commit_is_seen_after_the_next_loop_iteration(
    open_env: EnvFactory, ageless: None
) -> None:
    env = open_env(map_size=16 * MiB)
    db = env.open_db("data")
    await db.put(b"k", b"before")
    assert read_inline(db, b"k") == b"before"
    commit_from_another_process(env, 16 * MiB, "after")
    await asyncio.sleep(0)
    assert read_inline(db, b"k") == b"after"
    assert await db.get(b"k") == b"after"


@pytest.mark.lmdb_only
async def test_another_process_commit_is_seen_once_the_reused_read_is_old(
    open_env: EnvFactory,
) -> None:
    # No await between the reads: the loop stays in one iteration, and the
    # reused transaction, older than MAX_AGE by then, is renewed.
    env = open_env(map_size=16 * MiB)
    db = env.open_db("data")
    await db.put(b"k", b"before")
    assert read_inline(db, b"k") == b"before"
    commit_from_another_process(env, 16 * MiB, "after")
    assert read_inline(db, b"k") == b"after"


# -- how long it is held -----------------------------------------------------------------


@pytest.mark.lmdb_only
async def test_the_reused_read_ends_when_the_loop_goes_on(env: aiolmdb.AsyncEnvironment) -> None:
    engine = lmdb_engine(env)
    db = env.open_db("data")
    await db.put(b"k", b"v")
    assert engine.readers_open == 0
    assert await db.get(b"k") == b"v"
    assert engine.readers_open == 1  # kept for the next read on the loop
    assert len(own_readers(env)) == 1
    assert await db.get(b"k") == b"v"
    assert await db.get_multi([b"k", b"missing"]) == {b"k": b"v", b"missing": None}
    assert engine.readers_open == 1  # the same one
    await next_iterations()
    assert engine.readers_open == 0
    assert own_readers(env) == []


@pytest.mark.lmdb_only
async def test_reads_in_one_loop_iteration_share_one_transaction_until_it_is_old(
    open_env: EnvFactory,
) -> None:
    env = open_env()
    db = env.open_db("data")
    await db.put(b"k", b"v")
    read_inline(db, b"k")
    first = own_readers(env)
    assert len(first) == 1
    read_inline(db, b"k")
    assert own_readers(env) == first
    time.sleep(reused_read.MAX_AGE * 2)  # noqa: ASYNC251 - the loop stays in this iteration
    read_inline(db, b"k")
    renewed = own_readers(env)
    assert len(renewed) == 1
    await next_iterations()
    assert own_readers(env) == []


@pytest.mark.lmdb_only
async def test_renewals_in_one_loop_iteration_do_not_fill_the_reader_table(
    open_env: EnvFactory,
) -> None:
    env = open_env(max_readers=8)
    db = env.open_db("data")
    await db.put(b"k", b"v")
    deadline = time.monotonic() + 200 * reused_read.MAX_AGE  # a renewal every MAX_AGE
    while time.monotonic() < deadline:
        assert read_inline(db, b"k") == b"v"
    assert len(own_readers(env)) == 1


@pytest.mark.lmdb_only
async def test_a_map_resize_is_not_held_up_by_reads_on_a_busy_loop(
    open_env: EnvFactory, ageless: None
) -> None:
    # The loop reads without a pause while another thread's write needs the map
    # to grow, which waits for this process's read transactions to end.
    env = open_env(map_size=MiB, map_resize_wait=3.0)
    db = env.open_db("data", key_coder=UInt32Coder())
    engine = lmdb_engine(env)
    await db.put(0, b"small")
    done = threading.Event()

    def grow() -> None:
        asyncio.run(db.put(1, b"x" * (2 * MiB)))
        done.set()

    writer = threading.Thread(target=grow)
    raw_key = UInt32Coder().serialize(0)
    assert read_inline(db, raw_key) == b"small"
    writer.start()
    refused = 0
    started = time.monotonic()
    while not done.is_set() and time.monotonic() - started < TIMEOUT:
        try:
            assert read_inline(db, raw_key) == b"small"
        except NotNowError:
            refused += 1  # the resize waits: the read would go off the loop
    writer.join(TIMEOUT)
    assert done.is_set(), "the write that grows the map did not finish"
    assert time.monotonic() - started < 3.0  # it never waited for map_resize_wait in vain
    assert refused > 0
    assert env.info()["map_size"] > MiB
    assert engine.readers_open <= 1
    assert await db.get(1) == b"x" * (2 * MiB)


@pytest.mark.lmdb_only
async def test_a_map_resize_does_not_wait_for_the_loop_to_go_on(open_env: EnvFactory) -> None:
    # A get leaves the reused read open; a write that grows the map then
    # waits for it only until the loop goes on.
    env = open_env(map_size=MiB, map_resize_wait=1.0)
    db = env.open_db("data", key_coder=UInt32Coder())
    await db.put(0, b"small")
    for i in range(1, 20):
        assert await db.get(0) == b"small"
        assert await bounded(db.put(i, bytes([i]) * (MiB // 4))), i
    assert env.info()["map_size"] >= 4 * MiB


# -- event loops ---------------------------------------------------------------------------


@pytest.mark.lmdb_only
async def test_another_threads_loop_reads_in_transactions_of_its_own(
    open_env: EnvFactory, ageless: None
) -> None:
    env = open_env()
    engine = lmdb_engine(env)
    db = env.open_db("data")
    await db.put_multi([(b"%03d" % i, b"v%d" % i) for i in range(100)])
    assert read_inline(db, b"000") == b"v0"
    assert engine.readers_open == 1

    async def read_all() -> list[bytes | None]:
        return [await db.get(b"%03d" % i) for i in range(100)]

    assert in_another_thread(read_all) == [b"v%d" % i for i in range(100)]
    assert engine.readers_open == 1  # this loop's, still open; the other's all ended
    await next_iterations()
    assert engine.readers_open == 0


@pytest.mark.lmdb_only
def test_a_loop_that_stopped_in_the_middle_leaves_nothing_to_the_next(tmp_path: Path) -> None:
    env = aiolmdb.open(tmp_path / "env")
    engine = lmdb_engine(env)
    loop = asyncio.new_event_loop()

    async def read_then_stop() -> None:
        db = env.open_db("data")
        await db.put(b"k", b"v")
        assert await db.get(b"k") == b"v"
        loop.stop()  # before the loop goes round again

    try:
        reading = loop.create_task(read_then_stop())
        loop.run_forever()
        assert reading.done()
        assert engine.readers_open == 1
        # The next loop of this thread would reuse it until it is MAX_AGE old.
        time.sleep(2 * reused_read.MAX_AGE)

        async def read_in_a_new_loop() -> int:
            db = env.open_db("data")
            assert await db.get(b"k") == b"v"
            await next_iterations()
            return engine.readers_open

        assert asyncio.run(read_in_a_new_loop()) == 0
    finally:
        asyncio.run(env.close())
        loop.close()


# -- close, exit and fork -------------------------------------------------------------------


@pytest.mark.lmdb_only
async def test_close_ends_the_reused_read(tmp_path: Path) -> None:
    path = tmp_path / "env"
    env = aiolmdb.open(path)
    db = env.open_db("data")
    await db.put(b"k", b"v")
    assert await db.get(b"k") == b"v"
    assert lmdb_engine(env).readers_open == 1
    await bounded(env.close())
    assert lmdb_engine(env).readers_open == 0
    with pytest.raises(aiolmdb.ClosedError):
        await db.get(b"k")
    async with aiolmdb.open(path) as again:
        assert own_readers(again) == []
        assert await again.open_db("data").get(b"k") == b"v"


#: A child process whose loop stops right after a read, with a write queued that
#: must grow the map, and that exits without closing its environment.
EXIT_WITH_A_READ_OPEN = """
import asyncio
import sys

import aiolmdb

env = aiolmdb.open(sys.argv[1], map_size=1024 * 1024, map_resize_wait=30.0)
loop = asyncio.new_event_loop()


async def main():
    db = env.open_db("data")
    await db.put(b"k", b"v")
    asyncio.ensure_future(db.put(b"big", b"x" * (2 * 1024 * 1024)))
    await asyncio.sleep(0)  # the write is queued
    assert await db.get(b"k") == b"v"
    loop.stop()  # the reused read is still open, and the writer waits for it


loop.create_task(main())
loop.run_forever()
print(env.engine.readers_open, flush=True)
"""


@pytest.mark.lmdb_only
def test_exit_without_close_ends_the_reused_read_and_commits_what_is_queued(
    tmp_path: Path,
) -> None:
    path = tmp_path / "env"
    started = time.monotonic()
    child = subprocess.run(
        [sys.executable, "-c", EXIT_WITH_A_READ_OPEN, str(path)],
        capture_output=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert child.returncode == 0, child.stderr.decode()
    assert child.stdout.decode().split() == ["1"]
    assert time.monotonic() - started < 20  # the exit waited for no reader

    async def read() -> bytes | None:
        async with aiolmdb.open(path) as env:
            return await env.open_db("data").get(b"big")

    assert asyncio.run(read()) == b"x" * (2 * 1024 * 1024)


@pytest.mark.lmdb_only
async def test_a_forked_child_leaves_the_reused_read_alone(open_env: EnvFactory) -> None:
    env = open_env()
    db = env.open_db("data")
    await db.put(b"k", b"v")
    assert read_inline(db, b"k") == b"v"
    held = own_readers(env)
    assert len(held) == 1
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, then leave at once
        code = 1
        try:
            os.close(read_fd)
            words = []
            calls: list[tuple[str, Callable[[], Coroutine[Any, Any, object]]]] = [
                ("get", lambda: db.get(b"k")),
                ("close", env.close),
            ]
            for name, call in calls:
                coro = call()
                try:
                    coro.send(None)
                    words.append(f"{name}:suspended")
                    coro.close()
                except StopIteration:
                    words.append(f"{name}:ok")
                except BaseException as exc:
                    words.append(f"{name}:{type(exc).__name__}")
            lmdb_engine(env).close_at_exit()
            os.write(write_fd, " ".join(words).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    # The parent waits blocking: its loop stays in this iteration, the reused read open.
    _, status = os.waitpid(pid, 0)  # noqa: ASYNC222 - on purpose
    assert os.waitstatus_to_exitcode(status) == 0
    with os.fdopen(read_fd, "rb") as reader:
        assert reader.read().decode().split() == ["get:ClosedError", "close:ok"]
    assert own_readers(env) == held  # the child did not end the parent's transaction
    assert read_inline(db, b"k") == b"v"
    await next_iterations()
    assert own_readers(env) == []
    assert await db.get(b"k") == b"v"
