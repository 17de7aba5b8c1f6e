"""Edges of databases, scans and coders: drops racing calls, scan memory, key flags, coders."""

from __future__ import annotations

import asyncio
import threading
import tracemalloc
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from conftest import (
    TIMEOUT,
    EnvFactory,
    WhereDecoded,
    WriterGate,
    bounded,
    first_value,
    queued_writes,
    ticks_during,
)
from pydantic import BaseModel

import aiolmdb
import aiolmdb.scanning as scan_module
from aiolmdb.coders import Buffer, Coder, StringCoder, UInt32Coder, UInt64Coder
from aiolmdb.models import Collection, Index

Env = aiolmdb.AsyncEnvironment
BytesDB = aiolmdb.AsyncDatabase[bytes, bytes]


async def queued(env: Env, jobs: int) -> None:
    """Wait until ``jobs`` jobs wait in the writer's queue."""
    for _ in range(1000):
        if queued_writes(env) >= jobs:
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"{jobs} jobs never reached the writer's queue")


# -- 1: a write queued behind a drop of its database ---------------------

WRITES: dict[str, Callable[[BytesDB], Awaitable[Any]]] = {
    "put": lambda db: db.put(b"k", b"stray"),
    "put_multi": lambda db: db.put_multi([(b"k", b"stray"), (b"k2", b"stray")]),
    "delete": lambda db: db.delete(b"b-record"),
    "pop": lambda db: db.pop(b"b-record"),
    "replace": lambda db: db.replace(b"k", b"stray"),
    "insert": lambda db: db.insert(b"k", b"stray"),
    "update": lambda db: db.update(b"b-record", lambda _: b"stray"),
    "run": lambda db: db.run(lambda t: t.put(b"k", b"stray"), write=True),
    "drop_empty": lambda db: db.drop(delete=False),
    "drop_delete": lambda db: db.drop(delete=True),
}


@pytest.mark.lmdb_only  # opening a database takes the writer, and LMDB reuses handle slots
@pytest.mark.parametrize("write", list(WRITES))
async def test_a_write_queued_behind_a_drop_never_reaches_the_database_reusing_its_slot(
    env: Env, write: str
) -> None:
    doomed = env.open_db("doomed")
    holder = env.open_db("holder")
    await doomed.put(b"b-record", b"old")
    gate = WriterGate(holder)
    await gate.hold()
    drop = asyncio.create_task(doomed.drop(delete=True))
    await queued(env, 1)
    # Opened by the writer after the drop: it takes the freed LMDB slot
    # before the write below runs.
    other = env.open_db("other")
    await queued(env, 2)
    late = asyncio.ensure_future(WRITES[write](doomed))
    await queued(env, 3)
    await gate.release()
    await bounded(drop)
    with pytest.raises(aiolmdb.DatabaseDroppedError, match="'doomed'"):
        await bounded(late)
    await other.put(b"b-record", b"mine")
    assert [item async for item in other.items()] == [(b"b-record", b"mine")]
    assert await other.get(b"k") is None


@pytest.mark.needs("serial_writes")
async def test_a_write_checks_the_drop_where_it_runs_not_only_when_called(env: Env) -> None:
    doomed = env.open_db("doomed")
    holder = env.open_db("holder")
    gate = WriterGate(holder)
    await gate.hold()
    drop = asyncio.create_task(doomed.drop(delete=True))
    await queued(env, 1)
    late = asyncio.ensure_future(doomed.put(b"k", b"v"))
    await queued(env, 2)
    await gate.release()
    await bounded(drop)
    with pytest.raises(aiolmdb.DatabaseDroppedError, match=r"'doomed'.*dropped"):
        await bounded(late)


class Person(BaseModel):
    name: str


class People(Collection[int, Person]):
    key_coder = UInt64Coder()
    by_name = Index(lambda p: p.name, StringCoder())


@pytest.mark.needs("serial_writes")
async def test_a_collection_write_queued_behind_its_drop_fails(env: Env) -> None:
    people = People(env)
    await people.put(1, Person(name="ada"))
    holder = env.open_db("holder")
    gate = WriterGate(holder)
    await gate.hold()
    drop = asyncio.create_task(people.drop(delete=True))
    await queued(env, 1)
    late = asyncio.ensure_future(people.put(2, Person(name="alan")))
    await queued(env, 2)
    await gate.release()
    await bounded(drop)
    with pytest.raises(aiolmdb.DatabaseDroppedError, match="'People'"):
        await bounded(late)


# -- 2: a scan running across a drop of its database --------------------


async def hold_readers(db: BytesDB) -> tuple[asyncio.Task[bool], threading.Event]:
    """Keep the only reader thread busy until the returned event is set."""
    started, release = threading.Event(), threading.Event()

    def block(_: object) -> bool:
        started.set()
        return release.wait(TIMEOUT)

    task = asyncio.create_task(db.run(block))
    assert await bounded(asyncio.to_thread(started.wait, TIMEOUT))
    return task, release


@pytest.mark.lmdb_only
async def test_a_scan_across_a_drop_stops_instead_of_reading_another_database(
    open_env: EnvFactory,
) -> None:
    env = open_env(map_size=64 << 20, read_workers=1)
    doomed = env.open_db("doomed")
    holder = env.open_db("holder")
    await doomed.put_multi([(b"k%04d" % i, b"doomed") for i in range(200)])
    blocker, release = await hold_readers(holder)
    scan = doomed.items()
    seen = [await scan.__anext__()]  # the first batch; the next one waits for the reader
    await doomed.drop(delete=True)
    other = env.open_db("other")  # takes the dropped database's LMDB slot
    await other.put_multi([(b"k%04d" % i, b"other") for i in range(1000, 1100)])
    release.set()
    assert await bounded(blocker)
    with pytest.raises(aiolmdb.DatabaseDroppedError, match="'doomed'"):
        async for item in scan:
            seen.append(item)
    assert all(value == b"doomed" for _, value in seen)


@pytest.mark.lmdb_only
async def test_an_index_scan_across_a_drop_stops_with_a_clear_error(
    open_env: EnvFactory,
) -> None:
    env = open_env(map_size=64 << 20, read_workers=1)
    people = People(env)
    await people.put_multi([(i, Person(name=f"n{i:04d}")) for i in range(200)])
    holder = env.open_db("holder")
    blocker, release = await hold_readers(holder)
    scan = people.by_name.values()
    seen = [await scan.__anext__()]
    await people.drop(delete=True)
    release.set()
    assert await bounded(blocker)
    with pytest.raises(aiolmdb.DatabaseDroppedError, match="'People'"):
        async for item in scan:
            seen.append(item)
    assert len(seen) < 200


@pytest.mark.lmdb_only
async def test_a_read_on_a_reader_thread_after_a_drop_fails(open_env: EnvFactory) -> None:
    env = open_env(map_size=64 << 20, read_workers=1)
    doomed = env.open_db("doomed")
    holder = env.open_db("holder")
    await doomed.put_multi([(b"k%04d" % i, b"doomed") for i in range(100)])
    blocker, release = await hold_readers(holder)
    read = asyncio.ensure_future(doomed.get_multi([b"k%04d" % i for i in range(100)]))
    await asyncio.sleep(0.01)
    await doomed.drop(delete=True)
    other = env.open_db("other")
    await other.put_multi([(b"k%04d" % i, b"other") for i in range(100)])
    release.set()
    assert await bounded(blocker)
    with pytest.raises(aiolmdb.DatabaseDroppedError, match="'doomed'"):
        await bounded(read)


# -- 23: what a custom coder returns is checked --------------------------


class Returning(Coder[Any]):
    """A coder that returns whatever it was told to, for any object."""

    def __init__(self, output: object) -> None:
        self.output = output

    def serialize(self, obj: Any) -> bytes:
        return self.output  # type: ignore[return-value]

    def deserialize(self, buf: Buffer) -> Any:
        return bytes(buf)

    def __repr__(self) -> str:
        return f"Returning({type(self.output).__name__})"


VALUE_WRITES: dict[str, Callable[[aiolmdb.AsyncDatabase[Any, Any]], Awaitable[Any]]] = {
    "put": lambda db: db.put(b"k", "v"),
    "put_multi": lambda db: db.put_multi([(b"k", "v")]),
    "replace": lambda db: db.replace(b"k", "v"),
    "insert": lambda db: db.insert(b"k", "v"),
    "update": lambda db: db.update(b"old", lambda _: "v"),
    "run": lambda db: db.run(lambda t: t.put(b"k", "v"), write=True),
}


@pytest.mark.parametrize("output", [None, "text", 7])
@pytest.mark.parametrize("write", list(VALUE_WRITES))
async def test_a_value_coder_returning_no_bytes_is_refused_naming_it(
    env: Env, write: str, output: object
) -> None:
    raw = env.open_db("checked")
    await raw.put(b"old", b"x")
    db: aiolmdb.AsyncDatabase[Any, Any] = env.open_db("checked", value_coder=Returning(output))
    with pytest.raises(aiolmdb.EncodeError) as caught:
        await bounded(VALUE_WRITES[write](db))
    message = str(caught.value)
    assert "'checked'" in message
    assert f"Returning({type(output).__name__})" in message
    assert type(output).__name__ in message
    assert [item async for item in raw.items()] == [(b"old", b"x")]


KEY_CALLS: dict[str, Callable[[aiolmdb.AsyncDatabase[Any, Any]], Awaitable[Any]]] = {
    "get": lambda db: db.get("k"),
    "put": lambda db: db.put("k", b"v"),
    "delete": lambda db: db.delete("k"),
    "get_multi": lambda db: db.get_multi(["k"]),
    "put_multi": lambda db: db.put_multi([("k", b"v")]),
    "contains": lambda db: db.contains("k"),
    "run": lambda db: db.run(lambda t: t.put("k", b"v"), write=True),
}


@pytest.mark.parametrize("output", [None, "text"])
@pytest.mark.parametrize("call", list(KEY_CALLS))
async def test_a_key_coder_returning_no_bytes_is_refused_naming_it(
    env: Env, call: str, output: object
) -> None:
    db: aiolmdb.AsyncDatabase[Any, Any] = env.open_db("checked", key_coder=Returning(output))
    with pytest.raises(aiolmdb.EncodeError) as caught:
        await bounded(KEY_CALLS[call](db))
    message = str(caught.value)
    assert "'checked'" in message
    assert f"Returning({type(output).__name__})" in message
    assert "returned" in message
    assert await env.open_db("checked").count() == 0


@pytest.mark.parametrize("output", [bytearray(b"made"), memoryview(b"made")])
async def test_a_coder_may_return_bytearray_or_memoryview(env: Env, output: object) -> None:
    db: aiolmdb.AsyncDatabase[Any, Any] = env.open_db(
        "buffers", key_coder=Returning(output), value_coder=Returning(output)
    )
    assert await db.put("anything", "anything")
    assert await db.put_multi([("a", "b")]) == 1
    assert [item async for item in env.open_db("buffers").items()] == [(b"made", b"made")]
    assert await db.get("anything") == b"made"


class OrderedReturning(Returning):
    ordered = True

    def serialize_prefix(self, prefix: object) -> bytes:
        return self.output  # type: ignore[return-value]


async def test_a_prefix_coder_returning_no_bytes_is_refused_naming_it(env: Env) -> None:
    db: aiolmdb.AsyncDatabase[Any, Any] = env.open_db("checked", key_coder=OrderedReturning(None))
    with pytest.raises(aiolmdb.EncodeError, match=r"'checked'.*Returning\(NoneType\) returned"):
        db.items(prefix="p")


# -- 14: integerkey and reverse_key databases ------------------------------


def lmdb_order(env: Env, name: str, integerkey: bool, reverse_key: bool) -> list[bytes]:
    """The keys of a database in the order LMDB itself returns them."""
    handle = env.lmdb_env.open_db(
        name.encode(), create=False, integerkey=integerkey, reverse_key=reverse_key
    )
    with env.lmdb_env.begin() as txn:
        return [bytes(key) for key in txn.cursor(db=handle).iternext(values=False)]


FLAGS = [{"integerkey": True}, {"reverse_key": True}]


@pytest.mark.needs("native_key_orders")
@pytest.mark.parametrize("flags", FLAGS, ids=lambda f: next(iter(f)))
async def test_ranges_on_a_database_lmdb_orders_its_own_way_are_refused(
    env: Env, flags: dict[str, bool]
) -> None:
    db = env.open_db("flagged", key_coder=UInt32Coder(), **flags)
    keys = [1, 2, 255, 256, 300, 70000, 1 << 24]
    await db.put_multi([(key, b"v") for key in keys])
    flag = next(iter(flags))
    for query in (
        lambda: db.items(start=2),
        lambda: db.keys(stop=300),
        lambda: db.values(start=1, stop=70000, reverse=True),
        lambda: db.items(prefix=b"\x00"),
    ):
        with pytest.raises(aiolmdb.UnorderedKeyError, match=rf"'flagged'.*{flag}"):
            query()
    # Whole scans come in LMDB's own order, both ways.
    stored = [
        UInt32Coder().deserialize(raw)
        for raw in lmdb_order(
            env, "flagged", flags.get("integerkey", False), flags.get("reverse_key", False)
        )
    ]
    assert [key async for key in db.keys()] == stored
    assert [key async for key in db.keys(reverse=True)] == stored[::-1]
    assert [key async for key in db.keys(limit=3)] == stored[:3]
    assert await db.first() == (stored[0], b"v")
    assert await db.last() == (stored[-1], b"v")


@pytest.mark.needs("native_key_orders")
@pytest.mark.parametrize("raw_key", [b"abc", b"\x01", b"12345", b"123456789"])
async def test_an_integerkey_database_refuses_keys_of_other_sizes(env: Env, raw_key: bytes) -> None:
    db = env.open_db("ints", integerkey=True)
    for call in (
        lambda: db.put(raw_key, b"v"),
        lambda: db.get(raw_key),
        lambda: db.put_multi([(raw_key, b"v")]),
    ):
        with pytest.raises(aiolmdb.EncodeError, match=rf"'ints'.*{len(raw_key)} bytes.*4 or 8"):
            await bounded(call())
    assert await db.count() == 0


@pytest.mark.needs("native_key_orders")
async def test_an_integerkey_database_keeps_its_keys_one_size(env: Env) -> None:
    db = env.open_db("ints", integerkey=True)
    assert await db.put(b"\x01\x00\x00\x00", b"four")
    with pytest.raises(aiolmdb.EncodeError, match=r"'ints'.*8 bytes.*4 bytes"):
        await db.put(b"\x01\x00\x00\x00\x00\x00\x00\x00", b"eight")
    longs = env.open_db("longs", key_coder=UInt64Coder(), integerkey=True)
    assert await longs.put_multi([(i, b"v") for i in (1, 256, 1 << 40)]) == 3
    assert sorted([key async for key in longs.keys()]) == [1, 256, 1 << 40]


# -- 12: scan batches are bounded in bytes ---------------------------------


@pytest.fixture
def batches(monkeypatch: pytest.MonkeyPatch) -> list[tuple[bool, int, int]]:
    """Every batch a scan reads: (on the loop thread?, records, bytes)."""
    seen: list[tuple[bool, int, int]] = []
    real = scan_module.fetch_batch

    def recording(*args: Any, **kwargs: Any) -> scan_module.Batch:
        batch = real(*args, **kwargs)
        size = sum(len(key) + len(value) for key, value in batch[0])
        seen.append((threading.current_thread() is threading.main_thread(), len(batch[0]), size))
        return batch

    monkeypatch.setattr(scan_module, "fetch_batch", recording)
    return seen


BIG = 256 * 1024


@pytest.mark.lmdb_only
@pytest.mark.parametrize("limit", [None, 30, 100])
async def test_a_scan_of_large_values_reads_batches_bounded_in_bytes_off_the_loop(
    env: Env, batches: list[tuple[bool, int, int]], limit: int | None
) -> None:
    db = env.open_db("big")
    stored = [(b"k%03d" % i, bytes([i]) * BIG) for i in range(40)]
    await db.put_multi(stored)
    assert [item async for item in db.items(limit=limit)] == stored[:limit]
    assert batches
    for on_loop, _, size in batches:
        # On the loop, no value as large as these is even copied.
        assert size <= (64 * 1024 if on_loop else 2 * 1024 * 1024 + BIG), batches
    assert sum(count for _, count, _ in batches) == len(stored[:limit])


async def test_a_scan_of_small_values_still_starts_on_the_loop(
    env: Env, batches: list[tuple[bool, int, int]]
) -> None:
    db = env.open_db("small")
    stored = [(b"k%04d" % i, b"v" * 100) for i in range(3000)]
    await db.put_multi(stored)
    assert [item async for item in db.items()] == stored
    assert batches[0][:2] == (True, 64)  # a short query costs no thread hop
    assert [item async for item in db.items(reverse=True, limit=10)] == stored[::-1][:10]
    assert [key async for key in db.keys(start=b"k0100", stop=b"k2500")] == [
        key for key, _ in stored[100:2500]
    ]


async def test_a_key_scan_of_large_values_is_not_bounded_by_the_values(
    env: Env, batches: list[tuple[bool, int, int]]
) -> None:
    db = env.open_db("big")
    await db.put_multi([(b"k%03d" % i, b"x" * BIG) for i in range(40)])
    assert len([key async for key in db.keys()]) == 40
    assert len(batches) <= 2


# -- 20: a loop of inline reads lets other tasks run -----------------------

READS: dict[str, Callable[[BytesDB], Awaitable[Any]]] = {
    "get": lambda db: db.get(b"k"),
    "get missing": lambda db: db.get(b"missing"),
    "contains": lambda db: db.contains(b"k"),
    "get_multi": lambda db: db.get_multi([b"k", b"missing"]),
    "count": lambda db: db.count(),
    "first": lambda db: db.first(),
}


@pytest.mark.parametrize("read", list(READS))
async def test_a_loop_of_inline_reads_lets_other_tasks_run(env: Env, read: str) -> None:
    db = env.open_db("hot")
    await db.put(b"k", b"v")

    async def reads() -> None:
        for _ in range(5000):
            await READS[read](db)

    during = await ticks_during(reads)
    assert during >= 5000 // 1024, f"the other task ran {during} times during 5000 reads"


# -- 21: values that expand when decoded are decoded off the loop --------


SCANS: dict[str, Callable[[aiolmdb.AsyncDatabase[bytes, bytes]], Awaitable[bytes | None]]] = {
    "get": lambda db: db.get(b"k"),
    "items": first_value,
    "values": lambda db: anext(aiter(db.values())),
}


@pytest.mark.lmdb_only
@pytest.mark.parametrize("read", list(SCANS))
async def test_a_small_compressed_value_that_expands_is_decoded_off_the_loop(
    env: Env, read: str
) -> None:
    inner = WhereDecoded()
    db = env.open_db("zipped", value_coder=inner.compressed())
    expanded = b"x" * (4 << 20)
    await db.put(b"k", expanded)
    stored = await env.open_db("zipped").get(b"k")
    assert stored is not None and len(stored) < env.inline_value_limit  # small as stored
    assert await bounded(SCANS[read](db)) == expanded
    assert inner.on_loop == [False]


@pytest.mark.parametrize("read", list(SCANS))
async def test_a_small_plain_value_is_still_decoded_on_the_loop(env: Env, read: str) -> None:
    inner = WhereDecoded()
    db = env.open_db("plain", value_coder=inner)
    await db.put(b"k", b"x" * 1000)
    await bounded(SCANS[read](db))
    assert inner.on_loop == [True]


def test_compressed_coders_say_how_much_they_may_expand() -> None:
    assert StringCoder().max_expansion == 1
    assert StringCoder().compressed().max_expansion >= 1000  # zlib's ratio is at most 1032
    assert StringCoder().compressed().compressed().max_expansion >= 1000 * 1000


@pytest.mark.lmdb_only
@pytest.mark.parametrize("coder", ["plain", "compressed"])
async def test_a_small_get_multi_of_large_values_decodes_them_off_the_loop(
    env: Env, coder: str
) -> None:
    inner = WhereDecoded()
    value_coder = inner if coder == "plain" else inner.compressed()
    db = env.open_db("large", value_coder=value_coder)
    small, large = b"s" * 10, b"x" * (1 << 20)
    await db.put_multi([(b"a", small), (b"b", large), (b"c", small)])
    found = await bounded(db.get_multi([b"a", b"b", b"c", b"missing"]))
    assert found == {b"a": small, b"b": large, b"c": small, b"missing": None}
    assert not any(inner.on_loop[-3:]), inner.on_loop


async def test_a_small_get_multi_of_small_values_stays_on_the_loop(env: Env) -> None:
    inner = WhereDecoded()
    db = env.open_db("small", value_coder=inner)
    await db.put_multi([(b"a", b"1"), (b"b", b"2")])
    assert await db.get_multi([b"a", b"b"]) == {b"a": b"1", b"b": b"2"}
    assert inner.on_loop == [True, True]


async def test_scanning_large_values_one_at_a_time_holds_a_few_of_them_at_most(
    env: Env,
) -> None:
    db = env.open_db("big")
    mib = 1 << 20
    await db.put_multi([(b"k%03d" % i, bytes([i]) * mib) for i in range(40)])
    tracemalloc.start()
    try:
        count = 0
        async for _, value in db.items():
            assert len(value) == mib
            count += 1
            del value
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == 40
    # Two batches (one consumed, one read ahead) of about 1 MiB each, and the value decoded.
    assert peak < 8 * mib, f"peak {peak / mib:.1f} MiB"


# -- 1, 20: a get that lets other tasks run never reads a dropped database ----


@pytest.mark.lmdb_only
async def test_a_get_that_yields_never_reads_the_database_that_took_a_dropped_slot(
    env: Env,
) -> None:
    doomed = env.open_db("doomed")
    await doomed.put(b"k", b"record of doomed")
    gate_db = env.open_db("gate")
    gate = WriterGate(gate_db)
    await gate.hold()
    dropping = asyncio.create_task(doomed.drop(delete=True))
    for _ in range(3):
        await asyncio.sleep(0)
    other = env.open_db("other")  # queued behind the drop: it takes the freed slot
    putting = asyncio.create_task(other.put(b"k", b"record of other"))
    writer_done = threading.Event()
    # Queued last: the writer thread tells when it is done with the rest.
    signalling = asyncio.create_task(gate_db.run(lambda _: writer_done.set(), write=True))
    await asyncio.sleep(0)

    def drop_while_the_get_yields() -> None:
        # Runs at the first turn a get lets other tasks run: the writer drops
        # "doomed", opens "other" in its slot and writes to it meanwhile.
        gate.let_go()
        writer_done.wait(TIMEOUT)

    asyncio.get_running_loop().call_soon(drop_while_the_get_yields)
    seen: list[bytes | None] = []
    with pytest.raises(aiolmdb.DatabaseDroppedError, match="'doomed'"):
        for _ in range(2 * 256):  # some get among them lets other tasks run
            seen.append(await doomed.get(b"k"))
    assert set(seen) <= {b"record of doomed"}
    assert writer_done.is_set(), "the writer did not drop, open and write meanwhile"
    await bounded(asyncio.gather(dropping, putting, signalling))
    assert await other.get(b"k") == b"record of other"


@pytest.mark.needs("durable", "native_key_orders")
async def test_every_handle_on_an_integerkey_database_keeps_its_key_size(
    open_env: EnvFactory, env_path: Any
) -> None:
    env = open_env(env_path)
    first = env.open_db("ints", integerkey=True)
    assert await first.put(b"\x01\x00\x00\x00", b"four")
    second = env.open_db("ints", integerkey=True, value_coder=StringCoder())
    with pytest.raises(aiolmdb.EncodeError, match=r"'ints'.*8 bytes.*4 bytes"):
        await second.put(b"\x01\x00\x00\x00\x00\x00\x00\x00", "eight")
    await env.close()
    again = open_env(env_path).open_db("ints", integerkey=True)  # learns it from what is stored
    with pytest.raises(aiolmdb.EncodeError, match=r"'ints'.*8 bytes.*4 bytes"):
        await again.put(b"\x02\x00\x00\x00\x00\x00\x00\x00", b"eight")
    assert await again.put(b"\x02\x00\x00\x00", b"four too")
