"""``AsyncDatabase[K, V]``: one database (a keyspace of the engine) with a key coder and a
value coder."""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast, overload

from .access import TOO_LARGE, DatabaseAccess, yield_due
from .codec import Codec, show
from .coders import Coder, IdentityCoder
from .errors import KeyExistsError, KeyNotFoundError, TransactionError
from .query import Part, RangeBounds, Ranged
from .records import DuplicateRecords, PlainRecords, RecordLogic
from .scanning import Scan, as_stored, key_only
from .storage import Buffer, Keyspace, NotNowError, ReadView, WriteView

if TYPE_CHECKING:
    from .environment import AsyncEnvironment
    from .storage.lmdb import LmdbReadView, RawCursor, RawTransaction
    from .transaction import Transaction

__all__ = [
    "INTERNAL_DATABASE",
    "AsyncDatabase",
    "DatabaseTxn",
    "RecordsFactory",
    "as_ints",
    "database_label",
]

K = TypeVar("K")
V = TypeVar("V")
D = TypeVar("D")
R = TypeVar("R")

#: The database where the layers above keep what they know of themselves (index
#: declarations): names starting with it are reserved.
INTERNAL_DATABASE = "__aiolmdb__"
#: get_multi calls with more keys than this read off the event loop.
INLINE_MULTI_LIMIT = 32


def database_label(name: str | bytes | None) -> str:
    """How messages name the database ``name`` (None: the unnamed default one)."""
    return "<default>" if name is None else repr(name)


_MISSING: Any = object()

#: Makes the record logic of a database, given its keyspace (see :mod:`aiolmdb.records`).
RecordsFactory = Callable[[Keyspace], RecordLogic[V]]


class DatabaseRanges(Generic[K, V]):
    """The range queries of a database: over its own keyspace, bounded by its keys."""

    def __init__(self, access: DatabaseAccess) -> None:
        self._access = access
        self._codec: Codec[K, V] = access.codec

    @property
    def label(self) -> str:
        return f"{self._access.kind} {self._access.label}"

    def key_range(
        self, start: K | None, stop: K | None, prefix: object
    ) -> tuple[bytes | None, bytes | None]:
        return self._codec.key_range(start, stop, prefix)

    def resume_range(self, after: K) -> tuple[bytes, bytes | None]:
        # The one key of after (checked as a bound is: an ordered coder), and the
        # smallest key above it.
        at, _ = self._codec.key_range(after, None, None)
        assert at is not None  # a bound was given
        return at, at + b"\x00"

    def scan(
        self,
        low: bytes | None,
        high: bytes | None,
        *,
        reverse: bool,
        limit: int | None,
        txn: Transaction | None,
        part: Part,
    ) -> AsyncIterator[Any]:
        access, codec = self._access, self._codec
        fetch, decode = {
            Part.ITEMS: (as_stored, codec.decode_item),
            Part.KEYS: (key_only, codec.decode_key_of),
            Part.VALUES: (as_stored, codec.decode_value),
        }[part]

        def records(ctx: Transaction | None) -> AsyncIterator[Any]:
            spec = Scan(access.keyspace, low, high, reverse, limit, lambda view: fetch, decode)
            return access.stream(spec, ctx)

        return access.when_open(txn, records)

    async def count(self, low: bytes | None, high: bytes | None, txn: Transaction | None) -> int:
        access = self._access
        if access.pending:
            await access.until_open(txn)
        ctx = access.resolve(txn)
        keyspace = access.keyspace
        # A count over a range walks it: off the loop; the whole keyspace is one lookup,
        # except in a dupsort database, whose keys are walked.
        return await access.read(
            lambda view: view.count(keyspace, low, high),
            ctx,
            offload=(low, high) != (None, None) or keyspace.duplicates,
        )


class AsyncDatabase(Ranged[K, K, K, V], Generic[K, V]):
    """One database, read and written through coroutines.

    Keys are encoded with :attr:`key_coder` and values with
    :attr:`value_coder`; both may be reassigned. Outside an explicit
    transaction every call is its own atomic transaction: reads run on the
    event loop thread when they are small (no thread hop), writes are queued
    to the engine's writer (on LMDB, its writer thread) and group-committed.
    A read sees every commit this process made before it; on LMDB, reads on
    the event loop share a read transaction, so another process's commit is
    seen from the loop's next iteration on, or within 500 µs
    (``aiolmdb.storage.lmdb.reused_read``). Inside ``env.transaction()``
    calls join that transaction.

    A database opened with ``dupsort=True`` (LMDB) keeps several values per
    key, sorted by their encodings: :meth:`put` adds one, :meth:`delete` with
    a value removes one, :meth:`get_all` reads them all, :meth:`pop` takes
    the first and :meth:`replace` replaces them all. Every other read sees
    each key once, with its first value: :meth:`get`, :meth:`get_multi`,
    ``items()``/``keys()``/``values()`` and :meth:`count` (which counts
    keys). Its writes run in ``env.transaction()`` but not in an optimistic
    transaction (which buffers one value per key): there they raise
    :class:`~aiolmdb.UnsupportedError`.

    Obtain one with :meth:`AsyncEnvironment.open_db`. Layers built on
    databases (collections, tools) use :attr:`codec` (encoding and decoding,
    with errors naming the database) and :attr:`access` (the checked path
    to the engine), and give their own record logic as ``records``.
    """

    def __init__(
        self,
        env: AsyncEnvironment,
        name: str | bytes | None,
        key_coder: Coder[K],
        value_coder: Coder[V],
        *,
        create: bool = True,
        flags: Mapping[str, bool] | None = None,
        records: RecordsFactory[V] | None = None,
        kind: str = "database",
    ) -> None:
        flags = flags or {}
        self.env = env
        self.name = name
        #: How messages name the database.
        self.label = database_label(name)
        keyspace = env.open_keyspace(
            name,
            self.label,
            create,
            integer_keys=flags.get("integerkey", False),
            reverse_keys=flags.get("reverse_key", False),
            duplicates=flags.get("dupsort", False),
        )
        #: Encodes and decodes keys and values, naming the database in errors.
        self.codec: Codec[K, V] = Codec(
            self.label,
            key_coder,
            value_coder,
            keyspace,
            max_key_size=env.max_key_size(),
            inline_value_limit=env.inline_value_limit,
        )
        #: The dupsort database's own logic (None: one value per key).
        self._duplicates: DuplicateRecords | None = None
        logic: RecordLogic[V]
        if records is not None:
            logic = records(keyspace)
        elif keyspace.duplicates:
            logic = self._duplicates = DuplicateRecords(env.engine, keyspace)
        else:
            logic = PlainRecords(env.engine, keyspace)
        #: The checked path from this database's calls to the engine.
        self.access = DatabaseAccess(env, keyspace, self.codec, logic, kind)
        self._records: RecordLogic[V] = logic
        # What the hot get uses, looked up once.
        self._keyspace = keyspace
        self._engine = env.engine
        self._decode_small_value = self._decode_small
        self._ranges_of = DatabaseRanges[K, V](self.access)
        self._bounds_of = RangeBounds[K, K](self._ranges_of)
        super().__init__(self._ranges_of, self._bounds_of)

    @property
    def async_env(self) -> AsyncEnvironment:
        """Deprecated (aiolmdb 0.1.1's name): :attr:`env`."""
        warnings.warn("db.async_env is deprecated: use db.env", DeprecationWarning, stacklevel=2)
        return self.env

    @property
    def dupsort(self) -> bool:
        """True for a database opened with ``dupsort=True`` (LMDB): a key holds several
        values, kept in the byte order of their encodings."""
        return self._duplicates is not None

    @property
    def key_coder(self) -> Coder[K]:
        """The coder of keys (reassignable)."""
        return self.codec.key_coder

    @key_coder.setter
    def key_coder(self, coder: Coder[K]) -> None:
        self.codec.key_coder = coder

    @property
    def value_coder(self) -> Coder[V]:
        """The coder of values (reassignable)."""
        return self.codec.value_coder

    @value_coder.setter
    def value_coder(self, coder: Coder[V]) -> None:
        self.codec.value_coder = coder

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.label} key_coder={self.key_coder!r} "
            f"value_coder={self.value_coder!r}>"
        )

    # -- reads -----------------------------------------------------------

    @overload
    async def get(
        self, key: K, default: None = None, *, txn: Transaction | None = None
    ) -> V | None: ...

    @overload
    async def get(self, key: K, default: D, *, txn: Transaction | None = None) -> V | D: ...

    async def get(self, key: K, default: Any = None, *, txn: Transaction | None = None) -> Any:
        """The value stored under ``key``, or ``default`` when there is none."""
        # No closure in here: Python would make a cell of each local it uses at
        # every call. The other paths are methods of their own.
        access = self.access
        raw_key = self.codec.encode_key(key)
        if access.pending:
            await access.until_open(txn)
        if next(yield_due):  # before the checks: a drop may run meanwhile
            await asyncio.sleep(0)
        # access.resolve(txn)'s own fast path, spelt out on the hottest path (a call fewer).
        if (
            txn is None
            and not self._engine.closed
            and access.context.get() is None
            and not self._keyspace.dropped
        ):
            ctx = None
        else:
            ctx = access.resolve(txn)
        if ctx is None:
            # The hot path: a read of its own, on the loop thread.
            try:
                value = self._engine.read_point(self._keyspace, raw_key, self._decode_small_value)
            except NotNowError:  # the engine's own point read, which may wait
                value = await self._read_point_elsewhere(raw_key)
            if value is not TOO_LARGE:
                return default if value is _MISSING else value
        value = await self._read_large_or_in(raw_key, ctx)
        return default if value is _MISSING else value

    def _read_point_elsewhere(self, raw_key: bytes) -> Awaitable[Any]:
        """The engine's own point read of ``raw_key`` (which may wait), decoded as
        :meth:`_decode_small` does."""
        return self.access.read_keys(
            [raw_key], lambda values: self._decode_small(raw_key, values[0]), None, inline=False
        )

    def _read_large_or_in(self, raw_key: bytes, ctx: Transaction | None) -> Awaitable[Any]:
        """The value of ``raw_key`` (:data:`_MISSING` when there is none) read in ``ctx``,
        or, outside a transaction, one too large to decode on the event loop."""
        access, keyspace, codec = self.access, self._keyspace, self.codec

        def read(view: ReadView, small_only: bool) -> Any:
            buf = view.get(keyspace, raw_key)
            if buf is None:
                return _MISSING
            if small_only and not codec.decodes_inline(buf):
                return TOO_LARGE
            return codec.decode_value(raw_key, buf)

        if ctx is not None and ctx.reads_inline:
            # A snapshot read on the loop: no thread hop, unless the value is large.
            return access.read_small_inline(read, ctx)
        # Large values are decoded off the loop; inside a transaction that holds
        # the writer, the read goes where the transaction lives.
        return access.read(lambda view: read(view, False), ctx, offload=True)

    def _decode_small(self, raw_key: bytes, buf: Buffer | None) -> Any:
        """A value read on the event loop: decoded, or :data:`TOO_LARGE` to decode there."""
        if self._keyspace.dropped:  # since the call's checks: buf is not ours
            self.access.require_live()
        if buf is None:
            return _MISSING
        # codec.decodes_inline(buf) and codec.decode_value(raw_key, buf), spelt out
        # on the hottest path (a call fewer each).
        codec = self.codec
        coder, limit = codec.value_coder, codec.inline_value_limit
        if len(buf) * coder.max_expansion > limit and not coder.decodes_within(buf, limit):
            return TOO_LARGE
        if type(coder) is IdentityCoder:
            return bytes(buf)  # what its deserialize gives, a call cheaper
        try:
            return coder.deserialize(buf)
        except Exception as exc:
            raise codec.value_error(raw_key, exc) from exc

    @overload
    async def get_multi(
        self, keys: Iterable[K], default: None = None, *, txn: Transaction | None = None
    ) -> dict[K, V | None]: ...

    @overload
    async def get_multi(
        self, keys: Iterable[K], default: D, *, txn: Transaction | None = None
    ) -> dict[K, V | D]: ...

    async def get_multi(
        self, keys: Iterable[K], default: Any = None, *, txn: Transaction | None = None
    ) -> dict[K, Any]:
        """Values of many keys, read in one transaction (one read of the engine).

        Every key asked for is in the result; missing ones map to ``default``.
        """
        access, codec = self.access, self.codec
        if access.pending:
            await access.until_open(txn)
        ctx = access.resolve(txn)
        wanted = list(keys)
        raw_keys = await access.encode_many(codec.encode_key, wanted)
        keyspace = access.keyspace

        def decode(bufs: list[Buffer | None], small_only: bool) -> dict[K, Any]:
            found: dict[K, Any] = {}
            for key, raw_key, buf in zip(wanted, raw_keys, bufs, strict=True):
                if buf is None:
                    found[key] = default
                elif small_only and not codec.decodes_inline(buf):
                    return TOO_LARGE  # type: ignore[no-any-return]
                else:
                    found[key] = codec.decode_value(raw_key, buf)
            return found

        # Few keys are read (and their small values decoded) on the event loop.
        inline = len(wanted) <= INLINE_MULTI_LIMIT
        result = await access.read_keys(
            raw_keys, lambda bufs: decode(bufs, inline), ctx, inline=inline
        )
        if result is TOO_LARGE:
            result = await access.read(
                lambda view: decode(view.get_many(keyspace, raw_keys), False), ctx, offload=True
            )
        return result

    async def get_all(self, key: K, *, txn: Transaction | None = None) -> list[V]:
        """Every value of ``key``, decoded (empty when it is not stored).

        On a dupsort database, all of them, in the byte order of their
        encodings (the order LMDB keeps); on any other, the one value, as a list.
        """
        access, codec = self.access, self.codec
        raw_key = codec.encode_key(key)
        if access.pending:
            await access.until_open(txn)
        ctx = access.resolve(txn)
        duplicates, keyspace = self._duplicates, self._keyspace

        def read(view: ReadView, small_only: bool) -> Any:
            if duplicates is None:
                buf = view.get(keyspace, raw_key)
                bufs = [] if buf is None else [buf]
            else:
                bufs = duplicates.values(view, raw_key)
            # Many values, or a large one, are decoded off the event loop.
            if small_only and (
                len(bufs) > INLINE_MULTI_LIMIT or not all(map(codec.decodes_inline, bufs))
            ):
                return TOO_LARGE
            return [codec.decode_value(raw_key, buf) for buf in bufs]

        values: list[V] = await access.read_small_inline(read, ctx)
        return values

    async def contains(self, key: K, *, txn: Transaction | None = None) -> bool:
        """True when ``key`` is stored."""
        access = self.access
        raw_key = self.codec.encode_key(key)
        if access.pending:
            await access.until_open(txn)
        ctx = access.resolve(txn)
        return await access.read_keys([raw_key], lambda values: values[0] is not None, ctx)

    async def count(
        self,
        start: K | None = None,
        stop: K | None = None,
        *,
        after: K | None = None,
        prefix: object = None,
        txn: Transaction | None = None,
    ) -> int:
        """The number of records (with bounds, ``after`` or a prefix, as :meth:`items`
        going forward: of those only)."""
        low, high = self._bounds_of.raw(start, stop, prefix, after, False)
        return await self._ranges_of.count(low, high, txn)

    async def stat(self, *, txn: Transaction | None = None) -> dict[str, int]:
        """LMDB's statistics of this database (``entries``, ``depth``, page counts...).

        LMDB only: other engines raise :class:`~aiolmdb.UnsupportedError`.
        """
        self.env.require_lmdb(f"stat() of database {self.label}")
        access = self.access
        if access.pending:
            await access.until_open(txn)
        ctx = access.resolve(txn)
        keyspace = access.keyspace
        return await access.read(
            lambda view: as_ints(cast("LmdbReadView", view).txn.stat(keyspace.handle)), ctx
        )

    # -- writes ----------------------------------------------------------

    async def put(
        self,
        key: K,
        value: V,
        *,
        overwrite: bool = True,
        dupdata: bool = True,
        txn: Transaction | None = None,
    ) -> bool:
        """Store ``value`` under ``key``; returns False when ``overwrite=False`` and it exists.

        Returns once the write is committed (durably, unless the environment
        was opened with LMDB's ``sync=False``). On a dupsort database ``value``
        is added to the values of ``key``: False (nothing written) when
        ``overwrite=False`` and the key has values, or, with ``dupdata=False``,
        when ``value`` is one of them already (LMDB's flags; elsewhere
        ``dupdata`` changes nothing, as in LMDB).
        """
        codec, records = self.codec, self._records
        raw_key = codec.encode_key(key)
        raw_value = codec.encode_value(key, value)
        ctx = self.access.resolve(txn)
        if (duplicates := self._duplicates) is not None:
            return await self.access.write(
                lambda view: duplicates.add(
                    view, raw_key, raw_value, overwrite=overwrite, dupdata=dupdata
                ),
                ctx,
            )
        return await self.access.write(
            lambda view: records.store(view, raw_key, raw_value, value, overwrite), ctx
        )

    async def put_multi(
        self,
        items: Iterable[tuple[K, V]] | Mapping[K, V],
        *,
        overwrite: bool = True,
        txn: Transaction | None = None,
    ) -> int:
        """Store many records atomically (all or none); returns how many were written.

        With ``overwrite=False`` existing keys are left alone and not counted.
        Records are encoded on the event loop, 256 at a time with other tasks
        running in between: do not mutate the objects until the call returns.
        """
        access, records = self.access, self._records
        ctx = access.resolve(txn)
        pairs = list(items.items()) if isinstance(items, Mapping) else list(items)
        encoded = await access.encode_many(self.codec.encode_item, pairs)
        keyspace = access.keyspace

        def write(view: WriteView) -> int:
            # All or none: a failure aborts the group commit (or the savepoint
            # inside a transaction), which then goes on without this call.
            if records.plain:
                return view.put_many(keyspace, encoded, overwrite=overwrite)
            return sum(
                records.store(view, raw_key, raw_value, value, overwrite)
                for (raw_key, raw_value), (_, value) in zip(encoded, pairs, strict=True)
            )

        return await access.write(write, ctx, may_fail_midway=not records.plain)

    @overload
    async def delete(self, key: K, *, txn: Transaction | None = None) -> bool: ...

    @overload
    async def delete(self, key: K, value: V, *, txn: Transaction | None = None) -> bool: ...

    async def delete(
        self, key: K, value: Any = _MISSING, *, txn: Transaction | None = None
    ) -> bool:
        """Delete ``key``; returns whether it existed.

        On a dupsort database this deletes every value of ``key``, and
        ``delete(key, value)`` that one value only (whether it was stored). A
        database with one value per key refuses a value with ``TypeError``.
        """
        codec = self.codec
        raw_key = codec.encode_key(key)
        ctx = self.access.resolve(txn)
        if value is not _MISSING:
            duplicates = self._dupsort_only("delete(key, value)", "delete(key)")
            raw_value = codec.encode_value(key, value)
            return await self.access.write(
                lambda view: duplicates.remove_value(view, raw_key, raw_value), ctx
            )
        records = self._records
        return await self.access.write(lambda view: records.remove(view, raw_key), ctx)

    def _dupsort_only(self, call: str, instead: str) -> DuplicateRecords:
        """The dupsort logic, for ``call``; ``TypeError`` saying to use ``instead`` on a
        database with one value per key."""
        if self._duplicates is None:
            raise TypeError(
                f"{self.access.kind} {self.label} is not a dupsort database (it keeps one "
                f"value per key): {call} is for databases opened with dupsort=True; "
                f"use {instead}"
            )
        return self._duplicates

    async def delete_multi(
        self, keys: Iterable[K], *, txn: Transaction | None = None
    ) -> dict[K, bool]:
        """Delete many keys atomically; maps each key to whether it existed."""
        access, records = self.access, self._records
        ctx = access.resolve(txn)
        wanted = list(keys)
        raw_keys = await access.encode_many(self.codec.encode_key, wanted)

        def write(view: WriteView) -> dict[K, bool]:
            existed: dict[K, bool] = {}
            for key, raw_key in zip(wanted, raw_keys, strict=True):
                # A key listed twice existed if its first delete found it.
                existed[key] = records.remove(view, raw_key) or existed.get(key, False)
            return existed

        return await access.write(write, ctx, may_fail_midway=not records.plain)

    @overload
    async def pop(
        self, key: K, default: None = None, *, txn: Transaction | None = None
    ) -> V | None: ...

    @overload
    async def pop(self, key: K, default: D, *, txn: Transaction | None = None) -> V | D: ...

    async def pop(self, key: K, default: Any = None, *, txn: Transaction | None = None) -> Any:
        """Delete ``key`` and return its value (``default`` when it did not exist)."""
        raw_key = self.codec.encode_key(key)
        ctx = self.access.resolve(txn)
        # Decoding happens before the commit: a value that cannot be decoded
        # fails the call and stays stored.
        value = await self.access.write(lambda view: self._pop_raw(view, raw_key), ctx)
        return default if value is _MISSING else value

    async def replace(self, key: K, value: V, *, txn: Transaction | None = None) -> V | None:
        """Store ``value`` under ``key`` and return the previous value (None if there was none)."""
        raw_key = self.codec.encode_key(key)
        raw_value = self.codec.encode_value(key, value)
        ctx = self.access.resolve(txn)
        old: V | None = await self.access.write(
            lambda view: self._replace_raw(view, raw_key, raw_value, value), ctx
        )
        return old

    async def insert(self, key: K, value: V, *, txn: Transaction | None = None) -> None:
        """Store a new record; raise :class:`KeyExistsError` if ``key`` is already stored."""
        raw_key = self.codec.encode_key(key)
        raw_value = self.codec.encode_value(key, value)
        ctx = self.access.resolve(txn)
        records = self._records

        def write(view: WriteView) -> None:
            if not records.store(view, raw_key, raw_value, value, False):
                raise KeyExistsError(f"database {self.label}: key {show(key)} already exists")

        await self.access.write(write, ctx)

    async def update(self, key: K, fn: Callable[[V], V], *, txn: Transaction | None = None) -> V:
        """Replace the value of ``key`` by ``fn(old)`` atomically; return the new value.

        The read, ``fn`` and the write happen in one write transaction, so no
        other writer can slip in between. ``fn`` runs where the engine runs
        writes (on LMDB, its writer thread) and may be called more than once
        (when its group commit is retried): keep it a pure function of its
        argument. Raises :class:`KeyNotFoundError` when ``key`` is not stored.
        """
        if self._duplicates is not None:
            raise TypeError(
                f"{self.access.kind} {self.label} is a dupsort database: update() cannot tell "
                "which of a key's values to change; use delete(key, value) and put(key, value)"
            )
        codec, records, keyspace = self.codec, self._records, self.access.keyspace
        raw_key = codec.encode_key(key)
        ctx = self.access.resolve(txn)

        def write(view: WriteView) -> V:
            old = view.get(keyspace, raw_key)
            if old is None:
                raise KeyNotFoundError(f"database {self.label}: key {show(key)} is not stored")
            new = fn(codec.decode_value(raw_key, old))
            records.store(view, raw_key, codec.encode_value(key, new), new, True)
            return new

        result: V = await self.access.write(write, ctx)
        return result

    def _pop_raw(self, view: WriteView, raw_key: bytes) -> Any:
        old = view.get(self.access.keyspace, raw_key)
        if old is None:
            return _MISSING
        value = self.codec.decode_value(raw_key, old)
        if self._duplicates is not None:  # the first value goes, the others stay
            self._duplicates.remove_value(view, raw_key, bytes(old))
        else:
            self._records.remove(view, raw_key)
        return value

    def _replace_raw(self, view: WriteView, raw_key: bytes, raw_value: bytes, new: V) -> V | None:
        old = view.get(self.access.keyspace, raw_key)
        value = None if old is None else self.codec.decode_value(raw_key, old)
        if self._duplicates is not None and old is not None:  # every value is replaced
            self._duplicates.remove(view, raw_key)
        self._records.store(view, raw_key, raw_value, new, True)
        return value

    async def drop(self, delete: bool = True, *, txn: Transaction | None = None) -> None:
        """Delete every record; with ``delete=True`` remove the named database itself.

        After ``delete=True`` this object can no longer be used (open the
        database again to recreate it). The unnamed default database can only
        be emptied (on LMDB, the records naming the named databases stay).
        """
        access, records = self.access, self._records
        if access.pending:
            await access.until_open(txn)
        ctx = access.resolve(txn)
        if self.name is None or not delete:
            await access.write(records.empty, ctx)
            return
        if ctx is not None:
            raise TransactionError(
                f"{access.kind} {self.label}: drop(delete=True) cannot run inside a "
                "transaction; use drop(delete=False) to empty it there"
            )
        # A second drop queued behind this one would delete the database
        # that takes the freed handle's slot: it is refused where it runs.
        await access.write_alone_then_forget(
            access.when_live(records.delete), records.forget_deleted
        )

    # -- arbitrary work --------------------------------------------------

    async def run(
        self,
        fn: Callable[[DatabaseTxn[K, V]], R],
        *,
        write: bool = False,
        txn: Transaction | None = None,
    ) -> R:
        """Run ``fn(txn)`` in one transaction and return its result.

        ``txn`` is a :class:`DatabaseTxn`: coder-aware ``get``/``put``/``delete``/
        ``pop``/``replace``; on LMDB also ``cursor()``, ``id()`` and the raw
        ``lmdb.Transaction`` as ``txn.txn``. A read runs off the event loop; a
        write (``write=True``) runs in a write transaction of its own (LMDB:
        on the writer thread), or in the enclosing ``env.transaction()``,
        committed when ``fn`` returns and aborted when it raises. ``fn`` is
        called once.
        """
        access = self.access
        if access.pending:
            await access.until_open(txn)
        ctx = access.resolve(txn)

        def read(view: ReadView) -> R:
            return fn(DatabaseTxn(self, view, None))

        def call(view: WriteView) -> R:
            return fn(DatabaseTxn(self, view, view))

        if not write:
            return await access.read(read, ctx, offload=True)
        if ctx is not None:
            return await access.write(call, ctx, may_fail_midway=True)
        return await access.write_alone(call)


class DatabaseTxn(Generic[K, V]):
    """A database seen through one transaction, for :meth:`AsyncDatabase.run`.

    Its methods are synchronous: ``fn`` runs where the engine runs it (LMDB:
    a worker thread, or the writer thread), inside the transaction. Buffers
    do not escape: values are decoded before returning. ``txn``, ``cursor()``
    and ``id()`` are LMDB's (:class:`~aiolmdb.UnsupportedError` elsewhere).
    """

    def __init__(
        self, database: AsyncDatabase[K, V], view: ReadView, write: WriteView | None
    ) -> None:
        self.database = database
        self._view = view
        self._write = write  # None: a read-only run()
        self._codec = database.codec
        self._keyspace = database.access.keyspace

    @property
    def txn(self) -> RawTransaction:
        """The raw ``lmdb.Transaction`` (LMDB only)."""
        self.database.env.require_lmdb("run()'s raw transaction (txn.txn)")
        return cast("LmdbReadView", self._view).txn

    def id(self) -> int:
        """LMDB's id of the transaction (LMDB only)."""
        return self.txn.id()

    def cursor(self) -> RawCursor:
        """A raw ``lmdb.Cursor`` on this database (raw bytes keys and values; LMDB only)."""
        return self.txn.cursor(self._keyspace.handle)

    def _writer(self) -> WriteView:
        if self._write is None:
            raise TransactionError(
                f"database {self.database.label}: run() was called without write=True, "
                "so its transaction is read-only"
            )
        return self._write

    @overload
    def get(self, key: K, default: None = None) -> V | None: ...

    @overload
    def get(self, key: K, default: D) -> V | D: ...

    def get(self, key: K, default: Any = None) -> Any:
        """The value under ``key``, or ``default``."""
        raw_key = self._codec.encode_key(key)
        buf = self._view.get(self._keyspace, raw_key)
        return default if buf is None else self._codec.decode_value(raw_key, buf)

    def put(self, key: K, value: V, *, overwrite: bool = True) -> bool:
        """Store ``value`` under ``key``; False when ``overwrite=False`` and it exists."""
        raw_key = self._codec.encode_key(key)
        raw_value = self._codec.encode_value(key, value)
        records = self.database._records
        return records.store(self._writer(), raw_key, raw_value, value, overwrite)

    def delete(self, key: K) -> bool:
        """Delete ``key``; returns whether it existed."""
        return self.database._records.remove(self._writer(), self._codec.encode_key(key))

    @overload
    def pop(self, key: K, default: None = None) -> V | None: ...

    @overload
    def pop(self, key: K, default: D) -> V | D: ...

    def pop(self, key: K, default: Any = None) -> Any:
        """Delete ``key`` and return its value, or ``default``."""
        value = self.database._pop_raw(self._writer(), self._codec.encode_key(key))
        return default if value is _MISSING else value

    def replace(self, key: K, value: V) -> V | None:
        """Store ``value`` under ``key``; return the previous value or None."""
        raw_key = self._codec.encode_key(key)
        raw_value = self._codec.encode_value(key, value)
        return self.database._replace_raw(self._writer(), raw_key, raw_value, value)


def as_ints(stats: Mapping[str, object]) -> dict[str, int]:
    """LMDB's statistics dictionaries, typed as what they hold."""
    return {name: cast(int, value) for name, value in stats.items()}
