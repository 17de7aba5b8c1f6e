"""Handing outcomes from engine threads back to the tasks that wait for them."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

__all__ = [
    "Outcome",
    "Waiting",
    "awaitable_error",
    "backoff",
    "call_awaitably",
    "deliver",
    "ignore_outcome",
    "loop_running",
    "outlast_cancellation",
]

R = TypeVar("R")

#: Seconds before the second attempt of work that failed for a passing reason (a
#: conflict, a lost connection); each later pause doubles, up to BACKOFF_MAX.
BACKOFF = 0.005
BACKOFF_MAX = 0.1

# (future, ok, value): what an engine thread hands back to an event loop.
_Settled = tuple["asyncio.Future[Any]", bool, Any]


class Waiting(Protocol):
    """Anything a task awaits the outcome of: its loop and its future."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    @property
    def future(self) -> asyncio.Future[Any]: ...


#: A finished piece of work: who waits for it, whether it succeeded, its result or error.
Outcome = tuple[Waiting, bool, Any]


def awaitable_error(exc: BaseException) -> BaseException:
    """``exc`` as an awaiting task can receive it.

    asyncio refuses ``StopIteration`` as a future's exception (the future
    would never resolve): like PEP 479 in a generator, it becomes a
    ``RuntimeError`` caused by it.
    """
    if not isinstance(exc, StopIteration):
        return exc
    error = RuntimeError(f"a function run by aiolmdb raised StopIteration: {exc!r}")
    error.__cause__ = exc
    return error


def call_awaitably(fn: Callable[..., R], *args: Any) -> R:
    """``fn(*args)`` for a worker thread whose outcome an asyncio future receives.

    A ``StopIteration`` it raises is raised as a ``RuntimeError`` instead.
    """
    try:
        return fn(*args)
    except StopIteration as exc:
        raise awaitable_error(exc) from exc


def _settle(outcomes: list[_Settled]) -> None:
    """Runs on the event loop: resolve every future of one delivery."""
    for future, ok, value in outcomes:
        if future.done():  # cancelled by its caller meanwhile
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(awaitable_error(value))


def deliver(outcomes: list[Outcome]) -> None:
    """Wake the waiters of finished work: one thread-safe call per event loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[_Settled]] = {}
    for job, ok, value in outcomes:
        by_loop.setdefault(job.loop, []).append((job.future, ok, value))
    for loop, items in by_loop.items():
        # A closed loop raises RuntimeError: nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_settle, items)


def ignore_outcome(future: asyncio.Future[Any]) -> None:
    """A done callback for work nobody waits for: its error is retrieved, not logged."""
    if not future.cancelled():
        future.exception()


async def outlast_cancellation(work: asyncio.Future[Any]) -> None:
    """Wait for ``work`` to finish, however many times the waiter is cancelled meanwhile."""
    while not work.done():
        try:
            await asyncio.wait([work])
        except asyncio.CancelledError:
            continue


def backoff(attempt: int) -> float:
    """Seconds to pause after failed attempt ``attempt`` (1, 2, ...) before the next one.

    Jittered, so that work that failed together (transactions that conflicted
    with each other) does not try again together.
    """
    pause = min(BACKOFF * 2.0 ** (attempt - 1), BACKOFF_MAX)
    return pause * random.uniform(0.5, 1.5)


def loop_running() -> bool:
    """Whether an event loop runs in this thread (else: set-up code before ``asyncio.run``)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
