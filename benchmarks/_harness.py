"""Measurement plumbing shared by every workload: sizes, timing, rows, data, environments."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import os
import random
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import aiosqlite
import lmdb

import aiolmdb

__all__ = [
    "AIOLMDB_MEMORY",
    "MAP_SIZE",
    "Check",
    "Row",
    "Sizes",
    "Skipped",
    "aiolmdb_env",
    "chunked",
    "lateness_stats",
    "make_keys",
    "make_pairs",
    "make_values",
    "median_sample",
    "memory_env",
    "sqlite_db",
    "sync_env",
    "temp_dir",
    "ticker",
    "timed",
]

#: Map size of every LMDB environment (sparse file: costs nothing until written).
MAP_SIZE = 4 << 30
#: Name of the database every raw-bytes LMDB contender uses (named, like aiolmdb's).
KV_DB = b"kv"
#: The contender running aiolmdb over its in-memory engine: what the API costs
#: without storage (informative, so it never carries a target).
AIOLMDB_MEMORY = "aiolmdb :memory:"
KEY_BYTES = 16
VALUE_BYTES = 100


@dataclass(frozen=True)
class Sizes:
    """How big each workload is; ``quick()`` is the < 60 s smoke-test variant."""

    w1_records: int = 100_000
    w1_gets: int = 100_000
    w1_slow_gets: int = 5_000  # lmdb.aio, executor, aiosqlite: hundreds of µs per get
    w2_records: int = 100_000
    w2_gets: int = 100_000
    w2_slow_gets: int = 5_000
    w3_tasks: int = 1_000
    w3_puts_per_task: int = 100
    w3_slow_tasks: int = 1_000
    w3_slow_puts_per_task: int = 2  # 2k puts: one durable commit each
    w4_puts: int = 1_000
    w5_records: int = 1_000_000
    w5_chunk: int = 10_000
    w5_sqlite_records: int = 200_000
    w6_records: int = 100_000
    w7_records: int = 100_000
    w7_tasks: int = 100
    w7_ops_per_task: int = 1_000
    w7_slow_ops_per_task: int = 50
    w9_records: int = 20_000
    w10_accounts: int = 1_000
    w10_hot_keys: int = 10
    w10_tasks: int = 50
    w10_txns_per_task: int = 200
    w10_warm_per_task: int = 10
    reps: int = 3
    quick: bool = False

    @classmethod
    def quick_mode(cls) -> Sizes:
        return cls(
            w1_records=10_000,
            w1_gets=10_000,
            w1_slow_gets=500,
            w2_records=10_000,
            w2_gets=10_000,
            w2_slow_gets=500,
            w3_tasks=1_000,
            w3_puts_per_task=10,
            w3_slow_tasks=200,
            w3_slow_puts_per_task=1,
            w4_puts=100,
            w9_records=2_000,
            w10_tasks=10,
            w10_txns_per_task=5,
            w10_warm_per_task=1,
            w5_records=100_000,
            w5_chunk=10_000,
            w5_sqlite_records=20_000,
            w6_records=10_000,
            w7_records=10_000,
            w7_tasks=100,
            w7_ops_per_task=100,
            w7_slow_ops_per_task=10,
            reps=3,
            quick=True,
        )


class Skipped(Exception):
    """A workload cannot run here (a server or a driver is missing): the run reports it,
    with the reason, and is not failed by it."""


@dataclass
class Check:
    """A target from the issue, evaluated on one row."""

    target: str  # e.g. "≤ 3x sync µs/op"
    measured: str  # the measured value in the target's own terms, e.g. "2.1x sync"
    value: float
    threshold: float
    passed: bool


@dataclass
class Row:
    """One contender of one workload."""

    workload: str
    contender: str
    ops: int
    seconds: float  # median over the repetitions
    samples: list[float] = field(default_factory=list)
    note: str = ""
    check: Check | None = None
    vs_aiolmdb: float | None = None  # aiolmdb ops/s ÷ this row's ops/s
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.seconds if self.seconds > 0 else math.inf

    @property
    def us_per_op(self) -> float:
        return self.seconds / self.ops * 1e6 if self.ops else math.nan

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["ops_per_s"] = self.ops_per_s
        data["us_per_op"] = self.us_per_op
        return data


def at_least(value: float, threshold: float, target: str, measured: str) -> Check:
    return Check(target, measured, value, threshold, value >= threshold)


def at_most(value: float, threshold: float, target: str, measured: str) -> Check:
    return Check(target, measured, value, threshold, value <= threshold)


# -- timing -----------------------------------------------------------------


async def timed(work: Callable[[], Awaitable[object]]) -> float:
    """Seconds ``work()`` takes, after a garbage collection so earlier garbage is not billed."""
    gc.collect()
    start = time.perf_counter()
    await work()
    return time.perf_counter() - start


async def median_sample(
    reps: int, sample: Callable[[], Awaitable[float]]
) -> tuple[float, list[float]]:
    """Run ``sample()`` ``reps`` times; return the median and every sample."""
    samples = [await sample() for _ in range(reps)]
    return statistics.median(samples), samples


async def ticker(stop: asyncio.Event, lateness: list[float], period: float = 0.001) -> None:
    """Sleep ``period`` over and over; record how late each wake-up was (seconds)."""
    while not stop.is_set():
        start = time.perf_counter()
        await asyncio.sleep(period)
        lateness.append(time.perf_counter() - start - period)


def lateness_stats(lateness: Sequence[float]) -> tuple[float, float, float]:
    """(p50, p99, max) of the lateness samples, in seconds."""
    if not lateness:
        return math.nan, math.nan, math.nan
    ordered = sorted(lateness)
    p99 = ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]
    return statistics.median(ordered), p99, ordered[-1]


# -- data ---------------------------------------------------------------------


def make_keys(n: int, seed: int) -> list[bytes]:
    """``n`` distinct random 16-byte keys (deterministic for a seed)."""
    rng = random.Random(seed)
    keys: list[bytes] = []
    seen: set[bytes] = set()
    while len(keys) < n:
        blob = rng.randbytes(KEY_BYTES * (n - len(keys)))
        for i in range(0, len(blob), KEY_BYTES):
            key = blob[i : i + KEY_BYTES]
            if key not in seen:
                seen.add(key)
                keys.append(key)
    return keys


def make_values(n: int, seed: int) -> list[bytes]:
    """``n`` random 100-byte values (a pool of at most 4096 distinct ones, cycled)."""
    rng = random.Random(seed)
    pool_size = min(n, 4096)
    blob = rng.randbytes(VALUE_BYTES * pool_size)
    pool = [blob[i : i + VALUE_BYTES] for i in range(0, len(blob), VALUE_BYTES)]
    return [pool[i % pool_size] for i in range(n)]


def make_pairs(n: int, seed: int) -> list[tuple[bytes, bytes]]:
    return list(zip(make_keys(n, seed), make_values(n, seed + 1), strict=True))


def chunked(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


# -- environments -----------------------------------------------------------------


@contextlib.contextmanager
def temp_dir(label: str) -> Iterator[str]:
    """A fresh directory on disk (not tmpfs: durability costs are part of the measure)."""
    with tempfile.TemporaryDirectory(prefix=f"aiolmdb-bench-{label}-") as path:
        yield path


def sync_env(path: str) -> lmdb.Environment:
    """A py-lmdb environment with the defaults (sync=True) and a 4 GiB map."""
    return lmdb.open(path, map_size=MAP_SIZE, max_dbs=8)


def populate(path: str, pairs: Sequence[tuple[bytes, bytes]], name: bytes = KV_DB) -> None:
    """Load ``pairs`` into database ``name`` of the environment at ``path``, then close it."""
    env = sync_env(path)
    try:
        db = env.open_db(name)
        with env.begin(write=True) as txn, txn.cursor(db) as cursor:
            cursor.putmulti(pairs)
    finally:
        env.close()


@contextlib.asynccontextmanager
async def aiolmdb_env(path: str) -> AsyncIterator[aiolmdb.AsyncEnvironment]:
    env = aiolmdb.open(path, map_size=MAP_SIZE)
    try:
        yield env
    finally:
        await env.close()


@contextlib.asynccontextmanager
async def memory_env(
    pairs: Sequence[tuple[bytes, bytes]] = (), name: bytes = KV_DB
) -> AsyncIterator[aiolmdb.AsyncEnvironment]:
    """A fresh ``aiolmdb.open(":memory:")``, with ``pairs`` loaded into database ``name``.

    Loaded through the API (``put_multi``), as nothing else reaches the
    store; the records are the ones ``populate`` writes for LMDB.
    """
    env = aiolmdb.open(":memory:")
    try:
        if pairs:
            await env.open_db(name).put_multi(pairs)
        yield env
    finally:
        await env.close()


@contextlib.asynccontextmanager
async def sqlite_db(
    path: str, pairs: Sequence[tuple[bytes, bytes]] = ()
) -> AsyncIterator[aiosqlite.Connection]:
    """An aiosqlite key/value table (default journal mode and synchronous=FULL).

    ``iter_chunk_size`` is raised from 64 to 1024 so that ``async for`` over a
    cursor fetches 1024 rows per thread hop (using aiosqlite well).
    """
    db = await aiosqlite.connect(os.path.join(path, "kv.sqlite"), iter_chunk_size=1024)
    try:
        await db.execute("CREATE TABLE kv(k BLOB PRIMARY KEY, v BLOB) WITHOUT ROWID")
        await db.commit()
        if pairs:
            await db.executemany("INSERT INTO kv(k, v) VALUES (?, ?)", pairs)
            await db.commit()
        yield db
    finally:
        await db.close()
