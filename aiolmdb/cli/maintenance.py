"""LMDB's own maintenance: ``copy`` (a backup, compacted or not) and ``readers``."""

from __future__ import annotations

import os
from pathlib import Path

from ..environment import AsyncEnvironment
from ..errors import UnsupportedError
from .errors import CliError, ExitCode
from .target import LMDB_DATA_FILE

__all__ = ["clear_stale_readers", "copy_environment", "reader_table"]


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


def reader_table(env: AsyncEnvironment) -> str:
    """LMDB's reader table: one line per reader slot in use (pid, thread, transaction)."""
    try:
        return env.readers()
    except UnsupportedError as exc:
        raise _unsupported(exc, "only LMDB has a reader table") from exc


def clear_stale_readers(env: AsyncEnvironment) -> int:
    """Free the reader slots of processes that died; how many were freed."""
    try:
        cleared: int = env.lmdb_env.reader_check()
    except UnsupportedError as exc:
        raise _unsupported(exc, "only LMDB has a reader table") from exc
    return cleared
