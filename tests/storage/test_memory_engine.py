"""The in-memory engine, through the storage protocols: views, order, writes, sessions,
savepoints, snapshots, deadlock refusal and close."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Iterator
from typing import Any, TypeVar

import pytest

from aiolmdb.errors import (
    ClosedError,
    DatabaseDroppedError,
    DatabaseNotFoundError,
    TransactionError,
    UnsupportedError,
)
from aiolmdb.storage import Buffer, Engine, Keyspace, ReadView, Session, Snapshot, WriteView
from aiolmdb.storage.memory import MemoryEngine

T = TypeVar("T")

#: Upper bound for anything awaited that would hang if the engine were broken.
TIMEOUT = 5.0

KEYS = [b"\x00", b"a", b"ab", b"b", b"ba", b"c", b"\xff"]


async def bounded(aw: Awaitable[T]) -> T:
    return await asyncio.wait_for(aw, timeout=TIMEOUT)


@pytest.fixture
async def engine() -> AsyncIterator[MemoryEngine]:
    store = MemoryEngine()
    yield store
    await store.close()


def open_ks(engine: MemoryEngine, name: bytes | None = b"things") -> Keyspace:
    return engine.open_keyspace(name, "<default>" if name is None else repr(name), create=True)


async def fill(engine: MemoryEngine, ks: Keyspace, keys: list[bytes]) -> None:
    await engine.write(lambda v: v.put_many(ks, [(k, b"v" + k) for k in keys]))


def keys_of(view: ReadView, ks: Keyspace, **bounds: Any) -> list[bytes]:
    return [key for key, _ in view.range(ks, **bounds)]


def get(engine: MemoryEngine, ks: Keyspace, key: bytes) -> bytes | None:
    return engine.read_point(ks, key, lambda _, value: None if value is None else bytes(value))


# -- the engine ----------------------------------------------------------------


def test_it_implements_the_engine_protocol() -> None:
    engine: Engine = MemoryEngine(inline_value_limit=10)
    assert engine.name == "memory"
    assert engine.description == "':memory:'"
    assert engine.max_key_size == 511
    assert engine.inline_value_limit == 10
    caps = engine.capabilities
    assert not any(
        [
            caps.raw_transactions,
            caps.native_key_orders,
            caps.map_size,
            caps.reader_table,
            caps.backup,
            caps.multi_process,
            caps.durable,
        ]
    )


def test_lmdb_options_are_refused_naming_the_engine_and_the_option() -> None:
    with pytest.raises(TypeError, match=r"the memory engine takes no option map_size: .*LMDB's"):
        MemoryEngine(map_size=1 << 20)
    with pytest.raises(ValueError, match="inline_value_limit must be >= 0, got -1"):
        MemoryEngine(inline_value_limit=-1)


async def test_each_engine_is_a_store_of_its_own() -> None:
    first, second = MemoryEngine(), MemoryEngine()
    await first.write(lambda v: v.put(open_ks(first), b"k", b"1"))
    assert get(second, open_ks(second), b"k") is None
    assert get(first, open_ks(first), b"k") == b"1"


# -- keyspaces -------------------------------------------------------------------


async def test_a_keyspace_is_ready_at_once_and_shared(engine: MemoryEngine) -> None:
    serial = engine.keyspace_serial
    ks = open_ks(engine)
    assert ks.ready and ks.error is None and ks.serial == serial + 1
    assert open_ks(engine) is ks
    assert engine.keyspace_serial == serial + 1
    default = open_ks(engine, None)
    assert default is not ks and default.name is None
    assert engine.keyspace_serial == serial + 2
    await engine.write(lambda v: v.put(ks, b"k", b"named"))
    assert get(engine, default, b"k") is None


def test_a_missing_keyspace_without_create_is_not_found() -> None:
    engine = MemoryEngine()
    with pytest.raises(DatabaseNotFoundError) as info:
        engine.open_keyspace(b"nope", "'nope'", create=False)
    assert str(info.value) == (
        "database 'nope' does not exist in environment ':memory:' (create=False)"
    )
    assert engine.open_keyspace(None, "<default>", create=False).ready


def test_lmdb_key_orders_are_unsupported_naming_the_engine() -> None:
    engine = MemoryEngine()
    with pytest.raises(UnsupportedError, match="the memory engine does not support integerkey"):
        engine.open_keyspace(b"n", "'n'", create=True, integer_keys=True)
    with pytest.raises(UnsupportedError, match="the memory engine does not support reverse_key"):
        engine.open_keyspace(b"n", "'n'", create=True, reverse_keys=True)


async def test_a_dropped_keyspace_is_gone_and_opens_again_empty(engine: MemoryEngine) -> None:
    ks = open_ks(engine)
    await fill(engine, ks, [b"a", b"b"])
    await engine.write(lambda v: v.drop(ks))
    with pytest.raises(DatabaseDroppedError, match="database b'things' was dropped"):
        engine.read_now(lambda v: v.get(ks, b"a"))
    with pytest.raises(DatabaseNotFoundError):
        engine.open_keyspace(b"things", "'things'", create=False)
    engine.forget_keyspace(ks)
    assert ks.dropped
    again = open_ks(engine)
    assert again is not ks
    assert engine.read_now(lambda v: v.count(again)) == 0


async def test_a_drop_that_fails_with_its_write_is_undone(engine: MemoryEngine) -> None:
    ks = open_ks(engine)
    await fill(engine, ks, [b"a"])

    def drop_then_fail(view: WriteView) -> None:
        view.drop(ks)
        raise KeyError("after the drop")

    with pytest.raises(KeyError, match="after the drop"):
        await engine.write(drop_then_fail)
    # As on LMDB, whose handle the drop closed at once: the keyspace is dead,
    # but its name opens the records the undone drop left.
    assert ks.dropped
    again = open_ks(engine)
    assert again is not ks
    assert get(engine, again, b"a") == b"va"
    assert engine.open_keyspace(b"things", "'things'", create=False) is again


async def test_a_drop_marks_its_keyspace_dropped_at_once(engine: MemoryEngine) -> None:
    ks = open_ks(engine)
    await fill(engine, ks, [b"a"])
    seen: list[bool] = []

    def drop(view: WriteView) -> None:
        view.drop(ks)
        seen.append(ks.dropped)

    await engine.write(drop)
    assert seen == [True] and ks.dropped
    with pytest.raises(DatabaseNotFoundError):
        engine.open_keyspace(b"things", "'things'", create=False)
    assert engine.read_now(lambda v: v.count(open_ks(engine))) == 0


# -- views -----------------------------------------------------------------------


async def test_views_get_put_delete_and_count(engine: MemoryEngine) -> None:
    ks = open_ks(engine)

    def writes(view: WriteView) -> list[Any]:
        return [
            view.put(ks, b"a", b"1"),
            view.put(ks, b"a", b"2", overwrite=False),
            view.get(ks, b"a"),
            view.put(ks, b"a", b"3"),
            view.put_many(ks, [(b"a", b"4"), (b"b", b"5"), (b"c", b"6")], overwrite=False),
            view.get_many(ks, [b"c", b"missing", b"a"]),
            view.delete(ks, b"c"),
            view.delete(ks, b"c"),
            view.count(ks),
        ]

    assert await engine.write(writes) == [
        True,
        False,
        b"1",
        True,
        2,
        [b"6", None, b"3"],
        True,
        False,
        2,
    ]
    assert engine.read_now(lambda v: v.get_many(ks, [b"a", b"b", b"c"])) == [b"3", b"5", None]
    await engine.write(lambda v: v.clear(ks))
    assert engine.read_now(lambda v: (v.count(ks), keys_of(v, ks))) == (0, [])
    assert open_ks(engine) is ks  # cleared, not dropped


async def test_keys_are_refused_outside_lmdbs_sizes(engine: MemoryEngine) -> None:
    ks = open_ks(engine)
    await engine.write(lambda v: v.put(ks, b"k" * 511, b""))
    assert get(engine, ks, b"k" * 511) == b""
    for size in (0, 512):
        with pytest.raises(ValueError, match=f"a key of {size} bytes cannot be stored; keys take"):
            key = b"k" * size
            await engine.write(lambda v: v.put(ks, key, b"x"))  # noqa: B023 - awaited here


async def test_keys_order_byte_by_byte(engine: MemoryEngine) -> None:
    ks = open_ks(engine)
    await fill(engine, ks, list(reversed(KEYS)))
    assert engine.read_now(lambda v: keys_of(v, ks)) == KEYS
    assert engine.read_now(lambda v: keys_of(v, ks, reverse=True)) == KEYS[::-1]
    records = engine.read_now(lambda v: list(v.range(ks, b"b", b"c")))
    assert records == [(b"b", b"vb"), (b"ba", b"vba")]


@pytest.mark.parametrize(
    ("bounds", "expected"),
    [
        ({"low": b"a", "high": b"b"}, [b"a", b"ab"]),
        ({"low": b"aa"}, [b"ab", b"b", b"ba", b"c", b"\xff"]),
        ({"high": b"a"}, [b"\x00"]),
        ({"low": b"b", "high": b"b"}, []),
        ({"low": b"c", "high": b"a"}, []),
        ({"after": b"b"}, [b"ba", b"c", b"\xff"]),
        ({"low": b"b", "after": b"a"}, [b"b", b"ba", b"c", b"\xff"]),
        ({"low": b"a", "high": b"c", "after": b"ab"}, [b"b", b"ba"]),
        ({"limit": 2}, [b"\x00", b"a"]),
        ({"limit": 0}, []),
        ({"after": b"ab", "limit": 2}, [b"b", b"ba"]),
        ({"reverse": True, "high": b"b"}, [b"ab", b"a", b"\x00"]),
        ({"reverse": True, "low": b"b"}, [b"\xff", b"c", b"ba", b"b"]),
        ({"reverse": True, "after": b"b"}, [b"ab", b"a", b"\x00"]),
        ({"reverse": True, "high": b"ab", "after": b"c"}, [b"a", b"\x00"]),
        ({"reverse": True, "low": b"a", "high": b"c", "after": b"ba", "limit": 2}, [b"b", b"ab"]),
    ],
)
async def test_range_bounds_after_limit_and_reverse(
    engine: MemoryEngine, bounds: dict[str, Any], expected: list[bytes]
) -> None:
    ks = open_ks(engine)
    await fill(engine, ks, KEYS)
    assert engine.read_now(lambda v: keys_of(v, ks, **bounds)) == expected


async def test_a_negative_limit_is_refused(engine: MemoryEngine) -> None:
    ks = open_ks(engine)
    with pytest.raises(ValueError, match="database b'things': limit must be >= 0, got -1"):
        engine.read_now(lambda v: v.range(ks, limit=-1))


async def test_count_over_bounds(engine: MemoryEngine) -> None:
    ks = open_ks(engine)
    await fill(engine, ks, KEYS)
    counts = engine.read_now(
        lambda v: [v.count(ks), v.count(ks, b"a"), v.count(ks, None, b"b"), v.count(ks, b"b", b"a")]
    )
    assert counts == [7, 6, 3, 0]


async def test_range_is_lazy_and_goes_on_while_its_writer_writes(engine: MemoryEngine) -> None:
    ks = open_ks(engine)
    await fill(engine, ks, [b"a", b"b", b"c", b"d"])

    def rewrite(view: WriteView) -> list[bytes]:
        seen = []
        for key, _ in view.range(ks):
            seen.append(key)
            if key == b"a":
                view.delete(ks, b"b")  # ahead: never given
                view.put(ks, b"bb", b"new")  # ahead: given
                view.put(ks, b"0", b"behind")  # behind: not given
            view.delete(ks, key)  # the current one
        return seen

    assert await engine.write(rewrite) == [b"a", b"bb", b"c", b"d"]
    assert engine.read_now(lambda v: keys_of(v, ks)) == [b"0"]


async def test_a_view_refuses_use_after_its_function_returned(engine: MemoryEngine) -> None:
    ks = open_ks(engine)
    await fill(engine, ks, [b"a"])
    kept: list[ReadView] = []

    def keeps(view: ReadView) -> Iterator[tuple[bytes, Buffer]]:
        kept.append(view)
        return view.range(ks)

    records = engine.read_now(keeps)
    with pytest.raises(TransactionError, match="used after the function it was given to returned"):
        kept[0].get(ks, b"a")
    with pytest.raises(TransactionError, match="used after the function"):
        next(records)


# -- auto-commit writes ------------------------------------------------------------


async def test_a_write_with_nothing_in_its_way_is_done_at_once(engine: MemoryEngine) -> None:
    ks = open_ks(engine)
    job = engine.write(lambda v: v.put(ks, b"k", b"v"))
    assert isinstance(job, asyncio.Future) and job.done()
    assert await job is True
    assert await engine.write_alone(lambda v: v.get(ks, b"k")) == b"v"


async def test_a_failing_write_leaves_nothing_and_is_the_awaitables_error(
    engine: MemoryEngine,
) -> None:
    ks = open_ks(engine)
    await fill(engine, ks, [b"a"])

    def half(view: WriteView) -> None:
        view.put(ks, b"b", b"new")
        view.put(ks, b"a", b"changed")
        view.delete(ks, b"a")
        raise LookupError("midway")

    with pytest.raises(LookupError, match="midway"):
        await engine.write(half)
    assert engine.read_now(lambda v: list(v.range(ks))) == [(b"a", b"va")]


async def test_stop_iteration_from_a_write_becomes_runtime_error(engine: MemoryEngine) -> None:
    ks = open_ks(engine)

    def stops(view: WriteView) -> None:
        view.put(ks, b"k", b"v")
        raise StopIteration

    with pytest.raises(RuntimeError, match="raised StopIteration") as info:
        await bounded(engine.write(stops))
    assert isinstance(info.value.__cause__, StopIteration)
    assert get(engine, ks, b"k") is None


async def test_atomically_undoes_only_its_own_writes(engine: MemoryEngine) -> None:
    ks = open_ks(engine)

    def inner(view: WriteView) -> None:
        view.put(ks, b"inner", b"1")
        view.put(ks, b"outer", b"overwritten")
        raise ValueError("inner failed")

    def outer(view: WriteView) -> str:
        view.put(ks, b"outer", b"kept")
        with contextlib.suppress(ValueError):
            view.atomically(inner)
        assert view.atomically(lambda v: v.put(ks, b"second", b"2"))
        return "done"

    assert await engine.write(outer) == "done"
    assert engine.read_now(lambda v: list(v.range(ks))) == [(b"outer", b"kept"), (b"second", b"2")]


async def test_reads_and_writes_inside_a_write_see_it_from_outside_committed(
    engine: MemoryEngine,
) -> None:
    ks = open_ks(engine)
    await fill(engine, ks, [b"a"])
    outside: list[Any] = []

    def writes(view: WriteView) -> None:
        view.put(ks, b"a", b"new")
        view.put(ks, b"b", b"new")
        outside.append(engine.read_now(lambda v: list(v.range(ks))))
        outside.append(get(engine, ks, b"a"))

    await engine.write(writes)
    assert outside == [[(b"a", b"va")], b"va"]


async def test_a_write_made_by_a_write_runs_after_it(engine: MemoryEngine) -> None:
    ks = open_ks(engine)
    later: list[Awaitable[Any]] = []

    def first(view: WriteView) -> None:
        view.put(ks, b"order", b"1")
        later.append(engine.write(lambda v: v.put(ks, b"order", v.get(ks, b"order") + b"2")))  # type: ignore[operator]

    await engine.write(first)
    await bounded(later[0])
    assert get(engine, ks, b"order") == b"12"


def test_queue_alone_outside_an_event_loop_runs_at_once() -> None:
    engine = MemoryEngine()
    ks = open_ks(engine)
    assert engine.queue_alone(lambda v: v.put(ks, b"set-up", b"1"), "collection 'c'") is None
    assert get(engine, ks, b"set-up") == b"1"


async def test_reads_and_offload(engine: MemoryEngine) -> None:
    ks = open_ks(engine)
    await fill(engine, ks, [b"a"])
    assert await engine.read(lambda v: v.get(ks, b"a"), offload=True) == b"va"
    assert get(engine, ks, b"missing") is None
    assert engine.read_point(ks, b"a", lambda k, v: (k, v)) == (b"a", b"va")
    assert engine.read_point(ks, b"missing", lambda k, v: (k, v)) == (b"missing", None)
    assert await engine.offload(lambda a, b: a + b, 2, 3) == 5
    await engine.sync(force=True)


# -- sessions ----------------------------------------------------------------------


async def test_a_session_sees_its_writes_and_others_see_them_once_committed(
    engine: MemoryEngine,
) -> None:
    ks = open_ks(engine)
    await fill(engine, ks, [b"a", b"c"])
    session = await engine.begin_session()
    assert engine.sessions and not session.ended

    def writes(view: WriteView) -> list[bytes]:
        view.put(ks, b"b", b"new")
        view.delete(ks, b"c")
        view.put(ks, b"a", b"changed")
        return keys_of(view, ks)

    assert await session.call(writes) == [b"a", b"b"]
    assert engine.read_now(lambda v: (list(v.range(ks)), v.count(ks))) == (
        [(b"a", b"va"), (b"c", b"vc")],
        2,
    )
    assert get(engine, ks, b"a") == b"va"
    assert await engine.read(lambda v: v.count(ks, b"b")) == 1
    await session.commit()
    assert session.ended and not engine.sessions
    assert engine.read_now(lambda v: list(v.range(ks))) == [(b"a", b"changed"), (b"b", b"new")]


async def test_an_aborted_session_leaves_nothing(engine: MemoryEngine) -> None:
    ks = open_ks(engine)
    await fill(engine, ks, [b"a"])
    session = await engine.begin_session()
    await session.call(lambda v: v.clear(ks))
    await session.call(lambda v: v.put(ks, b"z", b"1"))
    await session.abort()
    await session.abort()  # a no-op once ended
    assert engine.read_now(lambda v: list(v.range(ks))) == [(b"a", b"va")]
    with pytest.raises(TransactionError, match=r"write transaction opened by task .* has ended"):
        await session.call(lambda v: v.get(ks, b"a"))
    with pytest.raises(TransactionError, match="has ended"):
        await session.commit()


async def test_a_session_is_named_after_the_task_that_opened_it(engine: MemoryEngine) -> None:
    async def opens() -> str:
        session = await engine.begin_session()
        await session.abort()
        return session.label

    label = await asyncio.create_task(opens(), name="the-opener")
    assert label == "the write transaction opened by task 'the-opener' on environment ':memory:'"


async def test_writes_wait_behind_a_session_and_run_in_call_order(engine: MemoryEngine) -> None:
    ks = open_ks(engine)
    session = await engine.begin_session()
    order: list[str] = []

    def put(tag: str) -> Any:
        def write(view: WriteView) -> str:
            order.append(tag)
            view.put(ks, b"last", tag.encode())
            return tag

        return write

    first = asyncio.ensure_future(engine.write(put("first")))
    alone = asyncio.ensure_future(engine.write_alone(put("alone")))
    await asyncio.sleep(0)  # the coroutine queues its write once it runs
    queued = engine.queue_alone(put("queued"), "collection 'c'")
    second = asyncio.ensure_future(engine.write(put("second")))
    await asyncio.sleep(0.01)
    assert order == [] and not first.done()
    await session.call(lambda v: v.put(ks, b"last", b"session"))
    await session.commit()
    assert [await bounded(job) for job in (first, alone, second)] == ["first", "alone", "second"]
    assert queued is not None and await queued == "queued"
    assert order == ["first", "alone", "queued", "second"]
    assert get(engine, ks, b"last") == b"second"


async def test_a_session_waits_behind_the_open_one(engine: MemoryEngine) -> None:
    ks = open_ks(engine)
    first = await engine.begin_session()
    begun = asyncio.ensure_future(engine.begin_session())
    await asyncio.sleep(0)  # the begin is queued
    write = asyncio.ensure_future(engine.write(lambda v: v.put(ks, b"k", b"after both")))
    await asyncio.sleep(0.01)
    assert not begun.done()
    await first.call(lambda v: v.put(ks, b"k", b"first"))
    await first.commit()
    second = await bounded(begun)
    assert await second.call(lambda v: v.get(ks, b"k")) == b"first"
    assert not write.done()
    await second.call(lambda v: v.put(ks, b"k", b"second"))
    await second.commit()
    await bounded(write)
    assert get(engine, ks, b"k") == b"after both"


async def test_a_cancelled_write_behind_a_session_never_runs(engine: MemoryEngine) -> None:
    ks = open_ks(engine)
    session = await engine.begin_session()
    write = asyncio.ensure_future(engine.write(lambda v: v.put(ks, b"k", b"cancelled")))
    await asyncio.sleep(0)
    write.cancel()
    await session.commit()
    assert get(engine, ks, b"k") is None


async def test_a_cancelled_begin_never_holds_the_writer(engine: MemoryEngine) -> None:
    ks = open_ks(engine)
    first = await engine.begin_session()
    begun = asyncio.ensure_future(engine.begin_session())
    await asyncio.sleep(0)
    begun.cancel()
    await first.commit()
    assert await bounded(engine.write(lambda v: v.put(ks, b"k", b"v"))) is True
    assert not engine.sessions


# -- savepoints --------------------------------------------------------------------


async def test_savepoints_release_and_rollback(engine: MemoryEngine) -> None:
    ks = open_ks(engine)
    session: Session = await engine.begin_session()
    await session.call(lambda v: v.put(ks, b"root", b"1"))
    kept = await session.savepoint()
    await session.call(lambda v: v.put(ks, b"kept", b"1"), kept)
    undone = await session.savepoint(kept)
    assert session.savepoints == [kept, undone] and session.depth == 2
    await session.call(lambda v: (v.put(ks, b"undone", b"1"), v.delete(ks, b"root")), undone)
    inner = await session.savepoint(undone)
    await session.call(lambda v: v.put(ks, b"inner", b"1"), inner)
    await session.rollback(undone)  # with the savepoint inside it
    assert session.savepoints == [kept]
    await session.rollback(undone)  # already gone: nothing to do
    await session.release(kept)
    assert session.savepoints == [] and session.depth == 0
    assert await session.call(lambda v: keys_of(v, ks)) == [b"kept", b"root"]
    await session.commit()
    assert engine.read_now(lambda v: keys_of(v, ks)) == [b"kept", b"root"]


async def test_a_call_is_refused_unless_its_savepoint_is_innermost(engine: MemoryEngine) -> None:
    ks = open_ks(engine)
    session = await engine.begin_session()
    savepoint = await session.savepoint()
    with pytest.raises(TransactionError) as info:
        await session.call(lambda v: v.put(ks, b"k", b"v"))
    assert str(info.value) == (
        f"{session.label}: a savepoint is open inside the transaction, where this call was "
        "made: make calls through it (tasks sharing a transaction cannot each hold a "
        "savepoint at once)"
    )
    with pytest.raises(TransactionError, match="a savepoint is open inside the transaction"):
        await session.savepoint()
    await session.rollback(savepoint)
    with pytest.raises(TransactionError, match=f"savepoint {savepoint} this call was made in has"):
        await session.call(lambda v: v.put(ks, b"k", b"v"), savepoint)
    with pytest.raises(TransactionError, match=f"cannot release savepoint {savepoint}: it is not"):
        await session.release(savepoint)
    outer = await session.savepoint()
    await session.savepoint(outer)
    with pytest.raises(TransactionError, match=f"savepoint {outer}: it is not the innermost"):
        await session.release(outer)
    await session.abort()
    assert get(engine, ks, b"k") is None


async def test_commit_with_a_savepoint_open_aborts_everything(engine: MemoryEngine) -> None:
    ks = open_ks(engine)
    session = await engine.begin_session()
    await session.call(lambda v: v.put(ks, b"root", b"1"))
    savepoint = await session.savepoint()
    await session.call(lambda v: v.put(ks, b"inner", b"1"), savepoint)
    with pytest.raises(TransactionError, match="cannot commit with a savepoint still open: the"):
        await session.commit()
    assert session.ended and not engine.sessions
    assert engine.read_now(lambda v: v.count(ks)) == 0
    await session.abort()


async def test_a_failing_call_keeps_its_partial_writes_as_on_lmdb(engine: MemoryEngine) -> None:
    ks = open_ks(engine)
    session = await engine.begin_session()

    def fails(view: WriteView) -> None:
        view.put(ks, b"partial", b"1")
        raise ValueError("after a write")

    with pytest.raises(ValueError, match="after a write"):
        await session.call(fails)
    assert await session.call(lambda v: v.get(ks, b"partial")) == b"1"
    assert await session.call(lambda v: v.atomically(lambda w: w.put(ks, b"more", b"2")))
    await session.commit()
    assert engine.read_now(lambda v: keys_of(v, ks)) == [b"more", b"partial"]


# -- deadlock refusal ----------------------------------------------------------------


async def test_the_owner_awaiting_a_write_queued_behind_its_session_is_refused(
    engine: MemoryEngine,
) -> None:
    ks = open_ks(engine)
    session = await engine.begin_session()
    with pytest.raises(TransactionError) as info:
        await bounded(engine.write(lambda v: v.put(ks, b"outside", b"1")))
    assert str(info.value).startswith(
        f"{session.label} awaits a write made outside it, which waits for this transaction"
    )
    await asyncio.sleep(0.2)  # a later await is found too, by a later look
    late = engine.write(lambda v: v.put(ks, b"late", b"1"))
    await asyncio.sleep(0.1)
    with pytest.raises(TransactionError, match="awaits a write made outside it"):
        await bounded(late)
    await session.call(lambda v: v.put(ks, b"inside", b"1"))
    await session.commit()
    await asyncio.sleep(0)
    assert engine.read_now(lambda v: keys_of(v, ks)) == [b"inside"]


async def test_the_owner_beginning_a_second_session_is_refused(engine: MemoryEngine) -> None:
    session = await engine.begin_session()
    with pytest.raises(TransactionError, match="awaits another write transaction"):
        await bounded(engine.begin_session())
    assert not session.ended
    await session.commit()
    assert not engine.sessions


async def test_another_task_awaiting_a_queued_write_just_waits(engine: MemoryEngine) -> None:
    ks = open_ks(engine)
    session = await engine.begin_session()

    async def other() -> bool:
        return await engine.write(lambda v: v.put(ks, b"k", b"other"))

    task = asyncio.create_task(other())
    await asyncio.sleep(0.15)
    assert not task.done()
    await session.commit()
    assert await bounded(task) is True


async def test_opening_a_keyspace_is_refused_while_a_session_is_open(
    engine: MemoryEngine,
) -> None:
    known = open_ks(engine)
    session = await engine.begin_session()
    assert open_ks(engine) is known  # already open: free
    with pytest.raises(TransactionError, match=r"database 'new' cannot be opened while this write"):
        engine.open_keyspace(b"new", "'new'", create=True, in_own_session=True)
    awaited = engine.open_keyspace(b"new", "'new'", create=True, behind_other_tasks=True)
    assert awaited.ready
    await session.abort()


# -- snapshots -----------------------------------------------------------------------


async def test_a_snapshot_is_untouched_by_later_commits(engine: MemoryEngine) -> None:
    ks = open_ks(engine)
    await fill(engine, ks, [b"a", b"b", b"c"])
    snapshot: Snapshot = await engine.begin_snapshot()

    def changes(view: WriteView) -> None:
        view.put(ks, b"a", b"changed")
        view.delete(ks, b"b")
        view.put(ks, b"aa", b"new")
        view.put(ks, b"d", b"new")

    await engine.write(changes)
    await engine.write(lambda v: v.put(ks, b"a", b"again"))

    def everything(view: ReadView) -> Any:
        return (
            list(view.range(ks)),
            keys_of(view, ks, reverse=True),
            keys_of(view, ks, after=b"a", limit=1),
            view.count(ks),
            view.count(ks, b"aa", b"c"),
            view.get_many(ks, [b"a", b"aa", b"b"]),
        )

    assert await snapshot.call(everything) == (
        [(b"a", b"va"), (b"b", b"vb"), (b"c", b"vc")],
        [b"c", b"b", b"a"],
        [b"b"],
        3,
        1,
        [b"va", None, b"vb"],
    )
    await engine.write(lambda v: v.clear(ks))
    assert await snapshot.call(lambda v: v.count(ks), offload=True) == 3
    assert engine.read_now(lambda v: v.count(ks)) == 0
    await snapshot.release()
    assert snapshot.ended
    with pytest.raises(TransactionError, match="the read snapshot has ended"):
        await snapshot.call(lambda v: v.count(ks))


async def test_a_snapshot_begun_in_a_session_sees_the_committed_state(
    engine: MemoryEngine,
) -> None:
    ks = open_ks(engine)
    await fill(engine, ks, [b"a"])
    session = await engine.begin_session()
    await session.call(lambda v: v.put(ks, b"a", b"session"))
    snapshot = await engine.begin_snapshot()
    await session.call(lambda v: (v.put(ks, b"b", b"session"), v.delete(ks, b"a")))
    await session.commit()
    assert await snapshot.call(lambda v: list(v.range(ks))) == [(b"a", b"va")]
    assert engine.read_now(lambda v: list(v.range(ks))) == [(b"b", b"session")]
    await snapshot.release()


async def test_a_snapshot_sees_a_keyspace_dropped_after_it_began(engine: MemoryEngine) -> None:
    ks = open_ks(engine)
    await fill(engine, ks, [b"a"])
    snapshot = await engine.begin_snapshot()
    await engine.write(lambda v: v.drop(ks))
    assert await snapshot.call(lambda v: list(v.range(ks))) == [(b"a", b"va")]
    await snapshot.release()


# -- close ---------------------------------------------------------------------------


async def test_close_aborts_the_session_and_runs_the_writes_behind_it() -> None:
    engine = MemoryEngine()
    ks = open_ks(engine)
    session = await engine.begin_session()
    await session.call(lambda v: v.put(ks, b"session", b"1"))
    seen: list[Any] = []

    def behind(view: WriteView) -> bool:
        seen.append(view.get(ks, b"session"))
        return view.put(ks, b"w", b"1")

    write = asyncio.ensure_future(engine.write(behind))
    waiting = asyncio.create_task(engine.begin_session())
    snapshot = await engine.begin_snapshot()
    await asyncio.sleep(0)
    await engine.close()
    assert session.ended and snapshot.ended and engine.closed
    assert await bounded(write) is True and seen == [None]
    with pytest.raises(ClosedError, match="environment ':memory:' is closed"):
        await bounded(waiting)
    for call in (
        engine.check,
        lambda: engine.write(lambda v: None),
        lambda: engine.read_now(lambda v: None),
        lambda: engine.read_point(ks, b"w", lambda k, v: v),
        lambda: open_ks(engine),
    ):
        with pytest.raises(ClosedError, match="environment ':memory:' is closed"):
            call()
    with pytest.raises(ClosedError):
        await engine.begin_session()
    with pytest.raises(ClosedError):
        await engine.begin_snapshot()
    with pytest.raises(TransactionError, match="has ended"):
        await session.call(lambda v: None)
    await engine.close()  # twice is fine


async def test_a_snapshot_range_goes_on_while_commits_land_between_its_items(
    engine: MemoryEngine,
) -> None:
    ks = open_ks(engine)
    await fill(engine, ks, [b"a", b"c", b"e"])
    snapshot = await engine.begin_snapshot()

    def reads_while_others_write(view: ReadView) -> list[bytes]:
        seen = []
        for key, value in view.range(ks):
            seen.append(key + b"=" + bytes(value))
            # Each write commits at once, between two items of the range.
            engine.write(lambda v: (v.delete(ks, b"c"), v.put(ks, b"b", b"new")))
            engine.write(lambda v: v.put(ks, b"e", b"changed"))
        return seen

    assert await snapshot.call(reads_while_others_write) == [b"a=va", b"c=vc", b"e=ve"]
    assert engine.read_now(lambda v: keys_of(v, ks)) == [b"a", b"b", b"e"]
    await snapshot.release()


async def test_a_rolled_back_savepoint_restores_the_values_it_began_with(
    engine: MemoryEngine,
) -> None:
    ks = open_ks(engine)
    await fill(engine, ks, [b"k"])
    session = await engine.begin_session()
    await session.call(lambda v: v.put(ks, b"k", b"root"))
    savepoint = await session.savepoint()
    await session.call(lambda v: v.put(ks, b"k", b"savepoint"), savepoint)
    await session.call(lambda v: v.put(ks, b"k", b"again"), savepoint)
    await session.rollback(savepoint)
    assert await session.call(lambda v: v.get(ks, b"k")) == b"root"
    assert get(engine, ks, b"k") == b"vk"
    await session.commit()
    assert get(engine, ks, b"k") == b"root"


async def test_stop_iteration_from_any_function_becomes_runtime_error(
    engine: MemoryEngine,
) -> None:
    def stops(view: ReadView) -> None:
        raise StopIteration

    session = await engine.begin_session()
    with pytest.raises(RuntimeError, match="raised StopIteration"):
        await session.call(stops)
    await session.abort()
    snapshot = await engine.begin_snapshot()
    with pytest.raises(RuntimeError, match="raised StopIteration"):
        await snapshot.call(stops)
    await snapshot.release()
    with pytest.raises(RuntimeError, match="raised StopIteration"):
        await engine.read(stops)
    with pytest.raises(RuntimeError, match="raised StopIteration"):
        await engine.offload(stops, None)


async def test_queue_alone_tells_its_outcome_before_the_writes_queued_after_it(
    engine: MemoryEngine,
) -> None:
    ks = open_ks(engine)
    told: list[object] = []

    def fails(view: WriteView) -> None:
        view.put(ks, b"undone", b"1")
        raise ValueError("set-up failed")

    first = engine.queue_alone(
        lambda v: v.put(ks, b"a", b"1"), "collection 'c'", committed=told.append
    )
    second = engine.queue_alone(fails, "collection 'd'", failed=told.append)
    after = engine.write(lambda v: told.append("write"))
    assert first is not None and second is not None
    assert await first is True
    with pytest.raises(ValueError, match="set-up failed"):
        await second
    await after
    assert told[0] is True and isinstance(told[1], ValueError) and told[2] == "write"
    assert get(engine, ks, b"undone") is None


# -- holding the writer, for tests of what queues up ---------------------------


async def test_writes_wait_while_the_writer_is_held_and_run_in_order_once_let_go(
    engine: MemoryEngine,
) -> None:
    ks = open_ks(engine)
    hold = engine.hold_writer()
    order: list[bytes] = []

    def put(key: bytes) -> Any:
        def fn(view: WriteView) -> bool:
            order.append(key)
            return view.put(ks, key, b"v")

        return fn

    first = asyncio.ensure_future(engine.write(put(b"a")))
    second = asyncio.ensure_future(engine.write(put(b"b")))
    await asyncio.sleep(0)
    assert order == [] and not first.done() and get(engine, ks, b"a") is None
    hold.release()
    assert list(await bounded(asyncio.gather(first, second))) == [True, True]
    assert order == [b"a", b"b"]
    hold.release()  # twice is harmless
    assert await bounded(engine.write(put(b"c")))  # at once again


async def test_a_session_begins_only_once_the_hold_is_let_go(engine: MemoryEngine) -> None:
    hold = engine.hold_writer()
    begin = asyncio.ensure_future(engine.begin_session())
    await asyncio.sleep(0)
    assert not begin.done()
    hold.release()
    session = await bounded(begin)
    with pytest.raises(TransactionError, match="held"):
        engine.hold_writer()  # the session has the writer
    await session.abort()


async def test_close_lets_a_held_writer_go() -> None:
    engine = MemoryEngine()
    ks = open_ks(engine)
    engine.hold_writer()
    queued = asyncio.ensure_future(engine.write(lambda v: v.put(ks, b"k", b"v")))
    await asyncio.sleep(0)
    await bounded(engine.close())
    assert await bounded(queued)


async def test_sessions_lists_the_sessions_open_or_waiting(engine: MemoryEngine) -> None:
    assert engine.sessions == ()
    first = await bounded(engine.begin_session())
    waiting = asyncio.ensure_future(engine.begin_session())
    await asyncio.sleep(0)
    assert len(engine.sessions) == 2 and first in engine.sessions
    await first.commit()
    second = await bounded(waiting)
    assert engine.sessions == (second,)
    await second.abort()
    assert engine.sessions == ()


async def test_queued_writes_counts_the_work_waiting_for_the_writer(engine: MemoryEngine) -> None:
    ks = open_ks(engine)
    assert engine.queued_writes == 0
    hold = engine.hold_writer()
    writes = [
        asyncio.ensure_future(engine.write(lambda v: v.put(ks, b"k", b"v"))) for _ in range(3)
    ]
    begin = asyncio.ensure_future(engine.begin_session())
    await asyncio.sleep(0)
    assert engine.queued_writes == 4
    hold.release()
    await bounded(asyncio.gather(*writes))
    session = await bounded(begin)
    assert engine.queued_writes == 0
    await session.abort()
