"""The writer thread and the read gate at their edges: user code raising
StopIteration, map growth that fails or waits for readers, batches with many
failing writes, a full disk."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
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


def test_stop_iteration_in_a_snapshot_read_becomes_runtime_error(tmp_path: Path) -> None:
    # A snapshot call outlasts its caller's cancellation (the worker must be
    # done before the snapshot moves on), so a call that never resolves cannot
    # be bounded by wait_for: the scenario runs on a loop of its own in a
    # thread, which the test stops waiting for.
    errors: list[BaseException] = []

    async def scenario() -> None:
        async with aiolmdb.open(tmp_path / "env") as env:
            db = env.open_db("data")
            await db.put(b"k", b"v")
            async with env.transaction(write=False):
                try:
                    await db.run(stop)
                except RuntimeError as exc:
                    errors.append(exc)
                assert await db.get(b"k") == b"v"  # the snapshot is usable

    thread = threading.Thread(target=asyncio.run, args=(scenario(),), daemon=True)
    thread.start()
    thread.join(timeout=5)
    assert not thread.is_alive(), "the snapshot call never returned"
    assert len(errors) == 1
    assert_from_stop_iteration(errors[0])


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
