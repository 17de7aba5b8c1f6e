"""``Collection[K, M]``: a typed database declared once as a class, with its indexes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import typing
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel
from typing_extensions import Self

from ..coders import Coder, PydanticCoder
from ..database import INTERNAL_DATABASE, AsyncDatabase
from ..environment import AsyncEnvironment
from ..errors import (
    ClosedError,
    DatabaseNotFoundError,
    TransactionError,
)
from ..storage import Keyspace, NotNowError, ReadView, WriteView
from .build import IndexBuild, IndexProgress, IndexRepair
from .catalog import IndexCatalog, index_database_name
from .index import BoundIndex, Index
from .upkeep import IndexedRecords, IndexUpkeep

__all__ = ["Collection", "IndexProgress"]

K = TypeVar("K")
M = TypeVar("M")

logger = logging.getLogger(__name__)


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

    A collection is an :class:`AsyncDatabase`: it has every call
    (``get``, ``put``, ``items``, ``update``, ...) typed in ``K`` and ``M``,
    and joins ``env.transaction()`` blocks like any database. Every write
    keeps the indexes in step, in the same transaction.

    Class attributes:

    - ``key_coder`` (required): a ``Coder[K]``; use an ordered one (integers,
      strings, tuples, ...) for range and prefix queries;
    - ``value_coder``: a ``Coder[M]``; by default ``PydanticCoder(M)`` when
      ``M`` is a pydantic model;
    - ``name``: the database's name, by default the class's name;
    - any number of :class:`Index` attributes.

    Mistakes in the declaration raise ``TypeError`` when the class is defined.

    An index that is new (or whose declaration changed) is built when the
    collection is opened: at once when the collection is empty, otherwise by
    ``await Users.open(env)`` or ``await users.build_indexes()``. Until then
    writes and index queries raise :class:`IndexNotReadyError` saying so.

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
    _declared_coders: ClassVar[tuple[Coder[Any], Coder[Any]] | None] = None
    _declared_indexes: ClassVar[tuple[Index[Any], ...]] = ()

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
        key_coder = _declared(cls, "key_coder")
        if not isinstance(key_coder, Coder):
            raise TypeError(
                f"Collection {cls.__qualname__} needs a key coder: add a class attribute "
                f"such as `key_coder = UInt64Coder()` (got {key_coder!r})"
            )
        value_coder = _declared(cls, "value_coder")
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
        if isinstance(cls.name, str) and cls.name.startswith(INTERNAL_DATABASE):
            raise TypeError(
                f"Collection {cls.__qualname__}: names starting with {INTERNAL_DATABASE!r} "
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
        raises :class:`DatabaseNotFoundError` at once.
        """
        coders = type(self)._declared_coders
        if coders is None:
            raise TypeError(
                f"{type(self).__qualname__} is generic: subclass it as "
                "Collection[KeyType, ModelType] with a key_coder to use it"
            )
        self._create = create
        self._bound_indexes: dict[str, BoundIndex[K, M, Any]] = {}
        # Set by the records factory, called while the database opens.
        self._indexed: IndexedRecords[K, M] | None = None
        self._internal: AsyncDatabase[bytes, bytes] | None = None
        # An index build under way (one at a time).
        self._building: asyncio.Future[None] | None = None
        super().__init__(
            env,
            type(self).name,
            coders[0],
            coders[1],
            create=create,
            records=self._indexed_records,
            kind="collection",
        )
        records = self._records_of()
        for upkeep in records.upkeeps:
            self._bound_indexes[upkeep.index.name] = BoundIndex(upkeep.index, self, upkeep, records)
        if records.catalog is not None:
            try:
                self._set_up(records)
            except TransactionError as exc:  # it names a database of the collection's own
                raise TransactionError(f"collection {self.label}: {exc}") from exc

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

    @property
    def removed_indexes(self) -> list[str]:
        """Indexes recorded for this collection but no longer declared (known once open)."""
        return list(self._records_of().removed)

    def bound_index(self, name: str) -> BoundIndex[K, M, Any]:
        """The declared index ``name``, bound to this collection (what ``self.<name>`` gives)."""
        return self._bound_indexes[name]

    def bound_indexes(self) -> list[BoundIndex[K, M, Any]]:
        """Every declared index (inherited ones too), bound to this collection, in the
        order of declaration."""
        return list(self._bound_indexes.values())

    # -- opening -------------------------------------------------------------

    def _records_of(self) -> IndexedRecords[K, M]:
        assert self._indexed is not None  # made while the database opened
        return self._indexed

    def _indexed_records(self, keyspace: Keyspace) -> IndexedRecords[K, M]:
        """The collection's record logic: opens the databases of its indexes (never waits)."""
        declared = type(self)._declared_indexes
        catalog = None
        if isinstance(self.name, str):  # a collection with indexes has a str name
            try:
                self._internal = self.env.open_db(INTERNAL_DATABASE, create=bool(declared))
            except DatabaseNotFoundError:
                pass  # no collection of this environment ever had an index
            except TransactionError as exc:
                raise TransactionError(f"collection {self.label}: {exc}") from exc
            else:
                catalog = IndexCatalog(self._internal, self.name)
        records = IndexedRecords(self.env.engine, keyspace, self.codec, self.label, catalog)
        if catalog is not None:
            for index in declared:
                try:
                    opened = self._open_index_keyspace(index.name, self._create)
                except TransactionError as exc:
                    raise TransactionError(f"collection {self.label}: {exc}") from exc
                records.upkeeps.append(self._upkeep(index, opened))
        self._indexed = records
        return records

    def _upkeep(self, index: Index[Any], keyspace: Keyspace) -> IndexUpkeep[M]:
        assert isinstance(self.name, str)  # a collection with indexes has a str name
        return IndexUpkeep(
            index,
            keyspace,
            self.codec,
            self.name,
            index.signature_bytes(),
            self.env.max_key_size(),
        )

    def _open_index_keyspace(self, index_name: str, create: bool) -> Keyspace:
        assert isinstance(self.name, str)
        name = index_database_name(self.name, index_name)
        return self.env.open_keyspace(name, f"{self.label}.{index_name}", create)

    def _set_up(self, records: IndexedRecords[K, M]) -> None:
        """Have the engine read which indexes are built (every call waits for it).

        Nothing here waits: the reading is queued (after the opens, and before
        every write made on the collection), except inside this task's write
        transaction, where every database is open already (else the open is
        refused) and the catalog is read at once.
        """
        if self.access.in_write_transaction():
            # The engine serves this transaction: read what is committed, build nothing.
            try:
                self.env.engine.read_now(self._read_catalog)
            except NotNowError:  # the engine reads it, and every call waits for that
                self._wait_for_setup(records, asyncio.ensure_future(self._read_catalog_later()))
                return
            self._open_removed()
            return

        def read_and_record(view: WriteView) -> list[str]:
            if self._read_catalog(view) != 0 or not records.unbuilt:
                return []
            # Nothing to index yet: record the declarations now, cheaply.
            for upkeep in records.upkeeps:
                if upkeep.index.name in records.unbuilt:
                    view.clear(upkeep.keyspace)
                    self._catalog().record_built(view, upkeep.index.name, upkeep.signature)
            return list(records.unbuilt)

        def recorded(names: list[str]) -> None:
            # Committed: the writes queued behind trust them.
            records.unbuilt = [name for name in records.unbuilt if name not in names]

        def failed(exc: BaseException) -> None:
            records.setup_error = exc  # for the writes queued behind

        setup = self.env.engine.queue_alone(
            read_and_record, f"collection {self.label}", committed=recorded, failed=failed
        )
        if setup is None:  # it ran at once, outside an event loop
            self._open_removed()
            return
        self._wait_for_setup(records, setup)

    def _wait_for_setup(self, records: IndexedRecords[K, M], setup: asyncio.Future[Any]) -> None:
        """Every call of the collection waits for ``setup`` (the catalog's reading)."""
        records.setup = setup
        self.access.pending = True
        setup.add_done_callback(self._setup_done)

    async def _read_catalog_later(self) -> None:
        records = self._records_of()
        try:
            await self.env.engine.read(self._read_catalog)
        except Exception as exc:
            records.setup_error = exc
            raise

    def _setup_done(self, setup: asyncio.Future[Any]) -> None:
        """On the event loop, once the catalog was read (before any call goes on)."""
        if setup.cancelled() or setup.exception() is not None:
            return  # every call raises it
        with contextlib.suppress(ClosedError):  # closed meanwhile: nothing is left to drop
            self._open_removed()

    def _catalog(self) -> IndexCatalog:
        catalog = self._records_of().catalog
        assert catalog is not None  # opened with the declared indexes
        return catalog

    def _read_catalog(self, view: ReadView) -> int:
        """Read which indexes are built, and which are recorded but no longer declared.

        Checks first that the collection's databases opened (raising, naming
        the collection, what their opens raised). Returns how many records
        the collection holds.
        """
        records = self._records_of()
        declared_none = not type(self)._declared_indexes
        try:
            self.access.keyspace.check()
            try:
                self._catalog().keyspace.check()
            except DatabaseNotFoundError:
                if not declared_none:
                    raise
                # Opened only to look for removed indexes (where the engine cannot tell at
                # once whether it exists): no collection ever had an index here.
                records.catalog = None
                return 0
            for upkeep in records.upkeeps:
                upkeep.keyspace.check()
        except Exception as exc:
            # The same error, naming the collection (the engine's own type kept).
            raise type(exc)(f"collection {self.label}: {exc}") from exc
        stored = self._catalog().stored(view)
        declared = {index.name: index.signature() for index in type(self)._declared_indexes}
        records.unbuilt = [name for name, sig in declared.items() if stored.get(name) != sig]
        records.removed = sorted(set(stored) - set(declared))
        if records.removed:
            logger.warning(
                "collection %s: indexes %s are no longer declared; "
                "drop them with drop_removed_indexes()",
                self.label,
                records.removed,
            )
        return view.count(self.access.keyspace)

    def _open_removed(self) -> None:
        """Open the databases of the removed indexes (for drop_removed_indexes() and drop())."""
        records = self._records_of()
        records.removed_keyspaces = [
            self._open_index_keyspace(name, True) for name in records.removed
        ]

    # -- building ------------------------------------------------------------

    async def build_indexes(self, *, progress: IndexProgress | None = None) -> None:
        """Build the indexes that are new or changed (no-op when there are none).

        The build runs in write transactions of 1 000 records each, so it
        never holds the writer long: writes made meanwhile go on, and keep
        the records already indexed in step. Its progress is recorded with
        each transaction: a build cut short (a crash, a failure) resumes
        where it stopped. Until it is done, index queries raise
        :class:`IndexNotReadyError` saying the index is not built. A record that
        breaks a unique index raises :class:`UniqueViolationError` and the
        index stays unbuilt. ``progress(names, done, total)`` is called on
        the event loop every 10 000 records; progress is also logged.

        A build needs write transactions of its own: inside a write
        ``env.transaction()`` it raises :class:`TransactionError` (when there
        is one to do); inside a read snapshot it runs. Cancelling the call
        does not stop the build: it completes (or fails) without its caller.
        """
        if self.access.pending:
            await self.access.until_open(None)
        in_transaction = self.access.in_write_transaction()
        while True:
            names = await self._indexes_to_build()
            if not names:
                return
            if in_transaction:
                raise self._needs_the_writer_alone(
                    f"build_indexes() (which {type(self).__name__}.open(env) calls, here to "
                    f"build {names})"
                )
            if self._building is None:
                break
            # One build at a time: once the one under way is done, what is left.
            await asyncio.wait([self._building])
        await self._build_indexes(names, progress)

    async def rebuild_indexes(self, *, progress: IndexProgress | None = None) -> None:
        """Rebuild every index of the collection from its records, in place (not in a write
        transaction).

        The entries every record should have are written, then every entry no
        record has is deleted, 1 000 at a time: the indexes stay usable
        throughout, and a rebuild that fails (a record that does not decode,
        or breaks a unique index) leaves them as they were, less any stray
        entry removed. Cancelling the call does not stop it.
        """
        if self.access.pending:
            await self.access.until_open(None)
        in_transaction = self.access.in_write_transaction()
        records = self._records_of()
        if not records.upkeeps:
            return
        if in_transaction:
            raise self._needs_the_writer_alone("rebuild_indexes()")
        while self._building is not None:
            await asyncio.wait([self._building])
        await asyncio.shield(
            self._start_building(IndexRepair(self, records, records.upkeeps, progress))
        )

    async def _indexes_to_build(self) -> list[str]:
        """The indexes not built yet, or recorded stale since (by another declaration)."""
        records = self._records_of()
        if records.catalog is None:
            return []
        catalog = records.catalog

        def to_build(view: ReadView) -> list[str]:
            return [
                upkeep.index.name
                for upkeep in records.upkeeps
                if upkeep.index.name in records.unbuilt
                or not catalog.is_current(view, upkeep.index.name, upkeep.signature)
            ]

        return await self.access.read(to_build, None)

    async def _build_indexes(self, names: list[str], progress: IndexProgress | None) -> None:
        """Build the indexes ``names`` in bounded chunks, then trust them.

        A cancelled build goes on without its caller.
        """
        records = self._records_of()
        for upkeep in records.upkeeps:
            if upkeep.index.name in names and upkeep.keyspace.dropped:
                # Deleted by another declaration: opened afresh, to be built again.
                upkeep.keyspace = self._open_index_keyspace(upkeep.index.name, True)
        chosen = [upkeep for upkeep in records.upkeeps if upkeep.index.name in names]
        await asyncio.shield(self._start_building(IndexBuild(self, records, chosen, progress)))

    def _start_building(self, work: IndexBuild[K, M] | IndexRepair[K, M]) -> asyncio.Future[None]:
        """Run ``work``, the one build of the collection under way, to its end."""
        running = asyncio.ensure_future(work.run())
        self._building = running

        def done(finished: asyncio.Future[None]) -> None:
            if self._building is finished:
                self._building = None
            if not finished.cancelled():
                finished.exception()  # told to the caller, if it still waits

        running.add_done_callback(done)
        return running

    # -- removed indexes ------------------------------------------------------

    async def drop_removed_indexes(self) -> list[str]:
        """Delete the stored entries of indexes no longer declared; returns their names.

        Their databases and declarations go in one transaction of its own (so
        not inside a write ``env.transaction()``: that raises
        :class:`TransactionError`).
        """
        if self.access.pending:
            await self.access.until_open(None)
        records = self._records_of()
        removed = list(records.removed)
        if removed:
            if self.access.in_write_transaction():
                raise self._needs_the_writer_alone("drop_removed_indexes()")
            await self.access.write_alone_then_forget(
                records.delete_removed, records.forget_removed
            )
        return removed

    def _needs_the_writer_alone(self, call: str) -> TransactionError:
        # The call's write transaction would queue behind the caller's own,
        # which cannot end while the caller waits: a deadlock, refused instead.
        return TransactionError(
            f"collection {self.label}: {call} cannot run inside a write transaction: it needs "
            "a write transaction of its own, and the writer serves this one until it ends; "
            "call it before or after the `async with env.transaction()` block"
        )


def _declared(cls: type, attribute: str) -> Any:
    """The class attribute ``attribute`` a collection class declares (None: not declared;
    the database's own accessor does not count)."""
    value = getattr(cls, attribute, None)
    return None if isinstance(value, property) else value


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
