"""``Collection[K, M]``: a typed database declared once as a class, with its indexes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import typing
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel
from typing_extensions import Self

from ..coders import Coder, PydanticCoder
from ..database import AsyncDatabase
from ..environment import AsyncEnvironment
from ..errors import (
    AiolmdbError,
    ClosedError,
    DatabaseNotFoundError,
    DecodeError,
    EncodeError,
    TransactionError,
    raise_again,
)
from ..scanning import prefix_end
from ..storage import Keyspace, ReadView, WriteView
from .index import BoundIndex, Index

__all__ = ["Collection", "IndexProgress"]

K = TypeVar("K")
M = TypeVar("M")

logger = logging.getLogger("aiolmdb.models")

#: ``progress(index_names, records_done, records_total)``, called on the event loop.
IndexProgress = Callable[[list[str], int, int], None]

#: The database where aiolmdb keeps what it knows of indexes.
META_DATABASE = "__aiolmdb__"
#: Records between two progress reports of an index build.
PROGRESS_EVERY = 10_000


class Collection(AsyncDatabase[K, M]):
    """A database whose name, key type, value type and indexes are declared on a class.

    ::

        class Users(Collection[int, User]):
            key_coder = UInt64Coder()
            # value_coder defaults to PydanticCoder(User); name to "Users"
            by_email = Index(lambda u: u.email, StringCoder(), unique=True)

        users = Users(env)
        user = await users.get(1)                    # User | None to mypy
        same = await users.by_email.get("a@x")       # User | None

    A collection is an :class:`~aiolmdb.AsyncDatabase`: it has every call
    (``get``, ``put``, ``items``, ``update``, ...) typed in ``K`` and ``M``,
    and joins ``env.transaction()`` blocks like any database. Every write
    keeps the indexes in step, in the same transaction.

    Class attributes:

    - ``key_coder`` (required): a ``Coder[K]``; use an ordered one (integers,
      strings, tuples, ...) for range and prefix queries;
    - ``value_coder``: a ``Coder[M]``; by default ``PydanticCoder(M)`` when
      ``M`` is a pydantic model;
    - ``name``: the database's name, by default the class's name;
    - any number of :class:`~aiolmdb.models.Index` attributes.

    Mistakes in the declaration raise ``TypeError`` when the class is defined.

    An index that is new (or whose declaration changed) is built when the
    collection is opened: at once when the collection is empty, otherwise by
    ``await Users.open(env)`` or ``await users.build_indexes()``. Until then
    writes and index queries raise :class:`~aiolmdb.AiolmdbError` saying so.

    ``Users(env)`` never waits for the writer thread: the collection's
    databases are opened, and its stored index declarations read, by a job
    queued on it, which every call waits for (a write made at once is
    applied after it). What that job reads (``removed_indexes``, which
    indexes are left to build) is known after ``await Users.open(env)``, or
    once a first call returned.
    """

    key_coder: Coder[K]
    value_coder: Coder[M]
    name: str | bytes | None
    _kind = "collection"
    _declared_coders: ClassVar[tuple[Coder[Any], Coder[Any]] | None] = None
    _declared_indexes: ClassVar[tuple[Index[Any], ...]] = ()
    #: How many times an index was marked stale in this process.
    _stale_marks: ClassVar[int] = 0

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._declared_indexes = tuple(
            {
                name: attr
                for klass in reversed(cls.__mro__)
                for name, attr in vars(klass).items()
                if isinstance(attr, Index)
            }.values()
        )
        value_type = _value_type_argument(cls)
        if value_type is None:
            return  # still generic (a base for other collections): nothing to check yet
        key_coder = getattr(cls, "key_coder", None)
        if not isinstance(key_coder, Coder):
            raise TypeError(
                f"Collection {cls.__qualname__} needs a key coder: add a class attribute "
                f"such as `key_coder = UInt64Coder()` (got {key_coder!r})"
            )
        value_coder = getattr(cls, "value_coder", None)
        if value_coder is None:
            if not (isinstance(value_type, type) and issubclass(value_type, BaseModel)):
                raise TypeError(
                    f"Collection {cls.__qualname__}: the value type {value_type!r} is not a "
                    "pydantic model, so add a class attribute `value_coder = ...` "
                    "(a Coder of that type, e.g. JSONCoder())"
                )
            value_coder = PydanticCoder(value_type)
        elif not isinstance(value_coder, Coder):
            raise TypeError(
                f"Collection {cls.__qualname__}: value_coder must be a Coder, got {value_coder!r}"
            )
        if "name" not in cls.__dict__:
            cls.name = cls.__name__
        if isinstance(cls.name, str) and cls.name.startswith(META_DATABASE):
            raise TypeError(
                f"Collection {cls.__qualname__}: names starting with {META_DATABASE!r} "
                f"are reserved, got {cls.name!r}"
            )
        if cls._declared_indexes and not isinstance(cls.name, str):
            raise TypeError(
                f"Collection {cls.__qualname__} has indexes, so its name must be a str, "
                f"got {cls.name!r}"
            )
        cls._declared_coders = (key_coder, value_coder)

    def __init__(self, env: AsyncEnvironment, *, create: bool = True) -> None:
        """Open (creating unless ``create=False``) the collection's databases in ``env``.

        Returns at once (see the class documentation); ``create=False``
        raises :class:`~aiolmdb.DatabaseNotFoundError` at once.
        """
        coders = type(self)._declared_coders
        if coders is None:
            raise TypeError(
                f"{type(self).__qualname__} is generic: subclass it as "
                "Collection[KeyType, ModelType] with a key_coder to use it"
            )
        super().__init__(env, type(self).name, coders[0], coders[1], create=create)
        self._indexes: list[BoundIndex[K, M, Any]] = []
        self._bound_indexes: dict[str, BoundIndex[K, M, Any]] = {}
        #: Names of indexes that must be built before writes and index queries.
        self._unbuilt: list[str] = []
        #: Indexes recorded for this collection but no longer declared (known once open).
        self.removed_indexes: list[str] = []
        self._removed_handles: list[Keyspace] = []
        self._meta: AsyncDatabase[bytes, bytes] | None = None
        # The write view (and count of stale marks) the indexes were last checked in.
        self._checked_in: tuple[WriteView, int] | None = None
        #: The writer's job reading which indexes are built (None: read already, or none to read).
        self._setup: asyncio.Future[Any] | None = None
        #: Why the writer could not read the indexes (for the writes queued behind it).
        self._setup_error: BaseException | None = None
        if isinstance(self.name, str):  # a collection with indexes has a str name
            try:
                self._open_indexes(self.name, create)
            except TransactionError as exc:  # it names a database of the collection's own
                raise TransactionError(f"collection {self._label}: {exc}") from exc
        self._pending = self._pending or self._setup is not None

    @classmethod
    async def open(
        cls, env: AsyncEnvironment, *, create: bool = True, progress: IndexProgress | None = None
    ) -> Self:
        """Open the collection and build any index that needs it before returning.

        A build cannot run inside a write ``env.transaction()``: open collections before.
        """
        collection = cls(env, create=create)
        await collection.build_indexes(progress=progress)
        return collection

    # -- indexes ---------------------------------------------------------

    def _meta_key(self, index_name: str) -> bytes:
        return f"index/{self._index_base}/{index_name}".encode()

    async def _opening(self) -> None:
        await super()._opening()
        if self._setup is not None:
            await asyncio.shield(self._setup)  # raises what the opening raised

    def _open_indexes(self, name: str, create: bool) -> None:
        """Open the databases of the indexes, and have the writer read which are built.

        Nothing here waits for the writer: the opens and the reading are
        queued on it (calls wait for them), except inside this task's write
        transaction, where every database is open already (else the open is
        refused) and the signatures are read at once.
        """
        self._index_base = name
        declared = type(self)._declared_indexes
        try:
            self._meta = self.env.open_db(META_DATABASE, create=bool(declared))
        except DatabaseNotFoundError:
            return  # no collection of this environment ever had an index
        for index in declared:
            opened = self._open_index_db(index.name, create)
            bound: BoundIndex[K, M, Any] = BoundIndex(index, self, opened)
            self._indexes.append(bound)
            self._bound_indexes[index.name] = bound
        if self._in_write_transaction():
            # The writer serves this transaction: read what is committed, build nothing.
            self.env.engine.read_now(self._read_indexes)
            self._open_removed()
            return

        def read_and_record(view: WriteView) -> list[str]:
            if self._read_indexes(view) != 0 or not self._unbuilt:
                return []
            # Nothing to index yet: record the declarations now, cheaply.
            self._build(view, self._unbuilt, None)
            return list(self._unbuilt)

        def recorded(names: list[str]) -> None:
            # Committed: the writes queued behind trust them.
            self._unbuilt = [name for name in self._unbuilt if name not in names]

        def failed(exc: BaseException) -> None:
            self._setup_error = exc  # for the writes queued behind

        # Queued after the opens above (so it runs once they are done), and
        # before every write made on the collection.
        setup = self.env.engine.queue_alone(
            read_and_record, f"collection {self._label}", committed=recorded, failed=failed
        )
        if setup is None:  # it ran at once, outside an event loop
            self._open_removed()
            return
        self._setup = setup
        setup.add_done_callback(self._setup_done)

    def _setup_done(self, setup: asyncio.Future[Any]) -> None:
        """On the event loop, once the writer read the indexes (before any call goes on)."""
        if setup.cancelled() or setup.exception() is not None:
            return  # every call raises it
        with contextlib.suppress(ClosedError):  # closed meanwhile: nothing is left to drop
            self._open_removed()

    def _take_handle(self) -> None:
        super()._take_handle()
        if self._setup_error is not None:
            raise_again(self._setup_error)

    def _read_indexes(self, view: ReadView) -> int:
        """Read which indexes are built, and which are recorded but no longer declared.

        Adopts the handles of the collection's databases first (raising,
        naming the collection, what their opens raised). Returns how many
        records the collection holds.
        """
        assert self._meta is not None  # opened with the declared indexes
        try:
            self._take_handle()
            self._meta._take_handle()
            for index in self._indexes:
                index._keyspace.check()
        except Exception as exc:
            # The same error, naming the collection (the engine's own type kept).
            raise type(exc)(f"collection {self._label}: {exc}") from exc
        prefix = f"index/{self._index_base}/".encode()
        stored: dict[str, Any] = {}
        for key, value in view.range(self._meta._keyspace, prefix, prefix_end(prefix)):
            name = key[len(prefix) :].decode()
            if "/" not in name:  # else it belongs to a collection named name/...
                stored[name] = json.loads(bytes(value))
        records = view.count(self._keyspace)
        declared = type(self)._declared_indexes
        declared_signatures = {index.name: index.signature() for index in declared}
        self._unbuilt = [
            name for name, sig in declared_signatures.items() if stored.get(name) != sig
        ]
        self.removed_indexes = sorted(set(stored) - set(declared_signatures))
        if self.removed_indexes:
            logger.warning(
                "collection %s: indexes %s are no longer declared; "
                "drop them with drop_removed_indexes()",
                self._label,
                self.removed_indexes,
            )
        self._plain_writes = not (self._indexes or self.removed_indexes)
        return records

    def _open_removed(self) -> None:
        """Open the databases of the removed indexes (for drop_removed_indexes() and drop())."""
        self._removed_handles = [self._open_index_db(name, True) for name in self.removed_indexes]

    def _open_index_db(self, index_name: str, create: bool) -> Keyspace:
        # Under the reserved prefix: no user database can be named like it.
        name = f"{META_DATABASE}/{self._meta_key(index_name).decode()}"
        return self.env._open_keyspace(name, f"{self._label}.{index_name}", create)

    def _require_indexes_built(self) -> None:
        if self._unbuilt:
            raise AiolmdbError(
                f"collection {self._label}: indexes {self._unbuilt} are not built yet; "
                f"await {type(self).__name__}.open(env) or await collection.build_indexes()"
            )

    def _require_indexes_current(self, view: WriteView) -> None:
        """Raise unless every index is built and recorded as built in ``view``.

        Another declaration of the collection (another version of the code,
        in this process or another) may have written records without an
        index since this one was opened: it then recorded the index as stale.
        """
        self._require_indexes_built()
        for index in self._indexes:  # a dead handle's slot may serve another database
            index._require_open()
        last = self._checked_in
        if last is not None and last[0] is view and last[1] == Collection._stale_marks:
            return  # checked in this transaction, and nothing was marked stale since
        for index in self._indexes:
            index._require_current(view)
        self._checked_in = (view, Collection._stale_marks)

    async def build_indexes(self, *, progress: IndexProgress | None = None) -> None:
        """Build the indexes that are new or changed (no-op when there are none).

        All of it happens in one write transaction: a record that breaks a
        unique index raises :class:`~aiolmdb.UniqueViolationError` and nothing
        is built. ``progress(names, done, total)`` is called on the event loop
        every 10 000 records; progress is also logged to ``aiolmdb.models``.
        A build needs a write transaction of its own: inside a write
        ``env.transaction()`` it raises :class:`~aiolmdb.TransactionError` (when
        there is one to do); inside a read snapshot it runs.
        Cancelling the call does not stop the build: it completes (or fails,
        changing nothing) without its caller.
        """
        if self._pending:
            await self._until_open(None)
        in_transaction = self._in_write_transaction()
        names = await self._indexes_to_build()
        if not names:
            return
        if in_transaction:
            raise self._needs_the_writer_alone(
                f"build_indexes() (which {type(self).__name__}.open(env) calls, here to "
                f"build {names})"
            )
        await self._build_indexes(names, progress)

    async def _build_indexes(self, names: list[str], progress: IndexProgress | None) -> None:
        """Build the indexes ``names`` in one write transaction, then trust them.

        A build that fails changes nothing: the indexes that were current stay so.
        A cancelled one goes on without its caller.
        """
        for name in names:
            if self._bound_indexes[name]._keyspace.dropped:
                self._bound_indexes[name]._reopen()
        loop = asyncio.get_running_loop()

        def report(done: int, total: int) -> None:
            logger.info("collection %s: indexing %s: %d/%d", self._label, names, done, total)
            if progress is not None:
                loop.call_soon_threadsafe(progress, names, done, total)

        async def build_then_trust() -> None:
            await self.env.engine.write_alone(lambda view: self._build(view, names, report))
            self._unbuilt = [name for name in self._unbuilt if name not in names]

        # A cancelled caller does not stop a build the writer may already run:
        # it goes on without the caller, and what it built is trusted.
        await asyncio.shield(asyncio.ensure_future(build_then_trust()))

    async def _indexes_to_build(self) -> list[str]:
        """The indexes not built yet, or recorded stale since (by another declaration)."""
        if self._meta is None:
            return []
        meta = self._meta._keyspace

        def to_build(view: ReadView) -> list[str]:
            return [
                index.index.name
                for index in self._indexes
                if index.index.name in self._unbuilt or not index._is_current(view, meta)
            ]

        return await self.env._read(to_build, None)

    async def rebuild_indexes(self, *, progress: IndexProgress | None = None) -> None:
        """Rebuild every index of the collection from its records (not in a write transaction)."""
        if self._pending:
            await self._until_open(None)
        in_transaction = self._in_write_transaction()
        if not self._indexes:
            return
        if in_transaction:
            raise self._needs_the_writer_alone("rebuild_indexes()")
        await self._build_indexes([index.index.name for index in self._indexes], progress)

    async def drop_removed_indexes(self) -> list[str]:
        """Delete the stored entries of indexes no longer declared; returns their names.

        Their databases and declarations go in one transaction of its own (so
        not inside a write ``env.transaction()``: that raises
        :class:`~aiolmdb.TransactionError`).
        """
        if self._pending:
            await self._until_open(None)
        removed = list(self.removed_indexes)
        if removed:
            if self._in_write_transaction():
                raise self._needs_the_writer_alone("drop_removed_indexes()")
            await self._write_alone_then_forget(self._delete_removed, self._forget_removed)
        return removed

    def _in_write_transaction(self) -> bool:
        """Whether this task's calls join a write transaction (checks the collection is usable)."""
        ctx = self._resolve(None)[1]
        return ctx is not None and ctx.sees_own_writes

    def _needs_the_writer_alone(self, call: str) -> TransactionError:
        # The call's write transaction would queue behind the caller's own,
        # which cannot end while the caller waits: a deadlock, refused instead.
        return TransactionError(
            f"collection {self._label}: {call} cannot run inside a write transaction: it needs "
            "a write transaction of its own, and the writer serves this one until it ends; "
            "call it before or after the `async with env.transaction()` block"
        )

    def _delete_removed(self, view: WriteView) -> None:
        if self._meta is None:
            return  # nothing was ever recorded
        for opened in self._removed_handles:
            if not opened.dropped:  # else an earlier attempt deleted it
                opened.check()  # an open that failed has nothing to drop
                view.drop(opened)
        for name in self.removed_indexes:
            view.delete(self._meta._keyspace, self._meta_key(name))

    def _forget_removed(self) -> None:
        """After :meth:`_delete_removed` ran: forget the indexes it dropped."""
        kept = [
            (name, opened)
            for name, opened in zip(self.removed_indexes, self._removed_handles, strict=True)
            if not opened.dropped
        ]
        for opened in self._removed_handles:
            if opened.dropped:
                self.env.engine.forget_keyspace(opened)
        self.removed_indexes = [name for name, _ in kept]
        self._removed_handles = [opened for _, opened in kept]
        self._plain_writes = not (self._indexes or self.removed_indexes)

    def _mark_removed_stale(self, view: WriteView) -> None:
        """In a write's transaction: the removed indexes missed it, so if they are
        declared again they are rebuilt rather than trusted."""
        if not self.removed_indexes:
            return
        assert self._meta is not None  # removed indexes were read from it
        meta = self._meta._keyspace
        for name in self.removed_indexes:
            key = self._meta_key(name)
            stored = view.get(meta, key)
            if stored is None:
                continue
            signature = json.loads(bytes(stored))
            if not signature.get("stale"):
                signature["stale"] = True
                view.put(meta, key, json.dumps(signature).encode())
                Collection._stale_marks += 1

    def _build(
        self, view: WriteView, names: list[str], report: Callable[[int, int], None] | None
    ) -> None:
        assert self._meta is not None  # opened with the declared indexes
        meta = self._meta._keyspace
        chosen = [self._bound_indexes[name] for name in names]
        self._require_live()
        for index in chosen:
            index._require_open()
            index._clear(view)
        total = view.count(self._keyspace)
        done = 0
        for raw_key, raw_value in view.range(self._keyspace):
            try:
                record = self.value_coder.deserialize(raw_value)
            except Exception as exc:
                raise DecodeError(
                    f"collection {self._label}: cannot build indexes {names}: the value "
                    f"of key {self._show_raw_key(raw_key)} does not decode with "
                    f"{self.value_coder!r} (delete or overwrite that record, then build "
                    f"again): {exc}"
                ) from exc
            for index in chosen:
                keys = index._entry_keys(record, raw_key)
                index._check_unique(view, raw_key, keys)
                index._update_entries(view, raw_key, set(), keys)
            done += 1
            if report is not None and done % PROGRESS_EVERY == 0:
                report(done, total)
        for index in chosen:
            view.put(meta, index._meta_key, index._signature)
        if report is not None:
            report(done, total)

    # -- drop() empties or deletes the indexes with the records ----------

    def _empty(self, view: WriteView) -> None:
        for index in self._indexes:
            index._require_open()
        super()._empty(view)
        for index in self._indexes:
            index._clear(view)
        self._mark_removed_stale(view)

    def _delete(self, view: WriteView) -> None:
        super()._delete(view)
        if self._meta is None:
            return  # no index, declared or removed
        for index in self._indexes:
            index._drop_storage(view)
            view.delete(self._meta._keyspace, index._meta_key)
        self._delete_removed(view)

    def _forget_deleted(self) -> None:
        super()._forget_deleted()
        for index in self._indexes:
            self.env.engine.forget_keyspace(index._keyspace)
        self._forget_removed()

    # -- record writes keep the indexes in step --------------------------

    def _store(
        self, view: WriteView, raw_key: bytes, raw_value: bytes, value: M, overwrite: bool
    ) -> bool:
        if not self._indexes:
            self._mark_removed_stale(view)
            return super()._store(view, raw_key, raw_value, value, overwrite)
        self._require_indexes_current(view)
        old_buf = view.get(self._keyspace, raw_key)
        if old_buf is not None and not overwrite:
            return False
        new = self._read_back(raw_key, raw_value)
        olds = self._stored_entries(view, raw_key, old_buf)
        # Every check before any write: a failure leaves the transaction as it was.
        changes = []
        for index, before in zip(self._indexes, olds, strict=True):
            after = index._entry_keys(new, raw_key)
            index._check_unique(view, raw_key, after - before)
            changes.append((index, before, after))
        self._mark_removed_stale(view)
        for index, before, after in changes:
            index._update_entries(view, raw_key, before, after)
        return view.put(self._keyspace, raw_key, raw_value)

    def _stored_entries(
        self, view: ReadView, raw_key: bytes, old_buf: bytes | memoryview | None
    ) -> list[set[bytes]]:
        """The entries each index holds for the record stored under ``raw_key``."""
        if old_buf is None:
            return [set() for _ in self._indexes]
        try:
            old = self.value_coder.deserialize(old_buf)
        except Exception as exc:
            # It no longer decodes (its model was tightened since, say): its
            # entries cannot be computed, so find them by where they point.
            logger.warning(
                "collection %s: the value of key %s does not decode with %r (%s); "
                "finding its index entries by scanning the indexes",
                self._label,
                self._show_raw_key(raw_key),
                self.value_coder,
                exc,
            )
            return [index._entries_pointing_at(view, raw_key) for index in self._indexes]
        return [index._entry_keys(old, raw_key) for index in self._indexes]

    def _read_back(self, raw_key: bytes, raw_value: bytes) -> M:
        """The record as it will be read: what its index entries are computed from.

        The object passed to a write may differ (fields the coder leaves out,
        a subclass stored as its model).
        """
        try:
            return self.value_coder.deserialize(raw_value)
        except Exception as exc:
            raise EncodeError(
                f"collection {self._label}: the value for key {self._show_raw_key(raw_key)} "
                f"would not read back with {self.value_coder!r}: {exc}"
            ) from exc

    def _remove(self, view: WriteView, raw_key: bytes) -> bool:
        if not self._indexes:
            self._mark_removed_stale(view)
            return super()._remove(view, raw_key)
        self._require_indexes_current(view)
        old_buf = view.get(self._keyspace, raw_key)
        if old_buf is None:
            return False
        olds = self._stored_entries(view, raw_key, old_buf)
        self._mark_removed_stale(view)
        for index, before in zip(self._indexes, olds, strict=True):
            index._update_entries(view, raw_key, before, set())
        return view.delete(self._keyspace, raw_key)


def _value_type_argument(cls: type) -> Any | None:
    """The concrete ``M`` of ``Collection[K, M]`` that ``cls`` declares, if any.

    Follows generic bases: with ``class Keyed(Collection[int, M])`` and
    ``class Users(Keyed[User])``, ``M`` of ``Users`` is ``User``.
    """
    return _resolve_value_type(cls, {})


def _resolve_value_type(cls: type, bound: dict[Any, Any]) -> Any | None:
    for base in cls.__dict__.get("__orig_bases__", cls.__bases__):
        origin = typing.get_origin(base) or base
        if not (isinstance(origin, type) and issubclass(origin, Collection)):
            continue
        args = [bound.get(arg, arg) for arg in typing.get_args(base)]
        if origin is Collection:
            value = args[1] if len(args) == 2 else None
            return None if value is None or isinstance(value, TypeVar) else value
        parameters = getattr(origin, "__parameters__", ())
        return _resolve_value_type(origin, dict(zip(parameters, args, strict=False)))
    return None
