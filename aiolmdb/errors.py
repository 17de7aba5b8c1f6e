"""Exceptions raised by aiolmdb.

LMDB's own errors (``lmdb.MapFullError``, ``lmdb.ReadonlyError``, ...) are
not wrapped: they reach the caller with their own types so that existing
handlers keep working.
"""

from __future__ import annotations

import copy
from typing import NoReturn

__all__ = [
    "AiolmdbError",
    "ClosedError",
    "CommitUnknownError",
    "ConflictError",
    "ConnectionLostError",
    "DatabaseDroppedError",
    "DatabaseNotFoundError",
    "DecodeError",
    "DiskFullError",
    "EncodeError",
    "IndexExtractorError",
    "IndexNotReadyError",
    "KeyExistsError",
    "KeyNotFoundError",
    "MapNotAdoptedError",
    "ReadersFullError",
    "RetryableError",
    "TransactionError",
    "UnavailableError",
    "UniqueViolationError",
    "UnorderedKeyError",
    "UnsupportedError",
]


class AiolmdbError(Exception):
    """Base class of every error aiolmdb raises itself."""


class EncodeError(AiolmdbError, TypeError):
    """A key or value could not be encoded by its coder.

    Raised before anything is written. The message names the database, the
    coder and the type of the offending object.
    """


class IndexExtractorError(AiolmdbError):
    """An index's extractor raised (or returned what its index cannot take) on a record.

    A bug in the application's declaration, not bad input: unlike
    :class:`EncodeError` it derives from neither ``TypeError`` nor
    ``ValueError``. Raised before anything is written, so the write (and, in
    a transaction, that call) leaves nothing behind. The message names the
    collection, the index and the record's key; the extractor's own exception
    is the ``__cause__``.
    """

    def __init__(self, message: str, *, collection: str, index: str, key: object) -> None:
        super().__init__(message)
        #: The name of the collection.
        self.collection = collection
        #: The name of the index.
        self.index = index
        #: The key of the record (decoded; its stored bytes when it does not decode).
        self.key = key

    def __reduce__(self) -> tuple[object, ...]:
        # Keyword-only arguments: copies (raise_again) and pickles rebuild through this.
        return (_rebuild_extractor_error, (self.args[0], self.collection, self.index, self.key))


def _rebuild_extractor_error(
    message: str, collection: str, index: str, key: object
) -> IndexExtractorError:
    return IndexExtractorError(message, collection=collection, index=index, key=key)


class DecodeError(AiolmdbError, ValueError):
    """Stored bytes could not be decoded by the database's coder.

    The message names the database and the key whose bytes were bad.
    """


class ClosedError(AiolmdbError):
    """The environment was closed (or belongs to the parent of a fork)."""


class _LookupMessage(AiolmdbError, KeyError):
    """A KeyError whose message shows as written (KeyError quotes its argument)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class DatabaseNotFoundError(_LookupMessage):
    """A named database does not exist and ``create=False`` was given."""


class DatabaseDroppedError(AiolmdbError):
    """The database was deleted (``drop(delete=True)``) before or while the call ran.

    Nothing of the call was applied. Open the database again to recreate it.
    """


class DiskFullError(AiolmdbError, OSError):
    """The disk holding the environment is full: the write was not committed.

    The data already committed is intact. Free space on the disk, then retry.
    """


class TransactionError(AiolmdbError):
    """A transaction was used wrongly: after it ended, or from a bad place."""


class IndexNotReadyError(AiolmdbError):
    """An index cannot be used yet: it is not built, is being built, is out of date, or
    its database is being opened again.

    The message names the collection and the index. ``await
    collection.build_indexes()`` (or ``await Collection.open(env)``) makes it usable.
    """


class RetryableError(TransactionError):
    """The write transaction was not applied, for a reason outside it: run it again.

    Nothing of it was applied. ``env.transact(fn)`` runs ``fn`` again on these
    by itself; auto-commit writes retry by themselves.
    """


class ConflictError(RetryableError):
    """The write transaction conflicted with another one and was not applied.

    Raised when another transaction changed what this one read: at the
    commit of an optimistic transaction (``env.transaction(optimistic=True)``,
    ``env.transact``), which validates what it read, or on an engine that
    runs transactions concurrently (serializable isolation), also for a
    deadlock between them. Nothing of the transaction was applied: run it
    again. ``env.transact(fn)`` does so by itself. A plain
    ``env.transaction()`` on LMDB or memory holds the one writer and never
    conflicts.
    """


class ConnectionLostError(RetryableError):
    """The connection to the database server was lost before the transaction committed
    (a failover, a restart, a network failure): nothing of it was applied.

    Run it again: the engine reconnects (``env.transact(fn)`` does both).
    """


class CommitUnknownError(TransactionError):
    """The connection was lost while the transaction committed, and the server could not
    be asked afterwards whether the commit happened: its outcome is unknown.

    The engine asks on a new connection before raising this (so that a commit
    is never applied twice, nor reported lost when it was made); it is raised
    only when no connection could be made within the engine's
    ``reconnect_timeout``. The message gives the transaction's marker (the id
    of its row in ``aiolmdb_commits``): the commit happened if that row exists.
    """


class UnavailableError(AiolmdbError, ConnectionError):
    """The database server could not be reached within the engine's ``reconnect_timeout``
    (it is down, a failover did not finish, or every connection of the pool stayed
    in use). The message names the server and the last connection error.
    """


class UnorderedKeyError(AiolmdbError, TypeError):
    """A range or prefix query was made on a database whose key coder is not ordered."""


class KeyExistsError(_LookupMessage):
    """``insert`` found the key already stored."""


class KeyNotFoundError(_LookupMessage):
    """``update`` found no record under the key."""


class UniqueViolationError(AiolmdbError, ValueError):
    """A write would give two records the same key in a unique index; nothing was written."""


class MapNotAdoptedError(AiolmdbError):
    """Another process grew the map, and this process could not adopt the new size.

    A process adopts a larger map only while none of its read transactions is
    open: a read snapshot (``env.transaction(write=False)``) held open blocks
    it. End the snapshot and retry.
    """


class ReadersFullError(AiolmdbError):
    """LMDB's reader table is full: no read transaction can begin until one ends.

    Every open read transaction of every process holds a slot of the table
    (``max_readers``, 126 by default): this process's read snapshots held
    open, the read the event loop shares, its reader threads. The message
    names the environment, the table's size and how many slots this process
    holds. End read snapshots (``env.transaction(write=False)``) sooner, or
    open the environment with a larger ``max_readers=``. It is also an
    ``lmdb.ReadersFullError``, for handlers written for py-lmdb.
    """


class UnsupportedError(AiolmdbError):
    """The engine in use does not support the call (an LMDB-only feature elsewhere).

    The message names the engine and the call; ``env.capabilities`` says
    beforehand what an engine supports.
    """


def raise_again(error: BaseException) -> NoReturn:
    """Raise ``error`` once more, for one more call (a copy of it, with the same cause).

    Raising the one instance from every call would grow its traceback without end.
    """
    again = copy.copy(error)
    raise again.with_traceback(None) from error.__cause__
