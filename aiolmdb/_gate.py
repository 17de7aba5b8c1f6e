"""The gate between this process's read transactions and growing the memory map.

LMDB may only resize its map (``mdb_env_set_mapsize``) while no transaction is
active in the process: the map moves, and live transactions would point into
the old one. Readers pass the gate without ever waiting for each other; a
resize waits until no reader is inside, and readers that arrive meanwhile wait
only for the resize itself (microseconds).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

__all__ = ["ReadGate"]


class ReadGate:
    """Counts live read transactions; lets a resize run when there are none."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0

    def enter(self) -> None:
        """A read transaction is about to begin."""
        with self._cond:
            self._readers += 1

    def leave(self) -> None:
        """A read transaction has ended."""
        with self._cond:
            self._readers -= 1
            if not self._readers:
                self._cond.notify_all()

    def run_alone(self, fn: Callable[[], None], timeout: float) -> bool:
        """Run ``fn`` once no reader is inside; False if that took longer than ``timeout``."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._readers == 0, timeout):
                return False
            fn()
            return True
