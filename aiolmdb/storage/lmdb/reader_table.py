"""LMDB's reader table of an environment on disk, read without opening it for use."""

from __future__ import annotations

import dataclasses

import lmdb

__all__ = ["ReaderTable", "read_reader_table"]


@dataclasses.dataclass(frozen=True)
class ReaderTable:
    """The slots in use of an environment's reader table."""

    #: One line per slot in use (pid, thread, transaction), as LMDB prints them.
    text: str
    #: How many slots of processes that died were freed first (None: none were asked to be).
    cleared: int | None


def read_reader_table(path: str, *, clear_stale: bool) -> ReaderTable:
    """The reader table of the LMDB environment at ``path``, after freeing the slots of
    processes that died when ``clear_stale``.

    Read through a bare read-only handle rather than an opened engine, whose open
    would clear the stale slots first and take a slot of its own. Raises py-lmdb's
    ``lmdb.Error`` when ``path`` cannot be read as an environment.
    """
    env = lmdb.open(path, readonly=True, create=False, max_dbs=0)
    try:
        cleared = env.reader_check() if clear_stale else None
        return ReaderTable(env.readers(), cleared)
    finally:
        env.close()
