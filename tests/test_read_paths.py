"""Read paths: where values are decoded, reads that let other tasks run, index handles."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from conftest import WhereDecoded, WriterGate, bounded, first_value, lmdb_engine, ticks_during
from pydantic import BaseModel

import aiolmdb
import aiolmdb.scanning as scan_module
from aiolmdb.coders import Buffer, IdentityCoder, JSONCoder, MsgpackCoder, StringCoder, UInt64Coder
from aiolmdb.models import Collection, Index
from aiolmdb.storage import Keyspace

Env = aiolmdb.AsyncEnvironment


async def only_value_of_multi(db: aiolmdb.AsyncDatabase[bytes, bytes]) -> bytes | None:
    return (await db.get_multi([b"k"]))[b"k"]


READS: dict[str, Callable[[aiolmdb.AsyncDatabase[bytes, bytes]], Awaitable[bytes | None]]] = {
    "get": lambda db: db.get(b"k"),
    "get_multi": only_value_of_multi,
    "items": first_value,
    "values": lambda db: anext(aiter(db.values())),
}


# -- a compressed value is decoded where its decoded size says ---------------


@pytest.mark.parametrize("read", list(READS))
async def test_a_small_compressed_value_is_decoded_on_the_loop(env: Env, read: str) -> None:
    inner = WhereDecoded()
    db = env.open_db("zipped", value_coder=inner.compressed())
    value = bytes(range(200))  # barely compresses: stored in about 200 bytes
    await db.put(b"k", value)
    stored = await env.open_db("zipped").get(b"k")
    # Larger than the old rule allowed inline (limit / zlib's worst ratio), small decoded.
    assert stored is not None
    assert len(stored) * inner.compressed().max_expansion > env.inline_value_limit
    assert await bounded(READS[read](db)) == value
    assert inner.on_loop == [True]


@pytest.mark.lmdb_only
@pytest.mark.parametrize("read", list(READS))
async def test_a_compressed_value_that_expands_past_the_limit_is_decoded_off_the_loop(
    env: Env, read: str
) -> None:
    inner = WhereDecoded()
    db = env.open_db("zipped", value_coder=inner.compressed())
    # Stored in a few hundred bytes, one byte over the limit once decompressed.
    expanded = b"x" * (env.inline_value_limit + 1)
    await db.put(b"k", expanded)
    stored = await env.open_db("zipped").get(b"k")
    assert stored is not None and len(stored) < 1024
    assert await bounded(READS[read](db)) == expanded
    assert inner.on_loop == [False]


def test_coders_say_whether_a_buffer_decodes_within_a_limit() -> None:
    plain = JSONCoder()
    raw = plain.serialize({"a": 1})
    assert plain.decodes_within(raw, len(raw))
    assert not plain.decodes_within(raw, len(raw) - 1)
    zipped = plain.compressed()
    small = zipped.serialize("x" * 100)
    assert zipped.decodes_within(small, 102)  # the JSON string has its quotes
    assert not zipped.decodes_within(small, 101)
    twice = plain.compressed().compressed()
    nested = twice.serialize("x" * 5000)
    assert twice.decodes_within(nested, 5002)
    assert not twice.decodes_within(nested, 5001)
    # Bytes that are not zlib's are not known to fit: decoding them (off the loop) says why.
    assert not zipped.decodes_within(b"not zlib", 1 << 20)
    assert not zipped.decodes_within(small[:-3], 1 << 20)  # truncated


async def test_a_bad_compressed_value_still_fails_with_a_decode_error_naming_the_database(
    env: Env,
) -> None:
    db = env.open_db("zipped", value_coder=WhereDecoded().compressed())
    await env.open_db("zipped").put(b"k", b"not zlib")
    with pytest.raises(aiolmdb.DecodeError, match=r"zipped.*bad zlib data"):
        await bounded(db.get(b"k"))


# -- loops of inline reads let other tasks run --------------------------------


class Person(BaseModel):
    email: str


class People(Collection[int, Person]):
    key_coder = UInt64Coder()
    by_email = Index(lambda p: p.email, StringCoder(), unique=True)


LOOPS = 2000


async def test_a_loop_of_index_gets_lets_other_tasks_run(env: Env) -> None:
    people = await People.open(env)
    await people.put_multi([(i, Person(email=f"u{i}@x")) for i in range(10)])

    async def gets() -> None:
        for i in range(LOOPS):
            assert await people.by_email.get(f"u{i % 10}@x") == Person(email=f"u{i % 10}@x")

    assert await ticks_during(gets) >= LOOPS // 512


async def test_a_loop_of_index_counts_lets_other_tasks_run(env: Env) -> None:
    people = await People.open(env)
    await people.put_multi([(i, Person(email=f"u{i}@x")) for i in range(10)])

    async def counts() -> None:
        for _ in range(LOOPS):
            assert await people.by_email.count() == 10

    assert await ticks_during(counts) >= LOOPS // 512


async def test_a_loop_of_reads_in_a_read_snapshot_lets_other_tasks_run(env: Env) -> None:
    people = await People.open(env)
    await people.put(1, Person(email="a@x"))

    async def reads() -> None:
        async with env.transaction(write=False):
            for _ in range(LOOPS):
                assert await people.contains(1)

    assert await ticks_during(reads) >= LOOPS // 512


async def test_index_gets_and_counts_read_through_the_collections_checked_read(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    people = await People.open(env)
    await people.put(1, Person(email="a@x"))
    read_main = people.access.read
    calls: list[bool] = []

    async def spy(fn: Callable[[Any], Any], ctx: Any, *, offload: bool = False) -> Any:
        calls.append(offload)
        return await read_main(fn, ctx, offload=offload)

    monkeypatch.setattr(people.access, "read", spy)
    assert await people.by_email.get("a@x") == Person(email="a@x")
    assert await people.by_email.count() == 1
    assert await people.by_email.count("a@x") == 1
    # Through the collection's checked read: the drop is checked after the read too.
    assert len(calls) == 3


# -- an index whose database is being opened again ---------------------------


class Indexed(Collection[int, Person]):
    name = "people"
    key_coder = UInt64Coder()
    by_email = Index(lambda p: p.email, StringCoder(), unique=True)


class Unindexed(Collection[int, Person]):
    name = "people"
    key_coder = UInt64Coder()


#: Where ``Indexed.by_email`` keeps its entries.
INDEX_DB = b"__aiolmdb__/index/people/by_email"

INDEX_READS: dict[str, Callable[[Indexed], Awaitable[Any]]] = {
    "get": lambda people: people.by_email.get("a@x"),
    "count": lambda people: people.by_email.count(),
    "count of a key": lambda people: people.by_email.count("a@x"),
    "values": lambda people: anext(aiter(people.by_email.values())),
}


@pytest.mark.lmdb_only
@pytest.mark.parametrize("read", list(INDEX_READS))
async def test_reading_an_index_being_opened_again_says_it_is_being_rebuilt(
    env: Env, read: str
) -> None:
    people = await Indexed.open(env)
    await people.put(1, Person(email="a@x"))
    assert await (await Unindexed.open(env)).drop_removed_indexes() == ["by_email"]
    gate = WriterGate(env.open_db("gate"))
    await gate.hold()
    building = asyncio.create_task(people.build_indexes())

    def index_keyspaces() -> list[Keyspace]:
        return [ks for ks in lmdb_engine(env).keyspaces if ks.name == INDEX_DB]

    for _ in range(100):  # until the build has queued the open of the index's database
        if index_keyspaces():
            break
        await asyncio.sleep(0)
    (opening,) = index_keyspaces()
    assert not opening.ready  # queued behind the gate
    try:
        with pytest.raises(aiolmdb.AiolmdbError, match=r"people.*by_email.*build_indexes\(\)"):
            await bounded(INDEX_READS[read](people))
    finally:
        await gate.release()
        await bounded(building)
    assert await people.by_email.get("a@x") == Person(email="a@x")


# -- an index scan's first batch leaves a large record to a reader thread ----


class Blobs(Collection[int, dict[str, Any]]):
    key_coder = UInt64Coder()
    value_coder = MsgpackCoder()
    by_tag = Index(lambda d: d["tag"], StringCoder())


@pytest.fixture
def copied(monkeypatch: pytest.MonkeyPatch) -> list[tuple[bool, list[int]]]:
    """Every scan batch read: (on the loop thread?, sizes of the values it copied)."""
    seen: list[tuple[bool, list[int]]] = []
    real = scan_module.fetch_batch

    def recording(*args: Any, **kwargs: Any) -> scan_module.Batch:
        batch = real(*args, **kwargs)
        on_loop = threading.current_thread() is threading.main_thread()
        seen.append((on_loop, [len(value) for _, value in batch[0]]))
        return batch

    monkeypatch.setattr(scan_module, "fetch_batch", recording)
    return seen


INDEX_SCANS: dict[str, Callable[[Blobs], AsyncIterator[Any]]] = {
    "values": lambda blobs: blobs.by_tag.values(),
    "items": lambda blobs: blobs.by_tag.items(limit=1),
    "keys": lambda blobs: blobs.by_tag.keys(),
}


@pytest.mark.lmdb_only
@pytest.mark.parametrize("scan", list(INDEX_SCANS))
async def test_an_index_scan_copies_a_large_record_on_a_reader_thread(
    env: Env, copied: list[tuple[bool, list[int]]], scan: str
) -> None:
    blobs = await Blobs.open(env)
    data = b"x" * (1 << 20)
    await blobs.put(1, {"tag": "a", "data": data})
    record = {"tag": "a", "data": data}
    expected = {"values": record, "items": (1, record), "keys": 1}[scan]
    assert [item async for item in INDEX_SCANS[scan](blobs)] == [expected]
    large = [(on_loop, size) for on_loop, sizes in copied for size in sizes if size > 1 << 16]
    assert large and not any(on_loop for on_loop, _ in large), copied


# -- an index get decodes a large record where a collection get does ---------


@pytest.mark.lmdb_only
@pytest.mark.parametrize("kind", ["plain", "compressed", "small compressed"])
async def test_an_index_get_decodes_a_record_where_a_collection_get_would(
    env: Env, kind: str
) -> None:
    inner = WhereDecoded()

    class Records(Collection[int, bytes]):
        key_coder = UInt64Coder()
        value_coder = inner if kind == "plain" else inner.compressed()
        by_head = Index(lambda b: b[:4].decode(), StringCoder(), unique=True)

    records = await Records.open(env)
    value = b"head" + (bytes(range(100)) if kind == "small compressed" else b"x" * (1 << 20))
    await records.put(1, value)
    inner.on_loop.clear()
    assert await bounded(records.by_head.get("head")) == value
    assert await bounded(records.get(1)) == value
    on_loop = kind == "small compressed"
    assert inner.on_loop == [on_loop, on_loop]


class _Reversed(IdentityCoder):
    """Bytes stored reversed: a subclass whose serialize and deserialize must run."""

    def serialize(self, obj: bytes | bytearray | memoryview) -> bytes:
        return bytes(obj)[::-1]

    def deserialize(self, buf: Buffer) -> bytes:
        return bytes(buf)[::-1]


async def test_the_bytes_fast_path_of_get_leaves_identity_subclasses_their_own_coding(
    env: Env,
) -> None:
    db = env.open_db("reversed", key_coder=_Reversed(), value_coder=_Reversed())
    await db.put(b"key", b"value")
    assert await db.get(b"key") == b"value"
    raw = env.open_db("reversed")
    assert await raw.get(b"yek") == b"eulav"
    assert await raw.get(b"key") is None
