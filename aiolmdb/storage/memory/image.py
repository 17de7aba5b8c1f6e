"""``Image``: what the tables held when it began, for every key changed since.

One mechanism serves every need of the memory engine for an earlier state:
a read snapshot sees the tables through its image; reads made while a write
transaction is open see them through the transaction's image (its
uncommitted writes are already in the tables); and undoing a transaction, a
savepoint or an ``atomically`` block puts its image's values back. Each
change costs one entry per open image, never a copy of a table.
"""

from __future__ import annotations

from bisect import bisect_left

from .table import Table

__all__ = ["Image"]


class Image:
    """The first value (None: absent) each changed key had since the image began."""

    __slots__ = ("_old", "_sorted", "alive")

    def __init__(self, like: Image | None = None) -> None:
        # table -> key -> the value it had when the image began (None: absent).
        self._old: dict[Table, dict[bytes, bytes | None]] = {}
        # table -> the keys of _old[table], sorted; rebuilt after a key is added.
        self._sorted: dict[Table, list[bytes]] = {}
        #: Tables dropped since the image began (they were alive then).
        self.alive: set[Table] = set()
        if like is not None:
            self._old = {table: dict(old) for table, old in like._old.items()}
            self.alive = set(like.alive)

    def record(self, table: Table, key: bytes, old: bytes | None) -> None:
        """``key`` of ``table`` is about to change; it holds ``old`` now."""
        changed = self._old.setdefault(table, {})
        if key not in changed:
            changed[key] = old
            self._sorted.pop(table, None)

    def record_drop(self, table: Table) -> None:
        """``table`` is about to be dropped."""
        if not table.dropped:
            self.alive.add(table)

    def knows(self, table: Table, key: bytes) -> bool:
        """True when ``key`` changed since the image began (:meth:`old` gives its value)."""
        changed = self._old.get(table)
        return changed is not None and key in changed

    def old(self, table: Table, key: bytes) -> bytes | None:
        """The value ``key`` had when the image began (None: absent); see :meth:`knows`."""
        return self._old[table][key]

    def keys(self, table: Table) -> list[bytes]:
        """The changed keys of ``table``, sorted."""
        keys = self._sorted.get(table)
        if keys is None:
            keys = self._sorted[table] = sorted(self._old.get(table, ()))
        return keys

    def keys_between(self, table: Table, low: bytes | None, high: bytes | None) -> list[bytes]:
        """The changed keys ``low <= key < high`` of ``table``, sorted."""
        keys = self.keys(table)
        start = 0 if low is None else bisect_left(keys, low)
        end = len(keys) if high is None else bisect_left(keys, high)
        return keys[start:end]

    def changes(self) -> list[tuple[Table, bytes, bytes | None]]:
        """Every (table, key, value when the image began)."""
        return [(t, key, old) for t, changed in self._old.items() for key, old in changed.items()]
