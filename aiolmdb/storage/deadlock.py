"""Work queued behind an open write transaction, refused when its owner awaits it.

An engine with one writer queues auto-commit writes (and other write
transactions) behind an open one. If the task that owns the open
transaction awaits such work, neither can ever finish. While the
transaction sits idle, its :class:`Watch` asks the event loop whether the
owner awaits any of the work queued behind it, and refuses that work with
:class:`~aiolmdb.TransactionError` (:func:`submit_behind`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import threading
from collections.abc import Awaitable, Callable, Collection, Iterator
from typing import Any, TypeVar

from ..errors import TransactionError

__all__ = ["Queued", "Watch", "awaited_by", "submit_behind"]

R = TypeVar("R")
F = TypeVar("F", bound=Callable[..., Any])

#: Futures visited at most when looking for who awaits a queued write.
_AWAIT_WALK_LIMIT = 10_000
#: Queued writes looked at per turn of the event loop.
_LOOK_SLICE = 256


class Queued:
    """Work queued behind open transactions (a write, or another transaction): refused,
    or begun.

    The event loop may refuse it (its future then fails) only until the engine
    begins it; once refused, the engine never runs it.
    """

    __slots__ = ("error", "future", "lock", "started", "what")

    def __init__(self, what: str) -> None:
        self.what = what  # how the refusal names it
        self.future: asyncio.Future[Any] | None = None  # what its caller awaits, once queued
        self.lock = threading.Lock()
        self.started = False
        self.error: TransactionError | None = None

    def start(self) -> None:
        """Where the engine runs it: raise the refusal, or make refusing it impossible."""
        with self.lock:
            if self.error is not None:
                raise self.error
            self.started = True

    def guarding(self, fn: Callable[..., R]) -> Callable[..., R]:
        """``fn``, run only if the work was not refused."""

        def run(*args: Any) -> R:
            self.start()
            return fn(*args)

        return run

    def watch(self, future: asyncio.Future[Any], watches: Collection[Watch]) -> None:
        """Have ``watches`` watch the work, whose caller awaits ``future``, until it is done.

        Done (refused, cancelled, or run once the transactions ended), it
        leaves their ``behind`` at once: a transaction kept busy never looks
        at it, and would hold on to it for as long as it is open.
        """
        self.future = future
        watchers = tuple(watches)  # the transactions open now, not those opened later
        for watch in watchers:
            watch.behind.add(self)
        future.add_done_callback(functools.partial(self._unwatch, watchers))

    def _unwatch(self, watchers: tuple[Watch, ...], _: asyncio.Future[Any]) -> None:
        for watch in watchers:
            watch.behind.discard(self)

    def refuse(self, error: TransactionError) -> None:
        """On the event loop: fail the work, unless the engine has begun it."""
        with self.lock:
            if self.started:
                return
            self.error = error
        if self.future is not None and not self.future.done():
            self.future.set_exception(error)


def submit_behind(
    watches: Collection[Watch],
    submit: Callable[[F], Awaitable[R]],
    fn: F,
) -> Awaitable[R]:
    """Submit an auto-commit write with ``submit`` while transactions are open.

    Each open transaction's watch then looks for its owner awaiting this
    write, which would never finish (it waits behind the transaction): that
    write is refused with :class:`~aiolmdb.TransactionError` instead. A write
    made to wait for room in a queue (not a future yet) is not watched.
    """
    queued = Queued("a write made outside it")
    job = submit(queued.guarding(fn))  # type: ignore[arg-type]
    if isinstance(job, asyncio.Future):
        queued.watch(job, watches)
    return job


class Watch:
    """One open transaction's look-out for work its owner awaits, queued behind it."""

    def __init__(
        self,
        owner: asyncio.Task[Any] | None,
        label: str,
        ended: Callable[[], bool],
    ) -> None:
        #: The task that opened the transaction.
        self.owner = owner
        self._loop = asyncio.get_running_loop()
        self._label = label
        self._ended = ended
        #: Work queued while the transaction is open.
        self.behind: set[Queued] = set()
        self._looking = False  # a look is under way (on the event loop)

    def look_soon(self) -> None:
        """From any thread, while the transaction is idle: look for awaited work on the loop."""
        if self.behind:
            with contextlib.suppress(RuntimeError):  # its loop is closed
                self._loop.call_soon_threadsafe(self._look)

    def _look(self) -> None:
        if not self._looking:  # else the look under way will do
            self._looking = True
            self._look_at(iter(list(self.behind)))

    def _look_at(self, pending: Iterator[Queued]) -> None:
        # A slice per turn of the event loop: a long queue never stalls it.
        owner = self.owner
        looked = 0
        if not self._ended() and owner is not None and not owner.done():
            for queued in itertools.islice(pending, _LOOK_SLICE):
                looked += 1
                assert queued.future is not None  # only queued work is watched
                if queued.future.done():
                    self.behind.discard(queued)
                elif awaited_by(queued.future, owner):
                    self.behind.discard(queued)
                    queued.refuse(
                        TransactionError(
                            f"{self._label} awaits {queued.what}, which waits for this "
                            "transaction to end: it would never finish, so it was refused "
                            "(make the write inside the transaction, or await it after the block)"
                        )
                    )
        if looked == _LOOK_SLICE:
            self._loop.call_soon(self._look_at, pending)
        else:
            self._looking = False


def awaited_by(start: asyncio.Future[Any], target: asyncio.Future[Any]) -> bool:
    """True when ``target`` (a task) waits, through any chain of awaits, for ``start``.

    Follows each future's done callbacks up to whoever waits for it: a task's
    wake-up, and the futures held by asyncio's wrappers (gather, wait, wait_for,
    shield, task groups). Best effort: a wrapper it does not know ends the chain.
    """
    seen: set[int] = set()
    pending = [start]
    while pending and len(seen) < _AWAIT_WALK_LIMIT:
        future = pending.pop()
        if future is target:
            return True
        if id(future) in seen:
            continue
        seen.add(id(future))
        # asyncio keeps no public list of a future's waiters.
        for callback, *_ in getattr(future, "_callbacks", None) or ():
            pending.extend(_futures_held_by(callback))
    return False


def _futures_held_by(callback: Any) -> Iterator[asyncio.Future[Any]]:
    bound_to = getattr(callback, "__self__", None)
    if isinstance(bound_to, asyncio.Future):
        yield bound_to  # a task's wake-up: that task awaits the future
    parent = getattr(bound_to, "_parent_task", None)  # an asyncio.TaskGroup
    if isinstance(parent, asyncio.Future):
        yield parent
    held: list[Any] = []
    if isinstance(callback, functools.partial):
        held.extend(callback.args)
    for cell in getattr(callback, "__closure__", None) or ():
        with contextlib.suppress(ValueError):  # an empty cell
            held.append(cell.cell_contents)
    yield from (obj for obj in held if isinstance(obj, asyncio.Future))
