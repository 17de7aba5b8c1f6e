"""``Store``: every change of the memory engine's tables, told first to each open image."""

from __future__ import annotations

from .image import Image
from .table import Table

__all__ = ["Store"]


class Store:
    """The one place tables change: each open image hears of a change before it is made.

    The tables always hold the newest state, the open write transaction's
    uncommitted writes included; :attr:`committed` is that transaction's
    image, through which every other reader sees the committed state.
    """

    __slots__ = ("_images", "committed")

    def __init__(self) -> None:
        self._images: set[Image] = set()
        #: The image of the write transaction in progress (None: none is).
        self.committed: Image | None = None

    def begin_image(self, like: Image | None = None) -> Image:
        """An image of the tables as they are now (``like``: as ``like`` sees them)."""
        image = Image(like)
        self._images.add(image)
        return image

    def end_image(self, image: Image) -> None:
        """Stop telling ``image`` of changes: the state it kept is no longer wanted."""
        self._images.discard(image)

    def restore(self, image: Image) -> None:
        """Put back what ``image`` kept (undoing every change since it began), and end it."""
        self.end_image(image)
        for table, key, old in image.changes():
            if old is None:
                self.delete(table, key)
            else:
                self.put(table, key, old)
        for table in image.alive:
            table.dropped = False

    def begin_write(self) -> Image:
        """Begin the write transaction: readers see the tables as they are now."""
        assert self.committed is None, "one write transaction at a time"
        image = self.committed = self.begin_image()
        return image

    def end_write(self, *, commit: bool) -> None:
        """Commit the write transaction, or undo it."""
        image = self.committed
        assert image is not None, "no write transaction is open"
        self.committed = None
        if commit:
            self.end_image(image)
        else:
            self.restore(image)

    def put(self, table: Table, key: bytes, value: bytes) -> None:
        """Store ``value`` under ``key``."""
        old = table.records.get(key)
        for image in self._images:
            image.record(table, key, old)
        table.set(key, value)

    def delete(self, table: Table, key: bytes) -> bool:
        """Delete ``key``; whether it was stored."""
        old = table.records.get(key)
        if old is None:
            return False
        for image in self._images:
            image.record(table, key, old)
        return table.remove(key)

    def clear(self, table: Table) -> None:
        """Delete every record of ``table``."""
        for image in self._images:
            for key, old in table.records.items():
                image.record(table, key, old)
        table.clear()  # at once: deleting key by key would shift the sorted keys each time

    def drop(self, table: Table) -> None:
        """Delete ``table`` with its records."""
        for image in self._images:
            image.record_drop(table)
        self.clear(table)
        table.dropped = True
