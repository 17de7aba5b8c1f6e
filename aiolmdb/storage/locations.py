"""Which engine a location names, and opening it.

A path (a ``str`` or ``os.PathLike``) is an LMDB environment; ``":memory:"``
(as SQLite spells it) is a fresh in-memory store; a ``postgresql://`` (or
``postgres://``) URL is a PostgreSQL database. Engines are imported here,
when a location needs one, so that ``import aiolmdb`` loads none of them
(nor their drivers: the PostgreSQL engine needs the ``postgres`` extra).
"""

from __future__ import annotations

import enum
import os
import re
from typing import Any

from ..errors import UnsupportedError
from .base import Engine

__all__ = [
    "MEMORY",
    "POSTGRES_SCHEMES",
    "EngineKind",
    "engine_kind",
    "lmdb_version",
    "open_engine",
]

#: The location of a fresh in-memory store.
MEMORY = ":memory:"

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


class EngineKind(enum.Enum):
    """The engines a location may name."""

    LMDB = "lmdb"
    MEMORY = "memory"
    POSTGRES = "postgresql"


#: URL schemes of PostgreSQL locations (libpq's).
POSTGRES_SCHEMES = ("postgresql", "postgres")


def engine_kind(location: str | os.PathLike[str]) -> EngineKind:
    """The engine ``location`` names; ``UnsupportedError`` for a URL of no known engine."""
    if isinstance(location, str):
        if location == MEMORY:
            return EngineKind.MEMORY
        if _URL.match(location):
            scheme = location.split("://", 1)[0]
            if scheme.lower() in POSTGRES_SCHEMES:
                return EngineKind.POSTGRES
            raise UnsupportedError(
                f"no engine opens {scheme}:// locations (given {scheme}://...); "
                f"use a path (LMDB), {MEMORY!r} or a postgresql:// URL"
            )
    return EngineKind.LMDB


def open_engine(
    location: str | os.PathLike[str], settings: dict[str, Any], lmdb_kwargs: dict[str, Any]
) -> Engine:
    """Open the engine ``location`` names, with the aiolmdb ``settings`` given (those not
    None) and, for LMDB, ``lmdb.open``'s keywords."""
    kind = engine_kind(location)
    if kind is EngineKind.MEMORY:
        from .memory import MemoryEngine

        return MemoryEngine(**settings, **lmdb_kwargs)
    if kind is EngineKind.POSTGRES:
        assert isinstance(location, str)
        try:
            from .postgres import PostgresEngine
        except ImportError as exc:
            raise UnsupportedError(
                f"the PostgreSQL engine needs the postgres extra, which is not installed "
                f"(pip install 'aiolmdb[postgres]'): {exc}"
            ) from exc
        return PostgresEngine(location, **settings, **lmdb_kwargs)
    from .lmdb import LmdbEngine, LmdbSettings

    return LmdbEngine(location, LmdbSettings(**settings), **lmdb_kwargs)


def lmdb_version() -> tuple[int, int, int]:
    """The version of the LMDB library, as ``(major, minor, patch)``."""
    from .lmdb import version

    return version()
