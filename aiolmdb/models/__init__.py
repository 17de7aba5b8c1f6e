"""The typed model layer: collections declared as classes, compiled to database calls."""

from .collection import Collection

__all__ = ["Collection"]
