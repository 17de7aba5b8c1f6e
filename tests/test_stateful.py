"""A database checked against a plain dict, step by step (hypothesis state machine),
and hundreds of concurrent tasks whose final state is computable.

The state machine owns its event loop (a new one per run) and a fresh
environment per run, closed in ``teardown``.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import tempfile
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

import hypothesis.strategies as st
from conftest import EnvFactory, bounded
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import aiolmdb
from aiolmdb.coders import StringCoder, TupleCoder, UInt16Coder

T = TypeVar("T")
Key = tuple[str, int]
Model = dict[Key, bytes]

keys = st.tuples(st.sampled_from(["", "a", "ab", "b", "é"]), st.integers(0, 5))
values = st.binary(max_size=12)
key_lists = st.lists(keys, max_size=6, unique=True)
pair_lists = st.lists(st.tuples(keys, values), max_size=6)

# One write made inside a transaction: (name, key or keys, value or values).
ops = st.one_of(
    st.tuples(st.just("put"), keys, values),
    st.tuples(st.just("delete"), keys, st.none()),
    st.tuples(st.just("pop"), keys, st.none()),
    st.tuples(st.just("replace"), keys, values),
    st.tuples(st.just("put_multi"), pair_lists, st.none()),
    st.tuples(st.just("delete_multi"), key_lists, st.none()),
)
Op = tuple[str, Any, Any]


class Abort(Exception):
    """Raised inside a transaction block to abort it."""


def key_coder() -> TupleCoder[tuple[str, int]]:
    return TupleCoder(StringCoder(), UInt16Coder())


async def apply_op(db: aiolmdb.AsyncDatabase[Key, bytes], model: Model, op: Op) -> None:
    """Apply ``op`` to the database and to ``model``, checking what the call returns."""
    name, arg, value = op
    if name == "put":
        assert await db.put(arg, value) is True
        model[arg] = value
    elif name == "delete":
        assert await db.delete(arg) == (arg in model)
        model.pop(arg, None)
    elif name == "pop":
        assert await db.pop(arg) == model.pop(arg, None)
    elif name == "replace":
        assert await db.replace(arg, value) == model.get(arg)
        model[arg] = value
    elif name == "put_multi":
        assert await db.put_multi(arg) == len(arg)
        model.update(arg)
    elif name == "delete_multi":
        expected = {key: key in model for key in arg}
        for key in arg:
            model.pop(key, None)
        assert await db.delete_multi(arg) == expected
    else:  # pragma: no cover
        raise AssertionError(name)


class DatabaseMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="aiolmdb-stateful-")
        self.loop = asyncio.new_event_loop()
        self.env = self.open_env()
        self.db = self.env.open_db("model", key_coder=key_coder())
        self.side = self.env.open_db("side", key_coder=StringCoder())
        self.model: Model = {}
        self.side_count = 0  # committed transactions, counted in ``side``

    def open_env(self) -> aiolmdb.AsyncEnvironment:
        """The environment the machine runs on: LMDB in a temporary directory."""
        return aiolmdb.open(Path(self.dir) / "env", map_size=16 * 1024 * 1024)

    def run(self, aw: Awaitable[T]) -> T:
        async def bounded_call() -> T:
            return await bounded(aw)

        return self.loop.run_until_complete(bounded_call())

    def teardown(self) -> None:
        try:
            self.run(self.env.close())
        finally:
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- single calls ------------------------------------------------------

    @rule(key=keys, value=values)
    def put(self, key: Key, value: bytes) -> None:
        self.run(apply_op(self.db, self.model, ("put", key, value)))

    @rule(key=keys, value=values)
    def put_no_overwrite(self, key: Key, value: bytes) -> None:
        written = self.run(self.db.put(key, value, overwrite=False))
        assert written == (key not in self.model)
        self.model.setdefault(key, value)

    @rule(pairs=pair_lists)
    def put_multi(self, pairs: list[tuple[Key, bytes]]) -> None:
        self.run(apply_op(self.db, self.model, ("put_multi", pairs, None)))

    @rule(key=keys)
    def delete(self, key: Key) -> None:
        self.run(apply_op(self.db, self.model, ("delete", key, None)))

    @rule(keys_=key_lists)
    def delete_multi(self, keys_: list[Key]) -> None:
        self.run(apply_op(self.db, self.model, ("delete_multi", keys_, None)))

    @rule(key=keys)
    def pop(self, key: Key) -> None:
        self.run(apply_op(self.db, self.model, ("pop", key, None)))

    @rule(key=keys, value=values)
    def replace(self, key: Key, value: bytes) -> None:
        self.run(apply_op(self.db, self.model, ("replace", key, value)))

    @rule(key=keys)
    def get(self, key: Key) -> None:
        assert self.run(self.db.get(key)) == self.model.get(key)
        assert self.run(self.db.contains(key)) == (key in self.model)

    @rule(keys_=key_lists)
    def get_multi(self, keys_: list[Key]) -> None:
        assert self.run(self.db.get_multi(keys_)) == {k: self.model.get(k) for k in keys_}

    @rule(start=st.none() | keys, stop=st.none() | keys, reverse=st.booleans())
    def range_query(self, start: Key | None, stop: Key | None, reverse: bool) -> None:
        async def scan() -> list[tuple[Key, bytes]]:
            return [kv async for kv in self.db.items(start, stop, reverse=reverse)]

        expected = sorted(
            (k, v)
            for k, v in self.model.items()
            if (start is None or k >= start) and (stop is None or k < stop)
        )
        if reverse:
            expected.reverse()
        assert self.run(scan()) == expected

    @rule(group=st.sampled_from(["", "a", "ab", "b", "é"]), limit=st.none() | st.integers(0, 4))
    def prefix_query(self, group: str, limit: int | None) -> None:
        async def scan() -> list[Key]:
            return [k async for k in self.db.keys(prefix=(group,), limit=limit)]

        expected = sorted(k for k in self.model if k[0] == group)[:limit]
        assert self.run(scan()) == expected

    # -- transactions --------------------------------------------------------

    async def _in_transaction(self, model: Model, writes: list[Op]) -> None:
        for op in writes:
            await apply_op(self.db, model, op)
        # Reads inside the transaction see its own writes.
        assert {k: v async for k, v in self.db.items()} == model
        await self.side.put("commits", str(self.side_count + 1).encode())

    @rule(writes=st.lists(ops, max_size=5))
    def transaction_commits(self, writes: list[Op]) -> None:
        model = dict(self.model)

        async def go() -> None:
            async with self.env.transaction():
                await self._in_transaction(model, writes)

        self.run(go())
        self.model = model
        self.side_count += 1

    @rule(writes=st.lists(ops, max_size=5))
    def transaction_aborts(self, writes: list[Op]) -> None:
        async def go() -> None:
            try:
                async with self.env.transaction():
                    await self._in_transaction(dict(self.model), writes)
                    raise Abort
            except Abort:
                pass
            else:  # pragma: no cover
                raise AssertionError("the exception was swallowed")

        self.run(go())  # the model is unchanged

    @rule(writes=st.lists(ops, max_size=5))
    def explicit_abort(self, writes: list[Op]) -> None:
        async def go() -> None:
            async with self.env.transaction() as txn:
                await self._in_transaction(dict(self.model), writes)
                await txn.abort()

        self.run(go())

    @rule(
        outer=st.lists(ops, max_size=3),
        inner=st.lists(ops, min_size=1, max_size=3),
        rolled_back=st.booleans(),
    )
    def savepoint(self, outer: list[Op], inner: list[Op], rolled_back: bool) -> None:
        model = dict(self.model)

        async def go() -> None:
            async with self.env.transaction():
                for op in outer:
                    await apply_op(self.db, model, op)
                inner_model = dict(model)
                try:
                    async with self.env.transaction():
                        for op in inner:
                            await apply_op(self.db, inner_model, op)
                        if rolled_back:
                            raise Abort
                except Abort:
                    pass
                if not rolled_back:
                    model.clear()
                    model.update(inner_model)
                assert {k: v async for k, v in self.db.items()} == model
                await self.side.put("commits", str(self.side_count + 1).encode())

        self.run(go())
        self.model = model
        self.side_count += 1

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def snapshot_ignores_later_commits(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(sorted(self.model)))
        before = dict(self.model)

        async def go() -> None:
            start = asyncio.Event()

            async def delete_later() -> bool:
                await start.wait()
                return await self.db.delete(key)

            # Created outside the snapshot, so it does not join it (context copy).
            deleter = asyncio.create_task(delete_later())
            async with self.env.transaction(write=False):
                assert await self.db.get(key) == before[key]
                start.set()
                assert await deleter  # committed meanwhile
                assert await self.db.get(key) == before[key]
                assert {k: v async for k, v in self.db.items()} == before
            assert await self.db.get(key) is None

        self.run(go())
        del self.model[key]

    # -- invariants ----------------------------------------------------------

    @invariant()
    def matches_model(self) -> None:
        async def everything() -> list[tuple[Key, bytes]]:
            return [kv async for kv in self.db.items()]

        assert self.run(everything()) == sorted(self.model.items())
        assert self.run(self.db.count()) == len(self.model)
        committed = self.run(self.side.get("commits"))
        assert committed == (str(self.side_count).encode() if self.side_count else None)


class MemoryDatabaseMachine(DatabaseMachine):
    """The same rules and invariants on the memory engine."""

    def open_env(self) -> aiolmdb.AsyncEnvironment:
        return aiolmdb.open(":memory:")


MACHINE_SETTINGS = settings(
    max_examples=25,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
DatabaseMachine.TestCase.settings = MACHINE_SETTINGS
MemoryDatabaseMachine.TestCase.settings = MACHINE_SETTINGS
TestDatabaseMachine = DatabaseMachine.TestCase
TestMemoryDatabaseMachine = MemoryDatabaseMachine.TestCase


async def test_delete_multi_with_a_repeated_key_reports_that_it_existed(
    open_env: EnvFactory,
) -> None:
    """Found by this suite (the second delete's False won); fixed in ad92dc3."""
    db = open_env().open_db("d")
    await db.put(b"k", b"v")
    assert await db.delete_multi([b"k", b"k", b"missing"]) == {b"k": True, b"missing": False}
    assert await db.get(b"k") is None


# -- many concurrent tasks ---------------------------------------------------------

TASKS = 300
COUNTERS = 4


async def test_hundreds_of_concurrent_tasks_reach_the_computed_state(
    open_env: EnvFactory,
) -> None:
    lmdb_options = {"map_size": 64 * 1024 * 1024, "max_pending_writes": 64, "max_batch_writes": 32}
    env = open_env(lmdb_options=lmdb_options)
    data = env.open_db("data", key_coder=TupleCoder(UInt16Coder(), UInt16Coder()))
    counters = env.open_db("counters", key_coder=UInt16Coder(), value_coder=UInt16Coder())
    expected_counters = [0] * COUNTERS
    models: list[dict[tuple[int, int], bytes]] = [{} for _ in range(TASKS)]

    async def worker(task: int) -> None:
        rng = random.Random(task)
        mine = models[task]
        for step in range(12):
            slot = rng.randrange(8)
            key = (task, slot)
            value = f"{task}/{step}".encode()
            action = rng.randrange(8)
            if action == 0:
                await data.put(key, value)
                mine[key] = value
            elif action == 1:
                batch = {(task, s): value + bytes([s]) for s in rng.sample(range(8), 3)}
                assert await data.put_multi(batch) == 3
                mine.update(batch)
            elif action == 2:
                assert await data.delete(key) == (key in mine)
                mine.pop(key, None)
            elif action == 3:
                assert await data.pop(key) == mine.pop(key, None)
            elif action in (4, 5):
                counter = rng.randrange(COUNTERS)
                commit = action == 4 or rng.random() < 0.5

                async def bump(counter: int, key: Any, value: bytes, commit: bool) -> None:
                    count = await counters.get(counter, 0)
                    await data.put(key, value)
                    await asyncio.sleep(0)
                    await counters.put(counter, count + 1)
                    assert await data.get(key) == value
                    if not commit:
                        raise Abort

                # transact: engines that run transactions side by side may conflict.
                with contextlib.suppress(Abort):
                    await env.transact(bump, counter, key, value, commit)
                if commit:
                    mine[key] = value
                    expected_counters[counter] += 1
            else:
                assert await data.get(key) == mine.get(key)
                got = {k: v async for k, v in data.items(prefix=(task,))}
                assert got == mine

    await bounded(asyncio.gather(*(worker(t) for t in range(TASKS))), timeout=60)
    stored = {k: v async for k, v in data.items()}
    assert stored == {k: v for m in models for k, v in m.items()}
    got_counters = await counters.get_multi(range(COUNTERS), 0)
    assert [got_counters[c] for c in range(COUNTERS)] == expected_counters
