"""Collections, indexes and the pydantic coder at their edges: calls made inside
transactions, records that no longer decode, failed or cancelled rebuilds,
dropped index databases, and model instances that would not read back."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import bounded
from pydantic import BaseModel, Field

import aiolmdb
from aiolmdb.coders import StringCoder, UInt64Coder
from aiolmdb.models import Collection, Index


class Account(BaseModel):
    id: int
    email: str
    bio: str = ""


class StrictAccount(BaseModel):
    """``Account`` with a validator tightened later: an e-mail needs an @."""

    id: int
    email: str = Field(pattern="@")
    bio: str = ""


class Accounts(Collection[int, Account]):
    key_coder = UInt64Coder()
    name = "accounts"
    by_email = Index(lambda a: a.email, StringCoder(), unique=True)
    by_bio = Index(lambda a: a.bio, StringCoder())


class StrictAccounts(Collection[int, StrictAccount]):
    """The same collection and indexes, read with the tightened model."""

    key_coder = UInt64Coder()
    name = "accounts"
    by_email = Index(lambda a: a.email, StringCoder(), unique=True)
    by_bio = Index(lambda a: a.bio, StringCoder())


class PlainAccounts(Collection[int, Account]):
    """The same collection declared without indexes."""

    key_coder = UInt64Coder()
    name = "accounts"


def account(uid: int, email: str, bio: str = "") -> Account:
    return Account(id=uid, email=email, bio=bio)


async def fill_without_indexes(path: Path, count: int) -> None:
    async with aiolmdb.open(path) as env:
        await PlainAccounts(env).put_multi(
            (i, account(i, f"u{i}@x", "hi")) for i in range(1, count + 1)
        )


# -- index maintenance refused inside a transaction (it needs the writer alone) ------


async def test_build_indexes_inside_a_transaction_is_refused(tmp_path: Path) -> None:
    await fill_without_indexes(tmp_path / "e", 3)
    async with aiolmdb.open(tmp_path / "e") as env:
        accounts = Accounts(env)  # records exist: the indexes wait for build_indexes()
        async with env.transaction():
            with pytest.raises(aiolmdb.TransactionError, match=r"'accounts'.*build_indexes"):
                await bounded(accounts.build_indexes(), timeout=3)
            await PlainAccounts(env).put(9, account(9, "u9@x"))  # the transaction goes on
        await bounded(accounts.build_indexes())
        assert await accounts.by_email.count() == 4


async def test_collection_open_inside_a_transaction_is_refused_when_it_must_build(
    tmp_path: Path,
) -> None:
    await fill_without_indexes(tmp_path / "e", 3)
    async with aiolmdb.open(tmp_path / "e") as env:
        Accounts(env)  # its databases are open: only the build is left to do
        async with env.transaction():
            with pytest.raises(aiolmdb.TransactionError, match=r"'accounts'.*build_indexes"):
                await bounded(Accounts.open(env), timeout=3)
        accounts = await bounded(Accounts.open(env))
        assert await accounts.by_bio.count("hi") == 3


async def test_collection_open_inside_a_transaction_works_when_nothing_is_to_build(
    env: aiolmdb.AsyncEnvironment,
) -> None:
    await Accounts(env).put(1, account(1, "a@x"))
    async with env.transaction():
        accounts = await bounded(Accounts.open(env), timeout=3)
        await accounts.put(2, account(2, "b@x"))
    assert await accounts.by_email.count() == 2


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
    plain = PlainAccounts(env)
    assert plain.removed_indexes == ["by_bio", "by_email"]
    async with env.transaction():
        with pytest.raises(aiolmdb.TransactionError, match=r"'accounts'.*drop_removed_indexes"):
            await bounded(plain.drop_removed_indexes(), timeout=3)
    assert plain.removed_indexes == ["by_bio", "by_email"]
    assert await bounded(plain.drop_removed_indexes()) == ["by_bio", "by_email"]
