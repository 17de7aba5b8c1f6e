"""The transfer: one read-modify-write of two accounts, run by ``env.transact``."""

from __future__ import annotations

from datetime import datetime

from aiolmdb.errors import KeyNotFoundError

from .models import Account, Accounts, Transfer, Transfers
from .schemas import NewTransfer


class InsufficientFundsError(Exception):
    """The source account holds less than the amount; nothing was moved."""


async def account(accounts: Accounts, account_id: str) -> Account:
    """The account stored under ``account_id``; :class:`KeyNotFoundError` if there is none."""
    found = await accounts.get(account_id)
    if found is None:
        raise KeyNotFoundError(f"no account {account_id!r}")
    return found


async def transfer(
    accounts: Accounts, transfers: Transfers, order: NewTransfer, at: datetime
) -> Transfer:
    """Move ``order.amount`` from ``order.source`` to ``order.target``, and record it.

    Meant to run as ``env.transact(transfer, ...)``: every read and write here is
    one transaction, run again from the start if another request changed either
    account meanwhile. So it has no effect outside the environment, and takes the
    time ``at`` as an argument rather than reading the clock on each run.
    """
    source = await account(accounts, order.source)
    target = await account(accounts, order.target)
    if source.balance < order.amount:
        raise InsufficientFundsError(
            f"account {source.id!r} holds {source.balance}, less than {order.amount}"
        )
    record = Transfer(id=order.id, source=source.id, target=target.id, amount=order.amount, at=at)
    # First, so that a transfer sent twice fails (KeyExistsError) before moving money.
    await transfers.insert(record.id, record)
    await accounts.put(
        source.id, source.model_copy(update={"balance": source.balance - order.amount})
    )
    await accounts.put(
        target.id, target.model_copy(update={"balance": target.balance + order.amount})
    )
    return record
