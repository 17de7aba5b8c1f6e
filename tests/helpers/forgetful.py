"""Child program for ``test_cancellation``: uses an environment and never closes it.

Usage: ``python forgetful.py MODE PATH``; prints ``QUEUED`` when its writes are
queued, then returns from its main without closing the environment.

- ``awaited``: ``asyncio.run``; every write is awaited (acknowledged);
- ``queued``: ``run_until_complete`` on a loop left open, returning while
  writes queued by still-pending tasks wait for the writer thread (held busy
  by a slow batch): they must be committed at interpreter exit;
- ``open-transaction``: like ``queued``, but a task is left inside
  ``env.transaction()`` (its writes must not be committed).
"""

from __future__ import annotations

import asyncio
import sys
import time

import aiolmdb

QUEUED_WRITES = 300


async def awaited(path: str) -> None:
    env = aiolmdb.open(path)
    db = env.open_db("data")
    for i in range(50):
        await db.put(b"awaited-%03d" % i, b"v%d" % i)
    await db.put_multi([(b"multi-%03d" % i, b"m") for i in range(50)])
    print("QUEUED", flush=True)


def slow(_: object) -> bool:
    time.sleep(0.3)  # keeps the writer thread busy while the others queue up
    return True


async def queued(path: str, leave_transaction: bool) -> list[asyncio.Task[object]]:
    env = aiolmdb.open(path)
    db = env.open_db("data")
    await db.put(b"first", b"1")
    tasks: list[asyncio.Task[object]] = []
    if leave_transaction:
        entered = asyncio.Event()

        async def in_transaction() -> None:
            async with env.transaction():
                await db.put(b"in-transaction", b"never committed")
                entered.set()
                await asyncio.Event().wait()  # forever

        tasks.append(asyncio.create_task(in_transaction()))
        await entered.wait()
    else:
        tasks.append(asyncio.create_task(db.run(slow, write=True)))
    for i in range(QUEUED_WRITES):
        tasks.append(asyncio.create_task(db.put(b"queued-%03d" % i, b"q%d" % i)))
    tasks.append(asyncio.create_task(db.put_multi([(b"qmulti-%03d" % i, b"m") for i in range(50)])))
    await asyncio.sleep(0.05)  # every task has queued its write
    print("QUEUED", flush=True)
    return tasks


def main(mode: str, path: str) -> None:
    if mode == "awaited":
        asyncio.run(awaited(path))
        return
    loop = asyncio.new_event_loop()
    # The loop and its pending tasks are left as they are: the program just ends.
    pending = loop.run_until_complete(queued(path, mode == "open-transaction"))
    globals()["_keep"] = (loop, pending)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
