"""``Table``: one keyspace's records of the memory engine, in byte-wise key order."""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort

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

    Changed only through :class:`~aiolmdb.storage.memory.store.Store`, which
    tells every open image first.
    """

    __slots__ = ("dropped", "keys", "label", "records")

    def __init__(self, label: str) -> None:
        #: How messages name the keyspace.
        self.label = label
        self.records: dict[bytes, bytes] = {}
        #: Every key of ``records``, sorted byte by byte (as LMDB's memcmp orders them).
        self.keys: list[bytes] = []
        #: Set once a drop deleted the keyspace.
        self.dropped = False

    def set(self, key: bytes, value: bytes) -> None:
        """Store ``value`` under ``key``."""
        if key not in self.records:
            insort(self.keys, key)
        self.records[key] = value

    def remove(self, key: bytes) -> bool:
        """Delete ``key``; whether it was stored."""
        if self.records.pop(key, None) is None:
            return False
        del self.keys[bisect_left(self.keys, key)]
        return True

    def clear(self) -> None:
        """Delete every record."""
        self.records.clear()
        self.keys.clear()

    def count(self, low: bytes | None, high: bytes | None) -> int:
        """How many keys ``low <= key < high`` holds."""
        start = 0 if low is None else bisect_left(self.keys, low)
        end = len(self.keys) if high is None else bisect_left(self.keys, high)
        return max(0, end - start)

    def __repr__(self) -> str:
        state = " dropped" if self.dropped else ""
        return f"<Table {self.label}{state}: {len(self.keys)} records>"
