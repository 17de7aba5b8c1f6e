"""Secondary indexes, unique constraints and atomic updates of collections."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from conftest import bounded
from pydantic import BaseModel

import aiolmdb
from aiolmdb.coders import Int64Coder, JSONCoder, StringCoder, TupleCoder, UInt64Coder
from aiolmdb.models import Collection, Index


class User(BaseModel):
    id: int
    email: str
    city: str
    age: int
    tags: list[str] = []
    nickname: str | None = None


class Users(Collection[int, User]):
    key_coder = UInt64Coder()
    by_email = Index(lambda u: u.email, StringCoder(), unique=True)
    by_city_age = Index(lambda u: (u.city, u.age), TupleCoder(StringCoder(), Int64Coder()))
    by_tag = Index(lambda u: u.tags, StringCoder(), multi=True)
    by_nickname = Index(lambda u: u.nickname, StringCoder(), unique=True)


def user(uid: int, email: str, city: str = "Paris", age: int = 30, **extra: object) -> User:
    return User(id=uid, email=email, city=city, age=age, **extra)


PEOPLE = [
    user(1, "ada@x", "Paris", 36, tags=["admin", "math"], nickname="countess"),
    user(2, "alan@x", "London", 41, tags=["math"]),
    user(3, "grace@x", "Paris", 45, tags=["navy", "admin"]),
    user(4, "edsger@x", "Austin", 72),
    user(5, "barbara@x", "Paris", 36, tags=["math"], nickname="lisk"),
]


@pytest.fixture
async def users(env: aiolmdb.AsyncEnvironment) -> Users:
    collection = Users(env)
    await collection.put_multi([(u.id, u) for u in PEOPLE])
    return collection


async def entries(users: Users) -> dict[str, int]:
    """Entry counts of every index: what must stay in step with the records."""
    return {
        "email": await users.by_email.count(),
        "city_age": await users.by_city_age.count(),
        "tag": await users.by_tag.count(),
        "nickname": await users.by_nickname.count(),
    }


async def expected_entries(users: Users) -> dict[str, int]:
    records = [u async for u in users.values()]
    return {
        "email": len(records),
        "city_age": len(records),
        "tag": sum(len(set(u.tags)) for u in records),
        "nickname": sum(u.nickname is not None for u in records),
    }


async def assert_in_step(users: Users) -> None:
    assert await entries(users) == await expected_entries(users)


# -- queries ----------------------------------------------------------------


class StaffUsers(Users):
    name = "staff"
    by_age = Index(lambda u: u.age, Int64Coder())


async def test_bound_indexes_are_every_declared_index_in_declaration_order(
    env: aiolmdb.AsyncEnvironment,
) -> None:
    staff = StaffUsers(env)
    bound = staff.bound_indexes()
    assert [index.index.name for index in bound] == [
        "by_email",
        "by_city_age",
        "by_tag",
        "by_nickname",
        "by_age",
    ]
    assert bound[0] is staff.by_email and bound[-1] is staff.by_age
    assert all(index.collection is staff for index in bound)


async def test_unique_get(users: Users) -> None:
    found = await users.by_email.get("grace@x")
    assert found is not None and found.id == 3
    assert await users.by_email.get("nobody@x") is None


async def test_get_on_a_non_unique_index_is_refused(users: Users) -> None:
    with pytest.raises(TypeError, match=r"by_tag.*not unique.*get_all"):
        await users.by_tag.get("math")


async def test_get_all_and_count(users: Users) -> None:
    assert [u.id for u in await users.by_tag.get_all("math")] == [1, 2, 5]
    assert [u.id for u in await users.by_tag.get_all("math", limit=2)] == [1, 2]
    assert await users.by_tag.count("math") == 3
    assert await users.by_tag.count("admin") == 2
    assert await users.by_tag.count("none") == 0
    assert await users.by_tag.get_all("none") == []


async def test_tuple_prefix_and_ranges(users: Users) -> None:
    paris = [(k, u.age) async for k, u in users.by_city_age.items(prefix=("Paris",))]
    assert paris == [(1, 36), (5, 36), (3, 45)]  # by age, then by key
    keys = [k async for k in users.by_city_age.keys(start=("London", 0), stop=("Paris", 40))]
    assert keys == [2, 1, 5]
    reverse = [k async for k in users.by_city_age.keys(reverse=True, limit=2)]
    assert reverse == [3, 5]
    values = [u.city async for u in users.by_city_age.values(prefix=("Austin",))]
    assert values == ["Austin"]


async def test_first_last(users: Users) -> None:
    first = await users.by_email.first()
    last = await users.by_email.last()
    assert first is not None and first[1].email == "ada@x"
    assert last is not None and last[1].email == "grace@x"


async def test_empty_index_queries(env: aiolmdb.AsyncEnvironment) -> None:
    empty = Users(env)
    assert await empty.by_email.first() is None
    assert await empty.by_email.count() == 0
    assert [k async for k in empty.by_tag.keys()] == []


async def test_none_leaves_the_record_out(users: Users) -> None:
    assert await users.by_nickname.count() == 2
    assert [k async for k in users.by_nickname.keys()] == [1, 5]


async def test_range_on_unordered_index_coder_is_refused(env: aiolmdb.AsyncEnvironment) -> None:
    class Docs(Collection[int, User]):
        key_coder = UInt64Coder()
        by_tags = Index(lambda u: u.tags, JSONCoder())

    docs = Docs(env)
    await docs.put(1, user(1, "a@x", tags=["t"]))
    with pytest.raises(aiolmdb.UnorderedKeyError, match="by_tags"):
        docs.by_tags.keys(start=["a"])
    assert [k async for k in docs.by_tags.keys()] == [1]


async def test_large_index_scan_crosses_batches(env: aiolmdb.AsyncEnvironment) -> None:
    users = Users(env)
    await users.put_multi((i, user(i, f"u{i:05}@x", age=i % 50)) for i in range(3000))
    ages = [u.age async for u in users.by_city_age.values()]
    assert ages == sorted(ages) and len(ages) == 3000
    assert await users.by_city_age.count() == 3000


# -- maintenance ------------------------------------------------------------


async def test_update_moves_entries(users: Users) -> None:
    await users.put(1, user(1, "ada@new", "Rome", 37, tags=["math"]))
    assert await users.by_email.get("ada@x") is None
    moved = await users.by_email.get("ada@new")
    assert moved is not None and moved.city == "Rome"
    assert await users.by_tag.count("admin") == 1
    assert [k async for k in users.by_city_age.keys(prefix=("Rome",))] == [1]
    await assert_in_step(users)


@pytest.mark.parametrize(
    "write",
    ["delete", "delete_multi", "pop", "replace", "put_multi", "update", "insert", "run"],
)
async def test_every_write_path_keeps_indexes_in_step(users: Users, write: str) -> None:
    if write == "delete":
        assert await users.delete(3)
    elif write == "delete_multi":
        await users.delete_multi([1, 3])
    elif write == "pop":
        popped = await users.pop(3)
        assert popped is not None and popped.email == "grace@x"
    elif write == "replace":
        await users.replace(3, user(3, "hopper@x", tags=["navy"]))
        assert await users.by_email.get("hopper@x") is not None
    elif write == "put_multi":
        await users.put_multi([(3, user(3, "g2@x")), (6, user(6, "new@x", tags=["admin"]))])
        assert await users.by_tag.count("admin") == 2
    elif write == "update":
        await users.update(3, lambda u: u.model_copy(update={"tags": [], "email": "g@x"}))
        assert await users.by_tag.count("navy") == 0
    elif write == "insert":
        await users.insert(6, user(6, "new@x", tags=["admin"]))
        assert await users.by_tag.count("admin") == 3
        await users.delete(3)
    else:
        await users.run(lambda txn: txn.delete(3), write=True)
    assert await users.by_email.get("grace@x") is None
    await assert_in_step(users)


async def test_drop_empties_indexes(users: Users, env: aiolmdb.AsyncEnvironment) -> None:
    await users.drop(delete=False)
    assert await entries(users) == {"email": 0, "city_age": 0, "tag": 0, "nickname": 0}
    await users.put(1, PEOPLE[0])
    await assert_in_step(users)
    await users.drop(delete=True)
    fresh = Users(env)
    assert await fresh.count() == 0
    assert await entries(fresh) == {"email": 0, "city_age": 0, "tag": 0, "nickname": 0}


async def test_aborted_transaction_leaves_indexes(
    users: Users, env: aiolmdb.AsyncEnvironment
) -> None:
    with pytest.raises(RuntimeError):
        async with env.transaction():
            await users.put(9, user(9, "t@x", tags=["admin"]))
            await users.delete(1)
            assert await users.by_email.get("t@x") is not None  # own writes visible
            raise RuntimeError("abort")
    assert await users.by_email.get("t@x") is None
    assert await users.by_email.get("ada@x") is not None
    assert await users.by_tag.count("admin") == 2
    await assert_in_step(users)


async def test_savepoint_rollback_restores_entries(
    users: Users, env: aiolmdb.AsyncEnvironment
) -> None:
    async with env.transaction():
        await users.put(9, user(9, "kept@x"))
        with pytest.raises(ValueError):
            async with env.transaction():
                await users.put(10, user(10, "gone@x"))
                raise ValueError
    assert await users.by_email.get("kept@x") is not None
    assert await users.by_email.get("gone@x") is None
    await assert_in_step(users)


# -- uniqueness -------------------------------------------------------------


async def test_unique_violation_writes_nothing(users: Users) -> None:
    with pytest.raises(aiolmdb.UniqueViolationError, match=r"by_email.*'ada@x'.*key 1"):
        await users.put(9, user(9, "ada@x", tags=["new"]))
    assert await users.get(9) is None
    assert await users.by_tag.count("new") == 0
    await assert_in_step(users)


async def test_reputting_own_value_is_not_a_violation(users: Users) -> None:
    await users.put(1, user(1, "ada@x", "Paris", 37, nickname="countess"))
    again = await users.by_email.get("ada@x")
    assert again is not None and again.age == 37


async def test_violation_in_put_multi_writes_none_of_it(users: Users) -> None:
    batch = [(7, user(7, "seven@x")), (8, user(8, "seven@x"))]
    with pytest.raises(aiolmdb.UniqueViolationError):
        await users.put_multi(batch)
    assert await users.get_multi([7, 8]) == {7: None, 8: None}
    with pytest.raises(aiolmdb.UniqueViolationError):
        await users.put_multi([(7, user(7, "fine@x")), (8, user(8, "alan@x"))])
    assert await users.get(7) is None
    await assert_in_step(users)


async def test_violation_in_a_transaction_keeps_earlier_writes(
    users: Users, env: aiolmdb.AsyncEnvironment
) -> None:
    async with env.transaction():
        await users.put(7, user(7, "seven@x"))
        with pytest.raises(aiolmdb.UniqueViolationError):
            await users.put(8, user(8, "seven@x", tags=["t"]))
    assert await users.get(7) is not None and await users.get(8) is None
    await assert_in_step(users)


async def test_concurrent_writers_cannot_share_a_unique_value(
    env: aiolmdb.AsyncEnvironment,
) -> None:
    users = Users(env)

    async def claim(uid: int) -> bool:
        try:
            await users.put(uid, user(uid, "contested@x"))
        except aiolmdb.UniqueViolationError:
            return False
        return True

    results = await bounded(asyncio.gather(*(claim(i) for i in range(50))))
    assert sum(results) == 1
    assert await users.count() == 1
    await assert_in_step(users)


async def test_a_violation_does_not_fail_its_batch_neighbours(
    env: aiolmdb.AsyncEnvironment,
) -> None:
    users = Users(env)
    await users.put(0, user(0, "taken@x"))
    writes = [users.put(i, user(i, f"u{i}@x")) for i in range(1, 40)]
    writes.append(users.put(99, user(99, "taken@x")))
    results = await bounded(asyncio.gather(*writes, return_exceptions=True))
    assert isinstance(results[-1], aiolmdb.UniqueViolationError)
    assert all(r is True for r in results[:-1])
    assert await users.count() == 40


# -- atomic updates ---------------------------------------------------------


async def test_update_returns_the_new_value(users: Users) -> None:
    new = await users.update(2, lambda u: u.model_copy(update={"age": u.age + 1}))
    assert new.age == 42
    stored = await users.get(2)
    assert stored is not None and stored.age == 42


async def test_update_of_a_missing_key(users: Users) -> None:
    with pytest.raises(aiolmdb.KeyNotFoundError, match="key 42"):
        await users.update(42, lambda u: u)


async def test_concurrent_updates_do_not_lose_increments(
    env: aiolmdb.AsyncEnvironment,
) -> None:
    counters = env.open_db("counters", key_coder=StringCoder(), value_coder=JSONCoder())
    await counters.put("hits", 0)

    async def bump() -> None:
        for _ in range(20):
            await counters.update("hits", lambda n: n + 1)

    await bounded(asyncio.gather(*(bump() for _ in range(25))))
    assert await counters.get("hits") == 500


async def test_insert_refuses_an_existing_key(users: Users) -> None:
    with pytest.raises(aiolmdb.KeyExistsError, match="key 1 already exists"):
        await users.insert(1, user(1, "other@x"))
    stored = await users.get(1)
    assert stored is not None and stored.email == "ada@x"
    await users.insert(6, user(6, "six@x"))
    assert await users.by_email.get("six@x") is not None


async def test_an_index_coder_failing_on_an_extracted_key_is_an_encode_error(
    env: aiolmdb.AsyncEnvironment,
) -> None:
    class Broken(Collection[int, User]):
        key_coder = UInt64Coder()
        by_age = Index(lambda u: u.age, StringCoder())  # an int given to a str coder

    broken = Broken(env)
    with pytest.raises(aiolmdb.EncodeError, match=r"by_age.*StringCoder.*int"):
        await broken.put(1, user(1, "a@x"))
    assert await broken.count() == 0


# -- building indexes over existing data ------------------------------------


class PlainUsers(Collection[int, User]):
    key_coder = UInt64Coder()
    name = "Users"


async def fill_without_indexes(where: Path | aiolmdb.AsyncEnvironment, count: int) -> None:
    """Records written by a declaration without indexes: in ``where``, or in the LMDB
    environment at that path (opened and closed)."""
    if isinstance(where, aiolmdb.AsyncEnvironment):
        plain = PlainUsers(where)
        await plain.put_multi((i, user(i, f"u{i}@x", tags=["t"])) for i in range(count))
        return
    async with aiolmdb.open(where) as env:
        await fill_without_indexes(env, count)


async def test_new_index_on_existing_data_is_built_on_open(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    await fill_without_indexes(tmp_path / "e", 25_000)
    seen: list[tuple[list[str], int, int]] = []
    async with aiolmdb.open(tmp_path / "e") as env:
        with caplog.at_level(logging.INFO, logger="aiolmdb.models"):
            users = await Users.open(env, progress=lambda n, d, t: seen.append((n, d, t)))
        assert await users.by_email.count() == 25_000
        found = await users.by_email.get("u123@x")
        assert found is not None and found.id == 123
        assert await users.by_tag.count("t") == 25_000
    await asyncio.sleep(0)
    assert seen[-1] == (["by_email", "by_city_age", "by_tag", "by_nickname"], 25_000, 25_000)
    assert [d for _, d, _ in seen] == [10_000, 20_000, 25_000]
    assert "indexing" in caplog.text
    async with aiolmdb.open(tmp_path / "e") as env:
        reopened = Users(env)  # already built: usable at once
        assert await reopened.by_email.count() == 25_000


async def test_unbuilt_index_refuses_writes_and_queries(env: aiolmdb.AsyncEnvironment) -> None:
    await fill_without_indexes(env, 10)
    users = Users(env)
    with pytest.raises(aiolmdb.AiolmdbError, match=r"not built.*build_indexes"):
        await users.put(99, user(99, "x@x"))
    with pytest.raises(aiolmdb.AiolmdbError, match="not built"):
        [key async for key in users.by_email.keys()]
    assert (await users.get(3)) is not None  # reading records still works
    await users.build_indexes()
    await users.put(99, user(99, "x@x"))
    assert await users.by_email.count() == 11


async def test_build_fails_cleanly_on_duplicates(tmp_path: Path) -> None:
    async with aiolmdb.open(tmp_path / "e") as env:
        plain = PlainUsers(env)
        await plain.put_multi([(1, user(1, "same@x")), (2, user(2, "same@x"))])
    async with aiolmdb.open(tmp_path / "e") as env:
        with pytest.raises(aiolmdb.UniqueViolationError, match="same@x"):
            await Users.open(env)
        users = Users(env)
        with pytest.raises(aiolmdb.AiolmdbError, match="not built"):
            await users.by_email.count()


async def test_changed_index_is_rebuilt_and_removed_one_dropped(tmp_path: Path) -> None:
    async with aiolmdb.open(tmp_path / "e") as env:
        users = Users(env)
        await users.put_multi([(u.id, u) for u in PEOPLE])

    class UsersV2(Collection[int, User]):
        key_coder = UInt64Coder()
        name = "Users"
        by_email = Index(lambda u: u.email.upper(), StringCoder(), unique=True, version=2)

    async with aiolmdb.open(tmp_path / "e") as env:
        v2 = UsersV2(env)
        assert await v2.count() == len(PEOPLE)  # known once open: after a first call
        assert v2.removed_indexes == ["by_city_age", "by_nickname", "by_tag"]
        await v2.build_indexes()
        found = await v2.by_email.get("ADA@X")
        assert found is not None and found.id == 1
        assert await v2.drop_removed_indexes() == ["by_city_age", "by_nickname", "by_tag"]
        with pytest.raises(aiolmdb.DatabaseNotFoundError):
            env.open_db("__aiolmdb__/index/Users/by_tag", create=False)
    async with aiolmdb.open(tmp_path / "e") as env:
        assert (await UsersV2.open(env)).removed_indexes == []


async def test_rebuild_indexes_on_demand(users: Users) -> None:
    before = await entries(users)
    await users.rebuild_indexes()
    assert await entries(users) == before


async def test_collection_with_indexes_needs_a_str_name() -> None:
    with pytest.raises(TypeError, match="name must be a str"):

        class Bad(Collection[int, User]):
            key_coder = UInt64Coder()
            name = b"raw"
            by_email = Index(lambda u: u.email, StringCoder())


def test_index_declaration_errors() -> None:
    with pytest.raises(TypeError, match="callable"):
        Index("email", StringCoder())  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="Coder"):
        Index(lambda u: u.email, "str")  # type: ignore[call-overload]
    assert repr(Users.by_email) == "Index(by_email, StringCoder(), unique=True)"
