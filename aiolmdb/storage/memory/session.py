"""``MemorySession``: one interactive write transaction of the memory engine, with savepoints.

Its writes go straight into the tables; the images of its stack (the
transaction's own, then one per savepoint) keep what they overwrote, so
other readers see the committed state and any level can be undone. Calls
run on the event loop at once: the session is idle between them, and while
work waits behind it, its watch looks now and then whether its owner awaits
that work (which would never finish) and refuses it.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable
from typing import TypeVar

from ...errors import TransactionError
from ..base import WriteView, transaction_label
from ..deadlock import Watch
from ..savepoints import Savepoints
from .image import Image
from .store import Store
from .views import MemoryWriteView, run_on
from .writer import Writer

__all__ = ["MemorySession", "SessionState"]

R = TypeVar("R")

#: Seconds between looks for a deadlock while work waits behind the session; the
#: wait doubles after each look, up to IDLE_CHECK_MAX (as the LMDB engine's does).
IDLE_CHECK = 0.05
IDLE_CHECK_MAX = 1.0


class SessionState(enum.Enum):
    """Where a session is in its life."""

    WAITING = "waiting"  # queued behind the writer's holder
    OPEN = "open"  # holds the writer
    ENDED = "ended"  # committed, aborted, or never begun


class MemorySession:
    """One write transaction, holding the memory engine's writer until it ends."""

    def __init__(
        self,
        store: Store,
        writer: Writer,
        where: str,
        on_end: Callable[[MemorySession], None],
    ) -> None:
        self._store = store
        self._writer = writer
        self._on_end = on_end
        #: The task that opened the session.
        self.owner = asyncio.current_task()
        #: How error messages name the session's transaction.
        self.label = transaction_label("write transaction", self.owner, f"on environment {where}")
        #: Looks for work queued behind the session that its owner awaits.
        self.watch = Watch(self.owner, self.label, lambda: self.ended)
        self._loop = asyncio.get_running_loop()
        self._state = SessionState.WAITING
        # The images of the transaction (level 0) and of its savepoints.
        self._stack: Savepoints[Image] = Savepoints(self.label)
        self._look_delay = IDLE_CHECK
        self._looking: asyncio.TimerHandle | None = None
        # When the session last did something (a look waits for it to sit idle).
        self._active_at = self._loop.time()

    @property
    def state(self) -> SessionState:
        """Where the session is in its life."""
        return self._state

    @property
    def ended(self) -> bool:
        """True once committed, aborted or failed to begin."""
        return self._state is SessionState.ENDED

    @property
    def savepoints(self) -> list[int]:
        """Ids of the open savepoints, innermost last."""
        return self._stack.ids

    @property
    def depth(self) -> int:
        """How many savepoints are open."""
        return self._stack.depth

    # -- the engine's side -----------------------------------------------

    def start(self) -> None:
        """The writer is free: the transaction begins, holding it."""
        self._active_at = self._loop.time()
        self._writer.hold(self)
        self._stack.begin(self._store.begin_write())
        self._state = SessionState.OPEN

    def abandon(self) -> None:
        """End the session now, undoing its writes (it never began, or nobody will end it)."""
        if self._state is SessionState.OPEN:
            for image in self._stack.clear():
                self._store.end_image(image)
            self._store.end_write(commit=False)
        self._finish()

    def watch_behind(self) -> None:
        """Work was queued behind the session: look, while the session sits idle, for its
        owner awaiting it."""
        if self._looking is None and not self.ended:
            self._look_delay = IDLE_CHECK
            self._looking = self._loop.call_later(IDLE_CHECK, self._look_again)

    def _look_again(self) -> None:
        self._looking = None
        if self.ended or not self.watch.behind:
            return
        idle = self._loop.time() - self._active_at
        if self._state is SessionState.OPEN and idle >= IDLE_CHECK:
            # Only an open session that made no call for a while may be waiting for
            # its owner, who may await what is queued behind it: as on LMDB.
            self.watch.look_soon()
            # A long legitimate wait (the owner awaits I/O) costs few looks.
            self._look_delay = min(self._look_delay * 2, IDLE_CHECK_MAX)
        else:
            self._look_delay = IDLE_CHECK
        self._looking = self._loop.call_later(self._look_delay, self._look_again)

    # -- the transaction layer's side ------------------------------------

    async def call(self, fn: Callable[[WriteView], R], level: int = 0) -> R:
        """Run ``fn(view)`` in savepoint ``level`` (0: the transaction); return its result.

        Refused with :class:`~aiolmdb.TransactionError` unless that savepoint
        is the innermost open one.
        """
        self._require_innermost(level)
        self._active_at = self._loop.time()
        return run_on(MemoryWriteView(self._store), fn)

    async def savepoint(self, parent: int = 0) -> int:
        """Open a savepoint inside ``parent`` (the innermost); return its id."""
        self._require_innermost(parent)
        self._active_at = self._loop.time()
        return self._stack.push(self._store.begin_image())

    async def release(self, savepoint: int) -> None:
        """Commit savepoint ``savepoint`` (the innermost) into its parent."""
        self._require_open()
        self._stack.require_releasable(savepoint)
        self._store.end_image(self._stack.pop())

    async def rollback(self, savepoint: int) -> None:
        """Undo savepoint ``savepoint``, with every savepoint opened inside it."""
        self._require_open()
        if savepoint in self.savepoints:  # else it is already gone
            # An outer image undoes the inner savepoints' writes too: it kept every key
            # they changed.
            for image in self._stack.above(savepoint):
                self._store.end_image(image)
            self._store.restore(self._stack.pop())

    async def commit(self) -> None:
        """Commit the transaction; with a savepoint open, abort everything instead and raise."""
        self._require_open()
        if self.depth:
            self.abandon()
            raise TransactionError(
                f"{self.label}: cannot commit with a savepoint still open: "
                "the transaction was aborted"
            )
        self._store.end_write(commit=True)
        self._finish()

    async def abort(self) -> None:
        """Abort the transaction, savepoints included; a no-op once it has ended."""
        self.abandon()

    # -- inside ----------------------------------------------------------

    def _require_open(self) -> None:
        if self._state is not SessionState.OPEN:
            raise TransactionError(f"{self.label} has ended")

    def _require_innermost(self, level: int) -> None:
        self._require_open()
        self._stack.require_innermost(level)

    def _finish(self) -> None:
        if self._state is SessionState.ENDED:
            return
        self._state = SessionState.ENDED
        self._stack.clear()
        if self._looking is not None:
            self._looking.cancel()
            self._looking = None
        self._on_end(self)
        self._writer.release(self)
