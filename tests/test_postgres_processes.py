"""Counters bumped by several processes at once through ``env.transact`` on PostgreSQL
are exact: every conflict is run again, none is lost or applied twice."""

from __future__ import annotations

import asyncio
import multiprocessing
import queue
import time
from typing import Any

import pytest
from helpers.pg_counter_worker import SLOTS, TOTAL, Tally, increment, slot_of, worker_key

import aiolmdb
from aiolmdb.coders import StringCoder, UInt64Coder
from aiolmdb.environment import TRANSACT_ATTEMPTS

PROCESSES = 4
INCREMENTS = 150
#: Bound on each process's work, generous for a slow, shared machine.
PROCESS_TIMEOUT = 120.0


def run_processes(url: str) -> list[Tally]:
    """Run the :data:`PROCESSES` workers to the end; their tallies, by worker."""
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(PROCESSES)
    results: Any = context.Queue()
    processes = [
        context.Process(target=increment, args=(url, worker, INCREMENTS, start, results))
        for worker in range(PROCESSES)
    ]
    for process in processes:
        process.start()
    outcomes: list[Tally | str] = []
    deadline = time.monotonic() + PROCESS_TIMEOUT
    try:
        while len(outcomes) < PROCESSES:
            try:
                outcomes.append(results.get(timeout=0.5))
            except queue.Empty:
                codes = [process.exitcode for process in processes]
                if None not in codes and results.empty():
                    raise AssertionError(
                        f"the processes ended with {codes}, telling {outcomes}"
                    ) from None
                assert time.monotonic() < deadline, f"no end after {PROCESS_TIMEOUT:g}s"
        for process in processes:
            process.join(PROCESS_TIMEOUT)
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
                process.join()
    failures = [outcome for outcome in outcomes if not isinstance(outcome, Tally)]
    assert failures == []
    assert [process.exitcode for process in processes] == [0] * PROCESSES
    return sorted((o for o in outcomes if isinstance(o, Tally)), key=lambda t: t.worker)


async def test_counters_bumped_by_four_processes_are_exact(
    postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    async with aiolmdb.open(postgres_url) as env:
        # Created before the processes start, so that they do not race to create it.
        env.open_db("counters", key_coder=StringCoder(), value_coder=UInt64Coder())
    tallies = await asyncio.to_thread(run_processes, postgres_url)

    async with aiolmdb.open(postgres_url) as env:
        counters = env.open_db("counters", key_coder=StringCoder(), value_coder=UInt64Coder())
        found = dict([item async for item in counters.items()])
    retried = [tally.runs - sum(tally.acknowledged.values()) - tally.gave_up for tally in tallies]
    gave_up = [tally.gave_up for tally in tallies]
    with capsys.disabled():
        print(
            f"\n{PROCESSES} processes x {INCREMENTS} transact increments: {sum(retried)} runs "
            f"again after a conflict {retried}, calls given up after "
            f"{TRANSACT_ATTEMPTS} runs {gave_up}"
        )

    # Exactly the acknowledged increments: none lost, none applied twice.
    slots = [slot_of(s) for s in range(SLOTS)]
    assert found == {
        TOTAL: sum(sum(tally.acknowledged.values()) for tally in tallies),
        **{slot: sum(tally.acknowledged[slot] for tally in tallies) for slot in slots},
        **{worker_key(t.worker): sum(t.acknowledged.values()) for t in tallies},
    }
    # And every increment was acknowledged: transact ran each conflict again until done.
    assert gave_up == [0] * PROCESSES, (
        f"transact raised ConflictError after {TRANSACT_ATTEMPTS} runs for {gave_up} calls "
        "(by process) of the same few contended counters"
    )
    assert found[TOTAL] == PROCESSES * INCREMENTS
