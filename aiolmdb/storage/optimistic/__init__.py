"""Optimistic write transactions over any engine with one writer (LMDB, memory).

The body of such a transaction runs on a read snapshot on the event loop,
with no hold on the writer: its writes go into a buffer (its own reads see
them), and every key and range it read from the snapshot is logged. Its
commit is one function handed to the engine's next group commit, which
re-reads what was logged, compares the bytes, and applies the buffer only
if nothing changed: otherwise nothing is applied and the commit raises
:class:`~aiolmdb.ConflictError`. Validation runs inside the writer's
transaction, under LMDB's write lock, so it is exact across processes too.
"""

from .session import OptimisticSession, OptimisticState
from .shared import SharedSnapshots

__all__ = ["OptimisticSession", "OptimisticState", "SharedSnapshots"]
