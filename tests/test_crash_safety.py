"""Crash safety: a writer process is killed with SIGKILL at random moments.

A child (``tests/helpers/crash_writer.py``, run with ``sys.executable``)
writes through aiolmdb from many tasks at once: single ``put``s, ``put_multi``
batches and ``env.transaction()`` blocks across collections (transfers that
keep the accounts' sum, records with a mirror in a second database). It
prints each acknowledgment after its ``await`` returned. The parent kills it
at a random moment, reopens the environment with aiolmdb, checks it and
closes it before the next child starts. After every kill:

- the environment opens without error;
- every acknowledged write is there with its exact value;
- no write or transaction is visible in part (batch sizes, the sum of the
  balances, balances equal to the replayed transfer log, mirrors).

The quick mode kills 30 times. Set ``AIOLMDB_LONG_TESTS=1`` for the long
mode (300 kills, ``AIOLMDB_CRASH_KILLS=N`` to choose the count).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.crash_writer import (
    ACCOUNTS,
    INITIAL_BALANCE,
    Accounts,
    Mirrors,
    Records,
    Transfers,
    batch_items,
    batch_key,
    record_for,
    single_value,
)

import aiolmdb
from aiolmdb.coders import StringCoder

# SIGKILLed writers and stale reader slots: what LMDB does itself.
pytestmark = pytest.mark.lmdb_only

HELPER = Path(__file__).parent / "helpers" / "crash_writer.py"
LONG = os.environ.get("AIOLMDB_LONG_TESTS") == "1"
KILLS = int(os.environ.get("AIOLMDB_CRASH_KILLS", "300" if LONG else "30"))
READY_TIMEOUT = 20.0


class Acked:
    """What the children acknowledged, over every run so far."""

    def __init__(self) -> None:
        self.singles: set[str] = set()
        self.batches: set[tuple[int, int, int]] = set()
        self.transfers: set[str] = set()
        self.records: set[str] = set()
        self.ready_runs = 0

    def read(self, out: Path) -> None:
        lines = out.read_text().split("\n")
        # The last line may be cut by the kill: only complete lines count.
        for line in lines[:-1]:
            kind, _, rest = line.partition(" ")
            if kind == "READY":
                self.ready_runs += 1
            elif kind == "S":
                self.singles.add(rest)
            elif kind == "M":
                run, batch, n = (int(x) for x in rest.split())
                self.batches.add((run, batch, n))
            elif kind == "T":
                run, seq = (int(x) for x in rest.split())
                self.transfers.add(f"t-{run:04d}-{seq:06d}")
            elif kind == "R":
                self.records.add(rest)
            elif line:
                raise AssertionError(f"unexpected output line from the child: {line!r}")


def wait_for_line(out: Path, proc: subprocess.Popen[bytes], deadline: float) -> bool:
    """Wait until the child printed READY (False if it died or took too long)."""
    while time.monotonic() < deadline:
        if out.exists() and out.read_bytes().startswith(b"READY\n"):
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.005)
    return False


async def check_environment(path: Path, acked: Acked) -> dict[str, int]:
    """Open the environment, check every invariant, close it; return counts."""
    env = aiolmdb.open(path, map_size=256 * 1024)
    try:
        assert env.info()["map_size"] > 0
        singles = env.open_db("singles", key_coder=StringCoder())
        batches_db = env.open_db("batches", key_coder=StringCoder())
        accounts, log = Accounts(env), Transfers(env)
        records, mirrors = Records(env), Mirrors(env)
        async with env.transaction(write=False):
            stored_singles = {k: v async for k, v in singles.items()}
            stored_batches = [k async for k in batches_db.keys()]
            balances = {k: a.balance async for k, a in accounts.items()}
            logged = {k: t async for k, t in log.items()}
            stored_records = {k: r async for k, r in records.items()}
            stored_mirrors = {k: r async for k, r in mirrors.items()}
            acked_batch_values = await batches_db.get_multi(
                [batch_key(r, b, n, i) for r, b, n in acked.batches for i in range(n)]
            )

        # Single puts: every acknowledged one, exact value; nothing torn.
        missing = acked.singles - stored_singles.keys()
        assert not missing, f"{len(missing)} acknowledged puts lost, e.g. {sorted(missing)[:3]}"
        for key, value in stored_singles.items():
            assert value == single_value(key), f"value of {key!r} is wrong"

        # put_multi: every acknowledged batch complete, every batch all or nothing.
        expected_batch_values = {k: v for r, b, n in acked.batches for k, v in batch_items(r, b, n)}
        assert acked_batch_values == expected_batch_values
        by_batch: dict[str, set[int]] = {}
        for key in stored_batches:
            _, run, batch, n, i = key.split("-")
            by_batch.setdefault(f"{run}-{batch}-{n}", set()).add(int(i))
        for name, indices in by_batch.items():
            size = int(name.split("-")[2])
            assert indices == set(range(size)), f"put_multi batch {name} is partly stored"

        # Transactions: the sum is kept, balances equal the replayed log.
        if balances:
            assert sorted(balances) == list(range(ACCOUNTS))
            assert sum(balances.values()) == ACCOUNTS * INITIAL_BALANCE
            replayed = dict.fromkeys(range(ACCOUNTS), INITIAL_BALANCE)
            for transfer in logged.values():
                replayed[transfer.source] -= transfer.amount
                replayed[transfer.target] += transfer.amount
            assert balances == replayed, "a transfer is visible in part"
        else:
            assert not logged
        lost = acked.transfers - logged.keys()
        assert not lost, f"acknowledged transfers lost: {sorted(lost)[:3]}"

        # Mirrored records: both or neither, every acknowledged one present.
        assert stored_records == stored_mirrors, "a record and its mirror disagree"
        for key, record in stored_records.items():
            assert record == record_for(key)
        lost = acked.records - stored_records.keys()
        assert not lost, f"acknowledged transactions lost: {sorted(lost)[:3]}"
        return {
            "singles": len(stored_singles),
            "batches": len(by_batch),
            "transfers": len(logged),
            "records": len(stored_records),
        }
    finally:
        await env.close()


def test_sigkill_at_random_moments_loses_nothing_acknowledged(tmp_path: Path) -> None:
    path = tmp_path / "env"
    rng = random.Random(int(os.environ.get("AIOLMDB_CRASH_SEED", "20240611")))
    acked = Acked()
    counts: dict[str, int] = {}
    killed_before_ready = 0
    for run in range(KILLS):
        out = tmp_path / f"run{run}.out"
        with out.open("wb") as sink:
            proc = subprocess.Popen(
                [sys.executable, str(HELPER), str(path), str(run)],
                stdout=sink,
                stderr=subprocess.PIPE,
            )
        try:
            if rng.random() < 0.1:
                # Kill early: during interpreter start-up, open or set-up.
                time.sleep(rng.uniform(0.0, 0.3))
                killed_before_ready += 1
            else:
                ready = wait_for_line(out, proc, time.monotonic() + READY_TIMEOUT)
                if not ready:
                    proc.kill()
                    _, err = proc.communicate(timeout=10)
                    raise AssertionError(
                        f"run {run}: the child never became ready: {err.decode()[-2000:]}"
                    )
                time.sleep(rng.uniform(0.0, 0.35))
            assert proc.poll() is None, (
                f"run {run}: the child ended by itself: {proc.communicate()[1].decode()[-2000:]}"
            )
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            assert proc.returncode == -signal.SIGKILL
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
            if proc.stderr is not None:
                proc.stderr.close()
        acked.read(out)
        counts = asyncio.run(check_environment(path, acked))
    # The run must have exercised every kind of write.
    assert acked.ready_runs >= KILLS - killed_before_ready - 1
    assert acked.singles and acked.batches and acked.transfers and acked.records
    assert min(counts.values()) > 0, counts


async def put_one(path: Path) -> None:
    async with aiolmdb.open(path) as env:
        await env.get_default_database().put(b"k", b"v")


async def check_readers(path: Path, pid: int) -> None:
    async with aiolmdb.open(path) as env:
        assert str(pid) not in env.readers().split()
        assert await env.get_default_database().get(b"k") == b"v"


def test_stale_reader_slots_of_a_killed_process_are_cleared(tmp_path: Path) -> None:
    """A process killed while reading leaves a reader slot; reopening frees it."""
    path = tmp_path / "env"
    asyncio.run(put_one(path))
    code = (
        "import sys, lmdb\n"
        f"env = lmdb.open({str(path)!r}, max_dbs=128)\n"
        "txn = env.begin()\n"
        "print('HOLDING', flush=True)\n"
        "sys.stdin.read()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"HOLDING"
        proc.kill()
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()
    asyncio.run(check_readers(path, proc.pid))
