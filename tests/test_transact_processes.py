"""Counters bumped through ``env.transact`` by eight processes at once, each with eight
tasks whose transactions overlap, in one LMDB environment, are exact: no increment is
lost, applied twice or applied in part, and each one read a state no other one read."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import queue
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import bounded
from helpers.transact_counter_worker import (
    COUNTERS,
    LOG,
    MAP_SIZE,
    SLOTS,
    TOTAL,
    Tally,
    counters_db,
    increment,
    log_db,
    slot_of,
    worker_key,
)

import aiolmdb
from aiolmdb.environment import TRANSACT_ATTEMPTS

# Transactions validated under LMDB's write lock, shared by processes: LMDB's own.
pytestmark = pytest.mark.lmdb_only

PROCESSES = 8
INCREMENTS = 150
TASKS_PER_PROCESS = 8
#: Bound on the whole run of the processes, generous for a slow, shared machine.
PROCESS_TIMEOUT = 90.0


def failures_told(results: Any) -> list[str]:
    """The failures processes put on ``results`` that were not taken yet: those of
    processes that just ended may still be on their way."""
    told: list[str] = []
    with contextlib.suppress(queue.Empty):
        while True:
            outcome = results.get(timeout=1.0)
            if not isinstance(outcome, Tally):
                told.append(outcome)
    return told


def run_processes(path: str) -> list[Tally]:
    """Run the :data:`PROCESSES` workers to the end; their tallies, by worker.

    The first failure a process tells, an exit without telling, or the deadline fails
    the run at once; every process still alive when this returns or raises is killed.
    """
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(PROCESSES)
    results: Any = context.Queue()
    args = (INCREMENTS, TASKS_PER_PROCESS, PROCESS_TIMEOUT, start, results)
    processes = [
        context.Process(target=increment, args=(path, worker, *args)) for worker in range(PROCESSES)
    ]
    tallies: list[Tally] = []
    deadline = time.monotonic() + PROCESS_TIMEOUT
    try:
        for process in processes:
            process.start()
        while len(tallies) < PROCESSES:
            try:
                outcome = results.get(timeout=0.5)
            except queue.Empty:
                codes = [process.exitcode for process in processes]
                if any(code not in (None, 0) for code in codes):
                    raise AssertionError(
                        f"the processes ended with exit codes {codes} (None: running), "
                        f"telling {failures_told(results) or 'nothing'}"
                    ) from None
                if time.monotonic() > deadline:
                    told = sorted(tally.worker for tally in tallies)
                    raise AssertionError(
                        f"after {PROCESS_TIMEOUT:g} s only processes {told} were done"
                    ) from None
                continue
            assert isinstance(outcome, Tally), f"a process failed:\n{outcome}"
            tallies.append(outcome)
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
            if process.pid is not None:
                process.join()
        results.close()
    assert [process.exitcode for process in processes] == [0] * PROCESSES
    return sorted(tallies, key=lambda tally: tally.worker)


async def test_counters_bumped_by_eight_processes_of_eight_tasks_are_exact(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(tmp_path / "env")
    async with aiolmdb.open(path, map_size=MAP_SIZE) as env:
        # Created before the processes start, so that they do not race to create them.
        await bounded(env.open_db_async(COUNTERS))
        await bounded(env.open_db_async(LOG))
    started = time.monotonic()
    tallies = await bounded(asyncio.to_thread(run_processes, path), PROCESS_TIMEOUT + 30)
    elapsed = time.monotonic() - started

    async with aiolmdb.open(path, map_size=MAP_SIZE) as env:
        names = [name async for name in env.get_default_database().keys()]
        counters = dict([item async for item in counters_db(env).items()])
        log = dict([item async for item in log_db(env).items()])
    retried = [t.runs - len(t.acknowledged) - len(t.gave_up) for t in tallies]
    with capsys.disabled():
        print(
            f"\n{PROCESSES} processes x {TASKS_PER_PROCESS} tasks, {INCREMENTS} transact "
            f"increments each: {elapsed:.1f} s, {sum(retried)} runs again after a conflict "
            f"{retried}"
        )

    # Nothing was written but the two databases, and in them exactly what the
    # acknowledged increments wrote: none lost, none applied twice or in part.
    assert names == [COUNTERS.encode(), LOG.encode()]
    acknowledged = [(t.worker, i) for t in tallies for i in t.acknowledged]
    assert sorted(log) == sorted(acknowledged)
    per_slot = {slot_of(s): 0 for s in range(SLOTS)}
    for _, i in acknowledged:
        per_slot[slot_of(i)] += 1
    assert counters == {
        TOTAL: len(acknowledged),
        **{slot: count for slot, count in per_slot.items() if count},
        **{worker_key(t.worker): len(t.acknowledged) for t in tallies if t.acknowledged},
    }
    # Each increment read a state no other one read: the values read of each counter
    # are 0, 1, 2, ... once each, as if the increments had run one after another.
    assert sorted(reads[0] for reads in log.values()) == list(range(len(acknowledged)))
    for slot, count in per_slot.items():
        seen = sorted(log[key][1] for key in acknowledged if slot_of(key[1]) == slot)
        assert seen == list(range(count)), f"the reads of {slot}"
    for tally in tallies:
        seen = sorted(log[(tally.worker, i)][2] for i in tally.acknowledged)
        assert seen == list(range(len(tally.acknowledged))), f"the reads of process {tally.worker}"
    # And every increment was acknowledged: transact ran each conflict again until done.
    gave_up = [len(t.gave_up) for t in tallies]
    assert gave_up == [0] * PROCESSES, (
        f"transact raised ConflictError after {TRANSACT_ATTEMPTS} runs for {gave_up} calls "
        "(by process) of the same few contended counters"
    )
    assert counters[TOTAL] == PROCESSES * INCREMENTS
