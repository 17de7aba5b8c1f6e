"""Range queries written once, for databases, collections and indexes alike.

:class:`Ranged` gives ``items``, ``keys``, ``values``, ``first`` and
``last`` over a :class:`RangeSource`: what turns bounds into raw key
ranges and streams the records of a range. A database's source reads its
own keyspace; an index's reads its entries and fetches the records they name.

Bounds meet in :class:`RangeBounds`: ``start`` (inclusive), ``stop``
(exclusive) and ``prefix`` make one raw range ``[low, high)``, and ``after``
narrows it to what lies past a key already seen, in the scan's direction.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

if TYPE_CHECKING:
    from .transaction import Transaction

__all__ = ["Part", "RangeBounds", "RangeSource", "Ranged"]

B = TypeVar("B")
B_contra = TypeVar("B_contra", contravariant=True)
A = TypeVar("A")
A_contra = TypeVar("A_contra", contravariant=True)
K = TypeVar("K")
V = TypeVar("V")


class Part(enum.Enum):
    """What a scan gives for each record."""

    ITEMS = enum.auto()
    KEYS = enum.auto()
    VALUES = enum.auto()


class RangeSource(Protocol[B_contra, A_contra]):
    """What :class:`Ranged` queries run on: bounds of type ``B``, ``after`` cursors of
    type ``A``, records in key order."""

    @property
    def label(self) -> str:
        """How messages name what is queried ("database 'users'", "index ...")."""
        ...

    def key_range(
        self, start: B_contra | None, stop: B_contra | None, prefix: object
    ) -> tuple[bytes | None, bytes | None]:
        """The raw range ``[low, high)`` of ``start``, ``stop`` and ``prefix``."""
        ...

    def resume_range(self, after: A_contra) -> tuple[bytes, bytes | None]:
        """The raw range ``[at, past)`` holding exactly what ``after`` names (``past``
        None: every raw key from ``at`` on)."""
        ...

    def scan(
        self,
        low: bytes | None,
        high: bytes | None,
        *,
        reverse: bool,
        limit: int | None,
        txn: Transaction | None,
        part: Part,
    ) -> AsyncIterator[Any]:
        """The records of ``[low, high)`` in order, each made into ``part``."""
        ...

    async def count(self, low: bytes | None, high: bytes | None, txn: Transaction | None) -> int:
        """How many records ``[low, high)`` holds."""
        ...


class RangeBounds(Generic[B, A]):
    """Turns the bounds of a query into the raw range of a :class:`RangeSource`."""

    def __init__(self, ranges: RangeSource[B, A]) -> None:
        self._ranges = ranges

    def raw(
        self,
        start: B | None,
        stop: B | None,
        prefix: object,
        after: A | None,
        reverse: bool,
    ) -> tuple[bytes | None, bytes | None]:
        """The raw range ``[low, high)`` a scan (or count) of these bounds reads.

        ``after`` continues a scan past the last key it gave, in its
        direction: going forward it keeps what sorts above ``after``, in
        reverse what sorts below it. It takes the place of the bound the scan
        begins at (``start`` going forward, ``stop`` in reverse), so giving
        both is a TypeError; the bound at the other end and ``prefix`` still
        apply.
        """
        if after is not None and (stop if reverse else start) is not None:
            begins_at = "stop" if reverse else "start"
            direction = "a reverse scan" if reverse else "a scan"
            raise TypeError(
                f"{self._ranges.label}: {begins_at}= and after= were both given: after= "
                f"takes the place of {begins_at}= in {direction} (it continues past the "
                "last key seen); give one of them"
            )
        low, high = self._ranges.key_range(start, stop, prefix)
        if after is None:
            return low, high
        at, past = self._ranges.resume_range(after)
        if reverse:
            return low, at if high is None else min(high, at)
        if past is None:  # nothing sorts above after
            return at, at
        return past if low is None else max(low, past), high


class Ranged(Generic[B, A, K, V]):
    """Range queries over records keyed ``K`` holding ``V``, bounded by values of ``B``,
    resumed ``after`` a value of ``A``.

    For a database or collection ``B`` and ``A`` are its key type; for an
    index, ``B`` is its index key type and ``A`` that or an index cursor.
    """

    def __init__(self, ranges: RangeSource[B, A], bounds: RangeBounds[B, A]) -> None:
        """``bounds`` turns the bounds of a query into a raw range of ``ranges`` (the
        subclass keeps it too, for its own queries)."""
        self._ranges = ranges
        self._bounds = bounds

    def items(
        self,
        start: B | None = None,
        stop: B | None = None,
        *,
        after: A | None = None,
        prefix: object = None,
        reverse: bool = False,
        limit: int | None = None,
        txn: Transaction | None = None,
    ) -> AsyncIterator[tuple[K, V]]:
        """Iterate over ``(key, value)`` pairs in order.

        ``start`` is inclusive, ``stop`` exclusive; ``prefix`` keeps keys that
        start with it (a leading part of a tuple key, or of a string/bytes
        key). Bounds and prefixes need an ordered coder. ``reverse``
        iterates from the highest key down; ``limit`` caps the count.

        ``after`` is for keyset pagination: it continues past the last key a
        scan gave, in the scan's direction (keys above it going forward,
        below it in reverse), within ``stop`` or ``start`` and ``prefix``. It
        takes the place of ``start`` going forward and of ``stop`` in reverse:
        giving both raises TypeError.

        Records are read in batches (the first small one on the event loop,
        later ones off it), so memory stays bounded and the loop keeps
        running. Each batch is read in a read of its own, and none is held
        open while your loop body runs: writes made meanwhile may show in
        later batches. For one consistent view of the whole scan, iterate
        inside ``env.transaction(write=False)``.
        """
        return self._scan(start, stop, after, prefix, reverse, limit, txn, Part.ITEMS)

    def keys(
        self,
        start: B | None = None,
        stop: B | None = None,
        *,
        after: A | None = None,
        prefix: object = None,
        reverse: bool = False,
        limit: int | None = None,
        txn: Transaction | None = None,
    ) -> AsyncIterator[K]:
        """Iterate over keys in order; same arguments as :meth:`items`."""
        return self._scan(start, stop, after, prefix, reverse, limit, txn, Part.KEYS)

    def values(
        self,
        start: B | None = None,
        stop: B | None = None,
        *,
        after: A | None = None,
        prefix: object = None,
        reverse: bool = False,
        limit: int | None = None,
        txn: Transaction | None = None,
    ) -> AsyncIterator[V]:
        """Iterate over values in order; same arguments as :meth:`items`."""
        return self._scan(start, stop, after, prefix, reverse, limit, txn, Part.VALUES)

    async def first(self, *, txn: Transaction | None = None) -> tuple[K, V] | None:
        """The first record in order, or None when there is none."""
        async for item in self.items(limit=1, txn=txn):
            return item
        return None

    async def last(self, *, txn: Transaction | None = None) -> tuple[K, V] | None:
        """The last record in order, or None when there is none."""
        async for item in self.items(limit=1, reverse=True, txn=txn):
            return item
        return None

    def _scan(
        self,
        start: B | None,
        stop: B | None,
        after: A | None,
        prefix: object,
        reverse: bool,
        limit: int | None,
        txn: Transaction | None,
        part: Part,
    ) -> AsyncIterator[Any]:
        low, high = self._bounds.raw(start, stop, prefix, after, reverse)
        return self._ranges.scan(low, high, reverse=reverse, limit=limit, txn=txn, part=part)
