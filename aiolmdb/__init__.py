"""aiolmdb: a typed, asyncio-native data layer over LMDB.

Open an environment with :func:`open`, databases with
:meth:`AsyncEnvironment.open_db`, and group several calls atomically with
``async with env.transaction():``. Coders live in :mod:`aiolmdb.coders`.
"""

from .database import AsyncDatabase, DatabaseTxn
from .environment import AsyncEnvironment, open, version
from .errors import (
    AiolmdbError,
    ClosedError,
    DatabaseDroppedError,
    DatabaseNotFoundError,
    DecodeError,
    DiskFullError,
    EncodeError,
    KeyExistsError,
    KeyNotFoundError,
    MapNotAdoptedError,
    TransactionError,
    UniqueViolationError,
    UnorderedKeyError,
)
from .transaction import Transaction

__version__ = "0.2.0"

__all__ = [
    "AiolmdbError",
    "AsyncDatabase",
    "AsyncEnvironment",
    "ClosedError",
    "DatabaseDroppedError",
    "DatabaseNotFoundError",
    "DatabaseTxn",
    "DecodeError",
    "DiskFullError",
    "EncodeError",
    "KeyExistsError",
    "KeyNotFoundError",
    "MapNotAdoptedError",
    "Transaction",
    "TransactionError",
    "UniqueViolationError",
    "UnorderedKeyError",
    "__version__",
    "open",
    "version",
]
