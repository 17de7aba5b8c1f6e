"""Long-lived transactions: a write session on the writer thread, a read snapshot.

A write session is an explicit ``env.transaction()``: one LMDB write
transaction held open on the writer thread while the task that opened it makes
calls. Each call is a hop to the writer thread and back; meanwhile other writers
wait in the writer's queue, not in blocked threads. Savepoints are LMDB nested
transactions pushed on the session's stack.

A call carries the savepoint it was made in, and the writer thread refuses it
unless that savepoint is still the innermost: a savepoint opened by one task
never swallows a call another task made in the transaction around it.

An auto-commit write (or another session) queued while a session is open
waits behind it. If the session's owner awaits it, neither can ever finish:
while the session sits idle, it asks the event loop whether its owner awaits
any of the work queued behind it, and refuses that work (:func:`submit_behind`,
:meth:`WriteSession.begin`).

A read snapshot is one LMDB read transaction whose calls are serialised by an
``asyncio.Lock`` (LMDB forbids using a read transaction from two threads at
once); small reads run on the loop thread, large ones on a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import queue
import threading
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import Executor
from typing import Any, TypeVar

import lmdb

from ...errors import TransactionError
from ..base import transaction_label
from ..deadlock import Queued, Watch
from ..waiting import call_awaitably, deliver, ignore_outcome, outlast_cancellation
from .reused_read import CommitCounter
from .views import LmdbReadView, LmdbWriteView
from .writer import disk_full_error, map_full_error

__all__ = ["ReadSnapshot", "WriteSession"]

R = TypeVar("R")

#: Seconds a session waits for its owner's next call before it looks for a deadlock;
#: the wait doubles after each look, up to IDLE_CHECK_MAX, until the owner's next call.
IDLE_CHECK = 0.05
IDLE_CHECK_MAX = 1.0

_BEGIN, _CALL, _SAVEPOINT, _RELEASE, _ROLLBACK, _COMMIT, _ABORT = range(7)


class _Op:
    __slots__ = ("fn", "future", "kind", "level", "loop", "savepoint")

    def __init__(
        self,
        kind: int,
        fn: Callable[[LmdbWriteView], Any] | None,
        loop: asyncio.AbstractEventLoop,
        savepoint: int = 0,
        level: int = 0,
    ) -> None:
        self.kind = kind
        self.fn = fn
        self.loop = loop
        self.savepoint = savepoint  # the savepoint a _SAVEPOINT/_RELEASE/_ROLLBACK is about
        # The savepoint a _CALL/_SAVEPOINT was made in (0: the root): it must be innermost.
        self.level = level
        self.future: asyncio.Future[Any] = loop.create_future()


class WriteSession:
    """One write transaction held open on the writer thread.

    :meth:`serve` is handed to the writer as exclusive work; the loop side
    talks to it through :meth:`call` and the savepoint/commit/abort methods.
    """

    def __init__(
        self,
        env: lmdb.Environment,
        begin: Callable[[], lmdb.Transaction],
        name: str,
        growth_refusal: Callable[[], str | None],
        on_end: Callable[[WriteSession], None],
        commits: CommitCounter,
        aborted: Callable[[], None] = lambda: None,
    ) -> None:
        self._env = env
        # Counts the commit, before the caller is told of it.
        self._commits = commits
        # Told on the writer thread once the whole transaction was aborted (a test hook).
        self._aborted = aborted
        # Tells the engine the session is ending: writes no longer wait behind it.
        self._on_end = on_end
        self._begin = begin  # begins the root write transaction
        self._name = name
        # Why the map cannot grow (None: it can), asked when a call finds it full.
        self._growth_refusal = growth_refusal
        #: Set when a call found the map full: it can grow once the session ends.
        self.map_was_full = False
        #: The task that opened the session (created by that task, on its event loop).
        self.owner = asyncio.current_task()
        self._loop = asyncio.get_running_loop()
        #: How error messages name the session's transaction.
        self.label = transaction_label("write transaction", self.owner, f"on environment {name}")
        #: Looks out for work queued behind the session that its owner awaits.
        self.watch = Watch(self.owner, self.label, lambda: self._ended)
        # Set when the session was queued behind others: it may be refused.
        self._queued: Queued | None = None
        self._ops: queue.SimpleQueue[_Op] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._ended = False
        # (savepoint id, transaction, its view), the root first: the writer thread's only.
        self._stack: list[tuple[int, lmdb.Transaction, LmdbWriteView]] = []
        #: Ids of the open savepoints, innermost last: the loop side's view of the stack.
        self.savepoints: list[int] = []
        self._ids = itertools.count(1)

    @property
    def ended(self) -> bool:
        """True once the session committed, aborted or failed to begin."""
        return self._ended

    @property
    def depth(self) -> int:
        """How many savepoints are open."""
        return len(self.savepoints)

    # -- loop side -------------------------------------------------------

    async def _send(
        self,
        kind: int,
        fn: Callable[[LmdbWriteView], Any] | None = None,
        savepoint: int = 0,
        level: int = 0,
    ) -> Any:
        self._check_not_ended()  # before the op: an abandoned session's child has no loop
        return await self._put(_Op(kind, fn, asyncio.get_running_loop(), savepoint, level))

    def _check_not_ended(self) -> None:
        # Checked before taking the lock too: an abandoned session's lock may be held.
        if self._ended:
            raise TransactionError(f"the write transaction on {self._name} has ended")

    def _put(self, op: _Op) -> asyncio.Future[Any]:
        self._check_not_ended()
        with self._lock:
            if self._ended:
                raise TransactionError(f"the write transaction on {self._name} has ended")
            self._ops.put(op)
        return op.future

    def _send_later(self, kind: int, savepoint: int = 0) -> None:
        """Queue an op without waiting for it (for a caller that was cancelled)."""
        if self._ended:
            return
        op = _Op(kind, None, asyncio.get_running_loop(), savepoint)
        op.future.add_done_callback(ignore_outcome)
        with self._lock:
            if not self._ended:
                self._ops.put(op)

    async def begin(self, behind: Collection[WriteSession] = ()) -> None:
        """Wait until the writer thread has begun the transaction.

        ``behind``: the sessions open before this one, which it waits behind.
        If the owner of one of them awaits this one (which would never begin),
        it is refused with :class:`~aiolmdb.TransactionError`.
        """
        op = _Op(_BEGIN, None, asyncio.get_running_loop())
        if behind:  # before it is queued: the writer thread reads it when serving it
            self._queued = Queued("another write transaction")
            self._queued.watch(op.future, [session.watch for session in behind])
        await self._put(op)

    async def call(self, fn: Callable[[LmdbWriteView], Any], level: int = 0) -> Any:
        """Run ``fn`` in savepoint ``level`` (0: the root); return its result.

        Refused with :class:`~aiolmdb.TransactionError` unless that savepoint
        is the innermost open one when the writer thread comes to the call.
        """
        return await self._send(_CALL, fn, level=level)

    async def savepoint(self, parent: int = 0) -> int:
        """Open a nested transaction inside savepoint ``parent`` (0: the root); return its id.

        Later calls go to it until it ends.
        """
        savepoint = next(self._ids)
        self.savepoints.append(savepoint)  # at once: other tasks see it is open
        try:
            await self._send(_SAVEPOINT, savepoint=savepoint, level=parent)
        except BaseException:
            # Cancelled or refused: whether or not the writer opened it, undo it.
            self._forget(savepoint)
            self._send_later(_ROLLBACK, savepoint)
            raise
        return savepoint

    async def release(self, savepoint: int) -> None:
        """Commit savepoint ``savepoint`` (the innermost) into its parent."""
        self._forget(savepoint)
        await self._send(_RELEASE, savepoint=savepoint)

    async def rollback(self, savepoint: int) -> None:
        """Abort savepoint ``savepoint``, with any savepoint opened inside it."""
        self._forget(savepoint)
        await self._send(_ROLLBACK, savepoint=savepoint)

    def _forget(self, savepoint: int) -> None:
        if savepoint in self.savepoints:
            del self.savepoints[self.savepoints.index(savepoint) :]

    async def commit(self) -> None:
        """Commit the whole transaction and end the session.

        With a savepoint still open, everything is aborted instead, and
        :class:`~aiolmdb.TransactionError` raised.
        """
        self._on_end(self)
        await self._send(_COMMIT)

    async def abort(self) -> None:
        """Abort the whole transaction, savepoints included, and end the session.

        Does nothing once the session has ended (whoever ended it: its
        writes are gone, or committed, either way).
        """
        self._on_end(self)
        if not self._ended:
            await self._send(_ABORT)

    def abandon(self) -> None:
        """In the child of a fork: the session is the parent's; never send it anything.

        Its lock may have been held by a thread that did not survive the fork.
        """
        self._ended = True

    def abort_later(self) -> None:
        """Queue an abort without waiting for it (when the opener was cancelled)."""
        self._on_end(self)
        self._send_later(_ABORT)

    # -- writer thread side ----------------------------------------------

    def serve(self) -> None:
        """Run on the writer thread until the transaction commits or aborts."""
        try:
            if self._queued is not None:
                self._queued.start()  # refused: it never begins
            txn = self._begin()
            self._stack = [(0, txn, LmdbWriteView(self._env, txn))]
        except BaseException as exc:
            self._finish(exc)
            raise
        try:
            idle = IDLE_CHECK
            while self._stack:
                try:
                    op = self._ops.get(timeout=idle)
                except queue.Empty:
                    self.watch.look_soon()  # is the owner awaiting work queued behind?
                    # A long legitimate wait (the owner awaits I/O) costs few looks.
                    idle = min(idle * 2, IDLE_CHECK_MAX)
                    continue
                idle = IDLE_CHECK
                try:
                    result = self._apply(op)
                except BaseException as exc:
                    deliver([(op, False, disk_full_error(exc, self._env, self._name))])
                else:
                    deliver([(op, True, result)])
        finally:
            self._abort_from(0)
            self._finish(TransactionError(f"the write transaction on {self._name} has ended"))

    def _apply(self, op: _Op) -> Any:
        stack = self._stack
        if op.kind in (_CALL, _SAVEPOINT) and stack[-1][0] != op.level:
            raise TransactionError(self._not_innermost(op))
        if op.kind == _CALL:
            assert op.fn is not None
            with self._telling_map_full():
                return op.fn(stack[-1][2])
        if op.kind == _SAVEPOINT:
            child = self._env.begin(write=True, parent=stack[-1][1])
            stack.append((op.savepoint, child, LmdbWriteView(self._env, child)))
        elif op.kind == _RELEASE:
            if stack[-1][0] != op.savepoint:
                raise TransactionError("cannot release a savepoint that is not the innermost")
            stack.pop()[1].commit()
        elif op.kind == _ROLLBACK:
            ids = [savepoint for savepoint, _, _ in stack]
            if op.savepoint in ids:  # else it is already gone
                self._abort_from(ids.index(op.savepoint))
        elif op.kind == _COMMIT:
            if len(stack) > 1:
                self._abort_from(0)
                raise TransactionError(
                    "cannot commit with a savepoint still open: the transaction was aborted"
                )
            # The commit may need pages of its own (to save LMDB's free list).
            with self._telling_map_full():
                stack.pop()[1].commit()
            self._commits.bump()
        elif op.kind == _ABORT:
            self._abort_from(0)
        return None

    def _not_innermost(self, op: _Op) -> str:
        where = "the transaction" if op.level == 0 else f"savepoint {op.level}"
        if op.level not in [savepoint for savepoint, _, _ in self._stack]:
            return f"{self.label}: {where} this call was made in has ended"
        return (
            f"{self.label}: a savepoint is open inside {where}, where this call was made: "
            "make calls through it (tasks sharing a transaction cannot each hold a "
            "savepoint at once)"
        )

    @contextlib.contextmanager
    def _telling_map_full(self) -> Iterator[None]:
        """A full map found inside is told what to do about it (see :meth:`_map_full_advice`)."""
        try:
            yield
        except lmdb.MapFullError as exc:
            raise map_full_error(exc, self._map_full_advice()) from exc

    def _map_full_advice(self) -> str:
        """What to tell a caller whose call found the map full (on the writer thread)."""
        refusal = self._growth_refusal()
        if refusal is not None:
            return (
                f"{refusal} and cannot grow: this transaction will not fit however often "
                "it runs, unless records are deleted or max_map_size is raised"
            )
        self.map_was_full = True
        return (
            "the map cannot grow while a write transaction is open; it grows when "
            "this transaction ends, so the transaction can be retried"
        )

    def _abort_from(self, level: int) -> None:
        """Abort the transactions of the stack from ``level`` up (0: all of them)."""
        whole = level == 0 and bool(self._stack)
        while len(self._stack) > level:
            self._stack.pop()[1].abort()
        if whole:
            self._aborted()

    def _finish(self, exc: BaseException) -> None:
        with self._lock:
            self._ended = True
        while True:
            try:
                op = self._ops.get_nowait()
            except queue.Empty:
                return
            # An abort that came after the end has nothing left to do: it
            # succeeds (the writer may end a session, on close, between a
            # caller's look at ``ended`` and its abort).
            deliver([(op, True, None) if op.kind == _ABORT else (op, False, exc)])


class ReadSnapshot:
    """One read transaction shared by many calls, one call at a time."""

    def __init__(
        self,
        txn: lmdb.Transaction,
        end: Callable[[lmdb.Transaction], None],
        executor: Executor,
        on_release: Callable[[ReadSnapshot], None],
    ) -> None:
        # Tells the engine the snapshot has ended.
        self._on_release = on_release
        # Let go of when it ends (see LmdbReadView.detach): an ended snapshot may be
        # kept (by a transaction waiting for its commit, a traceback).
        self._view: LmdbReadView | None = LmdbReadView(txn)
        self._end = end
        self._executor = executor
        self._lock = asyncio.Lock()
        self._closing = False

    @property
    def ended(self) -> bool:
        """True once the snapshot was released, or is being released."""
        return self._closing or self._view is None

    def _require(self) -> LmdbReadView:
        if self._closing or self._view is None:
            raise TransactionError("the read snapshot has ended")
        return self._view

    async def call(self, fn: Callable[[LmdbReadView], Any], *, offload: bool = False) -> Any:
        """Run ``fn(view)``: inline on the loop thread, or on a worker when ``offload``."""
        async with self._lock:
            view = self._require()
            try:
                if not offload:
                    return fn(view)
                loop = asyncio.get_running_loop()
                # Hold the lock until the worker is done: the transaction is not
                # to be used by two threads at once, even if our caller is cancelled.
                work = loop.run_in_executor(self._executor, call_awaitably, fn, view)
                try:
                    return await asyncio.shield(work)
                except asyncio.CancelledError:
                    await outlast_cancellation(work)
                    raise
            finally:
                if self._closing:  # release() came meanwhile: this call was the last
                    self.release_now()

    async def release(self) -> None:
        """End the snapshot, once the call in flight (if any) has finished.

        If the caller is cancelled while waiting, that call ends it.
        """
        self._closing = True
        if self._view is None or not self._lock.locked():
            self.release_now()
            return
        async with self._lock:
            self.release_now()

    def abandon(self) -> None:
        """In the child of a fork: let go of the parent's transaction without ending it.

        Ending it here would free the parent's slot in the reader table, which
        the lock file shares between processes.
        """
        self._closing = True
        self._view = None

    def release_now(self) -> None:
        """End the snapshot immediately (the caller knows nothing is in flight)."""
        self._closing = True
        self._on_release(self)
        if self._view is not None:
            view, self._view = self._view, None
            self._end(view.detach())
