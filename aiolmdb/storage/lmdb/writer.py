"""The writer thread: the one owner of every LMDB write transaction of an environment.

LMDB binds a write transaction to the OS thread that began it, and allows one
writer at a time. So each environment has exactly one writer thread, fed by a
queue. Small writes queued by any number of tasks are applied together in one
transaction and committed once (group commit); every waiter is woken by one
``call_soon_threadsafe`` per event loop. A caller's ``await`` returns only after
the commit that holds its write.

Two kinds of work go through the queue:

- batched writes: functions of the batch's write view (one view per batch)
  that only read and write through it, so they can be replayed. If one raises, the batch is
  aborted and replayed without it, each write then in a nested transaction of
  its own (so that a further failure aborts only itself): a failing write
  fails alone, and many failures cost no more than one replay. With
  ``writemap`` (where LMDB has no nested transactions) the batch is replayed
  once per failing write instead.
- exclusive work: functions run on their own (a user's ``run(fn, write=True)``,
  an explicit ``env.transaction()`` session, creating a database). They manage
  their own transaction and are never replayed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import logging
import os
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import lmdb

from ...errors import ClosedError, DiskFullError
from ..waiting import Outcome, Waiting, deliver
from .reused_read import CommitCounter
from .views import LmdbWriteView

__all__ = ["Writer", "disk_full_error", "grown_or_error", "map_full_error"]

R = TypeVar("R")

logger = logging.getLogger("aiolmdb")

#: Free bytes below which a file system that failed a write is taken to be full.
_NEARLY_FULL = 1 << 20

BatchFn = Callable[[LmdbWriteView], Any]
ExclusiveFn = Callable[[], Any]

_DONE = object()


class _Job:
    __slots__ = ("exclusive", "fn", "future", "loop")

    def __init__(
        self,
        fn: Callable[..., Any],
        exclusive: bool,
        loop: asyncio.AbstractEventLoop,
        future: asyncio.Future[Any],
    ) -> None:
        self.fn = fn
        self.exclusive = exclusive
        self.loop = loop
        self.future = future


class _Urgent:
    """A job run ahead of the queue for a thread that blocks on its result."""

    __slots__ = ("fn", "result")

    def __init__(self, fn: ExclusiveFn) -> None:
        self.fn = fn
        self.result: concurrent.futures.Future[Any] = concurrent.futures.Future()


class Writer:
    """Owns the writer thread and the queue of pending writes of one environment.

    ``max_pending`` bounds how many writes may wait in the queue; submitters
    beyond it wait (asynchronously) for the writer to catch up. ``max_batch``
    bounds how many writes go into one transaction. Each commit is counted
    in ``commits`` before its outcome is delivered.
    """

    def __init__(
        self,
        env: lmdb.Environment,
        begin: Callable[[], lmdb.Transaction],
        *,
        name: str,
        max_pending: int,
        max_batch: int,
        grow_map: Callable[[], str | None],
        commits: CommitCounter,
    ) -> None:
        self._env = env  # for nested transactions
        self._commits = commits
        # LMDB refuses nested write transactions under MDB_WRITEMAP.
        self._can_nest = not env.flags()["writemap"]
        self._begin = begin  # begins a (root) write transaction
        self._name = name
        self._max_pending = max_pending
        self._max_batch = max_batch
        # Called on the writer thread, with no write transaction open, when
        # the map is full: None when it grew, else why it could not.
        self._grow_map = grow_map
        self._queue: deque[_Job] = deque()
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._idle = True
        self._stopping = False
        # Submitters waiting for room in the queue, woken by the writer thread.
        self._space_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._thread: threading.Thread | None = None
        self._urgent: deque[_Urgent] = deque()

    # -- event loop side -------------------------------------------------

    def submit(self, fn: BatchFn) -> Awaitable[Any]:
        """Queue ``fn(txn)`` for the next group commit; await its result after the commit.

        Not a coroutine: when there is room in the queue, the caller awaits
        the job's future itself (one frame fewer on the hottest write path).
        """
        if len(self._queue) >= self._max_pending:
            return self._submit_when_room(fn, exclusive=False)
        return self._enqueue(fn, exclusive=False)

    async def submit_exclusive(self, fn: ExclusiveFn) -> Any:
        """Run ``fn()`` on the writer thread alone, between batches."""
        return await self._submit_when_room(fn, exclusive=True)

    def queue_exclusive(self, fn: ExclusiveFn) -> asyncio.Future[Any]:
        """Queue ``fn()`` to run alone, now: every write queued afterwards runs after it.

        Not held back by ``max_pending``: for rare set-up work (opening a
        database) that later writes rely on and that must not wait.
        """
        return self._enqueue(fn, exclusive=True)

    async def _submit_when_room(self, fn: Callable[..., Any], exclusive: bool) -> Any:
        loop = asyncio.get_running_loop()
        while len(self._queue) >= self._max_pending:
            await self._wait_for_space(loop)
        return await self._enqueue(fn, exclusive)

    def _enqueue(self, fn: Callable[..., Any], exclusive: bool) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        job = _Job(fn, exclusive, loop, future)
        with self._lock:
            self._check_open()
            self._queue.append(job)
            self._wake_thread()
        return future

    def run_now(self, fn: ExclusiveFn) -> Any:
        """Run ``fn()`` on the writer thread ahead of the queue and block until it is done.

        For rare set-up work that must be synchronous (opening a database).
        The caller blocks until the batch in progress is committed, or is
        waiting to resize the map (the writer runs urgent jobs meanwhile);
        batches never wait for an event loop, so this cannot deadlock. The
        caller must make sure no session (which may wait for the caller's
        event loop) is being served.
        """
        urgent = _Urgent(fn)
        with self._lock:
            self._check_open()
            self._urgent.append(urgent)
            self._wake_thread()
        return urgent.result.result()

    def _check_open(self) -> None:
        if self._stopping:
            raise ClosedError(f"environment {self._name} is closed")

    def _wake_thread(self) -> None:
        if self._thread is None:
            self._start()
        elif self._idle:
            self._work.notify()

    async def _wait_for_space(self, loop: asyncio.AbstractEventLoop) -> None:
        waiter: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if len(self._queue) < self._max_pending:
                return
            self._space_waiters.append((loop, waiter))
        await waiter

    def _start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name=f"aiolmdb-writer {self._name}", daemon=True
        )
        self._thread.start()

    def stop(self) -> threading.Thread | None:
        """Refuse new work; the thread finishes what is queued, then ends.

        Returns the thread to join (None when it never started).
        """
        with self._lock:
            self._stopping = True
            self._work.notify()
            return self._thread

    @property
    def queued(self) -> int:
        """How many jobs wait in the queue."""
        return len(self._queue)

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` was called."""
        return self._stopping

    # -- writer thread side ----------------------------------------------

    def _take(self) -> list[_Job]:
        """Wait for work; return the next batch, or one exclusive job, or [] to stop."""
        with self._lock:
            while True:
                if self._urgent:
                    self._lock.release()
                    try:
                        self.run_urgent()
                    finally:
                        self._lock.acquire()
                if self._queue:
                    break
                if self._stopping:
                    return []
                self._idle = True
                self._work.wait()
            self._idle = False
            jobs: list[_Job] = []
            while self._queue and len(jobs) < self._max_batch:
                if self._queue[0].exclusive:
                    if not jobs:
                        jobs.append(self._queue.popleft())
                    break
                jobs.append(self._queue.popleft())
            waiters, self._space_waiters = self._space_waiters, []
        for loop, waiter in waiters:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_wake, waiter)
        return jobs

    def run_urgent(self) -> None:
        """Run the jobs of :meth:`run_now` waiting, on the writer thread.

        Called between batches, and while the writer waits to resize the map
        (so that a blocked event loop can go on and end its readers).
        """
        while True:
            with self._lock:
                if not self._urgent:
                    return
                urgent = self._urgent.popleft()
            try:
                urgent.result.set_result(urgent.fn())
            except BaseException as exc:
                urgent.result.set_exception(exc)

    def _run(self) -> None:
        # The outcomes of the last commit are held back while another batch
        # is waiting: they are delivered once that batch's writes are applied,
        # just before its commit. Applying writes needs the GIL, and so does
        # the event loop waking the waiters; the commit's disk writes do not.
        # This way the loop wakes one batch's waiters while the next batch
        # commits, instead of competing with it for the GIL.
        held: list[Outcome] = []
        while True:
            if held and not self._queue:  # nothing to overlap with: deliver now
                deliver(held)
                held = []
            jobs = self._take()
            if not jobs:
                break
            try:
                if jobs[0].exclusive:
                    deliver(held)
                    held = []
                    self._run_exclusive(jobs[0])
                else:
                    held = self._commit_batch(jobs, held)
            except BaseException as exc:
                # Unforeseen: the thread must go on serving, and no caller may
                # wait forever. Whoever was told already keeps that outcome (a
                # future is settled once, in the order of deliveries).
                logger.exception("environment %s: the writer failed", self._name)
                deliver([*held, *((job, False, exc) for job in jobs)])
                held = []
        deliver(held)

    def _run_exclusive(self, job: _Job) -> None:
        if job.future.cancelled():
            return
        try:
            deliver([(job, True, job.fn())])
        except BaseException as exc:
            deliver([(job, False, disk_full_error(exc, self._env, self._name))])

    def _commit_batch(self, jobs: list[_Job], held: list[Outcome]) -> list[Outcome]:
        """Apply and commit ``jobs``; deliver ``held`` before the commit.

        Returns the outcomes of the committed writes, for the caller to deliver.
        """
        # A write whose caller was cancelled, or that was refused, before it
        # began is not applied (a refused one would only force a replay).
        pending = [job for job in jobs if not job.future.done()]
        isolated = False
        while pending:
            outcome = self._try_batch(pending, held, isolated)
            held = []  # _try_batch delivered them, whatever happened
            if isinstance(outcome, list):
                return outcome
            if outcome is _DONE:
                return []
            assert isinstance(outcome, _Replay)
            if outcome.told:
                told = set(outcome.told)
                pending = [job for job in pending if job not in told]
                # Replaying the whole batch once per failing write would cost
                # time quadratic in the failures: from now on each write runs
                # in a nested transaction, and a failure aborts only its own.
                # LMDB refuses nested transactions under MDB_WRITEMAP: there,
                # each failure costs a replay without it.
                isolated = self._can_nest
        deliver(held)
        return []

    def _try_batch(self, jobs: list[_Job], held: list[Outcome], isolated: bool) -> object:
        """Apply and commit ``jobs``, delivering ``held`` once they are applied.

        ``isolated``: each job runs in a nested transaction of its own, so one
        that fails is aborted alone and the others go on. Returns the outcomes
        to deliver after a commit (a list), ``_DONE`` when every waiter was told
        (the batch failed as a whole), or a :class:`_Replay` when the batch must
        run again without the jobs whose failure was told (after a job failed
        outside a nested transaction, or the map was grown).
        """
        try:
            txn = self._begin()
        except BaseException as exc:
            deliver(held + [(job, False, exc) for job in jobs])
            return _DONE
        results: list[Outcome] = []
        failed: list[Outcome] = []  # jobs that failed alone, in their nested transaction
        view = LmdbWriteView(self._env, txn)
        for job in jobs:
            try:
                # In a nested transaction, the job's view is the nested one's.
                value = view.atomically(job.fn) if isolated else job.fn(view)
            except BaseException as exc:
                if isolated and not isinstance(exc, lmdb.MapFullError):
                    failed.append((job, False, disk_full_error(exc, self._env, self._name)))
                    continue
                # Outside a nested transaction the job may have written part
                # of its work, and a full map may grow only with no write
                # transaction open: the batch runs again.
                txn.abort()
                if (error := grown_or_error(exc, self._grow_map)) is not None:
                    failed.append((job, False, disk_full_error(error, self._env, self._name)))
                deliver([*held, *failed])
                return _Replay([failed_job for failed_job, _, _ in failed])
            results.append((job, True, value))
        deliver([*held, *failed])
        try:
            txn.commit()
        except BaseException as exc:
            if (error := grown_or_error(exc, self._grow_map)) is None:
                return _Replay([failed_job for failed_job, _, _ in failed])
            error = disk_full_error(error, self._env, self._name)
            deliver([(job, False, error) for job, _, _ in results])
            return _DONE
        self._commits.bump()
        return results


class _Replay:
    """A batch to run again, without the jobs whose failure was told (``told``)."""

    __slots__ = ("told",)

    def __init__(self, told: list[Waiting]) -> None:
        self.told = told


def grown_or_error(exc: BaseException, grow_map: Callable[[], str | None]) -> BaseException | None:
    """After a failed write: None if it failed for a full map that has now grown
    (run it again), else the error to report (a full map's told why it could not grow).
    """
    if not isinstance(exc, lmdb.MapFullError):
        return exc
    try:
        refusal = grow_map()
    except Exception as failure:  # e.g. lmdb.MemoryError: no address space for the new map
        refusal = f"growing the map failed: {type(failure).__name__}: {failure}"
    return None if refusal is None else map_full_error(exc, refusal)


def disk_full_error(exc: BaseException, env: lmdb.Environment, name: str) -> BaseException:
    """After a failed write: a :class:`DiskFullError` caused by ``exc`` if the disk is full.

    LMDB reports ENOSPC as ``lmdb.DiskError``, but a short write as a bare
    ``Input/output error`` (EIO): that one is taken for a full disk when the
    file system holding the environment has (almost) no space left. Any
    other failure is returned as it is.
    """
    if isinstance(exc, lmdb.DiskError):
        free = _free_bytes(env)
    elif type(exc) is lmdb.Error and str(exc).endswith(os.strerror(errno.EIO)):
        free = _free_bytes(env)
        if free is None or free >= _NEARLY_FULL:
            return exc
    else:
        return exc
    room = "" if free is None else f" ({free} bytes free)"
    error = DiskFullError(
        errno.ENOSPC,
        f"environment {name}: the disk is full{room}, the write was not committed "
        f"({exc}); free space on it, then retry",
    )
    error.__cause__ = exc
    return error


def _free_bytes(env: lmdb.Environment) -> int | None:
    """Bytes an unprivileged writer may still use on the environment's file system."""
    try:
        stat = os.statvfs(env.path())
    except (OSError, lmdb.Error):
        return None
    return stat.f_bavail * stat.f_frsize


def map_full_error(exc: lmdb.MapFullError, refusal: str) -> lmdb.MapFullError:
    """LMDB's map-full error, told why the map could not grow."""
    error = lmdb.MapFullError(f"{exc}; {refusal}")
    error.__cause__ = exc
    return error


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
