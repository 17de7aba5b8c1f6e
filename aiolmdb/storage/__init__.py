"""The storage seam: the protocols every engine implements, and how a location picks one.

Engines live in subpackages (:mod:`aiolmdb.storage.lmdb`,
:mod:`aiolmdb.storage.memory`) and are imported only when a location
names them: ``import aiolmdb`` loads no engine.
"""

from .base import (
    Buffer,
    Capabilities,
    DuplicatesReadView,
    DuplicatesWriteView,
    Engine,
    NotNowError,
    ReadView,
    Session,
    Snapshot,
    WriteView,
    transaction_label,
)
from .keyspace import Keyspace

__all__ = [
    "Buffer",
    "Capabilities",
    "DuplicatesReadView",
    "DuplicatesWriteView",
    "Engine",
    "Keyspace",
    "NotNowError",
    "ReadView",
    "Session",
    "Snapshot",
    "WriteView",
    "transaction_label",
]
