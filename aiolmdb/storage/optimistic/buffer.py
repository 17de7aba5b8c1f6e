"""``WriteBuffer``: the writes of an optimistic transaction, kept until its commit.

Per keyspace, the buffer holds each key written (its new value, or None for
a delete) and whether the keyspace was cleared. An undo log makes a
checkpoint cost nothing: rolling back to one replays the log backwards.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

from ..base import WriteView
from ..keyspace import Keyspace
from .order import SortKey, sort_key

__all__ = ["Overlay", "WriteBuffer"]


@dataclasses.dataclass
class Overlay:
    """What the transaction wrote into one keyspace."""

    keyspace: Keyspace
    #: Each key written: its value, or None when deleted.
    entries: dict[bytes, bytes | None] = dataclasses.field(default_factory=dict)
    #: True when the keyspace was cleared: nothing stored before shows through.
    cleared: bool = False
    _order: SortKey | None = None
    _sorted: list[bytes] | None = None

    def sort_key(self) -> SortKey:
        """The keyspace's order of keys."""
        if self._order is None:
            self._order = sort_key(self.keyspace)
        return self._order

    def between(
        self, low: bytes | None, high: bytes | None, reverse: bool, after: bytes | None
    ) -> list[tuple[bytes, bytes | None]]:
        """The keys written with ``low <= key < high``, strictly beyond ``after``, in the
        keyspace's order (reversed when ``reverse``), with their values."""
        order = self.sort_key()
        if self._sorted is None:
            self._sorted = sorted(self.entries, key=order)
        lowest = None if low is None else order(low)
        highest = None if high is None else order(high)
        beyond = None if after is None else order(after)
        chosen: list[tuple[bytes, bytes | None]] = []
        for key in reversed(self._sorted) if reverse else self._sorted:
            place = order(key)
            below = lowest is not None and place < lowest
            if below or (highest is not None and place >= highest):
                continue
            if beyond is not None and (place >= beyond if reverse else place <= beyond):
                continue
            chosen.append((key, self.entries[key]))
        return chosen

    def changed_keys(self) -> None:
        """The set of keys changed: the sorted list is made again when next needed."""
        self._sorted = None


class _KeyWritten:
    """Undoes one write: what ``key`` held in the overlay before (``known`` False: nothing)."""

    __slots__ = ("before", "key", "known", "overlay")

    def __init__(self, overlay: Overlay, key: bytes, known: bool, before: bytes | None) -> None:
        self.overlay = overlay
        self.key = key
        self.known = known
        self.before = before

    def undo(self) -> None:
        if self.known:
            self.overlay.entries[self.key] = self.before
        else:
            del self.overlay.entries[self.key]
        self.overlay.changed_keys()


class _Cleared:
    """Undoes a clear: the overlay's writes before it."""

    __slots__ = ("cleared", "entries", "overlay")

    def __init__(self, overlay: Overlay, entries: dict[bytes, bytes | None], cleared: bool) -> None:
        self.overlay = overlay
        self.entries = entries
        self.cleared = cleared

    def undo(self) -> None:
        self.overlay.entries, self.overlay.cleared = self.entries, self.cleared
        self.overlay.changed_keys()


class WriteBuffer:
    """Every write of one optimistic transaction, by keyspace, undoable to a checkpoint."""

    def __init__(self) -> None:
        self._overlays: dict[Keyspace, Overlay] = {}
        self._undo: list[_KeyWritten | _Cleared] = []

    def __bool__(self) -> bool:
        # Every write is in the undo log until it is rolled back.
        return bool(self._undo)

    def overlay(self, keyspace: Keyspace) -> Overlay | None:
        """What was written into ``keyspace`` (None: nothing yet)."""
        return self._overlays.get(keyspace)

    def _overlay_for(self, keyspace: Keyspace) -> Overlay:
        overlay = self._overlays.get(keyspace)
        if overlay is None:
            overlay = self._overlays[keyspace] = Overlay(keyspace)
        return overlay

    def set(self, keyspace: Keyspace, key: bytes, value: bytes | None) -> None:
        """Write ``value`` under ``key`` (None: delete it)."""
        overlay = self._overlay_for(keyspace)
        entries = overlay.entries
        known = key in entries
        self._undo.append(_KeyWritten(overlay, key, known, entries.get(key)))
        if not known:
            overlay.changed_keys()
        entries[key] = value

    def clear(self, keyspace: Keyspace) -> None:
        """Delete every record of ``keyspace``."""
        overlay = self._overlay_for(keyspace)
        self._undo.append(_Cleared(overlay, overlay.entries, overlay.cleared))
        overlay.entries = {}
        overlay.cleared = True
        overlay.changed_keys()

    def checkpoint(self) -> int:
        """A mark to roll back to."""
        return len(self._undo)

    def roll_back(self, mark: int) -> None:
        """Undo every write made since ``checkpoint()`` gave ``mark``."""
        while len(self._undo) > mark:
            self._undo.pop().undo()

    def overlays(self) -> Iterator[Overlay]:
        """What was written, keyspace by keyspace."""
        return iter(self._overlays.values())

    def apply(self, view: WriteView) -> None:
        """Make every write on ``view`` (inside the commit's transaction)."""
        for overlay in self._overlays.values():
            keyspace = overlay.keyspace
            if overlay.cleared:
                view.clear(keyspace)
            stored = [(key, value) for key, value in overlay.entries.items() if value is not None]
            if stored:
                view.put_many(keyspace, stored)
            if not overlay.cleared:
                for key, value in overlay.entries.items():
                    if value is None:
                        view.delete(keyspace, key)
