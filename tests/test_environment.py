"""AsyncEnvironment: opening, closing, pass-throughs, options and database handles."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import lmdb
import pytest
from conftest import EnvFactory, bounded, raw_records

import aiolmdb
from aiolmdb.coders import JSONCoder, StringCoder

# -- opening ------------------------------------------------------------------


async def test_open_returns_an_environment_and_named_dbs_need_no_max_dbs(tmp_path: Path) -> None:
    env = aiolmdb.open(tmp_path / "e")
    try:
        assert isinstance(env, aiolmdb.AsyncEnvironment)
        assert not env.closed
        dbs = [env.open_db(f"db{i}") for i in range(10)]
        for i, db in enumerate(dbs):
            assert await db.put(b"k", f"v{i}".encode()) is True
        for i, db in enumerate(dbs):
            assert await db.get(b"k") == f"v{i}".encode()
    finally:
        await bounded(env.close())
    assert env.closed


@pytest.mark.lmdb_only
async def test_open_passes_lmdb_keyword_arguments(open_env: EnvFactory) -> None:
    env = open_env(map_size=8 * 1024 * 1024, sync=False, max_dbs=3)
    assert env.info()["map_size"] == 8 * 1024 * 1024
    assert env.flags()["sync"] is False
    env.open_db("a")
    env.open_db("b")
    env.open_db("c")
    with pytest.raises(lmdb.DbsFullError, match="'d'"):
        await env.open_db_async("d")


async def test_async_with_closes_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "e"
    async with aiolmdb.open(path) as env:
        db = env.open_db("records")
        await db.put(b"k", b"v")
        assert not env.closed
    assert env.closed
    with pytest.raises(aiolmdb.ClosedError):
        await db.get(b"k")
    assert raw_records(path, "records") == {b"k": b"v"}


async def test_async_with_closes_on_exception(tmp_path: Path) -> None:
    path = tmp_path / "e"
    with pytest.raises(RuntimeError, match="boom"):
        async with aiolmdb.open(path) as env:
            await env.open_db("records").put(b"k", b"v")
            raise RuntimeError("boom")
    assert env.closed
    assert raw_records(path, "records") == {b"k": b"v"}


async def test_close_waits_for_queued_writes(tmp_path: Path) -> None:
    path = tmp_path / "e"
    env = aiolmdb.open(path)
    db = env.open_db("records")
    tasks = [asyncio.create_task(db.put(b"%05d" % i, b"value %d" % i)) for i in range(500)]
    await asyncio.sleep(0)  # every task runs up to its queued write
    await bounded(env.close())
    assert await bounded(asyncio.gather(*tasks)) == [True] * 500
    assert raw_records(path, "records") == {b"%05d" % i: b"value %d" % i for i in range(500)}


async def test_close_racing_unstarted_writes_each_lands_or_raises_closed(tmp_path: Path) -> None:
    path = tmp_path / "e"
    env = aiolmdb.open(path)
    db = env.open_db("records")
    tasks = [asyncio.create_task(db.put(b"%05d" % i, b"v")) for i in range(100)]
    await bounded(env.close())  # the tasks have not started yet
    outcomes = await bounded(asyncio.gather(*tasks, return_exceptions=True))
    stored = raw_records(path, "records")
    for i, outcome in enumerate(outcomes):
        key = b"%05d" % i
        if outcome is True:
            assert stored[key] == b"v"
        else:
            assert isinstance(outcome, aiolmdb.ClosedError), outcome
            assert key not in stored


async def test_close_twice_is_harmless(open_env: EnvFactory) -> None:
    env = open_env()
    await env.open_db("x").put(b"k", b"v")
    await bounded(env.close())
    await bounded(env.close())
    assert env.closed
    with pytest.raises(aiolmdb.ClosedError):
        env.path()


def _after_close_calls() -> list[Any]:
    many = [(b"%03d" % i, b"v") for i in range(100)]
    calls: list[tuple[str, Callable[[aiolmdb.AsyncDatabase[bytes, bytes]], Awaitable[Any]]]] = [
        ("get", lambda db: db.get(b"k")),
        ("put", lambda db: db.put(b"k", b"v")),
        ("get_multi", lambda db: db.get_multi([b"k", b"j"])),
        ("put_multi", lambda db: db.put_multi([(b"k", b"v")])),
        ("delete", lambda db: db.delete(b"k")),
        ("delete_multi", lambda db: db.delete_multi([b"k"])),
        ("pop", lambda db: db.pop(b"k")),
        ("replace", lambda db: db.replace(b"k", b"v")),
        ("contains", lambda db: db.contains(b"k")),
        ("count", lambda db: db.count()),
        ("stat", lambda db: db.stat()),
        ("drop", lambda db: db.drop(delete=False)),
        ("drop_delete", lambda db: db.drop(delete=True)),
        ("run", lambda db: db.run(lambda t: t.id())),
        ("run_write", lambda db: db.run(lambda t: t.id(), write=True)),
        ("first", lambda db: db.first()),
        ("last", lambda db: db.last()),
    ]
    params: list[Any] = [pytest.param(fn, id=name) for name, fn in calls]
    params += [
        pytest.param(lambda db: db.put_multi(many), id="put_multi_large"),
        pytest.param(lambda db: db.get_multi([k for k, _ in many]), id="get_multi_large"),
        pytest.param(lambda db: db.delete_multi([k for k, _ in many]), id="delete_multi_large"),
    ]
    return params


@pytest.mark.parametrize("call", _after_close_calls())
async def test_database_calls_after_close_raise_closed_error(
    open_env: EnvFactory, call: Callable[[aiolmdb.AsyncDatabase[bytes, bytes]], Awaitable[Any]]
) -> None:
    env = open_env()
    db = env.open_db("records")
    await db.put(b"k", b"v")
    await bounded(env.close())
    with pytest.raises(aiolmdb.ClosedError, match="closed"):
        await bounded(call(db))


async def test_scans_after_close_raise_closed_error(open_env: EnvFactory) -> None:
    env = open_env()
    db = env.open_db("records")
    await db.put(b"k", b"v")
    await bounded(env.close())
    with pytest.raises(aiolmdb.ClosedError):
        async for _ in db.items():
            pass
    with pytest.raises(aiolmdb.ClosedError):
        async for _ in db.keys(prefix=b"k"):
            pass


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda env: env.open_db("records"), id="open_db"),
        pytest.param(lambda env: env.open_db("new"), id="open_db_new"),
        pytest.param(lambda env: env.get_default_database(), id="get_default_database"),
        pytest.param(lambda env: env.transaction(), id="transaction"),
        pytest.param(lambda env: env.transaction(write=False), id="transaction_read"),
        pytest.param(lambda env: env.path(), id="path"),
        pytest.param(lambda env: env.info(), id="info"),
        pytest.param(lambda env: env.stat(), id="stat"),
        pytest.param(lambda env: env.flags(), id="flags"),
        pytest.param(lambda env: env.max_key_size(), id="max_key_size"),
        pytest.param(lambda env: env.readers(), id="readers"),
        pytest.param(lambda env: env.lmdb_env, id="lmdb_env"),
    ],
)
async def test_environment_calls_after_close_raise_closed_error(
    open_env: EnvFactory, call: Callable[[aiolmdb.AsyncEnvironment], object]
) -> None:
    env = open_env()
    env.open_db("records")
    await bounded(env.close())
    with pytest.raises(aiolmdb.ClosedError, match="closed"):
        call(env)


async def test_async_calls_on_environment_after_close_raise_closed_error(tmp_path: Path) -> None:
    env = aiolmdb.open(tmp_path / "e")
    await bounded(env.close())
    with pytest.raises(aiolmdb.ClosedError):
        await env.copy(tmp_path / "copy")
    with pytest.raises(aiolmdb.ClosedError):
        await env.sync(force=True)
    with pytest.raises(aiolmdb.ClosedError):
        async with env:
            pass


@pytest.mark.parametrize("write", [True, False], ids=["write", "read"])
async def test_entering_a_transaction_after_close_raises_closed_error(
    open_env: EnvFactory, write: bool
) -> None:
    env = open_env()
    db = env.open_db("records")
    txn = env.transaction(write=write)
    await bounded(env.close())

    async def enter() -> None:
        async with txn:
            await db.get(b"k")

    with pytest.raises(aiolmdb.ClosedError):
        await bounded(enter(), timeout=3)


async def test_a_scan_in_progress_at_close(open_env: EnvFactory) -> None:
    env = open_env()
    db = env.open_db("records")
    await db.put_multi([(b"%05d" % i, b"v") for i in range(3000)])
    iterator = db.keys().__aiter__()
    assert await iterator.__anext__() == b"00000"
    await bounded(env.close())
    with pytest.raises(aiolmdb.AiolmdbError):
        for _ in range(3000):
            await iterator.__anext__()


async def test_transaction_open_at_close_is_aborted(tmp_path: Path) -> None:
    path = tmp_path / "e"
    env = aiolmdb.open(path)
    db = env.open_db("records")
    await db.put(b"kept", b"1")
    entered = asyncio.Event()
    release = asyncio.Event()

    async def writer() -> None:
        async with env.transaction():
            await db.put(b"lost", b"2")
            entered.set()
            await release.wait()
            await db.put(b"after", b"3")

    task = asyncio.create_task(writer())
    await bounded(entered.wait())
    await bounded(env.close())
    release.set()
    with pytest.raises(aiolmdb.AiolmdbError):
        await bounded(task)
    assert raw_records(path, "records") == {b"kept": b"1"}


# -- one environment per path -------------------------------------------------


async def test_opening_the_same_path_twice_raises(tmp_path: Path) -> None:
    path = tmp_path / "e"
    env = aiolmdb.open(path)
    try:
        with pytest.raises(aiolmdb.AiolmdbError, match="already open") as excinfo:
            aiolmdb.open(path)
        assert str(path) in str(excinfo.value)
        # Another spelling of the same directory is the same environment.
        with pytest.raises(aiolmdb.AiolmdbError, match="already open"):
            aiolmdb.open(str(path) + os.sep)
        with pytest.raises(aiolmdb.AiolmdbError, match="already open"):
            aiolmdb.open(tmp_path / "e" / ".." / "e")
        # The first environment is unharmed.
        await env.open_db("x").put(b"k", b"v")
        assert await env.open_db("x").get(b"k") == b"v"
    finally:
        await bounded(env.close())
    again = aiolmdb.open(path)  # reopening after close is fine
    try:
        assert again.path() == os.fspath(path)
        assert await again.open_db("y").put(b"k", b"w")
    finally:
        await bounded(again.close())
    assert raw_records(path, "x") == {b"k": b"v"}
    assert raw_records(path, "y") == {b"k": b"w"}


async def test_different_paths_open_side_by_side(tmp_path: Path) -> None:
    async with aiolmdb.open(tmp_path / "a") as a, aiolmdb.open(tmp_path / "b") as b:
        await a.open_db("x").put(b"k", b"a")
        await b.open_db("x").put(b"k", b"b")
        assert await a.open_db("x").get(b"k") == b"a"
        assert await b.open_db("x").get(b"k") == b"b"


# -- engine options -----------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("max_pending_writes", 0),
        ("max_pending_writes", -5),
        ("max_batch_writes", 0),
        ("max_batch_writes", -1),
        ("inline_value_limit", -1),
        ("read_workers", 0),
        ("read_workers", -2),
    ],
)
async def test_bad_engine_options_raise_value_error(
    tmp_path: Path, option: str, value: int
) -> None:
    path = tmp_path / "e"
    kwargs: dict[str, Any] = {option: value}
    with pytest.raises(ValueError, match=option):
        aiolmdb.open(path, **kwargs)
    # The failed open left nothing behind: the path opens normally.
    async with aiolmdb.open(path) as env:
        assert await env.open_db("x").put(b"k", b"v")


@pytest.mark.parametrize("option", ["max_pending_writes", "max_batch_writes", "read_workers"])
async def test_failed_open_does_not_hold_the_path(tmp_path: Path, option: str) -> None:
    path = tmp_path / "e"
    kwargs: dict[str, Any] = {option: 0}
    with pytest.raises(ValueError) as excinfo:
        aiolmdb.open(path, **kwargs)
    assert option in str(excinfo.value)  # the exception is still referenced here
    async with aiolmdb.open(path) as env:
        assert await env.open_db("x").put(b"k", b"v")


@pytest.mark.lmdb_only
async def test_good_engine_options_are_accepted(open_env: EnvFactory) -> None:
    env = open_env(max_pending_writes=1, max_batch_writes=1, inline_value_limit=0, read_workers=1)
    db = env.open_db("x")
    results = await bounded(asyncio.gather(*(db.put(b"%d" % i, b"v" * 100) for i in range(50))))
    assert results == [True] * 50
    assert await db.get(b"7") == b"v" * 100  # inline_value_limit=0: read on a worker
    assert await db.count() == 50


# -- pass-throughs ------------------------------------------------------------


@pytest.mark.lmdb_only
async def test_pass_throughs(env: aiolmdb.AsyncEnvironment, env_path: Path) -> None:
    assert env.path() == os.fspath(env_path)
    db = env.open_db("records")
    await db.put_multi([(b"%d" % i, b"v") for i in range(10)])
    info = env.info()
    assert info["map_size"] == 256 * 1024 * 1024
    assert info["last_txnid"] >= 2
    assert {"last_pgno", "max_readers", "num_readers"} <= set(info)
    stat = env.stat()
    assert stat["entries"] == 1  # the main database holds the name "records"
    assert stat["psize"] > 0
    flags = env.flags()
    assert flags["readonly"] is False
    assert flags["subdir"] is True
    assert isinstance(env.max_key_size(), int)
    assert env.max_key_size() >= 511
    assert isinstance(env.readers(), str)
    assert isinstance(env.lmdb_env, lmdb.Environment)
    assert "open" in repr(env)


def test_version_is_three_ints() -> None:
    version = aiolmdb.version()
    assert isinstance(version, tuple)
    assert len(version) == 3
    assert all(isinstance(part, int) for part in version)
    assert version == tuple(lmdb.version()[:3])
    assert version >= (0, 9, 0)


@pytest.mark.lmdb_only
@pytest.mark.parametrize("compact", [False, True])
async def test_copy_makes_an_openable_backup(
    env: aiolmdb.AsyncEnvironment, tmp_path: Path, compact: bool
) -> None:
    db = env.open_db("records", key_coder=StringCoder(), value_coder=JSONCoder())
    await db.put_multi({f"k{i}": {"i": i} for i in range(300)})
    await db.delete_multi([f"k{i}" for i in range(0, 300, 2)])
    target = tmp_path / "backup"
    target.mkdir()
    await bounded(env.copy(target, compact=compact))
    await db.put("after-copy", {"i": -1})
    async with aiolmdb.open(target) as backup:
        names = [k async for k in backup.get_default_database().keys()]
        assert names == [b"records"]
    assert raw_records(target, "records") == {
        f"k{i}".encode(): b'{"i":%d}' % i for i in range(1, 300, 2)
    }


@pytest.mark.lmdb_only
async def test_sync_force(open_env: EnvFactory, tmp_path: Path) -> None:
    path = tmp_path / "nosync"
    env = open_env(path, sync=False)
    db = env.open_db("records")
    await db.put(b"k", b"v")
    await bounded(env.sync(force=True))
    await bounded(env.sync())
    await bounded(env.close())
    assert raw_records(path, "records") == {b"k": b"v"}


# -- databases ----------------------------------------------------------------


async def test_open_db_create_false_on_a_missing_db(env: aiolmdb.AsyncEnvironment) -> None:
    with pytest.raises(aiolmdb.DatabaseNotFoundError) as excinfo:
        await env.open_db_async("nowhere", create=False)
    assert "nowhere" in str(excinfo.value)
    assert isinstance(excinfo.value, aiolmdb.AiolmdbError)
    assert isinstance(excinfo.value, KeyError)
    # Nothing was created.
    assert await env.get_default_database().get(b"nowhere") is None
    with pytest.raises(aiolmdb.DatabaseNotFoundError):
        await env.open_db_async(b"nowhere", create=False)


async def test_open_db_create_false_on_an_existing_db(env: aiolmdb.AsyncEnvironment) -> None:
    await env.open_db("there").put(b"k", b"v")
    again = env.open_db("there", create=False)
    assert await again.get(b"k") == b"v"
    by_bytes = env.open_db(b"there", create=False)
    assert await by_bytes.get(b"k") == b"v"


@pytest.mark.parametrize("flag", ["dupfixed", "integerdup", "bogus"])
async def test_unsupported_open_db_flags_raise_type_error(
    env: aiolmdb.AsyncEnvironment, flag: str
) -> None:
    flags: dict[str, Any] = {flag: True}
    with pytest.raises(TypeError, match=flag):
        env.open_db("dups", **flags)
    with pytest.raises(aiolmdb.DatabaseNotFoundError):
        await env.open_db_async("dups", create=False)


@pytest.mark.needs("native_key_orders")
async def test_supported_open_db_flags(env: aiolmdb.AsyncEnvironment) -> None:
    rev = env.open_db("rev", reverse_key=True)
    await rev.put_multi([(b"ba", b"1"), (b"ab", b"2")])
    assert [k async for k in rev.keys()] == [b"ba", b"ab"]  # compared from the end


@pytest.mark.lmdb_only
async def test_default_database_lists_named_databases(env: aiolmdb.AsyncEnvironment) -> None:
    env.open_db("alpha")
    env.open_db(b"beta")
    default = env.get_default_database()
    assert isinstance(default, aiolmdb.AsyncDatabase)
    names = [k async for k in default.keys()]
    assert names == [b"alpha", b"beta"]
    assert await default.contains(b"alpha")
    same = env.open_db()
    assert [k async for k in same.keys()] == names


async def test_default_database_holds_data(env: aiolmdb.AsyncEnvironment) -> None:
    default = env.get_default_database()
    assert await default.put(b"plain", b"value")
    assert await env.get_default_database().get(b"plain") == b"value"
    assert await default.count() == 1


async def test_open_new_db_inside_a_transaction_raises(env: aiolmdb.AsyncEnvironment) -> None:
    db = env.open_db("records")
    async with env.transaction():
        await db.put(b"a", b"1")
        with pytest.raises(aiolmdb.TransactionError, match="'late'"):
            env.open_db("late")
        await db.put(b"b", b"2")  # the transaction goes on
    assert await db.get_multi([b"a", b"b"]) == {b"a": b"1", b"b": b"2"}
    # The environment keeps working, the database can be created afterwards.
    assert await db.put(b"c", b"3")
    late = env.open_db("late")
    assert await late.put(b"k", b"v")
    assert await late.get(b"k") == b"v"


async def test_open_new_db_from_another_task_while_a_transaction_is_open(
    env: aiolmdb.AsyncEnvironment,
) -> None:
    db = env.open_db("records")
    inside = asyncio.Event()
    done = asyncio.Event()

    async def hold() -> None:
        async with env.transaction():
            await db.put(b"a", b"1")
            inside.set()
            await done.wait()

    task = asyncio.create_task(hold())
    await bounded(inside.wait())
    with pytest.raises(aiolmdb.TransactionError):
        env.open_db("other")
    done.set()
    await bounded(task)
    assert await db.get(b"a") == b"1"


@pytest.mark.lmdb_only
async def test_open_new_db_right_after_a_transaction_block(open_env: EnvFactory) -> None:
    env = open_env(max_dbs=100)
    db = env.open_db("records")
    for i in range(50):
        async with env.transaction():
            await db.put(b"k", b"%d" % i)
        created = env.open_db(f"new{i}")
        assert await created.put(b"k", b"v")


async def test_open_existing_db_inside_a_write_transaction(tmp_path: Path) -> None:
    path = tmp_path / "e"
    async with aiolmdb.open(path) as env:
        await env.open_db("existing").put(b"k", b"v")
    async with aiolmdb.open(path) as env:
        async with env.transaction():
            try:  # refusing clearly (TransactionError) is acceptable, a raw LMDB error is not
                existing = env.open_db("existing")
                assert await bounded(existing.get(b"k")) == b"v"
            except aiolmdb.TransactionError as exc:
                assert "'existing'" in str(exc)
        assert await env.open_db("existing").get(b"k") == b"v"


async def test_open_existing_db_inside_a_read_snapshot(tmp_path: Path) -> None:
    path = tmp_path / "e"
    async with aiolmdb.open(path) as env:
        await env.open_db("existing").put(b"k", b"v")
    async with aiolmdb.open(path) as env:
        async with env.transaction(write=False):
            try:  # refusing clearly (TransactionError) is acceptable, a raw LMDB error is not
                existing = env.open_db("existing")
                assert await bounded(existing.get(b"k")) == b"v"
            except aiolmdb.TransactionError as exc:
                assert "'existing'" in str(exc)
        assert await env.open_db("existing").get(b"k") == b"v"


async def test_readonly_environment(tmp_path: Path) -> None:
    path = tmp_path / "e"
    async with aiolmdb.open(path) as env:
        await env.get_default_database().put_multi([(b"a", b"1"), (b"b", b"2")])
    async with aiolmdb.open(path, readonly=True) as ro:
        assert ro.flags()["readonly"] is True
        default = ro.get_default_database()
        assert await default.get(b"a") == b"1"
        assert await default.get_multi([b"a", b"b"]) == {b"a": b"1", b"b": b"2"}
        assert [k async for k in default.keys()] == [b"a", b"b"]
        assert await default.run(lambda t: t.get(b"b")) == b"2"
        async with ro.transaction(write=False):
            assert await default.count() == 2
        with pytest.raises(lmdb.ReadonlyError):
            await bounded(default.put(b"c", b"3"))
        with pytest.raises(lmdb.ReadonlyError):
            await bounded(default.put_multi([(b"c", b"3")]))
        with pytest.raises(lmdb.ReadonlyError):
            await bounded(default.delete(b"a"))
        with pytest.raises(lmdb.ReadonlyError):
            await bounded(default.run(lambda t: t.put(b"c", b"3"), write=True))
        with pytest.raises(lmdb.ReadonlyError):
            async with ro.transaction():
                await default.put(b"c", b"3")
        # Reads still work after the failed writes.
        assert await default.count() == 2
        assert await default.get(b"c") is None
    assert raw_records(path, None) == {b"a": b"1", b"b": b"2"}


@pytest.mark.parametrize("readonly", [False, True], ids=["readwrite", "readonly"])
async def test_reopened_environment_reads_existing_named_db(tmp_path: Path, readonly: bool) -> None:
    path = tmp_path / "e"
    async with aiolmdb.open(path) as env:
        await env.open_db("records").put_multi([(b"a", b"1"), (b"b", b"2")])
    async with aiolmdb.open(path, readonly=readonly) as again:
        records = again.open_db("records", create=False)
        assert await records.get(b"a") == b"1"
        assert await records.count() == 2
