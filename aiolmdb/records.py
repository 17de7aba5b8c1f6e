"""How a database stores and removes its records: plainly, or keeping more in step.

Every write of a record goes through a :class:`RecordLogic`, as synchronous
functions over the engine's write view that may run more than once. A plain
database stores bytes as they are (:class:`PlainRecords`); a collection
composes its own logic, which keeps its indexes in step in the same view.
"""

from __future__ import annotations

from typing import Protocol, TypeVar

from .storage import Engine, Keyspace, WriteView

__all__ = ["PlainRecords", "RecordLogic"]

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
