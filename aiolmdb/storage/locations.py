"""Which engine a location names, and opening it.

A path (a ``str`` or ``os.PathLike``) is an LMDB environment; ``":memory:"``
(as SQLite spells it) is a fresh in-memory store. A URL with a scheme
(``scheme://...``) names a networked engine; none is built in yet. Engines
are imported here, when a location needs one, so that ``import aiolmdb``
loads none of them.
"""

from __future__ import annotations

import enum
import os
import re
from typing import Any

from ..errors import UnsupportedError
from .base import Engine

__all__ = ["MEMORY", "EngineKind", "engine_kind", "lmdb_version", "open_engine"]

#: The location of a fresh in-memory store.
MEMORY = ":memory:"

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


class EngineKind(enum.Enum):
    """The engines a location may name."""

    LMDB = "lmdb"
    MEMORY = "memory"


def engine_kind(location: str | os.PathLike[str]) -> EngineKind:
    """The engine ``location`` names; ``UnsupportedError`` for a URL of no known engine."""
    if isinstance(location, str):
        if location == MEMORY:
            return EngineKind.MEMORY
        if _URL.match(location):
            scheme = location.split("://", 1)[0]
            raise UnsupportedError(
                f"no engine opens {scheme}:// locations (given {location!r}); "
                f"use a path (LMDB) or {MEMORY!r}"
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
    from .lmdb import LmdbEngine, LmdbSettings

    return LmdbEngine(location, LmdbSettings(**settings), **lmdb_kwargs)


def lmdb_version() -> tuple[int, int, int]:
    """The version of the LMDB library, as ``(major, minor, patch)``."""
    from .lmdb import version

    return version()
