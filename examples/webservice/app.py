"""The FastAPI application: the environment opened in the lifespan, collections as
dependencies, errors mapped to statuses (:mod:`.errors`), keyset pagination, and the
transfer as one retried transaction.

``AIOLMDB_LOCATION`` says where the data is: a directory (LMDB), ``:memory:``, or a
``postgresql://`` URL. The code is the same on each.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from http import HTTPStatus
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response

import aiolmdb
from aiolmdb.errors import KeyNotFoundError

from . import errors, ledger
from .models import Account, Accounts, Transfer, Transfers
from .schemas import AccountChanges, AccountPage, NewAccount, NewTransfer, Problem

#: The environment variable naming the store, and where it is when that is not set.
LOCATION_VARIABLE = "AIOLMDB_LOCATION"
DEFAULT_LOCATION = "./data"

#: Accounts on one page of ``GET /accounts``: by default, and at most.
PAGE_SIZE = 50
MAX_PAGE_SIZE = 500


@dataclass(frozen=True)
class Store:
    """What the lifespan opened, handed to every request."""

    env: aiolmdb.AsyncEnvironment
    accounts: Accounts
    transfers: Transfers


def store(request: Request) -> Store:
    """The open store, from the lifespan's state."""
    opened = getattr(request.state, "store", None)
    if not isinstance(opened, Store):
        raise RuntimeError(f"the lifespan's state holds no Store but {opened!r}")
    return opened


StoreDep = Annotated[Store, Depends(store)]


def accounts(store: StoreDep) -> Accounts:
    """The accounts collection."""
    return store.accounts


def transfers(store: StoreDep) -> Transfers:
    """The transfers collection."""
    return store.transfers


AccountsDep = Annotated[Accounts, Depends(accounts)]
TransfersDep = Annotated[Transfers, Depends(transfers)]


def create_app(location: str | None = None, **options: Any) -> FastAPI:
    """The service over the store at ``location`` (by default ``$AIOLMDB_LOCATION``, read
    when the app starts), opened as ``aiolmdb.open(location, **options)``."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[Mapping[str, Store]]:
        where = location or os.environ.get(LOCATION_VARIABLE, DEFAULT_LOCATION)
        # Closed when the server stops: queued writes commit, the files are released.
        async with aiolmdb.open(where, **options) as env:
            # Collection.open builds any index that needs it before the first request.
            accounts = await Accounts.open(env)
            transfers = await Transfers.open(env)
            yield {"store": Store(env, accounts, transfers)}

    app = FastAPI(title="ledger", lifespan=lifespan, responses=PROBLEMS)
    errors.install(app)
    app.include_router(router)
    return app


#: Error responses every endpoint may give, for the OpenAPI schema.
PROBLEMS: dict[int | str, dict[str, Any]] = {
    int(status): {"model": Problem}
    for status in (
        HTTPStatus.NOT_FOUND,
        HTTPStatus.CONFLICT,
        HTTPStatus.SERVICE_UNAVAILABLE,
        HTTPStatus.INSUFFICIENT_STORAGE,
    )
}

router = APIRouter()


@router.get("/health")
async def health(accounts: AccountsDep) -> dict[str, str]:
    """Whether the store answers (one read)."""
    await accounts.first()
    return {"status": "ok"}


@router.post("/accounts", status_code=HTTPStatus.CREATED)
async def create_account(new: NewAccount, accounts: AccountsDep) -> Account:
    """Open an account (409 if the id or the email is taken)."""
    account = Account(id=new.id, owner=new.owner, email=new.email, balance=new.balance)
    await accounts.insert(account.id, account)
    return account


@router.get("/accounts")
async def list_accounts(
    accounts: AccountsDep,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = PAGE_SIZE,
    after: Annotated[str | None, Query(description="the `next` of the page before")] = None,
) -> AccountPage:
    """Accounts in id order, ``limit`` at a time.

    Keyset pagination: the cursor is the last id of the page before, so a page
    costs the same however deep it is, and accounts opened or closed meanwhile
    neither shift nor repeat the pages after.
    """
    # One more than the page, to know whether there is a next page.
    items = [account async for account in accounts.values(after=after, limit=limit + 1)]
    more = len(items) > limit
    return AccountPage(items=items[:limit], next=items[limit - 1].id if more else None)


@router.get("/accounts/{account_id}")
async def get_account(account_id: str, accounts: AccountsDep) -> Account:
    """One account (404 if there is none)."""
    return await ledger.account(accounts, account_id)


@router.patch("/accounts/{account_id}")
async def change_account(
    account_id: str, changes: AccountChanges, accounts: AccountsDep
) -> Account:
    """Change an account's owner or email, atomically (404, or 409 if the email is taken)."""
    fields = changes.model_dump(exclude_none=True)
    return await accounts.update(account_id, lambda old: old.model_copy(update=fields))


@router.delete("/accounts/{account_id}", status_code=HTTPStatus.NO_CONTENT)
async def close_account(account_id: str, accounts: AccountsDep) -> Response:
    """Close an account (404 if there is none)."""
    if not await accounts.delete(account_id):
        raise KeyNotFoundError(f"no account {account_id!r}")
    return Response(status_code=HTTPStatus.NO_CONTENT)


@router.post("/transfers", status_code=HTTPStatus.CREATED)
async def create_transfer(order: NewTransfer, store: StoreDep) -> Transfer:
    """Move money between two accounts: 404 for a missing account, 409 for too little
    money or a transfer id used before (this transfer sent again)."""
    now = datetime.now(timezone.utc)
    # Retried from the start when another request changed either account meanwhile.
    return await store.env.transact(ledger.transfer, store.accounts, store.transfers, order, now)


@router.get("/transfers/{transfer_id}")
async def get_transfer(transfer_id: UUID, transfers: TransfersDep) -> Transfer:
    """One transfer (404 if there is none)."""
    transfer = await transfers.get(transfer_id)
    if transfer is None:
        raise KeyNotFoundError(f"no transfer {transfer_id}")
    return transfer


#: What ``uvicorn examples.webservice.app:app`` serves.
app = create_app()
