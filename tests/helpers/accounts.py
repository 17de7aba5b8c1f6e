"""The accounts collection, with and without its indexes, that index tests share."""

from __future__ import annotations

from pydantic import BaseModel, Field

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
