"""Index builds and rebuilds, in bounded chunks through the write-function contract.

Each chunk is a write transaction of its own of at most :data:`BUILD_CHUNK`
records, so a build never holds the writer for long and writes go on between
chunks. A build (:class:`IndexBuild`) of new or changed indexes records its
progress with every chunk and resumes after a crash; a rebuild
(:class:`IndexRepair`) repairs current indexes in place and keeps them usable.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Generic, TypeVar

from ..errors import DecodeError, IndexNotReadyError
from ..storage import Buffer, WriteView
from .catalog import IndexCatalog
from .upkeep import IndexedRecords, IndexUpkeep

if TYPE_CHECKING:
    from .collection import Collection

__all__ = ["BUILD_CHUNK", "PROGRESS_EVERY", "IndexBuild", "IndexProgress", "IndexRepair"]

K = TypeVar("K")
M = TypeVar("M")

logger = logging.getLogger(__name__)

#: ``progress(index_names, records_done, records_total)``, called on the event loop.
IndexProgress = Callable[[list[str], int, int], None]

#: Records indexed per write transaction by a build or rebuild.
BUILD_CHUNK = 1_000
#: Records between two progress reports.
PROGRESS_EVERY = 10_000


class _Chunks(Generic[K, M]):
    """What a build and a rebuild share: decoding records, indexing a chunk of them,
    and reporting progress."""

    #: How errors name the work ("build", "rebuild"), and how the log does.
    action = ""
    doing = ""

    def __init__(
        self,
        collection: Collection[K, M],
        records: IndexedRecords[K, M],
        upkeeps: list[IndexUpkeep[M]],
        progress: IndexProgress | None,
    ) -> None:
        self._collection = collection
        self._records = records
        self._upkeeps = upkeeps
        self._names = [upkeep.index.name for upkeep in upkeeps]
        self._progress = progress
        self._label = collection.label

    def _report(self, done: int, total: int) -> None:
        logger.info(
            "collection %s: %s %s: %d/%d", self._label, self.doing, self._names, done, total
        )
        if self._progress is not None:
            self._progress(list(self._names), done, total)

    def _decoded(self, raw_key: bytes, raw_value: Buffer) -> M:
        """The record stored under ``raw_key``; DecodeError naming it and what to do."""
        codec = self._collection.codec
        try:
            return codec.value_coder.deserialize(raw_value)
        except Exception as exc:
            raise DecodeError(
                f"collection {self._label}: cannot {self.action} indexes {self._names}: the "
                f"value of key {codec.show_key(raw_key)} does not decode with "
                f"{codec.value_coder!r} (delete or overwrite that record, then "
                f"{self.action} again): {exc}"
            ) from exc

    def _index_next(self, view: WriteView, after: bytes | None) -> tuple[int, bytes | None]:
        """Write the entries of the records after ``after`` (at most a chunk of them);
        (records indexed, the last one's key)."""
        main = self._collection.access.keyspace
        records = [
            (raw_key, self._decoded(raw_key, raw_value))
            for raw_key, raw_value in view.range(main, after=after, limit=BUILD_CHUNK)
        ]
        for upkeep in self._upkeeps:
            upkeep.add_entries_of_many(
                view, [(raw_key, upkeep.entry_keys(record, raw_key)) for raw_key, record in records]
            )
        last = records[-1][0] if records else after
        return len(records), last

    def _reported(self, before: int, done: int, total: int, finished: bool) -> None:
        if finished or done // PROGRESS_EVERY > before // PROGRESS_EVERY:
            self._report(done, max(total, done))


class IndexBuild(_Chunks[K, M]):
    """A build of new or changed indexes of a collection.

    The first chunk clears the indexes (or, for a build cut short, resumes
    where it stopped); each chunk then indexes the next records after the
    last one indexed and records how far it got in the catalog. Between
    chunks, the writes of the collection keep the records indexed so far in
    step (see :meth:`IndexUpkeep.covers`). Everything that changes the
    build's state happens in the chunks, where the engine runs them: the
    writes queued after a chunk see the state it committed.
    """

    action = "build"
    doing = "indexing"

    @property
    def _catalog(self) -> IndexCatalog:
        catalog = self._records.catalog
        assert catalog is not None  # there are indexes
        return catalog

    async def run(self) -> None:
        """Build, chunk after chunk, reporting progress on the event loop."""
        access = self._collection.access
        try:
            total = await access.write_alone(self._start)
            done, finished = 0, False
            while not finished:
                await asyncio.sleep(0)  # other tasks run between two chunks, whatever the engine
                indexed, finished = await access.write_alone(self._chunk)
                before, done = done, done + indexed
                self._reported(before, done, total, finished)
        except BaseException:
            for upkeep in self._upkeeps:
                upkeep.building = False  # writes are refused again until a build succeeds
            self._records.building = False
            raise

    def _start(self, view: WriteView) -> int:
        """The first chunk: resume a build cut short, or clear the indexes and begin."""
        self._records.require_live()
        positions = {
            self._catalog.progress(view, upkeep.index.name, upkeep.index.signature())
            for upkeep in self._upkeeps
        }
        # Every index resumes from one position, or they all begin again.
        under_way, built_up_to = next(iter(positions))
        resume = len(positions) == 1 and under_way
        for upkeep in self._upkeeps:
            upkeep.require_open()
            if not resume:
                view.clear(upkeep.keyspace)
                self._catalog.record_progress(
                    view, upkeep.index.name, upkeep.index.signature(), None
                )
            upkeep.building = True
            upkeep.built_up_to = built_up_to if resume else None
        self._records.building = True
        if resume:
            shown = (
                "<none>" if built_up_to is None else self._collection.codec.show_key(built_up_to)
            )
            logger.info(
                "collection %s: resuming the build of %s after key %s",
                self._label,
                self._names,
                shown,
            )
        return view.count(self._collection.access.keyspace)

    def _chunk(self, view: WriteView) -> tuple[int, bool]:
        """Index the next records; whether the build is done."""
        self._records.require_live()
        after = self._upkeeps[0].built_up_to
        for upkeep in self._upkeeps:
            upkeep.require_open()
            under_way = self._catalog.progress(view, upkeep.index.name, upkeep.index.signature())
            if under_way != (True, after):
                raise IndexNotReadyError(
                    f"{upkeep.label}: another declaration of the collection wrote records "
                    "without it while it was being built; build it again"
                )
        indexed, last = self._index_next(view, after)
        finished = indexed < BUILD_CHUNK
        for upkeep in self._upkeeps:
            if finished:
                self._catalog.record_built(view, upkeep.index.name, upkeep.signature)
            else:
                self._catalog.record_progress(
                    view, upkeep.index.name, upkeep.index.signature(), last
                )
            # The writes queued after this chunk keep the records up to here in step.
            upkeep.built_up_to = last
            upkeep.building = not finished
        if finished:
            self._records.building = False
            self._records.unbuilt = [
                name for name in self._records.unbuilt if name not in self._names
            ]
        return indexed, finished


class IndexRepair(_Chunks[K, M]):
    """A rebuild of every index of a collection, in place.

    First every record's entries are written (those present already are left
    as they are), then every entry that its record does not have is deleted.
    The indexes stay current throughout: the writes made between two chunks
    keep them in step as always, and each chunk sees what they wrote.
    """

    action = "rebuild"
    doing = "reindexing"

    async def run(self) -> None:
        """Write the missing entries, then delete the stray ones, chunk after chunk."""
        access = self._collection.access
        main = access.keyspace
        total = await access.read(lambda view: view.count(main), None)
        done, after, finished = 0, None, False
        while not finished:
            await asyncio.sleep(0)  # other tasks run between two chunks, whatever the engine
            indexed, after = await access.write_alone(functools.partial(self._add_missing, after))
            finished = indexed < BUILD_CHUNK
            before, done = done, done + indexed
            self._reported(before, done, total, finished)
        for upkeep in self._upkeeps:
            stray_after: bytes | None = None
            finished = False
            while not finished:
                await asyncio.sleep(0)
                stray_after, finished = await access.write_alone(
                    functools.partial(self._delete_strays, upkeep, stray_after)
                )

    def _add_missing(self, after: bytes | None, view: WriteView) -> tuple[int, bytes | None]:
        records = self._records
        records.require_live()
        for upkeep in self._upkeeps:
            records.require_current(view, upkeep, upkeep.keyspace)
        return self._index_next(view, after)

    def _delete_strays(
        self, upkeep: IndexUpkeep[M], after: bytes | None, view: WriteView
    ) -> tuple[bytes | None, bool]:
        """Delete the next entries that their records do not have; (last entry, whether done)."""
        self._records.require_live()
        upkeep.require_open()
        main = self._collection.access.keyspace
        seen, last = 0, after
        strays: list[bytes] = []
        for entry, value in view.range(upkeep.keyspace, after=after, limit=BUILD_CHUNK):
            seen += 1
            last = entry
            raw_key = upkeep.record_key(entry, value)
            buf = view.get(main, raw_key)
            index_key = entry if upkeep.index.unique else entry[: len(entry) - len(raw_key)]
            if buf is None or index_key not in upkeep.entry_keys(
                self._decoded(raw_key, buf), raw_key
            ):
                strays.append(entry)
        for entry in strays:
            view.delete(upkeep.keyspace, entry)
        return last, seen < BUILD_CHUNK
