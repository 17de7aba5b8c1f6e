"""Concurrent ``env.transact`` transactions checked against a serial model (hypothesis
state machine).

Each step runs a batch of transactions at once, whose operations interleave: point
reads, writes of a value made of what was read, blind writes, deletes, range and
prefix reads, and "read the last key of a group, write the next one". Each body is
deterministic given what it reads and returns what it read, so the attempt that
committed tells its reads. The batch is correct when the committed transactions,
replayed one after another on plain dicts in some order, read exactly what they read
and leave exactly the state the environment holds. The order their calls returned is
tried first; it need not be the one (PostgreSQL's serializable transactions, for one,
may take effect in another order than they commit). A lost update, an insert into a
range another transaction read (a phantom), a write of an aborted transaction or part
of a transaction, or a read that mixes two states has no such order.

The machine owns its event loop (a new one per run) and a fresh environment per run,
closed in ``teardown``; it runs on each engine of the ``env`` fixtures.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import shutil
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol, TypeVar

import hypothesis.strategies as st
import pytest
from conftest import EngineKind, bounded
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule, run_state_machine_as_test

import aiolmdb
from aiolmdb.coders import StringCoder, TupleCoder, UInt16Coder
from aiolmdb.storage.locations import MEMORY

T = TypeVar("T")
#: A key: its group (what prefix reads and "the next key" go by) and its number.
Key = tuple[str, int]
#: Every record of every database, by database name.
State = dict[str, dict[Key, str]]
#: What one operation read.
Read = object

DATABASES = ("left", "right")
GROUPS = ("a", "b")


class Kind(enum.Enum):
    """What an operation does."""

    #: Read the key.
    GET = "get"
    #: Read the key and write what was read (or "") followed by the transaction's tag.
    APPEND = "append"
    #: Write the transaction's tag to the key, reading nothing.
    PUT = "put"
    #: Delete the key, reading whether it was there.
    DELETE = "delete"
    #: Read every record of the key's group (a prefix read).
    SCAN = "scan"
    #: Read the keys from the key (inclusive) to ``stop`` (exclusive).
    RANGE = "range"
    #: Read the last key of the key's group and write the tag to the key after it.
    NEXT = "next"


@dataclasses.dataclass(frozen=True)
class Op:
    """One operation of a transaction, on database ``db``."""

    kind: Kind
    db: str
    key: Key
    #: The end of a :attr:`Kind.RANGE` read.
    stop: Key | None = None


@dataclasses.dataclass(frozen=True)
class Txn:
    """A transaction: its operations, then an abort (an exception) if ``aborts``."""

    ops: tuple[Op, ...]
    aborts: bool


@dataclasses.dataclass(frozen=True)
class Committed:
    """A transaction whose ``transact`` call returned, and what its committed attempt read."""

    txn: Txn
    tag: str
    reads: list[Read]


class Abort(Exception):
    """Raised by a transaction's body to abort it."""


class Store(Protocol):
    """What operations act on: the environment's databases, or a model of them."""

    async def get(self, db: str, key: Key) -> str | None: ...
    async def put(self, db: str, key: Key, value: str) -> None: ...
    async def delete(self, db: str, key: Key) -> bool: ...
    async def group(self, db: str, group: str) -> list[tuple[Key, str]]: ...
    async def keys(self, db: str, start: Key, stop: Key) -> list[Key]: ...
    async def last(self, db: str, group: str) -> Key | None: ...


async def perform(store: Store, op: Op, tag: str) -> Read:
    """Do ``op`` on ``store`` for the transaction tagged ``tag``; what it read."""
    db, key = op.db, op.key
    if op.kind is Kind.GET:
        return await store.get(db, key)
    if op.kind is Kind.APPEND:
        value = await store.get(db, key)
        await store.put(db, key, (value or "") + tag)
        return value
    if op.kind is Kind.PUT:
        await store.put(db, key, tag)
        return None
    if op.kind is Kind.DELETE:
        return await store.delete(db, key)
    if op.kind is Kind.SCAN:
        return await store.group(db, key[0])
    if op.kind is Kind.RANGE:
        assert op.stop is not None
        return await store.keys(db, key, op.stop)
    last = await store.last(db, key[0])
    await store.put(db, (key[0], 0 if last is None else last[1] + 1), tag)
    return last


async def perform_all(store: Store, txn: Txn, tag: str) -> list[Read]:
    """Do the operations of ``txn`` one after another; what each one read."""
    return [await perform(store, op, tag) for op in txn.ops]


class Databases:
    """The environment's databases as a :class:`Store`; each call lets other tasks run."""

    def __init__(self, env: aiolmdb.AsyncEnvironment) -> None:
        coder = TupleCoder(StringCoder(), UInt16Coder())
        self.dbs = {
            name: env.open_db(name, key_coder=coder, value_coder=StringCoder())
            for name in DATABASES
        }

    async def get(self, db: str, key: Key) -> str | None:
        value = await self.dbs[db].get(key)
        await asyncio.sleep(0)  # the other transactions of the batch run meanwhile
        return value

    async def put(self, db: str, key: Key, value: str) -> None:
        await self.dbs[db].put(key, value)
        await asyncio.sleep(0)

    async def delete(self, db: str, key: Key) -> bool:
        existed = await self.dbs[db].delete(key)
        await asyncio.sleep(0)
        return existed

    async def group(self, db: str, group: str) -> list[tuple[Key, str]]:
        found = [item async for item in self.dbs[db].items(prefix=(group,))]
        await asyncio.sleep(0)
        return found

    async def keys(self, db: str, start: Key, stop: Key) -> list[Key]:
        found = [key async for key in self.dbs[db].keys(start, stop)]
        await asyncio.sleep(0)
        return found

    async def last(self, db: str, group: str) -> Key | None:
        found = [key async for key in self.dbs[db].keys(prefix=(group,), reverse=True, limit=1)]
        await asyncio.sleep(0)
        return found[0] if found else None

    async def state(self) -> State:
        """Every record, read outside any transaction."""
        state: State = {}
        for name, db in self.dbs.items():
            state[name] = {key: value async for key, value in db.items()}
        return state


class Model:
    """The databases as plain dicts, as a :class:`Store`."""

    def __init__(self, state: State) -> None:
        self.state = {name: dict(records) for name, records in state.items()}

    async def get(self, db: str, key: Key) -> str | None:
        return self.state[db].get(key)

    async def put(self, db: str, key: Key, value: str) -> None:
        self.state[db][key] = value

    async def delete(self, db: str, key: Key) -> bool:
        return self.state[db].pop(key, None) is not None

    async def group(self, db: str, group: str) -> list[tuple[Key, str]]:
        return sorted(item for item in self.state[db].items() if item[0][0] == group)

    async def keys(self, db: str, start: Key, stop: Key) -> list[Key]:
        return sorted(key for key in self.state[db] if start <= key < stop)

    async def last(self, db: str, group: str) -> Key | None:
        return max((key for key in self.state[db] if key[0] == group), default=None)


async def serial_order(start: State, committed: list[Committed], final: State) -> list[int] | None:
    """An order of ``committed`` (indices) that, replayed one after another from
    ``start``, reads what each one read and ends in ``final``; None if there is none.

    The order of the list is tried first; a depth-first search goes on from there,
    pruned by the reads.
    """

    async def extend(state: State, order: list[int]) -> list[int] | None:
        if len(order) == len(committed):
            return order if state == final else None
        for index, done in enumerate(committed):
            if index in order:
                continue
            model = Model(state)
            if await perform_all(model, done.txn, done.tag) == done.reads:
                found = await extend(model.state, [*order, index])
                if found is not None:
                    return found
        return None

    return await extend(start, [])


KEYS = [(group, n) for group in GROUPS for n in range(4)]
POINT_KINDS = (Kind.GET, Kind.APPEND, Kind.PUT, Kind.DELETE)
#: Every operation on the key space, by kind (a scan or a next key names a group only).
OPS: dict[Kind, list[Op]] = {
    **{kind: [Op(kind, db, key) for db in DATABASES for key in KEYS] for kind in POINT_KINDS},
    **{
        kind: [Op(kind, db, (group, 0)) for db in DATABASES for group in GROUPS]
        for kind in (Kind.SCAN, Kind.NEXT)
    },
    Kind.RANGE: [
        Op(Kind.RANGE, db, start, stop)
        for db in DATABASES
        for start in KEYS
        for stop in KEYS
        if start < stop
    ],
}

# An operation is two draws (its kind, then one of the kind's operations): runs and
# shrinking stay quick.
ops = st.one_of(*(st.sampled_from(OPS[kind]) for kind in Kind))
# One transaction in five aborts.
txns = st.builds(
    Txn, st.lists(ops, min_size=1, max_size=5).map(tuple), st.integers(0, 4).map(lambda n: n == 0)
)
records = st.dictionaries(st.sampled_from(KEYS), st.sampled_from(["", "x", "y"]), max_size=6)


class TransactMachine(RuleBasedStateMachine):
    """Batches of concurrent ``transact`` calls, each checked against a serial model."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="aiolmdb-transact-stateful-")
        self.loop = asyncio.new_event_loop()
        self.env = self.open_env(Path(self.dir))
        self.store = Databases(self.env)
        self.state: State = {name: {} for name in DATABASES}
        self.batches = 0

    def open_env(self, directory: Path) -> aiolmdb.AsyncEnvironment:
        """The environment the machine runs on (a subclass per engine says which), in
        ``directory`` if it needs one, which is removed in ``teardown``."""
        raise NotImplementedError

    def run(self, aw: Awaitable[T]) -> T:
        async def bounded_call() -> T:
            return await bounded(aw, 30)

        return self.loop.run_until_complete(bounded_call())

    def teardown(self) -> None:
        try:
            self.run(self.env.close())
        finally:
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    @initialize(left=records, right=records)
    def fill(self, left: dict[Key, str], right: dict[Key, str]) -> None:
        async def go() -> None:
            for name, initial in zip(DATABASES, (left, right), strict=True):
                await self.store.dbs[name].put_multi(initial)

        self.run(go())
        self.state = dict(zip(DATABASES, (dict(left), dict(right)), strict=True))

    @rule(batch=st.lists(txns, min_size=2, max_size=6))
    def concurrent_transactions(self, batch: list[Txn]) -> None:
        self.batches += 1
        committed: list[Committed] = []

        async def body(txn: Txn, tag: str) -> list[Read]:
            reads = await perform_all(self.store, txn, tag)
            if txn.aborts:
                raise Abort
            return reads

        async def call(txn: Txn, tag: str) -> None:
            try:
                reads = await self.env.transact(body, txn, tag)
            except Abort:
                return
            committed.append(Committed(txn, tag, reads))  # in the order the calls return

        async def go() -> State:
            tags = [f"{self.batches}{chr(ord('a') + i)};" for i in range(len(batch))]
            await asyncio.gather(*(call(txn, tag) for txn, tag in zip(batch, tags, strict=True)))
            return await self.store.state()

        final = self.run(go())
        order = self.run(serial_order(self.state, committed, final))
        assert order is not None, (
            "no serial order of the committed transactions reads what they read and "
            f"ends in the state found\nbefore: {self.state}\ncommitted, in the order "
            f"their calls returned: {committed}\nfound after: {final}"
        )
        self.state = final


#: Runs of the machine on each engine: fewer on PostgreSQL, whose runs cost more (a
#: schema each, transactions on a server).
EXAMPLES = {EngineKind.LMDB: 50, EngineKind.MEMORY: 50, EngineKind.POSTGRES: 10}


def test_concurrent_transactions_match_a_serial_model(
    engine_kind: EngineKind, request: pytest.FixtureRequest
) -> None:
    opener: Callable[[Path], aiolmdb.AsyncEnvironment]
    if engine_kind is EngineKind.LMDB:

        def opener(directory: Path) -> aiolmdb.AsyncEnvironment:
            # Isolation is under test, not durability: commits skip the flush to disk.
            return aiolmdb.open(directory / "env", map_size=16 * 1024 * 1024, sync=False)

    elif engine_kind is EngineKind.MEMORY:

        def opener(directory: Path) -> aiolmdb.AsyncEnvironment:
            return aiolmdb.open(MEMORY)

    else:
        server = request.getfixturevalue("postgres_server")

        def opener(directory: Path) -> aiolmdb.AsyncEnvironment:
            return aiolmdb.open(server.schema_url())

    machine_settings = settings(
        max_examples=EXAMPLES[engine_kind],
        stateful_step_count=10,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )

    class Machine(TransactMachine):
        def open_env(self, directory: Path) -> aiolmdb.AsyncEnvironment:
            return opener(directory)

    run_state_machine_as_test(Machine, settings=machine_settings)


# -- what the check rejects: histories no serial order explains -------------------------


def history(*done: tuple[list[Op], str, list[Read]]) -> list[Committed]:
    """Committed transactions, each given as (operations, tag, what it read)."""
    return [Committed(Txn(tuple(ops), aborts=False), tag, reads) for ops, tag, reads in done]


def records_of(left: dict[Key, str], right: dict[Key, str] | None = None) -> State:
    """The state holding ``left`` and ``right`` in the databases of those names."""
    return {"left": left, "right": right or {}}


A0, A1, A3, A4 = ("a", 0), ("a", 1), ("a", 3), ("a", 4)


async def test_the_check_finds_the_serial_order_of_a_serial_history() -> None:
    append = [Op(Kind.APPEND, "left", A0)]
    done = history((append, "1;", ["x2;"]), (append, "2;", ["x"]))
    assert await serial_order(records_of({A0: "x"}), done, records_of({A0: "x2;1;"})) == [1, 0]


async def test_the_check_rejects_a_lost_update() -> None:
    append = [Op(Kind.APPEND, "left", A0)]
    done = history((append, "1;", ["x"]), (append, "2;", ["x"]))
    assert await serial_order(records_of({A0: "x"}), done, records_of({A0: "x2;"})) is None


async def test_the_check_rejects_a_phantom() -> None:
    # Both read the last key of group a, and both wrote the one after it.
    following = [Op(Kind.NEXT, "left", A0)]
    done = history((following, "1;", [A3]), (following, "2;", [A3]))
    found = records_of({A3: "", A4: "2;"})
    assert await serial_order(records_of({A3: ""}), done, found) is None
    # A range read that missed an insert, by a transaction that missed its write.
    reader = [Op(Kind.RANGE, "left", A0, A4), Op(Kind.PUT, "right", A0)]
    inserter = [Op(Kind.GET, "right", A0), Op(Kind.PUT, "left", A1)]
    done = history((reader, "1;", [[], None]), (inserter, "2;", [None, None]))
    found = records_of({A1: "2;"}, {A0: "1;"})
    assert await serial_order(records_of({}), done, found) is None


async def test_the_check_rejects_a_write_of_an_aborted_transaction() -> None:
    done = history(([Op(Kind.GET, "left", A0)], "1;", [None]))
    assert await serial_order(records_of({}), done, records_of({A0: "2;"})) is None


async def test_the_check_rejects_a_transaction_applied_in_part() -> None:
    done = history(([Op(Kind.PUT, "left", A0), Op(Kind.PUT, "left", A1)], "1;", [None, None]))
    assert await serial_order(records_of({}), done, records_of({A0: "1;"})) is None


async def test_the_check_rejects_reads_of_two_states() -> None:
    writer = [Op(Kind.PUT, "left", A0), Op(Kind.PUT, "left", A1)]
    reader = [Op(Kind.GET, "left", A0), Op(Kind.GET, "left", A1)]
    done = history((writer, "1;", [None, None]), (reader, "2;", ["1;", None]))
    found = records_of({A0: "1;", A1: "1;"})
    assert await serial_order(records_of({}), done, found) is None
