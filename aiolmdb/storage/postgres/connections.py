"""The engine's bounded pool of connections, and reconnecting after a failover.

Every call takes a connection from the pool for as long as it needs one (a
statement, a write transaction, a session). A connection found dead (the
server restarted, the primary failed over, or the node it reaches was
demoted) is closed, and the call is made again on a new one, for up to
``reconnect_timeout`` seconds: with a libpq multi-host URL and
``target_session_attrs=read-write``, the new connection reaches the new
primary. Calls that cannot be made again safely (a commit in flight) are
the caller's to settle (:mod:`.commits`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import psycopg
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool, PoolClosed, PoolTimeout

from ...errors import ClosedError, UnavailableError
from ..waiting import backoff
from .failures import Failure, failure_of, user_error
from .layout import CREATE, LAYOUT_VERSION, Sql
from .views import fetch_rows

__all__ = ["Connection", "Connections", "ensure_layout"]

R = TypeVar("R")
Connection = AsyncConnection[Any]

#: Seconds between two direct tries to connect while the pool cannot.
PROBE_EVERY = 0.5


async def ensure_layout(conn: Connection, where: str) -> None:
    """Create the layout's tables if they are missing; refuse a layout of a later release."""
    for attempt in range(1, 4):
        try:
            async with conn.transaction():
                await conn.execute(CREATE)
                version = (await fetch_rows(conn, Sql.LAYOUT, ()))[0][0]
            break
        except (psycopg.errors.UniqueViolation, psycopg.errors.DuplicateTable):
            # Another process created the same tables at the same time: theirs stand.
            if attempt == 3:
                raise
    if version > LAYOUT_VERSION:
        raise UnavailableError(
            f"environment {where} has storage layout {version}, written by a later release "
            f"of aiolmdb; this release reads layout {LAYOUT_VERSION}: upgrade aiolmdb"
        )


def _failed(task: asyncio.Task[None]) -> bool:
    return task.done() and not task.cancelled() and task.exception() is not None


class Connections:
    """A pool of at most ``max_size`` connections to ``conninfo``, opened on first use.

    ``where`` names the server in messages (without its password).
    """

    def __init__(
        self,
        conninfo: str,
        where: str,
        *,
        min_size: int,
        max_size: int,
        reconnect_timeout: float,
    ) -> None:
        self.where = where
        self.max_size = max_size
        self.reconnect_timeout = reconnect_timeout
        self._conninfo = conninfo
        # Connections made outside the pool while it could not connect (see get()).
        self._direct_ones: set[Connection] = set()
        self._pool = AsyncConnectionPool(
            conninfo,
            min_size=min_size,
            max_size=max_size,
            kwargs={"autocommit": True},
            open=False,
            timeout=reconnect_timeout,
            # Keep trying to connect while a failover goes on; calls give up on their own.
            reconnect_timeout=max(reconnect_timeout, 60.0),
            name=f"aiolmdb {where}",
        )
        self._ready: asyncio.Task[None] | None = None
        self._last_error: BaseException | None = None

    async def ready(self) -> None:
        """Open the pool and check the layout (once; later calls return at once, or, after
        a failure, try again: the server may be back)."""
        if self._ready is None or _failed(self._ready):
            self._ready = asyncio.ensure_future(self._open())
        if not self._ready.done():
            await asyncio.shield(self._ready)
        self._ready.result()

    async def _open(self) -> None:
        await self._pool.open(wait=False)
        try:
            await self.retrying(lambda conn: ensure_layout(conn, self.where))
        except psycopg.Error as exc:
            raise user_error(exc, failure_of(exc), f"opening environment {self.where}") from exc

    async def get(self, deadline: float | None = None) -> Connection:
        """A connection (give it back with :meth:`put`), waiting for one until ``deadline``
        (loop time; default: ``reconnect_timeout`` from now).

        While the pool cannot connect (the server restarts, a failover goes on), the
        pool tries again at growing intervals (1, 2, 4, 8 s): meanwhile a connection
        is also tried directly every PROBE_EVERY seconds, used for one call and
        closed, so that calls go on as soon as the server (or the new primary)
        takes them. These count against ``max_connections`` too.
        """
        loop = asyncio.get_running_loop()
        if deadline is None:
            deadline = loop.time() + self.reconnect_timeout
        while True:
            remaining = deadline - loop.time()
            try:
                return await self._pool.getconn(timeout=max(0.001, min(remaining, PROBE_EVERY)))
            except PoolClosed:
                raise ClosedError(f"environment {self.where} is closed") from None
            except PoolTimeout as exc:
                conn = await self._direct()
                if conn is not None:
                    return conn
                if loop.time() >= deadline:
                    last = self._last_error or exc
                    raise UnavailableError(
                        f"no connection to PostgreSQL at {self.where} within "
                        f"{self.reconnect_timeout:g} s (reconnect_timeout): the server is "
                        f"unreachable, or all {self.max_size} connections of the pool "
                        f"(max_connections) stayed in use; last error: {last}"
                    ) from exc

    async def _direct(self) -> Connection | None:
        """A connection made outside the pool, while the pool is short of connections
        because it cannot connect; None if the pool is full, or this fails too."""
        in_pool = self._pool.get_stats().get("pool_size", self.max_size)
        if in_pool + len(self._direct_ones) >= self.max_size:
            return None  # every connection is in use: wait for one
        try:
            conn = await AsyncConnection.connect(self._conninfo, autocommit=True)
        except psycopg.Error as exc:
            self._last_error = exc
            return None
        self._direct_ones.add(conn)
        return conn

    async def put(self, conn: Connection) -> None:
        """Give ``conn`` back: rolled back first if a transaction is open, closed if broken."""
        if conn in self._direct_ones:
            self._direct_ones.discard(conn)
            await conn.close()
            return
        if conn.broken or conn.closed:
            await self._pool.putconn(conn)
            return
        status = conn.info.transaction_status
        if status is psycopg.pq.TransactionStatus.ACTIVE:
            await conn.close()  # a statement cut short (a cancelled call): not reusable
        elif status is not psycopg.pq.TransactionStatus.IDLE:
            try:
                await conn.execute(Sql.ROLLBACK)
            except psycopg.Error:
                await conn.close()
        await self._pool.putconn(conn)

    async def discard(self, conn: Connection, error: BaseException) -> None:
        """Close ``conn``, found dead (or reaching a node that cannot write), and give it back."""
        self._last_error = error
        with contextlib.suppress(psycopg.Error):
            await conn.close()
        if conn in self._direct_ones:
            self._direct_ones.discard(conn)
            return
        await self._pool.putconn(conn)

    async def retrying(
        self, work: Callable[[Connection], Awaitable[R]], *, keep: bool = False
    ) -> R:
        """``work(conn)``, made again on a new connection while connections are found dead,
        for up to ``reconnect_timeout`` seconds. ``work`` must be safe to make again.

        ``keep``: the connection stays the caller's once ``work`` succeeded (a
        transaction begun on it), to give back with :meth:`put`.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.reconnect_timeout
        attempt = 1
        while True:
            conn = await self.get(deadline)
            try:
                result = await work(conn)
            except psycopg.Error as exc:
                if failure_of(exc) is not Failure.LOST:
                    await self.put(conn)
                    raise
                await self.discard(conn, exc)
                if loop.time() >= deadline:
                    raise UnavailableError(
                        f"PostgreSQL at {self.where} could not be reached again within "
                        f"{self.reconnect_timeout:g} s (reconnect_timeout): {exc}"
                    ) from exc
            except BaseException:
                await self.put(conn)
                raise
            else:
                if not keep:
                    await self.put(conn)
                return result
            await asyncio.sleep(backoff(attempt))
            attempt += 1

    async def begin(self, statement: str) -> Connection:
        """A connection of the pool in a transaction begun by ``statement`` (retried on
        dead connections); give it back with :meth:`put`."""

        async def begin_on(conn: Connection) -> Connection:
            await conn.execute(statement)
            return conn

        return await self.retrying(begin_on, keep=True)

    async def close(self) -> None:
        """Close every connection (none may be in use any more)."""
        if self._ready is not None and not self._ready.done():
            self._ready.cancel()
            with contextlib.suppress(BaseException):
                await self._ready
        await self._pool.close()
