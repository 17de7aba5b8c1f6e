"""The storage seam: what an engine offers the typed API, and nothing engine-specific.

Record and index logic is written once, as synchronous functions over a
view (``fn(view) -> result``). A function touches storage only through its
view and may run more than once: each engine decides where it runs (LMDB
on its writer thread inside a group commit, the memory engine on the event
loop, one function at a time) and replays it when the group it ran in fails.

Keys are the coders' bytes. Every keyspace (one per database, one per
index) orders its keys byte by byte, unless the engine supports LMDB's
``integerkey``/``reverse_key`` orders and the keyspace asked for one.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any, Protocol, TypeVar, runtime_checkable

from ..errors import TransactionError, UnsupportedError
from .keyspace import Keyspace

__all__ = [
    "Buffer",
    "Capabilities",
    "DuplicatesReadView",
    "DuplicatesWriteView",
    "Engine",
    "NotNowError",
    "ReadView",
    "Session",
    "Snapshot",
    "WriteView",
    "open_refusal",
    "outside_loop_refusal",
    "refuse_duplicates",
    "refuse_key_orders",
    "transaction_label",
]

R = TypeVar("R")

#: Bytes as an engine hands them out: valid until the view they came from ends.
Buffer = bytes | memoryview


def open_refusal(label: str, own: bool, where: str) -> TransactionError:
    """Why database ``label`` cannot be opened now, in environment ``where``: a write
    transaction (``own``: the caller's) is open.

    LMDB opens databases on its writer, which serves that transaction until it
    ends; every engine refuses alike, so that code that works on one works on all.
    """
    holder = "this write transaction" if own else "a write transaction of another task"
    return TransactionError(
        f"database {label} cannot be opened while {holder} is open in environment "
        f"{where}: opening a database needs the writer, which serves that transaction "
        "until it ends; open databases before the transaction (at start-up, for instance)"
    )


def outside_loop_refusal(what: str, where: str) -> TransactionError:
    """Why ``what`` cannot be opened outside an event loop now, in environment ``where``:
    a write transaction is open, which may wait for an event loop that is not running."""
    return TransactionError(
        f"{what} cannot be opened outside an event loop while a write "
        f"transaction is open in environment {where}"
    )


def refuse_key_orders(engine: str, label: str, integer_keys: bool, reverse_keys: bool) -> None:
    """Refuse LMDB's ``integerkey``/``reverse_key`` (asked for database ``label``) on an
    engine that orders keys byte by byte, with ``UnsupportedError`` naming it."""
    for wanted, flag in ((integer_keys, "integerkey"), (reverse_keys, "reverse_key")):
        if wanted:
            raise UnsupportedError(
                f"the {engine} engine does not support {flag} (database {label}): "
                f"it orders keys byte by byte; {flag} is LMDB's"
            )


def refuse_duplicates(engine: str, label: str, duplicates: bool) -> None:
    """Refuse LMDB's ``dupsort`` (asked for database ``label``) on an engine that keeps
    one value per key, with ``UnsupportedError`` naming it."""
    if duplicates:
        raise UnsupportedError(
            f"the {engine} engine does not support dupsort (database {label}): it keeps "
            "one value per key; dupsort databases are LMDB's"
        )


def transaction_label(kind: str, task: asyncio.Task[Any] | None, where: str) -> str:
    """How messages name a transaction: its kind, the task that opened it, where it is."""
    by = f"task {task.get_name()!r}" if task is not None else "no task"
    return f"the {kind} opened by {by} {where}"


class NotNowError(Exception):
    """A read cannot be made on the event loop now (LMDB: the map is being resized):
    the caller makes it with :meth:`Engine.read`, which waits off the loop."""


@dataclasses.dataclass(frozen=True)
class Capabilities:
    """What an engine supports beyond the common API; tests and users skip on these."""

    #: ``AsyncDatabase.run()`` gives the raw transaction and cursors (``DatabaseTxn.txn``).
    raw_transactions: bool = False
    #: Databases with LMDB's ``integerkey`` or ``reverse_key`` key orders.
    native_key_orders: bool = False
    #: A memory map with a size (``info()``, ``max_map_size``, growth).
    map_size: bool = False
    #: A reader table (``readers()``, stale reader slots).
    reader_table: bool = False
    #: ``env.copy(path)``: a consistent backup into a directory.
    backup: bool = False
    #: Several processes may open the same environment at once.
    multi_process: bool = False
    #: Committed writes survive the process (and, synced, the machine).
    durable: bool = False
    #: Databases with LMDB's ``dupsort``: a key holds several values, kept sorted
    #: (the views of such keyspaces are :class:`DuplicatesReadView`/:class:`DuplicatesWriteView`).
    duplicate_values: bool = False
    #: Write transactions run one at a time: a write (or another write transaction)
    #: waits behind the open write transaction, and is refused if that transaction's
    #: owner awaits it. Without it, they run side by side and may conflict
    #: (:class:`~aiolmdb.ConflictError`).
    serial_writes: bool = True


class ReadView(Protocol):
    """A consistent view of every keyspace, for one synchronous function.

    Buffers it returns stay valid until the function returns; copy what must
    outlive it.
    """

    def get(self, keyspace: Keyspace, key: bytes) -> Buffer | None:
        """The value stored under ``key``, or None."""
        ...

    def get_many(self, keyspace: Keyspace, keys: Sequence[bytes]) -> list[Buffer | None]:
        """The values of ``keys``, in their order (None for a missing one)."""
        ...

    def range(
        self,
        keyspace: Keyspace,
        low: bytes | None = None,
        high: bytes | None = None,
        *,
        reverse: bool = False,
        after: bytes | None = None,
        limit: int | None = None,
    ) -> Iterator[tuple[bytes, Buffer]]:
        """Records with ``low <= key < high`` in key order (highest first when ``reverse``).

        ``after`` resumes a range read: only keys strictly after it (before
        it, reversed) are given. ``limit`` caps how many. Lazy: stop early
        and the rest is never read.
        """
        ...

    def count(self, keyspace: Keyspace, low: bytes | None = None, high: bytes | None = None) -> int:
        """How many keys ``low <= key < high`` holds (every key by default)."""
        ...


class WriteView(ReadView, Protocol):
    """A view inside a write transaction: reads see its own writes."""

    def put(self, keyspace: Keyspace, key: bytes, value: bytes, *, overwrite: bool = True) -> bool:
        """Store ``value`` under ``key``; False (nothing written) when it exists and not
        ``overwrite``."""
        ...

    def put_many(
        self, keyspace: Keyspace, items: Sequence[tuple[bytes, bytes]], *, overwrite: bool = True
    ) -> int:
        """Store many records; how many were written (existing keys skipped unless
        ``overwrite``)."""
        ...

    def delete(self, keyspace: Keyspace, key: bytes) -> bool:
        """Delete ``key``; whether it was stored."""
        ...

    def clear(self, keyspace: Keyspace) -> None:
        """Delete every record of the keyspace (which stays)."""
        ...

    def drop(self, keyspace: Keyspace) -> None:
        """Delete the keyspace itself, with its records; its handle is dead from now on.

        The engine sets ``keyspace.dropped`` at once, whatever becomes of the
        transaction (LMDB closes the handle): callers learn from it what was
        dropped. If the transaction is undone, opening the name again gives a
        new keyspace with the records.
        """
        ...

    def atomically(self, fn: Callable[[WriteView], R]) -> R:
        """``fn`` on a view whose writes are undone if ``fn`` raises (a nested savepoint).

        For work that may fail after writing part of itself, inside a longer
        transaction.
        """
        ...


@runtime_checkable
class DuplicatesReadView(ReadView, Protocol):
    """A view that reads every value of a key of a keyspace opened with ``duplicates``.

    Such a keyspace reads through :class:`ReadView` as one record per key, holding
    the key's first value: ``get`` gives it, ``range`` gives each key once with it
    and ``count`` counts keys. Only the engines with the ``duplicate_values``
    capability hand out views that have this (and, among their views, not those
    of optimistic transactions, which buffer writes by key: one value each).
    """

    def values_of(self, keyspace: Keyspace, key: bytes) -> list[Buffer]:
        """Every value of ``key``, in byte order (empty when it is not stored)."""
        ...


@runtime_checkable
class DuplicatesWriteView(WriteView, DuplicatesReadView, Protocol):
    """A write view of keyspaces opened with ``duplicates``.

    On such a keyspace :meth:`WriteView.delete` deletes every value of the key.
    """

    def add_value(
        self,
        keyspace: Keyspace,
        key: bytes,
        value: bytes,
        *,
        overwrite: bool = True,
        dupdata: bool = True,
    ) -> bool:
        """Add ``value`` to the values of ``key``; False (nothing written) when the key
        has values and not ``overwrite``, or, unless ``dupdata``, when it has this one
        (LMDB's ``put`` on a dupsort database, with its flags)."""
        ...

    def delete_value(self, keyspace: Keyspace, key: bytes, value: bytes) -> bool:
        """Delete ``value`` from the values of ``key``; whether it was one of them."""
        ...


class Snapshot(Protocol):
    """One consistent read view held open across awaits (``env.transaction(write=False)``)."""

    @property
    def ended(self) -> bool:
        """True once released (or being released)."""
        ...

    async def call(self, fn: Callable[[ReadView], R], *, offload: bool = False) -> R:
        """Run ``fn(view)``: on the event loop, or off it when ``offload``."""
        ...

    async def release(self) -> None:
        """End the snapshot once the call in flight (if any) finished."""
        ...


class Session(Protocol):
    """One interactive write transaction (``env.transaction()``), with savepoints.

    Savepoints are numbered; ``level`` 0 is the transaction itself. A call is
    made in a savepoint and refused with ``TransactionError`` unless that
    savepoint is still the innermost when it runs.
    """

    #: How error messages name the transaction.
    label: str

    @property
    def ended(self) -> bool:
        """True once committed, aborted or failed to begin."""
        ...

    @property
    def savepoints(self) -> list[int]:
        """Ids of the open savepoints, innermost last."""
        ...

    @property
    def depth(self) -> int:
        """How many savepoints are open."""
        ...

    async def call(self, fn: Callable[[WriteView], R], level: int = 0) -> R:
        """Run ``fn(view)`` in savepoint ``level``; return its result."""
        ...

    async def savepoint(self, parent: int = 0) -> int:
        """Open a savepoint inside ``parent``; return its id."""
        ...

    async def release(self, savepoint: int) -> None:
        """Commit savepoint ``savepoint`` (the innermost) into its parent."""
        ...

    async def rollback(self, savepoint: int) -> None:
        """Undo savepoint ``savepoint``, with every savepoint opened inside it."""
        ...

    async def commit(self) -> None:
        """Commit the transaction (refused, and everything aborted, with a savepoint open).

        From the call on, writes made outside the transaction no longer wait for it.
        """
        ...

    async def abort(self) -> None:
        """Abort the transaction; a no-op once it has ended."""
        ...


class Engine(Protocol):
    """One open store: keyspaces, auto-commit writes, sessions, snapshots.

    Everything here is called on the event loop thread, except the views,
    which an engine hands to functions wherever it runs them.
    """

    #: The engine's name, as messages and ``UnsupportedError`` name it ("lmdb", "memory").
    name: str
    capabilities: Capabilities
    #: Values up to this many bytes may be decoded on the event loop.
    inline_value_limit: int

    @property
    def closed(self) -> bool:
        """True once closing began (or, LMDB, in the child of a fork)."""
        ...

    @property
    def description(self) -> str:
        """How messages name the store: its engine and location."""
        ...

    @property
    def max_key_size(self) -> int:
        """The longest key, in bytes, a keyspace accepts."""
        ...

    @property
    def keyspace_serial(self) -> int:
        """Serial number of the last keyspace opened: a session begun before a keyspace
        was opened may not see it (``Keyspace.serial``)."""
        ...

    def check(self) -> None:
        """Raise :class:`~aiolmdb.ClosedError`, saying why, unless the engine is open."""
        ...

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
        """The keyspace ``name`` (None: the engine's default one), never waiting.

        Opening may take the engine's writer: the keyspace is then pending
        (``Keyspace.wait()``). ``duplicates``: a key holds several values
        (LMDB's dupsort; refused by an engine without the ``duplicate_values``
        capability). ``in_own_session``: the caller's task has a
        write session open; ``behind_other_tasks``: the caller will await
        the open, so it may wait behind other tasks' sessions.
        """
        ...

    def forget_keyspace(self, keyspace: Keyspace) -> None:
        """After a drop: mark the keyspace dead for every object sharing it."""
        ...

    async def database_names(self) -> list[bytes]:
        """The names of the named keyspaces stored (databases and indexes), in byte order;
        those of other processes and earlier runs too, where the engine keeps them."""
        ...

    def read_point(
        self, keyspace: Keyspace, key: bytes, decode: Callable[[bytes, Buffer | None], R]
    ) -> R:
        """The hot read: ``decode(key, value)`` of one value (None when it is missing),
        read on the event loop.

        Raises :class:`NotNowError` when the read cannot be made on the event
        loop now: the caller reads with :meth:`read`.
        """
        ...

    def read_now(self, fn: Callable[[ReadView], R]) -> R:
        """``fn(view)`` on one consistent state, on the event loop (may raise NotNowError).

        It sees every commit this process made before it. (LMDB's reads on the
        event loop share a read transaction: another process's commit is seen
        from the loop's next iteration on, or sooner.)
        """
        ...

    async def read(self, fn: Callable[[ReadView], R], *, offload: bool = False) -> R:
        """``fn(view)`` in a read of its own; off the event loop when ``offload``."""
        ...

    async def read_keys(
        self, keyspace: Keyspace, keys: Sequence[bytes], decode: Callable[[list[Buffer | None]], R]
    ) -> R:
        """``decode(values)`` of the values of ``keys`` (None for a missing one), in a read
        of its own: the point reads that :meth:`read_now` cannot make now, made the
        cheapest way the engine has (one statement, on a networked engine)."""
        ...

    def write(self, fn: Callable[[WriteView], R]) -> Awaitable[R]:
        """Queue ``fn(view)`` for the next group commit; the awaitable gives its result
        once committed. ``fn`` may run more than once."""
        ...

    async def write_alone(self, fn: Callable[[WriteView], R]) -> R:
        """Run ``fn(view)`` in a write transaction of its own, between group commits."""
        ...

    def queue_alone(
        self,
        fn: Callable[[WriteView], R],
        what: str,
        *,
        committed: Callable[[R], None] | None = None,
        failed: Callable[[BaseException], None] | None = None,
    ) -> asyncio.Future[R] | None:
        """Queue ``fn(view)`` alone, now: every write queued afterwards runs after it.

        For opening ``what`` (a collection's set-up). ``committed(result)``
        runs once it is committed, ``failed(error)`` once it failed, both
        before any write queued afterwards runs. Outside an event loop
        (set-up code before ``asyncio.run``) it runs at once, blocking, and
        this gives None.
        """
        ...

    async def offload(self, fn: Callable[..., R], *args: Any) -> R:
        """Run CPU work (a large decode) off the event loop."""
        ...

    async def begin_session(self) -> Session:
        """Begin an interactive write transaction (waits for the ones open to end)."""
        ...

    async def begin_snapshot(self) -> Snapshot:
        """Begin a read snapshot."""
        ...

    async def sync(self, force: bool = False) -> None:
        """Flush committed writes to durable storage (a no-op where they always are)."""
        ...

    async def close(self) -> None:
        """Finish the writes in flight, abort sessions, end snapshots, release everything."""
        ...
