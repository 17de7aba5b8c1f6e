"""``AsyncEnvironment``: one open LMDB environment, its writer thread and its readers."""

from __future__ import annotations

import asyncio
import atexit
import enum
import logging
import os
import threading
import weakref
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from types import TracebackType
from typing import Any, NoReturn, TypeVar, overload

import lmdb

from ._gate import ReadGate, map_refusal
from ._session import ReadSnapshot, WriteSession, submit_behind
from ._writer import Writer, call_awaitably, grown_or_error
from .coders import Coder, IdentityCoder
from .database import AsyncDatabase, OpenedHandle, as_ints
from .errors import (
    AiolmdbError,
    ClosedError,
    DatabaseNotFoundError,
    MapNotAdoptedError,
    TransactionError,
)
from .transaction import Transaction

__all__ = ["AsyncEnvironment", "open", "version"]

K = TypeVar("K")
V = TypeVar("V")
R = TypeVar("R")

#: Named databases an environment may hold when the caller does not say.
DEFAULT_MAX_DBS = 128
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
MAP_RESIZE_WAIT = 5.0
#: Seconds between two looks, on the event loop, at a resize a read waits for.
_RESIZE_POLL = 0.001

logger = logging.getLogger("aiolmdb")

_open_paths: dict[str, weakref.ReferenceType[AsyncEnvironment]] = {}
_open_paths_lock = threading.Lock()
#: An open database's cache key: its raw name, reverse_key, integerkey.
_HandleKey = tuple[bytes | None, bool, bool]

#: In the child of a fork: paths whose environment the parent had open.
_inherited_paths: set[str] = set()


class _ResizePending(MapNotAdoptedError):
    """This process is resizing its map: the read waits for it on the event loop."""


class _State(enum.Enum):
    """Where an environment is in its life."""

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


def open(
    path: str | os.PathLike[str],
    *,
    max_pending_writes: int = DEFAULT_MAX_PENDING_WRITES,
    max_batch_writes: int = DEFAULT_MAX_BATCH_WRITES,
    inline_value_limit: int = DEFAULT_INLINE_VALUE_LIMIT,
    read_workers: int = DEFAULT_READ_WORKERS,
    max_map_size: int = DEFAULT_MAX_MAP_SIZE,
    **lmdb_kwargs: Any,
) -> AsyncEnvironment:
    """Open (creating if needed) the LMDB environment at ``path``.

    Takes every keyword ``lmdb.open`` takes (``map_size``, ``sync``,
    ``readonly``, ...); ``max_dbs`` defaults to 128 so named databases work
    without it. The engine's own settings:

    - ``max_pending_writes``: writes that may wait for the writer thread
      before further writers wait too (backpressure);
    - ``max_batch_writes``: writes applied in one group commit at most;
    - ``inline_value_limit``: values up to this many bytes are read and
      decoded on the event loop thread (no thread hop); larger ones on a
      worker thread;
    - ``read_workers``: threads for scans and large reads;
    - ``max_map_size``: when a write finds the map (``map_size``) full, the
      map doubles, up to this many bytes, and the write is retried.

    Stale reader slots left by crashed processes are cleared on open. Use it
    as ``async with aiolmdb.open(path) as env:`` or call ``await env.close()``.
    """
    return AsyncEnvironment(
        path,
        max_pending_writes=max_pending_writes,
        max_batch_writes=max_batch_writes,
        inline_value_limit=inline_value_limit,
        read_workers=read_workers,
        max_map_size=max_map_size,
        **lmdb_kwargs,
    )


class AsyncEnvironment:
    """An LMDB environment driven from asyncio.

    It owns the LMDB handle, one writer thread (every write transaction runs
    there, see the package documentation on group commit) and a small pool of
    reader threads. Create it with :func:`aiolmdb.open`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_pending_writes: int = DEFAULT_MAX_PENDING_WRITES,
        max_batch_writes: int = DEFAULT_MAX_BATCH_WRITES,
        inline_value_limit: int = DEFAULT_INLINE_VALUE_LIMIT,
        read_workers: int = DEFAULT_READ_WORKERS,
        max_map_size: int = DEFAULT_MAX_MAP_SIZE,
        **lmdb_kwargs: Any,
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
            self._lmdb = lmdb.open(os.fspath(path), **lmdb_kwargs)
            _open_paths[key] = weakref.ref(self)
        if not lmdb_kwargs.get("readonly", False):
            self._lmdb.reader_check()  # free reader slots of crashed processes
        self._key = key
        self._name = repr(key)
        self._max_map_size = max_map_size
        self._gate = ReadGate()
        self._state = _State.OPEN
        #: True unless open: the one flag the hot paths check.
        self._closed = False
        self._closing: asyncio.Future[None] | None = None
        self.inline_value_limit = inline_value_limit
        self._writer = Writer(
            self._lmdb,
            self._begin_write,
            name=self._name,
            max_pending=max_pending_writes,
            max_batch=max_batch_writes,
            grow_map=self._grow_map,
        )
        self._pool = ThreadPoolExecutor(
            max_workers=read_workers, thread_name_prefix=f"aiolmdb-reader {key}"
        )
        # Open database handles by (name, flags): (handle, serial number of the open).
        self._handles: dict[_HandleKey, OpenedHandle] = {}
        self._handle_serial = 0
        # The writer's job for the last open queued: the writer opens in queue order.
        self._last_open: asyncio.Future[None] | None = None
        self._current: ContextVar[Transaction | None] = ContextVar(
            f"aiolmdb transaction {key}", default=None
        )
        self._sessions: set[WriteSession] = set()
        self._snapshots: set[ReadSnapshot] = set()
        _live.add(self)

    # -- lifecycle -------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called (or in the child of a fork)."""
        return self._closed

    def _check(self) -> None:
        if self._closed:
            if self._state is _State.FORKED:
                raise ClosedError(
                    f"environment {self._name} was opened before this process forked: "
                    f"it belongs to the parent, and LMDB forbids using it here; {_AFTER_FORK}"
                )
            raise ClosedError(f"environment {self._name} is closed")

    async def close(self) -> None:
        """Finish the writes in flight, then release every thread and handle.

        Write transactions still open are aborted; read snapshots are ended.
        Closing twice is harmless; any call afterwards raises ``ClosedError``.
        A cancelled close goes on without its caller, and a later ``close()``
        waits for it (from any event loop), or finishes it if its event loop
        is closed.
        """
        if self._state in (_State.CLOSED, _State.FORKED):
            return
        self._closed = True
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
        self._closed = True
        self._state = _State.CLOSED
        self._pool.shutdown(wait=True)
        for snapshot in list(self._snapshots):
            snapshot.release_now()
        self._lmdb.close()
        with _open_paths_lock:
            if _open_paths.get(self._key, lambda: None)() is self:
                del _open_paths[self._key]
        _live.discard(self)

    def _close_at_exit(self) -> None:
        """Interpreter exit without a finished ``close()``: commit what is queued, then release."""
        if self._state in (_State.CLOSED, _State.FORKED):
            return
        self._closed = True
        thread = self._writer.stop()
        if thread is not None:
            thread.join(timeout=5.0)
            if thread.is_alive():  # a session waits for a loop that is gone
                return
        self._release()

    async def __aenter__(self) -> AsyncEnvironment:
        self._check()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<AsyncEnvironment {self._name} {state}>"

    # -- databases -------------------------------------------------------

    @overload
    def open_db(
        self,
        name: str | bytes | None = None,
        *,
        create: bool = True,
        reverse_key: bool = False,
        integerkey: bool = False,
    ) -> AsyncDatabase[bytes, bytes]: ...

    @overload
    def open_db(
        self,
        name: str | bytes | None = None,
        *,
        key_coder: Coder[K],
        create: bool = True,
        reverse_key: bool = False,
        integerkey: bool = False,
    ) -> AsyncDatabase[K, bytes]: ...

    @overload
    def open_db(
        self,
        name: str | bytes | None = None,
        *,
        value_coder: Coder[V],
        create: bool = True,
        reverse_key: bool = False,
        integerkey: bool = False,
    ) -> AsyncDatabase[bytes, V]: ...

    @overload
    def open_db(
        self,
        name: str | bytes | None = None,
        *,
        key_coder: Coder[K],
        value_coder: Coder[V],
        create: bool = True,
        reverse_key: bool = False,
        integerkey: bool = False,
    ) -> AsyncDatabase[K, V]: ...

    def open_db(
        self,
        name: str | bytes | None = None,
        *,
        key_coder: Coder[Any] | None = None,
        value_coder: Coder[Any] | None = None,
        create: bool = True,
        reverse_key: bool = False,
        integerkey: bool = False,
    ) -> AsyncDatabase[Any, Any]:
        """Open the named database (``None``: the unnamed default one).

        Both coders default to :class:`~aiolmdb.coders.IdentityCoder` (bytes).
        ``create=False`` raises :class:`DatabaseNotFoundError` when the
        database does not exist. ``reverse_key`` and ``integerkey`` are LMDB's
        key-order flags (they change the order range queries see);
        duplicate-key databases (``dupsort``) are not supported.

        This never waits: a database this environment has not opened yet is
        opened (or created) by the writer thread, after the job it is busy
        with, and every call on the database waits for that (a write issued
        right away lands in it). An open that fails (``lmdb.DbsFullError``
        when ``max_dbs`` databases are open, for instance) raises its error,
        naming the database, from every call; :meth:`open_db_async` raises it
        at once. A database opened before ``env.transaction()`` can be used
        inside it; while a write transaction is open (of any task), opening
        one that is not open yet raises :class:`TransactionError` (its open
        would wait for that transaction to end; :meth:`open_db_async` waits
        for another task's).
        """
        return AsyncDatabase(
            self,
            name,
            key_coder if key_coder is not None else IdentityCoder(),
            value_coder if value_coder is not None else IdentityCoder(),
            create=create,
            flags={"reverse_key": reverse_key, "integerkey": integerkey},
        )

    def get_default_database(self) -> AsyncDatabase[bytes, bytes]:
        """The unnamed default database (which also lists the named databases' names)."""
        return self.open_db(None)

    @overload
    async def open_db_async(
        self,
        name: str | bytes | None = None,
        *,
        create: bool = True,
        reverse_key: bool = False,
        integerkey: bool = False,
    ) -> AsyncDatabase[bytes, bytes]: ...

    @overload
    async def open_db_async(
        self,
        name: str | bytes | None = None,
        *,
        key_coder: Coder[K],
        create: bool = True,
        reverse_key: bool = False,
        integerkey: bool = False,
    ) -> AsyncDatabase[K, bytes]: ...

    @overload
    async def open_db_async(
        self,
        name: str | bytes | None = None,
        *,
        value_coder: Coder[V],
        create: bool = True,
        reverse_key: bool = False,
        integerkey: bool = False,
    ) -> AsyncDatabase[bytes, V]: ...

    @overload
    async def open_db_async(
        self,
        name: str | bytes | None = None,
        *,
        key_coder: Coder[K],
        value_coder: Coder[V],
        create: bool = True,
        reverse_key: bool = False,
        integerkey: bool = False,
    ) -> AsyncDatabase[K, V]: ...

    async def open_db_async(
        self,
        name: str | bytes | None = None,
        *,
        key_coder: Coder[Any] | None = None,
        value_coder: Coder[Any] | None = None,
        create: bool = True,
        reverse_key: bool = False,
        integerkey: bool = False,
    ) -> AsyncDatabase[Any, Any]:
        """:meth:`open_db`, then wait until the writer has opened the database.

        It raises what the open raised (``lmdb.DbsFullError`` when ``max_dbs``
        databases are open, for instance) here rather than at the first call.
        Inside a write transaction of this task it raises
        :class:`TransactionError`, as :meth:`open_db` does; a transaction of
        another task is waited for (so that task must not await this one).
        """
        flags = {"reverse_key": reverse_key, "integerkey": integerkey}
        label = "<default>" if name is None else repr(name)
        # Queued behind the transactions open now, which open_db refuses to do.
        self._open_handle(name, label, create, flags, behind_other_tasks=True)
        database = self.open_db(
            name,
            key_coder=key_coder if key_coder is not None else IdentityCoder(),
            value_coder=value_coder if value_coder is not None else IdentityCoder(),
            create=create,
            reverse_key=reverse_key,
            integerkey=integerkey,
        )
        await database._until_open(None)
        return database

    def _open_handle(
        self,
        name: str | bytes | None,
        label: str,
        create: bool,
        flags: Mapping[str, bool],
        *,
        behind_other_tasks: bool = False,
    ) -> OpenedHandle:
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
        would be a key of the main database. The
        handle records the serial number of its open: a transaction begun
        before that cannot see the database.
        """
        key, known = self._known_handle(name, flags)
        if known is not None:
            return known
        if self._sessions:
            # The open would wait for the writer, which serves the transaction
            # until it ends: the transaction could not see the database, and
            # whatever awaits the open may be what the transaction awaits.
            current = self._current.get()
            own = current is not None and current.active and current.sees_own_writes
            if own or not behind_other_tasks:
                self._refuse_open(label, own)
        if not create and self._lacks(key[0]):
            raise DatabaseNotFoundError(
                f"database {label} does not exist in environment {self._name} (create=False)"
            )
        return self._queue_open(key, label, create)

    def _refuse_open(self, label: str, own: bool) -> NoReturn:
        """Refuse to open a database while a write transaction (``own``: this task's) is open."""
        holder = "this write transaction" if own else "a write transaction of another task"
        raise TransactionError(
            f"database {label} cannot be opened while {holder} is open in environment "
            f"{self._name}: opening a database needs the writer, which serves that "
            "transaction until it ends; open databases before the transaction "
            "(at start-up, for instance)"
        )

    def _queue_open(self, key: _HandleKey, label: str, create: bool) -> OpenedHandle:
        """Queue the writer's open of a database; its handle is pending until it is done."""
        opened = OpenedHandle(self._handle_serial + 1)
        opening = self._queue_now(self._opener(key, label, create, opened), f"database {label}")
        if opening is not None:
            opened.opening = self._last_open = opening
        self._handle_serial = opened.serial
        self._handles[key] = opened
        return opened

    def _lacks(self, raw_name: bytes | None) -> bool:
        """True when the main database holds no record named ``raw_name`` (read here, now).

        False when that cannot be told without waiting: the writer's open then tells.
        """
        if raw_name is None:
            return False  # the main database itself
        try:
            return self._call_in_read_txn(lambda t: t.get(raw_name) is None)
        except MapNotAdoptedError:
            return False

    def _known_handle(
        self, name: str | bytes | None, flags: Mapping[str, bool]
    ) -> tuple[_HandleKey, OpenedHandle | None]:
        """The cache key of a database, and its handle if it is open or opening.

        A handle that was dropped, or whose open failed, is not reused: the
        database is opened afresh.
        """
        self._check()
        raw_name = name.encode() if isinstance(name, str) else name
        key = (raw_name, flags.get("reverse_key", False), flags.get("integerkey", False))
        known = self._handles.get(key)
        if known is None or known.dropped or known.error is not None:
            return key, None
        return key, known

    def _opener(
        self, key: _HandleKey, label: str, create: bool, opened: OpenedHandle
    ) -> Callable[[], None]:
        """The writer's job opening a database into ``opened``."""
        raw_name, reverse_key, integerkey = key

        def open_db() -> Any:
            for may_create in (False, True) if create else (False,):
                try:
                    return self._adopting_map_size(
                        lambda: self._lmdb.open_db(
                            raw_name,
                            create=may_create,  # noqa: B023 - called within the iteration
                            reverse_key=reverse_key,
                            integerkey=integerkey,
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
                # integerkey: every key must have the size of the keys stored.
                if integerkey and (size := self._first_key_size(handle)) is not None:
                    opened.key_size = size
                return handle
            except lmdb.Error as exc:
                # The same error, naming the database: every call on it raises it.
                raise type(exc)(
                    f"database {label} could not be opened in environment {self._name}: {exc}"
                ) from exc

        return lambda: opened.open_with(named)

    def _first_key_size(self, handle: Any) -> int | None:
        """On the writer thread: the size of the first key of a database (None: empty).

        No read gate: the writer thread is the one that resizes the map.
        """
        with self._lmdb.begin(db=handle) as t, t.cursor() as cursor:
            return len(cursor.key()) if cursor.first() else None

    def _forget_handle(self, opened: OpenedHandle) -> None:
        """Mark a deleted database's handle dropped, for every object that shares it."""
        opened.dropped = True
        for key in [key for key, value in self._handles.items() if value is opened]:
            del self._handles[key]

    # -- transactions ----------------------------------------------------

    def transaction(self, *, write: bool = True) -> Transaction:
        """A transaction for every database call made inside ``async with``.

        ``async with env.transaction():`` opens one write transaction shared
        by every database and collection call made inside the block in this
        task: it commits on a clean exit and aborts on an exception. Nested,
        it is a savepoint. ``write=False`` gives a read snapshot: every read
        inside sees one consistent state. The transaction object can also be
        passed as ``txn=`` to calls made from other tasks.
        """
        self._check()
        return Transaction(self, write=write)

    def _context(self, txn: Transaction | None) -> Transaction | None:
        """The transaction a call runs in: the one given, else the task's own current one."""
        if self._closed:
            self._check()
        if txn is None:
            txn = self._current.get()
            if txn is None:
                return None
            # Tasks started inside the block inherit it and join it; one that
            # outlives the block is refused, never auto-committed.
            txn.check_inherited()
            return txn
        if txn.env is not self:
            raise TransactionError(
                f"the transaction given belongs to environment {txn.env._name}, not to {self._name}"
            )
        txn.check_usable()
        return txn

    # -- running work (used by databases and collections) ---------------

    async def _read(
        self,
        fn: Callable[[lmdb.Transaction], R],
        ctx: Transaction | None,
        *,
        offload: bool = False,
    ) -> R:
        """Run ``fn(read_txn)`` in ``ctx`` (see :meth:`_context`), else in a read of its own.

        A read of its own runs inline, or on a reader thread when ``offload``.
        """
        if self._closed:  # a scan may outlive its environment (or its transaction)
            self._check()
        if ctx is not None:
            result: R = await ctx.run_read(fn, offload=offload)
            return result
        if not offload:
            try:
                return self._call_in_read_txn(fn)
            except MapNotAdoptedError:
                pass  # on a reader thread, which may wait for this process's readers
        return await self._on_reader_thread(self._call_in_read_txn, fn, MAP_RESIZE_WAIT)

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

    def _call_in_read_txn(self, fn: Callable[[lmdb.Transaction], R], wait: float = 0.0) -> R:
        txn = self._begin_read(wait)
        try:
            return fn(txn)
        finally:
            self._end_read(txn)

    def _begin_read(self, wait: float = 0.0) -> lmdb.Transaction:
        """Begin a read transaction (buffers=True), passing the map-resize gate.

        If another process grew the map, adopt its size first, waiting up to
        ``wait`` seconds for this process's other readers to end: 0 on the
        event loop, which must not stall (raises :class:`MapNotAdoptedError`).
        While this process resizes the map, raises :class:`_ResizePending` (a
        :class:`MapNotAdoptedError`): the caller waits for the resize on the
        event loop (:meth:`_on_reader_thread`), never on a thread.
        """
        # The gate is passed inline: this is the hottest path of every read.
        if not self._gate.enter():
            raise self._resizing_error()
        try:
            return self._lmdb.begin(buffers=True)
        except lmdb.MapResizedError:
            self._gate.leave()
        except BaseException:
            self._gate.leave()
            raise
        self._adopt_map_size(wait)
        if not self._gate.enter():
            raise self._resizing_error()
        try:
            return self._lmdb.begin(buffers=True)
        except BaseException:
            self._gate.leave()
            raise

    def _resizing_error(self) -> _ResizePending:
        """What a read is told while this process resizes the map (it waits on the loop)."""
        return _ResizePending(
            f"environment {self._name}: the map is being resized, which waits for this "
            "process's read transactions to end; a read waits for it on the event loop"
        )

    def _begin_write(self) -> lmdb.Transaction:
        """Begin a write transaction (on the writer thread), adopting another process's growth."""
        return self._adopting_map_size(
            lambda: self._lmdb.begin(write=True), idle=self._writer.run_urgent
        )

    def _adopting_map_size(self, fn: Callable[[], R], idle: Callable[[], None] | None = None) -> R:
        try:
            return fn()
        except lmdb.MapResizedError:
            # Another process grew the map: adopt its size, then try again.
            self._adopt_map_size(MAP_RESIZE_WAIT, idle)
            return fn()

    def _end_read(self, txn: lmdb.Transaction) -> None:
        if self._closed and self._state is _State.FORKED:  # the open case checks one flag
            # The parent's transaction: ending it here would free the parent's
            # slot in the reader table (shared through the lock file).
            return
        txn.abort()
        self._gate.leave()

    def _adopt_map_size(self, wait: float, idle: Callable[[], None] | None = None) -> None:
        if not self._gate.run_alone(lambda: self._lmdb.set_mapsize(0), wait, idle):
            held = (
                f"some stayed open {wait} s (a read snapshot held open?)"
                if wait
                else ("some were open (reads in progress, or a read snapshot); try again")
            )
            raise MapNotAdoptedError(
                f"environment {self._name}: another process grew the map, and this process "
                f"can adopt the new size only while none of its read transactions is open; {held}"
            )

    def _grow_if_crowded(self) -> None:
        """Grow the map ahead of need when more than half of it is used.

        Best effort: it waits for no reader, and a failure only leaves the map as it is.
        """
        try:
            used = (int(self._lmdb.info()["last_pgno"]) + 1) * int(self._lmdb.stat()["psize"])
            if used * 2 > int(self._lmdb.info()["map_size"]):
                self._grow_map(wait=0.0)
        except lmdb.Error as exc:
            logger.warning("environment %s: growing the map failed: %s", self._name, exc)

    def _growth_refusal(self) -> str | None:
        """Why the map cannot grow any more (None: it can)."""
        if int(self._lmdb.info()["map_size"]) >= self._max_map_size:
            return f"the map is at max_map_size ({self._max_map_size} bytes)"
        return None

    def _grow_map(self, wait: float | None = None) -> str | None:
        """Double the map (on the writer thread); None when done, else why not.

        Waits up to ``wait`` seconds (default ``MAP_RESIZE_WAIT``) for this
        process's read transactions to end, running urgent writer jobs meanwhile.
        """
        if wait is None:
            wait = MAP_RESIZE_WAIT
        if (refusal := self._growth_refusal()) is not None:
            return refusal
        size = int(self._lmdb.info()["map_size"])
        new_size = min(size * 2, self._max_map_size)
        if (refusal := map_refusal(new_size)) is not None:
            return refusal

        def resize() -> None:
            self._lmdb.set_mapsize(new_size)

        if not self._gate.run_alone(resize, wait, self._writer.run_urgent):
            return (
                f"growing the map to {new_size} bytes waited {wait} s in vain "
                "for read transactions of this process to end (a read snapshot held open?)"
            )
        logger.info("environment %s: map grown from %d to %d bytes", self._name, size, new_size)
        return None

    def _write(
        self,
        fn: Callable[[lmdb.Transaction], R],
        ctx: Transaction | None,
        *,
        may_fail_midway: bool = False,
    ) -> Awaitable[R]:
        """Run ``fn(write_txn)`` in ``ctx`` (see :meth:`_context`), else in the next group commit.

        A group commit that a call fails is aborted and replayed without it,
        so the call leaves nothing behind. In a transaction, a call that may
        fail after writing part of its work (``may_fail_midway``) runs in a
        savepoint of its own for the same effect; the others do not pay for
        one (LMDB copies every page a nested transaction touches). Not a
        coroutine: outside a transaction the caller awaits the writer's future
        directly.
        """
        if ctx is None:
            if self._sessions:  # it waits behind them: refused if one's owner awaits it
                return submit_behind(self._sessions, self._writer.submit, fn)
            return self._writer.submit(fn)
        if self._closed:  # the caller may have yielded since it found its transaction
            self._check()
        if may_fail_midway:
            return ctx.run_write(lambda t: _in_savepoint(self._lmdb, t, fn))
        return ctx.run_write(fn)

    async def _write_alone(self, fn: Callable[[lmdb.Transaction], R]) -> R:
        """Run ``fn`` in a write transaction of its own, between group commits.

        If the map is full, it grows and ``fn`` runs again in a new transaction.
        """
        result: R = await self._writer.submit_exclusive(self._alone(fn))
        return result

    def _queue_now(self, job: Callable[[], R], what: str) -> asyncio.Future[R] | None:
        """Queue ``job`` for the writer now: every write queued afterwards runs after it.

        For opening ``what``. Outside an event loop (set-up code before
        ``asyncio.run``) there is no loop to keep running: ``job`` runs at
        once, blocking, and this gives None.
        """
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            if self._sessions:  # one may wait for an event loop that is not running
                raise TransactionError(
                    f"{what} cannot be opened outside an event loop while a write "
                    f"transaction is open in environment {self._name}"
                ) from None
            self._writer.run_now(job)
            return None
        future: asyncio.Future[R] = self._writer.queue_exclusive(job)
        return future

    def _alone(self, fn: Callable[[lmdb.Transaction], R]) -> Callable[[], R]:
        """The writer's job running ``fn`` in a transaction of its own, growing a full map."""

        def alone() -> R:
            while True:
                try:
                    with self._begin_write() as txn:
                        return fn(txn)
                except lmdb.MapFullError as exc:
                    error = grown_or_error(exc, self._grow_map)
                    if error is not None:
                        raise error from exc

        return alone

    async def _new_snapshot(self) -> ReadSnapshot:
        last_open = self._last_open
        if last_open is not None and not last_open.done():
            # The databases opened before the snapshot must be visible in it.
            await asyncio.shield(last_open)
        try:
            txn = self._begin_read()
        except MapNotAdoptedError:
            # Adopting another process's growth waits for this process's
            # readers: on a reader thread, not the event loop.
            work = asyncio.ensure_future(self._on_reader_thread(self._begin_read, MAP_RESIZE_WAIT))
            try:
                txn = await asyncio.shield(work)
            except asyncio.CancelledError:
                work.add_done_callback(self._end_unwanted_read)
                raise
        snapshot = ReadSnapshot(txn, self._end_read, self._pool)
        self._snapshots.add(snapshot)
        return snapshot

    def _end_unwanted_read(self, begun: asyncio.Future[lmdb.Transaction]) -> None:
        if not begun.cancelled() and begun.exception() is None:
            self._end_read(begun.result())

    async def _offload(self, fn: Callable[..., R], *args: Any) -> R:
        """Run ``fn(*args)`` on a reader thread (work that must not stall the loop)."""
        self._check()
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def _end_snapshot(self, snapshot: ReadSnapshot) -> None:
        try:
            await snapshot.release()
        finally:
            self._snapshots.discard(snapshot)

    async def _start_session(self) -> WriteSession:
        session = WriteSession(self._lmdb, self._begin_write, self._name, self._growth_refusal)
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

    def _end_session(self, session: WriteSession) -> None:
        self._sessions.discard(session)

    def _abandon(self) -> None:
        """In the child of a fork: mark everything dead, touching nothing LMDB shares.

        The parent's transactions, threads and handle stay as they were: the
        child never ends, commits or closes any of them (py-lmdb leaves them
        alone too when the child lets go of them).
        """
        self._closed = True
        self._state = _State.FORKED
        for snapshot in self._snapshots:
            snapshot.abandon()
        for session in self._sessions:
            session.abandon()

    # -- pass-throughs ---------------------------------------------------

    def path(self) -> str:
        """The directory (or file, with ``subdir=False``) of the environment."""
        self._check()
        return self._lmdb.path()

    def info(self) -> dict[str, int]:
        """LMDB's ``mdb_env_info``: map size, last page, last transaction id, readers."""
        self._check()
        return as_ints(self._lmdb.info())

    def stat(self) -> dict[str, int]:
        """LMDB's ``mdb_env_stat`` for the main database."""
        self._check()
        return as_ints(self._lmdb.stat())

    def flags(self) -> dict[str, bool]:
        """The flags the environment was opened with."""
        self._check()
        return {name: bool(value) for name, value in self._lmdb.flags().items()}

    def max_key_size(self) -> int:
        """The largest key, in bytes, LMDB accepts."""
        self._check()
        return self._lmdb.max_key_size()

    def readers(self) -> str:
        """LMDB's reader table, as a multi-line string."""
        self._check()
        return self._lmdb.readers()

    async def copy(self, path: str | os.PathLike[str], *, compact: bool = False) -> None:
        """Write a consistent backup of the environment into the directory ``path``."""
        self._check()
        target = os.fspath(path)

        def backup() -> None:
            if not self._gate.enter():  # the copy reads in a transaction of its own
                raise self._resizing_error()
            try:
                self._lmdb.copy(target, compact=compact)
            finally:
                self._gate.leave()

        await self._on_reader_thread(backup)

    async def sync(self, *, force: bool = False) -> None:
        """Flush to disk (needed only with ``sync=False`` or ``map_async=True``)."""
        self._check()
        await asyncio.get_running_loop().run_in_executor(self._pool, lambda: self._lmdb.sync(force))

    @property
    def lmdb_env(self) -> lmdb.Environment:
        """The underlying ``lmdb.Environment``, for what aiolmdb does not wrap.

        Do not begin write transactions on it: they belong to the writer thread.
        """
        self._check()
        return self._lmdb


_live: weakref.WeakSet[AsyncEnvironment] = weakref.WeakSet()


@atexit.register
def _close_forgotten_environments() -> None:
    for env in list(_live):
        env._close_at_exit()


def _in_savepoint(
    env: lmdb.Environment, parent: lmdb.Transaction, fn: Callable[[lmdb.Transaction], R]
) -> R:
    with env.begin(write=True, parent=parent) as child:  # commits on return, aborts on raise
        return fn(child)


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
    _inherited_paths.update(key for key, env in _open_paths.items() if env() is not None)
    _open_paths.clear()
    for env in list(_live):
        env._abandon()
    _live.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)
