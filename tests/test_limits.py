"""Growth of the memory map, its limit, and bad input of every kind."""

from __future__ import annotations

import asyncio
import os
import random
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import lmdb
import pytest
from conftest import EnvFactory, WriterGate, bounded, detached
from pydantic import BaseModel

import aiolmdb
from aiolmdb.coders import (
    BytesCoder,
    Coder,
    DateTimeCoder,
    IdentityCoder,
    Int64Coder,
    JSONCoder,
    MsgpackCoder,
    PickleCoder,
    PydanticCoder,
    StringCoder,
    TupleCoder,
    UInt16Coder,
    UInt32Coder,
    UInt64Coder,
    UUIDCoder,
)

MiB = 1024 * 1024
CHUNK = 100_000  # bytes per value


def value(i: int) -> bytes:
    return i.to_bytes(4, "big") * (CHUNK // 4)


# -- growth ------------------------------------------------------------------------


async def write_20_mb(env: aiolmdb.AsyncEnvironment, how: str) -> None:
    db = env.open_db("bulk", key_coder=UInt32Coder())
    count = 20 * MiB // CHUNK
    if how == "put":
        await bounded(asyncio.gather(*(db.put(i, value(i)) for i in range(count))), timeout=60)
    elif how == "put_multi":
        for start in range(0, count, 25):
            stop = min(start + 25, count)
            await bounded(db.put_multi({i: value(i) for i in range(start, stop)}))
    elif how == "run":

        def fill(txn: aiolmdb.DatabaseTxn[int, bytes]) -> None:
            for i in range(count):
                txn.put(i, value(i))

        await bounded(db.run(fill, write=True), timeout=60)
    else:
        for start in range(0, count, 50):
            await write_chunk_in_a_transaction(env, db, range(start, min(start + 50, count)))


async def write_chunk_in_a_transaction(
    env: aiolmdb.AsyncEnvironment, db: aiolmdb.AsyncDatabase[int, bytes], keys: range
) -> None:
    """A transaction cannot grow the map while open: one that fills it fails, and the
    map doubles behind it, so the documented answer is to retry it."""
    for _ in range(6):
        try:
            async with env.transaction():
                for i in keys:
                    await db.put(i, value(i))
            return
        except lmdb.MapFullError as exc:
            assert "retried" in str(exc)
    raise AssertionError("the map did not grow enough for the transaction")


@pytest.mark.needs("map_size")
@pytest.mark.parametrize(
    "how",
    [
        "put",
        "put_multi",
        "run",
        "transaction",
    ],
)
async def test_the_map_grows_when_full(open_env: EnvFactory, how: str) -> None:
    env = open_env(map_size=MiB)
    await write_20_mb(env, how)
    assert env.info()["map_size"] >= 16 * MiB
    db = env.open_db("bulk", key_coder=UInt32Coder())
    assert await db.count() == 20 * MiB // CHUNK
    assert await db.get(7) == value(7)
    assert await db.get(20 * MiB // CHUNK - 1) == value(20 * MiB // CHUNK - 1)


@pytest.mark.needs("map_size")
async def test_a_value_larger_than_the_map_is_fine(open_env: EnvFactory) -> None:
    env = open_env(map_size=MiB)
    db = env.open_db("big")
    big = os.urandom(5 * MiB)
    assert await bounded(db.put(b"big", big))
    assert await db.get(b"big") == big  # larger than inline_value_limit: read off the loop
    assert env.info()["map_size"] > 5 * MiB


@pytest.mark.needs("map_size")
async def test_growth_stops_at_max_map_size(open_env: EnvFactory) -> None:
    env = open_env(map_size=MiB, max_map_size=4 * MiB)
    db = env.open_db("bulk", key_coder=UInt32Coder())
    committed: list[int] = []
    with pytest.raises(lmdb.MapFullError) as info:
        for i in range(100):
            await bounded(db.put(i, value(i)))
            committed.append(i)
    assert "max_map_size" in str(info.value)
    assert env.info()["map_size"] == 4 * MiB
    assert 10 < len(committed) <= 4 * MiB // CHUNK
    for i in committed:
        assert await db.get(i) == value(i)
    assert await db.get(len(committed)) is None
    # Freeing room makes writes possible again (LMDB reuses freed pages a
    # commit or two later, so the first writes after the delete are small).
    await db.delete_multi(committed[:10])
    for i in range(3):
        assert await bounded(db.put(10_000 + i, b"small"))
    assert await bounded(db.put(len(committed), value(1)))


@pytest.mark.needs("map_size")
async def test_a_map_full_write_in_a_group_commit_fails_alone(open_env: EnvFactory) -> None:
    env = open_env(map_size=MiB, max_map_size=MiB)
    db = env.open_db("data", key_coder=UInt32Coder())
    gate = WriterGate(env.open_db("gate"))
    await db.put(0, b"seed")
    await gate.hold()
    small = [asyncio.create_task(db.put(i, b"small %d" % i)) for i in range(1, 50)]
    huge = asyncio.create_task(db.put(1000, b"x" * (2 * MiB)))
    more = [asyncio.create_task(db.put(i, b"small %d" % i)) for i in range(50, 100)]
    await asyncio.sleep(0.05)
    await gate.release()
    with pytest.raises(lmdb.MapFullError, match="max_map_size"):
        await bounded(huge)
    assert all(await bounded(asyncio.gather(*small, *more)))
    for i in range(1, 100):
        assert await db.get(i) == b"small %d" % i
    assert await db.get(1000) is None


@pytest.mark.needs("map_size")
async def test_growth_waits_for_a_read_snapshot_to_end(open_env: EnvFactory) -> None:
    env = open_env(map_size=MiB)
    db = env.open_db("data", key_coder=UInt32Coder())
    await db.put(0, b"before")
    opened = asyncio.Event()
    end = asyncio.Event()

    async def reader() -> bytes | None:
        async with env.transaction(write=False):
            opened.set()
            await end.wait()
            return await db.get(0)

    reading = asyncio.create_task(reader())
    await bounded(opened.wait())
    writing = asyncio.create_task(db.put_multi({i: value(i) for i in range(1, 40)}))
    await asyncio.sleep(0.3)  # the writer now waits for the snapshot
    end.set()
    assert await bounded(reading) == b"before"
    assert await bounded(writing, timeout=20) == 39
    assert env.info()["map_size"] > MiB


@pytest.mark.needs("map_size")
async def test_growth_blocked_by_a_snapshot_fails_clearly(
    open_env: EnvFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = open_env(map_size=MiB, map_resize_wait=0.5)
    db = env.open_db("data", key_coder=UInt32Coder())
    go = asyncio.Event()

    async def write_later() -> int:
        await go.wait()
        return await db.put_multi({i: value(i) for i in range(1, 40)})

    writing = asyncio.create_task(write_later())  # outside the snapshot's context
    async with env.transaction(write=False):
        await db.get(0)
        go.set()
        with pytest.raises(lmdb.MapFullError, match="read snapshot"):
            await bounded(writing, timeout=20)
        assert await db.get(1) is None
    # With the snapshot gone the same write succeeds.
    assert await bounded(db.put_multi({i: value(i) for i in range(1, 40)})) == 39


@pytest.mark.lmdb_only
async def test_a_snapshot_does_not_stall_transactions_when_the_map_is_crowded(
    open_env: EnvFactory,
) -> None:
    # Growing ahead of need is best effort: with a snapshot open it is skipped at once.
    env = open_env(map_size=MiB)
    db = env.open_db("data", key_coder=UInt32Coder())
    await db.put_multi({i: value(i) for i in range(1, 12)})
    info = env.info()
    assert (info["last_pgno"] + 1) * env.stat()["psize"] * 2 > info["map_size"]
    async with env.transaction(write=False):
        await db.get(1)
        for i in range(3):
            await bounded(detached(write_in_a_transaction(env, db, i)), timeout=2)
    assert await db.get(0) == b"2"


async def write_in_a_transaction(
    env: aiolmdb.AsyncEnvironment, db: aiolmdb.AsyncDatabase[int, bytes], i: int
) -> None:
    async with env.transaction():
        await db.put(0, b"%d" % i)


@pytest.mark.needs("map_size")
async def test_opening_a_database_while_the_writer_waits_to_grow_the_map(
    open_env: EnvFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The writer waits for this task's snapshot to end before it can grow the
    # map; opening a database meanwhile must not block the event loop for it.
    env = open_env(map_size=MiB, map_resize_wait=3.0)
    db = env.open_db("data", key_coder=UInt32Coder())
    async with env.transaction(write=False):
        await db.get(0)
        writing = detached(db.put_multi({i: value(i) for i in range(1, 40)}))
        await asyncio.sleep(0.2)  # the writer now waits for the snapshot
        started = time.monotonic()
        other = env.open_db("other")
        assert time.monotonic() - started < 1.0
    assert await bounded(writing, timeout=20) == 39  # grown once the snapshot ended
    assert await other.put(b"k", b"v")


# -- bad input ---------------------------------------------------------------------


async def test_bad_keys_raise_encode_error(open_env: EnvFactory) -> None:
    env = open_env()
    db = env.open_db("data")
    limit = env.max_key_size()
    with pytest.raises(aiolmdb.EncodeError, match="empty"):
        await db.put(b"", b"v")
    with pytest.raises(aiolmdb.EncodeError, match=str(limit)):
        await db.put(b"k" * (limit + 1), b"v")
    with pytest.raises(aiolmdb.EncodeError):
        await db.get(b"k" * (limit + 1))
    with pytest.raises(aiolmdb.EncodeError):
        await db.put_multi([(b"ok", b"v"), (b"", b"v")])
    assert await db.get(b"ok") is None  # nothing of the failed batch was written
    assert await db.put(b"k" * limit, b"v")
    assert await db.get(b"k" * limit) == b"v"


async def test_readonly_environment_refuses_writes(tmp_path: Path) -> None:
    path = tmp_path / "env"
    async with aiolmdb.open(path) as env:
        await env.open_db("data").put(b"k", b"v")
    async with aiolmdb.open(path, readonly=True) as env:
        db = env.open_db("data")
        assert await db.get(b"k") == b"v"
        with pytest.raises(lmdb.ReadonlyError):
            await bounded(db.put(b"k", b"w"))
        with pytest.raises(lmdb.ReadonlyError):
            await bounded(db.put_multi({b"a": b"1"}))
        with pytest.raises(lmdb.ReadonlyError):
            async with env.transaction():
                await db.put(b"k", b"w")
        with pytest.raises(aiolmdb.DatabaseNotFoundError):
            await env.open_db_async("missing", create=False)
        # A database that does not exist cannot be created: LMDB's error, naming it,
        # from the first call (the open returns at once; the writer's open fails).
        missing = env.open_db("missing")
        with pytest.raises(lmdb.ReadonlyError, match="'missing'"):
            await bounded(missing.get(b"k"))
        assert await db.get(b"k") == b"v"


def test_a_regular_file_as_environment_directory(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_bytes(b"not a directory")
    # LMDB reports ENOTDIR as the base lmdb.Error ("...: Not a directory").
    with pytest.raises(lmdb.Error, match="Not a directory"):
        aiolmdb.open(path)


async def test_garbage_data_file(tmp_path: Path) -> None:
    path = tmp_path / "env"
    path.mkdir()
    (path / "data.mdb").write_bytes(random.Random(5).randbytes(64 * 1024))
    with pytest.raises(lmdb.InvalidError):
        aiolmdb.open(path)
    # The failed open left nothing behind: once the file is fixed the path opens.
    (path / "data.mdb").unlink()
    async with aiolmdb.open(path) as env:
        assert await env.open_db("d").put(b"k", b"v")


async def test_missing_database_with_create_false(open_env: EnvFactory) -> None:
    env = open_env()
    with pytest.raises(aiolmdb.DatabaseNotFoundError, match="nope") as info:
        await env.open_db_async("nope", create=False)
    assert isinstance(info.value, KeyError)
    env.open_db("nope")
    assert env.open_db("nope", create=False) is not None


# -- decoders fed random bytes -----------------------------------------------------


class Point(BaseModel):
    x: int
    label: str


SAMPLES: dict[str, tuple[Callable[[], Coder[Any]], Any]] = {
    "identity": (IdentityCoder, b"abc"),
    "bytes": (BytesCoder, b"abc"),
    "string": (StringCoder, "héllo"),
    "uint16": (UInt16Coder, 7),
    "uint32": (UInt32Coder, 7),
    "uint64": (UInt64Coder, 7),
    "int64": (Int64Coder, -7),
    "uuid": (UUIDCoder, uuid.UUID(int=7)),
    "datetime": (DateTimeCoder, datetime(2024, 1, 2, tzinfo=timezone.utc)),
    "tuple": (lambda: TupleCoder(StringCoder(), UInt16Coder()), ("a", 7)),
    "json": (JSONCoder, {"a": [1, 2.5, "x"]}),
    "pickle": (PickleCoder, {"a": [1, 2.5, "x"]}),
    "msgpack": (MsgpackCoder, {"a": [1, 2.5, "x"]}),
    "pydantic-json": (lambda: PydanticCoder(Point), Point(x=1, label="p")),
    "pydantic-msgpack": (lambda: PydanticCoder(Point, format="msgpack"), Point(x=1, label="p")),
    "compressed-json": (lambda: JSONCoder().compressed(), {"a": [1, 2, 3]}),
}
NEVER_FAILS = {"identity", "bytes"}


def garbage(rng: random.Random, good: bytes) -> list[bytes]:
    """Random byte strings, and mutations of a valid encoding."""
    out = [b"\x00", b"\xff" * 9]
    for _ in range(60):
        out.append(rng.randbytes(rng.randrange(1, 40)))
    for _ in range(40):
        mutated = bytearray(good)
        for _ in range(rng.randrange(1, 3)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        out.append(bytes(mutated[: rng.randrange(1, len(mutated) + 1)]))
    return out


@pytest.mark.parametrize("name", sorted(SAMPLES))
async def test_value_decoders_fed_random_bytes_raise_decode_error(
    open_env: EnvFactory, name: str
) -> None:
    make, sample = SAMPLES[name]
    env = open_env()
    raw = env.open_db(f"values-{name}", key_coder=UInt32Coder())
    typed = env.open_db(f"values-{name}", key_coder=UInt32Coder(), value_coder=make())
    good = make().serialize(sample)
    blobs = garbage(random.Random(name), good)
    await raw.put_multi({i: blob for i, blob in enumerate(blobs, start=1)})
    await typed.put(0, sample)
    failures = 0
    for i in range(1, len(blobs) + 1):
        try:
            await typed.get(i)
        except aiolmdb.DecodeError as exc:
            failures += 1
            assert repr(f"values-{name}") in str(exc), str(exc)
            assert str(i) in str(exc), str(exc)
        assert await typed.get(0) == sample  # other keys stay readable
    if name not in NEVER_FAILS:
        assert failures > 0
    with pytest.raises(aiolmdb.DecodeError) if failures else _no_error():
        await typed.get_multi(range(len(blobs) + 1))
    # Bad values can still be deleted and replaced.
    assert await typed.delete(1)
    await typed.put(1, sample)
    assert await typed.get(1) == sample


class _no_error:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


ORDERED = [n for n in sorted(SAMPLES) if SAMPLES[n][0]().ordered]


@pytest.mark.parametrize("name", ORDERED)
async def test_key_decoders_fed_random_bytes_raise_decode_error(
    open_env: EnvFactory, name: str
) -> None:
    make, sample = SAMPLES[name]
    env = open_env()
    raw = env.open_db(f"keys-{name}")
    typed = env.open_db(f"keys-{name}", key_coder=make())
    good = make().serialize(sample)
    await typed.put(sample, b"good")
    rng = random.Random(name)
    failures = 0
    for blob in garbage(rng, good)[:40]:
        if blob == good:
            continue
        await raw.put(blob, b"bad")
        try:
            _ = [k async for k in typed.keys()]
        except aiolmdb.DecodeError as exc:
            failures += 1
            assert repr(f"keys-{name}") in str(exc), str(exc)
            assert repr(blob) in str(exc), str(exc)
        assert await typed.get(sample) == b"good"  # other keys stay readable
        await raw.delete(blob)
    if name not in NEVER_FAILS:
        assert failures > 0
