"""``LmdbEngine``: one open LMDB environment, its writer thread and its readers.

The engine behind ``aiolmdb.open(path)``. It owns the LMDB handle, one
writer thread (every write transaction runs there: group commit, sessions,
opening databases) and a small pool of reader threads. Small reads run on
the event loop thread (no thread hop), in the read transaction they share
(see :mod:`.reused_read`: how fresh such a read is). The map grows when a
write finds it full; a resize waits for this process's read transactions to
end (see :mod:`.gate`).
"""

from __future__ import annotations

import asyncio
import atexit
import enum
import logging
import os
import threading
import weakref
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import lmdb

from ...errors import (
    AiolmdbError,
    ClosedError,
    DatabaseNotFoundError,
    MapNotAdoptedError,
    ReadersFullError,
)
from ..base import (
    Buffer,
    Capabilities,
    NotNowError,
    ReadView,
    WriteView,
    open_refusal,
    outside_loop_refusal,
)
from ..deadlock import submit_behind
from ..keyspace import Keyspace
from ..waiting import call_awaitably, loop_running
from .gate import ReadGate, map_refusal
from .reused_read import CommitCounter, ReusedRead
from .session import ReadSnapshot, WriteSession
from .views import LmdbReadView, LmdbWriteView
from .writer import Writer, grown_or_error

__all__ = [
    "DEFAULT_INLINE_VALUE_LIMIT",
    "LMDB_CAPABILITIES",
    "LmdbEngine",
    "LmdbSettings",
    "version",
]

R = TypeVar("R")

#: Named databases an environment may hold when the caller does not say.
DEFAULT_MAX_DBS = 128
#: Bytes of the value under which the main database holds a named database (``MDB_db``:
#: a 32-bit pad, two 16-bit fields, five 64-bit counters and page numbers).
DATABASE_RECORD_SIZE = 48
#: Writes that may wait in the queue before submitters are made to wait.
DEFAULT_MAX_PENDING_WRITES = 10_000
#: Writes applied in one LMDB transaction at most.
DEFAULT_MAX_BATCH_WRITES = 4_096
#: Values larger than this are decoded on a worker thread, not the event loop.
DEFAULT_INLINE_VALUE_LIMIT = 64 * 1024
#: Worker threads for reads that could stall the event loop (scans, big values).
DEFAULT_READ_WORKERS = 2
#: The memory map doubles when full, up to this many bytes.
DEFAULT_MAX_MAP_SIZE = 1 << 40
#: Seconds a map resize waits for this process's read transactions to end.
DEFAULT_MAP_RESIZE_WAIT = 5.0
#: Seconds between two looks, on the event loop, at a resize a read waits for.
_RESIZE_POLL = 0.001

LMDB_CAPABILITIES = Capabilities(
    raw_transactions=True,
    native_key_orders=True,
    map_size=True,
    reader_table=True,
    backup=True,
    multi_process=True,
    durable=True,
    duplicate_values=True,
)

logger = logging.getLogger("aiolmdb")

_open_paths: dict[str, weakref.ReferenceType[LmdbEngine]] = {}
_open_paths_lock = threading.Lock()
#: An open database's cache key: its raw name, reverse_key, integerkey, dupsort.
_HandleKey = tuple[bytes | None, bool, bool, bool]

#: In the child of a fork: paths whose environment the parent had open.
_inherited_paths: set[str] = set()


class _ResizePending(NotNowError):
    """This process is resizing its map: the read waits for it on the event loop."""


class _ReadersFullError(ReadersFullError, lmdb.ReadersFullError):
    """The reader table is full: aiolmdb's error, and py-lmdb's for handlers of it."""


class _State(enum.Enum):
    """Where an engine is in its life."""

    OPEN = enum.auto()
    #: close() began: no new calls; its threads and handle are being released.
    CLOSING = enum.auto()
    #: Every thread and handle released.
    CLOSED = enum.auto()
    #: In the child of a fork: the parent's, never to be touched here.
    FORKED = enum.auto()


def version() -> tuple[int, int, int]:
    """The version of the LMDB library in use, as ``(major, minor, patch)``."""
    return lmdb.version()[:3]


class LmdbSettings:
    """The LMDB engine's own settings (beyond ``lmdb.open``'s keywords).

    - ``max_pending_writes``: writes that may wait for the writer thread
      before further writers wait too (backpressure);
    - ``max_batch_writes``: writes applied in one group commit at most;
    - ``inline_value_limit``: values up to this many bytes are read and
      decoded on the event loop thread (no thread hop); larger ones on a
      worker thread;
    - ``read_workers``: threads for scans and large reads;
    - ``max_map_size``: when a write finds the map (``map_size``) full, the
      map doubles, up to this many bytes, and the write is retried;
    - ``map_resize_wait``: seconds a resize of the map waits for this
      process's read transactions to end before it gives up.
    """

    __slots__ = (
        "inline_value_limit",
        "map_resize_wait",
        "max_batch_writes",
        "max_map_size",
        "max_pending_writes",
        "read_workers",
    )

    def __init__(
        self,
        *,
        max_pending_writes: int = DEFAULT_MAX_PENDING_WRITES,
        max_batch_writes: int = DEFAULT_MAX_BATCH_WRITES,
        inline_value_limit: int = DEFAULT_INLINE_VALUE_LIMIT,
        read_workers: int = DEFAULT_READ_WORKERS,
        max_map_size: int = DEFAULT_MAX_MAP_SIZE,
        map_resize_wait: float = DEFAULT_MAP_RESIZE_WAIT,
    ) -> None:
        for setting, value in (
            ("read_workers", read_workers),
            ("max_pending_writes", max_pending_writes),
            ("max_batch_writes", max_batch_writes),
        ):
            if value < 1:
                raise ValueError(f"{setting} must be at least 1, got {value}")
        if inline_value_limit < 0:
            raise ValueError(f"inline_value_limit must be >= 0, got {inline_value_limit}")
        if map_resize_wait < 0:
            raise ValueError(f"map_resize_wait must be >= 0, got {map_resize_wait}")
        self.max_pending_writes = max_pending_writes
        self.max_batch_writes = max_batch_writes
        self.inline_value_limit = inline_value_limit
        self.read_workers = read_workers
        self.max_map_size = max_map_size
        self.map_resize_wait = map_resize_wait


class LmdbEngine:
    """The :class:`~aiolmdb.storage.Engine` over one LMDB environment.

    ``lmdb_kwargs`` are ``lmdb.open``'s (``map_size``, ``sync``,
    ``readonly``, ...); ``max_dbs`` defaults to 128 so named databases work
    without it. Stale reader slots left by crashed processes are cleared on open.
    """

    name = "lmdb"
    capabilities = LMDB_CAPABILITIES

    def __init__(
        self, path: str | os.PathLike[str], settings: LmdbSettings, **lmdb_kwargs: Any
    ) -> None:
        lmdb_kwargs.setdefault("max_dbs", DEFAULT_MAX_DBS)
        key = os.path.realpath(os.fspath(path))
        if lmdb_kwargs.get("create", True) and not lmdb_kwargs.get("readonly", False):
            # LMDB creates the environment's directory, but not its parents.
            os.makedirs(os.path.dirname(key), exist_ok=True)
        with _open_paths_lock:
            if key in _inherited_paths:
                raise AiolmdbError(
                    f"the environment at {key!r} was open when this process forked from its "
                    f"parent, and cannot be opened again in this process: {_AFTER_FORK}"
                )
            existing = _open_paths.get(key)
            if existing is not None and existing() is not None:
                raise AiolmdbError(
                    f"the environment at {key!r} is already open in this process; "
                    "LMDB forbids opening it twice: share the AsyncEnvironment instead"
                )
            self.lmdb_env = lmdb.open(os.fspath(path), **lmdb_kwargs)
            _open_paths[key] = weakref.ref(self)
        if not lmdb_kwargs.get("readonly", False):
            self.lmdb_env.reader_check()  # free reader slots of crashed processes
        self._key = key
        self._name = repr(key)
        self._settings = settings
        self._gate = ReadGate()
        self._state = _State.OPEN
        #: True once closing began (or in the child of a fork): the one flag hot paths check.
        self.closed = False
        self._closing: asyncio.Future[None] | None = None
        self.inline_value_limit = settings.inline_value_limit
        self._max_key_size = self.lmdb_env.max_key_size()
        self._commits = CommitCounter()
        self._writer = Writer(
            self.lmdb_env,
            self._begin_write,
            name=self._name,
            max_pending=settings.max_pending_writes,
            max_batch=settings.max_batch_writes,
            grow_map=self._grow_map,
            commits=self._commits,
        )
        # The read transaction the event loop's reads share.
        self._reused = ReusedRead(self._begin_read, self._end_read, self._commits, self._gate)
        self._pool = ThreadPoolExecutor(
            max_workers=settings.read_workers, thread_name_prefix=f"aiolmdb-reader {key}"
        )
        # Open database handles by (name, flags).
        self._handles: dict[_HandleKey, Keyspace] = {}
        self._handle_serial = 0
        # The writer's job for the last open queued: the writer opens in queue order.
        self._last_open: asyncio.Future[None] | None = None
        self._sessions: set[WriteSession] = set()
        self._snapshots: set[ReadSnapshot] = set()
        #: A test hook: called on the writer thread each time a write session's
        #: transaction was aborted as a whole, before the session ends (a pause
        #: here widens the window a race with that end needs). None: nothing.
        self.after_session_abort: Callable[[], None] | None = None
        _live.add(self)

    # -- what the typed API asks of every engine --------------------------

    @property
    def description(self) -> str:
        """The environment's path, as messages name it."""
        return self._name

    @property
    def max_key_size(self) -> int:
        """The largest key, in bytes, LMDB accepts."""
        return self._max_key_size

    @property
    def keyspace_serial(self) -> int:
        """Serial number of the last database opened (a session begun before cannot see it)."""
        return self._handle_serial

    # -- what is going on, for monitoring and tests ------------------------

    @property
    def queued_writes(self) -> int:
        """Work waiting for the writer thread: writes, sessions, opens."""
        return self._writer.queued

    @property
    def readers_open(self) -> int:
        """This process's LMDB read transactions open now (a map resize waits for none)."""
        return self._gate.readers

    @property
    def sessions(self) -> tuple[WriteSession, ...]:
        """The write sessions open or waiting to begin (in no set order)."""
        return tuple(self._sessions)

    @property
    def keyspaces(self) -> tuple[Keyspace, ...]:
        """The databases opened (or being opened) and not deleted."""
        return tuple(self._handles.values())

    def check(self) -> None:
        """Raise :class:`ClosedError` unless the environment is open."""
        if self.closed:
            if self._state is _State.FORKED:
                raise ClosedError(
                    f"environment {self._name} was opened before this process forked: "
                    f"it belongs to the parent, and LMDB forbids using it here; {_AFTER_FORK}"
                )
            raise ClosedError(f"environment {self._name} is closed")

    async def close(self) -> None:
        """Finish the writes in flight, then release every thread and handle.

        Write sessions still open are aborted; read snapshots are ended. A
        cancelled close goes on without its caller, and a later ``close()``
        waits for it (from any event loop), or finishes it if its event loop
        is closed.
        """
        if self._state in (_State.CLOSED, _State.FORKED):
            return
        self.closed = True
        self._state = _State.CLOSING
        closing = self._closing
        if closing is None or closing.done() or closing.get_loop().is_closed():
            # A close whose loop ended before it finished is finished here.
            closing = self._closing = asyncio.ensure_future(self._shut_down())
        loop = closing.get_loop()
        if loop is asyncio.get_running_loop():
            await asyncio.shield(closing)
        else:  # under way on another thread's event loop: wait for it there
            waiting = asyncio.run_coroutine_threadsafe(asyncio.wait([closing]), loop)
            await asyncio.wrap_future(waiting)
            closing.result()

    async def _shut_down(self) -> None:
        # Every abort is sent before any is waited for: a session queued
        # behind another begins only once that one ends, whose owner may be
        # the task awaiting this close. The writer goes on taking work until
        # they all ended (a session may wait for room in its queue).
        aborts = [asyncio.ensure_future(session.abort()) for session in list(self._sessions)]
        await asyncio.gather(*aborts, return_exceptions=True)  # failed or not, it has ended
        thread = self._writer.stop()
        if thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, thread.join)
        self._release()

    def _release(self) -> None:
        """Free the handles once the writer thread has ended."""
        self.closed = True
        self._state = _State.CLOSED
        self._pool.shutdown(wait=True)
        self._reused.close()
        for snapshot in list(self._snapshots):
            snapshot.release_now()
        self.lmdb_env.close()
        with _open_paths_lock:
            if _open_paths.get(self._key, lambda: None)() is self:
                del _open_paths[self._key]
        _live.discard(self)

    def close_at_exit(self) -> None:
        """Interpreter exit without a finished ``close()``: commit what is queued, then release."""
        if self._state in (_State.CLOSED, _State.FORKED):
            return
        self.closed = True
        # The event loop is gone: the reads' shared transaction would stay open,
        # and a resize of the map the writer may be waiting for with it.
        self._reused.close()
        thread = self._writer.stop()
        if thread is not None:
            thread.join(timeout=5.0)
            if thread.is_alive():  # a session waits for a loop that is gone
                return
        self._release()

    # -- keyspaces (databases) --------------------------------------------

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
        """The LMDB handle of a database: open, or queued for the writer thread to open.

        LMDB forbids opening handles from two transactions at once and keeps
        a handle only if the transaction that opened it commits (py-lmdb ends
        a read transaction by a reset, which forgets it): the writer thread
        does every open, once per database; later opens reuse it. This never
        waits for the writer: the open is queued (every write queued after it
        runs after it) and the handle is pending until it is done; calls on
        the database wait for it. While a write transaction is open, the open
        would wait for it to end, and whatever waits for the open might be
        what that transaction awaits: it is refused, unless
        ``behind_other_tasks`` (an awaited open, outside that transaction).
        With ``create=False`` a missing database is refused at once: its name
        would be a key of the main database. The handle records the serial
        number of its open: a transaction begun before that cannot see it.
        """
        self.check()
        key = (name, reverse_keys, integer_keys, duplicates)
        known = self._handles.get(key)
        if known is not None and not known.dropped and known.error is None:
            return known
        if self._sessions and (in_own_session or not behind_other_tasks):
            # The open would wait for the writer, which serves the transaction
            # until it ends: the transaction could not see the database, and
            # whatever awaits the open may be what the transaction awaits.
            raise open_refusal(label, in_own_session, self._name)
        if not create and self._lacks(name):
            raise DatabaseNotFoundError(
                f"database {label} does not exist in environment {self._name} (create=False)"
            )
        keyspace = Keyspace(
            name,
            label,
            self._handle_serial + 1,
            integer_keys=integer_keys,
            reverse_keys=reverse_keys,
            duplicates=duplicates,
        )
        opening = self._queue_now(self._opener(keyspace, create), f"database {label}")
        if opening is not None:
            keyspace.opening = self._last_open = opening
        self._handle_serial = keyspace.serial
        self._handles[key] = keyspace
        return keyspace

    async def database_names(self) -> list[bytes]:
        """The keys of the main database that name a database.

        LMDB keeps a named database as a record of the main database whose value
        is the database's header (``MDB_db``, :data:`DATABASE_RECORD_SIZE` bytes);
        records stored in the unnamed database by the application are other keys
        there, told apart by the size of their value (one of exactly that size
        is listed too: opening it then fails with ``lmdb.IncompatibleError``).
        """
        self.check()

        def names(view: LmdbReadView) -> list[bytes]:
            cursor = view.txn.cursor()
            return [bytes(key) for key, value in cursor if len(value) == DATABASE_RECORD_SIZE]

        return await self._on_reader_thread(
            self._call_in_read_txn, names, self._settings.map_resize_wait
        )

    def _lacks(self, raw_name: bytes | None) -> bool:
        """True when the main database holds no record named ``raw_name`` (read here, now).

        False when that cannot be told without waiting: the writer's open then tells.
        """
        if raw_name is None:
            return False  # the main database itself
        try:
            return self._call_in_read_txn(lambda view: view.txn.get(raw_name) is None)
        except NotNowError:
            return False

    def _opener(self, keyspace: Keyspace, create: bool) -> Callable[[], None]:
        """The writer's job opening a database into ``keyspace``."""
        label = keyspace.label

        def open_db() -> Any:
            for may_create in (False, True) if create else (False,):
                try:
                    return self._adopting_map_size(
                        lambda: self.lmdb_env.open_db(
                            keyspace.name,
                            create=may_create,  # noqa: B023 - called within the iteration
                            reverse_key=keyspace.reverse_keys,
                            integerkey=keyspace.integer_keys,
                            dupsort=keyspace.duplicates,
                        )
                    )
                except lmdb.NotFoundError:
                    continue
            raise DatabaseNotFoundError(
                f"database {label} does not exist in environment {self._name} (create=False)"
            )

        def named() -> Any:
            try:
                handle = open_db()
                self._check_dupsort(keyspace, handle)
                # Committed: reads on the event loop must renew their transaction
                # before they can see the handle (a transaction begun before it
                # cannot read the database).
                self._commits.bump()
                # integerkey: every key must have the size of the keys stored.
                if keyspace.integer_keys and (size := self._first_key_size(handle)) is not None:
                    keyspace.key_size = size
                return handle
            except lmdb.Error as exc:
                # The same error, naming the database: every call on it raises it.
                raise type(exc)(
                    f"database {label} could not be opened in environment {self._name}: {exc}"
                ) from exc

        return lambda: keyspace.open_with(named)

    def _check_dupsort(self, keyspace: Keyspace, handle: Any) -> None:
        """On the writer thread: refuse a database whose ``dupsort`` is not the one asked
        for. LMDB keeps the flag a database was created with and ignores the one an open
        gives, so a mismatch would read and write it the other way silently."""
        with self.lmdb_env.begin() as t:
            stored = bool(handle.flags(t)["dupsort"])
        if stored != keyspace.duplicates:
            fix = (
                "open it with open_db(..., dupsort=True)"
                if stored
                else "it keeps one value per key: open it without dupsort"
            )
            raise lmdb.IncompatibleError(
                f"it was created {'with' if stored else 'without'} dupsort: {fix}"
            )

    def _first_key_size(self, handle: Any) -> int | None:
        """On the writer thread: the size of the first key of a database (None: empty).

        No read gate: the writer thread is the one that resizes the map.
        """
        with self.lmdb_env.begin(db=handle) as t, t.cursor() as cursor:
            return len(cursor.key()) if cursor.first() else None

    def forget_keyspace(self, keyspace: Keyspace) -> None:
        """Mark a deleted database's handle dropped, for every object that shares it."""
        keyspace.dropped = True
        for key in [key for key, value in self._handles.items() if value is keyspace]:
            del self._handles[key]

    # -- reads -------------------------------------------------------------

    def read_point(
        self, keyspace: Keyspace, key: bytes, decode: Callable[[bytes, Buffer | None], R]
    ) -> R:
        """One value, read and decoded on the event loop, in the read transaction the
        loop's reads share (see :mod:`.reused_read` for how fresh it is)."""
        # No closure in here (nor in read_now): Python would make a cell of each
        # local it uses at every call.
        view = self._reused.view()
        if view is None:  # not on the loop that holds it: a transaction of its own
            return self._read_alone(_point_read(keyspace, key, decode))
        # Positional arguments: py-lmdb parses keywords slowly, on the hottest path.
        return decode(key, view.txn.get(key, None, keyspace.handle))

    def read_now(self, fn: Callable[[ReadView], R]) -> R:
        """``fn(view)`` now, on the calling thread: on the event loop in the read
        transaction the loop's reads share (see :mod:`.reused_read`), elsewhere in
        one of its own."""
        view = self._reused.view()
        if view is None:
            return self._read_alone(fn)
        return fn(view)

    def _read_alone(self, fn: Callable[[ReadView], R]) -> R:
        """``fn(view)`` in a read transaction of its own, on the calling thread."""
        return self._call_in_read_txn(fn)

    async def read(self, fn: Callable[[ReadView], R], *, offload: bool = False) -> R:
        """``fn(view)`` inline (as :meth:`read_now`), or in a read transaction of its own on
        a reader thread (``offload``, or when the loop cannot read now)."""
        if self.closed:  # a scan may outlive its environment
            self.check()
        if not offload:
            try:
                return self.read_now(fn)
            except NotNowError:
                pass  # on a reader thread, which may wait for this process's readers
        return await self._on_reader_thread(
            self._call_in_read_txn, fn, self._settings.map_resize_wait
        )

    async def _on_reader_thread(self, begins_a_read: Callable[..., R], *args: Any) -> R:
        """``begins_a_read(*args)`` on a reader thread, once no resize of the map is pending.

        A read refused by the read gate waits for the resize here, on the
        event loop, and tries again: a reader thread parked at the gate might
        be the one a read snapshot needs in order to end, which the resize
        waits for.
        """
        loop = asyncio.get_running_loop()
        while True:
            # Polled: the resize runs on the writer thread, which knows no event loop.
            while self._gate.resizing:  # noqa: ASYNC110
                await asyncio.sleep(_RESIZE_POLL)
            try:
                return await loop.run_in_executor(self._pool, call_awaitably, begins_a_read, *args)
            except _ResizePending:
                continue  # a resize began meanwhile

    def _call_in_read_txn(self, fn: Callable[[LmdbReadView], R], wait: float = 0.0) -> R:
        view = LmdbReadView(self._begin_read(wait))
        try:
            return fn(view)
        finally:
            self._end_read(view.detach())

    def _begin_read(self, wait: float = 0.0) -> lmdb.Transaction:
        """Begin a read transaction (buffers=True), passing the map-resize gate.

        If another process grew the map, adopt its size first, waiting up to
        ``wait`` seconds for this process's other readers to end: 0 on the
        event loop, which must not stall (raises :class:`NotNowError`). While
        this process resizes the map, raises :class:`_ResizePending` (a
        :class:`NotNowError`): the caller waits for the resize on the event
        loop (:meth:`_on_reader_thread`), never on a thread.
        """
        if not self._gate.enter():
            raise self._resizing_error()
        try:
            return self._begin_counted_read()
        except lmdb.MapResizedError:
            self._gate.leave()
        except BaseException:
            self._gate.leave()
            raise
        self._adopt_map_size(wait)
        if not self._gate.enter():
            raise self._resizing_error()
        try:
            return self._begin_counted_read()
        except BaseException:
            self._gate.leave()
            raise

    def _begin_counted_read(self) -> lmdb.Transaction:
        """Begin a read transaction, counted in the gate already."""
        try:
            return self.lmdb_env.begin(buffers=True)
        except lmdb.ReadersFullError as exc:
            held = self._gate.readers - 1  # not counting this one
            raise _ReadersFullError(
                f"environment {self._name}: LMDB's reader table is full: its "
                f"{self.lmdb_env.max_readers()} slots are taken, {held} by read transactions "
                "of this process and the others by other processes (reader_check() frees "
                "those of crashed ones); end read snapshots (env.transaction(write=False)) "
                "sooner, or open the environment with a larger max_readers= (the first "
                "process to open it sets the table's size)"
            ) from exc

    def _resizing_error(self) -> _ResizePending:
        """What a read is told while this process resizes the map (it waits on the loop)."""
        return _ResizePending(
            f"environment {self._name}: the map is being resized, which waits for this "
            "process's read transactions to end; a read waits for it on the event loop"
        )

    def _end_read(self, txn: lmdb.Transaction) -> None:
        if self.closed and self._state is _State.FORKED:  # the open case checks one flag
            # The parent's transaction: ending it here would free the parent's
            # slot in the reader table (shared through the lock file).
            return
        txn.abort()
        self._gate.leave()

    async def read_keys(
        self, keyspace: Keyspace, keys: Sequence[bytes], decode: Callable[[list[Buffer | None]], R]
    ) -> R:
        """``decode(values)`` of the values of ``keys``, on a reader thread (which may wait
        for a resize of the map)."""
        return await self.read(lambda view: decode(view.get_many(keyspace, keys)), offload=True)

    async def offload(self, fn: Callable[..., R], *args: Any) -> R:
        """Run ``fn(*args)`` on a reader thread (work that must not stall the loop)."""
        self.check()
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    # -- map growth ----------------------------------------------------------

    def _begin_write(self) -> lmdb.Transaction:
        """Begin a write transaction (on the writer thread), adopting another process's growth."""
        return self._adopting_map_size(
            lambda: self.lmdb_env.begin(write=True), idle=self._writer.run_urgent
        )

    def _adopting_map_size(self, fn: Callable[[], R], idle: Callable[[], None] | None = None) -> R:
        try:
            return fn()
        except lmdb.MapResizedError:
            # Another process grew the map: adopt its size, then try again.
            self._adopt_map_size(self._settings.map_resize_wait, idle)
            return fn()

    def _adopt_map_size(self, wait: float, idle: Callable[[], None] | None = None) -> None:
        if not self._gate.run_alone(lambda: self.lmdb_env.set_mapsize(0), wait, idle):
            held = (
                f"some stayed open {wait} s (a read snapshot held open?)"
                if wait
                else ("some were open (reads in progress, or a read snapshot); try again")
            )
            error = MapNotAdoptedError(
                f"environment {self._name}: another process grew the map, and this process "
                f"can adopt the new size only while none of its read transactions is open; {held}"
            )
            if wait:
                raise error
            # On the event loop, which must not wait: the read goes to a reader thread.
            raise NotNowError(str(error)) from error

    def _grow_if_crowded(self) -> None:
        """Grow the map ahead of need when more than half of it is used.

        Best effort: it waits for no reader, and a failure only leaves the map as it is.
        """
        try:
            info = self.lmdb_env.info()
            used = (int(info["last_pgno"]) + 1) * int(self.lmdb_env.stat()["psize"])
            if used * 2 > int(info["map_size"]):
                self._grow_map(wait=0.0)
        except lmdb.Error as exc:
            logger.warning("environment %s: growing the map failed: %s", self._name, exc)

    def _growth_refusal(self) -> str | None:
        """Why the map cannot grow any more (None: it can)."""
        if int(self.lmdb_env.info()["map_size"]) >= self._settings.max_map_size:
            return f"the map is at max_map_size ({self._settings.max_map_size} bytes)"
        return None

    def _grow_map(self, wait: float | None = None) -> str | None:
        """Double the map (on the writer thread); None when done, else why not.

        Waits up to ``wait`` seconds (default: the ``map_resize_wait`` setting)
        for this process's read transactions to end, running urgent writer
        jobs meanwhile.
        """
        if wait is None:
            wait = self._settings.map_resize_wait
        if (refusal := self._growth_refusal()) is not None:
            return refusal
        size = int(self.lmdb_env.info()["map_size"])
        new_size = min(size * 2, self._settings.max_map_size)
        if (refusal := map_refusal(new_size)) is not None:
            return refusal

        def resize() -> None:
            self.lmdb_env.set_mapsize(new_size)

        if not self._gate.run_alone(resize, wait, self._writer.run_urgent):
            return (
                f"growing the map to {new_size} bytes waited {wait} s in vain "
                "for read transactions of this process to end (a read snapshot held open?)"
            )
        logger.info("environment %s: map grown from %d to %d bytes", self._name, size, new_size)
        return None

    # -- writes --------------------------------------------------------------

    def write(self, fn: Callable[[WriteView], R]) -> Awaitable[R]:
        """Queue ``fn(view)`` for the next group commit (see :mod:`.writer`).

        Not a coroutine: the caller awaits the writer's future directly (one
        frame fewer on the hottest write path).
        """
        if self._sessions:  # it waits behind them: refused if one's owner awaits it
            return submit_behind(
                [session.watch for session in self._sessions], self._writer.submit, fn
            )
        return self._writer.submit(fn)

    async def write_alone(self, fn: Callable[[WriteView], R]) -> R:
        """Run ``fn`` in a write transaction of its own, between group commits.

        If the map is full, it grows and ``fn`` runs again in a new transaction.
        """
        result: R = await self._writer.submit_exclusive(self._alone(fn))
        return result

    def queue_alone(
        self,
        fn: Callable[[WriteView], R],
        what: str,
        *,
        committed: Callable[[R], None] | None = None,
        failed: Callable[[BaseException], None] | None = None,
    ) -> asyncio.Future[R] | None:
        """Queue ``fn`` for the writer now, in a transaction of its own: every write
        queued afterwards runs after it.

        For opening ``what``. ``committed`` and ``failed`` run on the writer
        thread, before the next job. Outside an event loop (set-up code before
        ``asyncio.run``) there is no loop to keep running: ``fn`` runs at
        once, blocking, and this gives None.
        """
        alone = self._alone(fn)

        def job() -> R:
            try:
                result = alone()
            except BaseException as exc:
                if failed is not None:
                    failed(exc)
                raise
            if committed is not None:
                committed(result)
            return result

        return self._queue_now(job, what)

    def _queue_now(self, job: Callable[[], R], what: str) -> asyncio.Future[R] | None:
        """Queue ``job`` for the writer now: every write queued afterwards runs after it.

        Outside an event loop there is no loop to keep running: ``job`` runs
        at once, blocking, and this gives None.
        """
        if not loop_running():
            if self._sessions:
                raise outside_loop_refusal(what, self._name)
            self._writer.run_now(job)
            return None
        future: asyncio.Future[R] = self._writer.queue_exclusive(job)
        return future

    def _alone(self, fn: Callable[[WriteView], R]) -> Callable[[], R]:
        """The writer's job running ``fn`` in a transaction of its own, growing a full map."""

        def alone() -> R:
            while True:
                try:
                    with self._begin_write() as txn:
                        result = fn(LmdbWriteView(self.lmdb_env, txn))
                    self._commits.bump()
                    return result
                except lmdb.MapFullError as exc:
                    error = grown_or_error(exc, self._grow_map)
                    if error is not None:
                        raise error from exc

        return alone

    # -- sessions and snapshots ------------------------------------------------

    async def begin_snapshot(self) -> ReadSnapshot:
        """A read snapshot: one LMDB read transaction held open."""
        last_open = self._last_open
        if last_open is not None and not last_open.done():
            # The databases opened before the snapshot must be visible in it.
            await asyncio.shield(last_open)
        try:
            txn = self._begin_read()
        except NotNowError:
            # Adopting another process's growth waits for this process's
            # readers: on a reader thread, not the event loop.
            work = asyncio.ensure_future(
                self._on_reader_thread(self._begin_read, self._settings.map_resize_wait)
            )
            try:
                txn = await asyncio.shield(work)
            except asyncio.CancelledError:
                work.add_done_callback(self._end_unwanted_read)
                raise
        snapshot = ReadSnapshot(txn, self._end_read, self._pool, self._snapshots.discard)
        self._snapshots.add(snapshot)
        return snapshot

    def _end_unwanted_read(self, begun: asyncio.Future[lmdb.Transaction]) -> None:
        if not begun.cancelled() and begun.exception() is None:
            self._end_read(begun.result())

    async def begin_session(self) -> WriteSession:
        """An interactive write transaction, served by the writer thread until it ends."""
        session = WriteSession(
            self.lmdb_env,
            self._begin_write,
            self._name,
            self._growth_refusal,
            self._sessions.discard,
            self._commits,
            self._session_aborted,
        )
        behind = list(self._sessions)  # it waits for them to end
        self._sessions.add(session)

        def serve() -> None:
            # A full map cannot grow while the transaction is open: make room
            # before, and after a transaction that found it full anyway.
            self._grow_if_crowded()
            try:
                session.serve()
            finally:
                if session.map_was_full:
                    self._grow_map()

        finished = asyncio.ensure_future(self._writer.submit_exclusive(serve))
        finished.add_done_callback(lambda f: f.cancelled() or f.exception())
        try:
            await session.begin(behind)
        except BaseException:
            # Cancelled (or failed) while waiting for the writer: the session
            # may still be queued or begun, and nobody will end it but us.
            self._sessions.discard(session)
            session.abort_later()
            raise
        return session

    def _session_aborted(self) -> None:
        hook = self.after_session_abort
        if hook is not None:
            hook()

    def abandon(self) -> None:
        """In the child of a fork: mark everything dead, touching nothing LMDB shares.

        The parent's transactions, threads and handle stay as they were: the
        child never ends, commits or closes any of them (py-lmdb leaves them
        alone too when the child lets go of them).
        """
        self.closed = True
        self._state = _State.FORKED
        self._reused.abandon()
        for snapshot in self._snapshots:
            snapshot.abandon()
        for session in self._sessions:
            session.abandon()

    # -- what only LMDB has --------------------------------------------------

    def path(self) -> str:
        """The directory (or file, with ``subdir=False``) of the environment."""
        return self.lmdb_env.path()

    async def copy(self, path: str, *, compact: bool = False) -> None:
        """Write a consistent backup of the environment into the directory ``path``."""
        await self._backup(lambda: self.lmdb_env.copy(path, compact=compact))

    async def copy_to_fd(self, fd: int, *, compact: bool = False) -> None:
        """Write a consistent backup of the environment to the file descriptor ``fd``."""
        await self._backup(lambda: self.lmdb_env.copyfd(fd, compact=compact))

    async def _backup(self, write_copy: Callable[[], None]) -> None:
        """``write_copy()`` on a reader thread, inside the read gate: LMDB's copy reads
        in a transaction of its own."""

        def backup() -> None:
            if not self._gate.enter():
                raise self._resizing_error()
            try:
                write_copy()
            finally:
                self._gate.leave()

        await self._on_reader_thread(backup)

    async def set_map_size(self, map_size: int) -> None:
        """Set the map size on the writer thread, between two commits, once this
        process's read transactions have ended (``map_resize_wait`` seconds at most)."""
        self.check()
        if map_size <= 0:
            raise ValueError(f"environment {self._name}: map_size must be > 0, got {map_size}")
        wait = self._settings.map_resize_wait

        def resize() -> None:
            if (refusal := map_refusal(map_size)) is not None:
                raise MemoryError(f"environment {self._name}: {refusal}")
            if not self._gate.run_alone(
                lambda: self.lmdb_env.set_mapsize(map_size), wait, self._writer.run_urgent
            ):
                raise TimeoutError(
                    f"environment {self._name}: setting the map size to {map_size} bytes "
                    f"waited {wait} s in vain for read transactions of this process to end "
                    "(a read snapshot held open?)"
                )

        await self._writer.submit_exclusive(resize)

    async def sync(self, force: bool = False) -> None:
        """Flush to disk (needed only with ``sync=False`` or ``map_async=True``)."""
        self.check()
        await asyncio.get_running_loop().run_in_executor(
            self._pool, lambda: self.lmdb_env.sync(force)
        )

    def __repr__(self) -> str:
        return f"<LmdbEngine {self._name}>"


def _point_read(
    keyspace: Keyspace, key: bytes, decode: Callable[[bytes, Buffer | None], R]
) -> Callable[[ReadView], R]:
    """The read of :meth:`LmdbEngine.read_point`, as a function of a view."""
    return lambda view: decode(key, view.get(keyspace, key))


_live: weakref.WeakSet[LmdbEngine] = weakref.WeakSet()


@atexit.register
def _close_forgotten_environments() -> None:
    for engine in list(_live):
        engine.close_at_exit()


#: What a process that forked may do instead of using its parent's environment.
_AFTER_FORK = (
    "py-lmdb still counts the parent's handle as open in this process. Open "
    "environments after forking (with multiprocessing, use the 'spawn' or "
    "'forkserver' start method), or close them before forking"
)


def _after_fork_in_child() -> None:
    # The child must not touch the parent's environments (their threads are gone
    # and LMDB forbids it): every call fails clearly. Closing the parent's handle
    # here would end the parent's read transactions in the shared reader table
    # (or wait forever for a write transaction of a thread that is gone), so
    # py-lmdb keeps it registered, and the same environment cannot be opened again.
    global _open_paths_lock
    _open_paths_lock = threading.Lock()  # another thread may have held it at fork time
    _inherited_paths.update(key for key, engine in _open_paths.items() if engine() is not None)
    _open_paths.clear()
    for engine in list(_live):
        engine.abandon()
    _live.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)
