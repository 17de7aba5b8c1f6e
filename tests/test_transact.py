"""``env.transact(fn, ...)``: a function run in one write transaction, again on a conflict."""

from __future__ import annotations

import pytest
from conftest import bounded

import aiolmdb
from aiolmdb.environment import TRANSACT_ATTEMPTS


async def test_transact_runs_the_function_in_one_write_transaction(
    env: aiolmdb.AsyncEnvironment,
) -> None:
    accounts = env.open_db("accounts", key_coder=aiolmdb.coders.StringCoder())
    await accounts.put_multi({"a": b"10", "b": b"0"})

    async def move(source: str, target: str, *, amount: int) -> int:
        have = int(await accounts.get(source) or b"0")
        await accounts.put(source, str(have - amount).encode())
        await accounts.put(target, str(int(await accounts.get(target) or b"0") + amount).encode())
        transaction = env.current_transaction()
        assert transaction is not None and transaction.write  # every call joined it
        return have - amount

    assert await bounded(env.transact(move, "a", "b", amount=3)) == 7
    assert await accounts.get_multi(["a", "b"]) == {"a": b"7", "b": b"3"}
    assert env.current_transaction() is None


async def test_a_conflict_runs_it_again_with_nothing_of_the_failed_attempt_applied(
    env: aiolmdb.AsyncEnvironment,
) -> None:
    db = env.open_db("db")
    attempts: list[int] = []

    async def conflicts_twice() -> str:
        attempts.append(len(attempts))
        await db.put(b"attempt %d" % len(attempts), b"written")
        if len(attempts) < 3:
            raise aiolmdb.ConflictError("another transaction changed what this one read")
        return "done"

    assert await bounded(env.transact(conflicts_twice)) == "done"
    assert attempts == [0, 1, 2]
    assert [key async for key in db.keys()] == [b"attempt 3"]  # the failed attempts aborted


async def test_conflicts_past_the_bound_raise_conflict_error_naming_the_attempts(
    env: aiolmdb.AsyncEnvironment,
) -> None:
    db = env.open_db("db")
    calls = 0

    async def always_conflicts() -> None:
        nonlocal calls
        calls += 1
        await db.put(b"k", b"v")
        raise aiolmdb.ConflictError("another transaction changed what this one read")

    with pytest.raises(aiolmdb.ConflictError, match=rf"{TRANSACT_ATTEMPTS} attempts"):
        await bounded(env.transact(always_conflicts), timeout=30)
    assert calls == TRANSACT_ATTEMPTS
    assert await db.get(b"k") is None
    assert isinstance(aiolmdb.ConflictError("x"), aiolmdb.TransactionError)


async def test_other_errors_abort_at_once_and_are_not_retried(
    env: aiolmdb.AsyncEnvironment,
) -> None:
    db = env.open_db("db")
    calls = 0

    async def fails() -> None:
        nonlocal calls
        calls += 1
        await db.put(b"k", b"v")
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        await bounded(env.transact(fails))
    assert calls == 1
    assert await db.get(b"k") is None


async def test_inside_a_transaction_it_is_a_savepoint_of_it_and_never_retried(
    env: aiolmdb.AsyncEnvironment,
) -> None:
    db = env.open_db("db")
    calls = 0

    async def conflicts() -> None:
        nonlocal calls
        calls += 1
        await db.put(b"inner", b"v")
        raise aiolmdb.ConflictError("the enclosing transaction conflicts")

    async with env.transaction():
        await db.put(b"outer", b"v")
        # Only the enclosing transaction can be run again: the conflict is its.
        with pytest.raises(aiolmdb.ConflictError, match="enclosing"):
            await bounded(env.transact(conflicts))
        assert await db.get(b"inner") is None  # the savepoint rolled back
    assert calls == 1
    assert await db.get(b"outer") == b"v"
