"""What the service stores: accounts and transfers, and the collections holding them."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from pydantic import BaseModel, Field

from aiolmdb.coders import StringCoder, UUIDCoder
from aiolmdb.models import Collection, Index


class Account(BaseModel):
    """An account; its balance is in cents, so sums are exact."""

    id: str
    owner: str
    email: str
    balance: int = Field(ge=0)


class Transfer(BaseModel):
    """Money moved from one account to another, as it was applied."""

    id: UUID
    source: str
    target: str
    amount: int = Field(gt=0)
    at: datetime


class Accounts(Collection[str, Account]):
    """Accounts by id (ordered, so the list endpoint pages through them by key)."""

    key_coder = StringCoder()
    by_email = Index(lambda account: account.email, StringCoder(), unique=True)


class Transfers(Collection[UUID, Transfer]):
    """Transfers by the id the client chose, which makes a retried request harmless."""

    key_coder = UUIDCoder()
