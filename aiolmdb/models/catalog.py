"""The index catalog: which indexes of which collection are built, for which declaration.

It lives in the internal database, one record per index, keyed
``index/<collection>/<index>``; the value is the JSON signature of the
declaration the index was built for. An index is current when its record
holds exactly the signature of its declaration. A build under way records
how far it got (``built_up_to``), so that it resumes after a crash; a write
made by a declaration that lacks an index records it ``stale``, so that a
declaration that has it builds it again rather than trusting it.
"""

from __future__ import annotations

import json
from typing import Any

from ..database import INTERNAL_DATABASE, AsyncDatabase
from ..scanning import prefix_end
from ..storage import Keyspace, ReadView, WriteView

__all__ = ["CATALOG_PREFIX", "INDEX_DATABASE_PREFIX", "IndexCatalog", "index_database_name"]

#: The catalog's keys: ``index/<collection>/<index>``.
CATALOG_PREFIX = "index/"
#: The databases of indexes: ``__aiolmdb__/index/<collection>/<index>``.
INDEX_DATABASE_PREFIX = f"{INTERNAL_DATABASE}/index/"

#: Where a build under way records the last record key it indexed (hex; None: none yet).
BUILT_UP_TO = "built_up_to"
#: Set on a removed index's record by a write that did not keep it in step.
STALE = "stale"


def index_database_name(collection: str, index: str) -> str:
    """The name of the database holding the entries of ``collection``'s index ``index``
    (under the reserved prefix: no user database can be named like it)."""
    return f"{INDEX_DATABASE_PREFIX}{collection}/{index}"


class IndexCatalog:
    """The catalog records of one collection's indexes, in the internal database."""

    #: Stale marks made in this process: a write transaction that checked its
    #: indexes need not check again unless this changed.
    stale_marks = 0

    def __init__(self, internal: AsyncDatabase[bytes, bytes], collection: str) -> None:
        self._internal = internal
        self._collection = collection
        self._prefix = f"{CATALOG_PREFIX}{collection}/".encode()

    @property
    def keyspace(self) -> Keyspace:
        """The internal database's keyspace."""
        return self._internal.access.keyspace

    def key(self, index: str) -> bytes:
        """The catalog key of index ``index``."""
        return self._prefix + index.encode()

    def stored(self, view: ReadView) -> dict[str, dict[str, Any]]:
        """Every index recorded for the collection: name to stored signature."""
        stored: dict[str, dict[str, Any]] = {}
        for key, value in view.range(self.keyspace, self._prefix, prefix_end(self._prefix)):
            name = key[len(self._prefix) :].decode()
            if "/" not in name:  # else it belongs to a collection named name/...
                stored[name] = json.loads(bytes(value))
        return stored

    def is_current(self, view: ReadView, index: str, signature: bytes) -> bool:
        """True when ``index`` is recorded as built for the declaration ``signature``."""
        return view.get(self.keyspace, self.key(index)) == signature

    def record_built(self, view: WriteView, index: str, signature: bytes) -> None:
        """Record ``index`` as built for ``signature``."""
        view.put(self.keyspace, self.key(index), signature)

    def record_progress(
        self, view: WriteView, index: str, signature: dict[str, Any], built_up_to: bytes | None
    ) -> None:
        """Record a build of ``index`` for ``signature`` that indexed every record up to
        ``built_up_to`` (None: none yet)."""
        progress = {**signature, BUILT_UP_TO: None if built_up_to is None else built_up_to.hex()}
        view.put(self.keyspace, self.key(index), json.dumps(progress).encode())

    def progress(
        self, view: ReadView, index: str, signature: dict[str, Any]
    ) -> tuple[bool, bytes | None]:
        """Whether a build of ``index`` for ``signature`` is under way, and how far it got."""
        stored = view.get(self.keyspace, self.key(index))
        if stored is None:
            return False, None
        record = json.loads(bytes(stored))
        if BUILT_UP_TO not in record or record.get(STALE):
            return False, None
        up_to = record.pop(BUILT_UP_TO)
        if record != signature:
            return False, None
        return True, None if up_to is None else bytes.fromhex(up_to)

    def forget(self, view: WriteView, index: str) -> None:
        """Delete the record of ``index``."""
        view.delete(self.keyspace, self.key(index))

    def mark_stale(self, view: WriteView, indexes: list[str]) -> None:
        """Record that a write did not keep ``indexes`` in step (they are not declared here)."""
        for name in indexes:
            key = self.key(name)
            stored = view.get(self.keyspace, key)
            if stored is None:
                continue
            signature = json.loads(bytes(stored))
            if not signature.get(STALE):
                signature[STALE] = True
                view.put(self.keyspace, key, json.dumps(signature).encode())
                IndexCatalog.stale_marks += 1
