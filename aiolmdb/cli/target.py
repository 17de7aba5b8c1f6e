"""What a command works on: the environment a location names, a database or a
collection in it, and the application's collection class named on the command line."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Any

from ..database import AsyncDatabase
from ..environment import AsyncEnvironment
from ..environment import open as open_environment
from ..errors import DatabaseNotFoundError, UnsupportedError
from ..models import Collection
from ..storage.locations import MEMORY, EngineKind, engine_kind
from .errors import CliError, ExitCode

__all__ = [
    "import_collection",
    "open_database",
    "open_location",
    "require_environment",
]

#: The file every LMDB environment directory holds.
LMDB_DATA_FILE = "data.mdb"


async def require_environment(location: str) -> None:
    """Refuse, with :class:`CliError`, a location where no environment exists.

    So that a mistyped path or URL is an error rather than a new, empty
    environment. ``":memory:"`` is refused: an in-memory store lives in one
    process, and the console cannot reach another process's.
    """
    try:
        kind = engine_kind(location)
    except UnsupportedError as exc:
        raise CliError(str(exc), ExitCode.UNSUPPORTED) from exc
    if kind is EngineKind.MEMORY:
        raise CliError(
            f"{MEMORY} is an in-memory store of one process: the console cannot reach another "
            "process's; give the path of an LMDB environment or a postgresql:// URL",
            ExitCode.UNSUPPORTED,
        )
    if kind is EngineKind.LMDB:
        _require_lmdb_files(location)
        return
    await _require_postgres_layout(location)


def _require_lmdb_files(location: str) -> None:
    """Refuse a path that is not the directory of an LMDB environment."""
    path = Path(location)
    if (path / LMDB_DATA_FILE).is_file():
        return
    what = "does not exist" if not path.exists() else f"holds no {LMDB_DATA_FILE}"
    raise CliError(f"no LMDB environment at {location}: the path {what}", ExitCode.NOT_FOUND)


async def _require_postgres_layout(url: str) -> None:
    """Refuse a PostgreSQL database that cannot be reached or holds no environment."""
    try:
        import psycopg

        from ..storage.postgres.engine import without_password
        from ..storage.postgres.layout import Sql
    except ImportError as exc:
        raise CliError(
            "the PostgreSQL engine needs the postgres extra, which is not installed "
            f"(pip install 'aiolmdb[postgres]'): {exc}",
            ExitCode.UNSUPPORTED,
        ) from exc
    shown = without_password(url)
    try:
        async with await psycopg.AsyncConnection.connect(url) as conn:
            row = await (await conn.execute(Sql.LAYOUT_EXISTS)).fetchone()
    except psycopg.Error as exc:
        raise CliError(f"cannot connect to {shown}: {exc}", ExitCode.NOT_FOUND) from exc
    if row is None or not row[0]:
        raise CliError(
            f"no aiolmdb environment in {shown}: it has no aiolmdb_layout table (in the "
            "first schema of its search_path)",
            ExitCode.NOT_FOUND,
        )


async def open_location(location: str, *, create: bool = False) -> AsyncEnvironment:
    """Open the environment at ``location``; unless ``create``, only one that exists."""
    if not create:
        await require_environment(location)
    elif engine_kind(location) is EngineKind.LMDB:
        os.makedirs(location, exist_ok=True)
    return open_environment(location)


def import_collection(spec: str) -> type[Collection[Any, Any]]:
    """The collection class ``spec`` names, as ``package.module:ClassName``.

    The current directory is searched first, as ``python -m`` would, so that
    an application's own modules are found without installing them.
    """
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise CliError(
            f"--collection {spec!r}: give it as module:ClassName (e.g. myapp.models:Users)",
            ExitCode.USAGE,
        )
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise CliError(
            f"--collection {spec!r}: cannot import {module_name}: {exc}", ExitCode.USAGE
        ) from exc
    found: Any = module
    for part in attribute.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise CliError(
                f"--collection {spec!r}: module {module_name} has no {attribute}", ExitCode.USAGE
            ) from None
    if not (isinstance(found, type) and issubclass(found, Collection)):
        raise CliError(
            f"--collection {spec!r}: {attribute} is not a Collection subclass (got {found!r})",
            ExitCode.USAGE,
        )
    return found


async def open_database(
    env: AsyncEnvironment,
    name: str | None,
    collection: type[Collection[Any, Any]] | None,
    *,
    create: bool = False,
) -> AsyncDatabase[Any, Any]:
    """The database ``name`` (bytes keys and values), or the collection ``collection``
    (its own name, coders and indexes); unless ``create``, only one that exists."""
    try:
        if collection is None:
            return await env.open_db_async(name, create=create)
        if collection.name is not None:
            await env.open_db_async(collection.name, create=create)
        if create:
            return await collection.open(env)
        opened = collection(env, create=False)
        await opened.access.until_open(None)
        return opened
    except DatabaseNotFoundError as exc:
        raise CliError(str(exc), ExitCode.NOT_FOUND) from exc
