"""Secondary indexes of a collection, kept in the same transaction as its records.

Each index lives in its own keyspace, keyed by the escaped, terminated
index key. In a plain index the record's primary key follows it and the value
is empty: entries sort by index key, then by primary key, and one record may
have many entries (``multi=True``) or none (the extractor returned None). In a
unique index the index key alone is the key and the primary key its value, so
that checking and looking up a value is one ``get``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterable
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, overload

from ..coders import Coder
from ..coders.base import escape_element, unescape_element
from ..database import TOO_LARGE, show
from ..errors import (
    AiolmdbError,
    DatabaseDroppedError,
    EncodeError,
    UniqueViolationError,
    UnorderedKeyError,
)
from ..scanning import Fetch, prefix_end
from ..storage import Buffer, Keyspace, ReadView, WriteView

if TYPE_CHECKING:
    from ..transaction import Transaction
    from .collection import Collection

__all__ = ["BoundIndex", "Index"]

IK = TypeVar("IK")

#: How index entries are stored; indexes recorded with another layout are rebuilt.
LAYOUT = 2

K = TypeVar("K")
M = TypeVar("M")


class Index(Generic[IK]):
    """Declares a secondary index on a :class:`~aiolmdb.models.Collection`.

    ::

        class Users(Collection[int, User]):
            key_coder = UInt64Coder()
            by_email = Index(lambda u: u.email, StringCoder(), unique=True)
            by_tag = Index(lambda u: u.tags, StringCoder(), multi=True)

    ``extractor(record)`` returns the record's index key, or None to leave
    the record out of the index; with ``multi=True`` it returns an iterable
    of keys, each indexed. ``coder`` encodes index keys (an ordered one for
    range and prefix queries). ``unique=True`` makes a write that would give
    two records the same index key raise :class:`~aiolmdb.UniqueViolationError`.
    Change ``version`` when you change the extractor: the index is then
    rebuilt when the collection is opened.

    On an instance, ``users.by_email`` is a :class:`BoundIndex` with the
    query methods.
    """

    @overload
    def __init__(
        self,
        extractor: Callable[[Any], IK | None],
        coder: Coder[IK],
        *,
        unique: bool = False,
        multi: Literal[False] = False,
        version: int = 1,
    ) -> None: ...

    @overload
    def __init__(
        self,
        extractor: Callable[[Any], Iterable[IK] | None],
        coder: Coder[IK],
        *,
        unique: bool = False,
        multi: Literal[True],
        version: int = 1,
    ) -> None: ...

    def __init__(
        self,
        extractor: Callable[[Any], Any],
        coder: Coder[IK],
        *,
        unique: bool = False,
        multi: bool = False,
        version: int = 1,
    ) -> None:
        """Declare an index keyed by ``extractor(record)``, encoded with ``coder``."""
        if not callable(extractor):
            raise TypeError(f"Index extractor must be callable, got {extractor!r}")
        if not isinstance(coder, Coder):
            raise TypeError(f"Index coder must be a Coder, got {coder!r}")
        self.extractor = extractor
        self.coder = coder
        self.unique = unique
        self.multi = multi
        self.version = version
        self.name = "<unnamed>"

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def signature(self) -> dict[str, Any]:
        """What is stored to notice a changed index: coder, flags, version and storage layout."""
        return {
            "coder": repr(self.coder),
            "unique": self.unique,
            "multi": self.multi,
            "version": self.version,
            "layout": LAYOUT,
        }

    @overload
    def __get__(self, instance: None, owner: type) -> Index[IK]: ...

    @overload
    def __get__(self, instance: Collection[K, M], owner: type) -> BoundIndex[K, M, IK]: ...

    def __get__(self, instance: Collection[Any, Any] | None, owner: type) -> Any:
        if instance is None:
            return self
        return instance._bound_indexes[self.name]

    def __repr__(self) -> str:
        flags = "".join(f", {flag}=True" for flag in ("unique", "multi") if getattr(self, flag))
        return f"Index({self.name}, {self.coder!r}{flags})"


class BoundIndex(Generic[K, M, IK]):
    """An index of one open collection: maintains entries and answers queries.

    Every query returns records of the collection: ``get`` (unique indexes),
    ``get_all``, ``items``/``keys``/``values`` (with ``start``, ``stop``,
    ``prefix``, ``reverse``, ``limit`` over index keys, like collection scans),
    ``count``, ``first`` and ``last``.
    """

    def __init__(self, index: Index[IK], collection: Collection[K, M], keyspace: Keyspace) -> None:
        """Bind ``index`` to ``collection``, its entries stored in ``keyspace``."""
        self.index = index
        self.collection = collection
        self._keyspace = keyspace
        # Where the collection records the declaration this index was built for.
        self._meta_key = collection._meta_key(index.name)
        self._signature = json.dumps(index.signature()).encode()
        self._label = f"index {collection._label}.{index.name}"

    def _require_open(self, opened: Keyspace | None = None) -> None:
        """Raise if the index's keyspace (``opened``, by default the current one) is not open.

        Deleted, its handle is dead (LMDB may have given its slot to another
        database): nothing may go through it. Opened again, it may not be
        open yet, or its open may have failed.
        """
        opened = self._keyspace if opened is None else opened
        if opened.dropped:
            raise DatabaseDroppedError(
                f"{self._label}: its database was deleted (by another declaration of the "
                "collection); await collection.build_indexes() to build it again"
            )
        if not opened.ready:
            if opened.error is None:  # build_indexes() opened it again, the writer has not yet
                raise AiolmdbError(
                    f"{self._label}: its database was deleted and is being opened again, "
                    "to be rebuilt; await collection.build_indexes() before using it"
                )
            opened.check()

    def _require_usable(self, opened: Keyspace | None = None) -> None:
        """Raise if the collection or the index's database (``opened``, or the current) is gone."""
        self.collection._require_live()
        self._require_open(opened)

    def _reopen(self) -> None:
        """Open the index's database again after it was deleted."""
        self._keyspace = self.collection._open_index_db(self.index.name, True)

    def _require_current(self, view: ReadView, opened: Keyspace | None = None) -> None:
        """Raise unless ``view`` records this index as built for its declaration.

        Also raises when the collection or the index's database (``opened``,
        by default the current one) was deleted.
        """
        self._require_usable(opened)
        meta = self.collection._meta
        assert meta is not None  # opened with the declared indexes
        if not self._is_current(view, meta._keyspace):
            raise AiolmdbError(
                f"{self._label} is out of date: records were written by a declaration of "
                "the collection without it; await collection.build_indexes()"
            )

    def _is_current(self, view: ReadView, meta: Keyspace) -> bool:
        return view.get(meta, self._meta_key) == self._signature

    # -- maintenance (runs inside the collection's write transactions) ---

    def _entry_keys(self, record: M, raw_key: bytes) -> set[bytes]:
        """The escaped index keys that ``record``, stored under ``raw_key``, has in this index.

        Raises EncodeError, naming the record's key, when the extractor or the
        coder fails or an entry would exceed LMDB's key size.
        """
        limit = self.collection._max_key_size
        # A non-unique entry is the index key followed by the record's key.
        extra = 0 if self.index.unique else len(raw_key)
        entries = set()
        for value in self._extract(record, raw_key):
            try:
                entry = escape_element(self.index.coder.serialize(value))
            except Exception as exc:
                raise self._error(raw_key, f"cannot encode {show(value)} ({exc})") from exc
            if len(entry) + extra > limit:
                raise self._error(
                    raw_key,
                    f"the index key {show(value)} makes an entry of {len(entry) + extra} "
                    f"bytes, over LMDB's key limit of {limit} bytes"
                    + ("" if self.index.unique else " (an entry holds the index key and the key)"),
                )
            entries.add(entry)
        return entries

    def _extract(self, record: M, raw_key: bytes) -> list[Any]:
        try:
            extracted = self.index.extractor(record)
        except Exception as exc:
            raise self._error(
                raw_key, f"the extractor failed on a {type(record).__name__}: {exc!r}"
            ) from exc
        if extracted is None:
            return []
        if not self.index.multi:
            return [extracted]
        if isinstance(extracted, (str, bytes)):
            raise self._error(
                raw_key,
                f"a multi=True index needs an iterable of index keys, and the extractor "
                f"returned a {type(extracted).__name__} ({show(extracted)})",
            )
        try:
            return [value for value in extracted if value is not None]
        except TypeError as exc:
            raise self._error(
                raw_key, f"a multi=True index needs an iterable of index keys: {exc}"
            ) from exc

    def _error(self, raw_key: bytes, problem: str) -> EncodeError:
        return EncodeError(
            f"{self._label} (coder {self.index.coder!r}), key "
            f"{self.collection._show_raw_key(raw_key)}: {problem}"
        )

    def _update_entries(
        self, view: WriteView, raw_key: bytes, old: set[bytes], new: set[bytes]
    ) -> None:
        """Move the entries of record ``raw_key`` from ``old`` to ``new`` index keys."""
        unique, keyspace = self.index.unique, self._keyspace
        for entry in old - new:
            view.delete(keyspace, entry if unique else entry + raw_key)
        for entry in new - old:
            if unique:
                view.put(keyspace, entry, raw_key)
            else:
                view.put(keyspace, entry + raw_key, b"")

    def _record_key(self, entry: bytes, value: Buffer) -> bytes:
        """The primary key an entry (as stored: key and value) points to."""
        if self.index.unique:
            return bytes(value)
        _, end = unescape_element(entry, 0)
        return entry[end:]

    def _entries_pointing_at(self, view: ReadView, raw_key: bytes) -> set[bytes]:
        """The escaped index keys of record ``raw_key``'s entries, found by scanning the index.

        For a record whose stored value no longer decodes, so that its entries
        cannot be computed from it. Costs a pass over the whole index.
        """
        found = set()
        for entry, holder in view.range(self._keyspace):
            if self.index.unique:  # the entry's value is the record's key
                if holder == raw_key:
                    found.add(entry)
            elif entry.endswith(raw_key):  # the record's key follows the escaped index key
                _, end = unescape_element(entry, 0)
                if entry[end:] == raw_key:
                    found.add(entry[:end])
        return found

    def _check_unique(self, view: ReadView, raw_key: bytes, added: set[bytes]) -> None:
        """Raise UniqueViolationError if another record already has one of ``added``."""
        if not self.index.unique:
            return
        for entry in added:
            holder = view.get(self._keyspace, entry)
            if holder is not None and bytes(holder) != raw_key:
                value, _ = unescape_element(entry, 0)
                raise UniqueViolationError(
                    f"{self._label}: the value {self._show_index_key(value)} is already "
                    f"used by key {self.collection._show_raw_key(bytes(holder))}"
                )

    def _show_index_key(self, raw: bytes) -> str:
        try:
            return repr(self.index.coder.deserialize(raw))
        except Exception:
            return repr(raw)

    def _clear(self, view: WriteView) -> None:
        """Remove every entry (before a rebuild, or when the collection is emptied)."""
        view.clear(self._keyspace)

    def _drop_storage(self, view: WriteView) -> None:
        """Delete the index's keyspace (when the collection is deleted)."""
        if self._keyspace.dropped:
            return  # deleted already, by another declaration of the collection
        view.drop(self._keyspace)

    # -- queries ---------------------------------------------------------

    def _exact(self, value: IK) -> bytes:
        try:
            return escape_element(self.index.coder.serialize(value))
        except Exception as exc:
            raise EncodeError(
                f"{self._label}: cannot encode {value!r} ({type(value).__name__}) "
                f"with {self.index.coder!r}: {exc}"
            ) from exc

    def _bounds(
        self, start: IK | None, stop: IK | None, prefix: object
    ) -> tuple[bytes | None, bytes | None]:
        if (start, stop, prefix) != (None, None, None) and not self.index.coder.ordered:
            raise UnorderedKeyError(
                f"{self._label}: range and prefix queries need an ordered index coder, "
                f"and {self.index.coder!r} is not ordered"
            )
        low = None if start is None else self._exact(start)
        high = None if stop is None else self._exact(stop)
        if prefix is not None:
            try:
                raw = self.index.coder.serialize_prefix(prefix)
            except Exception as exc:
                raise EncodeError(
                    f"{self._label}: cannot encode prefix {prefix!r} with {self.index.coder!r}: "
                    f"{exc}"
                ) from exc
            # Escaping is byte-wise, so escaped prefixes are prefixes of escaped keys.
            escaped = escape_element(raw)[:-2]
            low = escaped if low is None else max(low, escaped)
            end = prefix_end(escaped)
            if end is not None:
                high = end if high is None else min(high, end)
        return low, high

    def _records(
        self,
        low: bytes | None,
        high: bytes | None,
        reverse: bool,
        limit: int | None,
        txn: Transaction | None,
        make: Callable[[bytes, bytes], Any],
    ) -> AsyncIterator[Any]:
        collection = self.collection
        if collection._pending:
            collection._resolve(txn)  # what it refuses is refused at the call, as below
            return collection._after_open(
                txn, lambda: self._records(low, high, reverse, limit, txn, make)
            )
        main, ctx = collection._resolve(txn)
        collection._require_indexes_built()
        # The scan reads this keyspace in every batch: each checks it is still open
        # (the index may be deleted and opened again, in another slot, meanwhile).
        opened = self._keyspace

        def fetcher(view: ReadView) -> Fetch:
            self._require_current(view, opened)

            def record_of(entry: bytes, value: Buffer) -> tuple[bytes, Buffer]:
                # The entry names the record; fetch it in the same view.
                raw_key = self._record_key(entry, value)
                buf = view.get(main, raw_key)
                # A drop marks the handles before LMDB closes them: a read that
                # went through a closed handle is caught here, after it.
                self._require_usable(opened)
                if buf is None:  # pragma: no cover - entries are written with their records
                    raise AssertionError(f"{self._label} has an entry for a missing record")
                return raw_key, buf

            return record_of

        stream = collection._stream(ctx, opened, low, high, reverse, limit, fetcher, make)
        return self._stopped_by_drops(stream, opened)

    async def _stopped_by_drops(
        self, stream: AsyncIterator[Any], opened: Keyspace
    ) -> AsyncIterator[Any]:
        """``stream``, ended by DatabaseDroppedError if the collection or index is deleted.

        A batch read while the drop ran may fail on LMDB's closed handle, or
        end early: the failure and the end are checked against the drop.
        """
        try:
            async for item in stream:
                yield item
        except DatabaseDroppedError:
            raise
        except Exception as exc:
            try:
                self._require_usable(opened)
            except DatabaseDroppedError as dropped:
                raise dropped from exc
            raise
        self._require_usable(opened)

    def items(
        self,
        start: IK | None = None,
        stop: IK | None = None,
        *,
        prefix: object = None,
        reverse: bool = False,
        limit: int | None = None,
        txn: Transaction | None = None,
    ) -> AsyncIterator[tuple[K, M]]:
        """``(key, record)`` pairs in index-key order (then key order).

        ``start``/``stop``/``prefix`` are index keys, as in collection scans.
        """
        collection = self.collection
        low, high = self._bounds(start, stop, prefix)
        return self._records(
            low,
            high,
            reverse,
            limit,
            txn,
            collection._decode_item,
        )

    def keys(
        self,
        start: IK | None = None,
        stop: IK | None = None,
        *,
        prefix: object = None,
        reverse: bool = False,
        limit: int | None = None,
        txn: Transaction | None = None,
    ) -> AsyncIterator[K]:
        """The collection keys of the records, in index-key order; arguments as :meth:`items`."""
        collection = self.collection
        low, high = self._bounds(start, stop, prefix)
        return self._records(low, high, reverse, limit, txn, lambda k, _: collection._decode_key(k))

    def values(
        self,
        start: IK | None = None,
        stop: IK | None = None,
        *,
        prefix: object = None,
        reverse: bool = False,
        limit: int | None = None,
        txn: Transaction | None = None,
    ) -> AsyncIterator[M]:
        """The records, in index-key order; arguments as :meth:`items`."""
        collection = self.collection
        low, high = self._bounds(start, stop, prefix)
        return self._records(low, high, reverse, limit, txn, collection._decode_value)

    async def get(self, value: IK, *, txn: Transaction | None = None) -> M | None:
        """The record whose index key is ``value`` (a unique index), or None."""
        if not self.index.unique:
            raise TypeError(f"{self._label} is not unique: use get_all() to read every match")
        entry = self._exact(value)
        collection = self.collection
        if collection._pending:
            await collection._until_open(txn)
        main, ctx = collection._resolve(txn)
        collection._require_indexes_built()
        opened = self._keyspace

        def read(view: ReadView, small_only: bool) -> Any:
            self._require_current(view, opened)
            holder = view.get(opened, entry)
            # A drop marks the handle before LMDB closes it: checked after the read.
            self._require_open(opened)
            if holder is None:
                return None
            raw_key = bytes(holder)
            buf = view.get(main, raw_key)
            if buf is None:  # pragma: no cover - entries are written with their records
                raise AssertionError(f"{self._label} has an entry for a missing record")
            if small_only and not collection._decodes_inline(buf):
                return TOO_LARGE
            return collection._decode_value(raw_key, buf)

        # A point lookup, like a collection's get: on the loop, no thread hop; the
        # collection's read checks its drop after reading and lets other tasks run.
        record = await collection._read_small_inline(read, ctx)
        return record  # type: ignore[no-any-return]

    async def get_all(
        self, value: IK, *, limit: int | None = None, txn: Transaction | None = None
    ) -> list[M]:
        """Every record whose index key is ``value``, in key order."""
        return [record async for record in self._values_of(self._exact(value), limit, txn)]

    def _values_of(
        self, entry: bytes, limit: int | None, txn: Transaction | None
    ) -> AsyncIterator[M]:
        """Records under one escaped index key."""
        collection = self.collection
        return self._records(
            entry,
            prefix_end(entry),
            False,
            limit,
            txn,
            collection._decode_value,
        )

    async def count(self, value: IK | None = None, *, txn: Transaction | None = None) -> int:
        """How many records have index key ``value`` (every entry when None)."""
        if self.collection._pending:
            await self.collection._until_open(txn)
        self.collection._require_indexes_built()
        ctx = self.collection._resolve(txn)[1]
        opened = self._keyspace
        if value is None:

            def count_all(view: ReadView) -> int:
                self._require_current(view, opened)
                entries = view.count(opened)
                self._require_open(opened)  # a drop may have closed the handle meanwhile
                return entries

            return await self.collection._read(count_all, ctx)
        entry = self._exact(value)

        def count_entries(view: ReadView) -> int:
            self._require_current(view, opened)
            found = view.count(opened, entry, prefix_end(entry))
            self._require_open(opened)  # a drop may have closed the handle meanwhile
            return found

        return await self.collection._read(count_entries, ctx, offload=True)

    async def first(self, *, txn: Transaction | None = None) -> tuple[K, M] | None:
        """The record with the lowest index key, or None."""
        async for item in self.items(limit=1, txn=txn):
            return item
        return None

    async def last(self, *, txn: Transaction | None = None) -> tuple[K, M] | None:
        """The record with the highest index key, or None."""
        async for item in self.items(limit=1, reverse=True, txn=txn):
            return item
        return None

    def __repr__(self) -> str:
        return f"<BoundIndex {self._label}>"
