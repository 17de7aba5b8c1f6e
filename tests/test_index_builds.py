"""Index builds in bounded chunks: writes go on meanwhile, a build cut short resumes, a
rebuild repairs an index in place; and counts over ranges of databases and indexes."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from conftest import bounded
from helpers.accounts import (
    Account,
    Accounts,
    PlainAccounts,
    StrictAccount,
    StrictAccounts,
    account,
)
from pydantic import BaseModel

import aiolmdb
from aiolmdb.coders import Int64Coder, StringCoder, TupleCoder, UInt64Coder
from aiolmdb.models import Collection, Index
from aiolmdb.models.build import BUILD_CHUNK


def numbered(uid: int, bio: str = "hi") -> Account:
    """Account ``uid``, with the e-mail ``u<uid>@x``."""
    return account(uid, f"u{uid}@x", bio)


async def assert_indexes_match(accounts: Accounts, plain: PlainAccounts) -> None:
    """Every record is found through both indexes, and nothing else is."""
    records = {key: value async for key, value in plain.items()}
    assert await accounts.by_email.count() == len(records)
    through_email = [(key, record) async for key, record in accounts.by_email.items()]
    assert through_email == sorted(records.items(), key=lambda item: item[1].email)
    for record in list(records.values())[::500]:  # and point lookups, on a sample
        assert await accounts.by_email.get(record.email) == record
    by_bio = [key async for key in accounts.by_bio.keys()]
    assert sorted(by_bio) == sorted(records)
    for bio in {record.bio for record in records.values()}:
        expected = [key for key, record in records.items() if record.bio == bio]
        assert [record.id for record in await accounts.by_bio.get_all(bio)] == expected


# -- a build runs in chunks ------------------------------------------------------------


async def test_writes_go_on_while_an_index_is_built_and_keep_it_in_step(
    env: aiolmdb.AsyncEnvironment,
) -> None:
    plain = PlainAccounts(env)
    total = 25_000
    await plain.put_multi((i, numbered(i)) for i in range(1, total + 1))
    accounts = Accounts(env)  # records exist: its indexes wait for a build
    writes: list[asyncio.Future[tuple[bool, ...]]] = []

    def midway(names: list[str], done: int, of: int) -> None:
        if done == 10_000:  # records the build has indexed, and records it has not reached
            writes.append(
                asyncio.ensure_future(
                    asyncio.gather(
                        accounts.put(10, numbered(10, "changed")),
                        accounts.delete(20),
                        accounts.put(total - 5, numbered(total - 5, "late")),
                        accounts.delete(total - 6),
                        accounts.put(total + 1, numbered(total + 1, "new")),
                    )
                )
            )

    await bounded(accounts.build_indexes(progress=midway))
    (during,) = writes
    # The writes did not wait for the whole build: they ran between two of its chunks.
    assert during.done() and list(during.result()) == [True] * 5
    await assert_indexes_match(accounts, plain)
    assert [a.id for a in await accounts.by_bio.get_all("changed")] == [10]
    assert await accounts.by_email.get(f"u{total - 6}@x") is None


async def test_queries_refuse_an_index_being_built(env: aiolmdb.AsyncEnvironment) -> None:
    await PlainAccounts(env).put_multi((i, numbered(i)) for i in range(1, 21_000))
    accounts = Accounts(env)
    refusals: list[asyncio.Task[None]] = []

    async def query_now() -> None:
        with pytest.raises(aiolmdb.IndexNotReadyError, match=r"'accounts'.*not built.*build_"):
            await accounts.by_email.get("u1@x")
        with pytest.raises(aiolmdb.IndexNotReadyError, match="not built"):
            await accounts.by_bio.count("hi")

    def midway(names: list[str], done: int, of: int) -> None:
        if done == 10_000:
            refusals.append(asyncio.ensure_future(query_now()))

    await bounded(accounts.build_indexes(progress=midway))
    (refusal,) = refusals
    assert refusal.done()
    await refusal  # its assertions held
    assert await accounts.by_bio.count("hi") == 20_999


async def test_a_build_reports_progress_every_ten_thousand_records(
    env: aiolmdb.AsyncEnvironment,
) -> None:
    await PlainAccounts(env).put_multi((i, numbered(i)) for i in range(1, 21_001))
    seen: list[tuple[list[str], int, int]] = []
    await Accounts.open(env, progress=lambda names, done, total: seen.append((names, done, total)))
    assert seen == [
        (["by_email", "by_bio"], 10_000, 21_000),
        (["by_email", "by_bio"], 20_000, 21_000),
        (["by_email", "by_bio"], 21_000, 21_000),
    ]


# -- a build cut short resumes ---------------------------------------------------------


async def test_a_build_cut_short_resumes_after_the_last_chunk_it_committed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "env"
    bad = BUILD_CHUNK + 500  # in the second chunk: the first one is committed
    async with aiolmdb.open(path) as env:
        plain = PlainAccounts(env)
        await plain.put_multi((i, numbered(i)) for i in range(1, 2 * BUILD_CHUNK + 1))
        await plain.put(bad, Account(id=bad, email="no at sign"))
        with pytest.raises(aiolmdb.DecodeError, match=rf"'accounts'.*key {bad}\b"):
            await StrictAccounts.open(env)
        # Mend the record through a database that knows nothing of the indexes.
        raw = env.open_db("accounts", key_coder=UInt64Coder())
        await raw.put(bad, numbered(bad).model_dump_json().encode())
    # A new process (here: a new environment) finds the build's progress on disk.
    async with aiolmdb.open(path) as env:
        with caplog.at_level(logging.INFO, logger="aiolmdb.models"):
            strict = await StrictAccounts.open(env)
        assert (
            f"resuming the build of ['by_email', 'by_bio'] after key {BUILD_CHUNK}" in caplog.text
        )
        assert await strict.by_email.count() == 2 * BUILD_CHUNK
        assert await strict.by_email.get(f"u{bad}@x") == StrictAccount(**numbered(bad).model_dump())
        await assert_indexes_match(Accounts(env), PlainAccounts(env))


async def test_a_build_resumed_after_a_stale_mark_starts_again(tmp_path: Path) -> None:
    path = tmp_path / "env"
    bad = BUILD_CHUNK + 1
    async with aiolmdb.open(path) as env:
        plain = PlainAccounts(env)
        await plain.put_multi((i, numbered(i)) for i in range(1, 2 * BUILD_CHUNK + 1))
        await plain.put(bad, Account(id=bad, email="no at sign"))
        with pytest.raises(aiolmdb.DecodeError):
            await StrictAccounts.open(env)
    async with aiolmdb.open(path) as env:
        # A declaration without the indexes writes: the indexed part is no longer trusted.
        plain = await PlainAccounts.open(env)
        await plain.put(5, numbered(5, "changed without the index"))
        await plain.put(bad, numbered(bad))
    async with aiolmdb.open(path) as env:
        accounts = await Accounts.open(env)
        assert [a.id for a in await accounts.by_bio.get_all("changed without the index")] == [5]
        await assert_indexes_match(accounts, PlainAccounts(env))


# -- a rebuild repairs in place --------------------------------------------------------


async def test_a_rebuild_writes_missing_entries_and_deletes_stray_ones(
    env: aiolmdb.AsyncEnvironment,
) -> None:
    accounts = await Accounts.open(env)
    await accounts.put_multi((i, numbered(i)) for i in range(1, BUILD_CHUNK + 10))
    # Damage the entries behind the collection's back.
    by_bio = env.open_db("__aiolmdb__/index/accounts/by_bio")
    by_email = env.open_db("__aiolmdb__/index/accounts/by_email")
    stray_bio = b"gone\x00\x00" + UInt64Coder().serialize(999_999)
    await by_bio.put(stray_bio, b"")
    await by_email.put(b"ghost@x\x00\x00", UInt64Coder().serialize(3))
    assert await by_email.delete(b"u7@x\x00\x00")
    assert await accounts.by_email.get("u7@x") is None
    await accounts.rebuild_indexes()
    assert await by_bio.get(stray_bio) is None
    assert await by_email.get(b"ghost@x\x00\x00") is None
    await assert_indexes_match(accounts, PlainAccounts(env))


async def test_queries_go_on_during_a_rebuild(env: aiolmdb.AsyncEnvironment) -> None:
    accounts = await Accounts.open(env)
    await accounts.put_multi((i, numbered(i)) for i in range(1, 3 * BUILD_CHUNK))
    rebuilding = asyncio.create_task(accounts.rebuild_indexes())
    await asyncio.sleep(0)
    assert await accounts.by_email.get("u5@x") == numbered(5)  # the index stays current
    await accounts.put(1, numbered(1, "during"))
    await bounded(rebuilding)
    assert [a.id for a in await accounts.by_bio.get_all("during")] == [1]
    await assert_indexes_match(accounts, PlainAccounts(env))


# -- counts over ranges ----------------------------------------------------------------


class Person(BaseModel):
    id: int
    city: str
    age: int


class People(Collection[int, Person]):
    key_coder = UInt64Coder()
    by_city_age = Index(lambda p: (p.city, p.age), TupleCoder(StringCoder(), Int64Coder()))


async def test_count_takes_bounds_and_prefixes_on_databases_collections_and_indexes(
    env: aiolmdb.AsyncEnvironment,
) -> None:
    db = env.open_db("words", key_coder=StringCoder())
    await db.put_multi({"apple": b"", "apricot": b"", "banana": b"", "cherry": b""})
    assert await db.count() == 4
    assert await db.count(prefix="ap") == 2
    assert await db.count("b") == 2
    assert await db.count("apricot", "cherry") == 2
    with pytest.raises(aiolmdb.UnorderedKeyError):
        await env.open_db("raw", key_coder=aiolmdb.coders.JSONCoder()).count(prefix="x")

    people = await People.open(env)
    await people.put_multi(
        (i, Person(id=i, city=city, age=age))
        for i, (city, age) in enumerate(
            [("Oslo", 30), ("Oslo", 41), ("Bergen", 30), ("Oslo", 52), ("Tromsø", 30)]
        )
    )
    assert await people.count(1, 4) == 3
    assert await people.by_city_age.count(prefix=("Oslo",)) == 3
    assert await people.by_city_age.count(start=("Oslo", 40), stop=("Oslo", 60)) == 2
    assert await people.by_city_age.count(("Oslo", 41)) == 1
    assert await people.by_city_age.count() == 5
    with pytest.raises(TypeError, match="a value, or bounds, not both"):
        await people.by_city_age.count(("Oslo", 41), prefix=("Oslo",))
