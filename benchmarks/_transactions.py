"""W10: transactions from many tasks, each reading two records and writing three.

Every transaction moves one unit between two accounts of 1,000: it reads
accounts ``a`` and ``b``, writes ``a - 1`` and ``b + 1``, and inserts a
transfer record into a collection with a secondary index (on the source
account). Contenders, each on a fresh environment per run, in turns:

- ``aiolmdb transact (optimistic)``: ``await env.transact(transfer, ...)``;
- ``aiolmdb env.transaction() (pessimistic)``: ``async with env.transaction():
  await transfer(...)``, which holds LMDB's single writer for the whole block;
- ``sync py-lmdb, one after another``: the limit: the same transactions through
  py-lmdb, one write transaction each, committed durably one after the other,
  writing by hand the bytes the collections write (records and index entries);
- ``aiolmdb :memory: transact`` (informative): ``transact`` on the in-memory engine.

A contended variant draws both accounts of every transaction from 10 hot
keys, and counts how often a body ran again (conflicts). Every run ends by
checking the stored state against what its transactions must leave: every
balance, every transfer and every index entry, so a broken run fails the
workload instead of reporting a number.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import random
import statistics
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import lmdb
from pydantic import BaseModel

import aiolmdb
from aiolmdb.coders import UInt64Coder
from aiolmdb.models import Collection, Index

from ._harness import (
    AIOLMDB_MEMORY,
    Row,
    Sizes,
    aiolmdb_env,
    at_least,
    lateness_stats,
    memory_env,
    sync_env,
    temp_dir,
    timed,
)

__all__ = ["w10"]

Notes = list[str]

OPTIMISTIC = "aiolmdb transact (optimistic)"
PESSIMISTIC = "aiolmdb env.transaction() (pessimistic)"
SYNC = "sync py-lmdb, one after another"
MEMORY = f"{AIOLMDB_MEMORY} transact"
#: Every account's balance before the first transaction.
INITIAL_BALANCE = 1_000_000


class Account(BaseModel):
    """An account: its id and its balance."""

    id: int
    balance: int


class Transfer(BaseModel):
    """One unit moved from account ``source`` to account ``target``."""

    id: int
    source: int
    target: int
    amount: int


class Accounts(Collection[int, Account]):
    key_coder = UInt64Coder()


class Transfers(Collection[int, Transfer]):
    key_coder = UInt64Coder()
    by_source = Index(lambda t: t.source, UInt64Coder())


# -- the layout the collections write, by hand (for py-lmdb) ---------------------------------

ACCOUNTS_DB = b"Accounts"
TRANSFERS_DB = b"Transfers"
#: Where the collection keeps the entries of ``Transfers.by_source``.
INDEX_DB = b"__aiolmdb__/index/Transfers/by_source"


def encode_key(key: int) -> bytes:
    """``UInt64Coder``: 8 bytes big-endian."""
    return key.to_bytes(8, "big")


def encode_model(model: BaseModel) -> bytes:
    """``PydanticCoder``: the model's JSON dump."""
    return model.model_dump_json().encode()


def index_entry(source: int, raw_key: bytes) -> bytes:
    """A plain index entry: the escaped index key (every 0x00 doubled as 0x00 0xFF, then
    0x00 0x00) followed by the record's key; its value is empty."""
    return encode_key(source).replace(b"\x00", b"\x00\xff") + b"\x00\x00" + raw_key


def entry_source(entry: bytes) -> tuple[int, bytes]:
    """The index key and the record key of an index entry (``index_entry`` undone)."""
    # An escaped zero is 0x00 0xFF: the first 0x00 0x00 is the terminator.
    end = entry.index(b"\x00\x00")
    return int.from_bytes(entry[:end].replace(b"\x00\xff", b"\x00"), "big"), entry[end + 2 :]


# -- plans and what they leave -------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One transaction: transfer ``id`` moves one unit from ``source`` to ``target``."""

    id: int
    source: int
    target: int


#: The transactions of each task, in order.
Plan = list[list[Step]]


def make_plan(tasks: int, per_task: int, accounts: Sequence[int], first_id: int, seed: int) -> Plan:
    """``per_task`` transfers between two distinct random ``accounts`` for each task."""
    rng = random.Random(seed)
    plan: Plan = []
    next_id = first_id
    for _ in range(tasks):
        steps = []
        for _ in range(per_task):
            source, target = rng.sample(accounts, 2)
            steps.append(Step(next_id, source, target))
            next_id += 1
        plan.append(steps)
    return plan


@dataclass
class State:
    """What an environment holds, decoded: balances, transfers, index entries."""

    balances: dict[int, int] = field(default_factory=dict)
    #: Transfers by (source, target).
    transfers: Counter[tuple[int, int]] = field(default_factory=Counter)
    #: Index entries by source (each checked to name a transfer from that source).
    indexed: Counter[int] = field(default_factory=Counter)


def expected_state(accounts: int, plans: Sequence[Plan]) -> State:
    """What running every transaction of ``plans`` leaves, in any order."""
    state = State(balances=dict.fromkeys(range(accounts), INITIAL_BALANCE))
    for plan in plans:
        for steps in plan:
            for step in steps:
                state.balances[step.source] -= 1
                state.balances[step.target] += 1
                state.transfers[(step.source, step.target)] += 1
                state.indexed[step.source] += 1
    return state


def verify(contender: str, got: State, expected: State) -> None:
    """Raise AssertionError naming what ``contender``'s run left wrong."""
    total, want = sum(got.balances.values()), sum(expected.balances.values())
    if total != want:
        raise AssertionError(f"W10 {contender}: the balances sum to {total:,}, not {want:,}")
    wrong = {k: v for k, v in got.balances.items() if expected.balances.get(k) != v}
    missing = expected.balances.keys() - got.balances.keys()
    if wrong or missing:
        some = sorted(wrong)[:3]
        raise AssertionError(
            f"W10 {contender}: {len(wrong)} balances differ from what the transactions "
            f"leave (e.g. {[(k, wrong[k], expected.balances.get(k)) for k in some]} as "
            f"(account, stored, expected)), {len(missing)} accounts missing"
        )
    _same_counts(contender, "transfers", got.transfers, expected.transfers)
    _same_counts(contender, "index entries", got.indexed, expected.indexed)


def _same_counts(contender: str, what: str, stored: Counter[Any], should: Counter[Any]) -> None:
    if stored != should:
        differing = sorted(set((stored - should) + (should - stored)))[:3]
        raise AssertionError(
            f"W10 {contender}: {stored.total():,} {what} stored, {should.total():,} expected; "
            f"counts differ for {differing}"
        )


# -- one run of a contender ------------------------------------------------------------------


@dataclass
class Run:
    """One timed run: its seconds, each transaction's latency, and how often bodies ran."""

    seconds: float
    latencies: list[float]
    bodies: int
    committed: int


class Form(enum.Enum):
    """How an aiolmdb contender runs each transaction."""

    TRANSACT = "await env.transact(transfer, ...)"
    TRANSACTION = "async with env.transaction(): await transfer(...)"


Opener = Callable[[], contextlib.AbstractAsyncContextManager[aiolmdb.AsyncEnvironment]]


@contextlib.asynccontextmanager
async def on_disk() -> AsyncIterator[aiolmdb.AsyncEnvironment]:
    """A fresh LMDB environment in a fresh temporary directory."""
    with temp_dir("w10") as path:
        async with aiolmdb_env(path) as env:
            yield env


async def _gather_timed(
    plan: Plan, one: Callable[[Step], Awaitable[object]], latencies: list[float]
) -> None:
    """One task per list of steps, each awaiting ``one(step)`` in turn, timing each."""
    clock = time.perf_counter

    async def task(steps: list[Step]) -> None:
        for step in steps:
            start = clock()
            await one(step)
            latencies.append(clock() - start)

    await asyncio.gather(*(task(steps) for steps in plan))


async def aiolmdb_run(
    contender: str,
    open_env: Opener,
    form: Form,
    accounts: int,
    warm: Plan,
    plan: Plan,
    expected: State,
) -> Run:
    """Warm a fresh environment up with ``warm``, time ``plan``, check what it holds."""
    async with open_env() as env:
        accounts_of, transfers = Accounts(env), Transfers(env)
        await accounts_of.put_multi(
            (k, Account(id=k, balance=INITIAL_BALANCE)) for k in range(accounts)
        )
        bodies = [0]

        async def transfer(step: Step) -> None:
            bodies[0] += 1
            source = await accounts_of.get(step.source)
            target = await accounts_of.get(step.target)
            assert source is not None and target is not None
            await accounts_of.put(step.source, Account(id=step.source, balance=source.balance - 1))
            await accounts_of.put(step.target, Account(id=step.target, balance=target.balance + 1))
            await transfers.insert(
                step.id, Transfer(id=step.id, source=step.source, target=step.target, amount=1)
            )

        async def in_transaction(step: Step) -> None:
            async with env.transaction():
                await transfer(step)

        async def transacted(step: Step) -> None:
            await env.transact(transfer, step)

        one = transacted if form is Form.TRANSACT else in_transaction
        await _gather_timed(warm, one, [])
        bodies[0] = 0
        latencies: list[float] = []
        seconds = await timed(lambda: _gather_timed(plan, one, latencies))
        ran = bodies[0]
        state = State()
        async for key, account in accounts_of.items():
            state.balances[key] = account.balance
        async for record in transfers.values():
            state.transfers[(record.source, record.target)] += 1
        async for record in transfers.by_source.values():
            state.indexed[record.source] += 1
    verify(contender, state, expected)
    return Run(seconds, latencies, ran, len(latencies))


def _sync_state(env: lmdb.Environment) -> State:
    """What a py-lmdb environment holds, every key and value checked to be its hand encoding."""
    state = State()
    accounts_db = env.open_db(ACCOUNTS_DB)
    transfers_db = env.open_db(TRANSFERS_DB)
    index_db = env.open_db(INDEX_DB)
    with env.begin() as txn:
        for raw_key, raw in txn.cursor(accounts_db):
            account = Account.model_validate_json(raw)
            if (encode_key(account.id), encode_model(account)) != (raw_key, raw):
                raise AssertionError(f"W10: account {raw_key!r}: {raw!r} is not {account!r}")
            state.balances[account.id] = account.balance
        for raw_key, raw in txn.cursor(transfers_db):
            record = Transfer.model_validate_json(raw)
            if (encode_key(record.id), encode_model(record)) != (raw_key, raw):
                raise AssertionError(f"W10: transfer {raw_key!r}: {raw!r} is not {record!r}")
            state.transfers[(record.source, record.target)] += 1
        for entry, value in txn.cursor(index_db):
            source, raw_key = entry_source(entry)
            named = txn.get(raw_key, db=transfers_db)
            if (
                index_entry(source, raw_key) != entry
                or value != b""
                or named is None
                or Transfer.model_validate_json(named).source != source
            ):
                raise AssertionError(
                    f"W10: index entry {entry!r} (value {value!r}) does not name a transfer "
                    f"from account {source} ({named!r})"
                )
            state.indexed[source] += 1
    return state


async def sync_run(accounts: int, warm: Plan, plan: Plan, expected: State) -> Run:
    """The same transactions through py-lmdb, one durable write transaction each, in turn."""
    with temp_dir("w10-sync") as path:
        env = sync_env(path)
        try:
            accounts_db = env.open_db(ACCOUNTS_DB)
            transfers_db = env.open_db(TRANSFERS_DB)
            index_db = env.open_db(INDEX_DB)
            with env.begin(write=True) as txn, txn.cursor(accounts_db) as cursor:
                cursor.putmulti(
                    [
                        (encode_key(k), encode_model(Account(id=k, balance=INITIAL_BALANCE)))
                        for k in range(accounts)
                    ]
                )
            validate = Account.model_validate_json

            def transfer(step: Step) -> None:
                a, b, key = encode_key(step.source), encode_key(step.target), encode_key(step.id)
                record = Transfer(id=step.id, source=step.source, target=step.target, amount=1)
                with env.begin(write=True) as txn:
                    raw_source, raw_target = txn.get(a, db=accounts_db), txn.get(b, db=accounts_db)
                    if raw_source is None or raw_target is None:
                        raise AssertionError(f"W10 {SYNC}: an account of {step} is missing")
                    source, target = validate(raw_source), validate(raw_target)
                    debited = Account(id=step.source, balance=source.balance - 1)
                    credited = Account(id=step.target, balance=target.balance + 1)
                    txn.put(a, encode_model(debited), db=accounts_db)
                    txn.put(b, encode_model(credited), db=accounts_db)
                    if not txn.put(key, encode_model(record), overwrite=False, db=transfers_db):
                        raise AssertionError(f"W10 {SYNC}: transfer {step.id} is stored already")
                    txn.put(index_entry(step.source, key), b"", db=index_db)

            for step in _in_turn(warm):
                transfer(step)
            latencies: list[float] = []
            clock = time.perf_counter

            async def one_after_another() -> None:
                for step in _in_turn(plan):
                    start = clock()
                    transfer(step)
                    latencies.append(clock() - start)

            seconds = await timed(one_after_another)
            state = _sync_state(env)
        finally:
            env.close()
    verify(SYNC, state, expected)
    return Run(seconds, latencies, len(latencies), len(latencies))


def _in_turn(plan: Plan) -> Iterator[Step]:
    """Every step of ``plan``, one of each task in turn (the order the tasks would go in)."""
    for round_ in zip(*plan, strict=True):
        yield from round_


async def check_layout(accounts: int, warm: Plan, expected: State) -> None:
    """Raise unless the collections store exactly what the py-lmdb contender writes by hand.

    Runs ``warm`` through aiolmdb on LMDB, then reads the file with py-lmdb,
    every record and index entry decoded by hand and checked to be its hand encoding.
    """
    with temp_dir("w10-layout") as path:
        await aiolmdb_run(
            "layout check", lambda: aiolmdb_env(path), Form.TRANSACT, accounts, [], warm, expected
        )
        env = sync_env(path)
        try:
            verify("layout check (read by py-lmdb)", _sync_state(env), expected)
        finally:
            env.close()


# -- the workload ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """One set of transactions, run by several contenders."""

    wid: str
    warm: Plan
    plan: Plan
    expected: State


def _variant(wid: str, sizes: Sizes, accounts: Sequence[int], seed: int) -> Variant:
    tasks = sizes.w10_tasks
    warm = make_plan(tasks, sizes.w10_warm_per_task, accounts, 0, seed)
    plan = make_plan(tasks, sizes.w10_txns_per_task, accounts, tasks * len(warm[0]), seed + 1)
    return Variant(wid, warm, plan, expected_state(sizes.w10_accounts, [warm, plan]))


def _row(wid: str, contender: str, runs: Sequence[Run], counts_bodies: bool) -> Row:
    """The median run's throughput; latency percentiles over every timed transaction."""
    seconds = [run.seconds for run in runs]
    p50, p99, _ = lateness_stats([latency for run in runs for latency in run.latencies])
    extra = {"txn_p50_ms": p50 * 1e3, "txn_p99_ms": p99 * 1e3}
    if counts_bodies:
        bodies = sum(run.bodies for run in runs)
        conflicts = bodies - sum(run.committed for run in runs)
        extra.update(
            bodies=float(bodies), conflicts=float(conflicts), conflict_rate=conflicts / bodies
        )
    return Row(wid, contender, runs[0].committed, statistics.median(seconds), seconds, extra=extra)


async def w10(sizes: Sizes, notes: Notes) -> list[Row]:
    """Random transfers (the target) and transfers among hot keys, from many tasks."""
    n = sizes.w10_accounts
    everyone = list(range(n))
    hot = random.Random(1010).sample(everyone, sizes.w10_hot_keys)
    spread = _variant("W10 transfers", sizes, everyone, seed=10)
    contended = _variant(f"W10 {len(hot)} hot keys", sizes, hot, seed=20)
    await check_layout(n, spread.warm, expected_state(n, [spread.warm]))

    def on(
        variant: Variant, open_env: Opener, form: Form, name: str
    ) -> Callable[[], Awaitable[Run]]:
        return lambda: aiolmdb_run(
            name, open_env, form, n, variant.warm, variant.plan, variant.expected
        )

    contenders: list[tuple[Variant, str, Callable[[], Awaitable[Run]]]] = [
        (spread, SYNC, lambda: sync_run(n, spread.warm, spread.plan, spread.expected)),
        (spread, OPTIMISTIC, on(spread, on_disk, Form.TRANSACT, OPTIMISTIC)),
        (spread, PESSIMISTIC, on(spread, on_disk, Form.TRANSACTION, PESSIMISTIC)),
        (spread, MEMORY, on(spread, memory_env, Form.TRANSACT, MEMORY)),
        (contended, OPTIMISTIC, on(contended, on_disk, Form.TRANSACT, OPTIMISTIC)),
        (contended, PESSIMISTIC, on(contended, on_disk, Form.TRANSACTION, PESSIMISTIC)),
    ]
    runs: dict[tuple[str, str], list[Run]] = {(v.wid, name): [] for v, name, _ in contenders}
    for rep in range(sizes.reps):
        # In turns, so drift hits all; reversed every other turn, so that of two
        # contenders neither always runs first (the load drifts within a turn too).
        for variant, name, run in contenders if rep % 2 == 0 else reversed(contenders):
            runs[(variant.wid, name)].append(await run())
    rows = [
        _row(variant.wid, name, runs[(variant.wid, name)], counts_bodies=name != SYNC)
        for variant, name, _ in contenders
    ]
    for variant in (spread, contended):
        mine = [row for row in rows if row.workload == variant.wid]
        base = next(row for row in mine if row.contender == OPTIMISTIC)
        for row in mine:
            if row is not base:
                row.vs_aiolmdb = base.ops_per_s / row.ops_per_s
    optimistic, pessimistic = (
        next(row for row in rows if (row.workload, row.contender) == (spread.wid, name))
        for name in (OPTIMISTIC, PESSIMISTIC)
    )
    ratio = optimistic.ops_per_s / pessimistic.ops_per_s
    optimistic.check = at_least(ratio, 10.0, "≥ 10x pessimistic txn/s", f"{ratio:.2f}x pessimistic")
    tasks, per_task = sizes.w10_tasks, sizes.w10_txns_per_task
    notes.append(
        f"W10: {tasks} tasks x {per_task} transactions (after {sizes.w10_warm_per_task} each "
        f"to warm up), each reading two random accounts of {n:,} (`Account` records in a "
        "UInt64-keyed Collection), writing both back (one unit moved) and inserting a "
        "`Transfer` record into a Collection with an index on its source account; "
        f"'{OPTIMISTIC}': `await env.transact(transfer, step)`; '{PESSIMISTIC}': `async with "
        "env.transaction(): await transfer(step)` (holds LMDB's single writer for the block); "
        f"'{SYNC}': the same transactions through py-lmdb, one durable write transaction each, "
        "committed one after the other, writing by hand the bytes the collections write "
        "(checked once against a file written through aiolmdb): the limit of one writer; "
        f"'{MEMORY}': transact on the in-memory engine. '{contended.wid}': every transaction "
        f"moves a unit between two of {len(hot)} hot accounts. Each run is a fresh "
        f"environment; median of {sizes.reps} runs in turns (every other turn in reverse "
        "order); latency from the task's view "
        "(from the start of the first attempt to the return), p50/p99 over every timed "
        "transaction of every run; conflicts = body runs - committed transactions, their "
        "rate = conflicts / body runs. Every run ends by checking every balance, transfer "
        "and index entry against what its transactions leave. 'aiolmdb x' = the optimistic "
        "row's txn/s ÷ the row's."
    )
    return rows
