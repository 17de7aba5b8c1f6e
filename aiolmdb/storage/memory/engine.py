"""``MemoryEngine``: the engine behind ``aiolmdb.open(":memory:")``.

Ordered, transactional, with the LMDB engine's semantics and no disk: the
engine for users' own unit tests. Each instance is a fresh, independent
store. Everything runs on the event loop, synchronously: one writer at a
time (:class:`Writer`), reads of the committed state while a write
transaction is open, snapshots that later commits leave alone (both through
before-images, :mod:`.image`).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from ...errors import (
    ClosedError,
    DatabaseNotFoundError,
    TransactionError,
)
from ..base import (
    Buffer,
    Capabilities,
    ReadView,
    WriteView,
    open_refusal,
    outside_loop_refusal,
    refuse_duplicates,
    refuse_key_orders,
)
from ..deadlock import Queued, submit_behind
from ..keyspace import Keyspace
from ..waiting import awaitable_error, call_awaitably, loop_running
from .session import MemorySession, SessionState
from .snapshot import MemorySnapshot
from .store import Store
from .table import Table
from .views import MAX_KEY_SIZE, MemoryReadView, MemoryWriteView, run_on
from .writer import Job, Writer, WriterHold

__all__ = ["DEFAULT_INLINE_VALUE_LIMIT", "MemoryEngine"]

R = TypeVar("R")

#: Values up to this many bytes may be decoded on the event loop.
DEFAULT_INLINE_VALUE_LIMIT = 64 * 1024


class MemoryEngine:
    """One in-memory store, implementing :class:`~aiolmdb.storage.Engine`.

    ``offload`` and ``offload=True`` run on the event loop too: the values
    are already in this process, a thread would only contend for the GIL,
    and running everything inline keeps users' tests deterministic.
    """

    name = "memory"
    capabilities = Capabilities()  # nothing of LMDB's, and nothing survives the process

    def __init__(self, *, inline_value_limit: int = DEFAULT_INLINE_VALUE_LIMIT, **options: Any):
        if options:
            names = ", ".join(sorted(options))
            raise TypeError(
                f"the memory engine takes no option {names}: options such as these are "
                "LMDB's, for an environment opened on a path (the memory engine takes "
                "inline_value_limit only)"
            )
        if inline_value_limit < 0:
            raise ValueError(f"inline_value_limit must be >= 0, got {inline_value_limit}")
        self.inline_value_limit = inline_value_limit
        self._store = Store()
        self._writer = Writer()
        self._keyspaces: dict[bytes | None, Keyspace] = {}
        # Tables by name, which outlive a keyspace whose drop was undone.
        self._tables: dict[bytes | None, Table] = {}
        self._serial = 0
        self._sessions: set[MemorySession] = set()
        self._snapshots: set[MemorySnapshot] = set()
        self._closed = False
        self._holds: list[WriterHold] = []

    # -- what it is ------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once closing began."""
        return self._closed

    @property
    def description(self) -> str:
        """How messages name the store."""
        return "':memory:'"

    @property
    def max_key_size(self) -> int:
        """The longest key, in bytes: LMDB's, so that code that works here works there."""
        return MAX_KEY_SIZE

    @property
    def keyspace_serial(self) -> int:
        """Serial number of the last keyspace opened."""
        return self._serial

    @property
    def queued_writes(self) -> int:
        """Work waiting for the writer (behind a session or a hold): writes, sessions."""
        return self._writer.queued

    @property
    def sessions(self) -> tuple[MemorySession, ...]:
        """The write sessions open or waiting to begin (in no set order)."""
        return tuple(self._sessions)

    def check(self) -> None:
        """Raise :class:`~aiolmdb.ClosedError` once the engine is closed."""
        if self._closed:
            raise ClosedError(f"environment {self.description} is closed")

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<MemoryEngine {state}: {len(self._keyspaces)} keyspaces>"

    # -- keyspaces -------------------------------------------------------

    def open_keyspace(
        self,
        name: bytes | None,
        label: str,
        *,
        create: bool,
        integer_keys: bool = False,
        reverse_keys: bool = False,
        duplicates: bool = False,
        in_own_session: bool = False,
        behind_other_tasks: bool = False,
    ) -> Keyspace:
        """The keyspace ``name`` (None: the default one), ready at once.

        Opened twice, it is the same object, until it is dropped. As on LMDB,
        opening a new keyspace is refused while a write session is open,
        unless the caller awaits the open from outside it (``behind_other_tasks``):
        code that works here then works there.
        """
        self.check()
        refuse_key_orders("memory", label, integer_keys, reverse_keys)
        refuse_duplicates("memory", label, duplicates)
        known = self._keyspaces.get(name)
        if known is not None and not known.dropped and not known.handle.dropped:
            return known
        if self._sessions and (in_own_session or not behind_other_tasks):
            raise open_refusal(label, in_own_session, self.description)
        table = self._tables.get(name)
        if table is None or table.dropped:
            if not create and name is not None:
                raise DatabaseNotFoundError(
                    f"database {label} does not exist in environment {self.description} "
                    "(create=False)"
                )
            table = self._tables[name] = Table(label)
        self._serial += 1
        keyspace = Keyspace(name, label, self._serial)
        keyspace.open_with(lambda: table)
        self._keyspaces[name] = keyspace
        return keyspace

    async def database_names(self) -> list[bytes]:
        """The names of the named keyspaces this store holds."""
        self.check()
        return sorted(
            name for name, table in self._tables.items() if name is not None and not table.dropped
        )

    def forget_keyspace(self, keyspace: Keyspace) -> None:
        """After a drop: the keyspace is dead; opening its name again creates a fresh one."""
        keyspace.dropped = True
        if self._keyspaces.get(keyspace.name) is keyspace:
            del self._keyspaces[keyspace.name]

    # -- reads -----------------------------------------------------------

    def _read_view(self) -> MemoryReadView:
        # While a write transaction is open, its writes are in the tables: readers
        # look through its image, which kept what they overwrote.
        return MemoryReadView(self._store.committed)

    def read_point(
        self, keyspace: Keyspace, key: bytes, decode: Callable[[bytes, Buffer | None], R]
    ) -> R:
        """``decode(key, value)`` of the committed value of ``key`` (None when missing)."""
        if self._closed:
            self.check()
        return decode(key, self._read_view().get(keyspace, key))

    def read_now(self, fn: Callable[[ReadView], R]) -> R:
        """``fn(view)`` on the committed state, now."""
        self.check()
        view = self._read_view()
        try:
            return fn(view)
        finally:
            view.close()

    async def read(self, fn: Callable[[ReadView], R], *, offload: bool = False) -> R:
        """``fn(view)`` on the committed state (on the event loop, ``offload`` or not)."""
        self.check()
        return run_on(self._read_view(), fn)

    async def read_keys(
        self, keyspace: Keyspace, keys: Sequence[bytes], decode: Callable[[list[Buffer | None]], R]
    ) -> R:
        """``decode(values)`` of the committed values of ``keys``."""
        return await self.read(lambda view: decode(view.get_many(keyspace, keys)))

    async def offload(self, fn: Callable[..., R], *args: Any) -> R:
        """``fn(*args)``, on the event loop (see the class's documentation)."""
        self.check()
        return call_awaitably(fn, *args)

    # -- auto-commit writes ----------------------------------------------

    def write(self, fn: Callable[[WriteView], R]) -> Awaitable[R]:
        """``fn(view)`` in a write transaction of its own, all of its writes or none.

        It runs at once when nothing is in its way (the awaitable is then
        done), else after the work queued before it and the sessions open.
        """
        self.check()
        if self._sessions:  # it waits behind them: refused if an owner awaits it
            job = submit_behind([s.watch for s in self._sessions], self._queue_write, fn)
            for session in self._sessions:
                session.watch_behind()
            return job
        return self._queue_write(fn)

    async def write_alone(self, fn: Callable[[WriteView], R]) -> R:
        """``fn(view)`` in a write transaction of its own (every write here is alone)."""
        return await self.write(fn)

    def queue_alone(
        self,
        fn: Callable[[WriteView], R],
        what: str,
        *,
        committed: Callable[[R], None] | None = None,
        failed: Callable[[BaseException], None] | None = None,
    ) -> asyncio.Future[R] | None:
        """Queue ``fn(view)`` now; outside an event loop it runs at once and gives None.

        ``committed(result)`` or ``failed(error)`` runs before any later write.
        """
        self.check()
        if not loop_running():
            if self._sessions or self._writer.busy:
                raise outside_loop_refusal(what, self.description)
            self._transact(fn, committed, failed)
            return None
        return self._queue_write(fn, committed, failed)

    def _queue_write(
        self,
        fn: Callable[[WriteView], R],
        committed: Callable[[R], None] | None = None,
        failed: Callable[[BaseException], None] | None = None,
    ) -> asyncio.Future[R]:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        settle = functools.partial(self._settle_write, fn, future, committed, failed)
        self._writer.submit(Job(settle, future))
        return future

    def _settle_write(
        self,
        fn: Callable[[WriteView], R],
        future: asyncio.Future[R],
        committed: Callable[[R], None] | None,
        failed: Callable[[BaseException], None] | None,
    ) -> None:
        try:
            result = self._transact(fn, committed, failed)
        except BaseException as exc:
            future.set_exception(awaitable_error(exc))
            if not isinstance(exc, Exception):
                raise
        else:
            future.set_result(result)

    def _transact(
        self,
        fn: Callable[[WriteView], R],
        committed: Callable[[R], None] | None = None,
        failed: Callable[[BaseException], None] | None = None,
    ) -> R:
        """``fn(view)`` in a write transaction: committed if it returns, undone if it raises."""
        self._store.begin_write()
        try:
            result = run_on(MemoryWriteView(self._store), fn)
        except BaseException as exc:
            self._store.end_write(commit=False)
            if failed is not None:
                failed(exc)
            raise
        self._store.end_write(commit=True)
        if committed is not None:
            committed(result)
        return result

    # -- sessions --------------------------------------------------------

    async def begin_session(self) -> MemorySession:
        """Begin an interactive write transaction, once the ones before it ended.

        Refused with :class:`~aiolmdb.TransactionError` if the owner of a
        session open before it awaits the begin (it would never come).
        """
        self.check()
        session = MemorySession(self._store, self._writer, self.description, self._ended)
        before = list(self._sessions)
        self._sessions.add(session)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queued: Queued | None = None
        if before:
            queued = Queued("another write transaction")
            queued.watch(future, [s.watch for s in before])
            for other in before:
                other.watch_behind()
        self._writer.submit(Job(functools.partial(self._start, session, future, queued), future))
        try:
            await future
        except BaseException:
            # Refused, cancelled or closed: begun or not, nobody else will end it.
            session.abandon()
            raise
        return session

    def _start(
        self, session: MemorySession, future: asyncio.Future[None], queued: Queued | None
    ) -> None:
        if queued is not None:
            queued.start()  # not refused (its future is not done): now it cannot be
        if self._closed:
            session.abandon()
            future.set_exception(ClosedError(f"environment {self.description} is closed"))
            return
        session.start()
        future.set_result(None)

    def _ended(self, session: MemorySession) -> None:
        self._sessions.discard(session)

    # -- snapshots -------------------------------------------------------

    async def begin_snapshot(self) -> MemorySnapshot:
        """A read snapshot of the committed state."""
        self.check()
        # With a write transaction open, the committed state is the one its image sees.
        image = self._store.begin_image(like=self._store.committed)
        snapshot = MemorySnapshot(self._store, image, self._snapshots.discard)
        self._snapshots.add(snapshot)
        return snapshot

    # -- for tests -------------------------------------------------------

    def hold_writer(self) -> WriterHold:
        """Keep the writer busy until the hold is released (or the engine closed).

        Writes and sessions begun meanwhile wait, in order, as they wait
        behind a long write on LMDB's writer thread: for tests of what
        happens to work waiting in the queue. Refused with
        :class:`~aiolmdb.TransactionError` while a session or another hold
        has the writer.
        """
        self.check()
        if self._writer.held:
            raise TransactionError(
                f"the writer of environment {self.description} is held (by a write "
                "transaction or another hold): it cannot be held twice"
            )
        hold = WriterHold(self._writer)
        self._holds = [h for h in self._holds if h.held]
        self._holds.append(hold)
        return hold

    # -- the rest --------------------------------------------------------

    async def sync(self, force: bool = False) -> None:
        """Nothing to flush: nothing is durable."""
        self.check()

    async def close(self) -> None:
        """Abort the open session (the writes queued behind it then run), fail the sessions
        waiting to begin, end every snapshot. Closing twice is harmless."""
        if self._closed:
            return
        self._closed = True
        for hold in self._holds:
            hold.release()  # what waits behind it runs, as behind an aborted session
        self._holds.clear()
        for session in list(self._sessions):
            if session.state is SessionState.OPEN:
                session.abandon()  # the writer then runs what waits behind it
        for snapshot in list(self._snapshots):
            snapshot.release_now()
        self._keyspaces.clear()
        self._tables.clear()
