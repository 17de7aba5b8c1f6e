"""``verify``: every record of a collection decodes, and every index matches its records.

The checks read, in chunks, inside one read snapshot (so they see one state
of the environment however long they take); they never write. For each
declared index they check that the catalog records it as built for this
declaration, that every record has each of its entries, and that every
entry belongs to a record that has it.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
from collections.abc import Callable
from typing import Any

from ..access import DatabaseAccess
from ..codec import show
from ..coders.base import unescape_element
from ..database import INTERNAL_DATABASE, AsyncDatabase
from ..environment import AsyncEnvironment
from ..errors import AiolmdbError, DatabaseNotFoundError
from ..models import Collection
from ..models.catalog import IndexCatalog
from ..models.index import BoundIndex
from ..storage import Buffer, Keyspace, ReadView
from ..transaction import Transaction
from .inspect import open_named
from .render import escape_bytes

__all__ = ["VERIFY_CHUNK", "Problem", "ProblemKind", "verify_collection", "verify_databases"]

#: Records (or index entries) read per read.
VERIFY_CHUNK = 1_000


class ProblemKind(enum.Enum):
    """What ``verify`` found wrong."""

    #: A stored key or value does not decode with the collection's coders.
    UNDECODABLE = "undecodable"
    #: An index the catalog does not record as built for this declaration.
    NOT_BUILT = "not built"
    #: A record lacks one of its entries in an index.
    MISSING_ENTRY = "missing entry"
    #: An index entry whose record does not exist, or does not have it.
    STRAY_ENTRY = "stray entry"
    #: A record whose index keys cannot be computed (its extractor or coder fails).
    UNINDEXABLE = "unindexable"
    #: A database that cannot be read.
    UNREADABLE = "unreadable"


@dataclasses.dataclass(frozen=True)
class Problem:
    """One thing ``verify`` found wrong, and where."""

    kind: ProblemKind
    #: The collection or database, with the index where it concerns one.
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.kind.value}: {self.message}"


async def verify_collection(
    env: AsyncEnvironment, collection: Collection[Any, Any]
) -> list[Problem]:
    """Every problem of ``collection`` (opened in ``env``): records that do not decode,
    indexes not built, entries missing or stray."""
    problems: list[Problem] = []
    indexes = sorted(collection.bound_indexes(), key=lambda index: index.index.name)
    # Every keyspace open before the snapshot begins, which would not see one opened after.
    await collection.access.until_open(None)
    for index in indexes:
        await index.upkeep.keyspace.wait()
    internal: AsyncDatabase[bytes, bytes] | None = None
    if indexes:
        try:
            internal = await env.open_db_async(INTERNAL_DATABASE, create=False)
        except DatabaseNotFoundError:
            problems.extend(
                Problem(ProblemKind.NOT_BUILT, index.upkeep.label, "no index was ever built here")
                for index in indexes
            )
    async with env.transaction(write=False) as txn:
        await _check_records(collection, indexes, txn, problems)
        if internal is not None:
            await _check_catalog(internal, collection, indexes, txn, problems)
        for index in indexes:
            await _check_entries(collection, index, txn, problems)
    return problems


async def _check_catalog(
    internal: AsyncDatabase[bytes, bytes],
    collection: Collection[Any, Any],
    indexes: list[BoundIndex[Any, Any, Any]],
    txn: Transaction,
    problems: list[Problem],
) -> None:
    assert isinstance(collection.name, str)  # a collection with indexes has a str name
    catalog = IndexCatalog(internal, collection.name)

    def stale(view: ReadView) -> list[str]:
        return [
            index.upkeep.label
            for index in indexes
            if not catalog.is_current(view, index.index.name, index.upkeep.signature)
        ]

    problems.extend(
        Problem(
            ProblemKind.NOT_BUILT,
            label,
            "the catalog does not record it as built for this declaration "
            "(build it with build_indexes())",
        )
        for label in await internal.access.read(stale, txn)
    )


async def _check_records(
    collection: Collection[Any, Any],
    indexes: list[BoundIndex[Any, Any, Any]],
    txn: Transaction,
    problems: list[Problem],
) -> None:
    """Check that every record decodes and has its entries (as stored: the escaped index
    key, followed by the record key where the index is not unique)."""
    access, codec = collection.access, collection.codec
    main = access.keyspace

    def check(view: ReadView, raw_key: bytes, raw_value: Buffer) -> None:
        try:
            codec.decode_key(raw_key)
            record = codec.decode_value(raw_key, raw_value)
        except AiolmdbError as exc:
            problems.append(
                Problem(ProblemKind.UNDECODABLE, f"collection {collection.label}", str(exc))
            )
            return
        for index in indexes:
            upkeep = index.upkeep
            try:
                entries = upkeep.entry_keys(record, raw_key)
            except AiolmdbError as exc:
                problems.append(Problem(ProblemKind.UNINDEXABLE, upkeep.label, str(exc)))
                continue
            for entry in entries:
                stored = entry if upkeep.index.unique else entry + raw_key
                found = view.get(upkeep.keyspace, stored)
                if found is None or (upkeep.index.unique and bytes(found) != raw_key):
                    problems.append(
                        Problem(
                            ProblemKind.MISSING_ENTRY,
                            upkeep.label,
                            f"record {codec.show_key(raw_key)} lacks its entry "
                            f"{_show_index_key(index, entry)}",
                        )
                    )

    await _each_record(access, main, txn, check)


async def _check_entries(
    collection: Collection[Any, Any],
    index: BoundIndex[Any, Any, Any],
    txn: Transaction,
    problems: list[Problem],
) -> None:
    """Report every entry of ``index`` that no record has: its record is read and its
    entries computed again (memory stays bounded however large the index)."""
    upkeep, codec = index.upkeep, collection.codec
    main = collection.access.keyspace

    def check(view: ReadView, stored: bytes, value: Buffer) -> None:
        raw_key = upkeep.record_key(stored, value)
        entry = stored if upkeep.index.unique else stored[: len(stored) - len(raw_key)]
        buf = view.get(main, raw_key)
        if buf is None:
            why = "does not exist"
        else:
            try:
                if entry in upkeep.entry_keys(codec.decode_value(raw_key, buf), raw_key):
                    return
            except AiolmdbError:
                return  # reported with the record already
            why = "does not have it"
        problems.append(
            Problem(
                ProblemKind.STRAY_ENTRY,
                upkeep.label,
                f"entry {_show_index_key(index, entry)} points to record "
                f"{codec.show_key(raw_key)}, which {why}",
            )
        )

    await _each_record(collection.access, upkeep.keyspace, txn, check)


async def _each_record(
    access: DatabaseAccess,
    keyspace: Keyspace,
    txn: Transaction,
    check: Callable[[ReadView, bytes, Buffer], None],
) -> None:
    """``check(view, key, value)`` of every record of ``keyspace`` in ``txn``, read
    :data:`VERIFY_CHUNK` records at a time (memory stays bounded however large it is)."""

    def chunk(after: bytes | None, view: ReadView) -> tuple[int, bytes | None]:
        seen, last = 0, after
        for raw_key, raw_value in view.range(keyspace, after=after, limit=VERIFY_CHUNK):
            seen, last = seen + 1, raw_key
            check(view, raw_key, raw_value)
        return seen, last

    after: bytes | None = None
    while True:
        seen, after = await access.read(functools.partial(chunk, after), txn)
        if seen < VERIFY_CHUNK:
            return


def _show_index_key(index: BoundIndex[Any, Any, Any], entry: Buffer) -> str:
    """An escaped index key as messages show it: decoded if it decodes, else its bytes."""
    try:
        raw, _ = unescape_element(bytes(entry), 0)
        return show(index.index.coder.deserialize(raw))
    except Exception:
        return escape_bytes(entry)


async def verify_databases(env: AsyncEnvironment) -> list[Problem]:
    """Without a collection: every named database opens and reads through."""
    problems: list[Problem] = []
    for name in await env.database_names():
        label = escape_bytes(name)
        try:
            db = await open_named(env, name)
            if db is None:
                continue
            async with env.transaction(write=False):
                async for _ in db.keys():
                    pass
        except Exception as exc:
            problems.append(Problem(ProblemKind.UNREADABLE, label, f"{type(exc).__name__}: {exc}"))
    return problems
