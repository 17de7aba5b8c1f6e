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
import functools
import itertools
import queue
import threading
from collections.abc import Awaitable, Callable, Collection, Iterator
from concurrent.futures import Executor
from typing import Any, TypeVar

import lmdb

from ._writer import call_awaitably, deliver, disk_full_error, map_full_error
from .errors import TransactionError

__all__ = ["ReadSnapshot", "WriteSession", "opener", "submit_behind"]

R = TypeVar("R")

#: Seconds a session waits for its owner's next call before it looks for a deadlock;
#: the wait doubles after each look, up to IDLE_CHECK_MAX, until the owner's next call.
IDLE_CHECK = 0.05
IDLE_CHECK_MAX = 1.0
#: Futures visited at most when looking for who awaits a queued write.
_AWAIT_WALK_LIMIT = 10_000
#: Queued writes looked at per turn of the event loop.
_LOOK_SLICE = 256

_BEGIN, _CALL, _SAVEPOINT, _RELEASE, _ROLLBACK, _COMMIT, _ABORT = range(7)


class _Op:
    __slots__ = ("fn", "future", "kind", "level", "loop", "savepoint")

    def __init__(
        self,
        kind: int,
        fn: Callable[[lmdb.Transaction], Any] | None,
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


def opener(kind: str, task: asyncio.Task[Any] | None, where: str) -> str:
    """How messages name a transaction: its kind, the task that opened it, where it is."""
    by = f"task {task.get_name()!r}" if task is not None else "no task"
    return f"the {kind} opened by {by} {where}"


class _Queued:
    """Work queued behind open sessions (a write, or another session): refused, or begun.

    The event loop may refuse it (its future then fails) only until the writer
    thread begins it; once refused, the writer thread never runs it.
    """

    __slots__ = ("error", "future", "lock", "started", "what")

    def __init__(self, what: str) -> None:
        self.what = what  # how the refusal names it
        self.future: asyncio.Future[Any] | None = None  # what its caller awaits, once queued
        self.lock = threading.Lock()
        self.started = False
        self.error: TransactionError | None = None

    def start(self) -> None:
        """On the writer thread: raise the refusal, or make refusing it impossible."""
        with self.lock:
            if self.error is not None:
                raise self.error
            self.started = True

    def guarding(self, fn: Callable[[lmdb.Transaction], R]) -> Callable[[lmdb.Transaction], R]:
        """``fn``, run only if the work was not refused."""

        def run(txn: lmdb.Transaction) -> R:
            self.start()
            return fn(txn)

        return run

    def watch(self, future: asyncio.Future[Any], sessions: Collection[WriteSession]) -> None:
        """Have ``sessions`` watch the work, whose caller awaits ``future``, until it is done.

        Done (refused, cancelled, or run once the sessions ended), it leaves
        their ``behind`` at once: a session kept busy never looks at it, and
        would hold on to it for as long as it is open.
        """
        self.future = future
        watchers = tuple(sessions)  # the sessions open now, not those opened later
        for session in watchers:
            session.behind.add(self)
        future.add_done_callback(functools.partial(self._unwatch, watchers))

    def _unwatch(self, watchers: tuple[WriteSession, ...], _: asyncio.Future[Any]) -> None:
        for session in watchers:
            session.behind.discard(self)

    def refuse(self, error: TransactionError) -> None:
        """On the event loop: fail the work, unless the writer thread has begun it."""
        with self.lock:
            if self.started:
                return
            self.error = error
        if self.future is not None and not self.future.done():
            self.future.set_exception(error)


def submit_behind(
    sessions: Collection[WriteSession],
    submit: Callable[[Callable[[lmdb.Transaction], Any]], Awaitable[Any]],
    fn: Callable[[lmdb.Transaction], R],
) -> Awaitable[R]:
    """Submit an auto-commit write with ``submit`` while ``sessions`` are open.

    Each session then watches for its owner awaiting this write, which would
    never finish (it waits behind the session): that write is refused with
    :class:`~aiolmdb.TransactionError` instead. A write made to wait for room
    in the writer's queue (not a future yet) is not watched.
    """
    queued = _Queued("a write made outside it")
    job = submit(queued.guarding(fn))
    if isinstance(job, asyncio.Future):
        queued.watch(job, sessions)
    return job


def _awaited_by(start: asyncio.Future[Any], target: asyncio.Future[Any]) -> bool:
    """True when ``target`` (a task) waits, through any chain of awaits, for ``start``.

    Follows each future's done callbacks up to whoever waits for it: a task's
    wake-up, and the futures held by asyncio's wrappers (gather, wait, wait_for,
    shield, task groups). Best effort: a wrapper it does not know ends the chain.
    """
    seen: set[int] = set()
    pending = [start]
    while pending and len(seen) < _AWAIT_WALK_LIMIT:
        future = pending.pop()
        if future is target:
            return True
        if id(future) in seen:
            continue
        seen.add(id(future))
        for callback, *_ in getattr(future, "_callbacks", None) or ():
            pending.extend(_futures_held_by(callback))
    return False


def _futures_held_by(callback: Any) -> Iterator[asyncio.Future[Any]]:
    bound_to = getattr(callback, "__self__", None)
    if isinstance(bound_to, asyncio.Future):
        yield bound_to  # a task's wake-up: that task awaits the future
    parent = getattr(bound_to, "_parent_task", None)  # an asyncio.TaskGroup
    if isinstance(parent, asyncio.Future):
        yield parent
    held: list[Any] = []
    if isinstance(callback, functools.partial):
        held.extend(callback.args)
    for cell in getattr(callback, "__closure__", None) or ():
        with contextlib.suppress(ValueError):  # an empty cell
            held.append(cell.cell_contents)
    yield from (obj for obj in held if isinstance(obj, asyncio.Future))


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
    ) -> None:
        self._env = env
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
        self.label = opener("write transaction", self.owner, f"on environment {name}")
        #: Work queued while the session is open: writes (submit_behind), sessions (begin).
        self.behind: set[_Queued] = set()
        # Set when the session was queued behind others: it may be refused.
        self._queued: _Queued | None = None
        self._looking = False  # a look for awaited work is under way (on the event loop)
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
        self,
        kind: int,
        fn: Callable[[lmdb.Transaction], Any] | None = None,
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
        op.future.add_done_callback(_ignore_outcome)
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
            self._queued = _Queued("another write transaction")
            self._queued.watch(op.future, behind)
        await self._put(op)

    async def call(self, fn: Callable[[lmdb.Transaction], Any], level: int = 0) -> Any:
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
        await self._send(_COMMIT)

    async def abort(self) -> None:
        """Abort the whole transaction, savepoints included, and end the session.

        Does nothing once the session has ended (whoever ended it: its
        writes are gone, or committed, either way).
        """
        if not self._ended:
            await self._send(_ABORT)

    def abandon(self) -> None:
        """In the child of a fork: the session is the parent's; never send it anything.

        Its lock may have been held by a thread that did not survive the fork.
        """
        self._ended = True

    def abort_later(self) -> None:
        """Queue an abort without waiting for it (when the opener was cancelled)."""
        self._send_later(_ABORT)

    # -- writer thread side ----------------------------------------------

    def serve(self) -> None:
        """Run on the writer thread until the transaction commits or aborts."""
        try:
            if self._queued is not None:
                self._queued.start()  # refused: it never begins
            self._stack = [(0, self._begin())]
        except BaseException as exc:
            self._finish(exc)
            raise
        try:
            idle = IDLE_CHECK
            while self._stack:
                try:
                    op = self._ops.get(timeout=idle)
                except queue.Empty:
                    if self.behind:  # is the owner awaiting any of it?
                        with contextlib.suppress(RuntimeError):  # its loop is closed
                            self._loop.call_soon_threadsafe(self._look_for_awaited_work)
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

    def _look_for_awaited_work(self) -> None:
        """On the owner's event loop: refuse the work queued behind it that the owner awaits."""
        if not self._looking:  # else the look under way will do
            self._looking = True
            self._look_at(iter(list(self.behind)))

    def _look_at(self, pending: Iterator[_Queued]) -> None:
        # A slice per turn of the event loop: a long queue never stalls it.
        owner = self.owner
        looked = 0
        if not self._ended and owner is not None and not owner.done():
            for queued in itertools.islice(pending, _LOOK_SLICE):
                looked += 1
                assert queued.future is not None  # only queued work is watched
                if queued.future.done():
                    self.behind.discard(queued)
                elif _awaited_by(queued.future, owner):
                    self.behind.discard(queued)
                    queued.refuse(
                        TransactionError(
                            f"{self.label} awaits {queued.what}, which waits for this "
                            "transaction to end: it would never finish, so it was refused "
                            "(make the write inside the transaction, or await it after the block)"
                        )
                    )
        if looked == _LOOK_SLICE:
            self._loop.call_soon(self._look_at, pending)
        else:
            self._looking = False

    def _apply(self, op: _Op) -> Any:
        stack = self._stack
        if op.kind in (_CALL, _SAVEPOINT) and stack[-1][0] != op.level:
            raise TransactionError(self._not_innermost(op))
        if op.kind == _CALL:
            assert op.fn is not None
            with self._telling_map_full():
                return op.fn(stack[-1][1])
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
            # The commit may need pages of its own (to save LMDB's free list).
            with self._telling_map_full():
                stack.pop()[1].commit()
        elif op.kind == _ABORT:
            self._abort_from(0)
        return None

    def _not_innermost(self, op: _Op) -> str:
        where = "the transaction" if op.level == 0 else f"savepoint {op.level}"
        if op.level not in [savepoint for savepoint, _ in self._stack]:
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
        if self._txn is None or not self._lock.locked():
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
        self._txn = None

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
