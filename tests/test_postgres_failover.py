"""An environment on a pg_auto_failover cluster keeps every acknowledged write when the
primary is killed in the middle of a load of transactions.

Tasks move amounts between accounts with ``env.transact``; each transaction updates
two accounts (a collection with a unique and a non-unique index), appends the transfer
to a ledger (a collection indexed by both accounts) and bumps its task's counter. The
primary's node is killed with SIGKILL while they run, and they go on through the
failover. Afterwards the same environment object reads everything back: each transfer
is wholly there or wholly absent, every acknowledged one is there, the indexes match
their records, the counters match the ledger and the balances add up.

Two environments run the load side by side, each in a schema of its own: a patient
one, whose ``reconnect_timeout`` outlasts the failover, so that its calls wait for
the promoted node; and an impatient one, whose calls give up meanwhile, so that the
errors they raise are seen. The figures (failover time, calls that failed and how)
are printed in the test output.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import os
import random
import statistics
import time
from collections.abc import Iterator
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
import pytest
from helpers.autofailover import FailoverCluster, unavailable
from helpers.postgres_fixtures import SWITCH
from psycopg import sql
from pydantic import BaseModel

import aiolmdb
from aiolmdb.coders import Int64Coder, StringCoder, UInt64Coder
from aiolmdb.errors import (
    CommitUnknownError,
    ConflictError,
    ConnectionLostError,
    UnavailableError,
)
from aiolmdb.models import Collection, Index

WHY_NOT = f"{SWITCH}=0" if os.environ.get(SWITCH) == "0" else unavailable()
pytestmark = [pytest.mark.failover, pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")]

ACCOUNTS = 100
INITIAL_BALANCE = 1_000
#: Tasks of transfers per environment.
TASKS = 4
#: Seconds of load before the primary is killed, and after the first transaction of
#: every environment that succeeded on the promoted node.
LOAD_BEFORE_KILL = 2.0
LOAD_AFTER_FAILOVER = 2.0
#: The patient environment's: longer than a failover (7-15 s here), so that calls wait
#: for the new primary.
PATIENT_TIMEOUT = 30.0
#: The impatient environment's: calls give up while the cluster fails over.
IMPATIENT_TIMEOUT = 2.0
#: Bound on the wait for the first transaction after the kill.
FAILOVER_TIMEOUT = 60.0
#: Transfer ids are ``task * ID_STRIDE + sequence``.
ID_STRIDE = 1_000_000

#: The errors a call may fail with: each says whether the transaction was applied.
#: ConflictError (not applied) is transact giving up on conflicts between the tasks.
CLEAR_ERRORS = (ConnectionLostError, UnavailableError, CommitUnknownError, ConflictError)


class Account(BaseModel):
    id: int
    email: str
    balance: int
    #: How many transfers moved money out of or into the account.
    transfers: int = 0


class Accounts(Collection[int, Account]):
    key_coder = UInt64Coder()
    name = "accounts"
    by_email = Index(lambda a: a.email, StringCoder(), unique=True)
    # Changes with every transfer: each one rewrites two entries.
    by_balance = Index(lambda a: a.balance, Int64Coder())


class Transfer(BaseModel):
    id: int
    task: int
    source: int
    target: int
    amount: int


class Ledger(Collection[int, Transfer]):
    key_coder = UInt64Coder()
    name = "ledger"
    by_account = Index(lambda t: (t.source, t.target), UInt64Coder(), multi=True)


def email(uid: int) -> str:
    return f"account-{uid:03d}@example.org"


@dataclasses.dataclass
class Call:
    """One ``env.transact`` call of the load and what became of it."""

    transfer: Transfer
    #: When each run of the transaction's function began (``time.monotonic()``).
    attempts: list[float] = dataclasses.field(default_factory=list)
    #: When ``transact`` returned or raised.
    ended_at: float | None = None
    error: BaseException | None = None

    @property
    def acknowledged(self) -> bool:
        return self.ended_at is not None and self.error is None


@dataclasses.dataclass(repr=False)
class Bank:
    """One environment's collections and the calls the load made on them."""

    name: str
    reconnect_timeout: float
    env: aiolmdb.AsyncEnvironment
    accounts: Accounts
    ledger: Ledger
    counters: aiolmdb.AsyncDatabase[int, int]
    calls: list[Call] = dataclasses.field(default_factory=list)
    #: Set at each acknowledged call.
    progress: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)

    async def move(self, call: Call) -> None:
        """The transaction: ``call``'s amount from one account to the other, its ledger
        entry, and its task's counter."""
        call.attempts.append(time.monotonic())
        transfer = call.transfer
        source = await self.accounts.get(transfer.source)
        target = await self.accounts.get(transfer.target)
        assert source is not None and target is not None
        for account, change in ((source, -transfer.amount), (target, transfer.amount)):
            changed = {"balance": account.balance + change, "transfers": account.transfers + 1}
            await self.accounts.put(account.id, account.model_copy(update=changed))
        # insert, not put: a transfer applied twice would raise KeyExistsError.
        await self.ledger.insert(transfer.id, transfer)
        await self.counters.put(transfer.task, await self.counters.get(transfer.task, 0) + 1)

    async def run_task(self, task: int, stop: asyncio.Event) -> None:
        """Transfers of task ``task``, one after another, until ``stop`` is set."""
        rng = random.Random(task)
        sequence = 0
        while not stop.is_set():
            sequence += 1
            source, target = rng.sample(range(ACCOUNTS), 2)
            transfer = Transfer(
                id=task * ID_STRIDE + sequence,
                task=task,
                source=source,
                target=target,
                amount=rng.randint(1, 50),
            )
            call = Call(transfer)
            self.calls.append(call)
            try:
                await self.env.transact(self.move, call)
            except Exception as exc:  # every kind is recorded, and checked afterwards
                call.error = exc
            call.ended_at = time.monotonic()
            if call.error is None:
                self.progress.set()

    async def first_success_after(self, moment: float) -> float:
        """When the first transaction begun after ``moment`` was acknowledged."""
        deadline = time.monotonic() + FAILOVER_TIMEOUT
        while True:
            after = [
                call.ended_at
                for call in self.calls
                if call.acknowledged and call.ended_at is not None and call.attempts[-1] > moment
            ]
            if after:
                return min(after)
            left = deadline - time.monotonic()
            assert left > 0, f"{self.name}: no transaction succeeded within {FAILOVER_TIMEOUT:g}s"
            self.progress.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.progress.wait(), left)


@pytest.fixture
def cluster() -> Iterator[FailoverCluster]:
    with FailoverCluster() as cluster:
        yield cluster


def schema_url(url: str, schema: str) -> str:
    """``url`` with its tables in ``schema`` (created here)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    parts = urlsplit(url)
    query = [*parse_qsl(parts.query), ("options", f"-csearch_path={schema}")]
    return urlunsplit(parts._replace(query=urlencode(query, safe=",")))


async def open_bank(name: str, url: str, reconnect_timeout: float) -> Bank:
    """The accounts, ledger and counters of a new environment at ``url``."""
    env = aiolmdb.open(url, reconnect_timeout=reconnect_timeout)
    try:
        bank = Bank(
            name,
            reconnect_timeout,
            env,
            await Accounts.open(env),
            await Ledger.open(env),
            env.open_db("counters", key_coder=UInt64Coder(), value_coder=UInt64Coder()),
        )
        accounts = {
            uid: Account(id=uid, email=email(uid), balance=INITIAL_BALANCE)
            for uid in range(ACCOUNTS)
        }
        await bank.accounts.put_multi(accounts)
    except BaseException:
        await env.close()
        raise
    return bank


@dataclasses.dataclass(frozen=True)
class Failover:
    """When the primary was killed, and when each environment found the promoted node."""

    killed: str
    killed_at: float
    #: By environment: when its first transaction begun after the kill was acknowledged.
    resumed_at: dict[str, float]
    #: Seconds from the kill until the cluster's own probe committed on the promoted node.
    promoted_after: float


async def run_load_through_failover(banks: list[Bank], cluster: FailoverCluster) -> Failover:
    """Run the load, kill the primary while it runs, go on until every environment has
    taken transactions on the promoted node for a while, then stop it."""
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(bank.run_task(task, stop)) for bank in banks for task in range(TASKS)
    ]
    promoted: asyncio.Future[float] | None = None
    try:
        await asyncio.sleep(LOAD_BEFORE_KILL)
        killed = await asyncio.to_thread(cluster.kill_primary)
        # Every process of the old primary is gone now: a transaction begun from here on
        # can only commit on the promoted node.
        dead_at = time.monotonic()
        assert cluster.killed_at is not None
        promoted = asyncio.ensure_future(asyncio.to_thread(cluster.wait_failover, FAILOVER_TIMEOUT))
        resumed = await asyncio.gather(*(bank.first_success_after(dead_at) for bank in banks))
        await asyncio.sleep(LOAD_AFTER_FAILOVER)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        if promoted is not None:
            await asyncio.wait([promoted])
    assert cluster.primary() != killed
    return Failover(
        killed.name,
        cluster.killed_at,
        {bank.name: at for bank, at in zip(banks, resumed, strict=True)},
        promoted.result(),
    )


def describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def figures(bank: Bank, failover: Failover) -> list[str]:
    """What the load of ``bank`` went through, for the test output."""
    calls, killed_at = bank.calls, failover.killed_at
    failed = [call for call in calls if call.error is not None]

    def by_type(chosen: list[Call]) -> dict[str, int]:
        return dict(collections.Counter(type(call.error).__name__ for call in chosen))

    before = [call for call in failed if (call.ended_at or 0.0) < killed_at]
    after = [call for call in failed if (call.ended_at or 0.0) >= killed_at]
    runs = [len(call.attempts) for call in calls]
    lines = [
        f"{bank.name} (reconnect_timeout {bank.reconnect_timeout:g}s): first "
        f"transaction on the promoted node {failover.resumed_at[bank.name] - killed_at:.2f}s "
        "after the kill",
        f"  calls {len(calls)}: acknowledged {sum(call.acknowledged for call in calls)}, "
        f"failed {len(failed)}: before the kill {len(before)} {by_type(before)}, "
        f"after it {len(after)} {by_type(after)}",
        f"  runs of the transaction's function per call: mean {statistics.fmean(runs):.2f}, "
        f"max {max(runs)}",
    ]
    for call in failed:
        assert call.error is not None and call.ended_at is not None
        begun = ", ".join(f"{at - killed_at:+.2f}" for at in call.attempts)
        lines.append(
            f"  {type(call.error).__name__} {call.ended_at - killed_at:+.2f}s after the kill, "
            f"runs begun at {begun}"
        )
    samples = {type(call.error): call.error for call in failed if call.error is not None}
    lines += [f"  e.g. {describe(error)}" for error in samples.values()]
    return lines


async def test_every_acknowledged_transfer_survives_a_primary_killed_mid_load(
    cluster: FailoverCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    impatient_url = await asyncio.to_thread(schema_url, cluster.url, "impatient")
    banks = [await open_bank("patient", cluster.url, PATIENT_TIMEOUT)]
    try:
        banks.append(await open_bank("impatient", impatient_url, IMPATIENT_TIMEOUT))
        failover = await run_load_through_failover(banks, cluster)
        lines = [
            f"failover: {failover.killed} killed with SIGKILL during {TASKS} tasks of transfers "
            f"per environment; the cluster's own probe committed on the promoted node "
            f"{failover.promoted_after:.2f}s after the kill"
        ]
        for bank in banks:
            lines += figures(bank, failover)
        with capsys.disabled():
            print("\n" + "\n".join(lines))

        for bank in banks:
            unclear = [
                describe(call.error)
                for call in bank.calls
                if call.error is not None and not isinstance(call.error, CLEAR_ERRORS)
            ]
            assert unclear == []
            unknown = await check_everything(bank)
            with capsys.disabled():
                print(
                    f"{bank.name}: every invariant holds; commit outcome unknown for "
                    f"{len(unknown)} calls, of which applied {sum(unknown.values())}"
                )
            # The same environment object still takes transactions.
            last = Call(Transfer(id=TASKS * ID_STRIDE, task=TASKS, source=0, target=1, amount=1))
            await bank.env.transact(bank.move, last)
            assert await bank.ledger.get(last.transfer.id) == last.transfer
    finally:
        for bank in banks:
            await bank.env.close()


async def check_everything(bank: Bank) -> dict[int, bool]:
    """Assert the invariants of ``bank`` after the load; the transfers whose commit
    outcome was unknown, and whether each was applied."""
    calls = bank.calls
    submitted = {call.transfer.id: call.transfer for call in calls}
    acknowledged = {call.transfer.id for call in calls if call.acknowledged}
    unknown = {call.transfer.id for call in calls if isinstance(call.error, CommitUnknownError)}
    ledger = dict([item async for item in bank.ledger.items()])
    accounts = dict([item async for item in bank.accounts.items()])

    # Every acknowledged transfer is there; nothing is there that was reported not applied.
    assert sorted(acknowledged - ledger.keys()) == []
    assert sorted(ledger.keys() - acknowledged - unknown) == []
    assert all(ledger[tid] == submitted[tid] for tid in ledger)

    # No transfer is partial: the accounts hold exactly the effect of the ledger's.
    balances = dict.fromkeys(range(ACCOUNTS), INITIAL_BALANCE)
    counts = dict.fromkeys(range(ACCOUNTS), 0)
    for transfer in ledger.values():
        balances[transfer.source] -= transfer.amount
        balances[transfer.target] += transfer.amount
        counts[transfer.source] += 1
        counts[transfer.target] += 1
    assert {uid: (a.balance, a.transfers) for uid, a in accounts.items()} == {
        uid: (balances[uid], counts[uid]) for uid in range(ACCOUNTS)
    }
    assert sum(a.balance for a in accounts.values()) == ACCOUNTS * INITIAL_BALANCE

    # Counters: one increment per transfer in the ledger, which is every acknowledged
    # one, and at most the unknown ones besides.
    counters = dict([item async for item in bank.counters.items()])
    assert counters == dict(collections.Counter(t.task for t in ledger.values()))
    for task in range(TASKS):
        acked = sum(1 for tid in acknowledged if tid // ID_STRIDE == task)
        maybe = sum(1 for tid in unknown if tid // ID_STRIDE == task)
        assert acked <= counters.get(task, 0) <= acked + maybe

    await check_indexes(bank, accounts, ledger)
    return {tid: tid in ledger for tid in unknown}


async def check_indexes(
    bank: Bank, accounts: dict[int, Account], ledger: dict[int, Transfer]
) -> None:
    """Assert that every index holds exactly one entry per index key of its records, in
    order, each leading to its record."""
    by_email = [item async for item in bank.accounts.by_email.items()]
    assert by_email == sorted(accounts.items(), key=lambda item: item[1].email)
    assert await bank.accounts.by_email.count() == len(accounts)
    for account in accounts.values():
        assert await bank.accounts.by_email.get(account.email) == account

    by_balance = [item async for item in bank.accounts.by_balance.items()]
    assert by_balance == sorted(accounts.items(), key=lambda item: (item[1].balance, item[0]))
    assert await bank.accounts.by_balance.count() == len(accounts)

    entries = sorted(
        (uid, tid) for tid, transfer in ledger.items() for uid in (transfer.source, transfer.target)
    )
    by_account = [item async for item in bank.ledger.by_account.items()]
    assert by_account == [(tid, ledger[tid]) for _, tid in entries]
    assert await bank.ledger.by_account.count() == len(entries)
    for uid in range(ACCOUNTS):
        mine = [ledger[tid] for owner, tid in entries if owner == uid]
        assert await bank.ledger.by_account.get_all(uid) == mine
        assert await bank.ledger.by_account.count(uid) == accounts[uid].transfers
