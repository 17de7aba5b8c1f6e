"""Keyset pagination: ``after=`` on databases, collections and indexes, index cursors
resuming inside one index key, and counts over ranges, on every engine and in
transactions."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, TypeVar

import pytest
from conftest import bounded, detached
from pydantic import BaseModel

import aiolmdb
from aiolmdb.coders import Int64Coder, JSONCoder, StringCoder, TupleCoder, UInt32Coder, UInt64Coder
from aiolmdb.models import Collection, Index, IndexCursor, IndexEntry

T = TypeVar("T")
Env = aiolmdb.AsyncEnvironment

#: Keys 0, 3, 6, ...: more than several scan batches hold (64, then 1024 each).
KEYS = [i * 3 for i in range(2500)]


async def collect(iterator: AsyncIterator[T]) -> list[T]:
    return [item async for item in iterator]


@pytest.fixture
async def uints(env: Env) -> aiolmdb.AsyncDatabase[int, str]:
    db = env.open_db("uints", key_coder=UInt32Coder(), value_coder=StringCoder())
    await db.put_multi((key, f"v{key}") for key in KEYS)
    return db


async def pages(db: aiolmdb.AsyncDatabase[int, str], size: int, **bounds: Any) -> list[list[int]]:
    """Every page of ``size`` keys, each asked for after the last key of the one before."""
    found: list[list[int]] = []
    after = None
    while True:
        page = await collect(db.keys(after=after, limit=size, **bounds))
        if not page:
            return found
        found.append(page)
        after = page[-1]


# -- databases ------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 64, 700, 1100, 5000])
async def test_pages_forward_give_every_key_once_in_order(
    uints: aiolmdb.AsyncDatabase[int, str], size: int
) -> None:
    found = await pages(uints, size)
    assert [key for page in found for key in page] == KEYS
    assert all(len(page) == size for page in found[:-1])


@pytest.mark.parametrize("size", [1, 700, 1100])
async def test_pages_in_reverse_give_every_key_once_in_reverse_order(
    uints: aiolmdb.AsyncDatabase[int, str], size: int
) -> None:
    found = await pages(uints, size, reverse=True)
    assert [key for page in found for key in page] == KEYS[::-1]


async def test_after_keeps_the_other_bound(uints: aiolmdb.AsyncDatabase[int, str]) -> None:
    found = await pages(uints, 400, stop=3001)
    assert [key for page in found for key in page] == [k for k in KEYS if k < 3001]
    found = await pages(uints, 400, start=3001, reverse=True)
    assert [key for page in found for key in page] == [k for k in KEYS if k >= 3001][::-1]


async def test_after_need_not_be_stored(uints: aiolmdb.AsyncDatabase[int, str]) -> None:
    assert await collect(uints.keys(after=4, limit=3)) == [6, 9, 12]
    assert await collect(uints.keys(after=4, reverse=True)) == [3, 0]
    assert await collect(uints.items(after=5, stop=12)) == [(6, "v6"), (9, "v9")]
    assert await collect(uints.values(after=9, start=3, reverse=True)) == ["v6", "v3"]
    assert await collect(uints.keys(after=KEYS[-1])) == []
    assert await collect(uints.keys(after=0, reverse=True)) == []
    assert await collect(uints.keys(after=2**32 - 1)) == []
    assert await collect(uints.keys(after=2**32 - 1, reverse=True, limit=2)) == KEYS[:-3:-1]
    # A stop below after, going forward, leaves nothing.
    assert await collect(uints.keys(after=30, stop=12)) == []


async def test_after_with_a_prefix(env: Env) -> None:
    words = env.open_db("words", key_coder=StringCoder(), value_coder=JSONCoder())
    await words.put_multi(
        {w: i for i, w in enumerate(["ap", "apple", "apricot", "apz", "b", "a", "aq"])}
    )
    assert await collect(words.keys(prefix="ap", after="apple")) == ["apricot", "apz"]
    assert await collect(words.keys(prefix="ap", after="apple", reverse=True)) == ["ap"]
    # After a key below the prefix: the prefix's first; above it: nothing.
    assert await collect(words.keys(prefix="ap", after="a", limit=2)) == ["ap", "apple"]
    assert await collect(words.keys(prefix="ap", after="b")) == []
    assert await collect(words.keys(prefix="ap", after="b", reverse=True)) == [
        "apz",
        "apricot",
        "apple",
        "ap",
    ]


async def test_after_with_tuple_keys_resumes_inside_a_leading_part(env: Env) -> None:
    db = env.open_db(
        "tuples", key_coder=TupleCoder(StringCoder(), Int64Coder()), value_coder=JSONCoder()
    )
    data = {(city, n): n for city in ["Bergen", "Oslo", "Oslo2"] for n in [-5, 0, 7, 2**40]}
    await db.put_multi(data)
    assert await collect(db.keys(prefix=("Oslo",), after=("Oslo", 0))) == [
        ("Oslo", 7),
        ("Oslo", 2**40),
    ]
    assert await collect(db.keys(prefix=("Oslo",), after=("Oslo", 0), reverse=True)) == [
        ("Oslo", -5)
    ]
    assert await db.count(prefix=("Oslo",), after=("Oslo", -5)) == 3


async def test_after_takes_the_place_of_the_bound_the_scan_begins_at(
    uints: aiolmdb.AsyncDatabase[int, str],
) -> None:
    with pytest.raises(TypeError) as excinfo:
        uints.items(start=3, after=6)
    assert str(excinfo.value).startswith("database 'uints': start= and after= were both given")
    with pytest.raises(TypeError, match="'uints': stop= and after= were both given"):
        uints.keys(stop=30, after=6, reverse=True)
    with pytest.raises(TypeError, match="start= and after="):
        await uints.count(3, after=6)
    # The bound at the other end is kept.
    assert await collect(uints.keys(stop=12, after=3)) == [6, 9]
    assert await collect(uints.keys(start=3, after=12, reverse=True)) == [9, 6, 3]


async def test_after_needs_an_ordered_coder_and_a_key_of_its_type(env: Env) -> None:
    db = env.open_db("json-keys", key_coder=JSONCoder(), value_coder=JSONCoder())
    await db.put("a", 1)
    with pytest.raises(aiolmdb.UnorderedKeyError, match=r"'json-keys'.*JSONCoder\(\)"):
        await collect(db.keys(after="a"))
    uints = env.open_db("n", key_coder=UInt32Coder())
    with pytest.raises(aiolmdb.EncodeError, match=r"database 'n': cannot encode key 'x' \(str\)"):
        await collect(uints.keys(after="x"))  # type: ignore[arg-type]


async def test_count_after(uints: aiolmdb.AsyncDatabase[int, str]) -> None:
    assert await uints.count(after=3) == len(KEYS) - 2
    assert await uints.count(after=4) == len(KEYS) - 2
    assert await uints.count(after=3, stop=30) == 8
    assert await uints.count(after=KEYS[-1]) == 0


# -- collections and indexes ----------------------------------------------------------


class Post(BaseModel):
    id: int
    author: str
    city: str
    age: int
    tags: list[str] = []
    slug: str


class Posts(Collection[int, Post]):
    key_coder = UInt64Coder()
    by_tag = Index(lambda p: p.tags, StringCoder(), multi=True)
    by_city_age = Index(lambda p: (p.city, p.age), TupleCoder(StringCoder(), Int64Coder()))
    by_slug = Index(lambda p: p.slug, StringCoder(), unique=True)


#: Records many of which share one tag: a page must resume inside it.
N_POSTS = 1500


def post(i: int) -> Post:
    tags = ["all"] + (["even"] if i % 2 == 0 else []) + (["seven"] if i % 7 == 0 else [])
    city = ["Bergen", "Oslo", "Tromsø"][i % 3]
    return Post(id=i, author=f"a{i % 5}", city=city, age=20 + i % 40, tags=tags, slug=f"s{i:05}")


@pytest.fixture
async def posts(env: Env) -> Posts:
    collection = await Posts.open(env)
    await collection.put_multi((i, post(i)) for i in range(N_POSTS))
    return collection


async def test_after_an_index_key_skips_every_entry_of_it(posts: Posts) -> None:
    index = posts.by_tag
    assert await collect(index.keys(after="all", limit=2)) == [0, 2]
    assert await collect(index.keys(after="even", reverse=True, limit=2)) == [1499, 1498]
    assert await collect(index.values(after="f", limit=1)) == [post(0)]
    assert await index.count(after="all") == N_POSTS // 2 + len(range(0, N_POSTS, 7))
    assert await index.count(after="even", prefix="e") == 0
    with pytest.raises(TypeError, match="a value, or bounds, not both"):
        await index.count("even", after="all")
    with pytest.raises(TypeError, match=r"index 'Posts'.by_tag: start= and after= were both"):
        index.items(start="a", after="all")


async def test_counts_of_a_tuple_index_over_prefixes_and_ranges(posts: Posts) -> None:
    oslo = [post(i) for i in range(N_POSTS) if post(i).city == "Oslo"]
    index = posts.by_city_age
    assert await index.count(prefix=("Oslo",)) == len(oslo)
    assert await index.count(start=("Oslo", 30), stop=("Oslo", 40)) == sum(
        30 <= p.age < 40 for p in oslo
    )
    assert await index.count(prefix=("Oslo",), after=("Oslo", 50)) == sum(p.age > 50 for p in oslo)
    assert await posts.count(after=N_POSTS - 3) == 2


def expected_entries(reverse: bool = False) -> list[tuple[str, int]]:
    """Every (tag, key) entry of by_tag, in the index's order."""
    entries = sorted(
        (tag, i)
        for i in range(N_POSTS)
        for tag in post(i).tags  # keys are UInt64: byte order is numeric order
    )
    return entries[::-1] if reverse else entries


async def entry_pages(
    posts: Posts, size: int, **bounds: Any
) -> list[list[IndexEntry[str, int, Post]]]:
    found: list[list[IndexEntry[str, int, Post]]] = []
    cursor: IndexCursor[str, int] | None = None
    while True:
        page = await collect(posts.by_tag.entries(after=cursor, limit=size, **bounds))
        if not page:
            return found
        found.append(page)
        cursor = page[-1].cursor


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("size", [1, 333, 1100])
async def test_index_cursors_resume_inside_one_index_key(
    posts: Posts, size: int, reverse: bool
) -> None:
    if size == 1 and reverse:
        pytest.skip("one-entry pages are covered going forward")
    found = await entry_pages(posts, size, reverse=reverse)
    got = [(entry.index_key, entry.key) for page in found for entry in page]
    assert got == expected_entries(reverse)
    assert all(len(page) == size for page in found[:-1])
    assert all(entry.value == post(entry.key) for page in found for entry in page)


async def test_index_cursors_within_bounds(posts: Posts) -> None:
    found = await entry_pages(posts, 100, prefix="e")
    assert [(e.index_key, e.key) for p in found for e in p] == [
        ("even", i) for i in range(0, N_POSTS, 2)
    ]
    found = await entry_pages(posts, 100, stop="seven")
    assert [(e.index_key, e.key) for p in found for e in p] == [
        entry for entry in expected_entries() if entry[0] < "seven"
    ]
    found = await entry_pages(posts, 100, start="even", reverse=True)
    assert [(e.index_key, e.key) for p in found for e in p] == [
        entry for entry in expected_entries(reverse=True) if entry[0] >= "even"
    ]


async def test_items_keys_values_and_count_take_cursors_and_index_keys(posts: Posts) -> None:
    index = posts.by_tag
    cursor = IndexCursor("even", 10)
    assert await collect(index.keys(after=cursor, limit=3)) == [12, 14, 16]
    assert await collect(index.keys(after=cursor, reverse=True, limit=3)) == [8, 6, 4]
    assert [k for k, _ in await collect(index.items(after=cursor, limit=2))] == [12, 14]
    assert await collect(index.values(after=cursor, limit=1)) == [post(12)]
    # A cursor naming no stored entry resumes where it would sort.
    assert await collect(index.keys(after=IndexCursor("even", 11), limit=2)) == [12, 14]
    assert await collect(index.keys(after=IndexCursor("f", 0), limit=2)) == [0, 7]
    assert await index.count(after=IndexCursor("seven", 1491)) == 1
    assert await index.count(after=cursor, prefix="e") == len(range(12, N_POSTS, 2))
    with pytest.raises(TypeError, match="a value, or bounds, not both"):
        await index.count("even", after=cursor)
    with pytest.raises(TypeError, match=r"index 'Posts'.by_tag: start= and after= were both"):
        index.entries(start="a", after=cursor)


async def test_cursor_of_a_unique_index_is_its_index_key(posts: Posts) -> None:
    index = posts.by_slug
    first = await collect(index.entries(limit=2))
    assert [(e.index_key, e.key) for e in first] == [("s00000", 0), ("s00001", 1)]
    assert await collect(index.keys(after=first[-1].cursor, limit=2)) == [2, 3]
    # The record key of a unique index's cursor is not looked at.
    assert await collect(index.keys(after=IndexCursor("s00001", 999), limit=1)) == [2]
    assert await collect(index.keys(after=IndexCursor("s00003", 0), reverse=True)) == [2, 1, 0]


async def test_a_cursor_of_a_tuple_index_resumes_inside_a_prefix(posts: Posts) -> None:
    index = posts.by_city_age
    oslo = await collect(index.entries(prefix=("Oslo",)))
    last = oslo[9]
    assert await index.count(prefix=("Oslo",), after=last.cursor) == len(oslo) - 10
    rest = await collect(index.entries(prefix=("Oslo",), after=last.cursor))
    assert rest == oslo[10:]
    back = await collect(index.entries(prefix=("Oslo",), after=last.cursor, reverse=True))
    assert back == oslo[:9][::-1]


async def test_a_cursor_needs_index_and_record_keys_of_their_types(posts: Posts) -> None:
    with pytest.raises(aiolmdb.EncodeError, match=r"index 'Posts'.by_tag: cannot encode 3"):
        await collect(posts.by_tag.keys(after=IndexCursor(3, 0)))  # type: ignore[arg-type]
    with pytest.raises(aiolmdb.EncodeError, match=r"database 'Posts': cannot encode key 'x'"):
        await collect(posts.by_tag.keys(after=IndexCursor("all", "x")))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"by_tag: IndexCursor\(index_key=None, key=1\) has no"):
        await collect(posts.by_tag.keys(after=IndexCursor(None, 1)))  # type: ignore[arg-type]


# -- in transactions ------------------------------------------------------------------


@pytest.mark.parametrize("optimistic", [False, True], ids=["plain", "optimistic"])
async def test_pages_in_a_write_transaction_see_its_writes(
    posts: Posts, env: Env, optimistic: bool
) -> None:
    async with env.transaction(optimistic=optimistic) as txn:
        await posts.put(N_POSTS, post(N_POSTS), txn=txn)
        await posts.delete(2, txn=txn)
        found = await entry_pages_in(posts, txn, prefix="all")
        assert found == [("all", i) for i in range(N_POSTS + 1) if i != 2]
        assert await posts.by_tag.count(after=IndexCursor("all", 1), prefix="all", txn=txn) == (
            N_POSTS - 2
        )
        assert await collect(posts.keys(after=N_POSTS - 2, txn=txn)) == [N_POSTS - 1, N_POSTS]
        assert await posts.count(after=0, stop=4, txn=txn) == 2
        # A stop below after, in the transaction's writes too: nothing.
        await posts.put(3, post(3), txn=txn)
        assert await collect(posts.keys(after=10, stop=4, txn=txn)) == []
        assert await posts.count(after=10, stop=4, txn=txn) == 0
        assert await posts.by_tag.count(after=IndexCursor("all", 10), stop="all", txn=txn) == 0


async def entry_pages_in(
    posts: Posts,
    txn: aiolmdb.Transaction,
    cursor: IndexCursor[str, int] | None = None,
    **bounds: Any,
) -> list[tuple[str, int]]:
    """The (tag, key) of every entry in ``txn``, in pages of 400 from ``cursor`` on."""
    got: list[tuple[str, int]] = []
    while True:
        page = await collect(posts.by_tag.entries(after=cursor, limit=400, txn=txn, **bounds))
        if not page:
            return got
        got.extend((entry.index_key, entry.key) for entry in page)
        cursor = page[-1].cursor


async def test_pages_in_a_read_snapshot_do_not_see_later_writes(posts: Posts, env: Env) -> None:
    async with env.transaction(write=False) as txn:
        first = await collect(posts.by_tag.entries(prefix="all", limit=700, txn=txn))
        # Committed outside the snapshot.
        await bounded(detached(posts.put(N_POSTS, post(N_POSTS))))
        await bounded(detached(posts.delete(1000)))
        rest = await entry_pages_in(posts, txn, first[-1].cursor, prefix="all")
        assert [(e.index_key, e.key) for e in first] + rest == [("all", i) for i in range(N_POSTS)]
        assert await posts.count(after=N_POSTS - 2, txn=txn) == 1
    assert await posts.by_tag.count(after=IndexCursor("all", N_POSTS - 1), prefix="all") == 1
