"""The LMDB engine: one memory-mapped file, one writer thread, hop-free reads.

Imported only when a path names an LMDB environment (``aiolmdb.open(path)``).
"""

from .engine import LMDB_CAPABILITIES, LmdbEngine, LmdbSettings, version
from .views import LmdbReadView, LmdbWriteView

__all__ = [
    "LMDB_CAPABILITIES",
    "LmdbEngine",
    "LmdbReadView",
    "LmdbSettings",
    "LmdbWriteView",
    "version",
]
