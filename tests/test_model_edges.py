"""Collections, indexes and the pydantic coder at their edges: calls made inside
transactions, records that no longer decode, failed or cancelled rebuilds,
dropped index databases, and model instances that would not read back."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Literal

import pytest
from conftest import WriterGate, bounded
from helpers.accounts import (
    Account,
    Accounts,
    PlainAccounts,
    StrictAccount,
    StrictAccounts,
    account,
)
from pydantic import BaseModel, Field

import aiolmdb
from aiolmdb.coders import PydanticCoder, StringCoder, UInt64Coder
from aiolmdb.models import Collection, Index


async def fill_without_indexes(where: Path | aiolmdb.AsyncEnvironment, count: int) -> None:
    """Records written by a declaration without indexes: in ``where``, or in the LMDB
    environment at that path (opened and closed)."""
    if isinstance(where, aiolmdb.AsyncEnvironment):
        await PlainAccounts(where).put_multi(
            (i, account(i, f"u{i}@x", "hi")) for i in range(1, count + 1)
        )
        return
    async with aiolmdb.open(where) as env:
        await fill_without_indexes(env, count)


# -- index maintenance refused inside a transaction (it needs the writer alone) ------


async def test_build_indexes_inside_a_transaction_is_refused(env: aiolmdb.AsyncEnvironment) -> None:
    await fill_without_indexes(env, 3)
    accounts = Accounts(env)  # records exist: the indexes wait for build_indexes()
    async with env.transaction():
        with pytest.raises(aiolmdb.TransactionError, match=r"'accounts'.*build_indexes"):
            await bounded(accounts.build_indexes(), timeout=3)
        await PlainAccounts(env).put(9, account(9, "u9@x"))  # the transaction goes on
    await bounded(accounts.build_indexes())
    assert await accounts.by_email.count() == 4


async def test_collection_open_inside_a_transaction_is_refused_when_it_must_build(
    env: aiolmdb.AsyncEnvironment,
) -> None:
    await fill_without_indexes(env, 3)
    Accounts(env)  # its databases are open: only the build is left to do
    async with env.transaction():
        with pytest.raises(aiolmdb.TransactionError, match=r"'accounts'.*build_indexes"):
            await bounded(Accounts.open(env), timeout=3)
    accounts = await bounded(Accounts.open(env))
    assert await accounts.by_bio.count("hi") == 3


async def test_a_collection_first_opened_inside_a_transaction_is_refused(
    env: aiolmdb.AsyncEnvironment,
) -> None:
    await fill_without_indexes(env, 3)
    PlainAccounts(env)  # the records' database is open, the indexes' are not
    async with env.transaction():
        with pytest.raises(aiolmdb.TransactionError, match=r"collection 'accounts': .*open"):
            Accounts(env)
    accounts = await bounded(Accounts.open(env))
    assert await accounts.by_email.count() == 3


async def test_collection_open_inside_a_transaction_works_when_nothing_is_to_build(
    env: aiolmdb.AsyncEnvironment,
) -> None:
    await Accounts(env).put(1, account(1, "a@x"))
    async with env.transaction():
        accounts = await bounded(Accounts.open(env), timeout=3)
        await accounts.put(2, account(2, "b@x"))
    assert await accounts.by_email.count() == 2


async def test_index_maintenance_runs_inside_a_read_snapshot(env: aiolmdb.AsyncEnvironment) -> None:
    await fill_without_indexes(env, 3)
    accounts = Accounts(env)
    async with env.transaction(write=False):
        await bounded(accounts.build_indexes())
        await bounded(accounts.rebuild_indexes())
    assert await accounts.by_bio.count("hi") == 3
    plain = PlainAccounts(env)
    async with env.transaction(write=False):
        assert await bounded(plain.drop_removed_indexes()) == ["by_bio", "by_email"]
    assert plain.removed_indexes == []


async def test_rebuild_indexes_inside_a_transaction_is_refused(
    env: aiolmdb.AsyncEnvironment,
) -> None:
    accounts = await Accounts.open(env)
    await accounts.put(1, account(1, "a@x"))
    async with env.transaction():
        with pytest.raises(aiolmdb.TransactionError, match=r"'accounts'.*rebuild_indexes"):
            await bounded(accounts.rebuild_indexes(), timeout=3)
        await accounts.put(2, account(2, "b@x"))  # still usable inside the block
    await accounts.put(3, account(3, "c@x"))
    assert await accounts.by_email.count() == 3


async def test_drop_removed_indexes_inside_a_transaction_is_refused(
    env: aiolmdb.AsyncEnvironment,
) -> None:
    await (await Accounts.open(env)).put(1, account(1, "a@x"))
    plain = await PlainAccounts.open(env)
    assert plain.removed_indexes == ["by_bio", "by_email"]
    async with env.transaction():
        with pytest.raises(aiolmdb.TransactionError, match=r"'accounts'.*drop_removed_indexes"):
            await bounded(plain.drop_removed_indexes(), timeout=3)
    assert plain.removed_indexes == ["by_bio", "by_email"]
    assert await bounded(plain.drop_removed_indexes()) == ["by_bio", "by_email"]


# -- records that no longer decode ----------------------------------------------------


@pytest.fixture
async def strict(env: aiolmdb.AsyncEnvironment) -> StrictAccounts:
    """Record 1 was stored before the e-mail validator was tightened: it no longer decodes."""
    loose = Accounts(env)
    await loose.put_multi([(1, account(1, "no-at-sign", "old")), (2, account(2, "b@x", "old"))])
    collection = StrictAccounts(env)
    with pytest.raises(aiolmdb.DecodeError):
        await collection.get(1)
    return collection


async def test_an_undecodable_record_can_be_deleted_with_its_entries(
    strict: StrictAccounts,
) -> None:
    assert await strict.delete(1) is True
    assert await strict.get(1) is None
    assert await strict.by_email.count() == 1
    assert await strict.by_email.get("no-at-sign") is None
    assert [key async for key in strict.by_bio.keys()] == [2]
    assert await strict.delete(1) is False


async def test_an_undecodable_record_can_be_overwritten_with_its_entries_moved(
    strict: StrictAccounts,
) -> None:
    assert (
        await strict.put(1, StrictAccount(id=1, email="a@x", bio="new"), overwrite=False) is False
    )
    await strict.put(1, StrictAccount(id=1, email="a@x", bio="new"))
    assert await strict.get(1) == StrictAccount(id=1, email="a@x", bio="new")
    assert await strict.by_email.count() == 2
    assert await strict.by_email.get("no-at-sign") is None
    assert await strict.by_email.get("a@x") == StrictAccount(id=1, email="a@x", bio="new")
    assert [key async for key in strict.by_bio.keys()] == [1, 2]
    assert await strict.by_bio.count("old") == 1
    # The freed e-mail can be taken by another record.
    await strict.put(3, StrictAccount(id=3, email="c@x"))
    with pytest.raises(aiolmdb.UniqueViolationError):
        await strict.put(4, StrictAccount(id=4, email="a@x"))


async def test_deleting_an_undecodable_record_inside_a_transaction(
    env: aiolmdb.AsyncEnvironment, strict: StrictAccounts
) -> None:
    async with env.transaction():
        assert await strict.delete_multi([1, 2]) == {1: True, 2: True}
    assert await strict.count() == 0
    assert await strict.by_email.count() == 0
    assert await strict.by_bio.count() == 0


async def test_a_rebuild_names_the_record_that_does_not_decode_and_changes_nothing(
    strict: StrictAccounts,
) -> None:
    with pytest.raises(aiolmdb.DecodeError, match=r"collection 'accounts'.*key 1\b"):
        await strict.rebuild_indexes()
    # The indexes on disk were current, and still are: writes and queries go on.
    await strict.put(3, StrictAccount(id=3, email="c@x", bio="old"))
    assert await strict.by_email.get("c@x") == StrictAccount(id=3, email="c@x", bio="old")
    assert await strict.by_bio.count("old") == 3
    await strict.delete(1)
    await strict.rebuild_indexes()
    assert [key async for key in strict.by_bio.keys()] == [2, 3]


async def test_a_failed_first_build_keeps_only_its_own_indexes_unbuilt(tmp_path: Path) -> None:
    await fill_without_indexes(tmp_path / "e", 2)

    class Duplicates(Collection[int, Account]):
        key_coder = UInt64Coder()
        name = "accounts"
        by_bio = Index(lambda a: a.bio, StringCoder(), unique=True)

    async with aiolmdb.open(tmp_path / "e") as env:
        collection = Duplicates(env)
        with pytest.raises(aiolmdb.UniqueViolationError):
            await collection.build_indexes()
        with pytest.raises(aiolmdb.AiolmdbError, match="not built"):
            await collection.put(3, account(3, "c@x", "other"))


# -- a cancelled rebuild ---------------------------------------------------------------


async def test_a_cancelled_rebuild_leaves_the_collection_writable(
    env: aiolmdb.AsyncEnvironment,
) -> None:
    accounts = await Accounts.open(env)
    await accounts.put_multi([(i, account(i, f"u{i}@x", "hi")) for i in range(1, 11)])
    gate = WriterGate(accounts)
    await gate.hold()  # the rebuild queues behind it
    rebuilding = asyncio.create_task(accounts.rebuild_indexes())
    await asyncio.sleep(0.05)
    rebuilding.cancel()
    with pytest.raises(asyncio.CancelledError):
        await rebuilding
    await gate.release()
    await bounded(accounts.put(11, account(11, "u11@x", "hi")))
    assert await accounts.by_bio.count("hi") == 11
    assert await accounts.by_email.get("u11@x") == account(11, "u11@x", "hi")


async def test_a_cancelled_build_is_recorded_when_it_completes(
    env: aiolmdb.AsyncEnvironment,
) -> None:
    await fill_without_indexes(env, 10)
    accounts = Accounts(env)
    gate = WriterGate(PlainAccounts(env))
    await gate.hold()
    building = asyncio.create_task(accounts.build_indexes())
    await asyncio.sleep(0.05)
    building.cancel()
    with pytest.raises(asyncio.CancelledError):
        await building
    await gate.release()
    # Writes go on while it is built (the records indexed so far kept in step).
    await bounded(accounts.put(11, account(11, "u11@x", "hi")))
    for _ in range(200):  # it goes on without its caller, and is then trusted
        try:
            assert await accounts.by_bio.count("hi") == 11
            break
        except aiolmdb.AiolmdbError:
            await asyncio.sleep(0.01)
    else:
        raise AssertionError("the build never completed")


# -- dropped index databases: never read or written through a dead handle ----------


async def test_an_index_scan_across_a_drop_and_rebuild_of_its_index_stops(
    env: aiolmdb.AsyncEnvironment,
) -> None:
    accounts = await Accounts.open(env)
    await accounts.put_multi([(i, account(i, f"u{i:04}@x")) for i in range(1, 1501)])
    scan = accounts.by_email.keys()
    assert await anext(scan) == 1  # the first batch is read; later ones follow
    plain = PlainAccounts(env)
    assert await plain.drop_removed_indexes() == ["by_bio", "by_email"]
    other = env.open_db("other")  # LMDB may give it a deleted index's handle slot
    await other.put_multi([(b"\xff" + bytes([i]), b"junk") for i in range(50)])
    await accounts.build_indexes()  # the indexes are opened again, in other slots
    with pytest.raises(aiolmdb.DatabaseDroppedError, match=r"accounts'\.by_email"):
        async for _ in scan:
            pass
    assert await accounts.by_email.count() == 1500
    assert [key async for key in accounts.by_email.keys(limit=2)] == [1, 2]


async def test_an_index_scan_across_a_drop_of_its_collection_stops(
    env: aiolmdb.AsyncEnvironment,
) -> None:
    accounts = await Accounts.open(env)
    await accounts.put_multi([(i, account(i, f"u{i:04}@x")) for i in range(1, 1501)])
    scan = accounts.by_bio.items()
    await anext(scan)
    await accounts.drop(delete=True)
    with pytest.raises(aiolmdb.DatabaseDroppedError, match="'accounts'"):
        async for _ in scan:
            pass


async def test_a_write_queued_behind_a_drop_of_its_collection_is_refused(
    env: aiolmdb.AsyncEnvironment,
) -> None:
    accounts = await Accounts.open(env)
    await accounts.put(1, account(1, "a@x"))
    gate = WriterGate(env.open_db("gate"))
    await gate.hold()
    dropping = asyncio.create_task(accounts.drop(delete=True))
    await asyncio.sleep(0.05)
    putting = asyncio.create_task(accounts.put(2, account(2, "b@x")))
    await asyncio.sleep(0.05)
    await gate.release()
    await bounded(dropping)
    with pytest.raises(aiolmdb.DatabaseDroppedError, match="collection 'accounts'"):
        await bounded(putting)
    again = await Accounts.open(env)
    assert await again.count() == 0
    assert await again.by_email.count() == 0


# -- pydantic instances that would not read back are refused -------------------------


class Profile(BaseModel):
    id: int
    email: str
    age: int = Field(default=0, ge=0)


class Team(BaseModel):
    lead: Profile


def unreadable_profiles() -> dict[str, Any]:
    assigned_badly = Profile(id=1, email="a@x")
    assigned_badly.age = -1  # validate_assignment is off: pydantic lets it through
    assigned_wrong_type = Profile(id=1, email="a@x")
    assigned_wrong_type.email = 5  # type: ignore[assignment]
    return {
        "missing-field": Profile.model_construct(id=1),  # type: ignore[call-arg]
        "wrong-type": Profile.model_construct(id="one", email="a@x"),  # type: ignore[arg-type]
        "constraint": Profile.model_construct(id=1, email="a@x", age=-5),
        "assigned-constraint": assigned_badly,
        "assigned-type": assigned_wrong_type,
    }


@pytest.mark.parametrize("format", ["json", "msgpack"])
@pytest.mark.parametrize("case", sorted(unreadable_profiles()))
async def test_a_model_instance_that_would_not_read_back_is_refused(
    env: aiolmdb.AsyncEnvironment, case: str, format: Literal["json", "msgpack"]
) -> None:
    coder = PydanticCoder(Profile, format=format)
    db = env.open_db("profiles", key_coder=UInt64Coder(), value_coder=coder)
    with pytest.raises(aiolmdb.EncodeError, match=r"'profiles'.*key 7.*PydanticCoder\(Profile"):
        await db.put(7, unreadable_profiles()[case])
    assert await db.count() == 0
    await db.put(8, Profile(id=8, email="h@x", age=3))
    assert await db.get(8) == Profile(id=8, email="h@x", age=3)


def test_a_nested_instance_that_would_not_read_back_is_refused() -> None:
    coder = PydanticCoder(Team)
    with pytest.raises(aiolmdb.EncodeError, match=r"PydanticCoder\(Team\).*read back"):
        coder.serialize(Team(lead=Profile.model_construct(id=1)))  # type: ignore[call-arg]
    assert coder.deserialize(coder.serialize(Team(lead=Profile(id=1, email="a@x")))) == Team(
        lead=Profile(id=1, email="a@x")
    )


@pytest.mark.parametrize("delete", [False, True], ids=["empty", "delete"])
async def test_a_drop_queued_behind_a_drop_of_its_collection_is_refused(
    env: aiolmdb.AsyncEnvironment, delete: bool
) -> None:
    accounts = await Accounts.open(env)
    await accounts.put(1, account(1, "a@x"))
    gate = WriterGate(env.open_db("gate"))
    await gate.hold()
    dropping = asyncio.create_task(accounts.drop(delete=True))
    await asyncio.sleep(0.05)
    again = asyncio.create_task(accounts.drop(delete=delete))
    await asyncio.sleep(0.05)
    await gate.release()
    await bounded(dropping)
    with pytest.raises(aiolmdb.DatabaseDroppedError, match="collection 'accounts' was dropped"):
        await bounded(again)
    if env.engine.name == "lmdb":  # LMDB keeps named databases as records of the default one
        names = [key async for key in env.get_default_database().keys()]
        assert names == [b"__aiolmdb__", b"gate"]
    with pytest.raises(aiolmdb.DatabaseNotFoundError):
        await env.open_db_async("accounts", create=False)
