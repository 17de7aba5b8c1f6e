"""``Writer``: the memory engine's one writer, on the event loop.

Like LMDB, the memory engine has one writer at a time. Write work runs in
call order, synchronously on the event loop; a session holds the writer
from its begin to its end, and the work queued meanwhile runs once it ends.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = ["Job", "Writer", "WriterHold"]


class Job:
    """Write work: ``run()`` does it and settles ``future``, which its caller awaits."""

    __slots__ = ("future", "run")

    def __init__(self, run: Callable[[], None], future: asyncio.Future[Any]) -> None:
        self.run = run
        self.future = future


class Writer:
    """Runs write work one piece at a time, in the order it came."""

    __slots__ = ("_holder", "_queue", "_running")

    def __init__(self) -> None:
        self._queue: deque[Job] = deque()
        self._holder: object | None = None  # the session holding the writer
        self._running = False  # a job runs: work it submits waits for it

    @property
    def queued(self) -> int:
        """Work waiting to run."""
        return len(self._queue)

    @property
    def held(self) -> bool:
        """True while a session (or a :class:`WriterHold`) has the writer."""
        return self._holder is not None

    @property
    def busy(self) -> bool:
        """True while work would have to wait (held, running, or queued)."""
        return self._holder is not None or self._running or bool(self._queue)

    def submit(self, job: Job) -> None:
        """Run ``job`` now if nothing is in its way, else once what is ahead of it is done."""
        self._queue.append(job)
        self._pump()

    def hold(self, holder: object) -> None:
        """``holder`` (a session) has the writer until :meth:`release`."""
        assert self._holder is None, "one session holds the writer at a time"
        self._holder = holder

    def release(self, holder: object) -> None:
        """``holder`` ended: the work queued behind it runs now."""
        if self._holder is holder:
            self._holder = None
            self._pump()

    def _pump(self) -> None:
        if self._running:
            return  # the loop under way below takes the new work in turn
        self._running = True
        try:
            while self._queue and self._holder is None:
                job = self._queue.popleft()
                if not job.future.done():  # else cancelled or refused: it never runs
                    job.run()
        finally:
            self._running = False


class WriterHold:
    """The writer kept busy until :meth:`release`: work queued meanwhile waits, in order.

    What a long write is on LMDB's writer thread, for tests of what queues up
    behind one (cancellation in the queue, failures in a batch).
    """

    __slots__ = ("_writer",)

    def __init__(self, writer: Writer) -> None:
        self._writer: Writer | None = writer
        writer.hold(self)

    @property
    def held(self) -> bool:
        """True until released."""
        return self._writer is not None

    def release(self) -> None:
        """Let the writer go: the work queued behind the hold runs now. Twice is harmless."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.release(self)
