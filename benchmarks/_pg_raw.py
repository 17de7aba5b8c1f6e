"""The raw driver's side of the PostgreSQL workloads.

psycopg 3's asynchronous connections from a ``psycopg_pool.AsyncConnectionPool``
sized like the engine's pool (autocommit connections, ``binary=True`` results),
sending for each call the statements the PostgreSQL engine sends, in the same
order, one round trip each where the engine makes one (the statement texts
and paging sizes are the engine's own, imported, so that they cannot drift
apart); and, where a user would write the call differently by hand, that
plain way too (informative rows).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from typing import Any

import psycopg
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from aiolmdb.scanning import FIRST_SCAN_BATCH, SCAN_BATCH
from aiolmdb.storage.postgres.layout import RangeShape, Sql, range_statement
from aiolmdb.storage.postgres.views import RANGE_GROWTH, RANGE_PAGE, RANGE_PAGE_MAX
from aiolmdb.storage.waiting import backoff

__all__ = ["POOL_SIZE", "Pool", "Raw", "counter", "raw_pool"]

#: Connections of both pools (the engine's default max_connections).
POOL_SIZE = 10
#: The hand-written read-modify-write: lock the row, then write it (READ COMMITTED).
PLAIN_GET_FOR_UPDATE = Sql.GET + " FOR UPDATE"
#: The hand-written scan: every record in one answer.
PLAIN_SCAN = "SELECT key, value FROM aiolmdb_records WHERE keyspace = %s ORDER BY key"
#: A conflict: the engine's transact runs the function again on these.
RETRYABLE = (psycopg.errors.SerializationFailure, psycopg.errors.DeadlockDetected)

Conn = AsyncConnection[Any]
Pool = AsyncConnectionPool[Conn]
Rows = list[tuple[bytes, bytes]]


def counter(value: int) -> bytes:
    """How the read-modify-write workload stores a counter: 8 bytes, big-endian."""
    return value.to_bytes(8, "big")


@contextlib.asynccontextmanager
async def raw_pool(url: str) -> AsyncIterator[Pool]:
    """A pool like the engine's: 1 to :data:`POOL_SIZE` autocommit connections."""
    pool: Pool = AsyncConnectionPool(
        url, min_size=1, max_size=POOL_SIZE, kwargs={"autocommit": True}, open=False
    )
    await pool.open(wait=True)
    try:
        yield pool
    finally:
        await pool.close()


async def _rows(conn: Conn, statement: str, params: Sequence[Any]) -> list[Any]:
    cursor = await conn.execute(statement, params, binary=True)
    return await cursor.fetchall()


async def _commit_with_marker(conn: Conn) -> None:
    await conn.execute(Sql.commit_with_marker(str(uuid.uuid4())), prepare=False)


class Raw:
    """One keyspace of an aiolmdb layout, read and written with the raw driver.

    ``retries``: how many writes were run again after a conflict.
    """

    def __init__(self, pool: Pool, keyspace: int) -> None:
        self.pool = pool
        self.keyspace = keyspace
        self.retries = 0

    @classmethod
    async def of(cls, pool: Pool, name: bytes) -> Raw:
        """The keyspace the engine stores database ``name`` in (as the engine finds it)."""
        async with pool.connection() as conn:
            found = await _rows(conn, Sql.FIND_KEYSPACE, (name,))
        if not found:
            raise LookupError(f"no keyspace {name!r} in aiolmdb_keyspaces")
        return cls(pool, int(found[0][0]))

    # -- the engine's statements -------------------------------------------

    async def get(self, key: bytes) -> bytes | None:
        """``db.get(key)`` outside a transaction: one autocommit SELECT."""
        async with self.pool.connection() as conn:
            rows = await _rows(conn, Sql.GET, (self.keyspace, key))
        return rows[0][0] if rows else None

    async def put(self, key: bytes, value: bytes) -> None:
        """``db.put(key, value)``: BEGIN SERIALIZABLE, the upsert, then the commit marker's
        insert and COMMIT in one round trip; run again on a conflict."""

        async def put(conn: Conn) -> None:
            await conn.execute(Sql.PUT, (self.keyspace, key, value))

        await self._serializable(put)

    async def increment(self, key: bytes) -> None:
        """``env.transact`` of get-then-put of counter ``key``: BEGIN SERIALIZABLE, SELECT,
        upsert, marker + COMMIT; run again on a conflict."""

        async def increment(conn: Conn) -> None:
            rows = await _rows(conn, Sql.GET, (self.keyspace, key))
            value = int.from_bytes(rows[0][0], "big") + 1
            await conn.execute(Sql.PUT, (self.keyspace, key, counter(value)))

        await self._serializable(increment)

    async def _serializable(self, work: Callable[[Conn], Awaitable[None]]) -> None:
        """``work(conn)`` in a SERIALIZABLE transaction committed with a marker, run again
        after the engine's pause when it conflicts (as auto-commit writes and
        ``env.transact`` are)."""
        attempt = 1
        while True:
            try:
                async with self.pool.connection() as conn:
                    await conn.execute(Sql.BEGIN_WRITE)
                    await work(conn)
                    await _commit_with_marker(conn)
                return
            except RETRYABLE:
                self.retries += 1
            await asyncio.sleep(backoff(attempt))
            attempt += 1

    async def scan(self) -> AsyncIterator[tuple[bytes, bytes]]:
        """Every record in key order, as ``async for`` over ``db.items()`` reads them:
        batches of FIRST_SCAN_BATCH then SCAN_BATCH records (one more, to see whether the
        range goes on), each in a REPEATABLE READ, READ ONLY transaction of its own, paged
        like the engine's view, the next batch fetched while this one is consumed."""
        upcoming: asyncio.Future[tuple[Rows, bool]] | None = None
        current: Coroutine[Any, Any, tuple[Rows, bool]] | asyncio.Future[tuple[Rows, bool]]
        current = self._batch(None, FIRST_SCAN_BATCH)
        try:
            while True:
                records, done = await current
                if not done:
                    upcoming = asyncio.ensure_future(self._batch(records[-1][0], SCAN_BATCH))
                for record in records:
                    yield record
                if done or upcoming is None:
                    return
                current, upcoming = upcoming, None
        finally:
            if upcoming is not None:
                upcoming.cancel()

    async def _batch(self, after: bytes | None, count: int) -> tuple[Rows, bool]:
        rows: Rows = []
        wanted = count + 1
        page = RANGE_PAGE
        async with self.pool.connection() as conn:
            await conn.execute(Sql.BEGIN_READ)
            while wanted > 0:
                asked = min(page, wanted)
                if after is None:
                    got = await _rows(
                        conn, range_statement(RangeShape.NONE), [self.keyspace, asked]
                    )
                else:
                    got = await _rows(
                        conn, range_statement(RangeShape.AFTER), [self.keyspace, after, asked]
                    )
                # (key, value, size): values over INLINE_RANGE_VALUE come apart, as the
                # engine's view fetches them.
                large = [key for key, value, _ in got if value is None]
                found = (
                    dict(await _rows(conn, Sql.GET_MANY, [self.keyspace, large])) if large else {}
                )
                rows += [(key, found[key] if value is None else value) for key, value, _ in got]
                if len(got) < asked:
                    break
                after = got[-1][0]
                wanted -= len(got)
                page = min(page * RANGE_GROWTH, RANGE_PAGE_MAX)
            await conn.execute(Sql.COMMIT)
        return rows[:count], len(rows) <= count

    # -- what a user would write by hand -----------------------------------

    async def plain_put(self, key: bytes, value: bytes) -> None:
        """One autocommit upsert."""
        async with self.pool.connection() as conn:
            await conn.execute(Sql.PUT, (self.keyspace, key, value))

    async def plain_increment(self, key: bytes) -> None:
        """READ COMMITTED: lock the row with SELECT ... FOR UPDATE, write it, commit
        (``conn.transaction()``); nothing to run again."""
        async with self.pool.connection() as conn, conn.transaction():
            rows = await _rows(conn, PLAIN_GET_FOR_UPDATE, (self.keyspace, key))
            value = int.from_bytes(rows[0][0], "big") + 1
            await conn.execute(Sql.PUT, (self.keyspace, key, counter(value)))

    async def plain_scan(self) -> Rows:
        """Every record in key order, in the answer of one autocommit SELECT."""
        async with self.pool.connection() as conn:
            return await _rows(conn, PLAIN_SCAN, (self.keyspace,))
