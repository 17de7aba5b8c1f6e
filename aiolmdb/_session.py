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
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

import lmdb

from ._writer import deliver, map_full_error
from .errors import TransactionError

__all__ = ["ReadSnapshot", "WriteSession"]

_BEGIN, _CALL, _SAVEPOINT, _RELEASE, _ROLLBACK, _COMMIT, _ABORT = range(7)


class _Op:
    __slots__ = ("fn", "future", "kind", "loop")

    def __init__(
        self,
        kind: int,
        fn: Callable[[lmdb.Transaction], Any] | None,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.kind = kind
        self.fn = fn
        self.loop = loop
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
        self._stack: list[lmdb.Transaction] = []  # touched by the writer thread only
        self.depth = 0  # open savepoints; maintained on the loop side

    @property
    def ended(self) -> bool:
        """True once the session committed, aborted or failed to begin."""
        return self._ended

    # -- loop side -------------------------------------------------------

    async def _send(self, kind: int, fn: Callable[[lmdb.Transaction], Any] | None = None) -> Any:
        op = _Op(kind, fn, asyncio.get_running_loop())
        with self._lock:
            if self._ended:
                raise TransactionError(f"the write transaction on {self._name} has ended")
            self._ops.put(op)
        return await op.future

    async def begin(self) -> None:
        """Wait until the writer thread has begun the transaction."""
        await self._send(_BEGIN)

    async def call(self, fn: Callable[[lmdb.Transaction], Any]) -> Any:
        """Run ``fn`` on the innermost open (nested) transaction; return its result."""
        return await self._send(_CALL, fn)

    async def savepoint(self) -> None:
        """Open a nested transaction: later calls go to it until released or rolled back."""
        await self._send(_SAVEPOINT)
        self.depth += 1

    async def release(self) -> None:
        """Commit the innermost nested transaction into its parent."""
        self.depth -= 1
        await self._send(_RELEASE)

    async def rollback(self) -> None:
        """Abort the innermost nested transaction only."""
        self.depth -= 1
        await self._send(_ROLLBACK)

    async def commit(self) -> None:
        """Commit the whole transaction and end the session."""
        await self._send(_COMMIT)

    async def abort(self) -> None:
        """Abort the whole transaction and end the session."""
        await self._send(_ABORT)

    def abort_later(self) -> None:
        """Queue an abort without waiting for it (when the opener was cancelled)."""
        op = _Op(_ABORT, None, asyncio.get_running_loop())
        op.future.add_done_callback(_ignore_outcome)
        with self._lock:
            if not self._ended:
                self._ops.put(op)

    # -- writer thread side ----------------------------------------------

    def serve(self) -> None:
        """Run on the writer thread until the transaction commits or aborts."""
        try:
            self._stack = [self._begin()]
        except BaseException as exc:
            self._finish(exc)
            raise
        try:
            while self._stack:
                op = self._ops.get()
                try:
                    result = self._apply(op)
                except BaseException as exc:
                    deliver([(op, False, exc)])
                else:
                    deliver([(op, True, result)])
        finally:
            for txn in reversed(self._stack):
                txn.abort()
            self._stack = []
            self._finish(TransactionError(f"the write transaction on {self._name} has ended"))

    def _apply(self, op: _Op) -> Any:
        stack = self._stack
        if op.kind == _CALL:
            assert op.fn is not None
            try:
                return op.fn(stack[-1])
            except lmdb.MapFullError as exc:
                self.map_was_full = True
                raise map_full_error(
                    exc,
                    "the map cannot grow while a write transaction is open; it grows when "
                    "this transaction ends, so the transaction can be retried",
                ) from exc
        if op.kind == _SAVEPOINT:
            stack.append(self._env.begin(write=True, parent=stack[-1]))
        elif op.kind in (_RELEASE, _COMMIT):
            stack.pop().commit()
        elif op.kind == _ROLLBACK:
            stack.pop().abort()
        elif op.kind == _ABORT:
            while stack:
                stack.pop().abort()
        return None

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
        begin: Callable[[], lmdb.Transaction],
        end: Callable[[lmdb.Transaction], None],
        executor: Executor,
    ) -> None:
        self._txn: lmdb.Transaction | None = begin()
        self._end = end
        self._executor = executor
        self._lock = asyncio.Lock()

    @property
    def ended(self) -> bool:
        """True once the snapshot was released."""
        return self._txn is None

    def _require(self) -> lmdb.Transaction:
        if self._txn is None:
            raise TransactionError("the read snapshot has ended")
        return self._txn

    async def call(self, fn: Callable[[lmdb.Transaction], Any], *, offload: bool = False) -> Any:
        """Run ``fn(txn)``: inline on the loop thread, or on a worker when ``offload``."""
        async with self._lock:
            txn = self._require()
            if not offload:
                return fn(txn)
            loop = asyncio.get_running_loop()
            # Hold the lock until the worker is done: the transaction is not
            # to be used by two threads at once, even if our caller is cancelled.
            work = loop.run_in_executor(self._executor, fn, txn)
            try:
                return await asyncio.shield(work)
            except asyncio.CancelledError:
                await asyncio.wait([work])
                raise

    async def release(self) -> None:
        """End the snapshot, once every call in flight has finished."""
        async with self._lock:
            self.release_now()

    def release_now(self) -> None:
        """End the snapshot immediately (the caller knows nothing is in flight)."""
        if self._txn is not None:
            txn, self._txn = self._txn, None
            self._end(txn)


def _ignore_outcome(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # retrieved, so asyncio does not log it
