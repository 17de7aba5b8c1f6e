"""``SharedSnapshots``: one read snapshot for the optimistic transactions begun in one
event-loop iteration.

Optimistic transactions each hold a snapshot across their awaits; hundreds
of concurrent ones would each hold an LMDB read transaction (and a reader
slot: 126 by default). Those begun in the same iteration of the event loop
share one (unless a database was opened in between). A transaction begun
later gets a new one, so it sees every commit acknowledged before it began
(an acknowledgement reaches a task one iteration after the commit, at the
earliest). A stale snapshot
would not be wrong, only costly: the commit's validation catches what it
missed, and the transaction runs again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from ...errors import TransactionError
from ..base import Engine, ReadView, Snapshot

__all__ = ["SharedSnapshots"]

R = TypeVar("R")


class _Shared:
    """One engine snapshot (being begun, or begun) and how many transactions hold it."""

    __slots__ = ("begun", "holders", "keyspaces")

    def __init__(self, keyspaces: int) -> None:
        self.begun: asyncio.Future[Snapshot] | None = None
        self.holders = 0
        #: The engine's keyspace serial when it was asked for: it sees those keyspaces.
        self.keyspaces = keyspaces

    @property
    def snapshot(self) -> Snapshot | None:
        """The snapshot, once begun (None: being begun, or its begin failed)."""
        begun = self.begun
        if begun is None or not begun.done() or begun.cancelled() or begun.exception():
            return None
        return begun.result()


class _Lease:
    """A transaction's hold on a shared snapshot: a :class:`Snapshot` of its own."""

    __slots__ = ("_owner", "_shared", "_snapshot")

    def __init__(self, owner: SharedSnapshots, shared: _Shared, snapshot: Snapshot) -> None:
        self._owner = owner
        self._shared: _Shared | None = shared
        self._snapshot = snapshot

    @property
    def ended(self) -> bool:
        """True once released (or the engine ended the snapshot, closing)."""
        return self._shared is None or self._snapshot.ended

    def call(self, fn: Callable[[ReadView], R], *, offload: bool = False) -> Coroutine[Any, Any, R]:
        """Run ``fn(view)`` on the shared snapshot (the snapshot's call, for the caller to
        await)."""
        if self._shared is None:
            raise TransactionError("the read snapshot has ended")
        return self._snapshot.call(fn, offload=offload)

    async def release(self) -> None:
        """Let go of the snapshot: it ends with its last holder, once no new transaction
        may take it."""
        shared, self._shared = self._shared, None
        if shared is not None:
            await self._owner.let_go(shared)


def _ended(shared: _Shared) -> bool:
    snapshot = shared.snapshot
    return snapshot is not None and snapshot.ended


class SharedSnapshots:
    """The snapshots of one engine's optimistic transactions, one per loop iteration."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._current: _Shared | None = None  # joined by transactions beginning now
        self._ending: set[asyncio.Task[Any]] = set()

    async def take(self) -> Snapshot:
        """A snapshot for a transaction beginning now."""
        shared = self._current
        serial = self._engine.keyspace_serial
        # A keyspace opened since it was asked for may be invisible to it.
        if shared is None or shared.keyspaces != serial or _ended(shared):
            shared = self._current = _Shared(serial)
            shared.begun = asyncio.ensure_future(self._begin(shared))
        assert shared.begun is not None
        # Held from now: the snapshot must not end before this transaction has it.
        shared.holders += 1
        try:
            snapshot = await asyncio.shield(shared.begun)
        except BaseException:
            await self.let_go(shared)
            raise
        return _Lease(self, shared, snapshot)

    async def _begin(self, shared: _Shared) -> Snapshot:
        try:
            snapshot = await self._engine.begin_snapshot()
        except BaseException:
            if self._current is shared:
                self._current = None  # the next transaction tries again
            raise
        # Queued before the wake-ups of the transactions waiting for it: a transaction
        # beginning in the next iteration takes a newer snapshot.
        asyncio.get_running_loop().call_soon(self._expire, shared)
        return snapshot

    def _expire(self, shared: _Shared) -> None:
        """The loop iteration it was begun in has passed: transactions beginning from now
        on take a newer one."""
        if self._current is shared:
            self._current = None
        if shared.holders == 0:
            self._end(shared)

    async def let_go(self, shared: _Shared) -> None:
        """A holder released ``shared``: end it once nobody holds it and it has expired."""
        shared.holders -= 1
        if shared.holders == 0 and shared is not self._current:
            snapshot = shared.snapshot
            if snapshot is not None:
                await snapshot.release()

    def _end(self, shared: _Shared) -> None:
        snapshot = shared.snapshot
        if snapshot is None:
            return
        ending = asyncio.ensure_future(snapshot.release())
        self._ending.add(ending)
        ending.add_done_callback(self._ending.discard)
