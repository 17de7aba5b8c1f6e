"""``Table``: one keyspace's records of the memory engine, in byte-wise key order."""

from __future__ import annotations

from bisect import bisect_left, bisect_right

__all__ = ["Table", "seek"]


def seek(keys: list[bytes], bound: bytes | None, *, inclusive: bool, reverse: bool) -> bytes | None:
    """The first key of sorted ``keys`` after ``bound`` (before it when ``reverse``).

    ``inclusive``: ``bound`` itself may be given. ``bound`` None: from the
    first key (the last, reversed). Seeking afresh from the last key given,
    instead of keeping a position, is what lets a range read go on while the
    same transaction writes to the keyspace.
    """
    if reverse:
        i = (
            len(keys)
            if bound is None
            else (bisect_right if inclusive else bisect_left)(keys, bound)
        )
        return keys[i - 1] if i > 0 else None
    i = 0 if bound is None else (bisect_left if inclusive else bisect_right)(keys, bound)
    return keys[i] if i < len(keys) else None


class Table:
    """The records of one keyspace: a dict for lookups, a sorted list for order.

    The sorted list is brought up to date when an ordered read needs it, not
    at every write: a run of writes costs a dict update each and one sort
    afterwards (Timsort merges the new keys into the sorted run), instead of
    moving the list's tail at every insert. Changed only through
    :class:`~aiolmdb.storage.memory.store.Store`, which tells every open image first.
    """

    __slots__ = ("_added", "_removed", "_sorted", "dropped", "label", "records")

    def __init__(self, label: str) -> None:
        #: How messages name the keyspace.
        self.label = label
        self.records: dict[bytes, bytes] = {}
        self._sorted: list[bytes] = []
        # Keys stored but not in _sorted yet, and keys in _sorted no longer stored.
        self._added: set[bytes] = set()
        self._removed: set[bytes] = set()
        #: Set once a drop deleted the keyspace.
        self.dropped = False

    @property
    def keys(self) -> list[bytes]:
        """Every key of ``records``, sorted byte by byte (as LMDB's memcmp orders them)."""
        if self._removed:
            removed = self._removed
            self._sorted = [key for key in self._sorted if key not in removed]
            self._removed = set()
        if self._added:
            self._sorted.extend(self._added)
            self._sorted.sort()
            self._added = set()
        return self._sorted

    def set(self, key: bytes, value: bytes) -> None:
        """Store ``value`` under ``key``."""
        if key not in self.records:
            if key in self._removed:
                self._removed.discard(key)  # still in the sorted list
            else:
                self._added.add(key)
        self.records[key] = value

    def remove(self, key: bytes) -> bool:
        """Delete ``key``; whether it was stored."""
        if self.records.pop(key, None) is None:
            return False
        if key in self._added:
            self._added.discard(key)  # never reached the sorted list
        else:
            self._removed.add(key)
        return True

    def clear(self) -> None:
        """Delete every record."""
        self.records.clear()
        self._sorted = []
        self._added = set()
        self._removed = set()

    def count(self, low: bytes | None, high: bytes | None) -> int:
        """How many keys ``low <= key < high`` holds."""
        if low is None and high is None:
            return len(self.records)
        keys = self.keys
        start = 0 if low is None else bisect_left(keys, low)
        end = len(keys) if high is None else bisect_left(keys, high)
        return max(0, end - start)

    def __repr__(self) -> str:
        state = " dropped" if self.dropped else ""
        return f"<Table {self.label}{state}: {len(self.records)} records>"
