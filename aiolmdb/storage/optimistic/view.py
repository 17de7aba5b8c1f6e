"""``OptimisticView``: the write view of an optimistic transaction's body.

Reads go to the buffer first, then to the snapshot (logged for the commit's
validation); writes go to the buffer only. Scans merge the buffer's keys
into the snapshot's records in the keyspace's order, so the body reads its
own writes everywhere, index queries included: the record and index logic
runs on this view as on any other.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

from ...errors import TransactionError
from ..base import Buffer, ReadView, WriteView
from ..keyspace import Keyspace, checked_key, refuse_negative_limit
from .buffer import Overlay, WriteBuffer
from .reads import ReadLog

__all__ = ["OptimisticView"]

R = TypeVar("R")


class OptimisticView:
    """A :class:`~aiolmdb.storage.WriteView` over a snapshot's view, a write buffer and a
    read log, for one function of the transaction's body."""

    __slots__ = ("_buffer", "_label", "_log", "_snapshot")

    def __init__(self, snapshot: ReadView, buffer: WriteBuffer, log: ReadLog, label: str) -> None:
        self._snapshot = snapshot
        self._buffer = buffer
        self._log = log
        self._label = label

    # -- reads -------------------------------------------------------------

    def get(self, keyspace: Keyspace, key: bytes) -> Buffer | None:
        """The value under ``key``: as written by the transaction, else as in the snapshot."""
        overlay = self._buffer.overlay(keyspace)
        if overlay is not None:
            if key in overlay.entries:
                return overlay.entries[key]
            if overlay.cleared:
                return None
        value = self._snapshot.get(keyspace, key)
        self._log.point(keyspace, key, value)
        return value

    def get_many(self, keyspace: Keyspace, keys: Sequence[bytes]) -> list[Buffer | None]:
        """The values of ``keys``, in their order (None for a missing one)."""
        return [self.get(keyspace, key) for key in keys]

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
        """Records with ``low <= key < high``, the transaction's writes merged in."""
        refuse_negative_limit(keyspace, limit)
        overlay = self._buffer.overlay(keyspace)
        if overlay is not None and overlay.cleared:
            return _limited(_written(overlay.between(low, high, reverse, after)), limit)
        read = self._log.range(keyspace, low, high, reverse, after)
        stored = read.track(self._snapshot.range(keyspace, low, high, reverse=reverse, after=after))
        if overlay is None or not overlay.entries:
            return _limited(stored, limit)
        return _limited(_merged(stored, overlay, low, high, reverse, after), limit)

    def count(self, keyspace: Keyspace, low: bytes | None = None, high: bytes | None = None) -> int:
        """How many keys ``low <= key < high`` holds, the transaction's writes counted."""
        overlay = self._buffer.overlay(keyspace)
        written = [] if overlay is None else overlay.between(low, high, False, None)
        if overlay is not None and overlay.cleared:
            return sum(value is not None for _, value in written)
        total = self._snapshot.count(keyspace, low, high)
        self._log.count(keyspace, low, high, total)
        for key, value in written:
            stored = self._snapshot.get(keyspace, key)
            self._log.point(keyspace, key, stored)
            total += (value is not None) - (stored is not None)
        return total

    # -- writes ------------------------------------------------------------

    def put(self, keyspace: Keyspace, key: bytes, value: bytes, *, overwrite: bool = True) -> bool:
        """Buffer ``value`` under ``key``; False (nothing written) when it exists and not
        ``overwrite``."""
        key = checked_key(keyspace, key)
        if not overwrite and self.get(keyspace, key) is not None:
            return False
        self._buffer.set(keyspace, key, bytes(value))
        return True

    def put_many(
        self, keyspace: Keyspace, items: Sequence[tuple[bytes, bytes]], *, overwrite: bool = True
    ) -> int:
        """Buffer many records; how many were written (existing keys skipped unless
        ``overwrite``)."""
        return sum(self.put(keyspace, key, value, overwrite=overwrite) for key, value in items)

    def delete(self, keyspace: Keyspace, key: bytes) -> bool:
        """Buffer the delete of ``key``; whether it was stored."""
        key = bytes(key)
        stored = self.get(keyspace, key) is not None
        self._buffer.set(keyspace, key, None)
        return stored

    def clear(self, keyspace: Keyspace) -> None:
        """Buffer the delete of every record of the keyspace."""
        self._buffer.clear(keyspace)

    def drop(self, keyspace: Keyspace) -> None:
        """Refused: a drop cannot wait in a buffer (the keyspace dies at once)."""
        raise TransactionError(
            f"{keyspace.label} cannot be dropped inside {self._label}, an optimistic "
            "transaction (its writes wait for its commit): drop it outside, or in a plain "
            "env.transaction()"
        )

    def atomically(self, fn: Callable[[WriteView], R]) -> R:
        """``fn(self)``, its buffered writes undone if it raises."""
        mark = self._buffer.checkpoint()
        try:
            return fn(self)
        except BaseException:
            self._buffer.roll_back(mark)
            raise


def _written(entries: list[tuple[bytes, bytes | None]]) -> Iterator[tuple[bytes, Buffer]]:
    for key, value in entries:
        if value is not None:
            yield key, value


def _limited(
    records: Iterator[tuple[bytes, Buffer]], limit: int | None
) -> Iterator[tuple[bytes, Buffer]]:
    if limit is None:
        yield from records
        return
    if limit == 0:
        return
    for given, record in enumerate(records, 1):
        yield record
        if given == limit:
            return


def _merged(
    stored: Iterator[tuple[bytes, Buffer]],
    overlay: Overlay,
    low: bytes | None,
    high: bytes | None,
    reverse: bool,
    after: bytes | None,
) -> Iterator[tuple[bytes, Buffer]]:
    """``stored`` with the overlay's writes in the range merged in, in the keyspace's order:
    a key written hides the stored one; a key deleted is skipped."""
    order = overlay.sort_key()
    written = overlay.between(low, high, reverse, after)
    position = 0
    for key, value in stored:
        place = order(key)
        while position < len(written):
            written_key, written_value = written[position]
            written_place = order(written_key)
            if written_place > place if reverse else written_place < place:
                position += 1
                if written_value is not None:
                    yield written_key, written_value
                continue
            break
        if position < len(written) and written[position][0] == key:
            written_value = written[position][1]
            position += 1
            if written_value is not None:
                yield key, written_value
            continue
        yield key, value
    for written_key, written_value in written[position:]:
        if written_value is not None:
            yield written_key, written_value
