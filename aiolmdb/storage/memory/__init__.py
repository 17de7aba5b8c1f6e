"""The in-memory engine: ``aiolmdb.open(":memory:")``, ordered and transactional, no disk.

The engine for users' own unit tests: same semantics as the LMDB engine,
and each :class:`MemoryEngine` is a fresh, independent store.
"""

from .engine import MemoryEngine

__all__ = ["MemoryEngine"]
