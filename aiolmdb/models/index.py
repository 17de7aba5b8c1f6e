"""Secondary indexes of a collection: their declaration, and queries through them.

An index's entries live in a keyspace of their own and are kept in step by
every write of the collection (:mod:`.upkeep`), in the same transaction.
Queries go through the entries to the records they name, fetched in the same
read, a batch at a time.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterable
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, overload

from ..access import TOO_LARGE, DatabaseAccess
from ..coders import Coder
from ..coders.base import escape_element
from ..errors import DatabaseDroppedError, EncodeError, UnorderedKeyError
from ..query import Part, RangeBounds, Ranged
from ..scanning import Fetch, Scan, prefix_end
from ..storage import Buffer, Keyspace, ReadView
from .upkeep import IndexedRecords, IndexUpkeep

if TYPE_CHECKING:
    from ..transaction import Transaction
    from .collection import Collection

__all__ = ["LAYOUT", "BoundIndex", "Index"]

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
    of keys, each indexed. ``coder`` encodes index keys (an ordered one for
    range and prefix queries). ``unique=True`` makes a write that would give
    two records the same index key raise :class:`UniqueViolationError`.
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

    def resume_range(self, after: IK) -> tuple[bytes, bytes | None]:
        # Every entry of one index key starts with it, escaped; none of another does.
        at, _ = self.key_range(after, None, None)
        assert at is not None  # a bound was given
        return at, prefix_end(at)

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
        return self._through_entries(low, high, reverse, limit, txn, decode)

    def _through_entries(
        self,
        low: bytes | None,
        high: bytes | None,
        reverse: bool,
        limit: int | None,
        txn: Transaction | None,
        decode: Callable[[bytes, bytes], Any],
    ) -> AsyncIterator[Any]:
        """The records the entries of ``[low, high)`` name, decoded by ``decode`` from
        their key and value."""
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


class BoundIndex(Ranged[IK, IK, K, M], Generic[K, M, IK]):
    """An index of one open collection: the queries through it.

    Every query returns records of the collection: ``get`` (unique indexes),
    ``get_all``, ``items``/``keys``/``values`` (with ``start``, ``stop``,
    ``after``, ``prefix``, ``reverse``, ``limit`` over index keys, like
    collection scans), ``count``, ``first`` and ``last``.
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
        self._index_bounds = RangeBounds[IK, IK](self._index_ranges)
        super().__init__(self._index_ranges)

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

    async def count(
        self,
        value: IK | None = None,
        *,
        start: IK | None = None,
        stop: IK | None = None,
        after: IK | None = None,
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
