"""``ReadLog``: what an optimistic transaction read from its snapshot, and whether it
still holds when the transaction commits.

Point reads keep the bytes read (or that the key was missing). Range reads
keep every record they were given, and whether they ran to the range's end:
validating re-reads the same range as far as it was read, so a record
inserted into it, or deleted from it, is a change as much as a value
changed. Counts keep the number counted.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

from ..base import Buffer, ReadView
from ..keyspace import Keyspace

__all__ = ["RangeRead", "ReadLog"]


@dataclasses.dataclass
class RangeRead:
    """One range read as far as the transaction consumed it."""

    keyspace: Keyspace
    low: bytes | None
    high: bytes | None
    reverse: bool
    after: bytes | None
    #: The records given, in order.
    seen: list[tuple[bytes, bytes]] = dataclasses.field(default_factory=list)
    #: True once the range was read to its end: nothing may join it.
    complete: bool = False

    def track(self, records: Iterator[tuple[bytes, Buffer]]) -> Iterator[tuple[bytes, Buffer]]:
        """``records``, each one logged as it is given."""
        seen = self.seen
        for key, value in records:
            seen.append((bytes(key), bytes(value)))
            yield key, value
        self.complete = True

    def change(self, view: ReadView) -> str | None:
        """What changed in the range, as far as it was read, since then (None: nothing)."""
        records = view.range(
            self.keyspace, self.low, self.high, reverse=self.reverse, after=self.after
        )
        seen = iter(self.seen)
        for now_key, now_value in records:
            then = next(seen, None)
            if then is None:
                if self.complete:
                    return f"key {bytes(now_key)!r} was written into a range it read to its end"
                return None  # beyond what was read
            key, value = then
            if now_key != key:
                return f"a range it read changed at key {key!r}"
            if now_value != value:
                return f"key {key!r}, read in a range, changed"
        missing = next(seen, None)
        if missing is not None:
            return f"key {missing[0]!r}, read in a range, was deleted"
        return None


class ReadLog:
    """Every read an optimistic transaction made from its snapshot."""

    def __init__(self) -> None:
        self._points: dict[tuple[Keyspace, bytes], bytes | None] = {}
        self._ranges: list[RangeRead] = []
        self._counts: list[tuple[Keyspace, bytes | None, bytes | None, int]] = []

    def point(self, keyspace: Keyspace, key: bytes, value: Buffer | None) -> None:
        """``key`` was read and held ``value`` (None: missing)."""
        self._points.setdefault((keyspace, key), None if value is None else bytes(value))

    def range(
        self,
        keyspace: Keyspace,
        low: bytes | None,
        high: bytes | None,
        reverse: bool,
        after: bytes | None,
    ) -> RangeRead:
        """A range read beginning: log its records through the returned ``RangeRead``."""
        read = RangeRead(keyspace, low, high, reverse, after)
        self._ranges.append(read)
        return read

    def count(self, keyspace: Keyspace, low: bytes | None, high: bytes | None, n: int) -> None:
        """The keys ``low <= key < high`` were counted: ``n``."""
        self._counts.append((keyspace, low, high, n))

    def change(self, view: ReadView) -> str | None:
        """What changed, as seen by ``view``, since the transaction read it (None: nothing)."""
        for (keyspace, key), value in self._points.items():
            if view.get(keyspace, key) != value:  # a buffer compares by its bytes
                return f"key {key!r} of {keyspace.label} changed after the transaction read it"
        for read in self._ranges:
            change = read.change(view)
            if change is not None:
                return f"{change} ({read.keyspace.label})"
        for keyspace, low, high, n in self._counts:
            if view.count(keyspace, low, high) != n:
                return f"the number of keys in a range of {keyspace.label} it counted changed"
        return None
