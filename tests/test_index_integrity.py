"""Indexes stay in step with their records at the edges: redeclared indexes,
oversized index keys, lossy value coders, drops, look-alike names, crashes."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TypeVar

import pytest
from conftest import WriterGate
from pydantic import BaseModel, Field

import aiolmdb
from aiolmdb.coders import JSONCoder, StringCoder, UInt64Coder
from aiolmdb.models import Collection, Index
from aiolmdb.models.catalog import IndexCatalog


class Account(BaseModel):
    id: int
    email: str
    bio: str = ""


class WithEmail(Collection[int, Account]):
    key_coder = UInt64Coder()
    name = "accounts"
    by_email = Index(lambda a: a.email, StringCoder(), unique=True)


class WithoutIndexes(Collection[int, Account]):
    key_coder = UInt64Coder()
    name = "accounts"


class WithBio(Collection[int, Account]):
    key_coder = UInt64Coder()
    name = "accounts"
    by_email = Index(lambda a: a.email, StringCoder(), unique=True)
    by_bio = Index(lambda a: a.bio, StringCoder())


class Other(Collection[int, Account]):
    key_coder = UInt64Coder()
    name = "accounts-other"
    by_bio = Index(lambda a: a.bio, StringCoder())


def account(uid: int, email: str, bio: str = "") -> Account:
    return Account(id=uid, email=email, bio=bio)


# -- an index declared again after writes made without it -------------------------


class OnlyBio(Collection[int, Account]):
    key_coder = UInt64Coder()
    name = "accounts"
    by_bio = Index(lambda a: a.bio, StringCoder())


@pytest.mark.parametrize("meanwhile", [WithoutIndexes, OnlyBio], ids=["no-index", "other-index"])
async def test_redeclared_index_is_rebuilt_after_writes_without_it(
    tmp_path: Path, meanwhile: type[Collection[int, Account]]
) -> None:
    path = tmp_path / "env"
    async with aiolmdb.open(path) as env:
        v1 = await WithEmail.open(env)
        await v1.put(1, account(1, "a@x"))
    async with aiolmdb.open(path) as env:
        v2 = await meanwhile.open(env)
        assert v2.removed_indexes == ["by_email"]
        await v2.put(1, account(1, "b@x"))
        await v2.put(2, account(2, "a@x"))
    async with aiolmdb.open(path) as env:
        v3 = WithEmail(env)
        with pytest.raises(aiolmdb.AiolmdbError, match="not built"):
            await v3.by_email.get("a@x")
        await v3.build_indexes()
        assert await v3.by_email.get("a@x") == account(2, "a@x")
        assert await v3.by_email.get("b@x") == account(1, "b@x")
        with pytest.raises(aiolmdb.UniqueViolationError):
            await v3.put(3, account(3, "b@x"))


async def test_an_index_left_alone_while_undeclared_is_still_trusted(tmp_path: Path) -> None:
    path = tmp_path / "env"
    async with aiolmdb.open(path) as env:
        await (await WithEmail.open(env)).put(1, account(1, "a@x"))
    async with aiolmdb.open(path) as env:
        assert (await WithoutIndexes.open(env)).removed_indexes == ["by_email"]  # no writes
    async with aiolmdb.open(path) as env:
        again = WithEmail(env)
        assert await again.by_email.get("a@x") == account(1, "a@x")


async def test_a_write_aborted_while_undeclared_marks_nothing(tmp_path: Path) -> None:
    path = tmp_path / "env"
    async with aiolmdb.open(path) as env:
        await (await WithEmail.open(env)).put(1, account(1, "a@x"))
    async with aiolmdb.open(path) as env:
        plain = WithoutIndexes(env)
        with pytest.raises(RuntimeError):
            async with env.transaction():
                await plain.put(1, account(1, "b@x"))
                raise RuntimeError("abort")
    async with aiolmdb.open(path) as env:
        assert await WithEmail(env).by_email.get("a@x") == account(1, "a@x")


async def test_an_index_open_elsewhere_notices_writes_made_without_it(
    env: aiolmdb.AsyncEnvironment,
) -> None:
    # Two declarations of one collection open at once (two versions of the
    # code, say): writes through the one without the index make it out of date.
    with_bio = await WithBio.open(env)
    await with_bio.put(1, account(1, "a@x", "old"))
    without = OnlyEmail(env)
    await without.put(1, account(1, "a@x", "new"))
    with pytest.raises(aiolmdb.AiolmdbError, match="by_bio is out of date"):
        await with_bio.by_bio.get_all("new")
    with pytest.raises(aiolmdb.AiolmdbError, match="by_bio is out of date"):
        await with_bio.delete(1)
    await with_bio.build_indexes()
    assert await with_bio.by_bio.get_all("new") == [account(1, "a@x", "new")]
    assert await with_bio.by_bio.get_all("old") == []


@pytest.mark.needs("serial_writes")
async def test_a_write_without_the_index_in_the_same_group_commit_is_noticed(
    env: aiolmdb.AsyncEnvironment,
) -> None:
    with_bio = await WithBio.open(env)
    without = OnlyEmail(env)
    gate = WriterGate(env.open_db("gate"))
    await gate.hold()  # the three writes below go into one group commit, in order
    writes = [
        asyncio.ensure_future(with_bio.put(1, account(1, "a@x", "one"))),
        asyncio.ensure_future(without.put(2, account(2, "b@x", "two"))),
        asyncio.ensure_future(with_bio.put(3, account(3, "c@x", "three"))),
    ]
    await asyncio.sleep(0.05)
    await gate.release()
    results = await asyncio.gather(*writes, return_exceptions=True)
    assert results[:2] == [True, True]
    assert isinstance(results[2], aiolmdb.AiolmdbError)
    assert "out of date" in str(results[2])


class OnlyEmail(Collection[int, Account]):
    key_coder = UInt64Coder()
    name = "accounts"
    by_email = Index(lambda a: a.email, StringCoder(), unique=True)


async def test_index_storage_cannot_meet_a_database_of_the_same_look(
    env: aiolmdb.AsyncEnvironment,
) -> None:
    lookalike = env.open_db("accounts.by_bio")
    await lookalike.put(b"mine", b"untouched")
    accounts = await WithBio.open(env)
    await accounts.put(1, account(1, "a@x", "hi"))
    await accounts.drop(delete=True)
    assert [item async for item in env.open_db("accounts.by_bio").items()] == [
        (b"mine", b"untouched")
    ]


def test_reserved_collection_names_are_refused() -> None:
    with pytest.raises(TypeError, match="reserved"):

        class Sneaky(Collection[int, Account]):
            key_coder = UInt64Coder()
            name = "__aiolmdb__/index/accounts/by_bio"


async def test_an_index_deleted_by_another_declaration_is_built_again_safely(
    env: aiolmdb.AsyncEnvironment,
) -> None:
    with_email = await WithEmail.open(env)
    await with_email.put(1, account(1, "a@x"))
    without = await WithoutIndexes.open(env)
    assert await without.drop_removed_indexes() == ["by_email"]
    other = env.open_db("other")  # LMDB may give it the deleted index's handle slot
    await other.put(b"k", b"precious")
    with pytest.raises(aiolmdb.AiolmdbError, match="by_email: its database was deleted"):
        await with_email.put(2, account(2, "b@x"))
    with pytest.raises(aiolmdb.AiolmdbError, match="deleted"):
        await with_email.by_email.get("a@x")
    await with_email.build_indexes()
    assert await with_email.by_email.get("a@x") == account(1, "a@x")
    assert [item async for item in other.items()] == [(b"k", b"precious")]


async def test_indexes_recorded_with_an_older_layout_are_rebuilt(
    env: aiolmdb.AsyncEnvironment,
) -> None:
    accounts = await WithEmail.open(env)
    await accounts.put(1, account(1, "a@x"))
    meta = env.open_db("__aiolmdb__", key_coder=StringCoder(), value_coder=JSONCoder())
    signature = await meta.get("index/accounts/by_email")
    assert signature is not None and signature.pop("layout") == 2
    await meta.put("index/accounts/by_email", signature)  # as an older version stored it
    reopened = WithEmail(env)
    with pytest.raises(aiolmdb.AiolmdbError, match="not built"):
        await reopened.by_email.get("a@x")
    await reopened.build_indexes()
    assert await reopened.by_email.get("a@x") == account(1, "a@x")


# -- index keys beyond LMDB's key size --------------------------------------------


@pytest.mark.parametrize("in_transaction", [False, True])
async def test_oversized_index_key_is_an_encode_error_that_writes_nothing(
    env: aiolmdb.AsyncEnvironment, in_transaction: bool
) -> None:
    accounts = await WithBio.open(env)
    await accounts.put(1, account(1, "a@x", "short"))
    too_long = account(1, "b@x", "x" * (env.max_key_size() + 1))
    match = r"accounts.*by_bio.*key 1.*bytes.*511"
    if in_transaction:
        async with env.transaction():
            with pytest.raises(aiolmdb.EncodeError, match=match):
                await accounts.put(1, too_long)
            # The error is caught and the transaction commits: nothing half-written.
    else:
        with pytest.raises(aiolmdb.EncodeError, match=match):
            await accounts.put(1, too_long)
    assert await accounts.get(1) == account(1, "a@x", "short")
    assert await accounts.by_email.get("a@x") == account(1, "a@x", "short")
    assert await accounts.by_email.get("b@x") is None
    assert await accounts.by_bio.get_all("short") == [account(1, "a@x", "short")]


async def test_a_non_unique_entry_counts_the_primary_key_in_its_size(
    env: aiolmdb.AsyncEnvironment,
) -> None:
    accounts = await WithBio.open(env)
    # The escaped index key fits alone, but not followed by the 8-byte record key.
    fits_alone = "x" * (env.max_key_size() - 2 - 4)
    with pytest.raises(aiolmdb.EncodeError, match="by_bio"):
        await accounts.put(1, account(1, "a@x", fits_alone))
    assert await accounts.count() == 0


# -- what is indexed is what is stored ----------------------------------------------


class Plan(BaseModel):
    email: str
    plan: str = Field("free", exclude=True)


class Plans(Collection[int, Plan]):
    key_coder = UInt64Coder()
    by_plan = Index(lambda p: p.plan, StringCoder())


async def test_entries_come_from_the_stored_record_not_the_object_passed(
    env: aiolmdb.AsyncEnvironment,
) -> None:
    plans = await Plans.open(env)
    await plans.put(1, Plan(email="a", plan="pro"))  # "plan" is not stored
    assert await plans.get(1) == Plan(email="a", plan="free")
    assert await plans.by_plan.get_all("pro") == []
    assert await plans.by_plan.get_all("free") == [Plan(email="a")]
    await plans.delete(1)
    assert await plans.by_plan.count() == 0


class Reading(BaseModel):
    value: float


class Readings(Collection[int, Reading]):
    key_coder = UInt64Coder()


async def test_a_value_that_would_not_read_back_is_refused(
    env: aiolmdb.AsyncEnvironment,
) -> None:
    readings = Readings(env)
    with pytest.raises(aiolmdb.EncodeError, match=r"Readings.*key 1.*NaN"):
        await readings.put(1, Reading(value=math.nan))
    assert await readings.get(1) is None
    await readings.put(2, Reading(value=1.5))
    assert await readings.get(2) == Reading(value=1.5)


# -- drops ------------------------------------------------------------------------


@pytest.mark.needs("map_size")
async def test_drop_delete_is_one_transaction(env: aiolmdb.AsyncEnvironment) -> None:
    accounts = await WithBio.open(env)
    await accounts.put(1, account(1, "a@x", "hi"))
    before = env.info()["last_txnid"]
    await accounts.drop(delete=True)
    assert env.info()["last_txnid"] == before + 1  # records, indexes, declarations at once
    again = await WithBio.open(env)
    assert (await again.count(), await again.by_email.count(), await again.by_bio.count()) == (
        0,
        0,
        0,
    )
    await again.put(2, account(2, "a@x"))
    assert await again.by_email.get("a@x") == account(2, "a@x")


async def test_a_drop_failing_half_way_drops_nothing(
    env: aiolmdb.AsyncEnvironment, monkeypatch: pytest.MonkeyPatch
) -> None:
    accounts = await WithBio.open(env)
    await accounts.put(1, account(1, "a@x", "hi"))

    def fail(*args: object) -> None:
        raise RuntimeError("disk on fire")

    # Fails the drop's last part (forgetting the indexes' declarations), after the
    # records' and the indexes' databases were deleted in its transaction.
    monkeypatch.setattr(IndexCatalog, "forget", fail)
    with pytest.raises(RuntimeError, match="disk on fire"):
        await accounts.drop(delete=True)
    monkeypatch.undo()
    # LMDB closed the handles the drop used: open the collection again.
    again = WithBio(env)
    assert await again.get(1) == account(1, "a@x", "hi")
    assert await again.by_email.get("a@x") == account(1, "a@x", "hi")
    assert await again.by_bio.get_all("hi") == [account(1, "a@x", "hi")]


# -- names that look alike -------------------------------------------------------------


class Parent(Collection[int, Account]):
    key_coder = UInt64Coder()
    name = "app"
    by_bio = Index(lambda a: a.bio, StringCoder())


class Child(Collection[int, Account]):
    key_coder = UInt64Coder()
    name = "app/users"
    by_email = Index(lambda a: a.email, StringCoder(), unique=True)


async def test_a_collection_does_not_claim_indexes_of_a_longer_name(
    env: aiolmdb.AsyncEnvironment,
) -> None:
    child = await Child.open(env)
    await child.put(1, account(1, "a@x"))
    parent = await Parent.open(env)
    assert parent.removed_indexes == []
    assert await parent.drop_removed_indexes() == []
    assert await Child(env).by_email.get("a@x") == account(1, "a@x")


async def test_drop_removed_indexes_deletes_storage_and_declaration(
    tmp_path: Path,
) -> None:
    path = tmp_path / "env"
    async with aiolmdb.open(path) as env:
        await (await WithBio.open(env)).put(1, account(1, "a@x", "hi"))
    async with aiolmdb.open(path) as env:
        fewer = await WithEmail.open(env)
        assert fewer.removed_indexes == ["by_bio"]
        assert await fewer.drop_removed_indexes() == ["by_bio"]
        assert "__aiolmdb__/index/accounts/by_bio" not in [name async for name in _names(env)]
    async with aiolmdb.open(path) as env:
        assert (await WithEmail.open(env)).removed_indexes == []


async def test_a_cancelled_drop_removed_indexes_still_completes(tmp_path: Path) -> None:
    path = tmp_path / "env"
    async with aiolmdb.open(path) as env:
        await (await WithBio.open(env)).put(1, account(1, "a@x", "hi"))
    async with aiolmdb.open(path) as env:
        fewer = await WithEmail.open(env)
        dropping = asyncio.create_task(fewer.drop_removed_indexes())
        await asyncio.sleep(0)
        dropping.cancel()
        with pytest.raises(asyncio.CancelledError):
            await dropping
        for _ in range(200):  # it goes on without its caller
            if not fewer.removed_indexes:
                break
            await asyncio.sleep(0.01)
        assert fewer.removed_indexes == []
        assert await fewer.drop_removed_indexes() == []
    async with aiolmdb.open(path) as env:
        assert (await WithEmail.open(env)).removed_indexes == []


async def _names(env: aiolmdb.AsyncEnvironment) -> AsyncIterator[str]:
    async for key in env.get_default_database().keys():
        yield key.decode()


# -- declarations ----------------------------------------------------------------------

M = TypeVar("M", bound=BaseModel)


class IntKeyed(Collection[int, M]):
    key_coder = UInt64Coder()


class Accounts(IntKeyed[Account]):
    by_email = Index(lambda a: a.email, StringCoder(), unique=True)


async def test_a_generic_base_specialised_by_a_subclass(env: aiolmdb.AsyncEnvironment) -> None:
    accounts = await Accounts.open(env)
    await accounts.put(1, account(1, "a@x"))
    assert await accounts.by_email.get("a@x") == account(1, "a@x")
    assert Accounts.name == "Accounts"


class Tagged(BaseModel):
    tag: str


class Tags(Collection[int, Tagged]):
    key_coder = UInt64Coder()
    by_tag = Index(lambda t: t.tag, StringCoder(), multi=True)


async def test_a_multi_index_refuses_a_string_for_its_keys(env: aiolmdb.AsyncEnvironment) -> None:
    tags = await Tags.open(env)
    with pytest.raises(aiolmdb.IndexExtractorError, match=r"by_tag.*key 1.*multi=True.*str"):
        await tags.put(1, Tagged(tag="admin"))
    assert await tags.count() == 0
