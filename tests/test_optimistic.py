"""Optimistic write transactions: ``env.transaction(optimistic=True)`` and ``env.transact``.

On the engines with one writer (LMDB, memory) the body runs on a snapshot
with its writes buffered, and the commit validates what it read; on
PostgreSQL every write transaction is optimistic already. The tests of what
every engine promises run on all three; those of the buffer's mechanism
(``serial_writes``: an engine whose plain transactions never conflict) on
LMDB and memory.
"""

from __future__ import annotations

import asyncio

import pytest
from conftest import EnvFactory, WhereDecoded, bounded, detached, lmdb_engine
from pydantic import BaseModel

import aiolmdb
from aiolmdb.coders import StringCoder, UInt64Coder
from aiolmdb.environment import OPTIMISTIC_ATTEMPTS
from aiolmdb.models import Collection, Index

ONE_WRITER = pytest.mark.needs("serial_writes")


class Order(BaseModel):
    id: int
    customer: str
    total: int


class Orders(Collection[int, Order]):
    key_coder = UInt64Coder()
    by_customer = Index(lambda o: o.customer, StringCoder())


def strings(env: aiolmdb.AsyncEnvironment, name: str) -> aiolmdb.AsyncDatabase[str, bytes]:
    return env.open_db(name, key_coder=StringCoder())


async def test_reads_see_the_blocks_own_writes_in_gets_scans_and_counts(
    env: aiolmdb.AsyncEnvironment,
) -> None:
    db = strings(env, "db")
    await db.put_multi({"a": b"1", "c": b"3", "e": b"5", "g": b"7"})
    async with env.transaction(optimistic=True) as txn:
        assert txn.optimistic == env.capabilities.serial_writes
        await db.put("b", b"2")
        await db.delete("c")
        await db.put("e", b"five")
        await db.put("h", b"8")
        assert await db.get("c") is None
        assert await db.get("e") == b"five"
        assert await db.get_multi(["a", "b", "c"]) == {"a": b"1", "b": b"2", "c": None}
        assert [kv async for kv in db.items()] == [
            ("a", b"1"),
            ("b", b"2"),
            ("e", b"five"),
            ("g", b"7"),
            ("h", b"8"),
        ]
        assert [k async for k in db.keys(reverse=True)] == ["h", "g", "e", "b", "a"]
        assert [k async for k in db.keys("b", "g")] == ["b", "e"]
        assert [k async for k in db.keys(reverse=True, limit=2)] == ["h", "g"]
        assert await db.count() == 5
        assert await db.count("b", "h") == 3
        assert await db.contains("b") and not await db.contains("c")
        # Another task sees none of it before the commit.
        outside = await detached(db.get_multi(["b", "c", "e"]))
        assert outside == {"b": None, "c": b"3", "e": b"5"}
    assert [kv async for kv in db.items()] == [
        ("a", b"1"),
        ("b", b"2"),
        ("e", b"five"),
        ("g", b"7"),
        ("h", b"8"),
    ]


async def test_index_queries_see_the_blocks_own_writes(env: aiolmdb.AsyncEnvironment) -> None:
    orders = Orders(env)
    await orders.put_multi([(1, Order(id=1, customer="ann", total=5))])
    async with env.transaction(optimistic=True):
        await orders.put(2, Order(id=2, customer="bob", total=7))
        await orders.put(1, Order(id=1, customer="cid", total=5))  # moves in the index
        assert [k async for k in orders.by_customer.keys()] == [2, 1]  # in index order
        assert [o.id for o in await orders.by_customer.get_all("bob")] == [2]
        assert await orders.by_customer.get_all("ann") == []
        assert await orders.by_customer.count() == 2
    assert [(k, o.customer) async for k, o in orders.by_customer.items()] == [
        (2, "bob"),
        (1, "cid"),
    ]


async def test_a_changed_read_makes_the_commit_raise_conflict_error_with_nothing_applied(
    env: aiolmdb.AsyncEnvironment,
) -> None:
    db = strings(env, "accounts")
    log = strings(env, "log")
    await db.put("balance", b"10")
    read = asyncio.Event()
    changed = asyncio.Event()

    async def late_withdrawal() -> None:
        async with env.transaction(optimistic=True):
            balance = int(await db.get("balance") or b"0")
            read.set()
            await changed.wait()
            await db.put("balance", str(balance - 3).encode())
            await log.put("withdrawal", b"3")

    async def deposit() -> None:
        await read.wait()
        await db.put("balance", b"20")  # an auto-commit write, between read and commit
        changed.set()

    results = await bounded(asyncio.gather(late_withdrawal(), deposit(), return_exceptions=True))
    assert isinstance(results[0], aiolmdb.ConflictError), results
    if env.capabilities.serial_writes:
        message = str(results[0])
        assert "'accounts'" in message and "b'balance'" in message, message
    assert await db.get("balance") == b"20"
    assert await log.get("withdrawal") is None


async def test_transact_runs_concurrent_increments_again_until_each_is_counted_once(
    env: aiolmdb.AsyncEnvironment,
) -> None:
    counters = strings(env, "counters")
    runs = 0

    async def increment() -> None:
        nonlocal runs
        runs += 1
        value = int(await counters.get("n") or b"0")
        await asyncio.sleep(0)  # every other task reads the same value meanwhile
        await counters.put("n", str(value + 1).encode())

    await bounded(asyncio.gather(*(env.transact(increment) for _ in range(50))), timeout=60)
    assert await counters.get("n") == b"50"
    assert runs > 50  # they did run side by side, and conflicted


async def test_read_the_last_id_and_insert_the_next_loses_no_insert_among_20_tasks(
    env: aiolmdb.AsyncEnvironment,
) -> None:
    ids = env.open_db("ids", key_coder=UInt64Coder(), value_coder=StringCoder())

    async def append(task: int) -> int:
        last = [k async for k in ids.keys(reverse=True, limit=1)]
        await asyncio.sleep(0)
        new = last[0] + 1 if last else 0
        await ids.put(new, f"task {task}")
        return new

    got = await bounded(asyncio.gather(*(env.transact(append, t) for t in range(20))), timeout=60)
    assert sorted(got) == list(range(20))
    stored = {k: v async for k, v in ids.items()}
    assert sorted(stored) == list(range(20))
    assert sorted(stored.values()) == sorted(f"task {t}" for t in range(20))


@ONE_WRITER
async def test_an_insert_into_a_range_read_conflicts_and_one_beyond_what_was_read_does_not(
    env: aiolmdb.AsyncEnvironment,
) -> None:
    db = strings(env, "db")
    await db.put_multi({"a": b"", "c": b"", "e": b""})

    async def reads_first_two_then(insert: str) -> BaseException | None:
        try:
            async with env.transaction(optimistic=True):
                assert [k async for k in db.keys(limit=2)] == ["a", "c"]
                await detached(db.put(insert, b"other"))
                await db.put("mine", b"")
        except aiolmdb.ConflictError as exc:
            return exc
        return None

    assert await bounded(reads_first_two_then("f")) is None  # beyond what was read
    conflict = await bounded(reads_first_two_then("b"))
    assert isinstance(conflict, aiolmdb.ConflictError)
    assert "range" in str(conflict) and "'db'" in str(conflict)
    await db.delete("mine")
    async with env.transaction(optimistic=True) as txn:
        assert [k async for k in db.keys()] == ["a", "b", "c", "e", "f"]  # read to its end
        await detached(db.put("z", b""))  # joins the range read
        await db.put("mine", b"")
        with pytest.raises(aiolmdb.ConflictError, match="written into a range"):
            await txn.commit()
    assert await db.get("mine") is None


@ONE_WRITER
async def test_a_savepoint_rolled_back_undoes_its_buffered_writes_and_keeps_its_reads(
    env: aiolmdb.AsyncEnvironment,
) -> None:
    db = strings(env, "db")
    await db.put_multi({"seen": b"1", "kept": b"0"})
    async with env.transaction(optimistic=True) as txn:
        await db.put("kept", b"outer")
        with pytest.raises(RuntimeError):
            async with env.transaction():
                await db.put("kept", b"inner")
                await db.put("gone", b"inner")
                assert await db.get("seen") == b"1"
                raise RuntimeError("undo the savepoint")
        assert await db.get("kept") == b"outer"
        assert await db.get("gone") is None
        assert [k async for k in db.keys()] == ["kept", "seen"]
        async with env.transaction():
            await db.put("released", b"inner")
        assert await db.get("released") == b"inner"
        await detached(db.put("seen", b"2"))  # read inside the rolled-back savepoint only
        with pytest.raises(aiolmdb.ConflictError):
            await txn.commit()
    assert await db.get_multi(["kept", "gone", "released"]) == {
        "kept": b"0",
        "gone": None,
        "released": None,
    }


async def test_bad_input_fails_at_the_call_and_the_rest_of_the_block_commits(
    env: aiolmdb.AsyncEnvironment,
) -> None:
    db = strings(env, "db")
    async with env.transaction(optimistic=True):
        await db.put("good", b"1")
        with pytest.raises(aiolmdb.EncodeError, match=r"'db'.*600 bytes"):
            await db.put("k" * 600, b"too long a key")
        with pytest.raises(aiolmdb.EncodeError):
            await db.put(42, b"not a string key")  # type: ignore[arg-type]
        await db.put("also good", b"2")
    assert {k: v async for k, v in db.items()} == {"also good": b"2", "good": b"1"}


@pytest.mark.parametrize("point", range(4))
async def test_a_transaction_cancelled_at_any_await_applies_nothing(
    env: aiolmdb.AsyncEnvironment, point: int
) -> None:
    db = strings(env, "db")
    orders = Orders(env)
    await db.put("n", b"0")
    reached = [asyncio.Event() for _ in range(4)]
    never = asyncio.Event()

    async def body() -> None:
        async def stop_at(step: int) -> None:
            reached[step].set()
            if step == point:
                await never.wait()

        await stop_at(0)
        value = int(await db.get("n") or b"0")
        await db.put("n", str(value + 1).encode())
        await stop_at(1)
        await orders.put(1, Order(id=1, customer="ann", total=3))
        await stop_at(2)
        await db.put("m", b"1")
        await stop_at(3)

    task = asyncio.ensure_future(env.transact(body))
    await bounded(reached[point].wait())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await bounded(task)
    assert await db.get_multi(["n", "m"]) == {"n": b"0", "m": None}
    assert await orders.get(1) is None
    assert await orders.by_customer.count() == 0
    # Nothing is left holding the engine: a plain transaction goes ahead.
    async with env.transaction():
        await db.put("after", b"1")
    assert await db.get("after") == b"1"


async def test_an_open_optimistic_block_holds_up_no_other_write(
    env: aiolmdb.AsyncEnvironment,
) -> None:
    db = strings(env, "db")
    release = asyncio.Event()
    opened = asyncio.Event()

    async def long_block() -> None:
        async with env.transaction(optimistic=True):
            await db.put("block", b"1")
            opened.set()
            await release.wait()

    block = asyncio.ensure_future(long_block())
    await bounded(opened.wait())
    await bounded(db.put("auto", b"1"))  # an auto-commit write goes through meanwhile

    async def other() -> None:
        await db.put("other", b"1")

    await bounded(env.transact(other))
    release.set()
    await bounded(block)
    assert {k async for k in db.keys()} == {"auto", "block", "other"}


async def test_a_block_that_only_reads_commits_whatever_changed_meanwhile(
    env: aiolmdb.AsyncEnvironment,
) -> None:
    db = strings(env, "db")
    await db.put("k", b"1")
    async with env.transaction(optimistic=True):
        assert await db.get("k") == b"1"
        await detached(db.put("k", b"2"))
        assert await db.get("k") == b"1"  # its snapshot: serialized before that write
    assert await db.get("k") == b"2"


async def test_emptying_a_database_inside_a_block_is_seen_by_it_and_applied_at_commit(
    env: aiolmdb.AsyncEnvironment,
) -> None:
    db = strings(env, "db")
    await db.put_multi({"a": b"1", "b": b"2"})
    async with env.transaction(optimistic=True):
        await db.drop(delete=False)
        await db.put("c", b"3")
        assert [kv async for kv in db.items()] == [("c", b"3")]
        assert await db.get("a") is None
        assert await db.count() == 1
        assert await detached(db.count()) == 2
    assert [kv async for kv in db.items()] == [("c", b"3")]


async def test_optimistic_is_refused_for_a_read_snapshot(env: aiolmdb.AsyncEnvironment) -> None:
    with pytest.raises(ValueError, match="optimistic=True is for write transactions"):
        env.transaction(write=False, optimistic=True)


@ONE_WRITER
async def test_a_plain_transaction_still_never_conflicts(env: aiolmdb.AsyncEnvironment) -> None:
    counters = strings(env, "counters")

    async def increment() -> None:
        async with env.transaction():
            value = int(await counters.get("n") or b"0")
            await asyncio.sleep(0)
            await counters.put("n", str(value + 1).encode())

    await bounded(asyncio.gather(*(increment() for _ in range(20))))
    assert await counters.get("n") == b"20"


@pytest.mark.lmdb_only
async def test_transactions_begun_together_share_one_read_transaction(
    open_env: EnvFactory,
) -> None:
    env = open_env()
    db = strings(env, "db")
    await db.put("k", b"0")
    waiting = 0
    all_waiting = asyncio.Event()
    go = asyncio.Event()

    async def hold() -> None:
        nonlocal waiting
        assert await db.get("k") == b"0"
        waiting += 1
        if waiting == 300:
            all_waiting.set()
        await go.wait()

    tasks = [asyncio.ensure_future(env.transact(hold)) for _ in range(300)]  # > 126 slots
    await bounded(all_waiting.wait())
    assert lmdb_engine(env).readers_open <= 2  # theirs, and at most one of a point read
    go.set()
    await bounded(asyncio.gather(*tasks))


@ONE_WRITER
async def test_under_contention_a_transaction_holds_the_writer_after_its_optimistic_attempts(
    env: aiolmdb.AsyncEnvironment,
) -> None:
    counters = strings(env, "counters")
    runs: dict[int, list[bool]] = {}
    outside = 0  # increments made outside the transactions, by another writer

    async def increment(task: int) -> None:
        nonlocal outside
        transaction = env.current_transaction()
        assert transaction is not None
        runs.setdefault(task, []).append(transaction.optimistic)
        value = int(await counters.get("hot") or b"0")
        if task % 3 == 0 and transaction.optimistic:
            # Another writer changes what this body read before it commits: every
            # optimistic attempt of this task conflicts.
            await detached(counters.update("hot", lambda old: str(int(old) + 1).encode()))
            outside += 1
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        await counters.put("hot", str(value + 1).encode())

    await counters.put("hot", b"0")
    await bounded(asyncio.gather(*(env.transact(increment, t) for t in range(30))), timeout=60)
    assert await counters.get("hot") == str(30 + outside).encode()
    limit = OPTIMISTIC_ATTEMPTS + 1
    for task, attempts in runs.items():  # optimistic first, then one holding the writer
        if task % 3 == 0:
            assert attempts == [True] * OPTIMISTIC_ATTEMPTS + [False]
        else:
            assert len(attempts) <= limit
            assert attempts == [True] * len(attempts) or attempts == [True] * (limit - 1) + [False]


@pytest.mark.lmdb_only
async def test_a_large_value_read_in_an_optimistic_block_is_decoded_off_the_loop(
    env: aiolmdb.AsyncEnvironment,
) -> None:
    where = WhereDecoded()
    db = env.open_db("large", value_coder=where)
    large = b"x" * (env.inline_value_limit * 2)
    await db.put(b"k", large)
    where.on_loop.clear()
    async with env.transaction(optimistic=True):
        assert await db.get(b"k") == large
        await db.put(b"copy", b"small")
    assert where.on_loop == [False]


async def test_a_database_opened_just_after_a_shared_snapshot_began_is_seen_by_later_blocks(
    env: aiolmdb.AsyncEnvironment,
) -> None:
    old = strings(env, "old")
    await old.put("k", b"1")
    release = asyncio.Event()

    async def first() -> None:
        async with env.transaction(optimistic=True):
            assert await old.get("k") == b"1"
            await release.wait()

    holder = asyncio.ensure_future(first())
    await asyncio.sleep(0)  # its snapshot is asked for
    await asyncio.sleep(0)  # and begun, in this very loop iteration
    new = strings(env, "new")
    async with env.transaction(optimistic=True):
        await new.put("n", b"1")
        assert [k async for k in new.keys()] == ["n"]
    release.set()
    await bounded(holder)
    assert await new.get("n") == b"1"


@pytest.mark.parametrize("reverse", [False, True])
async def test_a_scan_of_many_batches_merges_the_blocks_writes_in_order(
    env: aiolmdb.AsyncEnvironment, reverse: bool
) -> None:
    db = env.open_db("db", key_coder=UInt64Coder(), value_coder=StringCoder())
    stored = {k: f"stored {k}" for k in range(0, 600, 2)}
    await db.put_multi(stored)
    expected = dict(stored)
    async with env.transaction(optimistic=True):
        for k in range(0, 600, 7):  # inserts between stored keys, overwrites, deletes
            if k % 3 == 0:
                await db.delete(k)
                expected.pop(k, None)
            else:
                await db.put(k, f"mine {k}")
                expected[k] = f"mine {k}"
        got = [kv async for kv in db.items(reverse=reverse)]
        assert got == sorted(expected.items(), reverse=reverse)
        assert await db.count(100, 400) == sum(100 <= k < 400 for k in expected)
        window = [k async for k in db.keys(100, 400, reverse=reverse, limit=50)]
        assert window == sorted((k for k in expected if 100 <= k < 400), reverse=reverse)[:50]
    assert {k: v async for k, v in db.items()} == expected
