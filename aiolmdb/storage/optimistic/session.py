"""``OptimisticSession``: an optimistic write transaction, as a :class:`~aiolmdb.storage.Session`.

It never holds the engine's writer: calls run at once on the event loop,
on a read snapshot taken when it began, with a write buffer and a read log.
Its savepoints are checkpoints of the buffer. Its commit hands the engine
one write for the next group commit, which validates the log and applies
the buffer, or applies nothing when something read has changed.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from ...errors import ConflictError, TransactionError
from ..base import Engine, ReadView, Snapshot, WriteView, transaction_label
from ..savepoints import Savepoints
from .buffer import WriteBuffer
from .reads import ReadLog
from .shared import SharedSnapshots
from .view import OptimisticView

__all__ = ["OptimisticSession", "OptimisticState"]

R = TypeVar("R")


class OptimisticState(enum.Enum):
    """Where an optimistic transaction is in its life."""

    OPEN = "open"
    COMMITTING = "committing"  # its write is with the engine: no more calls
    ENDED = "ended"  # committed, conflicted or aborted


class OptimisticSession:
    """One optimistic write transaction over ``engine``, reading ``snapshot``."""

    def __init__(self, engine: Engine, snapshot: Snapshot) -> None:
        self._engine = engine
        self._snapshot = snapshot
        self._buffer = WriteBuffer()
        self._log = ReadLog()
        #: How error messages name the transaction.
        self.label = transaction_label(
            "optimistic write transaction",
            asyncio.current_task(),
            f"on environment {engine.description}",
        )
        # Each savepoint keeps the buffer's checkpoint at its start.
        self._stack: Savepoints[int] = Savepoints(self.label)
        self._stack.begin(0)
        self._state = OptimisticState.OPEN

    @classmethod
    async def begin(cls, engine: Engine, snapshots: SharedSnapshots) -> OptimisticSession:
        """Begin one on ``engine``, reading a snapshot from ``snapshots`` (the engine's)."""
        return cls(engine, await snapshots.take())

    @property
    def state(self) -> OptimisticState:
        """Where the transaction is in its life."""
        return self._state

    @property
    def ended(self) -> bool:
        """True once committed, conflicted or aborted."""
        return self._state is OptimisticState.ENDED

    @property
    def savepoints(self) -> list[int]:
        """Ids of the open savepoints, innermost last."""
        return self._stack.ids

    @property
    def depth(self) -> int:
        """How many savepoints are open."""
        return self._stack.depth

    def _require_open(self, what: str) -> None:
        if self._state is OptimisticState.COMMITTING:
            raise TransactionError(f"{self.label} is committing: {what} cannot be made in it")
        if self._state is OptimisticState.ENDED:
            raise TransactionError(f"{self.label} has ended: {what} cannot be made in it")

    def call(
        self, fn: Callable[[WriteView], R], level: int = 0, *, offload: bool = False
    ) -> Coroutine[Any, Any, R]:
        """Run ``fn`` on the transaction's view (its snapshot, its writes) in savepoint
        ``level``: on the event loop, or off it when ``offload`` (a read of large values)."""
        self._require_open("a call")
        self._stack.require_innermost(level)
        buffer, log, label = self._buffer, self._log, self.label

        def on_snapshot(view: ReadView) -> R:
            return fn(OptimisticView(view, buffer, log, label))

        # The snapshot's own call, awaited by the caller: one frame fewer per call.
        return self._snapshot.call(on_snapshot, offload=offload)

    async def savepoint(self, parent: int = 0) -> int:
        """Open a savepoint inside ``parent``: a checkpoint of the buffer."""
        self._require_open("a savepoint")
        self._stack.require_innermost(parent)
        return self._stack.push(self._buffer.checkpoint())

    async def release(self, savepoint: int) -> None:
        """Keep the writes of savepoint ``savepoint`` (the innermost) in its parent."""
        self._require_open("a release")
        self._stack.require_releasable(savepoint)
        self._stack.pop()

    async def rollback(self, savepoint: int) -> None:
        """Undo savepoint ``savepoint``'s writes, with every savepoint opened inside it.

        Its reads stay logged: what the body did next may depend on them.
        """
        self._require_open("a rollback")
        if savepoint not in self._stack.ids:
            return  # rolled back already, with a savepoint around it
        self._stack.above(savepoint)
        self._buffer.roll_back(self._stack.pop())

    async def commit(self) -> None:
        """Validate and apply the transaction in the engine's next group commit.

        Raises :class:`~aiolmdb.ConflictError`, with nothing applied, when
        something it read changed since; a transaction that wrote nothing
        read one consistent snapshot, and commits with no write at all.
        """
        self._require_open("a commit")
        if self._stack.depth:
            await self.abort()
            raise TransactionError(
                f"{self.label}: cannot commit with a savepoint still open: the transaction "
                "was aborted"
            )
        self._state = OptimisticState.COMMITTING
        try:
            # Every read was copied: the snapshot need not outlive the body.
            await self._snapshot.release()
            if not self._buffer:
                return
            change = await self._engine.write(self._validate_and_apply)
        finally:
            self._state = OptimisticState.ENDED
        if change is not None:
            raise ConflictError(
                f"{self.label} was not applied: {change}; nothing of it was written: "
                "run it again (env.transact(fn) does)"
            )

    def _validate_and_apply(self, view: WriteView) -> str | None:
        """In the engine's write transaction: what changed since the body read it (nothing
        applied), or None once every write is applied."""
        change = self._log.change(view)
        if change is None:
            self._buffer.apply(view)
        return change

    async def abort(self) -> None:
        """Forget the transaction's writes; a no-op once it has ended."""
        if self._state is OptimisticState.ENDED:
            return
        self._state = OptimisticState.ENDED
        await self._snapshot.release()
