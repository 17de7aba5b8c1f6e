"""Secondary indexes of a collection: their declaration, and queries through them.

An index's entries live in a keyspace of their own and are kept in step by
every write of the collection (:mod:`.upkeep`), in the same transaction.
Queries go through the entries to the records they name, fetched in the same
read, a batch at a time.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator, Callable, Iterable
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, overload

from ..access import TOO_LARGE, DatabaseAccess
from ..coders import Coder
from ..coders.base import escape_element, unescape_element
from ..errors import DatabaseDroppedError, DecodeError, EncodeError, UnorderedKeyError
from ..query import Part, RangeBounds, Ranged
from ..scanning import Fetch, Scan, prefix_end
from ..storage import Buffer, Keyspace, ReadView
from .upkeep import IndexedRecords, IndexUpkeep

if TYPE_CHECKING:
    from ..transaction import Transaction
    from .collection import Collection

__all__ = ["LAYOUT", "BoundIndex", "Index", "IndexCursor", "IndexEntry"]

IK = TypeVar("IK")

#: How index entries are stored; indexes recorded with another layout are rebuilt.
LAYOUT = 2

K = TypeVar("K")
M = TypeVar("M")


class Index(Generic[IK]):
    """Declares a secondary index on a :class:`Collection`.

    ::

        class Users(Collection[int, User]):
            key_coder = UInt64Coder()
            by_email = Index(lambda u: u.email, StringCoder(), unique=True)
            by_tag = Index(lambda u: u.tags, StringCoder(), multi=True)

    ``extractor(record)`` returns the record's index key, or None to leave
    the record out of the index; with ``multi=True`` it returns an iterable
    of keys, each indexed. An exception the extractor raises fails the write
    with :class:`IndexExtractorError` (nothing written). ``coder`` encodes
    index keys (an ordered one for range and prefix queries). ``unique=True``
    makes a write that would give two records the same index key raise
    :class:`UniqueViolationError`.
    Change ``version`` when you change the extractor: the index is then
    rebuilt when the collection is opened.

    On an instance, ``users.by_email`` is a :class:`BoundIndex` with the
    query methods.
    """

    if TYPE_CHECKING:
        # Only the coder decides IK. pyright solves a type variable from the first
        # argument that binds it, and an extractor taking Any gives Any; the overloads
        # of __init__ then check the extractor against the coder's IK.
        def __new__(
            cls,
            extractor: Callable[[Any], object],
            coder: Coder[IK],
            *,
            unique: bool = False,
            multi: bool = False,
            version: int = 1,
        ) -> Index[IK]: ...

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

    def signature_bytes(self) -> bytes:
        """:meth:`signature` as the catalog stores it."""
        return json.dumps(self.signature()).encode()

    @overload
    def __get__(self, instance: None, owner: type) -> Index[IK]: ...

    @overload
    def __get__(self, instance: Collection[K, M], owner: type) -> BoundIndex[K, M, IK]: ...

    def __get__(self, instance: Collection[Any, Any] | None, owner: type) -> Any:
        if instance is None:
            return self
        return instance.bound_index(self.name)

    def __repr__(self) -> str:
        flags = "".join(f", {flag}=True" for flag in ("unique", "multi") if getattr(self, flag))
        return f"Index({self.name}, {self.coder!r}{flags})"


@dataclasses.dataclass(frozen=True)
class IndexCursor(Generic[IK, K]):
    """Where a scan of an index stopped: one entry, named by its index key and the key
    of the record it points to.

    ``index.items(after=IndexCursor(index_key, key))`` continues with the
    entry after that one, in the scan's direction, even inside one index key
    shared by many records (a non-unique or ``multi=True`` index). Entries of
    one index key follow the order of the records' keys as stored (byte
    order), whatever the key coder. In a unique index the index key alone
    names the entry, and ``key`` is not looked at.
    """

    #: The index key of the entry.
    index_key: IK
    #: The key of the record the entry points to.
    key: K


@dataclasses.dataclass(frozen=True)
class IndexEntry(Generic[IK, K, M]):
    """One entry of an index as :meth:`BoundIndex.entries` gives it: its index key and the
    record it points to."""

    #: The index key of the entry (one of a record's keys with ``multi=True``).
    index_key: IK
    #: The key of the record.
    key: K
    #: The record.
    value: M

    @property
    def cursor(self) -> IndexCursor[IK, K]:
        """The cursor of this entry: ``after=entry.cursor`` continues after it."""
        return IndexCursor(self.index_key, self.key)


class IndexRanges(Generic[K, M, IK]):
    """The range queries of an index: over its entries, bounded by index keys, giving
    the records the entries name."""

    def __init__(
        self, upkeep: IndexUpkeep[M], access: DatabaseAccess, records: IndexedRecords[K, M]
    ) -> None:
        self._upkeep = upkeep
        self._access = access
        self._records = records

    @property
    def label(self) -> str:
        return self._upkeep.label

    def exact(self, value: IK) -> bytes:
        """The escaped index key of ``value``."""
        index = self._upkeep.index
        try:
            return escape_element(index.coder.serialize(value))
        except Exception as exc:
            raise EncodeError(
                f"{self._upkeep.label}: cannot encode {value!r} ({type(value).__name__}) "
                f"with {index.coder!r}: {exc}"
            ) from exc

    def key_range(
        self, start: IK | None, stop: IK | None, prefix: object
    ) -> tuple[bytes | None, bytes | None]:
        coder = self._upkeep.index.coder
        if (start, stop, prefix) != (None, None, None) and not coder.ordered:
            raise UnorderedKeyError(
                f"{self._upkeep.label}: range and prefix queries need an ordered index coder, "
                f"and {coder!r} is not ordered"
            )
        low = None if start is None else self.exact(start)
        high = None if stop is None else self.exact(stop)
        if prefix is not None:
            try:
                raw = coder.serialize_prefix(prefix)
            except Exception as exc:
                raise EncodeError(
                    f"{self._upkeep.label}: cannot encode prefix {prefix!r} with {coder!r}: {exc}"
                ) from exc
            # Escaping is byte-wise, so escaped prefixes are prefixes of escaped keys.
            escaped = escape_element(raw)[:-2]
            low = escaped if low is None else max(low, escaped)
            end = prefix_end(escaped)
            if end is not None:
                high = end if high is None else min(high, end)
        return low, high

    def resume_range(self, after: IK | IndexCursor[IK, K]) -> tuple[bytes, bytes | None]:
        if not isinstance(after, IndexCursor):
            # Every entry of one index key starts with it, escaped; none of another does.
            at, _ = self.key_range(after, None, None)
            assert at is not None  # a bound was given
            return at, prefix_end(at)
        if after.index_key is None:
            raise TypeError(f"{self.label}: {after!r} has no index key to resume after")
        at, _ = self.key_range(after.index_key, None, None)
        assert at is not None
        if self._upkeep.index.unique:  # the entry is the index key alone
            return at, prefix_end(at)
        # A plain entry is the escaped index key followed by the record's key.
        at += self._access.codec.encode_key(after.key)
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
        codec = self._access.codec
        decode = {
            Part.ITEMS: codec.decode_item,
            Part.KEYS: codec.decode_key_of,
            Part.VALUES: codec.decode_value,
        }[part]
        return self._through_entries(low, high, reverse, limit, txn, decode, with_entries=False)

    def entries(
        self,
        low: bytes | None,
        high: bytes | None,
        *,
        reverse: bool,
        limit: int | None,
        txn: Transaction | None,
    ) -> AsyncIterator[IndexEntry[IK, K, M]]:
        """The entries of ``[low, high)`` in order, each with its index key and record."""
        return self._through_entries(
            low, high, reverse, limit, txn, self._decode_entry, with_entries=True
        )

    def _decode_entry(self, entry: bytes, buf: bytes) -> IndexEntry[IK, K, M]:
        """An entry fetched by :meth:`entries`: its escaped index key followed by the
        record's key, and the record."""
        index = self._upkeep.index
        raw_index_key, end = unescape_element(entry, 0)
        raw_key = entry[end:]
        try:
            index_key: IK = index.coder.deserialize(raw_index_key)
        except Exception as exc:
            raise DecodeError(
                f"{self._upkeep.label}: cannot decode the index key {raw_index_key!r} of key "
                f"{self._access.codec.show_key(raw_key)} with {index.coder!r}: {exc}"
            ) from exc
        key, value = self._access.codec.decode_item(raw_key, buf)
        return IndexEntry(index_key, key, value)

    def _through_entries(
        self,
        low: bytes | None,
        high: bytes | None,
        reverse: bool,
        limit: int | None,
        txn: Transaction | None,
        decode: Callable[[bytes, bytes], Any],
        *,
        with_entries: bool,
    ) -> AsyncIterator[Any]:
        """The records the entries of ``[low, high)`` name, decoded by ``decode`` from
        their key (``with_entries``: the entry's index key, then their key) and value."""
        access = self._access

        def through_entries(ctx: Transaction | None) -> AsyncIterator[Any]:
            self._records.require_built()
            upkeep, records, main = self._upkeep, self._records, access.keyspace
            # The scan reads this keyspace in every batch: each checks it is still open
            # (the index may be deleted and opened again, in another slot, meanwhile).
            opened = upkeep.keyspace

            def fetcher(view: ReadView) -> Fetch:
                records.require_current(view, upkeep, opened)

                def records_of(
                    entries: list[tuple[bytes, Buffer]],
                ) -> list[tuple[bytes, Buffer]]:
                    # The entries name the records; fetch them in the same view, together.
                    raw_keys = [upkeep.record_key(entry, value) for entry, value in entries]
                    bufs = view.get_many(main, raw_keys)
                    # A drop marks the keyspaces before the engine closes them: a read
                    # that went through a closed handle is caught here, after it.
                    records.require_live()
                    upkeep.require_open(opened)
                    found: list[tuple[bytes, Buffer]] = []
                    for raw_key, buf in zip(raw_keys, bufs, strict=True):
                        if buf is None:  # pragma: no cover - entries come with their records
                            raise AssertionError(
                                f"{upkeep.label} has an entry for a missing record"
                            )
                        found.append((raw_key, buf))
                    if with_entries:  # the escaped index key, then the record's key
                        return [
                            (entry + raw_key if upkeep.index.unique else entry, buf)
                            for (entry, _), (raw_key, buf) in zip(entries, found, strict=True)
                        ]
                    return found

                return records_of

            spec = Scan(opened, low, high, reverse, limit, fetcher, decode)
            return self._stopped_by_drops(access.stream(spec, ctx), opened)

        return access.when_open(txn, through_entries)

    async def _stopped_by_drops(
        self, stream: AsyncIterator[Any], opened: Keyspace
    ) -> AsyncIterator[Any]:
        """``stream``, ended by DatabaseDroppedError if the collection or index is deleted.

        A batch read while the drop ran may fail on the engine's closed handle,
        or end early: the failure and the end are checked against the drop.
        """
        records, upkeep = self._records, self._upkeep
        try:
            async for item in stream:
                yield item
        except DatabaseDroppedError:
            raise
        except Exception as exc:
            try:
                records.require_live()
                upkeep.require_open(opened)
            except DatabaseDroppedError as dropped:
                raise dropped from exc
            raise
        records.require_live()
        upkeep.require_open(opened)

    async def count(self, low: bytes | None, high: bytes | None, txn: Transaction | None) -> int:
        access, records, upkeep = self._access, self._records, self._upkeep
        if access.pending:
            await access.until_open(txn)
        records.require_built()
        ctx = access.resolve(txn)
        opened = upkeep.keyspace

        def count_entries(view: ReadView) -> int:
            records.require_current(view, upkeep, opened)
            found = view.count(opened, low, high)
            upkeep.require_open(opened)  # a drop may have closed the handle meanwhile
            return found

        # The whole index is one lookup; a range walks its entries: off the loop.
        return await access.read(count_entries, ctx, offload=(low, high) != (None, None))

    async def get(self, value: IK, txn: Transaction | None) -> Any:
        access, records, upkeep = self._access, self._records, self._upkeep
        entry = self.exact(value)
        if access.pending:
            await access.until_open(txn)
        ctx = access.resolve(txn)
        records.require_built()
        main, opened, codec = access.keyspace, upkeep.keyspace, access.codec

        def read(view: ReadView, small_only: bool) -> Any:
            records.require_current(view, upkeep, opened)
            holder = view.get(opened, entry)
            # A drop marks the keyspace before the engine closes it: checked after the read.
            upkeep.require_open(opened)
            if holder is None:
                return None
            raw_key = bytes(holder)
            buf = view.get(main, raw_key)
            if buf is None:  # pragma: no cover - entries are written with their records
                raise AssertionError(f"{upkeep.label} has an entry for a missing record")
            if small_only and not codec.decodes_inline(buf):
                return TOO_LARGE
            return codec.decode_value(raw_key, buf)

        # A point lookup, like a collection's get: on the loop, no thread hop; the
        # collection's read checks its drop after reading and lets other tasks run.
        return await access.read_small_inline(read, ctx)


class BoundIndex(Ranged[IK, "IK | IndexCursor[IK, K]", K, M], Generic[K, M, IK]):
    """An index of one open collection: the queries through it.

    Every query returns records of the collection: ``get`` (unique indexes),
    ``get_all``, ``items``/``keys``/``values`` (with ``start``, ``stop``,
    ``after``, ``prefix``, ``reverse``, ``limit`` over index keys, like
    collection scans), ``entries`` (the same, with each entry's index key),
    ``count``, ``first`` and ``last``.

    ``after`` takes an index key (continue past every entry of it) or an
    :class:`IndexCursor` (continue past that one entry, inside its index key):
    the cursor of the last entry :meth:`entries` gave resumes a scan exactly
    where it stopped, on a non-unique or ``multi=True`` index too.
    """

    def __init__(
        self,
        index: Index[IK],
        collection: Collection[K, M],
        upkeep: IndexUpkeep[M],
        records: IndexedRecords[K, M],
    ) -> None:
        """Bind ``index`` to ``collection``, its entries kept by ``upkeep``."""
        self.index = index
        self.collection = collection
        #: Keeps the index's entries in step with the records.
        self.upkeep = upkeep
        self._label = upkeep.label
        self._index_ranges = IndexRanges[K, M, IK](upkeep, collection.access, records)
        self._index_bounds = RangeBounds[IK, IK | IndexCursor[IK, K]](self._index_ranges)
        super().__init__(self._index_ranges, self._index_bounds)

    async def get(self, value: IK, *, txn: Transaction | None = None) -> M | None:
        """The record whose index key is ``value`` (a unique index), or None."""
        if not self.index.unique:
            raise TypeError(f"{self._label} is not unique: use get_all() to read every match")
        record: M | None = await self._index_ranges.get(value, txn)
        return record

    async def get_all(
        self, value: IK, *, limit: int | None = None, txn: Transaction | None = None
    ) -> list[M]:
        """Every record whose index key is ``value``, in key order."""
        entry = self._index_ranges.exact(value)
        records = self._index_ranges.scan(
            entry, prefix_end(entry), reverse=False, limit=limit, txn=txn, part=Part.VALUES
        )
        return [record async for record in records]

    def entries(
        self,
        start: IK | None = None,
        stop: IK | None = None,
        *,
        after: IK | IndexCursor[IK, K] | None = None,
        prefix: object = None,
        reverse: bool = False,
        limit: int | None = None,
        txn: Transaction | None = None,
    ) -> AsyncIterator[IndexEntry[IK, K, M]]:
        """Iterate over the index's entries in order, as :meth:`items` does, each an
        :class:`IndexEntry` (index key, record key, record).

        A record comes once per index key it has (several with
        ``multi=True``); ``entry.cursor`` is what ``after=`` takes to continue
        after it.
        """
        ranges = self._index_ranges
        low, high = self._index_bounds.raw(start, stop, prefix, after, reverse)
        return ranges.entries(low, high, reverse=reverse, limit=limit, txn=txn)

    async def count(
        self,
        value: IK | None = None,
        *,
        start: IK | None = None,
        stop: IK | None = None,
        after: IK | IndexCursor[IK, K] | None = None,
        prefix: object = None,
        txn: Transaction | None = None,
    ) -> int:
        """How many entries have index key ``value`` (with ``start``/``stop``/``after``/
        ``prefix``, as :meth:`items` going forward: in that range; with nothing, every
        entry).

        Each record has one entry per index key it has (several with
        ``multi=True``, none when the extractor gave None).
        """
        ranges = self._index_ranges
        if value is not None:
            if (start, stop, after, prefix) != (None, None, None, None):
                raise TypeError(f"{self._label}: count() takes a value, or bounds, not both")
            entry = ranges.exact(value)
            return await ranges.count(entry, prefix_end(entry), txn)
        low, high = self._index_bounds.raw(start, stop, prefix, after, False)
        return await ranges.count(low, high, txn)

    def __repr__(self) -> str:
        return f"<BoundIndex {self._label}>"
