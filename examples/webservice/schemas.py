"""The bodies of requests and responses (what clients send and get, not what is stored)."""

from __future__ import annotations

from uuid import UUID

from pydantic import BaseModel, Field, model_validator

from .models import Account


class NewAccount(BaseModel):
    """``POST /accounts``: the id is the client's, as an account number would be."""

    id: str
    owner: str
    email: str
    balance: int = Field(default=0, ge=0)


class AccountChanges(BaseModel):
    """``PATCH /accounts/{id}``: the fields to change (the balance moves by transfers only)."""

    owner: str | None = None
    email: str | None = None


class NewTransfer(BaseModel):
    """``POST /transfers``: the client picks the id, so that sending it again is safe."""

    id: UUID
    source: str
    target: str
    amount: int = Field(gt=0)

    @model_validator(mode="after")
    def _two_accounts(self) -> NewTransfer:
        if self.source == self.target:
            raise ValueError(f"a transfer needs two accounts, got {self.source!r} twice")
        return self


class AccountPage(BaseModel):
    """One page of ``GET /accounts``; ``next`` is the cursor of the next page, if any."""

    items: list[Account]
    next: str | None


class Problem(BaseModel):
    """The body of every error response: what went wrong, and the error's type."""

    detail: str
    error: str
