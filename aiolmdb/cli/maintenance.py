"""LMDB's own maintenance: ``copy`` (a backup, compacted or not) and ``readers``."""

from __future__ import annotations

import os
from pathlib import Path

from ..environment import AsyncEnvironment
from ..errors import UnsupportedError
from ..storage.locations import EngineKind, engine_kind
from .errors import CliError, ExitCode
from .target import LMDB_DATA_FILE

__all__ = ["copy_environment", "reader_table"]


def _unsupported(exc: UnsupportedError, instead: str) -> CliError:
    return CliError(f"{exc}; {instead}", ExitCode.UNSUPPORTED)


async def copy_environment(env: AsyncEnvironment, destination: str, *, compact: bool) -> None:
    """Write a consistent copy of the LMDB environment into the directory
    ``destination`` (created if missing; it must not hold an environment already).

    ``compact`` leaves out free pages (and renumbers the rest): a smaller copy.
    """
    target = Path(destination)
    if (target / LMDB_DATA_FILE).exists():
        raise CliError(
            f"{destination} holds an LMDB environment already: copy into a new directory",
            ExitCode.USAGE,
        )
    try:
        env.require_lmdb("copy")
    except UnsupportedError as exc:
        raise _unsupported(exc, "use `aiolmdb dump` (or the server's own backup)") from exc
    os.makedirs(target, exist_ok=True)
    await env.copy(target, compact=compact)


def reader_table(location: str, *, clear_stale: bool) -> tuple[str, int | None]:
    """LMDB's reader table at ``location`` (one line per slot in use: pid, thread,
    transaction), after freeing the slots of processes that died when ``clear_stale``
    (how many were freed; None otherwise).

    The table is read without opening the environment for use (see
    :func:`aiolmdb.storage.lmdb.read_reader_table`).
    """
    if engine_kind(location) is not EngineKind.LMDB:
        raise CliError(
            f"readers: {location.split('://', 1)[0]}:// locations have no reader table: "
            "only LMDB's environments have one",
            ExitCode.UNSUPPORTED,
        )
    # Here, not at the top: only this command loads the LMDB engine before a location
    # names it.
    from ..storage.lmdb import RawError, read_reader_table

    try:
        table = read_reader_table(location, clear_stale=clear_stale)
    except RawError as exc:
        raise CliError(f"readers: {location}: {exc}", ExitCode.PROBLEMS) from exc
    return table.text, table.cleared
