"""aiolmdb: a typed, asyncio-native data layer: LMDB embedded, or in memory.

Open an environment with :func:`open` (a path: LMDB; ``":memory:"``: the
in-memory engine), databases with
:meth:`AsyncEnvironment.open_db`, and group several calls atomically with
``async with env.transaction():``. Coders live in :mod:`aiolmdb.coders`.
"""

from .database import AsyncDatabase, DatabaseTxn
from .environment import AsyncEnvironment, open, version
from .errors import (
    AiolmdbError,
    ClosedError,
    CommitUnknownError,
    ConflictError,
    ConnectionLostError,
    DatabaseDroppedError,
    DatabaseNotFoundError,
    DecodeError,
    DiskFullError,
    EncodeError,
    IndexExtractorError,
    IndexNotReadyError,
    KeyExistsError,
    KeyNotFoundError,
    MapNotAdoptedError,
    ReadersFullError,
    RetryableError,
    TransactionError,
    UnavailableError,
    UniqueViolationError,
    UnorderedKeyError,
    UnsupportedError,
)
from .transaction import Transaction

__version__ = "0.2.0"

__all__ = [
    "AiolmdbError",
    "AsyncDatabase",
    "AsyncEnvironment",
    "ClosedError",
    "CommitUnknownError",
    "ConflictError",
    "ConnectionLostError",
    "DatabaseDroppedError",
    "DatabaseNotFoundError",
    "DatabaseTxn",
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
    "Transaction",
    "TransactionError",
    "UnavailableError",
    "UniqueViolationError",
    "UnorderedKeyError",
    "UnsupportedError",
    "__version__",
    "open",
    "version",
]
