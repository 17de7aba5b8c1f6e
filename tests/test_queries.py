"""Range, prefix and ordered scans: items/keys/values, first/last, snapshots, batching."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, TypeVar

import pytest
from conftest import bounded, detached

import aiolmdb
from aiolmdb.coders import Int64Coder, JSONCoder, StringCoder, TupleCoder, UInt32Coder

T = TypeVar("T")
Env = aiolmdb.AsyncEnvironment

#: More records than several scan batches hold (the first holds 64, later ones 1024).
N = 2500
#: Keys 0, 3, 6, ...: bounds that fall between keys are exercised too.
UINT_DATA = {i * 3: f"v{i * 3}" for i in range(N)}

WORDS = [
    "apple",
    "applesauce",
    "app",
    "apricot",
    "banana",
    "band",
    "bandana",
    "b",
    "cherry",
    "zebra",
    "Zebra",
    "éclair",
    "école",
    "日本",
    "日本語",
    "ap\x00x",
    "ap\U0001f600",
    "apz",
]

TUPLE_DATA: dict[tuple[str, int], int] = {
    (city, n): i
    for i, (city, n) in enumerate(
        (city, n)
        for city in ["a", "b", "ba", "b\x00", "c", ""]
        for n in [-(2**63), -5, -1, 0, 1, 7, 2**40, 2**63 - 1]
    )
}


async def collect(iterator: AsyncIterator[T]) -> list[T]:
    return [item async for item in iterator]


def reference(
    data: dict[Any, Any],
    start: Any = None,
    stop: Any = None,
    reverse: bool = False,
    limit: int | None = None,
    keep: Any = None,
) -> list[tuple[Any, Any]]:
    keys = sorted(
        k
        for k in data
        if (start is None or k >= start)
        and (stop is None or k < stop)
        and (keep is None or keep(k))
    )
    if reverse:
        keys.reverse()
    if limit is not None:
        keys = keys[:limit]
    return [(k, data[k]) for k in keys]


@pytest.fixture
async def uints(env: Env) -> aiolmdb.AsyncDatabase[int, str]:
    db = env.open_db("uints", key_coder=UInt32Coder(), value_coder=StringCoder())
    # Written in a shuffled order: LMDB sorts.
    items = sorted(UINT_DATA.items(), key=lambda kv: (kv[0] * 7919) % 10007)
    assert await db.put_multi(items) == N
    return db


@pytest.fixture
async def words(env: Env) -> aiolmdb.AsyncDatabase[str, int]:
    db = env.open_db("words", key_coder=StringCoder(), value_coder=JSONCoder())
    await db.put_multi({w: len(w) for w in WORDS})
    return db


@pytest.fixture
async def tuples(env: Env) -> aiolmdb.AsyncDatabase[tuple[str, int], int]:
    db = env.open_db(
        "tuples", key_coder=TupleCoder(StringCoder(), Int64Coder()), value_coder=JSONCoder()
    )
    await db.put_multi(TUPLE_DATA)
    return db


# -- ranges on integer keys ---------------------------------------------------


RANGES = [
    {},
    {"start": 300},
    {"start": 301},
    {"stop": 300},
    {"stop": 301},
    {"start": 300, "stop": 4500},
    {"start": 299, "stop": 4501},
    {"start": 4500, "stop": 300},
    {"start": 0, "stop": 1},
    {"start": 7497},
    {"start": 7498},
    {"stop": 0},
    {"start": 2**32 - 1},
]
LIMITS = [None, 0, 1, 63, 64, 65, 1024, 1088, 1089, 5000]


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("bounds", RANGES, ids=[str(r) for r in RANGES])
async def test_uint_ranges_match_sorted_python_data(
    uints: aiolmdb.AsyncDatabase[int, str], bounds: dict[str, int], reverse: bool
) -> None:
    start, stop = bounds.get("start"), bounds.get("stop")
    for limit in LIMITS:
        expected = reference(UINT_DATA, start, stop, reverse, limit)
        items = await collect(uints.items(start, stop, reverse=reverse, limit=limit))
        assert items == expected, (bounds, reverse, limit)
    expected = reference(UINT_DATA, start, stop, reverse)
    assert await collect(uints.keys(start, stop, reverse=reverse)) == [k for k, _ in expected]
    assert await collect(uints.values(start, stop, reverse=reverse)) == [v for _, v in expected]


async def test_full_scan_crosses_several_batches(uints: aiolmdb.AsyncDatabase[int, str]) -> None:
    keys = await collect(uints.keys())
    assert len(keys) == N
    assert keys == sorted(UINT_DATA)
    assert len(set(keys)) == N
    assert await collect(uints.keys(reverse=True)) == sorted(UINT_DATA, reverse=True)


async def test_first_and_last(env: Env, uints: aiolmdb.AsyncDatabase[int, str]) -> None:
    assert await uints.first() == (0, "v0")
    assert await uints.last() == (7497, "v7497")
    empty = env.open_db("empty", key_coder=UInt32Coder())
    assert await empty.first() is None
    assert await empty.last() is None
    await empty.put(5, b"x")
    assert await empty.first() == (5, b"x")
    assert await empty.last() == (5, b"x")


async def test_negative_limit_raises(uints: aiolmdb.AsyncDatabase[int, str]) -> None:
    with pytest.raises(ValueError, match="limit"):
        await collect(uints.items(limit=-1))


# -- string keys --------------------------------------------------------------


WORD_DATA = {w: len(w) for w in WORDS}


@pytest.mark.parametrize(
    "prefix", ["ap", "app", "apple", "b", "band", "é", "日本", "z", "q", "", "ap\x00"]
)
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
async def test_string_prefix(
    words: aiolmdb.AsyncDatabase[str, int], prefix: str, reverse: bool
) -> None:
    expected = reference(WORD_DATA, reverse=reverse, keep=lambda k: k.startswith(prefix))
    assert await collect(words.items(prefix=prefix, reverse=reverse)) == expected
    assert await collect(words.keys(prefix=prefix, reverse=reverse, limit=2)) == [
        k for k, _ in expected[:2]
    ]


async def test_string_order_is_code_point_order(words: aiolmdb.AsyncDatabase[str, int]) -> None:
    assert await collect(words.keys()) == sorted(WORDS)


@pytest.mark.parametrize(
    ("start", "stop", "prefix"),
    [
        ("apple", "b", None),
        ("apple", None, "ap"),
        (None, "apr", "ap"),
        ("apq", "bz", "ap"),
        ("a", "c", "b"),
        ("c", "d", "b"),
        ("band", "band", None),
    ],
)
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
async def test_string_range_and_prefix_combined(
    words: aiolmdb.AsyncDatabase[str, int],
    start: str | None,
    stop: str | None,
    prefix: str | None,
    reverse: bool,
) -> None:
    def keep(k: str) -> bool:
        return prefix is None or k.startswith(prefix)

    for limit in (None, 0, 1, 3):
        expected = reference(WORD_DATA, start, stop, reverse, limit, keep)
        got = await collect(words.items(start, stop, prefix=prefix, reverse=reverse, limit=limit))
        assert got == expected, (start, stop, prefix, reverse, limit)


async def test_prefix_of_the_wrong_type(words: aiolmdb.AsyncDatabase[str, int]) -> None:
    with pytest.raises(aiolmdb.EncodeError, match="StringCoder"):
        await collect(words.keys(prefix=1))
    with pytest.raises(aiolmdb.EncodeError):
        await collect(words.keys(start=1))  # type: ignore[arg-type]


# -- bytes keys ---------------------------------------------------------------


BYTES_DATA = {
    k: k.hex().encode()
    for k in [
        b"\x00",
        b"\x00\x00",
        b"a",
        b"a\xff",
        b"a\xff\x00",
        b"a\xff\xff",
        b"b",
        b"\xff",
        b"\xff\xff",
    ]
}


@pytest.mark.parametrize(
    "prefix", [b"\x00", b"a", b"a\xff", b"a\xff\xff", b"\xff", b"\xff\xff", b""]
)
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
async def test_bytes_prefix_edges(env: Env, prefix: bytes, reverse: bool) -> None:
    db = env.open_db("bytes")
    await db.put_multi(BYTES_DATA)
    expected = reference(BYTES_DATA, reverse=reverse, keep=lambda k: k.startswith(prefix))
    assert await collect(db.items(prefix=prefix, reverse=reverse)) == expected


# -- tuple keys ---------------------------------------------------------------


@pytest.mark.parametrize(
    "prefix", [(), ("b",), ("ba",), ("b\x00",), ("",), ("zz",), ("b", 0), ("b", 3), ("c", -5)]
)
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
async def test_tuple_prefix(
    tuples: aiolmdb.AsyncDatabase[tuple[str, int], int],
    prefix: tuple[Any, ...],
    reverse: bool,
) -> None:
    def keep(k: tuple[str, int]) -> bool:
        return k[: len(prefix)] == prefix

    expected = reference(TUPLE_DATA, reverse=reverse, keep=keep)
    assert await collect(tuples.items(prefix=prefix, reverse=reverse)) == expected
    limited = await collect(tuples.keys(prefix=prefix, reverse=reverse, limit=3))
    assert limited == [k for k, _ in expected[:3]]


async def test_tuple_order_and_ranges(tuples: aiolmdb.AsyncDatabase[tuple[str, int], int]) -> None:
    assert await collect(tuples.keys()) == sorted(TUPLE_DATA)
    start, stop = ("b", -1), ("ba", 7)
    for reverse in (False, True):
        expected = reference(TUPLE_DATA, start, stop, reverse)
        assert await collect(tuples.items(start, stop, reverse=reverse)) == expected
        expected_b = reference(TUPLE_DATA, start, None, reverse, keep=lambda k: k[0] == "b")
        got = await collect(tuples.items(start, prefix=("b",), reverse=reverse))
        assert got == expected_b
    assert await tuples.first() == (("", -(2**63)), TUPLE_DATA[("", -(2**63))])
    assert await tuples.last() == (("c", 2**63 - 1), TUPLE_DATA[("c", 2**63 - 1)])


async def test_tuple_prefix_too_long(tuples: aiolmdb.AsyncDatabase[tuple[str, int], int]) -> None:
    with pytest.raises(aiolmdb.EncodeError):
        await collect(tuples.keys(prefix=("b", 1, 2)))
    with pytest.raises(aiolmdb.EncodeError):
        await collect(tuples.keys(prefix="b"))


# -- unordered keys -----------------------------------------------------------


async def test_unordered_key_coder_refuses_ranges_but_scans(env: Env) -> None:
    db = env.open_db("json-keys", key_coder=JSONCoder(), value_coder=JSONCoder())
    data = {"b": 1, "a": 2, "10": 3}
    await db.put_multi(data)
    bounds = [("a", None, None), (None, "b", None), (None, None, "a"), ("a", "c", None)]
    for start, stop, prefix in bounds:
        with pytest.raises(aiolmdb.UnorderedKeyError) as excinfo:
            await collect(db.items(start, stop, prefix=prefix))
        assert isinstance(excinfo.value, TypeError)
        assert "'json-keys'" in str(excinfo.value)
        assert "JSONCoder()" in str(excinfo.value)
    # A full scan works, in byte order of the JSON encodings.
    assert sorted(await collect(db.keys())) == sorted(data)
    assert dict(await collect(db.items())) == data
    assert len(await collect(db.values(reverse=True, limit=2))) == 2
    assert await db.first() is not None


async def test_compressed_key_coder_is_unordered(env: Env) -> None:
    db = env.open_db("zkeys", key_coder=StringCoder().compressed())
    await db.put("a", b"1")
    with pytest.raises(aiolmdb.UnorderedKeyError):
        await collect(db.keys(prefix="a"))
    assert await collect(db.keys()) == ["a"]


# -- snapshots and concurrency ------------------------------------------------


async def test_scan_outside_a_snapshot_reads_each_batch_afresh(
    uints: aiolmdb.AsyncDatabase[int, str],
) -> None:
    # Documented: no read transaction is held while the loop body runs, so
    # writes committed meanwhile show in later batches, in key order.
    seen: list[tuple[int, str]] = []
    async for key, value in uints.items():
        seen.append((key, value))
        if len(seen) == 10:

            async def churn() -> None:
                await uints.delete_multi(list(UINT_DATA)[1000:2000])
                await uints.put_multi({k + 1: "new" for k in list(UINT_DATA)[:2400]})

            await bounded(detached(churn()))
    keys = [k for k, _ in seen]
    assert keys == sorted(set(keys))
    assert seen[:10] == sorted(UINT_DATA.items())[:10]
    assert seen[-1] == (await uints.last())
    assert any(value == "new" for _, value in seen)


async def test_scan_in_a_read_snapshot_keeps_it(
    env: Env, uints: aiolmdb.AsyncDatabase[int, str]
) -> None:
    seen: list[tuple[int, str]] = []
    async with env.transaction(write=False):
        async for key, value in uints.items():
            seen.append((key, value))
            if len(seen) == 10:

                async def churn() -> None:
                    await uints.delete_multi(list(UINT_DATA)[1000:2000])
                    await uints.put_multi({k + 1: "new" for k in list(UINT_DATA)[:2400]})

                await bounded(detached(churn()))
    assert seen == sorted(UINT_DATA.items())
    assert await uints.count() == N - 1000 + 2400


async def test_scans_inside_a_transaction_see_its_writes(
    env: Env, uints: aiolmdb.AsyncDatabase[int, str]
) -> None:
    async with env.transaction():
        await uints.delete_multi([0, 3, 6])
        await uints.put_multi({1: "one", 10**6: "million"})
        expected = dict(UINT_DATA)
        for k in (0, 3, 6):
            del expected[k]
        expected.update({1: "one", 10**6: "million"})
        assert await collect(uints.items()) == sorted(expected.items())
        assert await collect(uints.keys(stop=10)) == [1, 9]
        assert await collect(uints.keys(reverse=True, limit=2)) == [10**6, 7497]
        assert await uints.first() == (1, "one")
        assert await uints.last() == (10**6, "million")
        # Not visible outside yet.
        outside = detached(uints.first())
        assert await bounded(outside) == (0, "v0")
    assert await uints.first() == (1, "one")


@pytest.mark.needs("reader_table")
async def test_breaking_out_early_does_not_leak(env: Env, env_path: Any) -> None:
    db = env.open_db("many", key_coder=UInt32Coder())
    await db.put_multi([(i, b"v") for i in range(N)])
    # More early exits than LMDB has reader slots (126): leaked readers would run out.
    for _ in range(300):
        async for key in db.keys():
            if key == 100:  # past the first batch
                break
        assert await db.first() == (0, b"v")
    iterator = db.items(start=5).__aiter__()
    assert await iterator.__anext__() == (5, b"v")
    await iterator.aclose()  # type: ignore[attr-defined]
    for _ in range(200):  # a batch read ahead finishes on its reader thread
        if "no active readers" in env.readers():
            break
        await asyncio.sleep(0.01)
    assert "no active readers" in env.readers()
    assert await db.count() == N
    await bounded(env.close())
    assert env.closed


async def test_event_loop_runs_during_a_big_scan(uints: aiolmdb.AsyncDatabase[int, str]) -> None:
    ticks = 0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    seen_ticks: set[int] = set()
    count = 0
    async for _ in uints.items():
        seen_ticks.add(ticks)
        count += 1
    stop.set()
    await bounded(task)
    assert count == N
    # The ticker advanced between batches: the scan did not hold the loop throughout.
    assert len(seen_ticks) >= 3


async def test_concurrent_scans(uints: aiolmdb.AsyncDatabase[int, str]) -> None:
    results = await bounded(
        asyncio.gather(*(collect(uints.keys(reverse=bool(i % 2), limit=2000)) for i in range(8)))
    )
    forward = sorted(UINT_DATA)[:2000]
    backward = sorted(UINT_DATA, reverse=True)[:2000]
    for i, keys in enumerate(results):
        assert keys == (backward if i % 2 else forward)
