"""The memory engine's read and write views, and running a function on one."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

from ...errors import AiolmdbError, DatabaseDroppedError, TransactionError
from ..base import Buffer, WriteView
from ..keyspace import MAX_KEY_SIZE, Keyspace, checked_key, refuse_negative_limit
from ..waiting import call_awaitably
from .image import Image
from .store import Store
from .table import Table, seek

__all__ = ["MAX_KEY_SIZE", "MemoryReadView", "MemoryWriteView", "run_on"]

R = TypeVar("R")
V = TypeVar("V", bound="MemoryReadView")


def run_on(view: V, fn: Callable[[V], R]) -> R:
    """``fn(view)``, after which the view is closed (a ``StopIteration`` becomes a
    ``RuntimeError``, as every function an engine runs for an awaiting caller)."""
    try:
        return call_awaitably(fn, view)
    finally:
        view.close()


class MemoryReadView:
    """The tables as they are (``image`` None) or as ``image`` saw them, for one function."""

    __slots__ = ("_image", "_open")

    def __init__(self, image: Image | None) -> None:
        self._image = image
        self._open = True

    def close(self) -> None:
        """The function it was given to returned: the view refuses every call from now."""
        self._open = False

    def _check_open(self) -> None:
        if not self._open:
            raise TransactionError(
                "a view of the memory engine was used after the function it was given to returned"
            )

    def _table(self, keyspace: Keyspace) -> Table:
        self._check_open()
        table = keyspace.handle
        if not isinstance(table, Table):
            keyspace.check()  # pending or failed: says why
            raise AiolmdbError(f"{keyspace.label} is not a keyspace of the memory engine")
        if table.dropped and (self._image is None or table not in self._image.alive):
            raise DatabaseDroppedError(
                f"database {keyspace.label} was dropped (drop(delete=True)); "
                "open it again to recreate it"
            )
        return table

    def _value(self, table: Table, key: bytes) -> bytes | None:
        image = self._image
        if image is not None and image.knows(table, key):
            return image.old(table, key)
        return table.records.get(key)

    def get(self, keyspace: Keyspace, key: bytes) -> Buffer | None:
        """The value stored under ``key``, or None."""
        return self._value(self._table(keyspace), key)

    def get_many(self, keyspace: Keyspace, keys: Sequence[bytes]) -> list[Buffer | None]:
        """The values of ``keys``, in their order (None for a missing one)."""
        table = self._table(keyspace)
        return [self._value(table, key) for key in keys]

    def range(
        self,
        keyspace: Keyspace,
        low: bytes | None = None,
        high: bytes | None = None,
        *,
        reverse: bool = False,
        after: bytes | None = None,
        limit: int | None = None,
    ) -> Iterator[tuple[bytes, Buffer]]:
        """Records with ``low <= key < high`` in key order (highest first when ``reverse``),
        only those strictly beyond ``after``, at most ``limit``; lazy."""
        refuse_negative_limit(keyspace, limit)
        return self._records(self._table(keyspace), low, high, reverse, after, limit)

    def _records(
        self,
        table: Table,
        low: bytes | None,
        high: bytes | None,
        reverse: bool,
        after: bytes | None,
        limit: int | None,
    ) -> Iterator[tuple[bytes, Buffer]]:
        # (bound, inclusive): where the next key is sought from.
        if reverse:
            bound, inclusive = high, False
            if after is not None and (bound is None or after < bound):
                bound = after
        else:
            bound, inclusive = low, True
            if after is not None and (low is None or after >= low):
                bound, inclusive = after, False
        given = 0
        while limit is None or given < limit:
            self._check_open()
            found = self._next(table, bound, inclusive, reverse)
            if found is None:
                return
            key, value = found
            if (low is not None and key < low) if reverse else (high is not None and key >= high):
                return
            yield key, value
            given += 1
            bound, inclusive = key, False

    def _next(
        self, table: Table, bound: bytes | None, inclusive: bool, reverse: bool
    ) -> tuple[bytes, bytes] | None:
        """The first visible record from ``bound`` on, sought afresh in the table and image."""
        image = self._image
        while True:
            key = seek(table.keys, bound, inclusive=inclusive, reverse=reverse)
            if image is not None:
                kept = seek(image.keys(table), bound, inclusive=inclusive, reverse=reverse)
                if kept is not None and (key is None or (kept > key if reverse else kept < key)):
                    key = kept
            if key is None:
                return None
            value = self._value(table, key)
            if value is not None:
                return key, value
            bound, inclusive = key, False  # written since the image began: not seen here

    def count(self, keyspace: Keyspace, low: bytes | None = None, high: bytes | None = None) -> int:
        """How many keys ``low <= key < high`` holds (every key by default)."""
        table = self._table(keyspace)
        if low is not None and high is not None and low >= high:
            return 0
        total = table.count(low, high)
        image = self._image
        if image is not None:
            for key in image.keys_between(table, low, high):
                total += (image.old(table, key) is not None) - (key in table.records)
        return total


class MemoryWriteView(MemoryReadView):
    """The tables as they are, inside the write transaction: every write goes through
    the store, which tells each open image."""

    __slots__ = ("_store",)

    def __init__(self, store: Store) -> None:
        super().__init__(None)
        self._store = store

    def put(self, keyspace: Keyspace, key: bytes, value: bytes, *, overwrite: bool = True) -> bool:
        """Store ``value`` under ``key``; False (nothing written) when it exists and not
        ``overwrite``."""
        table = self._table(keyspace)
        key = checked_key(keyspace, key)
        if not overwrite and key in table.records:
            return False
        self._store.put(table, key, bytes(value))
        return True

    def put_many(
        self, keyspace: Keyspace, items: Sequence[tuple[bytes, bytes]], *, overwrite: bool = True
    ) -> int:
        """Store many records; how many were written (existing keys skipped unless
        ``overwrite``)."""
        return sum(self.put(keyspace, key, value, overwrite=overwrite) for key, value in items)

    def delete(self, keyspace: Keyspace, key: bytes) -> bool:
        """Delete ``key``; whether it was stored."""
        return self._store.delete(self._table(keyspace), key)

    def clear(self, keyspace: Keyspace) -> None:
        """Delete every record of the keyspace (which stays)."""
        self._store.clear(self._table(keyspace))

    def drop(self, keyspace: Keyspace) -> None:
        """Delete the keyspace itself, with its records; the keyspace is dead at once.

        As LMDB closes a dropped database's handle whatever becomes of the
        transaction; if the drop is undone, opening the name again finds the
        records.
        """
        table = self._table(keyspace)
        keyspace.dropped = True
        self._store.drop(table)

    def atomically(self, fn: Callable[[WriteView], R]) -> R:
        """``fn(self)``, its writes undone if it raises."""
        self._check_open()
        image = self._store.begin_image()
        try:
            result = fn(self)
        except BaseException:
            self._store.restore(image)
            raise
        self._store.end_image(image)
        return result
