"""Running the synchronous record and index logic over an asynchronous connection.

Record and index logic is synchronous (``fn(view) -> result``), and the
PostgreSQL driver is asynchronous. Instead of a worker thread per call
(measured: a point read through a thread hop took 2.1 times as long as the
same read on the event loop), ``fn`` runs in a greenlet on the event loop
thread: each statement its view makes hands the driver's awaitable to the
coroutine that started the greenlet, which awaits it and resumes the
greenlet with the answer. The event loop is never blocked; ``fn`` stays
synchronous; there is no thread.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import greenlet

from ...errors import AiolmdbError
from ..waiting import awaitable_error

__all__ = ["run_bridged", "wait"]

R = TypeVar("R")
T = TypeVar("T")


class _Bridged(greenlet.greenlet):
    """The greenlet a function runs in: statements are awaited by ``driver``."""

    def __init__(self, fn: Callable[..., Any], driver: greenlet.greenlet) -> None:
        super().__init__(fn, driver)
        self.driver = driver


def wait(awaitable: Awaitable[T]) -> T:
    """The result of ``awaitable``, from a function run by :func:`run_bridged`."""
    current = greenlet.getcurrent()
    if not isinstance(current, _Bridged):
        # Close the awaitable: never awaited, it would warn about it.
        close = getattr(awaitable, "close", None)
        if close is not None:
            close()
        raise AiolmdbError(
            "a PostgreSQL view was used outside the function it was given to "
            "(keep no view, nor an iterator of one, beyond the function)"
        )
    result: T = current.driver.switch(awaitable)
    return result


async def run_bridged(fn: Callable[..., R], *args: Any) -> R:
    """``fn(*args)``, awaiting on the event loop every statement it makes.

    An exception raised by a statement is raised inside ``fn`` (which may
    handle it), as is the cancellation of the caller. A ``StopIteration``
    raised by ``fn`` becomes a ``RuntimeError``, as everywhere an engine runs
    a function for an awaiting caller.
    """
    child = _Bridged(fn, greenlet.getcurrent())
    try:
        request = child.switch(*args)
    except StopIteration as exc:
        raise awaitable_error(exc) from exc
    while not child.dead:
        try:
            answer = await request
        except BaseException:  # the statement failed or the caller was cancelled
            try:
                request = child.throw(*sys.exc_info())
            except StopIteration as exc:
                raise awaitable_error(exc) from exc
        else:
            try:
                request = child.switch(answer)
            except StopIteration as exc:
                raise awaitable_error(exc) from exc
    result: R = request
    return result
