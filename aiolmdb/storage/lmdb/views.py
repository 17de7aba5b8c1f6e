"""The views of LMDB transactions that record and index logic reads and writes through."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import lmdb

from ..base import Buffer, WriteView
from ..keyspace import Keyspace

__all__ = ["LmdbReadView", "LmdbWriteView"]

R = TypeVar("R")


class LmdbReadView:
    """A view of one LMDB transaction (read-only use).

    ``txn`` is the raw ``lmdb.Transaction``: what ``AsyncDatabase.run()``
    hands out, and what only this engine has.
    """

    __slots__ = ("txn",)

    def __init__(self, txn: lmdb.Transaction) -> None:
        self.txn = txn

    def detach(self) -> lmdb.Transaction:
        """The transaction, which the view lets go of, for the caller to end.

        py-lmdb frees an ended read transaction's slot in the reader table only
        once nothing refers to it, and a view may outlive its read: in the
        frames of an exception's traceback, kept by whoever caught it.
        """
        txn = self.txn
        del self.txn
        return txn

    def get(self, keyspace: Keyspace, key: bytes) -> Buffer | None:
        return self.txn.get(key, db=keyspace.handle)

    def get_many(self, keyspace: Keyspace, keys: Sequence[bytes]) -> list[Buffer | None]:
        get, db = self.txn.get, keyspace.handle
        return [get(key, db=db) for key in keys]

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
        if limit is not None and limit <= 0:
            return
        # A resume point outside the bounds is the bound itself.
        if after is not None and (
            (reverse and high is not None and after >= high)
            or (not reverse and low is not None and after < low)
        ):
            after = None
        if keyspace.duplicates:
            yield from _first_values(self.txn, keyspace, low, high, reverse, after, limit)
            return
        given = 0
        with self.txn.cursor(keyspace.handle) as cursor:
            if reverse:
                found = _seek_below(cursor, after if after is not None else high)
            else:
                found = _seek_from(cursor, low, after)
            if not found:
                return
            # iternext/iterprev yield the current record first, then move on.
            for view, value in cursor.iterprev() if reverse else cursor.iternext():
                key = bytes(view)  # memoryviews do not compare by order
                if reverse:
                    if low is not None and key < low:
                        return
                elif high is not None and key >= high:
                    return
                yield key, value
                given += 1
                if given == limit:
                    return

    def count(self, keyspace: Keyspace, low: bytes | None = None, high: bytes | None = None) -> int:
        # LMDB's entries count every value of a dupsort database: keys are walked.
        if low is None and high is None and not keyspace.duplicates:
            return int(self.txn.stat(keyspace.handle)["entries"])
        counted = 0
        with self.txn.cursor(keyspace.handle) as cursor:
            step = cursor.next_nodup if keyspace.duplicates else cursor.next
            more = cursor.set_range(low) if low is not None else cursor.first()
            while more:
                if high is not None and bytes(cursor.key()) >= high:
                    break
                counted += 1
                more = step()
        return counted

    def values_of(self, keyspace: Keyspace, key: bytes) -> list[Buffer]:
        with self.txn.cursor(keyspace.handle) as cursor:
            if not cursor.set_key(key):
                return []
            if not keyspace.duplicates:
                return [cursor.value()]
            return list(cursor.iternext_dup())


class LmdbWriteView(LmdbReadView):
    """A view of one LMDB write transaction (on the writer thread)."""

    __slots__ = ("env",)

    def __init__(self, env: lmdb.Environment, txn: lmdb.Transaction) -> None:
        super().__init__(txn)
        #: For nested transactions.
        self.env = env

    def put(self, keyspace: Keyspace, key: bytes, value: bytes, *, overwrite: bool = True) -> bool:
        return self.txn.put(key, value, db=keyspace.handle, overwrite=overwrite)

    def put_many(
        self, keyspace: Keyspace, items: Sequence[tuple[bytes, bytes]], *, overwrite: bool = True
    ) -> int:
        with self.txn.cursor(keyspace.handle) as cursor:
            return int(cursor.putmulti(items, overwrite=overwrite)[1])

    def delete(self, keyspace: Keyspace, key: bytes) -> bool:
        return self.txn.delete(key, db=keyspace.handle)

    def clear(self, keyspace: Keyspace) -> None:
        if keyspace.name is not None:
            self.txn.drop(keyspace.handle, delete=False)
            return
        # The main database also holds one record per named database: LMDB's
        # drop would delete them all. Delete the plain records only.
        with self.txn.cursor(keyspace.handle) as cursor:
            keys = [bytes(key) for key in cursor.iternext(values=False)]
        for key in keys:
            try:
                with self.env.begin(write=True, parent=self.txn) as child:
                    child.delete(key, db=keyspace.handle)
            except lmdb.IncompatibleError:  # a named database's record
                continue

    def add_value(
        self,
        keyspace: Keyspace,
        key: bytes,
        value: bytes,
        *,
        overwrite: bool = True,
        dupdata: bool = True,
    ) -> bool:
        return self.txn.put(key, value, db=keyspace.handle, overwrite=overwrite, dupdata=dupdata)

    def delete_value(self, keyspace: Keyspace, key: bytes, value: bytes) -> bool:
        # A cursor rather than txn.delete(key, value): that deletes every value of the
        # key when ``value`` is empty, which an empty value must not mean here.
        with self.txn.cursor(keyspace.handle) as cursor:
            return cursor.set_key_dup(key, value) and cursor.delete()

    def drop(self, keyspace: Keyspace) -> None:
        # LMDB closes the handle at once, whatever becomes of the transaction:
        # from now on calls get a clear error instead of a dead handle's.
        keyspace.dropped = True
        self.txn.drop(keyspace.handle, delete=True)

    def atomically(self, fn: Callable[[WriteView], R]) -> R:
        with self.env.begin(write=True, parent=self.txn) as child:  # commits on return
            return fn(LmdbWriteView(self.env, child))


def _first_values(
    txn: lmdb.Transaction,
    keyspace: Keyspace,
    low: bytes | None,
    high: bytes | None,
    reverse: bool,
    after: bytes | None,
    limit: int | None,
) -> Iterator[tuple[bytes, Buffer]]:
    """The range of a dupsort database, one record per key: each key with its first
    value (what ``get`` gives). ``after`` and the bounds are as in ``range``, already
    checked."""
    given = 0
    with txn.cursor(keyspace.handle) as cursor:
        if reverse:
            # Moving back lands on a key's last value: its first one is the record.
            found = _seek_below(cursor, after if after is not None else high)
            step = cursor.prev_nodup
        else:
            found = _seek_from(cursor, low, after, cursor.next_nodup)
            step = cursor.next_nodup
        while found:
            if reverse:
                cursor.first_dup()
            key = bytes(cursor.key())
            if reverse:
                if low is not None and key < low:
                    return
            elif high is not None and key >= high:
                return
            yield key, cursor.value()
            given += 1
            if given == limit:
                return
            found = step()


def _seek_from(
    cursor: lmdb.Cursor,
    low: bytes | None,
    after: bytes | None,
    step: Callable[[], bool] | None = None,
) -> bool:
    """Position on the first record from ``low``, or strictly after key ``after``
    (``step`` moves past it: to the next record, or, dupsort, the next key)."""
    if after is None:
        return cursor.set_range(low) if low is not None else cursor.first()
    if not cursor.set_range(after):
        return False
    if bytes(cursor.key()) == after:
        return (step or cursor.next)()
    return True


def _seek_below(cursor: lmdb.Cursor, bound: bytes | None) -> bool:
    """Position on the greatest key strictly below ``bound`` (the last key if None)."""
    if bound is None:
        return cursor.last()
    if cursor.set_range(bound):
        return cursor.prev()
    return cursor.last()
