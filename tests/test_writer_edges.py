"""The writer thread and the read gate at their edges: user code raising
StopIteration, map growth that fails or waits for readers, batches with many
failing writes, a full disk."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import abort_orphans, bounded, detached

import aiolmdb
from aiolmdb._session import WriteSession

MiB = 1024 * 1024


def stop(*_: Any) -> Any:
    raise StopIteration


def assert_from_stop_iteration(error: BaseException) -> None:
    assert isinstance(error, RuntimeError)
    assert "StopIteration" in str(error)
    assert isinstance(error.__cause__, StopIteration)


# -- StopIteration raised by user code -----------------------------------------


async def test_stop_iteration_in_update_becomes_runtime_error(
    env: aiolmdb.AsyncEnvironment,
) -> None:
    db = env.open_db("data")
    await db.put(b"k", b"v")
    with pytest.raises(RuntimeError) as info:
        await bounded(db.update(b"k", stop), timeout=3)
    assert_from_stop_iteration(info.value)
    assert await db.get(b"k") == b"v"
    assert await bounded(db.put(b"after", b"ok"), timeout=3)


@pytest.mark.parametrize("write", [True, False])
async def test_stop_iteration_in_run_becomes_runtime_error(
    env: aiolmdb.AsyncEnvironment, write: bool
) -> None:
    db = env.open_db("data")
    with pytest.raises(RuntimeError) as info:
        await bounded(db.run(stop, write=write), timeout=3)
    assert_from_stop_iteration(info.value)
    assert await bounded(db.put(b"after", b"ok"), timeout=3)


async def test_stop_iteration_inside_a_transaction_stalls_no_writer(
    env: aiolmdb.AsyncEnvironment, sessions: list[WriteSession]
) -> None:
    db = env.open_db("data")
    try:
        outside = None
        async with env.transaction():
            await db.put(b"in", b"1")
            outside = detached(db.put(b"outside", b"2"))  # waits for the transaction
            with pytest.raises(RuntimeError) as info:
                await bounded(db.run(stop, write=True), timeout=3)
            assert_from_stop_iteration(info.value)
            await db.put(b"in too", b"3")
        assert await bounded(outside, timeout=3)
        assert await db.get_multi([b"in", b"outside", b"in too"]) == {
            b"in": b"1",
            b"outside": b"2",
            b"in too": b"3",
        }
    finally:
        await abort_orphans(sessions)
        if outside is not None and not outside.done():
            outside.cancel()
