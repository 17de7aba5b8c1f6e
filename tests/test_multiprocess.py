"""Several processes sharing one environment.

Children are ``tests/helpers/mp_worker.py`` programs run with ``sys.executable``;
each prints ``READY`` once open and starts working when the parent writes a
line to its stdin, so that all of them run at once.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import pytest
from conftest import bounded
from helpers.mp_worker import ACCOUNTS, INITIAL, counter_key

import aiolmdb
from aiolmdb.coders import UInt64Coder

# Several processes on one environment, and their map growth: what LMDB does itself.
pytestmark = pytest.mark.lmdb_only

HELPER = Path(__file__).parent / "helpers" / "mp_worker.py"
PROCESSES = 4
INCREMENTS = 150
TASKS_PER_PROCESS = 3
CHILD_TIMEOUT = 60.0


class Child:
    """A helper process with line-oriented stdout read under a timeout."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(HELPER), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=0,
        )
        self._buffer = b""

    def read_line(self, timeout: float = CHILD_TIMEOUT) -> str:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"child {self.proc.args!r} printed nothing in {timeout} s")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                data = os.read(fd, 4096)
                if not data:
                    raise AssertionError(f"child ended early: {self.stderr()}")
                self._buffer += data
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode()

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"go\n")
        self.proc.stdin.flush()

    def stderr(self) -> str:
        self.proc.kill()
        _, err = self.proc.communicate(timeout=10)
        return err.decode()[-3000:]

    def finish(self) -> None:
        """Wait for a clean exit."""
        code = self.proc.wait(timeout=CHILD_TIMEOUT)
        assert code == 0, f"child exited with {code}: {self.stderr()}"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@contextmanager
def children(*argvs: list[str]) -> Iterator[list[Child]]:
    started: list[Child] = []
    try:
        for argv in argvs:
            started.append(Child(*argv))
        for child in started:
            assert child.read_line() == "READY"
        yield started
    finally:
        for child in started:
            child.kill()


async def test_counters_incremented_by_four_processes_are_exact(tmp_path: Path) -> None:
    path = str(tmp_path / "env")
    async with aiolmdb.open(path, map_size=16 * 1024 * 1024) as env:
        env.open_db("counters")
        env.open_db("mirror")
    argvs = [
        ["counter", path, str(w), str(INCREMENTS), str(TASKS_PER_PROCESS)] for w in range(PROCESSES)
    ]
    with children(*argvs) as workers:
        for worker in workers:
            worker.go()
        for worker in workers:
            assert worker.read_line() == "DONE"
            worker.finish()
    async with aiolmdb.open(path, map_size=16 * 1024 * 1024) as env:
        counters = env.open_db("counters", value_coder=UInt64Coder())
        mirror = env.open_db("mirror", value_coder=UInt64Coder())
        assert await counters.get(b"total") == PROCESSES * INCREMENTS
        assert await mirror.get(b"mirror") == PROCESSES * INCREMENTS
        for w in range(PROCESSES):
            assert await counters.get(counter_key(w)) == INCREMENTS


async def test_read_snapshot_stays_consistent_while_another_process_commits(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "env")
    env = aiolmdb.open(path, map_size=16 * 1024 * 1024)
    try:
        accounts = env.open_db("accounts", key_coder=UInt64Coder(), value_coder=UInt64Coder())
        await accounts.put_multi({i: INITIAL for i in range(ACCOUNTS)})
        total = ACCOUNTS * INITIAL
        with children(["transfer", path, "1.5"]) as (writer,):
            writer.go()
            snapshots = changed_during_snapshot = 0
            deadline = time.monotonic() + 1.2
            while time.monotonic() < deadline:
                async with env.transaction(write=False):
                    first = await bounded(accounts.get_multi(range(ACCOUNTS)))
                    txnid = env.info()["last_txnid"]
                    seen = []
                    for i in range(ACCOUNTS):
                        seen.append(await bounded(accounts.get(i)))
                        await asyncio.sleep(0.002)  # the other process commits meanwhile
                    scanned = [v async for v in accounts.values()]
                    if env.info()["last_txnid"] > txnid:
                        changed_during_snapshot += 1
                    assert seen == [first[i] for i in range(ACCOUNTS)]
                    assert scanned == seen
                    assert sum(v or 0 for v in seen) == total
                snapshots += 1
            line = writer.read_line()
            assert line.startswith("DONE")
            writer.finish()
            commits = int(line.split()[1])
        assert commits > 0
        assert changed_during_snapshot > 0, "no commit happened while a snapshot was open"
        # Outside a snapshot the last state is visible and still sums up.
        final = await accounts.get_multi(range(ACCOUNTS))
        assert sum(v or 0 for v in final.values()) == total
        assert snapshots > 0
    finally:
        await bounded(env.close())


class SmallEnv(NamedTuple):
    path: str
    env: aiolmdb.AsyncEnvironment
    db: aiolmdb.AsyncDatabase[bytes, bytes]


@pytest.fixture
async def small(tmp_path: Path) -> AsyncIterator[SmallEnv]:
    """An environment with a 1 MiB map whose database "mine" holds b"before"; closed after."""
    path = str(tmp_path / "env")
    # Adopting another process's growth waits half a second at most for readers.
    env = aiolmdb.open(path, map_size=1024 * 1024, map_resize_wait=0.5)
    try:
        db = env.open_db("mine")
        await db.put(b"before", b"1")
        yield SmallEnv(path, env, db)
    finally:
        await bounded(env.close())


def grow_in_another_process(path: str) -> None:
    """Have a child process write 8 MiB into the environment, growing its 1 MiB map."""
    with children(["grow", path, "8"]) as (grower,):
        grower.go()
        line = grower.read_line()
        grower.finish()
    assert int(line.split()[1]) > 1024 * 1024  # the child grew the map


@pytest.mark.parametrize("how", ["put", "transaction", "open_db"])
async def test_write_after_another_process_grew_the_map(small: SmallEnv, how: str) -> None:
    path, env, db = small
    grow_in_another_process(path)
    if how == "put":
        assert await bounded(db.put(b"after", b"2"))
    elif how == "open_db":
        other = env.open_db("opened-after-growth")
        assert await bounded(other.put(b"after", b"2"))
        assert await other.get(b"after") == b"2"
        assert await bounded(db.put(b"after", b"2"))
    else:
        async with env.transaction():
            await db.put(b"after", b"2")
    assert await db.get(b"after") == b"2"
    assert await db.get(b"before") == b"1"


async def test_read_after_another_process_grew_the_map(small: SmallEnv) -> None:
    path, env, db = small
    grow_in_another_process(path)
    assert await db.get(b"before") == b"1"  # a read adopts the grown map
    bulk = env.open_db("bulk")
    assert await bulk.get(b"%08d" % 5) == bytes([5]) * 4000
    assert await bulk.count() == 8 * 1024 * 1024 // 4096
    # Once a read adopted the new size, writes work again.
    assert await bounded(db.put(b"after", b"2"))


async def test_a_read_while_a_snapshot_blocks_adopting_a_grown_map(
    small: SmallEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The event loop never waits for the snapshot to end: the read moves to a
    # reader thread, which waits a bounded time and then fails clearly.
    path, env, db = small
    async with env.transaction(write=False):
        grow_in_another_process(path)
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.create_task(tick())
        outside = contextvars.Context()  # a read of its own, not the snapshot's
        with pytest.raises(aiolmdb.MapNotAdoptedError, match="snapshot"):
            await bounded(outside.run(asyncio.create_task, db.get(b"before")))
        ticker.cancel()
        assert ticks >= 10  # the loop ran while the read waited
    assert await bounded(db.get(b"before")) == b"1"  # adopted once the snapshot ended


async def test_a_snapshot_entered_while_a_read_runs_adopts_a_grown_map(small: SmallEnv) -> None:
    path, env, db = small
    release = threading.Event()

    def slow_read(txn: aiolmdb.DatabaseTxn[bytes, bytes]) -> bytes | None:
        release.wait(10)
        return txn.get(b"before")

    reading = asyncio.create_task(db.run(slow_read))  # holds a reader thread's transaction
    await asyncio.sleep(0.1)
    grow_in_another_process(path)
    asyncio.get_running_loop().call_later(0.3, release.set)
    async with env.transaction(write=False):  # waits on a reader thread, not the loop
        assert await db.get(b"before") == b"1"
    assert await bounded(reading) == b"1"
