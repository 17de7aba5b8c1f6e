"""The reading commands' logic, over an open environment: stat, ls, get and scan."""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import AsyncIterator
from typing import Any

from ..database import INTERNAL_DATABASE, AsyncDatabase
from ..environment import AsyncEnvironment
from ..errors import AiolmdbError, DecodeError, UnorderedKeyError
from ..models.catalog import CATALOG_PREFIX, INDEX_DATABASE_PREFIX
from .errors import CliError, ExitCode
from .render import escape_bytes, parse_key, to_json

__all__ = [
    "DatabaseKind",
    "DatabaseSummary",
    "environment_stat",
    "get_record",
    "list_databases",
    "open_named",
    "scan_records",
]

_INTERNAL = INTERNAL_DATABASE.encode()
_CATALOG_PREFIX = CATALOG_PREFIX.encode()
_INDEX_PREFIX = INDEX_DATABASE_PREFIX.encode()


class DatabaseKind(enum.Enum):
    """What a named database holds, as ``ls`` tells it."""

    DATABASE = "database"
    #: A database whose records some collection indexes (the catalog lists it).
    COLLECTION = "collection"
    #: The entries of one index of a collection.
    INDEX = "index"
    #: aiolmdb's own bookkeeping (the index catalog, load progress).
    INTERNAL = "internal"


@dataclasses.dataclass(frozen=True)
class DatabaseSummary:
    """One row of ``ls``."""

    #: The database's name as escaped text (names are bytes; most are UTF-8).
    name: str
    kind: DatabaseKind
    records: int
    #: The bytes of its keys and values (what the data weighs, on every engine).
    size: int
    #: For an index: the collection and the index's name.
    of: str = ""


async def environment_stat(env: AsyncEnvironment) -> dict[str, Any]:
    """What ``stat`` shows: the engine, the location, the databases, and on LMDB its
    ``info()`` and ``stat()`` (map size, pages, readers...)."""
    names = await env.database_names()
    stat: dict[str, Any] = {
        "engine": env.engine.name,
        "location": env.engine.description,
        "databases": sum(1 for name in names if not name.startswith(_INTERNAL)),
        "max_key_size": env.max_key_size(),
    }
    if env.capabilities.map_size:
        stat.update({f"info.{key}": value for key, value in env.info().items()})
        stat.update({f"stat.{key}": value for key, value in env.stat().items()})
    return stat


async def open_named(env: AsyncEnvironment, name: bytes) -> AsyncDatabase[bytes, bytes] | None:
    """The database ``name`` (one :meth:`AsyncEnvironment.database_names` gave), or None
    when it is not one: on LMDB, a record of the unnamed database of the size of a
    database's header looks like one until it is opened."""
    try:
        return await env.open_db_async(name, create=False)
    except AiolmdbError:
        raise
    except Exception:
        return None


async def _weigh(db: AsyncDatabase[bytes, bytes]) -> tuple[int, int]:
    records = size = 0
    async for key, value in db.items():
        records += 1
        size += len(key) + len(value)
    return records, size


async def list_databases(env: AsyncEnvironment) -> list[DatabaseSummary]:
    """Every named database: its kind, records and bytes, in name order.

    Each database is read through in a read snapshot of its own.
    """
    names = await env.database_names()
    collections: set[bytes] = set()
    if _INTERNAL in names:
        internal = await env.open_db_async(INTERNAL_DATABASE, create=False)
        async for key in internal.keys(prefix=_CATALOG_PREFIX):
            # Index names are identifiers: the collection's name is the rest (slashes too).
            collections.add(key[len(_CATALOG_PREFIX) :].rpartition(b"/")[0])
    summaries = []
    for name in names:
        db = await open_named(env, name)
        if db is None:
            continue
        async with env.transaction(write=False):
            records, size = await _weigh(db)
        of = ""
        if name.startswith(_INDEX_PREFIX):
            kind = DatabaseKind.INDEX
            collection, _, index = name[len(_INDEX_PREFIX) :].rpartition(b"/")
            of = f"{escape_bytes(collection)}.{escape_bytes(index)}"
        elif name.startswith(_INTERNAL):
            kind = DatabaseKind.INTERNAL
        elif name in collections:
            kind = DatabaseKind.COLLECTION
        else:
            kind = DatabaseKind.DATABASE
        summaries.append(DatabaseSummary(escape_bytes(name), kind, records, size, of))
    return summaries


def _decoding(exc: DecodeError) -> CliError:
    return CliError(f"{exc} (does the collection given match the data?)", ExitCode.DECODE)


def _key(db: AsyncDatabase[Any, Any], text: str, what: str, *, prefix: bool = False) -> Any:
    try:
        return parse_key(text, db.key_coder, prefix=prefix)
    except ValueError as exc:
        raise CliError(f"database {db.label}: {what} {text!r}: {exc}", ExitCode.USAGE) from exc


async def get_record(db: AsyncDatabase[Any, Any], key_text: str) -> Any:
    """The value stored under the key ``key_text`` (parsed for the key coder), as JSON."""
    key = _key(db, key_text, "key")
    missing = object()
    try:
        value = await db.get(key, missing)
    except DecodeError as exc:
        raise _decoding(exc) from exc
    if value is missing:
        raise CliError(f"database {db.label}: no key {key_text}", ExitCode.NOT_FOUND)
    return to_json(value, db.value_coder)


async def scan_records(
    db: AsyncDatabase[Any, Any],
    *,
    start: str | None = None,
    stop: str | None = None,
    prefix: str | None = None,
    reverse: bool = False,
    limit: int | None = None,
) -> AsyncIterator[tuple[Any, Any]]:
    """The records from ``start`` (inclusive) to ``stop`` (exclusive), with ``prefix``,
    in key order (highest first when ``reverse``), at most ``limit``: each as JSON
    ``(key, value)``, read in one read snapshot."""
    low = None if start is None else _key(db, start, "start")
    high = None if stop is None else _key(db, stop, "stop")
    leading = None if prefix is None else _key(db, prefix, "prefix", prefix=True)
    if limit is not None and limit < 0:
        raise CliError(f"--limit must be 0 or more, got {limit}", ExitCode.USAGE)
    key_coder, value_coder = db.key_coder, db.value_coder
    async with db.env.transaction(write=False):
        try:
            async for key, value in db.items(
                low, high, prefix=leading, reverse=reverse, limit=limit
            ):
                yield to_json(key, key_coder), to_json(value, value_coder)
        except DecodeError as exc:
            raise _decoding(exc) from exc
        except UnorderedKeyError as exc:
            raise CliError(str(exc), ExitCode.USAGE) from exc
