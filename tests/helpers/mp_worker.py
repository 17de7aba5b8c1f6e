"""Child program for ``test_multiprocess``: one process sharing an environment.

Usage: ``python mp_worker.py MODE PATH ARGS...``; it prints ``READY`` once the
environment is open, then waits for a line on stdin before working (so that
every process starts at once), and prints ``DONE`` at the end.

Modes:

- ``counter PATH WORKER N TASKS``: ``TASKS`` tasks together increment the
  shared counters ``b"total"`` (database ``counters``) and ``b"mirror"``
  (database ``mirror``) and the counter of this worker, ``N`` times in all,
  each time in one ``env.transaction()`` (read, +1, write);
- ``transfer PATH SECONDS``: moves amounts between the keys of database
  ``accounts`` (see :data:`ACCOUNTS`) in transactions for ``SECONDS``,
  keeping their sum;
- ``grow PATH MEGABYTES``: writes that much data into database ``bulk``
  (the map grows in this process) and prints the map size.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time

import aiolmdb
from aiolmdb.coders import UInt64Coder

ACCOUNTS = 16
INITIAL = 100


def counter_key(worker: int) -> bytes:
    return f"worker-{worker}".encode()


async def counter(path: str, worker: int, n: int, tasks: int) -> None:
    async with aiolmdb.open(path, map_size=16 * 1024 * 1024) as env:
        counters = env.open_db("counters", value_coder=UInt64Coder())
        mirror = env.open_db("mirror", value_coder=UInt64Coder())
        print("READY", flush=True)
        sys.stdin.readline()

        async def increment(times: int) -> None:
            for _ in range(times):
                async with env.transaction():
                    total = await counters.get(b"total", 0)
                    mine = await counters.get(counter_key(worker), 0)
                    await asyncio.sleep(0)  # other tasks' work queues up meanwhile
                    await counters.put(b"total", total + 1)
                    await counters.put(counter_key(worker), mine + 1)
                    await mirror.put(b"mirror", await mirror.get(b"mirror", 0) + 1)

        share = [n // tasks + (1 if i < n % tasks else 0) for i in range(tasks)]
        await asyncio.gather(*(increment(s) for s in share))
    print("DONE", flush=True)


async def transfer(path: str, seconds: float) -> None:
    async with aiolmdb.open(path, map_size=16 * 1024 * 1024) as env:
        accounts = env.open_db("accounts", key_coder=UInt64Coder(), value_coder=UInt64Coder())
        print("READY", flush=True)
        sys.stdin.readline()
        rng = random.Random(7)
        deadline = time.monotonic() + seconds
        commits = 0
        while time.monotonic() < deadline:
            source, target = rng.sample(range(ACCOUNTS), 2)
            async with env.transaction():
                a = await accounts.get(source, 0)
                b = await accounts.get(target, 0)
                amount = rng.randint(0, a)
                await accounts.put(source, a - amount)
                await accounts.put(target, b + amount)
            commits += 1
    print(f"DONE {commits}", flush=True)


async def grow(path: str, megabytes: int) -> None:
    async with aiolmdb.open(path, map_size=1024 * 1024) as env:
        bulk = env.open_db("bulk")
        print("READY", flush=True)
        sys.stdin.readline()
        chunk = 256
        for start in range(0, megabytes * 1024 * 1024 // 4096, chunk):
            await bulk.put_multi(
                [(b"%08d" % i, bytes([i % 256]) * 4000) for i in range(start, start + chunk)]
            )
        print(f"DONE {env.info()['map_size']}", flush=True)


def main(argv: list[str]) -> None:
    mode, path, *args = argv
    if mode == "counter":
        asyncio.run(counter(path, int(args[0]), int(args[1]), int(args[2])))
    elif mode == "transfer":
        asyncio.run(transfer(path, float(args[0])))
    elif mode == "grow":
        asyncio.run(grow(path, int(args[0])))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
