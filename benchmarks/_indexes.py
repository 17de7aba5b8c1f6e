"""W9: what secondary indexes add to a put.

The same records are put into a collection without indexes and into one with
two (a unique index on the e-mail, a plain one on the name), each in a fresh
environment on disk, in turns; the target is the ratio of their costs.
"""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Awaitable, Callable, Sequence

from aiolmdb.coders import StringCoder, UInt64Coder
from aiolmdb.models import Collection, Index

from ._harness import Row, Sizes, aiolmdb_env, at_most, temp_dir
from ._models import User, make_users

__all__ = ["w9"]

Notes = list[str]

PLAIN = "aiolmdb, no index"
INDEXED = "aiolmdb, 2 indexes"


class PlainUsers(Collection[int, User]):
    key_coder = UInt64Coder()
    name = "Users"


class IndexedUsers(Collection[int, User]):
    key_coder = UInt64Coder()
    name = "Users"
    by_email = Index(lambda u: u.email, StringCoder(), unique=True)
    by_name = Index(lambda u: u.name, StringCoder())


Load = Callable[[Collection[int, User], Sequence[tuple[int, User]]], Awaitable[None]]


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
    kind: type[Collection[int, User]], load: Load, records: Sequence[tuple[int, User]]
) -> float:
    with temp_dir("w9") as path:
        async with aiolmdb_env(path) as env:
            users = kind(env)
            loop = asyncio.get_running_loop()
            start = loop.time()
            await load(users, records)
            elapsed = loop.time() - start
            assert await users.count() == len(records)
            return elapsed


async def w9(sizes: Sizes, notes: Notes) -> list[Row]:
    """Concurrent puts (the target) and a bulk load, each with and without two indexes."""
    wid = "W9 index upkeep"
    records = make_users(sizes.w9_records, seed=9)
    rows: list[Row] = []
    for label, load in (
        ("concurrent puts", concurrent_puts),
        ("bulk, 1 txn", bulk_in_one_transaction),
    ):
        samples: dict[str, list[float]] = {PLAIN: [], INDEXED: []}
        for _ in range(sizes.reps):  # in turns, so drift hits both
            samples[PLAIN].append(await _time(PlainUsers, load, records))
            samples[INDEXED].append(await _time(IndexedUsers, load, records))
        plain = Row(
            wid,
            f"{PLAIN} ({label})",
            len(records),
            statistics.median(samples[PLAIN]),
            samples[PLAIN],
        )
        indexed = Row(
            wid,
            f"{INDEXED} ({label})",
            len(records),
            statistics.median(samples[INDEXED]),
            samples[INDEXED],
        )
        indexed.vs_aiolmdb = plain.ops_per_s / indexed.ops_per_s
        ratio = indexed.us_per_op / plain.us_per_op
        if load is concurrent_puts:
            indexed.check = at_most(ratio, 2.5, "≤ 2.5x a put without index", f"{ratio:.2f}x")
        rows += [plain, indexed]
    notes.append(
        f"W9: {len(records):,} `User` records put into a fresh collection without indexes and "
        "into one with a unique index on the e-mail and a plain one on the name; "
        "'concurrent puts': 100 tasks each putting its share one by one (group commit); "
        "'bulk, 1 txn': put_multi in chunks of 1,000 inside one env.transaction(). "
        f"Median of {sizes.reps} runs in turns; 'aiolmdb x' on an indexed row is the "
        "plain row's ops/s ÷ the indexed row's."
    )
    return rows
