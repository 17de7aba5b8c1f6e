"""W9: what secondary indexes add to a put.

The same records are put into a collection without indexes and into one with
two (a unique index on the e-mail, a plain one on the name), each in a fresh
environment on disk, in turns; the target is the ratio of their costs. The
same pair runs in the same turns on the in-memory engine (informative: what
index upkeep costs the API without storage).
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import aiolmdb
from aiolmdb.coders import StringCoder, UInt64Coder
from aiolmdb.models import Collection, Index

from ._harness import AIOLMDB_MEMORY, Row, Sizes, aiolmdb_env, at_most, memory_env, temp_dir
from ._models import User, make_users

__all__ = ["w9"]

Notes = list[str]

PLAIN = "aiolmdb, no index"
INDEXED = "aiolmdb, 2 indexes"
MEMORY_PLAIN = f"{AIOLMDB_MEMORY}, no index"
MEMORY_INDEXED = f"{AIOLMDB_MEMORY}, 2 indexes"


class PlainUsers(Collection[int, User]):
    key_coder = UInt64Coder()
    name = "Users"


class IndexedUsers(Collection[int, User]):
    key_coder = UInt64Coder()
    name = "Users"
    by_email = Index(lambda u: u.email, StringCoder(), unique=True)
    by_name = Index(lambda u: u.name, StringCoder())


Load = Callable[[Collection[int, User], Sequence[tuple[int, User]]], Awaitable[None]]
Opener = Callable[[], contextlib.AbstractAsyncContextManager[aiolmdb.AsyncEnvironment]]


@contextlib.asynccontextmanager
async def on_disk() -> AsyncIterator[aiolmdb.AsyncEnvironment]:
    """A fresh LMDB environment in a fresh temporary directory."""
    with temp_dir("w9") as path:
        async with aiolmdb_env(path) as env:
            yield env


#: Every (no-index row, indexed row, environment) pair timed in the same turns.
ENGINES: tuple[tuple[str, str, Opener], ...] = (
    (PLAIN, INDEXED, on_disk),
    (MEMORY_PLAIN, MEMORY_INDEXED, memory_env),
)


async def concurrent_puts(
    users: Collection[int, User], records: Sequence[tuple[int, User]]
) -> None:
    """Every task puts its share of the records one by one (group commit batches them)."""
    tasks = 100

    async def worker(share: Sequence[tuple[int, User]]) -> None:
        for key, user in share:
            await users.put(key, user)

    await asyncio.gather(*(worker(records[i::tasks]) for i in range(tasks)))


async def bulk_in_one_transaction(
    users: Collection[int, User], records: Sequence[tuple[int, User]]
) -> None:
    """put_multi in chunks of 1000 inside one env.transaction()."""
    async with users.env.transaction():
        for start in range(0, len(records), 1000):
            await users.put_multi(records[start : start + 1000])


async def _time(
    open_env: Opener,
    kind: type[Collection[int, User]],
    load: Load,
    records: Sequence[tuple[int, User]],
) -> float:
    async with open_env() as env:
        users = kind(env)
        loop = asyncio.get_running_loop()
        start = loop.time()
        await load(users, records)
        elapsed = loop.time() - start
        assert await users.count() == len(records)
        return elapsed


def _median_row(wid: str, name: str, label: str, ops: int, samples: list[float]) -> Row:
    return Row(wid, f"{name} ({label})", ops, statistics.median(samples), samples)


async def w9(sizes: Sizes, notes: Notes) -> list[Row]:
    """Concurrent puts (the target) and a bulk load, each with and without two indexes."""
    wid = "W9 index upkeep"
    records = make_users(sizes.w9_records, seed=9)
    rows: list[Row] = []
    for label, load in (
        ("concurrent puts", concurrent_puts),
        ("bulk, 1 txn", bulk_in_one_transaction),
    ):
        samples: dict[str, list[float]] = {
            name: []
            for plain_name, indexed_name, _ in ENGINES
            for name in (plain_name, indexed_name)
        }
        for _ in range(sizes.reps):  # in turns, so drift hits all
            for plain_name, indexed_name, open_env in ENGINES:
                samples[plain_name].append(await _time(open_env, PlainUsers, load, records))
                samples[indexed_name].append(await _time(open_env, IndexedUsers, load, records))
        plain, indexed, memory_plain, memory_indexed = (
            _median_row(wid, name, label, len(records), samples[name])
            for name in (PLAIN, INDEXED, MEMORY_PLAIN, MEMORY_INDEXED)
        )
        for no_index, with_indexes in ((plain, indexed), (memory_plain, memory_indexed)):
            with_indexes.vs_aiolmdb = no_index.ops_per_s / with_indexes.ops_per_s
        memory_plain.vs_aiolmdb = plain.ops_per_s / memory_plain.ops_per_s
        ratio = indexed.us_per_op / plain.us_per_op
        if load is concurrent_puts:
            indexed.check = at_most(ratio, 2.5, "≤ 2.5x a put without index", f"{ratio:.2f}x")
        rows += [plain, indexed, memory_plain, memory_indexed]
    notes.append(
        f"W9: {len(records):,} `User` records put into a fresh collection without indexes and "
        "into one with a unique index on the e-mail and a plain one on the name; "
        "'concurrent puts': 100 tasks each putting its share one by one (group commit); "
        "'bulk, 1 txn': put_multi in chunks of 1,000 inside one env.transaction(). "
        f"The same two collections on '{AIOLMDB_MEMORY}' in the same turns (no target). "
        f"Median of {sizes.reps} runs in turns; 'aiolmdb x' on an indexed row is the "
        "plain row's ops/s ÷ the indexed row's (of the same engine), on the "
        f"'{MEMORY_PLAIN}' rows LMDB's plain row's ÷ its own."
    )
    return rows
