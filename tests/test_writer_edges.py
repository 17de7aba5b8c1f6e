"""The writer thread and the read gate at their edges: user code raising
StopIteration, map growth that fails or waits for readers, batches with many
failing writes, a full disk."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import lmdb
import pytest
from conftest import EnvFactory, WriterGate, abort_orphans, bounded, detached
from pydantic import BaseModel

import aiolmdb
from aiolmdb.coders import StringCoder, UInt32Coder, UInt64Coder
from aiolmdb.models import Collection, Index

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
    env: aiolmdb.AsyncEnvironment,
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
        await abort_orphans(env)
        if outside is not None and not outside.done():
            outside.cancel()


# -- a batch with many failing writes is replayed in linear time ---------------


@pytest.mark.needs("serial_writes")  # a group commit's replays, in call order
async def test_a_batch_with_many_failures_calls_each_write_at_most_twice(
    env: aiolmdb.AsyncEnvironment,
) -> None:
    db = env.open_db("data", key_coder=UInt32Coder())
    count = 300
    await db.put_multi({i: b"old" for i in range(2 * count)})
    calls = [0] * (2 * count)

    def bump(i: int) -> Any:
        def fn(old: bytes) -> bytes:
            calls[i] += 1
            if i % 2:
                raise ValueError(f"refused {i}")
            return old + b"+"

        return fn

    gate = WriterGate(env.open_db("gate"))
    await gate.hold()
    tasks = [asyncio.ensure_future(db.update(i, bump(i))) for i in range(2 * count)]
    await asyncio.sleep(0.05)  # every update is queued behind the gate: one batch
    await gate.release()
    outcomes = await bounded(asyncio.gather(*tasks, return_exceptions=True), timeout=20)
    for i, outcome in enumerate(outcomes):
        if i % 2:
            assert isinstance(outcome, ValueError) and str(outcome) == f"refused {i}"
        else:
            assert outcome == b"old+"
    assert max(calls) <= 2, f"{sum(calls)} calls for {2 * count} writes"
    stored = await db.get_multi(range(2 * count))
    assert stored == {i: b"old" if i % 2 else b"old+" for i in range(2 * count)}


class Account(BaseModel):
    id: int
    email: str


class Accounts(Collection[int, Account]):
    key_coder = UInt64Coder()
    name = "accounts"
    by_email = Index(lambda a: a.email, StringCoder(), unique=True)


@pytest.mark.needs("serial_writes")  # a group commit's replays, in call order
async def test_a_write_failing_half_way_after_an_earlier_failure_leaves_nothing(
    env: aiolmdb.AsyncEnvironment,
) -> None:
    # Once a batch has seen a failure, a later write that fails half way
    # (after storing part of its records) must still leave nothing behind.
    accounts = await Accounts.open(env)
    gate = WriterGate(env.open_db("gate"))
    await gate.hold()
    first = asyncio.ensure_future(accounts.put(1, Account(id=1, email="a@x")))
    taken = asyncio.ensure_future(accounts.put(2, Account(id=2, email="a@x")))
    good = [
        asyncio.ensure_future(accounts.put(i, Account(id=i, email=f"{i}@x"))) for i in range(3, 9)
    ]
    half_way = asyncio.ensure_future(
        accounts.put_multi([(10, Account(id=10, email="p@x")), (11, Account(id=11, email="a@x"))])
    )
    last = asyncio.ensure_future(accounts.put(12, Account(id=12, email="12@x")))
    await asyncio.sleep(0.05)
    await gate.release()
    await bounded(asyncio.gather(first, *good, last))
    with pytest.raises(aiolmdb.UniqueViolationError, match="a@x"):
        await bounded(taken)
    with pytest.raises(aiolmdb.UniqueViolationError, match="a@x"):
        await bounded(half_way)
    assert await accounts.get(10) is None
    assert await accounts.by_email.get("p@x") is None
    assert await accounts.count() == 8
    assert (await accounts.by_email.get("a@x")) == Account(id=1, email="a@x")


# -- scans do not starve map growth --------------------------------------------


@pytest.mark.needs("map_size")
async def test_scanning_tasks_do_not_starve_map_growth(
    open_env: EnvFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = open_env(map_size=MiB, map_resize_wait=1.0)
    scanned = env.open_db("scanned", key_coder=UInt32Coder())
    await scanned.put_multi({i: b"x" * 100 for i in range(3000)})
    data = env.open_db("data", key_coder=UInt32Coder())
    stopping = asyncio.Event()
    rounds = [0]

    async def scanner() -> None:
        while not stopping.is_set():
            async for _ in scanned.items():
                pass
            rounds[0] += 1

    scanners = [asyncio.create_task(scanner()) for _ in range(6)]
    try:
        await asyncio.sleep(0.1)
        for start in range(0, 40, 10):
            written = await bounded(
                data.put_multi({i: b"v" * 100_000 for i in range(start, start + 10)}), timeout=20
            )
            assert written == 10
        assert rounds[0] > 0
    finally:
        stopping.set()
        await bounded(asyncio.gather(*scanners))
    assert env.info()["map_size"] >= 4 * MiB
    assert await data.count() == 40
    assert await scanned.count() == 3000


@pytest.mark.needs("map_size")
async def test_a_read_on_the_loop_during_a_pending_resize_still_answers(
    open_env: EnvFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A snapshot holds the resize back; a plain get meanwhile goes to a reader
    # thread (the loop never blocks) and answers once the resize is done.
    env = open_env(map_size=MiB, map_resize_wait=3.0)
    db = env.open_db("data", key_coder=UInt32Coder())
    await db.put(0, b"zero")
    async with env.transaction(write=False):
        await db.get(0)
        writing = detached(db.put_multi({i: b"v" * 100_000 for i in range(1, 40)}))
        await asyncio.sleep(0.3)  # the writer now waits for the snapshot to end
        reading = detached(db.get(0))
        ticks = 0
        for _ in range(5):
            await asyncio.sleep(0.01)
            ticks += 1
        assert ticks == 5  # the loop is not blocked
    assert await bounded(writing, timeout=20) == 39
    assert await bounded(reading) == b"zero"


@pytest.mark.lmdb_only
async def test_reads_waiting_for_a_resize_do_not_keep_a_snapshot_from_ending(
    open_env: EnvFactory,
) -> None:
    # Plain reads of other tasks, on reader threads, come while the resize
    # waits for the snapshot: they must leave the snapshot's own next read
    # (and its end) a thread, or the resize waits in vain and the write fails.
    env = open_env(map_size=MiB, read_workers=2)
    db = env.open_db("data")
    await db.put(b"a", b"x" * 100)
    order: list[str] = []

    async def snapshot_owner() -> None:
        async with env.transaction(write=False) as snapshot:
            await asyncio.sleep(0.3)  # the growth waits for this snapshot meanwhile
            assert await db.run(lambda t: t.get(b"a"), txn=snapshot) == b"x" * 100
        order.append("snapshot ended")

    async def big_write() -> None:
        await asyncio.sleep(0.1)
        await db.put(b"big", b"y" * (3 * MiB))  # the map must grow for it
        order.append("big write committed")

    async def plain_read() -> None:
        await asyncio.sleep(0.2)
        assert await db.run(lambda t: t.get(b"a")) == b"x" * 100  # on a reader thread
        order.append("plain read")

    await bounded(asyncio.gather(snapshot_owner(), big_write(), plain_read(), plain_read()), 4)
    assert order[0] == "snapshot ended"
    assert set(order) == {"snapshot ended", "big write committed", "plain read"}
    assert await db.get(b"big") == b"y" * (3 * MiB)


# -- growing the map fails -----------------------------------------------------

GROWTH_FAILS = textwrap.dedent(
    """
    import asyncio, resource, sys
    import lmdb
    import aiolmdb

    def vm_size() -> int:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmSize")

    async def main() -> None:
        env = aiolmdb.open(sys.argv[1], map_size=1 << 20, read_workers=1)
        db = env.open_db("data")
        await db.put(b"seed", b"0")
        await db.run(lambda txn: None)  # the reader thread exists
        # Little address space left: the map cannot grow far.
        limit = vm_size() + 48 * (1 << 20)
        resource.setrlimit(resource.RLIMIT_AS, (limit, resource.RLIM_INFINITY))
        value = b"v" * (256 * 1024)
        for i in range(400):
            try:
                await asyncio.wait_for(db.put(b"%04d" % i, value), 5)
            except TimeoutError:
                print("HANG", i, flush=True)
                return
            except lmdb.MapFullError as exc:
                print("REFUSED", i, exc, flush=True)
                break
        else:
            print("NEVER FULL", flush=True)
            return
        for step in ("small write", "read"):
            try:
                if step == "small write":
                    ok = await asyncio.wait_for(db.put(b"small", b"s"), 5)
                else:
                    ok = await asyncio.wait_for(db.get(b"small"), 5) == b"s"
                print(step.upper(), "OK" if ok else "WRONG", flush=True)
            except TimeoutError:
                print(step.upper(), "HANG", flush=True)
            except Exception as exc:
                print(step.upper(), "FAILED", type(exc).__name__, exc, flush=True)
        await asyncio.wait_for(env.close(), 5)
        print("CLOSED", flush=True)

    asyncio.run(main())
    """
)


def test_growth_that_fails_fails_the_write_and_the_writer_serves_on(tmp_path: Path) -> None:
    script = tmp_path / "grow.py"
    script.write_text(GROWTH_FAILS)
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "env")],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    lines = done.stdout.splitlines()
    assert lines, done.stderr
    assert lines[0].startswith("REFUSED"), done.stdout + done.stderr
    assert "grow" in lines[0] and "memory" in lines[0].lower(), lines[0]
    assert lines[1:] == ["SMALL WRITE OK", "READ OK", "CLOSED"], done.stdout + done.stderr


# -- a full disk ---------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs (skips the test where mounting is not possible)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    try:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
            check=True,
            capture_output=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot mount a tmpfs here: {exc}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=10)


@pytest.fixture
async def disk_env(small_disk: Path) -> AsyncIterator[aiolmdb.AsyncEnvironment]:
    environment = aiolmdb.open(small_disk / "env", map_size=64 * MiB)
    try:
        yield environment
    finally:
        await bounded(environment.close())


def put_value(key: int, value: bytes) -> Callable[[aiolmdb.DatabaseTxn[int, bytes]], bool]:
    return lambda txn: txn.put(key, value)


@pytest.mark.parametrize("how", ["put", "run", "transaction"])
async def test_a_full_disk_raises_disk_full_error(
    small_disk: Path, disk_env: aiolmdb.AsyncEnvironment, how: str
) -> None:
    ballast = small_disk / "ballast"
    ballast.write_bytes(b"b" * MiB)
    db = disk_env.open_db("data", key_coder=UInt32Coder())
    await db.put(0, b"first")
    value = os.urandom(256 * 1024)
    stored = 0
    with pytest.raises(aiolmdb.DiskFullError) as info:
        for i in range(1, 100):
            if how == "put":
                await bounded(db.put(i, value))
            elif how == "run":
                await bounded(db.run(put_value(i, value), write=True))
            else:
                async with disk_env.transaction():
                    await bounded(db.put(i, value))
            stored = i
    error = info.value
    assert str(small_disk / "env") in str(error)
    assert "full" in str(error)
    assert isinstance(error.__cause__, lmdb.Error)
    assert 0 < stored < 16
    # Data committed before is intact; once space is freed, writes work again.
    assert await db.get(0) == b"first"
    assert await db.get(stored) == value
    assert await db.get(stored + 1) is None
    ballast.unlink()
    assert await bounded(db.put(stored + 1, value))
    assert await db.get(stored + 1) == value
    with contextlib.suppress(FileNotFoundError):
        ballast.unlink()
