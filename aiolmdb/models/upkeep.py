"""Index upkeep: the record logic of a collection, keeping its indexes in step.

Every write of a record computes the entries each index holds for the record
as it reads back, checks them (unique indexes, key sizes) before writing
anything, and moves the entries in the same view as the record. These are
synchronous functions over the engine's write view, safe to run again.

In a plain index the entry key is the escaped index key followed by the
record's key, and the value is empty: entries sort by index key, then by
record key, and one record may have many entries (``multi=True``) or none
(the extractor returned None). In a unique index the escaped index key alone
is the entry key and the record's key its value, so that checking and
looking up a value is one ``get``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ..codec import Codec, show
from ..coders.base import escape_element, unescape_element
from ..errors import (
    DatabaseDroppedError,
    EncodeError,
    IndexExtractorError,
    IndexNotReadyError,
    UniqueViolationError,
    raise_again,
)
from ..storage import Buffer, Engine, Keyspace, ReadView, WriteView
from .catalog import IndexCatalog

if TYPE_CHECKING:
    from .index import Index

__all__ = ["IndexUpkeep", "IndexedRecords"]

K = TypeVar("K")
M = TypeVar("M")

logger = logging.getLogger(__name__)


class IndexUpkeep(Generic[M]):
    """The entries of one index of one collection: computing, checking and moving them.

    While a build is under way (``building``), records with keys up to
    ``built_up_to`` are indexed already and kept in step by every write; the
    others are left to the build.
    """

    def __init__(
        self,
        index: Index[Any],
        keyspace: Keyspace,
        codec: Codec[Any, M],
        collection_name: str,
        signature: bytes,
        max_key_size: int,
    ) -> None:
        self.index = index
        self.keyspace = keyspace
        self._codec = codec
        self._collection_name = collection_name
        #: How messages name the index.
        self.label = f"index {collection_name!r}.{index.name}"
        #: The declaration's signature, as the catalog stores it.
        self.signature = signature
        self._max_key_size = max_key_size
        self.building = False
        #: While building: the last record key indexed (None: none yet).
        self.built_up_to: bytes | None = None

    def covers(self, raw_key: bytes) -> bool:
        """True when the index holds (or must hold) the entries of record ``raw_key``."""
        if not self.building:
            return True
        return self.built_up_to is not None and raw_key <= self.built_up_to

    # -- the entries of a record --------------------------------------------

    def entry_keys(self, record: M, raw_key: bytes) -> set[bytes]:
        """The escaped index keys that ``record``, stored under ``raw_key``, has in this index.

        Raises IndexExtractorError when the extractor fails (a bug of the
        declaration), and EncodeError when the coder cannot encode what it
        gave or an entry would exceed the engine's key size; both name the
        record's key.
        """
        # A non-unique entry is the index key followed by the record's key.
        extra = 0 if self.index.unique else len(raw_key)
        entries = set()
        for value in self._extract(record, raw_key):
            try:
                entry = escape_element(self.index.coder.serialize(value))
            except Exception as exc:
                raise self._error(raw_key, f"cannot encode {show(value)} ({exc})") from exc
            if len(entry) + extra > self._max_key_size:
                raise self._error(
                    raw_key,
                    f"the index key {show(value)} makes an entry of {len(entry) + extra} "
                    f"bytes, over the engine's key limit of {self._max_key_size} bytes"
                    + ("" if self.index.unique else " (an entry holds the index key and the key)"),
                )
            entries.add(entry)
        return entries

    def _extract(self, record: M, raw_key: bytes) -> list[Any]:
        try:
            extracted = self.index.extractor(record)
        except Exception as exc:
            raise self._extractor_error(
                raw_key, f"the extractor failed on a {type(record).__name__}: {exc!r}"
            ) from exc
        if extracted is None:
            return []
        if not self.index.multi:
            return [extracted]
        if isinstance(extracted, (str, bytes)):
            raise self._extractor_error(
                raw_key,
                f"a multi=True index needs an iterable of index keys, and the extractor "
                f"returned a {type(extracted).__name__} ({show(extracted)})",
            )
        try:  # a generator's body runs here
            return [value for value in extracted if value is not None]
        except Exception as exc:
            raise self._extractor_error(
                raw_key,
                f"a multi=True index needs an iterable of index keys, and iterating what "
                f"the extractor returned ({type(extracted).__name__}) failed: {exc!r}",
            ) from exc

    def _extractor_error(self, raw_key: bytes, problem: str) -> IndexExtractorError:
        try:
            key: object = self._codec.key_coder.deserialize(raw_key)
        except Exception:
            key = raw_key
        return IndexExtractorError(
            f"{self.label}, key {self._codec.show_key(raw_key)}: {problem}",
            collection=self._collection_name,
            index=self.index.name,
            key=key,
        )

    def _error(self, raw_key: bytes, problem: str) -> EncodeError:
        return EncodeError(
            f"{self.label} (coder {self.index.coder!r}), key "
            f"{self._codec.show_key(raw_key)}: {problem}"
        )

    def record_key(self, entry: bytes, value: Buffer) -> bytes:
        """The record key an entry (as stored: key and value) points to."""
        if self.index.unique:
            return bytes(value)
        _, end = unescape_element(entry, 0)
        return entry[end:]

    def entries_pointing_at(self, view: ReadView, raw_key: bytes) -> set[bytes]:
        """The escaped index keys of record ``raw_key``'s entries, found by scanning the index.

        For a record whose stored value no longer decodes, so that its entries
        cannot be computed from it. Costs a pass over the whole index.
        """
        found = set()
        for entry, holder in view.range(self.keyspace):
            if self.index.unique:  # the entry's value is the record's key
                if holder == raw_key:
                    found.add(entry)
            elif entry.endswith(raw_key):  # the record's key follows the escaped index key
                _, end = unescape_element(entry, 0)
                if entry[end:] == raw_key:
                    found.add(entry[:end])
        return found

    # -- writing them ------------------------------------------------------

    def check_unique(self, view: ReadView, raw_key: bytes, added: Iterable[bytes]) -> None:
        """Raise UniqueViolationError if another record already has one of ``added``."""
        if not self.index.unique:
            return
        for entry in added:
            holder = view.get(self.keyspace, entry)
            if holder is not None and bytes(holder) != raw_key:
                raise self._violation(entry, bytes(holder))

    def _violation(self, entry: bytes, holder: bytes) -> UniqueViolationError:
        value, _ = unescape_element(entry, 0)
        return UniqueViolationError(
            f"{self.label}: the value {self._show_index_key(value)} is already "
            f"used by key {self._codec.show_key(holder)}"
        )

    def add_entries_of_many(self, view: WriteView, records: list[tuple[bytes, set[bytes]]]) -> None:
        """Write the entries of many records, ``(raw key, index keys)`` in key order, those
        present already staying: as :meth:`check_unique` then :meth:`update_entries` of
        each in turn, with one read and one write of the index for all of them (a round
        trip each on a networked engine, instead of two per record)."""
        if not self.index.unique:
            entries = [(entry + raw_key, b"") for raw_key, keys in records for entry in keys]
            view.put_many(self.keyspace, entries)
            return
        holders: dict[bytes, bytes] = {}
        for raw_key, keys in records:
            for entry in keys:
                earlier = holders.setdefault(entry, raw_key)
                if earlier != raw_key:
                    raise self._violation(entry, earlier)
        stored = view.get_many(self.keyspace, list(holders))
        for (entry, raw_key), holder in zip(holders.items(), stored, strict=True):
            if holder is not None and bytes(holder) != raw_key:
                raise self._violation(entry, bytes(holder))
        view.put_many(self.keyspace, list(holders.items()))

    def _show_index_key(self, raw: bytes) -> str:
        try:
            return repr(self.index.coder.deserialize(raw))
        except Exception:
            return repr(raw)

    def update_entries(
        self, view: WriteView, raw_key: bytes, old: set[bytes], new: set[bytes]
    ) -> None:
        """Move the entries of record ``raw_key`` from ``old`` to ``new`` index keys."""
        unique, keyspace = self.index.unique, self.keyspace
        for entry in old - new:
            view.delete(keyspace, entry if unique else entry + raw_key)
        for entry in new - old:
            if unique:
                view.put(keyspace, entry, raw_key)
            else:
                view.put(keyspace, entry + raw_key, b"")

    def require_open(self, keyspace: Keyspace | None = None) -> None:
        """Raise if the index's keyspace (``keyspace``, by default the current one) is not open.

        Deleted, its handle is dead (LMDB may have given its slot to another
        database): nothing may go through it. Opened again, it may not be
        open yet, or its open may have failed.
        """
        keyspace = self.keyspace if keyspace is None else keyspace
        if keyspace.dropped:
            raise DatabaseDroppedError(
                f"{self.label}: its database was deleted (by another declaration of the "
                "collection); await collection.build_indexes() to build it again"
            )
        if not keyspace.ready:
            if keyspace.error is None:  # build_indexes() opened it again, the engine has not yet
                raise IndexNotReadyError(
                    f"{self.label}: its database was deleted and is being opened again, "
                    "to be rebuilt; await collection.build_indexes() before using it"
                )
            keyspace.check()


class IndexedRecords(Generic[K, M]):
    """The record logic of a collection: every write keeps its indexes in step.

    Also tracks which indexes are left to build (``unbuilt``), the indexes
    recorded but no longer declared (``removed``), and the collection's
    set-up (reading the catalog), which every call waits for.
    """

    def __init__(
        self,
        engine: Engine,
        keyspace: Keyspace,
        codec: Codec[K, M],
        label: str,
        catalog: IndexCatalog | None,
    ) -> None:
        self._engine = engine
        self.keyspace = keyspace
        self._codec = codec
        self._label = label
        self.catalog = catalog
        self.upkeeps: list[IndexUpkeep[M]] = []
        #: Names of indexes that must be built before writes and index queries.
        self.unbuilt: list[str] = []
        #: Indexes recorded for the collection but no longer declared, and their keyspaces.
        self.removed: list[str] = []
        self.removed_keyspaces: list[Keyspace] = []
        #: The engine's job reading the catalog (None: read already, or nothing to read).
        self.setup: asyncio.Future[Any] | None = None
        #: Why that job failed (for the writes queued behind it).
        self.setup_error: BaseException | None = None
        #: True while a build of some of the indexes is under way (see IndexUpkeep.covers).
        self.building = False
        # The write view (and count of stale marks) the indexes were last checked in.
        self._checked_in: tuple[WriteView, int] | None = None

    @property
    def plain(self) -> bool:
        """True when no index, declared or removed, is to be kept in step."""
        return not (self.upkeeps or self.removed)

    async def ready(self) -> None:
        """Wait for the set-up (raises what it raised)."""
        if self.setup is not None:
            await asyncio.shield(self.setup)

    def check_ready(self) -> None:
        """Raise what the set-up raised, if it failed."""
        if self.setup_error is not None:
            raise_again(self.setup_error)

    # -- checks --------------------------------------------------------------

    def require_built(self) -> None:
        """Raise unless every declared index is built (known without reading)."""
        if self.unbuilt:
            raise IndexNotReadyError(
                f"collection {self._label}: indexes {self.unbuilt} are not built yet; "
                "await the collection's open(env), or await collection.build_indexes()"
            )

    def require_current(self, view: ReadView, upkeep: IndexUpkeep[M], keyspace: Keyspace) -> None:
        """Raise unless ``view`` records ``upkeep``'s index as built for its declaration.

        Also raises when the collection or the index's keyspace was deleted.
        Another declaration of the collection (another version of the code,
        in this process or another) may have written records without the
        index since this one was opened: it then recorded the index as stale.
        """
        self.require_live()
        upkeep.require_open(keyspace)
        assert self.catalog is not None  # there are indexes
        if not upkeep.building and not self.catalog.is_current(
            view, upkeep.index.name, upkeep.signature
        ):
            raise IndexNotReadyError(
                f"{upkeep.label} is out of date: records were written by a declaration of "
                "the collection without it; await collection.build_indexes()"
            )

    def require_live(self) -> None:
        """Raise :class:`DatabaseDroppedError` if the collection was deleted."""
        if self.keyspace.dropped:
            raise DatabaseDroppedError(
                f"collection {self._label} was dropped (drop(delete=True)) before or while "
                "this call ran: open it again to recreate it"
            )

    def _require_indexes_current(self, view: WriteView) -> None:
        """Raise unless every index is built and recorded as built in ``view``."""
        if self.unbuilt:  # writes go on while an index is being built, not before
            building = {upkeep.index.name for upkeep in self.upkeeps if upkeep.building}
            if any(name not in building for name in self.unbuilt):
                self.require_built()
        for upkeep in self.upkeeps:  # a dead handle's slot may serve another database
            upkeep.require_open()
        last = self._checked_in
        if last is not None and last[0] is view and last[1] == IndexCatalog.stale_marks:
            return  # checked in this view, and nothing was marked stale since
        for upkeep in self.upkeeps:
            self.require_current(view, upkeep, upkeep.keyspace)
        self._checked_in = (view, IndexCatalog.stale_marks)

    # -- record writes -------------------------------------------------------

    def store(
        self, view: WriteView, raw_key: bytes, raw_value: bytes, value: M, overwrite: bool
    ) -> bool:
        """Store a record and move its index entries, checking everything first."""
        if not self.upkeeps:
            self._mark_removed_stale(view)
            return view.put(self.keyspace, raw_key, raw_value, overwrite=overwrite)
        self._require_indexes_current(view)
        old_buf = view.get(self.keyspace, raw_key)
        if old_buf is not None and not overwrite:
            return False
        covering = self._covering(raw_key)
        new = self._read_back(raw_key, raw_value)
        olds = self._stored_entries(view, raw_key, old_buf, covering)
        # Every check before any write: a failure leaves the view as it was.
        changes = []
        for upkeep, before in zip(covering, olds, strict=True):
            after = upkeep.entry_keys(new, raw_key)
            upkeep.check_unique(view, raw_key, after - before)
            changes.append((upkeep, before, after))
        self._mark_removed_stale(view)
        for upkeep, before, after in changes:
            upkeep.update_entries(view, raw_key, before, after)
        return view.put(self.keyspace, raw_key, raw_value)

    def remove(self, view: WriteView, raw_key: bytes) -> bool:
        """Delete a record and its index entries."""
        if not self.upkeeps:
            self._mark_removed_stale(view)
            return view.delete(self.keyspace, raw_key)
        self._require_indexes_current(view)
        old_buf = view.get(self.keyspace, raw_key)
        if old_buf is None:
            return False
        covering = self._covering(raw_key)
        olds = self._stored_entries(view, raw_key, old_buf, covering)
        self._mark_removed_stale(view)
        for upkeep, before in zip(covering, olds, strict=True):
            upkeep.update_entries(view, raw_key, before, set())
        return view.delete(self.keyspace, raw_key)

    def _covering(self, raw_key: bytes) -> list[IndexUpkeep[M]]:
        """The indexes that hold (or must hold) the entries of record ``raw_key``."""
        if not self.building:  # the common case, checked once per write
            return self.upkeeps
        return [upkeep for upkeep in self.upkeeps if upkeep.covers(raw_key)]

    def _stored_entries(
        self,
        view: ReadView,
        raw_key: bytes,
        old_buf: Buffer | None,
        upkeeps: list[IndexUpkeep[M]],
    ) -> list[set[bytes]]:
        """The entries each of ``upkeeps`` holds for the record stored under ``raw_key``."""
        if old_buf is None:
            return [set() for _ in upkeeps]
        try:
            old = self._codec.value_coder.deserialize(old_buf)
        except Exception as exc:
            # It no longer decodes (its model was tightened since, say): its
            # entries cannot be computed, so find them by where they point.
            logger.warning(
                "collection %s: the value of key %s does not decode with %r (%s); "
                "finding its index entries by scanning the indexes",
                self._label,
                self._codec.show_key(raw_key),
                self._codec.value_coder,
                exc,
            )
            return [upkeep.entries_pointing_at(view, raw_key) for upkeep in upkeeps]
        return [upkeep.entry_keys(old, raw_key) for upkeep in upkeeps]

    def _read_back(self, raw_key: bytes, raw_value: bytes) -> M:
        """The record as it will be read: what its index entries are computed from.

        The object passed to a write may differ (fields the coder leaves out,
        a subclass stored as its model).
        """
        try:
            return self._codec.value_coder.deserialize(raw_value)
        except Exception as exc:
            raise EncodeError(
                f"collection {self._label}: the value for key {self._codec.show_key(raw_key)} "
                f"would not read back with {self._codec.value_coder!r}: {exc}"
            ) from exc

    def _mark_removed_stale(self, view: WriteView) -> None:
        """The removed indexes missed this write: declared again, they are rebuilt
        rather than trusted."""
        if self.removed:
            assert self.catalog is not None  # removed indexes were read from it
            self.catalog.mark_stale(view, self.removed)

    # -- emptying and deleting -------------------------------------------------

    def empty(self, view: WriteView) -> None:
        """Delete every record and every index entry."""
        for upkeep in self.upkeeps:
            upkeep.require_open()
        view.clear(self.keyspace)
        for upkeep in self.upkeeps:
            view.clear(upkeep.keyspace)
        self._mark_removed_stale(view)

    def delete(self, view: WriteView) -> None:
        """Delete the collection's database, its indexes' and their catalog records."""
        view.drop(self.keyspace)
        if self.catalog is None:
            return  # no index, declared or removed
        for upkeep in self.upkeeps:
            if not upkeep.keyspace.dropped:  # else another declaration deleted it
                view.drop(upkeep.keyspace)
            self.catalog.forget(view, upkeep.index.name)
        self.delete_removed(view)

    def forget_deleted(self) -> None:
        """After :meth:`delete` ran: forget every keyspace it deleted."""
        self._engine.forget_keyspace(self.keyspace)
        for upkeep in self.upkeeps:
            self._engine.forget_keyspace(upkeep.keyspace)
        self.forget_removed()

    def delete_removed(self, view: WriteView) -> None:
        """Delete the keyspaces and catalog records of the removed indexes."""
        if self.catalog is None:
            return  # nothing was ever recorded
        for keyspace in self.removed_keyspaces:
            if not keyspace.dropped:  # else an earlier attempt deleted it
                keyspace.check()  # an open that failed has nothing to drop
                view.drop(keyspace)
        for name in self.removed:
            self.catalog.forget(view, name)

    def forget_removed(self) -> None:
        """After :meth:`delete_removed` ran: forget the removed indexes it deleted."""
        kept = [
            (name, keyspace)
            for name, keyspace in zip(self.removed, self.removed_keyspaces, strict=True)
            if not keyspace.dropped
        ]
        for keyspace in self.removed_keyspaces:
            if keyspace.dropped:
                self._engine.forget_keyspace(keyspace)
        self.removed = [name for name, _ in kept]
        self.removed_keyspaces = [keyspace for _, keyspace in kept]
