"""The LMDB engine: one memory-mapped file, one writer thread, hop-free reads.

Imported only when a path names an LMDB environment (``aiolmdb.open(path)``).
"""

import lmdb

from .engine import LMDB_CAPABILITIES, LmdbEngine, LmdbSettings, version
from .reader_table import ReaderTable, read_reader_table
from .views import LmdbReadView, LmdbWriteView

#: py-lmdb's own types, as what only LMDB has (``env.lmdb_env``, ``run()``'s raw
#: transaction and cursors) is typed above the seam, which imports no py-lmdb.
RawEnvironment = lmdb.Environment
RawTransaction = lmdb.Transaction
RawCursor = lmdb.Cursor
#: What py-lmdb raises for an environment it cannot use.
RawError = lmdb.Error

__all__ = [
    "LMDB_CAPABILITIES",
    "LmdbEngine",
    "LmdbReadView",
    "LmdbSettings",
    "LmdbWriteView",
    "RawCursor",
    "RawEnvironment",
    "RawError",
    "RawTransaction",
    "ReaderTable",
    "read_reader_table",
    "version",
]
