"""One LMDB read transaction shared by the reads made on the event loop thread.

Beginning and ending a read transaction, and counting it in and out of the
map-resize gate, costs more than the read itself. So the hop-free reads
(``LmdbEngine.read_point`` and ``read_now``) share the one transaction held
here, begun by the first read that finds none. It ends, and the next read
begins a fresh one, so that a reader never pins old pages for long and
sees what it should:

- after this process committed anything: the writer thread counts each
  commit (:class:`CommitCounter`) right after it, before anything on the
  event loop can learn of it, and each read compares the count with the
  count when its transaction began;
- when the event loop goes on: a callback scheduled when the transaction
  began ends it, so it never lasts beyond one iteration of the loop (no read
  transaction is held across an ``await`` that suspends);
- when it is older than :data:`MAX_AGE`: a loop kept busy by reads in one
  iteration still sees other processes' commits soon, and pins no pages
  for long;
- when a resize of the map waits: it leaves the gate (:mod:`.gate`) at the
  next read, which is then refused like any other (``NotNowError``: the
  caller reads off the loop, once the resize is done).

How fresh a read on the event loop is, then: it sees every commit of this
process that completed before the read was made, and every commit of other
processes that completed before the current iteration of the loop began, or
more than :data:`MAX_AGE` before the read.

The transaction belongs to the thread whose event loop began it: a read
from another thread (a read transaction must not be used by two threads at
once) reads in a transaction of its own, as does a read that would begin
one with no event loop running (nothing would end it). Reads look at the
thread, not the loop, because asking for the running loop costs a system
call (``getpid``) in Python 3.11: a loop stopped before its next iteration
leaves the transaction to the next loop of its thread, which reuses it for
what is left of :data:`MAX_AGE`, then renews it.
"""

from __future__ import annotations

import asyncio
import enum
import threading
from collections.abc import Callable
from threading import get_ident
from time import monotonic

import lmdb

from .gate import ReadGate
from .views import LmdbReadView

__all__ = ["MAX_AGE", "CommitCounter", "ReusedRead"]

#: Seconds a reused read transaction serves reads at most, within one loop iteration.
MAX_AGE = 0.0005


class CommitCounter:
    """How many write transactions this process committed.

    Counted on the writer thread, right after each commit and before its
    outcome (or anything else it did) can reach the event loop: a read that
    finds the count changed renews its transaction.
    """

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0

    def bump(self) -> None:
        """A commit just succeeded (called on the writer thread, the only one that commits)."""
        self.count += 1


class _State(enum.Enum):
    """Whether the reused transaction may be used."""

    OPEN = enum.auto()
    #: The environment is closing: no transaction is begun any more.
    CLOSED = enum.auto()
    #: In the child of a fork: the transaction is the parent's, never to be touched.
    FORKED = enum.auto()


class ReusedRead:
    """The read transaction the event loop's hop-free reads share (see the module).

    ``begin`` begins a read transaction through the map-resize gate (it may
    raise ``NotNowError``); ``end`` ends one and lets it out of the gate.
    """

    def __init__(
        self,
        begin: Callable[[], lmdb.Transaction],
        end: Callable[[lmdb.Transaction], None],
        commits: CommitCounter,
        gate: ReadGate,
    ) -> None:
        self._begin = begin
        self._end = end
        self._commits = commits
        self._gate = gate
        self._max_age = MAX_AGE
        self._state = _State.OPEN
        # Renewals, and ends from other threads (close, another loop), one at a time.
        self._lock = threading.Lock()
        # The transaction's view (None: none open) and what it was begun with.
        self._view: LmdbReadView | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = 0
        self._serial = 0  # how many were begun: which one a scheduled end is for
        self._seen = 0  # the commit count when it began
        self._expires = 0.0  # the monotonic time it is too old from

    def view(self) -> LmdbReadView | None:
        """The shared transaction's view, fresh enough for a read made now; None when the
        caller must read in a transaction of its own (no event loop runs in this thread,
        or another loop's thread holds it, or the environment is closing).

        Raises ``NotNowError`` when no read transaction can begin on the loop now. The
        view serves one read: the caller uses it before it returns to the loop (and
        keeps nothing read through it), and makes no other read meanwhile.
        """
        view = self._view
        if (
            view is None
            or self._thread != get_ident()
            or self._seen != self._commits.count
            or monotonic() >= self._expires
            or self._gate.resizing
        ):
            return self._renewed()
        return view

    def _renewed(self) -> LmdbReadView | None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return None  # nothing would end it
        with self._lock:
            if self._state is not _State.OPEN:
                return None
            if self._view is not None:
                if self._thread != get_ident() and not self._ends_here():
                    return None
                self._end_now()
            # Read before the transaction begins: a commit counted after this is
            # either seen by it or counted as unseen.
            seen = self._commits.count
            view = LmdbReadView(self._begin())
            self._view, self._loop, self._thread, self._seen = (
                view,
                loop,
                get_ident(),
                seen,
            )
            self._expires = monotonic() + self._max_age
            self._serial += 1
            serial = self._serial
        # Told its serial number, not the transaction: py-lmdb frees an ended read
        # transaction's slot in the reader table only once nothing refers to it.
        loop.call_soon(self._loop_went_on, serial)
        return view

    def _ends_here(self) -> bool:
        """Whether a read from another thread may end the transaction: when it is too old
        to serve a read (so its thread no longer uses it) and its loop is not running."""
        assert self._loop is not None
        return monotonic() >= self._expires and not self._loop.is_running()

    def _loop_went_on(self, serial: int) -> None:
        with self._lock:
            if self._serial == serial:
                self._end_now()

    def _end_now(self) -> None:
        view, self._view, self._loop = self._view, None, None
        if view is not None:
            self._end(view.detach())

    def close(self) -> None:
        """End the transaction and begin none any more (the environment is closing)."""
        with self._lock:
            self._state = _State.CLOSED
            self._end_now()

    def abandon(self) -> None:
        """In the child of a fork: let go of the parent's transaction without ending it.

        Ending it here would free the parent's slot in the reader table, which
        the lock file shares between processes.
        """
        self._lock = threading.Lock()  # another thread may have held it at fork time
        self._state = _State.FORKED
        self._view = self._loop = None
