"""``PostgresSession`` and ``PostgresSnapshot``: transactions held open across awaits.

A session is one SERIALIZABLE transaction on a connection of its own, for
``env.transaction()``: sessions run side by side (PostgreSQL serialises
them, and raises a conflict where it cannot), and nothing else waits behind
them. Savepoints are PostgreSQL savepoints. Calls of one session run one at
a time, each whole, as on every engine: two tasks sharing a transaction
never interleave their statements.

A snapshot is one REPEATABLE READ, READ ONLY transaction: every read sees
the state of its first statement.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable
from typing import TypeVar

import psycopg

from ...errors import AiolmdbError, ConnectionLostError, TransactionError
from ..base import ReadView, WriteView, transaction_label
from ..savepoints import Savepoints
from .bridge import run_bridged
from .commits import CommitOutcome, commit_settled, new_marker
from .connections import Connection, Connections
from .failures import Failure, failure_of, user_error
from .views import PostgresReadView, PostgresWriteView, run_statement

__all__ = ["PostgresSession", "PostgresSnapshot", "SessionState"]

R = TypeVar("R")


class SessionState(enum.Enum):
    """Where a session is in its life."""

    OPEN = "open"
    #: A statement failed (a conflict, a lost connection, a refusal), or a call was
    #: cancelled midway: the transaction can only be aborted; calls raise why.
    FAILED = "failed"
    ENDED = "ended"


def _savepoint_name(savepoint: int) -> str:
    return f"aiolmdb_savepoint_{savepoint}"


class PostgresSession:
    """One interactive write transaction on its own connection."""

    def __init__(
        self,
        connections: Connections,
        conn: Connection,
        where: str,
        on_end: Callable[[PostgresSession], None],
    ) -> None:
        self._connections = connections
        self._conn = conn
        self._on_end = on_end
        #: The task that opened the session.
        self.owner = asyncio.current_task()
        #: How error messages name the session's transaction.
        self.label = transaction_label("write transaction", self.owner, f"on environment {where}")
        self._stack: Savepoints[None] = Savepoints(self.label)
        self._stack.begin(None)
        self._state = SessionState.OPEN
        self._failure: AiolmdbError | None = None
        # The connection cannot be given back to the pool (lost, or a statement cut short).
        self._spoilt = False
        self._lock = asyncio.Lock()

    @property
    def state(self) -> SessionState:
        """Where the session is in its life."""
        return self._state

    @property
    def ended(self) -> bool:
        """True once committed or aborted."""
        return self._state is SessionState.ENDED

    @property
    def savepoints(self) -> list[int]:
        """Ids of the open savepoints, innermost last."""
        return self._stack.ids

    @property
    def depth(self) -> int:
        """How many savepoints are open."""
        return self._stack.depth

    async def call(self, fn: Callable[[WriteView], R], level: int = 0) -> R:
        """Run ``fn(view)`` in savepoint ``level`` (0: the transaction); return its result."""
        self._require_usable(level)
        async with self._lock:
            self._require_usable(level)  # again: another call may have ended it meanwhile
            return await self._run(run_bridged(fn, PostgresWriteView(self._conn)))

    async def savepoint(self, parent: int = 0) -> int:
        """Open a savepoint inside ``parent`` (the innermost); return its id."""
        self._require_usable(parent)
        async with self._lock:
            self._require_usable(parent)
            savepoint = self._stack.push(None)
            try:
                await self._run(
                    run_statement(self._conn, f"SAVEPOINT {_savepoint_name(savepoint)}")
                )
            except BaseException:
                self._stack.pop()
                raise
            return savepoint

    async def release(self, savepoint: int) -> None:
        """Commit savepoint ``savepoint`` (the innermost) into its parent."""
        self._require_usable(None)
        self._stack.require_releasable(savepoint)
        async with self._lock:
            self._require_usable(None)
            await self._run(
                run_statement(self._conn, f"RELEASE SAVEPOINT {_savepoint_name(savepoint)}")
            )
            self._stack.pop()

    async def rollback(self, savepoint: int) -> None:
        """Undo savepoint ``savepoint``, with every savepoint opened inside it."""
        if self._state is SessionState.ENDED:
            raise TransactionError(f"{self.label} has ended")
        if savepoint not in self.savepoints:
            return  # already gone
        async with self._lock:
            if savepoint not in self.savepoints:
                return
            self._stack.above(savepoint)
            self._stack.pop()
            if self._state is SessionState.FAILED:
                return  # the transaction is aborted as a whole anyway
            name = _savepoint_name(savepoint)
            await self._run(
                run_statement(self._conn, f"ROLLBACK TO SAVEPOINT {name}; RELEASE SAVEPOINT {name}")
            )

    async def commit(self) -> None:
        """Commit the transaction; with a savepoint open, abort everything instead and raise.

        Raises :class:`~aiolmdb.ConflictError` (nothing applied) when
        PostgreSQL cannot serialise it, :class:`~aiolmdb.ConnectionLostError`
        when the connection was lost and the commit did not happen, and
        :class:`~aiolmdb.CommitUnknownError` when that cannot be known.
        """
        if self._state is SessionState.FAILED:
            failure = self._failure
            await self.abort()
            assert failure is not None
            raise failure
        self._require_usable(None)
        if self.depth:
            await self.abort()
            raise TransactionError(
                f"{self.label}: cannot commit with a savepoint still open: "
                "the transaction was aborted"
            )
        async with self._lock:
            conn = self._conn
            self._finish()  # the connection is the commit's to give back
            outcome = await commit_settled(self._connections, conn, new_marker(), self.label)
            if outcome is CommitOutcome.NOT_APPLIED:
                raise ConnectionLostError(
                    f"{self.label} lost its connection while it committed, and the commit "
                    "did not happen: nothing of it was applied; run it again "
                    "(env.transact does)"
                )

    async def abort(self) -> None:
        """Abort the transaction, savepoints included; a no-op once it has ended."""
        if self._state is SessionState.ENDED:
            return
        async with self._lock:
            await self._end()

    def abandon(self) -> asyncio.Future[None] | None:
        """End the session without waiting (the environment closes): rolled back."""
        if self._state is SessionState.ENDED:
            return None
        return asyncio.ensure_future(self.abort())

    # -- inside ----------------------------------------------------------

    def _require_usable(self, level: int | None) -> None:
        if self._state is SessionState.ENDED:
            raise TransactionError(f"{self.label} has ended")
        if self._state is SessionState.FAILED:
            assert self._failure is not None
            raise type(self._failure)(f"{self._failure} (the transaction can only be aborted)")
        if level is not None:
            self._stack.require_innermost(level)

    async def _run(self, work: Awaitable[R]) -> R:
        """Await ``work`` (a statement, a bridged function); a driver error fails the session."""
        try:
            return await work
        except psycopg.Error as exc:
            failure = failure_of(exc)
            self._fail(user_error(exc, failure, self.label), spoilt=failure is Failure.LOST)
            assert self._failure is not None
            raise self._failure from exc
        except asyncio.CancelledError:
            # A statement may be left half-answered on the connection: no more calls.
            self._fail(TransactionError(f"{self.label}: a call was cancelled midway"), spoilt=True)
            raise

    def _fail(self, error: AiolmdbError, *, spoilt: bool) -> None:
        if self._state is SessionState.OPEN:
            self._state = SessionState.FAILED
            self._failure = error
        self._spoilt = self._spoilt or spoilt

    def _finish(self) -> None:
        self._state = SessionState.ENDED
        self._stack.clear()
        self._on_end(self)

    async def _end(self) -> None:
        """End the session: its connection goes back to the pool (rolled back there), or
        is closed if it is spoilt."""
        if self._state is SessionState.ENDED:
            return
        self._finish()
        if self._spoilt or self._conn.broken:
            await self._connections.discard(self._conn, self._failure or ConnectionError())
        else:
            await self._connections.put(self._conn)


class PostgresSnapshot:
    """A read snapshot: a REPEATABLE READ, READ ONLY transaction on its own connection."""

    def __init__(
        self,
        connections: Connections,
        conn: Connection,
        where: str,
        on_end: Callable[[PostgresSnapshot], None],
    ) -> None:
        self._connections = connections
        self._conn: Connection | None = conn
        self._on_end = on_end
        self._label = transaction_label(
            "read snapshot", asyncio.current_task(), f"on environment {where}"
        )
        self._lock = asyncio.Lock()

    @property
    def ended(self) -> bool:
        """True once released (or being released)."""
        return self._conn is None

    async def call(self, fn: Callable[[ReadView], R], *, offload: bool = False) -> R:
        """Run ``fn(view)`` in the snapshot (``offload`` changes nothing: the statements
        are awaited on the event loop)."""
        async with self._lock:
            conn = self._conn
            if conn is None:
                raise TransactionError(f"{self._label} has ended")
            try:
                return await run_bridged(fn, PostgresReadView(conn))
            except psycopg.Error as exc:
                raise user_error(exc, failure_of(exc), self._label) from exc

    async def release(self) -> None:
        """End the snapshot once the call in flight (if any) finished."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        self._on_end(self)
        async with self._lock:
            await self._connections.put(conn)  # rolled back there: nothing to commit
