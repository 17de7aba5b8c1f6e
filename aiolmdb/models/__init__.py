"""The typed model layer: collections declared as classes, with secondary indexes."""

from .collection import Collection, IndexProgress
from .index import BoundIndex, Index, IndexCursor, IndexEntry

__all__ = ["BoundIndex", "Collection", "Index", "IndexCursor", "IndexEntry", "IndexProgress"]
