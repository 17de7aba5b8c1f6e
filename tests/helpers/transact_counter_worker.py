"""Child process of ``test_transact_processes``: increments counters shared by several
processes in one LMDB environment, each increment one ``env.transact`` call.

:func:`increment` runs in a process of its own (multiprocessing, spawn): it opens the
environment, waits at a barrier so that every process starts at once, then makes
``n`` increments with ``tasks`` tasks at once, so that transactions overlap, and puts
its :class:`Tally` (or the traceback that ended it) on a queue. Increment ``i`` of
process ``worker`` reads the counters :data:`TOTAL`, ``slot_of(i)`` and
``worker_key(worker)`` of database :data:`COUNTERS`, writes each one plus one, and
inserts the record ``(worker, i)`` into database :data:`LOG` holding the three values
it read, all in one transaction. A call that raises ConflictError (transact gave up:
nothing applied) is counted and not made again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import traceback
from typing import Protocol

import aiolmdb
from aiolmdb.coders import StringCoder, TupleCoder, UInt16Coder, UInt64Coder

__all__ = [
    "COUNTERS",
    "LOG",
    "SLOTS",
    "TOTAL",
    "Tally",
    "counters_db",
    "increment",
    "log_db",
    "slot_of",
    "worker_key",
]

#: The database of the counters.
COUNTERS = "counters"
#: The database of the log records, one per increment.
LOG = "log"
#: The counter every increment bumps.
TOTAL = "total"
#: How many slot counters there are: increment ``i`` bumps slot ``i % SLOTS``.
SLOTS = 3
#: The map of the environment, far more than the test writes.
MAP_SIZE = 16 * 1024 * 1024

#: What one increment read: the total, its slot's counter and its process's counter.
Reads = tuple[int, int, int]


def slot_of(i: int) -> str:
    """The slot counter increment ``i`` (of any process) bumps."""
    return f"slot-{i % SLOTS}"


def worker_key(worker: int) -> str:
    """The counter only process ``worker`` bumps."""
    return f"worker-{worker}"


def counters_db(env: aiolmdb.AsyncEnvironment) -> aiolmdb.AsyncDatabase[str, int]:
    """The database of the counters, by name."""
    return env.open_db(COUNTERS, key_coder=StringCoder(), value_coder=UInt64Coder())


def log_db(env: aiolmdb.AsyncEnvironment) -> aiolmdb.AsyncDatabase[tuple[int, int], Reads]:
    """The database of the log: ``(worker, i)`` to what increment ``i`` of ``worker`` read."""
    return env.open_db(
        LOG,
        key_coder=TupleCoder(UInt16Coder(), UInt16Coder()),
        value_coder=TupleCoder(UInt64Coder(), UInt64Coder(), UInt64Coder()),
    )


@dataclasses.dataclass(frozen=True)
class Tally:
    """What one process did."""

    worker: int
    #: The increments whose ``transact`` call returned.
    acknowledged: list[int]
    #: The increments whose ``transact`` call raised ConflictError: it gave up.
    gave_up: list[int]
    #: Runs of the transaction's function: each one beyond the first of a call was a
    #: retry after a conflict.
    runs: int


class Barrier(Protocol):
    def wait(self, timeout: float | None = None) -> int: ...


class Queue(Protocol):
    def put(self, obj: object) -> None: ...


def increment(
    path: str, worker: int, n: int, tasks: int, timeout: float, start: Barrier, results: Queue
) -> None:
    """Make ``n`` increments of the counters at ``path`` as process ``worker``, with
    ``tasks`` tasks, within ``timeout`` seconds; put a :class:`Tally` on ``results``, or
    the traceback as a string if it failed."""
    try:
        tally = asyncio.run(asyncio.wait_for(_increment(path, worker, n, tasks, start), timeout))
        results.put(tally)
    except BaseException:
        results.put(traceback.format_exc())
        raise


async def _increment(path: str, worker: int, n: int, tasks: int, start: Barrier) -> Tally:
    async with aiolmdb.open(path, map_size=MAP_SIZE) as env:
        counters = counters_db(env)
        log = log_db(env)
        runs = 0

        async def bump(i: int) -> None:
            nonlocal runs
            runs += 1
            keys = (TOTAL, slot_of(i), worker_key(worker))
            read: list[int] = []
            for key in keys:
                read.append(await counters.get(key, 0))
                await asyncio.sleep(0)  # the other tasks' transactions run meanwhile
            for key, value in zip(keys, read, strict=True):
                await counters.put(key, value + 1)
            # insert: a record already there (an increment applied twice) fails it.
            await log.insert((worker, i), (read[0], read[1], read[2]))

        acknowledged: list[int] = []
        gave_up: list[int] = []

        async def run_task(first: int) -> None:
            for i in range(first, n, tasks):
                try:
                    await env.transact(bump, i)
                except aiolmdb.ConflictError:
                    gave_up.append(i)
                else:
                    acknowledged.append(i)

        await asyncio.to_thread(start.wait, 60.0)
        await asyncio.gather(*(run_task(first) for first in range(tasks)))
    return Tally(
        worker=worker, acknowledged=sorted(acknowledged), gave_up=sorted(gave_up), runs=runs
    )
