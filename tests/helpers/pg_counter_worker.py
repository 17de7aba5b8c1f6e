"""Child process of ``test_postgres_processes``: increments shared counters on PostgreSQL.

:func:`increment` runs in a process of its own (multiprocessing, spawn): it opens the
environment, waits at a barrier so that every process starts at once, then makes
``n`` increments, each one ``env.transact`` call, and puts its :class:`Tally` (or
the traceback that ended it) on a queue. A call that raises ConflictError (transact
gave up: nothing applied) is counted and not made again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import traceback
from typing import Protocol

import aiolmdb
from aiolmdb.coders import StringCoder, UInt64Coder

__all__ = ["SLOTS", "TOTAL", "Tally", "increment", "slot_of", "worker_key"]

#: The counter every increment bumps.
TOTAL = "total"
#: How many slot counters there are: increment ``i`` bumps slot ``i % SLOTS``.
SLOTS = 3


def slot_of(i: int) -> str:
    """The slot counter increment ``i`` (of any process) bumps."""
    return f"slot-{i % SLOTS}"


def worker_key(worker: int) -> str:
    """The counter only process ``worker`` bumps."""
    return f"worker-{worker}"


@dataclasses.dataclass(frozen=True)
class Tally:
    """What one process did."""

    worker: int
    #: ``transact`` calls that returned, by the slot they bumped.
    acknowledged: dict[str, int]
    #: ``transact`` calls that raised ConflictError: it gave up after its attempts.
    gave_up: int
    #: Runs of the transaction's function: each one beyond the first of a call was a
    #: retry after a conflict.
    runs: int


class Barrier(Protocol):
    def wait(self, timeout: float | None = None) -> int: ...


class Queue(Protocol):
    def put(self, obj: object) -> None: ...


def increment(url: str, worker: int, n: int, start: Barrier, results: Queue) -> None:
    """Make ``n`` increments of the counters at ``url`` as process ``worker``; put a
    :class:`Tally` on ``results``, or the traceback as a string if it failed."""
    try:
        results.put(asyncio.run(_increment(url, worker, n, start)))
    except BaseException:
        results.put(traceback.format_exc())
        raise


async def _increment(url: str, worker: int, n: int, start: Barrier) -> Tally:
    async with aiolmdb.open(url) as env:
        counters = env.open_db("counters", key_coder=StringCoder(), value_coder=UInt64Coder())
        runs = 0

        async def bump(i: int) -> None:
            nonlocal runs
            runs += 1
            for key in (TOTAL, slot_of(i), worker_key(worker)):
                await counters.put(key, await counters.get(key, 0) + 1)

        await asyncio.to_thread(start.wait, 60.0)
        acknowledged = dict.fromkeys(map(slot_of, range(SLOTS)), 0)
        gave_up = 0
        for i in range(n):
            try:
                await env.transact(bump, i)
            except aiolmdb.ConflictError:
                gave_up += 1
            else:
                acknowledged[slot_of(i)] += 1
    return Tally(worker=worker, acknowledged=acknowledged, gave_up=gave_up, runs=runs)
