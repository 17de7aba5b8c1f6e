"""How a database stores and removes its records: plainly, or keeping more in step.

Every write of a record goes through a :class:`RecordLogic`, as synchronous
functions over the engine's write view that may run more than once. A plain
database stores bytes as they are (:class:`PlainRecords`); a dupsort database
keeps several values per key (:class:`DuplicateRecords`); a collection
composes its own logic, which keeps its indexes in step in the same view.
"""

from __future__ import annotations

from typing import Protocol, TypeVar

from .errors import EncodeError, UnsupportedError
from .storage import (
    Buffer,
    DuplicatesReadView,
    DuplicatesWriteView,
    Engine,
    Keyspace,
    ReadView,
    WriteView,
)
from .storage.keyspace import MAX_KEY_SIZE

__all__ = ["DuplicateRecords", "PlainRecords", "RecordLogic"]

V = TypeVar("V")
V_contra = TypeVar("V_contra", contravariant=True)


class RecordLogic(Protocol[V_contra]):
    """Stores and removes the records of one database, inside a write view."""

    @property
    def plain(self) -> bool:
        """True when storing is a bare put and removing a bare delete: a multi-record
        write may then store in bulk, and cannot fail half way."""
        ...

    async def ready(self) -> None:
        """Wait for what the logic needs before the first call (nothing, or a set-up)."""
        ...

    def check_ready(self) -> None:
        """Where a write runs: raise what the set-up raised, if it failed."""
        ...

    def store(
        self, view: WriteView, raw_key: bytes, raw_value: bytes, value: V_contra, overwrite: bool
    ) -> bool:
        """Store one encoded record; False (nothing written) if it exists and not ``overwrite``."""
        ...

    def remove(self, view: WriteView, raw_key: bytes) -> bool:
        """Remove one record; False if it was not stored."""
        ...

    def empty(self, view: WriteView) -> None:
        """Remove every record."""
        ...

    def delete(self, view: WriteView) -> None:
        """Delete the database itself (and whatever the logic keeps beside it)."""
        ...

    def forget_deleted(self) -> None:
        """After :meth:`delete` ran: its keyspaces are never to be used again."""
        ...


class PlainRecords:
    """The records of a plain database: bytes stored as they are."""

    plain = True

    def __init__(self, engine: Engine, keyspace: Keyspace) -> None:
        self._engine = engine
        self._keyspace = keyspace

    async def ready(self) -> None:
        """Nothing to wait for."""

    def check_ready(self) -> None:
        """Nothing can have failed."""

    def store(
        self, view: WriteView, raw_key: bytes, raw_value: bytes, value: object, overwrite: bool
    ) -> bool:
        """A put."""
        return view.put(self._keyspace, raw_key, raw_value, overwrite=overwrite)

    def remove(self, view: WriteView, raw_key: bytes) -> bool:
        """A delete."""
        return view.delete(self._keyspace, raw_key)

    def empty(self, view: WriteView) -> None:
        """Clear the keyspace."""
        view.clear(self._keyspace)

    def delete(self, view: WriteView) -> None:
        """Drop the keyspace."""
        view.drop(self._keyspace)

    def forget_deleted(self) -> None:
        """The engine forgets the keyspace."""
        self._engine.forget_keyspace(self._keyspace)


class DuplicateRecords(PlainRecords):
    """The records of a dupsort database (LMDB): a key holds several values, sorted.

    Storing adds a value to the key's values (False when the pair was stored
    already); removing a key removes every value of it. LMDB keeps the values
    of a key as the keys of a tree of their own: each takes 1 to 511 bytes
    encoded, like a key. Its views are the engine's own: an optimistic
    transaction's view, which buffers writes by key (one value each), is
    refused, naming the database.
    """

    plain = False  # put_multi stores one pair at a time: it counts the pairs added

    def store(
        self, view: WriteView, raw_key: bytes, raw_value: bytes, value: object, overwrite: bool
    ) -> bool:
        """Add the value to the key's values; False when it is one of them already (or,
        not ``overwrite``, when the key has values)."""
        return self.add(view, raw_key, raw_value, overwrite=overwrite, dupdata=False)

    def add(
        self, view: WriteView, raw_key: bytes, raw_value: bytes, *, overwrite: bool, dupdata: bool
    ) -> bool:
        """LMDB's ``put`` on a dupsort database, with its ``overwrite`` and ``dupdata``."""
        if not 0 < len(raw_value) <= MAX_KEY_SIZE:
            raise EncodeError(
                f"database {self._keyspace.label}: a value of {len(raw_value)} bytes cannot be "
                f"stored under key {raw_key!r}: the values of a dupsort database take 1 to "
                f"{MAX_KEY_SIZE} bytes encoded (LMDB keeps them as keys)"
            )
        return self.writer(view).add_value(
            self._keyspace, raw_key, raw_value, overwrite=overwrite, dupdata=dupdata
        )

    def remove(self, view: WriteView, raw_key: bytes) -> bool:
        """Delete every value of the key."""
        return self.writer(view).delete(self._keyspace, raw_key)

    def remove_value(self, view: WriteView, raw_key: bytes, raw_value: bytes) -> bool:
        """Delete one value of the key; whether it was stored."""
        writer = self.writer(view)
        if not 0 < len(raw_value) <= MAX_KEY_SIZE:
            return False  # a value that cannot be stored is not
        return writer.delete_value(self._keyspace, raw_key, raw_value)

    def values(self, view: ReadView, raw_key: bytes) -> list[Buffer]:
        """Every value of the key, in byte order."""
        if not isinstance(view, DuplicatesReadView):
            raise self._refusal("read every value of a key")
        return view.values_of(self._keyspace, raw_key)

    def empty(self, view: WriteView) -> None:
        """Clear the keyspace."""
        self.writer(view).clear(self._keyspace)

    def writer(self, view: WriteView) -> DuplicatesWriteView:
        """``view``, as the engine's own write view of a dupsort keyspace."""
        if not isinstance(view, DuplicatesWriteView):
            raise self._refusal("write")
        return view

    def _refusal(self, what: str) -> UnsupportedError:
        return UnsupportedError(
            f"database {self._keyspace.label} is a dupsort database, which an optimistic "
            f"transaction (env.transaction(optimistic=True), env.transact()) cannot {what}: "
            "it buffers writes by key, one value each; use env.transaction()"
        )
