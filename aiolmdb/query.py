"""Range queries written once, for databases, collections and indexes alike.

:class:`Ranged` gives ``items``, ``keys``, ``values``, ``first`` and
``last`` over a :class:`RangeSource`: what turns bounds into raw key
ranges and streams the records of a range. A database's source reads its
own keyspace; an index's reads its entries and fetches the records they name.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

if TYPE_CHECKING:
    from .transaction import Transaction

__all__ = ["Part", "RangeSource", "Ranged"]

B = TypeVar("B")
B_contra = TypeVar("B_contra", contravariant=True)
K = TypeVar("K")
V = TypeVar("V")


class Part(enum.Enum):
    """What a scan gives for each record."""

    ITEMS = enum.auto()
    KEYS = enum.auto()
    VALUES = enum.auto()


class RangeSource(Protocol[B_contra]):
    """What :class:`Ranged` queries run on: bounds of type ``B``, records in key order."""

    def key_range(
        self, start: B_contra | None, stop: B_contra | None, prefix: object
    ) -> tuple[bytes | None, bytes | None]:
        """The raw range ``[low, high)`` of ``start``, ``stop`` and ``prefix``."""
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


class Ranged(Generic[B, K, V]):
    """Range queries over records keyed ``K`` holding ``V``, bounded by values of ``B``.

    For a database or collection ``B`` is its key type; for an index, its
    index key type.
    """

    def __init__(self, ranges: RangeSource[B]) -> None:
        self._ranges = ranges

    def items(
        self,
        start: B | None = None,
        stop: B | None = None,
        *,
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

        Records are read in batches (the first small one on the event loop,
        later ones off it), so memory stays bounded and the loop keeps
        running. Each batch is read in a read of its own, and none is held
        open while your loop body runs: writes made meanwhile may show in
        later batches. For one consistent view of the whole scan, iterate
        inside ``env.transaction(write=False)``.
        """
        return self._scan(start, stop, prefix, reverse, limit, txn, Part.ITEMS)

    def keys(
        self,
        start: B | None = None,
        stop: B | None = None,
        *,
        prefix: object = None,
        reverse: bool = False,
        limit: int | None = None,
        txn: Transaction | None = None,
    ) -> AsyncIterator[K]:
        """Iterate over keys in order; same arguments as :meth:`items`."""
        return self._scan(start, stop, prefix, reverse, limit, txn, Part.KEYS)

    def values(
        self,
        start: B | None = None,
        stop: B | None = None,
        *,
        prefix: object = None,
        reverse: bool = False,
        limit: int | None = None,
        txn: Transaction | None = None,
    ) -> AsyncIterator[V]:
        """Iterate over values in order; same arguments as :meth:`items`."""
        return self._scan(start, stop, prefix, reverse, limit, txn, Part.VALUES)

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
        prefix: object,
        reverse: bool,
        limit: int | None,
        txn: Transaction | None,
        part: Part,
    ) -> AsyncIterator[Any]:
        low, high = self._ranges.key_range(start, stop, prefix)
        return self._ranges.scan(low, high, reverse=reverse, limit=limit, txn=txn, part=part)
