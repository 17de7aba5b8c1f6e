"""``AsyncEnvironment``: one open store (an LMDB environment, or memory) and its databases.

The environment is engine-neutral: what a location names (a path: LMDB;
``":memory:"``) does the storage, behind :mod:`aiolmdb.storage`'s protocols.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import warnings
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, NoReturn, ParamSpec, TypeVar, cast, overload

from .coders import Coder, IdentityCoder
from .database import AsyncDatabase, as_ints, database_label
from .errors import RetryableError, TransactionError, UnsupportedError
from .storage import Capabilities, Engine, Keyspace
from .storage.locations import lmdb_version, open_engine
from .storage.optimistic import SharedSnapshots
from .storage.waiting import backoff
from .transaction import Transaction

if TYPE_CHECKING:
    from .storage.lmdb import LmdbEngine, RawEnvironment

__all__ = ["OPTIMISTIC_ATTEMPTS", "TRANSACT_ATTEMPTS", "AsyncEnvironment", "open", "version"]

K = TypeVar("K")
V = TypeVar("V")
R = TypeVar("R")
P = ParamSpec("P")

#: How many times ``transact`` runs a function that conflicts, at most.
TRANSACT_ATTEMPTS = 32
#: How many of those attempts are optimistic on an engine with one writer (LMDB,
#: memory); the next ones hold the writer, where they cannot conflict: under heavy
#: contention on a few keys, no transaction starves. Not fewer: one that holds the
#: writer holds it for its whole body, so every optimistic commit in flight waits,
#: then conflicts (50 tasks over 10 hot keys ran at about half the rate with 2).
OPTIMISTIC_ATTEMPTS = 8


def version() -> tuple[int, int, int]:
    """The version of the LMDB library in use, as ``(major, minor, patch)``."""
    return lmdb_version()


def open(
    location: str | os.PathLike[str],
    *,
    max_pending_writes: int | None = None,
    max_batch_writes: int | None = None,
    inline_value_limit: int | None = None,
    read_workers: int | None = None,
    max_map_size: int | None = None,
    map_resize_wait: float | None = None,
    **lmdb_kwargs: Any,
) -> AsyncEnvironment:
    """Open (creating if needed) the store at ``location``.

    ``location`` chooses the engine: a path opens the LMDB environment in that
    directory; ``":memory:"`` a fresh in-memory store (ordered, transactional,
    gone when closed: for unit tests). The same application code runs on
    either, so switching is a matter of configuration.

    LMDB takes every keyword ``lmdb.open`` takes (``map_size``, ``sync``,
    ``readonly``, ...); ``max_dbs`` defaults to 128 so named databases work
    without it. The engine settings (None: the engine's default):

    - ``max_pending_writes``: writes that may wait for the writer thread
      before further writers wait too (backpressure);
    - ``max_batch_writes``: writes applied in one group commit at most;
    - ``inline_value_limit``: values up to this many bytes are read and
      decoded on the event loop thread (no thread hop); larger ones on a
      worker thread (the memory engine, which has no threads, decodes every
      value on the loop; it takes this setting only);
    - ``read_workers``: threads for scans and large reads;
    - ``max_map_size``: when a write finds the map (``map_size``) full, the
      map doubles, up to this many bytes, and the write is retried;
    - ``map_resize_wait``: seconds a resize of the map waits for this
      process's read transactions to end.

    An engine refuses settings it does not have with ``TypeError``. Stale
    reader slots left by crashed processes are cleared on open. Use it as
    ``async with aiolmdb.open(path) as env:`` or call ``await env.close()``.
    """
    return AsyncEnvironment(
        location,
        max_pending_writes=max_pending_writes,
        max_batch_writes=max_batch_writes,
        inline_value_limit=inline_value_limit,
        read_workers=read_workers,
        max_map_size=max_map_size,
        map_resize_wait=map_resize_wait,
        **lmdb_kwargs,
    )


class AsyncEnvironment:
    """An open store driven from asyncio: its databases, collections and transactions.

    Create it with :func:`aiolmdb.open`. On LMDB it owns the LMDB handle, one
    writer thread (every write transaction runs there, see the package
    documentation on group commit) and a small pool of reader threads.
    """

    def __init__(
        self,
        location: str | os.PathLike[str],
        *,
        max_pending_writes: int | None = None,
        max_batch_writes: int | None = None,
        inline_value_limit: int | None = None,
        read_workers: int | None = None,
        max_map_size: int | None = None,
        map_resize_wait: float | None = None,
        **lmdb_kwargs: Any,
    ) -> None:
        given = {
            "max_pending_writes": max_pending_writes,
            "max_batch_writes": max_batch_writes,
            "inline_value_limit": inline_value_limit,
            "read_workers": read_workers,
            "max_map_size": max_map_size,
            "map_resize_wait": map_resize_wait,
        }
        settings = {name: value for name, value in given.items() if value is not None}
        self._engine: Engine = open_engine(location, settings, lmdb_kwargs)
        self._name = self._engine.description
        #: The transaction this task's calls join, as a context variable (None: each call
        #: is its own). Read with :meth:`current_transaction`; the databases' hot paths
        #: read it directly, a call cheaper.
        self.transaction_context: contextvars.ContextVar[Transaction | None] = (
            contextvars.ContextVar(f"aiolmdb transaction {self._name}", default=None)
        )
        self._shared_snapshots = SharedSnapshots(self._engine)

    # -- lifecycle -------------------------------------------------------

    @property
    def engine(self) -> Engine:
        """The storage engine behind the environment (see :mod:`aiolmdb.storage`)."""
        return self._engine

    @property
    def shared_snapshots(self) -> SharedSnapshots:
        """The read snapshots the optimistic transactions begun together share (for
        :class:`Transaction`)."""
        return self._shared_snapshots

    @property
    def capabilities(self) -> Capabilities:
        """What the engine supports beyond the common API."""
        return self._engine.capabilities

    @property
    def inline_value_limit(self) -> int:
        """Values up to this many bytes are decoded on the event loop thread."""
        return self._engine.inline_value_limit

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called (or, LMDB, in the child of a fork)."""
        return self._engine.closed

    def _check(self) -> None:
        self._engine.check()

    async def close(self) -> None:
        """Finish the writes in flight, then release every thread and handle.

        Write transactions still open are aborted; read snapshots are ended.
        Closing twice is harmless; any call afterwards raises ``ClosedError``.
        A cancelled close goes on without its caller, and a later ``close()``
        waits for it (from any event loop), or finishes it if its event loop
        is closed.
        """
        await self._engine.close()

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

    def __enter__(self) -> NoReturn:
        """Refused: closing waits for the writes in flight, so the environment is an
        asynchronous context manager (``async with aiolmdb.open(path) as env:``)."""
        raise TypeError(
            f"environment {self._name}: use `async with aiolmdb.open(...) as env:`, not "
            "`with`: closing waits for the writes in flight (or call `await env.close()`)"
        )

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Never reached: :meth:`__enter__` refuses ``with``."""

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<AsyncEnvironment {self._engine.name} {self._name} {state}>"

    # -- databases -------------------------------------------------------

    @overload
    def open_db(
        self,
        name: str | bytes | None = None,
        *,
        create: bool = True,
        reverse_key: bool = False,
        integerkey: bool = False,
        dupsort: bool = False,
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
        dupsort: bool = False,
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
        dupsort: bool = False,
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
        dupsort: bool = False,
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
        dupsort: bool = False,
    ) -> AsyncDatabase[Any, Any]:
        """Open the named database (``None``: the unnamed default one).

        Both coders default to :class:`~aiolmdb.coders.IdentityCoder` (bytes).
        ``create=False`` raises :class:`DatabaseNotFoundError` when the
        database does not exist. ``reverse_key`` and ``integerkey`` are LMDB's
        key-order flags (they change the order range queries see).
        ``dupsort=True`` (LMDB only) opens a database whose keys hold several
        values each, kept sorted: ``put`` adds a value, ``delete(key, value)``
        removes one, ``get_all(key)`` reads them all, and the other reads see
        each key once, with its first value (see :class:`AsyncDatabase`).

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
            flags={"reverse_key": reverse_key, "integerkey": integerkey, "dupsort": dupsort},
        )

    def get_default_database(self) -> AsyncDatabase[bytes, bytes]:
        """The unnamed default database (which also lists the named databases' names)."""
        return self.open_db(None)

    def get_default_db(self) -> AsyncDatabase[bytes, bytes]:
        """Deprecated (aiolmdb 0.1.1's name): :meth:`get_default_database`."""
        warnings.warn(
            "env.get_default_db() is deprecated: use env.get_default_database()",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.get_default_database()

    @overload
    async def open_db_async(
        self,
        name: str | bytes | None = None,
        *,
        create: bool = True,
        reverse_key: bool = False,
        integerkey: bool = False,
        dupsort: bool = False,
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
        dupsort: bool = False,
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
        dupsort: bool = False,
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
        dupsort: bool = False,
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
        dupsort: bool = False,
    ) -> AsyncDatabase[Any, Any]:
        """:meth:`open_db`, then wait until the writer has opened the database.

        It raises what the open raised (``lmdb.DbsFullError`` when ``max_dbs``
        databases are open, for instance) here rather than at the first call.
        Inside a write transaction of this task it raises
        :class:`TransactionError`, as :meth:`open_db` does; a transaction of
        another task is waited for (so that task must not await this one).
        """
        label = database_label(name)
        # Queued behind the transactions open now, which open_db refuses to do.
        self.open_keyspace(
            name,
            label,
            create,
            integer_keys=integerkey,
            reverse_keys=reverse_key,
            duplicates=dupsort,
            behind_other_tasks=True,
        )
        database = self.open_db(
            name,
            key_coder=key_coder if key_coder is not None else IdentityCoder(),
            value_coder=value_coder if value_coder is not None else IdentityCoder(),
            create=create,
            reverse_key=reverse_key,
            integerkey=integerkey,
            dupsort=dupsort,
        )
        await database.access.until_open(None)
        return database

    def open_keyspace(
        self,
        name: str | bytes | None,
        label: str,
        create: bool,
        *,
        integer_keys: bool = False,
        reverse_keys: bool = False,
        duplicates: bool = False,
        behind_other_tasks: bool = False,
    ) -> Keyspace:
        """The keyspace of database ``name`` (see ``Engine.open_keyspace``): never waits.

        For layers built on the environment; applications open databases.
        """
        self._check()
        if (integer_keys or reverse_keys) and not self.capabilities.native_key_orders:
            flag = "integerkey" if integer_keys else "reverse_key"
            raise UnsupportedError(
                f"database {label}: the {self._engine.name} engine does not support {flag} "
                "(LMDB's key orders): use an ordered key coder instead"
            )
        if duplicates and not self.capabilities.duplicate_values:
            raise UnsupportedError(
                f"database {label}: the {self._engine.name} engine does not support dupsort "
                "(LMDB's keys with several values): keep a list of values under the key, "
                "or one record per value under a key that ends with it"
            )
        current = self.transaction_context.get()
        return self._engine.open_keyspace(
            name.encode() if isinstance(name, str) else name,
            label,
            create=create,
            integer_keys=integer_keys,
            reverse_keys=reverse_keys,
            duplicates=duplicates,
            in_own_session=current is not None and current.active and current.sees_own_writes,
            behind_other_tasks=behind_other_tasks,
        )

    async def database_names(self) -> list[bytes]:
        """The names of the named databases the environment holds, in byte order.

        Those made by other processes and earlier runs too; the databases of
        collections' indexes and aiolmdb's own ones (names starting with
        ``__aiolmdb__``) are among them.
        """
        self._check()
        return await self._engine.database_names()

    # -- transactions ----------------------------------------------------

    def transaction(self, *, write: bool = True, optimistic: bool = False) -> Transaction:
        """A transaction for every database call made inside ``async with``.

        ``async with env.transaction():`` opens one write transaction shared
        by every database and collection call made inside the block in this
        task: it commits on a clean exit and aborts on an exception. Nested,
        it is a savepoint. ``write=False`` gives a read snapshot: every read
        inside sees one consistent state. The transaction object can also be
        passed as ``txn=`` to calls made from other tasks.

        On LMDB (and memory) a plain write transaction holds the one writer
        while it is open: it never conflicts, and other writes wait for it.
        ``optimistic=True`` holds nothing: the block reads a snapshot on the
        event loop, its writes wait in a buffer (its own reads see them), and
        its end hands the writer's next group commit one write that checks
        every key and range the block read and applies the buffer only if
        none changed; if one did, nothing is applied and the block's end
        raises :class:`ConflictError`. For code that handles conflicts itself;
        :meth:`transact` runs a function that way and again on a conflict. On
        an engine whose writes run side by side (PostgreSQL) every write
        transaction is optimistic already, and ``optimistic`` changes nothing.
        """
        self._check()
        if optimistic and not write:
            raise ValueError(
                "optimistic=True is for write transactions: a read snapshot "
                "(write=False) never conflicts"
            )
        return Transaction(self, write=write, optimistic=optimistic)

    async def transact(
        self, fn: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs
    ) -> R:
        """``await fn(*args, **kwargs)`` inside one optimistic write transaction; its result.

        Every call ``fn`` makes joins the transaction, as in ``async with
        env.transaction(optimistic=True):``. It commits when ``fn`` returns and
        aborts when it raises. On a :class:`RetryableError` (a
        :class:`ConflictError`: another transaction changed what this one
        read; or a :class:`ConnectionLostError`: the connection to the server
        was lost before the commit) it is aborted and run again, up to
        ``TRANSACT_ATTEMPTS`` times with a jittered, growing pause in between;
        then the last such error is raised. Keep ``fn`` free of effects
        outside the environment: it may run more than once. On LMDB and
        memory, after ``OPTIMISTIC_ATTEMPTS`` conflicts it runs as a plain
        ``env.transaction()``, holding the writer, where it cannot conflict:
        however hot the keys it reads, it is applied.

        Many such transactions run at once, and on LMDB they commit together
        in the writer's group commits: the form to use for transactions made
        by concurrent tasks (the requests of a web service, say).

        Inside a write transaction of this task, ``fn`` runs in a savepoint of
        it and is not run again: a conflict belongs to the transaction around,
        which only its own code can run again.
        """
        current = self.transaction_context.get()
        if current is not None and current.active and current.sees_own_writes:
            async with self.transaction():
                return await fn(*args, **kwargs)
        attempt = 1
        while True:
            try:
                async with self.transaction(optimistic=attempt <= OPTIMISTIC_ATTEMPTS):
                    return await fn(*args, **kwargs)
            except RetryableError as exc:
                if attempt == TRANSACT_ATTEMPTS:
                    raise type(exc)(
                        f"environment {self._name}: the transaction of "
                        f"{getattr(fn, '__qualname__', type(fn).__qualname__)} still "
                        f"failed after {TRANSACT_ATTEMPTS} attempts: {exc}"
                    ) from exc
            await asyncio.sleep(0 if attempt == 1 else backoff(attempt - 1))
            attempt += 1

    def current_transaction(self) -> Transaction | None:
        """The transaction this task's calls join (None: each call is its own)."""
        return self.transaction_context.get()

    def enter_transaction(self, txn: Transaction) -> contextvars.Token[Transaction | None]:
        """Make ``txn`` the one this task's calls join (for :class:`Transaction`)."""
        return self.transaction_context.set(txn)

    def leave_transaction(self, token: contextvars.Token[Transaction | None]) -> None:
        """Undo :meth:`enter_transaction` (for :class:`Transaction`)."""
        self.transaction_context.reset(token)

    def transaction_for(self, txn: Transaction | None) -> Transaction | None:
        """The transaction a call made with ``txn=txn`` joins: ``txn``, else the task's own
        current one (None: the call is a transaction of its own).

        Raises :class:`TransactionError` for a transaction that cannot be used now.
        """
        if self._engine.closed:
            self._engine.check()
        if txn is None:
            txn = self.transaction_context.get()
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

    # -- what the engine tells ----------------------------------------------

    def max_key_size(self) -> int:
        """The largest key, in bytes, the engine accepts."""
        self._check()
        return self._engine.max_key_size

    async def sync(self, force: bool = False) -> None:
        """Flush to disk (needed only with LMDB's ``sync=False`` or ``map_async=True``;
        a no-op where commits are always durable or there is no disk)."""
        self._check()
        await self._engine.sync(force)

    # -- what only LMDB has ------------------------------------------------

    def require_lmdb(self, what: str) -> LmdbEngine:
        """The LMDB engine, for ``what`` only it has; :class:`UnsupportedError` naming the
        engine elsewhere."""
        self._check()
        if not self.capabilities.raw_transactions:
            raise UnsupportedError(
                f"environment {self._name}: {what} is LMDB's, and the {self._engine.name} "
                "engine does not have it"
            )
        return cast("LmdbEngine", self._engine)

    def path(self) -> str:
        """The directory (or file, with ``subdir=False``) of the LMDB environment."""
        return self.require_lmdb("path()").path()

    def info(self) -> dict[str, int]:
        """LMDB's ``mdb_env_info``: map size, last page, last transaction id, readers."""
        return as_ints(self.require_lmdb("info()").lmdb_env.info())

    def stat(self) -> dict[str, int]:
        """LMDB's ``mdb_env_stat`` for the main database."""
        return as_ints(self.require_lmdb("stat()").lmdb_env.stat())

    def flags(self) -> dict[str, bool]:
        """The flags the LMDB environment was opened with."""
        flags = self.require_lmdb("flags()").lmdb_env.flags()
        return {name: bool(value) for name, value in flags.items()}

    def readers(self) -> str:
        """LMDB's reader table, as a multi-line string."""
        return self.require_lmdb("readers()").lmdb_env.readers()

    def max_readers(self) -> int:
        """How many reader slots LMDB's reader table has (the ``max_readers`` it was
        opened with)."""
        return self.require_lmdb("max_readers()").lmdb_env.max_readers()

    def reader_check(self) -> int:
        """Clear the reader slots of processes that are gone; how many were cleared.

        Opening does it once; a long-lived process sharing the environment with
        processes that crash may call it now and then.
        """
        return self.require_lmdb("reader_check()").lmdb_env.reader_check()

    async def set_mapsize(self, map_size: int) -> None:
        """Set the size of LMDB's memory map, in bytes (LMDB rounds it up to pages).

        The writer makes the change between two commits, once this process's
        read transactions have ended (waiting up to ``map_resize_wait``
        seconds); other processes adopt it on their next write. The map also
        grows by itself when full, up to ``max_map_size``.
        """
        await self.require_lmdb("set_mapsize()").set_map_size(map_size)

    async def copy(self, path: str | os.PathLike[str], compact: bool = False) -> None:
        """Write a consistent backup of the LMDB environment into the directory ``path``.

        ``compact`` leaves free pages out (slower, smaller).
        """
        await self.require_lmdb("copy()").copy(os.fspath(path), compact=compact)

    async def copyfd(self, fd: int, compact: bool = False) -> None:
        """Write a consistent backup of the LMDB environment to the open file descriptor
        ``fd`` (a file, a pipe): the data file a ``copy()`` would write."""
        await self.require_lmdb("copyfd()").copy_to_fd(fd, compact=compact)

    @property
    def env(self) -> RawEnvironment:
        """Deprecated (aiolmdb 0.1.1's name): :attr:`lmdb_env`."""
        warnings.warn("env.env is deprecated: use env.lmdb_env", DeprecationWarning, stacklevel=2)
        return self.lmdb_env

    @property
    def lmdb_env(self) -> RawEnvironment:
        """The underlying ``lmdb.Environment``, for what aiolmdb does not wrap.

        Do not begin write transactions on it: they belong to the writer thread.
        """
        return self.require_lmdb("lmdb_env").lmdb_env
