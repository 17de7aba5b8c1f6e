"""``PostgresEngine``: the engine behind ``aiolmdb.open("postgresql://...")``.

Everything runs on the event loop, through psycopg's asynchronous
connections: record and index logic (synchronous functions over a view)
runs in a greenlet whose statements the loop awaits (:mod:`.bridge`), so
that no call blocks the loop and none pays a thread hop. Auto-commit writes
are SERIALIZABLE transactions of their own, run side by side on the pool's
connections and run again on a conflict (:mod:`.writes`); sessions and
snapshots hold a connection each (:mod:`.session`). The layout of the
tables is documented in :mod:`.layout`.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg.conninfo import conninfo_to_dict

from ...errors import (
    ClosedError,
    DatabaseNotFoundError,
    UnavailableError,
)
from ..base import (
    Buffer,
    Capabilities,
    NotNowError,
    ReadView,
    WriteView,
    open_refusal,
    outside_loop_refusal,
    refuse_duplicates,
    refuse_key_orders,
)
from ..keyspace import MAX_KEY_SIZE, Keyspace
from ..waiting import ignore_outcome, loop_running
from .bridge import run_bridged
from .connections import Connection, Connections
from .failures import failure_of, user_error
from .layout import DEFAULT_KEYSPACE, Sql
from .session import PostgresSession, PostgresSnapshot
from .views import PostgresReadView, fetch_rows, keyspace_id
from .writes import run_write

__all__ = ["DEFAULT_INLINE_VALUE_LIMIT", "PostgresEngine"]

R = TypeVar("R")

#: Values up to this many bytes may be decoded on the event loop.
DEFAULT_INLINE_VALUE_LIMIT = 64 * 1024
#: Connections the pool holds at most, by default.
DEFAULT_MAX_CONNECTIONS = 10
#: Seconds a call waits for a connection (a failover, a busy pool) by default.
DEFAULT_RECONNECT_TIMEOUT = 30.0
#: Auto-commit writes between two deletions of old commit markers.
FORGET_MARKERS_EVERY = 10_000

_PASSWORD_IN_URL = re.compile(r"(://[^:/@?]*):[^@/?]*@")
_PASSWORD_PARAMETER = re.compile(r"(password=)[^&\s]*")


def without_password(location: str) -> str:
    """``location`` with any password in it masked, for messages."""
    return _PASSWORD_PARAMETER.sub(r"\1***", _PASSWORD_IN_URL.sub(r"\1:***@", location))


class PostgresEngine:
    """A store in a PostgreSQL database, implementing :class:`~aiolmdb.storage.Engine`.

    ``location`` is a libpq URL (``postgresql://user@host:port/dbname?...``),
    several hosts included (``host1:5432,host2:5432`` with
    ``target_session_attrs=read-write`` reconnects to whichever is primary).
    The pool holds ``min_connections`` to ``max_connections`` connections;
    a call waits up to ``reconnect_timeout`` seconds for one (then
    :class:`~aiolmdb.UnavailableError`).
    """

    name = "postgresql"
    capabilities = Capabilities(multi_process=True, durable=True, serial_writes=False)

    def __init__(
        self,
        location: str,
        *,
        inline_value_limit: int = DEFAULT_INLINE_VALUE_LIMIT,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        min_connections: int = 1,
        reconnect_timeout: float = DEFAULT_RECONNECT_TIMEOUT,
        **options: Any,
    ) -> None:
        where = without_password(location)
        if options:
            names = ", ".join(sorted(options))
            raise TypeError(
                f"the PostgreSQL engine takes no option {names} (environment {where}): "
                "options such as these are LMDB's; it takes inline_value_limit, "
                "max_connections, min_connections and reconnect_timeout"
            )
        try:
            conninfo_to_dict(location)
        except psycopg.ProgrammingError as exc:
            raise ValueError(f"{where} is not a valid PostgreSQL URL: {exc}") from None
        if inline_value_limit < 0:
            raise ValueError(f"inline_value_limit must be >= 0, got {inline_value_limit}")
        if not max_connections >= 1 or not 0 <= min_connections <= max_connections:
            raise ValueError(
                f"the pool needs 0 <= min_connections <= max_connections and "
                f"max_connections >= 1, got {min_connections} and {max_connections}"
            )
        if reconnect_timeout <= 0:
            raise ValueError(f"reconnect_timeout must be > 0, got {reconnect_timeout}")
        self.inline_value_limit = inline_value_limit
        self._location = location
        self._where = where
        self._reconnect_timeout = reconnect_timeout
        self._connections = Connections(
            location,
            where,
            min_size=min_connections,
            max_size=max_connections,
            reconnect_timeout=reconnect_timeout,
        )
        self._keyspaces: dict[bytes | None, Keyspace] = {}
        self._serial = 0
        self._sessions: set[PostgresSession] = set()
        self._snapshots: set[PostgresSnapshot] = set()
        # Work under way that close() finishes: writes, keyspace opens.
        self._work: set[asyncio.Future[Any]] = set()
        # The last piece of work queued alone: every write queued after it waits for it.
        self._alone: asyncio.Future[Any] | None = None
        self._writes = 0
        # Auto-commit writes under way; work queued alone waits until there are none.
        self._in_flight = 0
        self._waiting = 0  # writes and sessions waiting for work queued alone before them
        self._drained = asyncio.Event()
        self._drained.set()
        self._closed = False

    # -- what it is ------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once closing began."""
        return self._closed

    @property
    def description(self) -> str:
        """How messages name the store: its URL, without a password."""
        return self._where

    @property
    def max_key_size(self) -> int:
        """The longest key, in bytes: LMDB's, so that code that works here works there."""
        return MAX_KEY_SIZE

    @property
    def keyspace_serial(self) -> int:
        """Serial number of the last keyspace opened."""
        return self._serial

    @property
    def sessions(self) -> tuple[PostgresSession, ...]:
        """The write sessions open (in no set order)."""
        return tuple(self._sessions)

    @property
    def writes_in_flight(self) -> int:
        """Writes under way: auto-commit writes, and work queued alone (keyspace opens,
        ``write_alone``)."""
        return self._waiting + self._in_flight + len(self._work)

    @property
    def max_connections(self) -> int:
        """How many connections the pool holds at most."""
        return self._connections.max_size

    def check(self) -> None:
        """Raise :class:`~aiolmdb.ClosedError` once the engine is closed."""
        if self._closed:
            raise ClosedError(f"environment {self._where} is closed")

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<PostgresEngine {self._where} {state}: {len(self._keyspaces)} keyspaces>"

    # -- keyspaces -------------------------------------------------------

    def open_keyspace(
        self,
        name: bytes | None,
        label: str,
        *,
        create: bool,
        integer_keys: bool = False,
        reverse_keys: bool = False,
        duplicates: bool = False,
        in_own_session: bool = False,
        behind_other_tasks: bool = False,
    ) -> Keyspace:
        """The keyspace ``name`` (None: the default one); pending until its row is found
        (or added, with ``create``).

        Opened twice, it is the same object, until it is dropped. As on LMDB,
        opening is refused while a write session is open, unless the caller
        awaits the open from outside it (``behind_other_tasks``): code that
        works here then works there. Outside an event loop (set-up code) the
        open is made at once, on a connection of its own.
        """
        self.check()
        refuse_key_orders("PostgreSQL", label, integer_keys, reverse_keys)
        refuse_duplicates("PostgreSQL", label, duplicates)
        known = self._keyspaces.get(name)
        if known is not None and not known.dropped and known.error is None:
            return known
        if self._sessions and (in_own_session or not behind_other_tasks):
            raise open_refusal(label, in_own_session, self._where)
        self._serial += 1
        keyspace = Keyspace(name, label, self._serial)
        self._keyspaces[name] = keyspace
        if loop_running():
            keyspace.opening = self._queue_alone(self._open_keyspace(keyspace, create))
        else:
            asyncio.run(self._outside_loop(lambda c: self._open_keyspace(keyspace, create, c)))
        return keyspace

    async def _open_keyspace(
        self, keyspace: Keyspace, create: bool, connections: Connections | None = None
    ) -> None:
        """Find (or add) the keyspace's row: the keyspace is then open, or knows why not."""
        connections = connections or self._connections
        name = keyspace.name

        async def find(conn: Connection) -> int | None:
            if name is None:
                return DEFAULT_KEYSPACE
            rows = await fetch_rows(conn, Sql.FIND_KEYSPACE, (name,))
            if not rows and create:
                rows = await fetch_rows(conn, Sql.ADD_KEYSPACE, (name,))
                if not rows:  # another client added it meanwhile
                    rows = await fetch_rows(conn, Sql.FIND_KEYSPACE, (name,))
            return int(rows[0][0]) if rows else None

        try:
            await connections.ready()
            ident = await connections.retrying(find)
        except UnavailableError as exc:
            if connections is self._connections:  # the next call tries again
                keyspace.retry_open = lambda: self._queue_alone(
                    self._open_keyspace(keyspace, create)
                )
            error: BaseException = exc
        except psycopg.Error as exc:
            error = user_error(exc, failure_of(exc), f"opening database {keyspace.label}")
        except Exception as exc:
            error = exc
        else:
            if ident is not None:
                keyspace.open_with(lambda: ident)
                return
            error = DatabaseNotFoundError(
                f"database {keyspace.label} does not exist in environment {self._where} "
                "(create=False)"
            )

        def fail() -> None:
            raise error

        keyspace.open_with(fail)

    async def database_names(self) -> list[bytes]:
        """The names of every named keyspace, from ``aiolmdb_keyspaces``."""
        self.check()
        await self._connections.ready()

        async def names(conn: Connection) -> list[bytes]:
            return [bytes(row[0]) for row in await fetch_rows(conn, Sql.KEYSPACE_NAMES, ())]

        try:
            return await self._connections.retrying(names)
        except psycopg.Error as exc:
            raise user_error(
                exc, failure_of(exc), f"listing the databases of {self._where}"
            ) from exc

    def forget_keyspace(self, keyspace: Keyspace) -> None:
        """After a drop: the keyspace is dead; opening its name again looks afresh."""
        keyspace.dropped = True
        if self._keyspaces.get(keyspace.name) is keyspace:
            del self._keyspaces[keyspace.name]

    # -- reads -----------------------------------------------------------

    def read_point(
        self, keyspace: Keyspace, key: bytes, decode: Callable[[bytes, Buffer | None], R]
    ) -> R:
        """Never on the event loop without waiting: always :class:`NotNowError` (the
        caller reads with :meth:`read_keys`)."""
        raise NotNowError

    def read_now(self, fn: Callable[[ReadView], R]) -> R:
        """Never on the event loop without waiting: always :class:`NotNowError`."""
        self.check()
        raise NotNowError

    async def read_keys(
        self, keyspace: Keyspace, keys: Sequence[bytes], decode: Callable[[list[Buffer | None]], R]
    ) -> R:
        """``decode(values)`` of the values of ``keys``: one statement, no transaction."""
        self.check()
        await self._connections.ready()
        ident = keyspace_id(keyspace)

        async def fetch(conn: Connection) -> list[Buffer | None]:
            if len(keys) == 1:
                rows = await fetch_rows(conn, Sql.GET, (ident, keys[0]))
                return [rows[0][0] if rows else None]
            found = dict(await fetch_rows(conn, Sql.GET_MANY, (ident, list(keys))))
            return [found.get(bytes(key)) for key in keys]

        try:
            values = await self._connections.retrying(fetch)
        except psycopg.Error as exc:
            raise user_error(exc, failure_of(exc), f"a read of {keyspace.label}") from exc
        return decode(values)

    async def read(self, fn: Callable[[ReadView], R], *, offload: bool = False) -> R:
        """``fn(view)`` in a REPEATABLE READ, READ ONLY transaction of its own."""
        self.check()
        await self._connections.ready()

        async def attempt(conn: Connection) -> R:
            await conn.execute(Sql.BEGIN_READ)
            result = await run_bridged(fn, PostgresReadView(conn))
            await conn.execute(Sql.COMMIT)
            return result

        try:
            return await self._connections.retrying(attempt)
        except psycopg.Error as exc:
            raise user_error(exc, failure_of(exc), f"a read of {self._where}") from exc

    async def offload(self, fn: Callable[..., R], *args: Any) -> R:
        """``fn(*args)`` on a worker thread (a large decode)."""
        self.check()
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    # -- auto-commit writes ----------------------------------------------

    def write(self, fn: Callable[[WriteView], R]) -> Awaitable[R]:
        """``fn(view)`` in a SERIALIZABLE transaction of its own, run again on a conflict.

        A caller cancelled before the commit leaves nothing applied; once the
        commit is sent, it is seen through before the cancellation is raised.
        """
        self.check()
        return self._write(fn)

    async def _write(self, fn: Callable[[WriteView], R]) -> R:
        await self._behind_work_alone()
        self.check()
        self._in_flight += 1
        self._drained.clear()
        try:
            await self._connections.ready()
            where = f"a write on environment {self._where}"
            result = await run_write(self._connections, fn, where)
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._drained.set()
        self._writes += 1
        if self._writes % FORGET_MARKERS_EVERY == 0:
            self._start(self._forget_markers())
        return result

    async def _behind_work_alone(self) -> None:
        """Wait until no work queued alone is under way (nothing runs beside it: a write
        that waited for one may find the next one queued meanwhile)."""
        while (alone := self._alone) is not None and not alone.done():
            self._waiting += 1
            try:
                await asyncio.wait([alone])
            finally:
                self._waiting -= 1

    async def _forget_markers(self) -> None:
        async def forget(conn: Connection) -> None:
            await conn.execute(Sql.FORGET_MARKERS)

        # Failing, they are deleted next time.
        with contextlib.suppress(Exception):
            await self._connections.retrying(forget)

    async def write_alone(self, fn: Callable[[WriteView], R]) -> R:
        """``fn(view)`` in a write transaction of its own, alone in this process: after the
        writes under way, before those begun meanwhile (as between LMDB's group commits).

        Work that changes what other writes rely on (an index build's chunks, a
        drop) runs so, in the order it is committed in.
        """
        self.check()
        where = f"a write on environment {self._where}"

        async def alone() -> R:
            await self._connections.ready()
            return await run_write(self._connections, fn, where)

        return await self._queue_alone(alone())

    def queue_alone(
        self,
        fn: Callable[[WriteView], R],
        what: str,
        *,
        committed: Callable[[R], None] | None = None,
        failed: Callable[[BaseException], None] | None = None,
    ) -> asyncio.Future[R] | None:
        """Queue ``fn(view)`` now, alone (see :meth:`write_alone`): every write queued
        afterwards waits for it; outside an event loop it runs at once, on a connection
        of its own, and this gives None.

        ``committed(result)`` or ``failed(error)`` runs before any later write.
        """
        self.check()

        async def alone(connections: Connections) -> R:
            try:
                await connections.ready()
                result = await run_write(connections, fn, f"opening {what}")
            except BaseException as exc:
                if failed is not None:
                    failed(exc)
                raise
            if committed is not None:
                committed(result)
            return result

        if loop_running():
            return self._queue_alone(alone(self._connections))
        if self._sessions:
            raise outside_loop_refusal(what, self._where)
        asyncio.run(self._outside_loop(alone))
        return None

    def _queue_alone(self, work: Coroutine[Any, Any, R]) -> asyncio.Future[R]:
        before = self._alone

        async def after_the_one_before() -> R:
            if before is not None and not before.done():
                await asyncio.wait([before])
            await self._drained.wait()  # the writes begun before it
            return await work

        task = self._start(after_the_one_before())
        self._alone = task
        return task

    async def _outside_loop(self, work: Callable[[Connections], Awaitable[R]]) -> R:
        """``work`` on a pool of its own, for set-up code that runs before the event loop
        (the engine's pool belongs to the loop that first uses it)."""
        connections = Connections(
            self._location,
            self._where,
            min_size=0,
            max_size=1,
            reconnect_timeout=self._reconnect_timeout,
        )
        try:
            return await work(connections)
        finally:
            await connections.close()

    def _start(self, work: Coroutine[Any, Any, R]) -> asyncio.Future[R]:
        task = asyncio.ensure_future(work)
        self._work.add(task)
        task.add_done_callback(self._work.discard)
        task.add_done_callback(ignore_outcome)
        return task

    # -- sessions and snapshots ------------------------------------------

    async def begin_session(self) -> PostgresSession:
        """Begin a SERIALIZABLE write transaction on a connection of its own."""
        self.check()
        await self._behind_work_alone()
        await self._connections.ready()
        conn = await self._connections.begin(Sql.BEGIN_WRITE)
        if self._closed:
            await self._connections.put(conn)
            self.check()
        session = PostgresSession(self._connections, conn, self._where, self._sessions.discard)
        self._sessions.add(session)
        return session

    async def begin_snapshot(self) -> PostgresSnapshot:
        """Begin a read snapshot: REPEATABLE READ, READ ONLY, on a connection of its own."""
        self.check()
        await self._connections.ready()
        conn = await self._connections.begin(Sql.BEGIN_READ)
        if self._closed:
            await self._connections.put(conn)
            self.check()
        snapshot = PostgresSnapshot(self._connections, conn, self._where, self._snapshots.discard)
        self._snapshots.add(snapshot)
        return snapshot

    # -- the rest --------------------------------------------------------

    async def sync(self, force: bool = False) -> None:
        """Nothing to flush: a commit is acknowledged once PostgreSQL made it durable."""
        self.check()

    async def close(self) -> None:
        """Finish the writes under way, abort the sessions, end the snapshots, close the
        pool. Closing twice is harmless."""
        if self._closed:
            return
        self._closed = True
        await self._drained.wait()
        if self._work:
            await asyncio.wait(list(self._work))
        endings = [session.abort() for session in list(self._sessions)]
        endings += [snapshot.release() for snapshot in list(self._snapshots)]
        if endings:
            await asyncio.gather(*endings, return_exceptions=True)
        self._keyspaces.clear()
        await self._connections.close()
