"""The PostgreSQL engine's read and write views: each call one statement on a connection.

A view belongs to one connection inside one transaction (a read of its
own, a snapshot, a write), and to the function :func:`~.bridge.run_bridged`
runs over it: each call hands its statement to the event loop and returns
the answer. Every keyspace's records are rows of ``aiolmdb_records``
(:mod:`.layout`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from psycopg import AsyncConnection

from ...errors import AiolmdbError, DatabaseDroppedError
from ..base import Buffer, WriteView
from ..keyspace import Keyspace, checked_key, refuse_negative_limit
from .bridge import wait
from .layout import RangeShape, Sql, range_statement

__all__ = [
    "PostgresReadView",
    "PostgresWriteView",
    "fetch_rows",
    "keyspace_id",
    "run_statement",
]

R = TypeVar("R")
Connection = AsyncConnection[Any]

#: Records a lazy range read asks for first; each later page asks for RANGE_GROWTH
#: times as many, up to RANGE_PAGE_MAX (a read that stops early reads little).
RANGE_PAGE = 256
RANGE_GROWTH = 4
RANGE_PAGE_MAX = 4096
#: Bytes of large values a range read fetches in one statement (one value at least).
LARGE_VALUES_BYTES = 1024 * 1024
#: Records a put_many sends in one statement at most.
PUT_MANY_CHUNK = 5000

_savepoint_ids = itertools.count(1)


async def fetch_rows(conn: Connection, statement: str, params: Sequence[Any]) -> list[Any]:
    """The rows ``statement`` gives (binary: ``bytea`` arrives as ``bytes``)."""
    cursor = await conn.execute(statement, params, binary=True)
    return await cursor.fetchall()


async def run_statement(conn: Connection, statement: str, params: Sequence[Any] = ()) -> int:
    """Run ``statement``; how many rows it changed."""
    cursor = await conn.execute(statement, params)
    return cursor.rowcount


def keyspace_id(keyspace: Keyspace) -> int:
    """The id of ``keyspace``'s rows; raises if it was dropped, or is not open."""
    handle = keyspace.handle
    if keyspace.dropped:
        raise DatabaseDroppedError(
            f"database {keyspace.label} was dropped (drop(delete=True)); "
            "open it again to recreate it"
        )
    if not isinstance(handle, int):
        keyspace.check()  # pending or failed: says why
        raise AiolmdbError(f"{keyspace.label} is not a keyspace of the PostgreSQL engine")
    return handle


class PostgresReadView:
    """Reads over ``conn``, in the transaction it is in."""

    __slots__ = ("conn",)

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def _rows(self, statement: str, params: Sequence[Any]) -> list[Any]:
        return wait(fetch_rows(self.conn, statement, params))

    def get(self, keyspace: Keyspace, key: bytes) -> Buffer | None:
        """The value stored under ``key``, or None."""
        rows = self._rows(Sql.GET, (keyspace_id(keyspace), key))
        return rows[0][0] if rows else None

    def get_many(self, keyspace: Keyspace, keys: Sequence[bytes]) -> list[Buffer | None]:
        """The values of ``keys``, in their order (None for a missing one): one statement."""
        if not keys:
            return []
        rows = self._rows(Sql.GET_MANY, (keyspace_id(keyspace), list(keys)))
        found: dict[bytes, bytes] = dict(rows)
        return [found.get(bytes(key)) for key in keys]

    def range(
        self,
        keyspace: Keyspace,
        low: bytes | None = None,
        high: bytes | None = None,
        *,
        reverse: bool = False,
        after: bytes | None = None,
        limit: int | None = None,
    ) -> Iterator[tuple[bytes, Buffer]]:
        """Records with ``low <= key < high`` in key order (highest first when ``reverse``),
        only those strictly beyond ``after``, at most ``limit``; read in pages, lazily."""
        refuse_negative_limit(keyspace, limit)
        return self._pages(keyspace_id(keyspace), low, high, reverse, after, limit)

    def _pages(
        self,
        ident: int,
        low: bytes | None,
        high: bytes | None,
        reverse: bool,
        after: bytes | None,
        limit: int | None,
    ) -> Iterator[tuple[bytes, Buffer]]:
        shape = RangeShape.REVERSE if reverse else RangeShape.NONE
        bounds: list[bytes] = []
        for bound, flag in ((low, RangeShape.LOW), (high, RangeShape.HIGH)):
            if bound is not None:
                shape |= flag
                bounds.append(bound)
        page = RANGE_PAGE
        remaining = limit
        while remaining is None or remaining > 0:
            asked = page if remaining is None else min(page, remaining)
            resume = [] if after is None else [after]
            statement = range_statement(shape | RangeShape.AFTER if after is not None else shape)
            rows = self._rows(statement, [ident, *bounds, *resume, asked])
            yield from self._with_values(ident, rows)
            if len(rows) < asked:
                return
            after = rows[-1][0]
            if remaining is not None:
                remaining -= len(rows)
            page = min(page * RANGE_GROWTH, RANGE_PAGE_MAX)

    def _with_values(
        self, ident: int, rows: list[tuple[bytes, bytes | None, int]]
    ) -> Iterator[tuple[bytes, Buffer]]:
        """The records of a page, the large values fetched as the reader reaches them,
        consecutive ones together up to LARGE_VALUES_BYTES."""
        at = 0
        while at < len(rows):
            key, value, size = rows[at]
            if value is not None:
                yield key, value
                at += 1
                continue
            group = [key]
            total = size
            at += 1
            while at < len(rows) and rows[at][1] is None:
                if total + rows[at][2] > LARGE_VALUES_BYTES:
                    break
                group.append(rows[at][0])
                total += rows[at][2]
                at += 1
            found: dict[bytes, bytes] = dict(self._rows(Sql.GET_MANY, (ident, group)))
            for large in group:
                yield large, found[large]

    def count(self, keyspace: Keyspace, low: bytes | None = None, high: bytes | None = None) -> int:
        """How many keys ``low <= key < high`` holds (every key by default)."""
        ident = keyspace_id(keyspace)
        if low is not None and high is not None and low >= high:
            return 0
        shape = RangeShape.COUNT
        params: list[Any] = [ident]
        for bound, flag in ((low, RangeShape.LOW), (high, RangeShape.HIGH)):
            if bound is not None:
                shape |= flag
                params.append(bound)
        rows = self._rows(range_statement(shape), params)
        return int(rows[0][0])


class PostgresWriteView(PostgresReadView):
    """Reads and writes over ``conn``, inside its write transaction."""

    __slots__ = ()

    def _change(self, statement: str, params: Sequence[Any]) -> int:
        return wait(run_statement(self.conn, statement, params))

    def put(self, keyspace: Keyspace, key: bytes, value: bytes, *, overwrite: bool = True) -> bool:
        """Store ``value`` under ``key``; False (nothing written) when it exists and not
        ``overwrite``."""
        ident = keyspace_id(keyspace)
        key = checked_key(keyspace, key)
        changed = self._change(Sql.PUT if overwrite else Sql.INSERT, (ident, key, bytes(value)))
        return overwrite or changed == 1

    def put_many(
        self, keyspace: Keyspace, items: Sequence[tuple[bytes, bytes]], *, overwrite: bool = True
    ) -> int:
        """Store many records, in as few statements as their number allows; how many were
        written (existing keys skipped unless ``overwrite``).

        As if put one after another: with ``overwrite`` the last value given for
        a key is stored and every item counts; without, the first, once.
        """
        ident = keyspace_id(keyspace)
        batch: dict[bytes, bytes] = {}
        for key, value in items:
            key = checked_key(keyspace, key)
            if overwrite or key not in batch:
                batch[key] = bytes(value)
        keys, values = list(batch), list(batch.values())
        written = 0
        statement = Sql.PUT_MANY if overwrite else Sql.INSERT_MANY
        for start in range(0, len(keys), PUT_MANY_CHUNK):
            end = start + PUT_MANY_CHUNK
            written += self._change(statement, (ident, keys[start:end], values[start:end]))
        return len(items) if overwrite else written

    def delete(self, keyspace: Keyspace, key: bytes) -> bool:
        """Delete ``key``; whether it was stored."""
        return self._change(Sql.DELETE, (keyspace_id(keyspace), key)) == 1

    def clear(self, keyspace: Keyspace) -> None:
        """Delete every record of the keyspace (which stays)."""
        self._change(Sql.CLEAR, (keyspace_id(keyspace),))

    def drop(self, keyspace: Keyspace) -> None:
        """Delete the keyspace with its records; the keyspace is dead at once.

        If the transaction is undone, the catalog's row comes back, and opening
        the name again finds the records.
        """
        ident = keyspace_id(keyspace)
        keyspace.dropped = True
        self._change(Sql.CLEAR, (ident,))
        self._change(Sql.DROP_KEYSPACE, (ident,))

    def atomically(self, fn: Callable[[WriteView], R]) -> R:
        """``fn(self)`` in a savepoint: its writes are undone if it raises."""
        name = f"aiolmdb_atomically_{next(_savepoint_ids)}"
        self._change(f"SAVEPOINT {name}", ())
        try:
            result = fn(self)
        except BaseException:
            self._change(f"ROLLBACK TO SAVEPOINT {name}", ())
            self._change(f"RELEASE SAVEPOINT {name}", ())
            raise
        self._change(f"RELEASE SAVEPOINT {name}", ())
        return result
