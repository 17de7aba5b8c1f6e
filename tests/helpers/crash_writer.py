"""Child program for ``test_crash_safety``: writes through aiolmdb until it is killed.

Usage: ``python crash_writer.py PATH RUN``. It prints one line per
acknowledged write, flushed, only after the ``await`` that wrote it returned:

- ``READY``: set-up done;
- ``S <key>``: a single ``put`` (value: :func:`single_value`);
- ``M <run> <batch> <n>``: a ``put_multi`` of ``n`` records (:func:`batch_items`);
- ``T <run> <seq>``: a transfer between two accounts (an ``env.transaction()``
  touching ``Accounts`` and ``Transfers``);
- ``R <key>``: a record written to ``Records`` and its mirror to ``Mirrors``
  in one ``env.transaction()``.

The map starts small (256 KiB) so that it grows while the program is killed.
The parent reuses the declarations below to check what is on disk.
"""

from __future__ import annotations

import asyncio
import random
import sys

from pydantic import BaseModel

import aiolmdb
from aiolmdb.coders import StringCoder, UInt64Coder
from aiolmdb.models import Collection

ACCOUNTS = 8
INITIAL_BALANCE = 1_000
MAP_SIZE = 256 * 1024
SINGLE_TASKS = 12
BATCH_TASKS = 2
TRANSFER_TASKS = 3
MIRROR_TASKS = 2


class Account(BaseModel):
    balance: int


class Transfer(BaseModel):
    source: int
    target: int
    amount: int


class Record(BaseModel):
    key: str
    payload: str


class Accounts(Collection[int, Account]):
    key_coder = UInt64Coder()


class Transfers(Collection[str, Transfer]):
    key_coder = StringCoder()


class Records(Collection[str, Record]):
    key_coder = StringCoder()


class Mirrors(Collection[str, Record]):
    key_coder = StringCoder()


def single_value(key: str) -> bytes:
    """The value a single ``put`` stores under ``key`` (size varies with the key)."""
    return (key.encode() + b"|") * (1 + len(key) % 7) + b"x" * (hash_len(key) * 40)


def hash_len(key: str) -> int:
    return sum(key.encode()) % 50


def batch_key(run: int, batch: int, n: int, i: int) -> str:
    return f"m-{run:04d}-{batch:06d}-{n:03d}-{i:03d}"


def batch_items(run: int, batch: int, n: int) -> list[tuple[str, bytes]]:
    """The records of one ``put_multi`` batch; the key says the batch's size."""
    return [(batch_key(run, batch, n, i), f"{run}/{batch}/{i}".encode() * 20) for i in range(n)]


def record_for(key: str) -> Record:
    return Record(key=key, payload=key * 5)


def ack(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def ensure_accounts(env: aiolmdb.AsyncEnvironment, accounts: Accounts) -> None:
    async with env.transaction():
        if await accounts.count() == 0:
            await accounts.put_multi(
                [(i, Account(balance=INITIAL_BALANCE)) for i in range(ACCOUNTS)]
            )


async def singles(db: aiolmdb.AsyncDatabase[str, bytes], run: int, worker: int) -> None:
    seq = 0
    while True:
        key = f"s-{run:04d}-{worker:02d}-{seq:06d}"
        await db.put(key, single_value(key))
        ack(f"S {key}")
        seq += 1


async def batches(db: aiolmdb.AsyncDatabase[str, bytes], run: int, worker: int) -> None:
    rng = random.Random(run * 1000 + worker)
    batch = worker
    while True:
        n = rng.randint(1, 120)
        await db.put_multi(batch_items(run, batch, n))
        ack(f"M {run} {batch} {n}")
        batch += BATCH_TASKS


async def transfers(
    env: aiolmdb.AsyncEnvironment,
    accounts: Accounts,
    log: Transfers,
    run: int,
    worker: int,
) -> None:
    rng = random.Random(run * 7919 + worker)
    seq = worker
    while True:
        source, target = rng.sample(range(ACCOUNTS), 2)
        amount = rng.randint(1, 50)
        async with env.transaction():
            a = await accounts.get(source)
            b = await accounts.get(target)
            assert a is not None and b is not None
            await accounts.put(source, Account(balance=a.balance - amount))
            await asyncio.sleep(0)  # let other tasks queue work meanwhile
            await accounts.put(target, Account(balance=b.balance + amount))
            await log.put(
                f"t-{run:04d}-{seq:06d}", Transfer(source=source, target=target, amount=amount)
            )
        ack(f"T {run} {seq}")
        seq += TRANSFER_TASKS


async def mirrors(
    env: aiolmdb.AsyncEnvironment, records: Records, mirror: Mirrors, run: int, worker: int
) -> None:
    seq = 0
    while True:
        key = f"r-{run:04d}-{worker:02d}-{seq:06d}"
        async with env.transaction():
            await records.put(key, record_for(key))
            await mirror.put(key, record_for(key))
        ack(f"R {key}")
        seq += 1


async def main(path: str, run: int) -> None:
    env = aiolmdb.open(path, map_size=MAP_SIZE)
    singles_db = env.open_db("singles", key_coder=StringCoder())
    batches_db = env.open_db("batches", key_coder=StringCoder())
    accounts, log = Accounts(env), Transfers(env)
    records, mirror = Records(env), Mirrors(env)
    await ensure_accounts(env, accounts)
    ack("READY")
    tasks = [singles(singles_db, run, w) for w in range(SINGLE_TASKS)]
    tasks += [batches(batches_db, run, w) for w in range(BATCH_TASKS)]
    tasks += [transfers(env, accounts, log, run, w) for w in range(TRANSFER_TASKS)]
    tasks += [mirrors(env, records, mirror, run, w) for w in range(MIRROR_TASKS)]
    await asyncio.gather(*tasks)  # runs until the parent kills the process


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
