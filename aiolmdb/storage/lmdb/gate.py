"""The gate between this process's read transactions and growing the memory map.

LMDB may only resize its map (``mdb_env_set_mapsize``) while no transaction is
active in the process: the map moves, and live transactions would point into
the old one. Readers only count themselves in and out (a plain lock, never
waited on for long); a resize holds the lock while it runs, once it has seen
the count at zero. While a resize waits for that, new readers do not enter
(readers coming and going would keep the count above zero for ever): they
are turned away, and wait for the resize on the event loop.
"""

from __future__ import annotations

import mmap
import threading
import time
from collections.abc import Callable

__all__ = ["ReadGate", "map_refusal"]

#: No access at all (POSIX's PROT_NONE, which the mmap module does not name).
_PROT_NONE = 0

#: Seconds between two looks at the reader count while a resize waits.
_POLL = 0.001


class ReadGate:
    """Counts live read transactions; lets a resize run when there are none."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._readers = 0
        self._resizes = 0  # resizes waiting for the readers inside to leave
        #: True while a resize waits for the readers inside to leave (an attribute,
        #: not a property: every read on the event loop looks at it).
        self.resizing = False

    @property
    def readers(self) -> int:
        """How many read transactions are counted in now."""
        return self._readers

    def enter(self) -> bool:
        """A read transaction is about to begin: count it in; False (not counted) while a
        resize waits.

        A refused reader never waits here: a thread parked at the gate could
        be the one a read snapshot needs to end, which the resize waits for.
        """
        with self._lock:
            if self._resizes:
                return False
            self._readers += 1
        return True

    def leave(self) -> None:
        """A read transaction has ended."""
        with self._lock:
            self._readers -= 1

    def run_alone(
        self, fn: Callable[[], None], timeout: float, idle: Callable[[], None] | None = None
    ) -> bool:
        """Run ``fn`` once no reader is inside; False if that took longer than ``timeout``.

        No new reader enters meanwhile. Resizes are rare, so polling keeps the
        readers' side free of any signalling. ``idle()`` is called between two
        looks (other work the waiting thread owes).
        """
        deadline = time.monotonic() + timeout
        with self._lock:
            self._resizes += 1
            self.resizing = True
        try:
            while True:
                with self._lock:
                    if self._readers == 0:
                        fn()
                        return True
                if time.monotonic() >= deadline:
                    return False
                if idle is not None:
                    idle()
                time.sleep(_POLL)
        finally:
            with self._lock:
                self._resizes -= 1
                self.resizing = self._resizes > 0


def map_refusal(size: int) -> str | None:
    """Why a map of ``size`` bytes cannot be mapped in this process now; None if it can.

    LMDB unmaps the old map before it maps the new one, and when that fails
    the environment is lost (py-lmdb closes it): so ask the system first,
    with an inaccessible anonymous mapping of the new size, which costs no
    memory. The old map is still in place meanwhile: the test is strict.
    """
    try:
        probe = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, prot=_PROT_NONE)
    except OSError as exc:
        return (
            f"the map cannot grow to {size} bytes: no room for it in this process's "
            f"address space ({exc.strerror})"
        )
    probe.close()
    return None
