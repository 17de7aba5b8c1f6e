"""Long-lived transactions: a write session on the writer thread, a read snapshot.

A write session is an explicit ``env.transaction()``: one LMDB write
transaction held open on the writer thread while the task that opened it makes
calls. Each call is a hop to the writer thread and back; meanwhile other writers
wait in the writer's queue, not in blocked threads. Savepoints are LMDB nested
transactions pushed on the session's stack.

A read snapshot is one LMDB read transaction whose calls are serialised by an
``asyncio.Lock`` (LMDB forbids using a read transaction from two threads at
once); small reads run on the loop thread, large ones on a worker thread.
"""

from __future__ import annotations

import asyncio
import itertools
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

import lmdb

from ._writer import call_awaitably, deliver, disk_full_error, map_full_error
from .errors import TransactionError

__all__ = ["ReadSnapshot", "WriteSession"]

_BEGIN, _CALL, _SAVEPOINT, _RELEASE, _ROLLBACK, _COMMIT, _ABORT = range(7)


class _Op:
    __slots__ = ("fn", "future", "kind", "loop", "savepoint")

    def __init__(
        self,
        kind: int,
        fn: Callable[[lmdb.Transaction], Any] | None,
        loop: asyncio.AbstractEventLoop,
        savepoint: int = 0,
    ) -> None:
        self.kind = kind
        self.fn = fn
        self.loop = loop
        self.savepoint = savepoint  # the savepoint a _SAVEPOINT/_RELEASE/_ROLLBACK is about
        self.future: asyncio.Future[Any] = loop.create_future()


class WriteSession:
    """One write transaction held open on the writer thread.

    :meth:`serve` is handed to the writer as exclusive work; the loop side
    talks to it through :meth:`call` and the savepoint/commit/abort methods.
    """

    def __init__(
        self, env: lmdb.Environment, begin: Callable[[], lmdb.Transaction], name: str
    ) -> None:
        self._env = env
        self._begin = begin  # begins the root write transaction
        self._name = name
        #: Set when a call found the map full: it can grow once the session ends.
        self.map_was_full = False
        self._ops: queue.SimpleQueue[_Op] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._ended = False
        # (savepoint id, transaction), the root first: touched by the writer thread only.
        self._stack: list[tuple[int, lmdb.Transaction]] = []
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
        self, kind: int, fn: Callable[[lmdb.Transaction], Any] | None = None, savepoint: int = 0
    ) -> Any:
        op = _Op(kind, fn, asyncio.get_running_loop(), savepoint)
        with self._lock:
            if self._ended:
                raise TransactionError(f"the write transaction on {self._name} has ended")
            self._ops.put(op)
        return await op.future

    def _send_later(self, kind: int, savepoint: int = 0) -> None:
        """Queue an op without waiting for it (for a caller that was cancelled)."""
        op = _Op(kind, None, asyncio.get_running_loop(), savepoint)
        op.future.add_done_callback(_ignore_outcome)
        with self._lock:
            if not self._ended:
                self._ops.put(op)

    async def begin(self) -> None:
        """Wait until the writer thread has begun the transaction."""
        await self._send(_BEGIN)

    async def call(self, fn: Callable[[lmdb.Transaction], Any]) -> Any:
        """Run ``fn`` on the innermost open (nested) transaction; return its result."""
        return await self._send(_CALL, fn)

    async def savepoint(self) -> int:
        """Open a nested transaction, returning its id: later calls go to it until it ends."""
        savepoint = next(self._ids)
        self.savepoints.append(savepoint)  # at once: other tasks see it is open
        try:
            await self._send(_SAVEPOINT, savepoint=savepoint)
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
        await self._send(_COMMIT)

    async def abort(self) -> None:
        """Abort the whole transaction, savepoints included, and end the session."""
        await self._send(_ABORT)

    def abort_later(self) -> None:
        """Queue an abort without waiting for it (when the opener was cancelled)."""
        self._send_later(_ABORT)

    # -- writer thread side ----------------------------------------------

    def serve(self) -> None:
        """Run on the writer thread until the transaction commits or aborts."""
        try:
            self._stack = [(0, self._begin())]
        except BaseException as exc:
            self._finish(exc)
            raise
        try:
            while self._stack:
                op = self._ops.get()
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
        if op.kind == _CALL:
            assert op.fn is not None
            try:
                return op.fn(stack[-1][1])
            except lmdb.MapFullError as exc:
                self.map_was_full = True
                raise map_full_error(
                    exc,
                    "the map cannot grow while a write transaction is open; it grows when "
                    "this transaction ends, so the transaction can be retried",
                ) from exc
        if op.kind == _SAVEPOINT:
            stack.append((op.savepoint, self._env.begin(write=True, parent=stack[-1][1])))
        elif op.kind == _RELEASE:
            if stack[-1][0] != op.savepoint:
                raise TransactionError("cannot release a savepoint that is not the innermost")
            stack.pop()[1].commit()
        elif op.kind == _ROLLBACK:
            ids = [savepoint for savepoint, _ in stack]
            if op.savepoint in ids:  # else it is already gone
                self._abort_from(ids.index(op.savepoint))
        elif op.kind == _COMMIT:
            if len(stack) > 1:
                self._abort_from(0)
                raise TransactionError(
                    "cannot commit with a savepoint still open: the transaction was aborted"
                )
            stack.pop()[1].commit()
        elif op.kind == _ABORT:
            self._abort_from(0)
        return None

    def _abort_from(self, level: int) -> None:
        """Abort the transactions of the stack from ``level`` up (0: all of them)."""
        while len(self._stack) > level:
            self._stack.pop()[1].abort()

    def _finish(self, exc: BaseException) -> None:
        with self._lock:
            self._ended = True
        while True:
            try:
                op = self._ops.get_nowait()
            except queue.Empty:
                return
            deliver([(op, False, exc)])


class ReadSnapshot:
    """One read transaction shared by many calls, one call at a time."""

    def __init__(
        self,
        txn: lmdb.Transaction,
        end: Callable[[lmdb.Transaction], None],
        executor: Executor,
    ) -> None:
        self._txn: lmdb.Transaction | None = txn
        self._end = end
        self._executor = executor
        self._lock = asyncio.Lock()
        self._closing = False

    @property
    def ended(self) -> bool:
        """True once the snapshot was released, or is being released."""
        return self._closing or self._txn is None

    def _require(self) -> lmdb.Transaction:
        if self._closing or self._txn is None:
            raise TransactionError("the read snapshot has ended")
        return self._txn

    async def call(self, fn: Callable[[lmdb.Transaction], Any], *, offload: bool = False) -> Any:
        """Run ``fn(txn)``: inline on the loop thread, or on a worker when ``offload``."""
        async with self._lock:
            txn = self._require()
            try:
                if not offload:
                    return fn(txn)
                loop = asyncio.get_running_loop()
                # Hold the lock until the worker is done: the transaction is not
                # to be used by two threads at once, even if our caller is cancelled.
                work = loop.run_in_executor(self._executor, call_awaitably, fn, txn)
                try:
                    return await asyncio.shield(work)
                except asyncio.CancelledError:
                    await _outlast_cancellation(work)
                    raise
            finally:
                if self._closing:  # release() came meanwhile: this call was the last
                    self.release_now()

    async def release(self) -> None:
        """End the snapshot, once the call in flight (if any) has finished.

        If the caller is cancelled while waiting, that call ends it.
        """
        self._closing = True
        if not self._lock.locked():
            self.release_now()
            return
        async with self._lock:
            self.release_now()

    def release_now(self) -> None:
        """End the snapshot immediately (the caller knows nothing is in flight)."""
        self._closing = True
        if self._txn is not None:
            txn, self._txn = self._txn, None
            self._end(txn)


def _ignore_outcome(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # retrieved, so asyncio does not log it


async def _outlast_cancellation(work: asyncio.Future[Any]) -> None:
    """Wait for ``work`` to finish, however many times the waiter is cancelled meanwhile."""
    while not work.done():
        try:
            await asyncio.wait([work])
        except asyncio.CancelledError:
            continue
