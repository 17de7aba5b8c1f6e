"""The PostgreSQL workloads P1-P6: aiolmdb's PostgreSQL engine against the raw driver.

Each workload runs, in one schema of the server (:mod:`._pg_server`), in this
process and in turns: ``aiolmdb`` (``aiolmdb.open(url, max_connections=10)``),
``psycopg (same statements)`` (:mod:`._pg_raw`: the statements the engine sends
for the same calls, over a pool of the same size) and, where a user would write
the call otherwise by hand, ``psycopg plain (...)`` (informative). Both sides
read and write the same tables (the engine's layout), so neither has warmer
data than the other. The target of every workload: aiolmdb's time per
operation at most 1.3x the raw driver's sending the same statements.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import random
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiolmdb

from ._harness import Row, Sizes, at_most, make_pairs
from ._models import User, encode_user, encode_user_key, make_users, open_users
from ._pg_raw import POOL_SIZE, Pool, Raw, counter, raw_pool
from ._pg_server import PostgresSource, current_source

__all__ = ["p1", "p2", "p3", "p4", "p5", "p6"]

Notes = list[str]
Work = Callable[[], Awaitable[object]]

AIOLMDB = "aiolmdb"
RAW = "psycopg (same statements)"
KV = b"kv"
USERS = "Users"
#: aiolmdb's time per operation over the raw driver's, at most (the issue's target).
TARGET = 1.3
#: Records per put_multi when loading.
LOAD_CHUNK = 10_000
#: Tasks of the concurrent workloads.
TASKS = 100


@dataclass(frozen=True)
class PgSizes:
    """How big each PostgreSQL workload is (full run, or ``--quick``).

    Many short runs rather than a few long ones: each turn times aiolmdb and the
    raw driver back to back, and the machine's noise changes less within a turn.
    """

    records: int = 100_000  # P1, P2, P4, P5
    gets: int = 1_000  # per run of P1 and P2
    get_reps: int = 21
    scan_reps: int = 9  # P4: every record per run
    puts_per_task: int = 5  # P3: TASKS x this per run
    mix_ops_per_task: int = 10  # P5
    counters: int = 10_000  # P6
    increments_per_task: int = 3  # P6
    write_reps: int = 15  # P3, P5, P6

    @classmethod
    def of(cls, sizes: Sizes) -> PgSizes:
        if not sizes.quick:
            return cls()
        return cls(
            records=2_000,
            gets=100,
            get_reps=3,
            scan_reps=2,
            puts_per_task=1,
            mix_ops_per_task=5,
            counters=500,
            increments_per_task=1,
            write_reps=2,
        )


# -- plumbing -----------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _environment(url: str) -> AsyncIterator[aiolmdb.AsyncEnvironment]:
    env = aiolmdb.open(url, max_connections=POOL_SIZE)
    try:
        yield env
    finally:
        await env.close()


@contextlib.asynccontextmanager
async def _contenders(
    source: PostgresSource, label: str, notes: Notes
) -> AsyncIterator[tuple[str, aiolmdb.AsyncEnvironment, Pool]]:
    """A fresh schema, an environment on it and a raw pool of the same size."""
    if not source.described:
        source.described = True
        notes.append(
            f"P: {source.describe()}. The server runs on this machine and shares its CPUs "
            "with the benchmark process (the client CPU per operation in each P note is "
            "this process's alone). Each P workload works in a fresh schema, aiolmdb and "
            "the raw driver on the same tables, after VACUUM ANALYZE and a CHECKPOINT."
        )
    with source.schema(label) as url:
        async with _environment(url) as env, raw_pool(url) as pool:
            yield url, env, pool


async def _load(url: str, name: str, pairs: Sequence[tuple[bytes, bytes]]) -> None:
    """Store ``pairs`` in database ``name``, through aiolmdb (put_multi, in chunks)."""
    async with _environment(url) as env:
        db = env.open_db(name)
        for start in range(0, len(pairs), LOAD_CHUNK):
            await db.put_multi(pairs[start : start + LOAD_CHUNK])


@dataclass
class Turns:
    """Every timed run of every contender, in turns: wall and CPU seconds of this process."""

    wall: dict[str, list[float]]
    cpu: dict[str, list[float]]

    @property
    def ratios(self) -> list[float]:
        """aiolmdb's time over the raw driver's, turn by turn (each pair ran back to back)."""
        return [a / r for a, r in zip(self.wall[AIOLMDB], self.wall[RAW], strict=True)]

    def described(self, ops: int) -> str:
        """How the runs went, for the notes."""
        ratios = self.ratios
        ranges = "; ".join(
            f"{name} {min(got) / ops * 1e6:,.0f}-{max(got) / ops * 1e6:,.0f} µs/op, client CPU "
            f"{statistics.median(self.cpu[name]) / ops * 1e6:,.0f} µs/op"
            for name, got in self.wall.items()
        )
        return (
            f"{len(ratios)} runs of each in turns after a warm-up run; aiolmdb ÷ {RAW} per "
            f"turn {min(ratios):.2f}-{max(ratios):.2f}x, median {statistics.median(ratios):.2f}x "
            f"(the target's measure); {ranges}"
        )


async def _timed(work: Work) -> tuple[float, float]:
    """Wall and CPU seconds ``work()`` takes, after a garbage collection."""
    gc.collect()
    wall, cpu = time.perf_counter(), time.process_time()
    await work()
    return time.perf_counter() - wall, time.process_time() - cpu


async def _turns(reps: int, contenders: Sequence[tuple[str, Work]]) -> Turns:
    """Warm each contender up, then time them in turns, the order reversed every turn
    (aiolmdb and the raw driver, first and second, always run back to back)."""
    for _, work in contenders:
        await work()
    turns = Turns({name: [] for name, _ in contenders}, {name: [] for name, _ in contenders})
    for rep in range(reps):
        for name, work in contenders if rep % 2 == 0 else reversed(contenders):
            wall, cpu = await _timed(work)
            turns.wall[name].append(wall)
            turns.cpu[name].append(cpu)
    return turns


def _rows(wid: str, ops: int, turns: Turns, notes: dict[str, str] | None = None) -> list[Row]:
    """One row per contender (its median run); the target is checked on aiolmdb's row,
    on the median over the turns of its time over the raw driver's: the machine's
    noise drifts more between turns than within one."""
    rows = [
        Row(
            wid,
            name,
            ops,
            statistics.median(got),
            got,
            note=(notes or {}).get(name, ""),
            extra={"cpu_us_per_op": statistics.median(turns.cpu[name]) / ops * 1e6},
        )
        for name, got in turns.wall.items()
    ]
    mine = next(row for row in rows if row.contender == AIOLMDB)
    for row in rows:
        if row is not mine:
            row.vs_aiolmdb = mine.ops_per_s / row.ops_per_s
    ratio = statistics.median(turns.ratios)
    mine.check = at_most(ratio, TARGET, "≤ 1.3x psycopg µs/op", f"{ratio:.2f}x psycopg")
    return rows


async def _gather_tasks(
    plans: Sequence[Sequence[Any]], step: Callable[[Any], Awaitable[object]]
) -> None:
    """One task per plan, each awaiting ``step(item)`` for its items in turn."""

    async def task(plan: Sequence[Any]) -> None:
        for item in plan:
            await step(item)

    await asyncio.gather(*(task(plan) for plan in plans))


# -- P1 / P2: point gets from one task -------------------------------------------------------


async def p1(sizes: Sizes, notes: Notes) -> list[Row]:
    """Point gets of raw bytes, one after another from one task."""
    wid = "P1 get bytes"
    s = PgSizes.of(sizes)
    source = current_source()
    pairs = make_pairs(s.records, seed=101)
    rng = random.Random(111)
    lookups = [pairs[rng.randrange(len(pairs))][0] for _ in range(s.gets)]
    expected = dict(pairs)
    async with _contenders(source, "p1", notes) as (url, env, pool):
        await _load(url, KV.decode(), pairs)
        source.settle(url)
        db = env.open_db(KV)
        raw = await Raw.of(pool, KV)
        first = lookups[0]
        assert await db.get(first) == expected[first] == await raw.get(first)

        async def aiolmdb_gets() -> None:
            get = db.get
            for k in lookups:
                await get(k)

        async def raw_gets() -> None:
            get = raw.get
            for k in lookups:
                await get(k)

        got = await _turns(s.get_reps, [(AIOLMDB, aiolmdb_gets), (RAW, raw_gets)])
    notes.append(
        f"P1: {s.records:,} records (16 B keys, 100 B values), {s.gets:,} gets of random keys "
        f"from one task; {got.described(s.gets)}. What the engine sends for a get outside a "
        "transaction is what a user would write: one autocommit SELECT (no plain row)."
    )
    return _rows(wid, s.gets, got)


async def p2(sizes: Sizes, notes: Notes) -> list[Row]:
    """Point gets through the Users collection, one after another from one task."""
    wid = "P2 get model"
    s = PgSizes.of(sizes)
    source = current_source()
    users = make_users(s.records, seed=102)
    rng = random.Random(122)
    lookups = [rng.randrange(len(users)) for _ in range(s.gets)]
    raw_lookups = [encode_user_key(k) for k in lookups]
    validate = User.model_validate_json
    async with _contenders(source, "p2", notes) as (url, env, pool):
        await _load(url, USERS, [(encode_user_key(k), encode_user(u)) for k, u in users])
        source.settle(url)
        coll, how = open_users(env)
        raw = await Raw.of(pool, USERS.encode())
        found = await raw.get(raw_lookups[0])
        assert found is not None
        assert await coll.get(lookups[0]) == users[lookups[0]][1] == validate(found)

        async def aiolmdb_gets() -> None:
            get = coll.get
            for k in lookups:
                await get(k)

        async def raw_gets() -> None:
            get = raw.get
            for k in raw_lookups:
                value = await get(k)
                if value is not None:
                    validate(value)

        got = await _turns(s.get_reps, [(AIOLMDB, aiolmdb_gets), (RAW, raw_gets)])
    notes.append(
        f"P2: {s.records:,} `User` records in a UInt64-keyed {how}; {s.gets:,} gets from one "
        "task; the raw driver sends the same autocommit SELECT and calls "
        f"`User.model_validate_json`; {got.described(s.gets)}."
    )
    return _rows(wid, s.gets, got, {AIOLMDB: how})


# -- P3: concurrent puts -----------------------------------------------------------------------


async def p3(sizes: Sizes, notes: Notes) -> list[Row]:
    """100 tasks putting new records, each awaiting its put before the next."""
    wid = "P3 100-task puts"
    s = PgSizes.of(sizes)
    source = current_source()
    n = TASKS * s.puts_per_task
    plain = "psycopg plain (1 autocommit upsert)"
    contenders = 3
    # New keys every run (warm-ups included), made before any is timed: every put
    # inserts, as into a fresh LMDB environment.
    runs = []
    for seed in range(1_000, 1_000 + (1 + s.write_reps) * contenders):
        pairs = make_pairs(n, seed=seed)
        runs.append([pairs[i::TASKS] for i in range(TASKS)])
    unused = iter(runs)

    def puts(put: Callable[[bytes, bytes], Awaitable[object]]) -> Work:
        async def step(pair: tuple[bytes, bytes]) -> None:
            await put(*pair)

        return lambda: _gather_tasks(next(unused), step)

    async with _contenders(source, "p3", notes) as (url, env, pool):
        await _load(url, KV.decode(), make_pairs(1_000, seed=303))
        source.settle(url)
        db = env.open_db(KV)
        raw = await Raw.of(pool, KV)
        got = await _turns(
            s.write_reps,
            [(AIOLMDB, puts(db.put)), (RAW, puts(raw.put)), (plain, puts(raw.plain_put))],
        )
        stored = await db.count()
    assert stored == 1_000 + n * len(runs), stored
    notes.append(
        f"P3: {TASKS} tasks x {s.puts_per_task} puts of new random keys (16 B keys, 100 B "
        f"values), each awaited before the next, over {POOL_SIZE} connections; "
        f"{got.described(n)}. The engine's put, which the "
        "target compares with: BEGIN ISOLATION LEVEL SERIALIZABLE; INSERT ... ON CONFLICT "
        "DO UPDATE; then the commit marker's INSERT and COMMIT in one round trip (3 round "
        f"trips, durable at COMMIT); '{plain}': the one autocommit INSERT ... ON CONFLICT a "
        "user would write by hand (1 round trip, equally durable, no commit marker: a "
        "commit whose answer is lost cannot be settled). The engine also deletes markers "
        "older than an hour every 10,000 writes (not done by the raw side; none is that old)."
    )
    return _rows(wid, n, got)


# -- P4: a scan through the collection ---------------------------------------------------------


async def p4(sizes: Sizes, notes: Notes) -> list[Row]:
    """Every record of the Users collection in key order, decoded."""
    wid = "P4 scan models"
    s = PgSizes.of(sizes)
    source = current_source()
    users = make_users(s.records, seed=104)
    validate = User.model_validate_json
    n = len(users)
    plain = "psycopg plain (1 SELECT, every row)"
    async with _contenders(source, "p4", notes) as (url, env, pool):
        await _load(url, USERS, [(encode_user_key(k), encode_user(u)) for k, u in users])
        source.settle(url)
        coll, how = open_users(env)
        raw = await Raw.of(pool, USERS.encode())

        async def aiolmdb_scan() -> None:
            count = 0
            async for _key, _user in coll.items():
                count += 1
            assert count == n

        async def raw_scan() -> None:
            count = 0
            async for key, value in raw.scan():
                int.from_bytes(key, "big")
                validate(value)
                count += 1
            assert count == n

        async def plain_scan() -> None:
            count = 0
            for key, value in await raw.plain_scan():
                int.from_bytes(key, "big")
                validate(value)
                count += 1
            assert count == n

        got = await _turns(
            s.scan_reps, [(AIOLMDB, aiolmdb_scan), (RAW, raw_scan), (plain, plain_scan)]
        )
    notes.append(
        f"P4: all {n:,} `User` records in key order, `async for k, u in users.items()` "
        f"over a {how}; every contender decodes the key and validates the JSON; "
        f"{got.described(n)}. "
        "The engine reads a first batch of 64 records, then batches of 1,024 (each asks "
        "for one more, to see whether the range goes on), each in a REPEATABLE READ, READ "
        "ONLY transaction of its own, as SELECT ... ORDER BY key LIMIT pages of 256 then "
        "up to 4x more, fetching the next batch while the current one is consumed; the "
        f"raw side does the same. '{plain}': one autocommit SELECT of the whole range, "
        "all in memory at once."
    )
    return _rows(wid, n, got, {AIOLMDB: how})


# -- P5: the 90/10 mix ---------------------------------------------------------------------------


async def p5(sizes: Sizes, notes: Notes) -> list[Row]:
    """100 tasks, 90% gets and 10% puts (overwrites) of random keys."""
    wid = "P5 90/10 get/put"
    s = PgSizes.of(sizes)
    source = current_source()
    pairs = make_pairs(s.records, seed=105)
    keys = [k for k, _ in pairs]
    new_values = [v[::-1] for _, v in pairs[:4096]]
    rng = random.Random(155)
    plans: list[list[tuple[bool, bytes, bytes]]] = []
    for _ in range(TASKS):
        puts = max(1, s.mix_ops_per_task // 10)
        kinds = [True] * puts + [False] * (s.mix_ops_per_task - puts)
        rng.shuffle(kinds)
        plans.append([(is_put, rng.choice(keys), rng.choice(new_values)) for is_put in kinds])
    n = sum(len(plan) for plan in plans)
    plain = "psycopg plain (autocommit SELECT / upsert)"
    async with _contenders(source, "p5", notes) as (url, env, pool):
        await _load(url, KV.decode(), pairs)
        source.settle(url)
        db = env.open_db(KV)
        raw = await Raw.of(pool, KV)

        def mixed(
            get: Callable[[bytes], Awaitable[object]],
            put: Callable[[bytes, bytes], Awaitable[object]],
        ) -> Work:
            async def step(op: tuple[bool, bytes, bytes]) -> None:
                is_put, k, v = op
                if is_put:
                    await put(k, v)
                else:
                    await get(k)

            return lambda: _gather_tasks(plans, step)

        got = await _turns(
            s.write_reps,
            [
                (AIOLMDB, mixed(db.get, db.put)),
                (RAW, mixed(raw.get, raw.put)),
                (plain, mixed(raw.get, raw.plain_put)),
            ],
        )
    notes.append(
        f"P5: {TASKS} tasks, {n:,} operations, 90% gets / 10% puts (overwrites) of random "
        f"keys among {s.records:,} records, over {POOL_SIZE} connections; "
        f"{got.described(n)}. Gets and puts as in P1 and P3; a put that conflicts is run "
        f"again, on both sides (the raw side's were {raw.retries} times); "
        f"'{plain}': the puts are one autocommit upsert each."
    )
    return _rows(wid, n, got)


# -- P6: transactional read-modify-write -------------------------------------------------------


async def p6(sizes: Sizes, notes: Notes) -> list[Row]:
    """100 tasks incrementing random counters, each increment one env.transact."""
    wid = "P6 transact RMW"
    s = PgSizes.of(sizes)
    source = current_source()
    names = make_pairs(s.counters, seed=106)
    keys = [k for k, _ in names]
    rng = random.Random(166)
    plans = [[rng.choice(keys) for _ in range(s.increments_per_task)] for _ in range(TASKS)]
    n = TASKS * s.increments_per_task
    plain = "psycopg plain (SELECT FOR UPDATE, READ COMMITTED)"
    calls = [0]
    async with _contenders(source, "p6", notes) as (url, env, pool):
        await _load(url, KV.decode(), [(k, counter(0)) for k in keys])
        source.settle(url)
        db = env.open_db(KV)
        raw = await Raw.of(pool, KV)

        async def bump(key: bytes) -> None:
            calls[0] += 1
            value = await db.get(key)
            assert value is not None
            await db.put(key, counter(int.from_bytes(value, "big") + 1))

        async def transact(key: bytes) -> None:
            await env.transact(bump, key)

        contenders: list[tuple[str, Work]] = [
            (AIOLMDB, lambda: _gather_tasks(plans, transact)),
            (RAW, lambda: _gather_tasks(plans, raw.increment)),
            (plain, lambda: _gather_tasks(plans, raw.plain_increment)),
        ]
        got = await _turns(s.write_reps, contenders)
        total = 0
        async for _key, value in db.items():
            total += int.from_bytes(value, "big")
    runs = (1 + s.write_reps) * len(contenders)
    assert total == n * runs, f"counters sum to {total}, not {n * runs}"
    engine_retries = calls[0] - n * (1 + s.write_reps)
    notes.append(
        f"P6: {TASKS} tasks x {s.increments_per_task} increments of random counters among "
        f"{s.counters:,} (8-byte values), over {POOL_SIZE} connections; aiolmdb: "
        "`await env.transact(bump, key)` where bump gets the counter and puts it plus one: "
        "BEGIN ISOLATION LEVEL SERIALIZABLE; SELECT; INSERT ... ON CONFLICT DO UPDATE; "
        "marker INSERT + COMMIT (4 round trips), run again on a serialization failure; the "
        "raw side sends the same and retries alike. Conflicts run again over all runs: "
        f"aiolmdb {engine_retries}, raw {raw.retries} (of {n * (1 + s.write_reps):,} each). "
        f"'{plain}': BEGIN; SELECT ... FOR UPDATE; upsert; COMMIT (4 round trips, never "
        f"run again). Every counter checked exact at the end. {got.described(n)}."
    )
    return _rows(wid, n, got)
