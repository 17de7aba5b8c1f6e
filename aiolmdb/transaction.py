"""``Transaction``: what ``env.transaction()`` returns."""

from __future__ import annotations

import asyncio
import contextvars
import enum
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import TransactionError
from .storage import ReadView, Session, Snapshot, WriteView, transaction_label
from .storage.optimistic import OptimisticSession

if TYPE_CHECKING:
    from .environment import AsyncEnvironment

__all__ = ["Transaction"]

R = TypeVar("R")


class _State(enum.Enum):
    NEW = "new"
    ACTIVE = "active"
    ENDED = "ended"


_NEW, _ACTIVE, _ENDED = _State.NEW, _State.ACTIVE, _State.ENDED

#: What a task that inherited an ended transaction is told to do instead.
_FRESH_CONTEXT = (
    "this task inherited it (it was started inside the block), and its calls never run "
    "outside it: start a task meant to outlive the block in a fresh context "
    "(contextvars.Context().run(asyncio.create_task, coro))"
)


class Transaction:
    """An explicit transaction over every database of one environment.

    Enter it with ``async with env.transaction() as txn:``. Every database and
    collection call made inside the block, in that task, joins it; calls from
    other tasks join it when given ``txn=txn``. A write transaction commits
    when the block exits cleanly and aborts when it exits with an exception;
    :meth:`commit` and :meth:`abort` end it early. Calls made with a
    transaction that has ended raise :class:`~aiolmdb.TransactionError`.

    Nested inside a write transaction, a write transaction is a savepoint
    (an LMDB nested transaction): an exception inside rolls back only the
    inner block. A read transaction (``write=False``) is a snapshot: every
    read inside sees one consistent state, whatever commits meanwhile; nested
    inside a write transaction it joins it (reads see its writes).

    An optimistic one (``env.transaction(optimistic=True)``, on an engine with
    one writer) holds nothing while it is open: its reads run on a read
    snapshot on the event loop, its writes wait in a buffer that its reads
    see, and its commit applies them in the writer's next group commit only
    if nothing it read has changed since, else raises
    :class:`~aiolmdb.ConflictError` with nothing applied.

    Tasks started inside the block inherit the transaction: their calls join
    it while it is open, and raise :class:`~aiolmdb.TransactionError` once it
    has ended (they never fall back to auto-commit, nor open a transaction of
    their own). A task meant to outlive the block must be started in a fresh
    ``contextvars.Context``.
    """

    def __init__(self, env: AsyncEnvironment, *, write: bool, optimistic: bool = False) -> None:
        self.env = env
        self.write = write
        self._optimistic = optimistic
        self._state = _NEW
        self._session: Session | None = None
        self._snapshot: Snapshot | None = None
        self._depth = 0  # savepoint depth of this transaction within its session
        self._savepoint: int | None = None  # its savepoint's id, when it is one
        self._level = 0  # the savepoint its calls run in (0: the root transaction)
        self._outer: Transaction | None = None  # the transaction it nests in
        self._owner = True  # False when it only joins an enclosing transaction
        self._token: contextvars.Token[Transaction | None] | None = None
        #: The task that entered the block: its calls join the transaction implicitly.
        self.owner: asyncio.Task[Any] | None = None
        # Databases opened after the LMDB transaction began are invisible to it.
        self.handles_known = 0

    @property
    def active(self) -> bool:
        """True between entering the block and the transaction's end."""
        return self._state == _ACTIVE

    @property
    def optimistic(self) -> bool:
        """True when the transaction is optimistic: its writes wait in a buffer for its
        commit, which applies them only if nothing it read has changed (it may raise
        :class:`~aiolmdb.ConflictError`)."""
        return isinstance(self._session, OptimisticSession)

    @property
    def reads_inline(self) -> bool:
        """True when its reads run on the event loop (a read snapshot, an optimistic
        transaction), so a long series of them must let other tasks run now and then."""
        return self._snapshot is not None or self.optimistic

    @property
    def sees_own_writes(self) -> bool:
        """True when its reads happen in a write transaction (this one or one it joined)."""
        return self._session is not None

    async def __aenter__(self) -> Transaction:
        self.env.engine.check()
        if self._state != _NEW:
            raise TransactionError("a Transaction can be entered only once")
        self.owner = asyncio.current_task()
        self.handles_known = self.env.engine.keyspace_serial
        outer = self.env.current_transaction()
        if outer is not None and outer.owner is not self.owner:
            # Inherited: nest in it while it is open, never escape it once it ended.
            outer.check_inherited()
        if outer is not None and outer.active:
            await self._nest_in(outer)
        elif self.write:
            engine = self.env.engine
            if self._optimistic and engine.capabilities.serial_writes:
                self._session = await OptimisticSession.begin(engine, self.env.shared_snapshots)
            else:  # an engine whose writes run side by side conflicts already
                self._session = await engine.begin_session()
        else:
            self._snapshot = await self.env.engine.begin_snapshot()
        self._state = _ACTIVE
        self._token = self.env.enter_transaction(self)
        return self

    async def _nest_in(self, outer: Transaction) -> None:
        self.handles_known = outer.handles_known
        self._outer = outer
        if outer._session is not None:
            self._session = outer._session
            if self.write:
                outer.check_usable()
                self._depth = outer._depth + 1
                self._savepoint = self._level = await self._session.savepoint(outer._level)
            else:
                self._owner = False
                self._depth = outer._depth
                self._level = outer._level
        elif self.write:
            raise TransactionError("cannot open a write transaction inside a read snapshot")
        else:
            self._snapshot = outer._snapshot
            self._owner = False

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self._state == _ACTIVE:
                if exc_type is None:
                    try:
                        await self.commit()
                    except BaseException:
                        await self.abort()  # never leave it open
                        raise
                else:
                    await self.abort()
        finally:
            if self._token is not None:
                self.env.leave_transaction(self._token)
                self._token = None

    async def commit(self) -> None:
        """Commit now (a savepoint: into its parent). The block's end then does nothing."""
        self._end_check("commit")
        await self._end(commit=True)

    async def abort(self) -> None:
        """Abort now (a savepoint: roll back only its own writes, and any savepoint inside).

        Always ends the transaction, whatever is open inside it.
        """
        if self._state == _NEW:
            raise TransactionError("cannot abort a transaction that was not entered")
        if self._state == _ENDED:
            return
        await self._end(commit=False)

    async def _end(self, *, commit: bool) -> None:
        self._state = _ENDED
        if not self._owner:
            return
        if self._snapshot is not None:
            await self._snapshot.release()
        elif self._session is not None:
            session = self._session
            if self._savepoint is not None:
                try:
                    savepoint = self._savepoint
                    await (session.release(savepoint) if commit else session.rollback(savepoint))
                except TransactionError:
                    if commit or not session.ended:
                        raise
                    # Rolled back already: its enclosing transaction ended meanwhile.
            else:
                await (session.commit() if commit else session.abort())

    def _end_check(self, action: str) -> None:
        if self._state == _NEW:
            raise TransactionError(f"cannot {action} a transaction that was not entered")
        if self._state == _ENDED:
            raise TransactionError(f"cannot {action}: the transaction has already ended")
        session = self._session
        if session is not None:
            self.env.engine.check()  # closed (or forked) since: its writes cannot be committed
        if self._owner and session is not None and session.depth > self._depth:
            raise TransactionError(f"cannot {action}: a savepoint opened inside is still open")
        self.check_usable()

    def describe(self) -> str:
        """How error messages name this transaction: its kind, its opener, what it nests in."""
        if self._outer is not None:
            kind = "savepoint" if self.write else "read block"
            return transaction_label(kind, self.owner, f"inside {self._outer.describe()}")
        if self._session is not None:
            return self._session.label
        kind = "write transaction" if self.write else "read snapshot"
        return transaction_label(kind, self.owner, f"on environment {self.env.engine.description}")

    def check_inherited(self) -> None:
        """Like :meth:`check_usable`, for a call that found this transaction in its context.

        A task started inside the block inherits it; once it has ended, that
        task is told so, and how to start a task meant to outlive the block.
        """
        if self._state == _ENDED and self.owner is not asyncio.current_task():
            raise TransactionError(f"{self.describe()} has ended; {_FRESH_CONTEXT}")
        self.check_usable()

    def check_usable(self) -> None:
        """Raise ``TransactionError`` unless calls may be made in this transaction now."""
        if self._state == _NEW:
            raise TransactionError("the transaction has not been entered: it cannot be used")
        if self._state == _ENDED:
            raise TransactionError(f"{self.describe()} has ended: it cannot be used")
        session = self._session
        if session is None:
            return
        if session.ended:
            raise TransactionError(f"{self.describe()} has ended: it cannot be used")
        if self._savepoint is not None and self._savepoint not in session.savepoints:
            raise TransactionError(
                f"{self.describe()} has ended: the transaction around it rolled it back"
            )
        if session.depth > self._depth:
            raise TransactionError(
                f"a savepoint is open inside {self.describe()}: make calls through it "
                "(tasks sharing a transaction cannot each hold a savepoint at once)"
            )

    async def run_read(self, fn: Callable[[ReadView], R], *, offload: bool) -> R:
        """Run ``fn(view)`` in this transaction, for reading."""
        self.check_usable()  # again: another task may have opened a savepoint meanwhile
        result: Any
        session = self._session
        if isinstance(session, OptimisticSession):  # its reads run where the snapshot's do
            result = await session.call(fn, self._level, offload=offload)
        elif session is not None:
            result = await session.call(fn, self._level)
        else:
            assert self._snapshot is not None
            result = await self._snapshot.call(fn, offload=offload)
        return result  # type: ignore[no-any-return]

    async def run_write(self, fn: Callable[[WriteView], R]) -> R:
        """Run ``fn(view)`` in this write transaction."""
        if not self.write or self._session is None:
            raise TransactionError(
                "cannot write inside a read-only transaction (env.transaction(write=False))"
            )
        self.check_usable()  # again: another task may have opened a savepoint meanwhile
        result: R = await self._session.call(fn, self._level)
        return result

    def __repr__(self) -> str:
        kind = "write" if self.write else "read"
        return f"<Transaction {kind} {self._state.value}>"
