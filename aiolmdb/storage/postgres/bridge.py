"""Running the synchronous record and index logic over an asynchronous connection.

Record and index logic is synchronous (``fn(view) -> result``), and the
PostgreSQL driver is asynchronous. Instead of a worker thread per call
(measured: a point read through a thread hop took 2.1 times as long as the
same read on the event loop), ``fn`` runs in a greenlet on the event loop
thread: each statement its view makes hands the driver's awaitable to the
coroutine that started the greenlet, which awaits it and resumes the
greenlet with the answer. The event loop is never blocked; ``fn`` stays
synchronous; there is no thread.

The greenlets are kept and reused, one per function in flight: creating one
costs about 10 µs, more than the switches of a point read (1.2 µs a pair).
"""

from __future__ import annotations

import enum
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import greenlet

from ...errors import AiolmdbError
from ..waiting import awaitable_error

__all__ = ["run_bridged", "wait"]

R = TypeVar("R")
T = TypeVar("T")


class _Says(enum.Enum):
    """What a worker hands its driver when it switches back."""

    AWAIT = "await"  # this awaitable, please: resume me with its result (or error)
    RETURNED = "returned"
    RAISED = "raised"


_Message = tuple[_Says, Any]
_Job = tuple[Callable[..., Any], tuple[Any, ...]]


class _Worker(greenlet.greenlet):
    """A greenlet that runs one function after another, parked between them."""

    def __init__(self) -> None:
        super().__init__(self._serve)

    def _serve(self, job: _Job) -> None:
        while True:
            fn, args = job
            try:
                outcome: _Message = (_Says.RETURNED, fn(*args))
            except BaseException as exc:  # the driver raises it where the caller awaits
                outcome = (_Says.RAISED, exc)
            del fn, args
            assert self.parent is not None
            job = self.parent.switch(outcome)


class _Idle(threading.local):
    """The parked workers of this thread (greenlets belong to the thread they run in)."""

    def __init__(self) -> None:
        self.workers: list[_Worker] = []


_idle = _Idle()


def wait(awaitable: Awaitable[T]) -> T:
    """The result of ``awaitable``, from a function run by :func:`run_bridged`."""
    current = greenlet.getcurrent()
    if not isinstance(current, _Worker) or current.parent is None:
        # Close the awaitable: never awaited, it would warn about it.
        close = getattr(awaitable, "close", None)
        if close is not None:
            close()
        raise AiolmdbError(
            "a PostgreSQL view was used outside the function it was given to "
            "(keep no view, nor an iterator of one, beyond the function)"
        )
    result: T = current.parent.switch((_Says.AWAIT, awaitable))
    return result


async def run_bridged(fn: Callable[..., R], *args: Any) -> R:
    """``fn(*args)``, awaiting on the event loop every statement it makes.

    An exception raised by a statement is raised inside ``fn`` (which may
    handle it), as is the cancellation of the caller. A ``StopIteration``
    raised by ``fn`` becomes a ``RuntimeError``, as everywhere an engine runs
    a function for an awaiting caller.
    """
    idle = _idle.workers
    worker = idle.pop() if idle else _Worker()
    worker.parent = greenlet.getcurrent()
    says, value = worker.switch((fn, args))
    while says is _Says.AWAIT:
        try:
            answer = await value
        except BaseException:  # the statement failed or the caller was cancelled
            says, value = worker.throw(*sys.exc_info())
        else:
            says, value = worker.switch(answer)
    idle.append(worker)  # parked at its switch: ready for the next function
    if says is _Says.RAISED:
        raise awaitable_error(value) if isinstance(value, StopIteration) else value
    result: R = value
    return result
