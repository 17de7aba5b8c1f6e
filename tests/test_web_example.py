"""The example web service (examples/webservice), driven over HTTP on every engine: through
httpx's ASGI transport with the app's lifespan run, and once behind a real uvicorn server."""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from http import HTTPStatus
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import TIMEOUT, EngineKind, bounded
from helpers.postgres import PostgresServer
from helpers.postgres_fixtures import SWITCH

import aiolmdb
from aiolmdb.errors import (
    ClosedError,
    CommitUnknownError,
    ConflictError,
    ConnectionLostError,
    DatabaseDroppedError,
    DecodeError,
    DiskFullError,
    EncodeError,
    IndexNotReadyError,
    KeyExistsError,
    KeyNotFoundError,
    ReadersFullError,
    TransactionError,
    UnavailableError,
    UniqueViolationError,
)
from aiolmdb.storage.locations import MEMORY
from examples.webservice.app import create_app
from examples.webservice.errors import problem_response, status_for
from examples.webservice.inprocess import in_process
from examples.webservice.ledger import InsufficientFundsError
from examples.webservice.models import Accounts

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "web-service.md"
#: A block of the guide that quotes the example: the file it names must hold it as shown.
QUOTE = re.compile(
    r"<!-- fragment: an excerpt of (examples/webservice/\w+\.py) -->\n```python\n(.*?)\n```",
    re.DOTALL,
)


def test_the_guide_quotes_the_example_as_it_is() -> None:
    quotes = QUOTE.findall(GUIDE.read_text(encoding="utf-8"))
    assert {path for path, _ in quotes} == {
        "examples/webservice/models.py",
        "examples/webservice/app.py",
        "examples/webservice/errors.py",
        "examples/webservice/ledger.py",
    }
    for path, code in quotes:
        source = (ROOT / path).read_text(encoding="utf-8")
        first = code.splitlines()[0]
        assert code in source, f"docs/web-service.md quotes {path} as it no longer is: {first!r}"


@pytest.fixture
def location(engine_kind: EngineKind, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """Where the app keeps its data on the engine under test."""
    if engine_kind is EngineKind.LMDB:
        return str(tmp_path / "ledger")
    if engine_kind is EngineKind.POSTGRES:
        url: str = request.getfixturevalue("postgres_server").schema_url()
        return url
    return MEMORY


@pytest.fixture
async def client(location: str) -> AsyncIterator[httpx.AsyncClient]:
    async with in_process(create_app(location)) as served:
        yield served.client


def account(account_id: str, balance: int = 0, email: str | None = None) -> dict[str, Any]:
    return {
        "id": account_id,
        "owner": f"owner of {account_id}",
        "email": email or f"{account_id}@example.com",
        "balance": balance,
    }


async def open_accounts(client: httpx.AsyncClient, *bodies: dict[str, Any]) -> None:
    for body in bodies:
        response = await client.post("/accounts", json=body)
        assert response.status_code == HTTPStatus.CREATED, response.text


def problem(response: httpx.Response, status: HTTPStatus, error: str) -> str:
    """The detail of an error response, once its status and error type are as expected."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == error, body
    detail: str = body["detail"]
    return detail


async def balances(client: httpx.AsyncClient) -> dict[str, int]:
    response = await client.get("/accounts", params={"limit": 500})
    assert response.status_code == HTTPStatus.OK, response.text
    assert response.json()["next"] is None
    return {item["id"]: item["balance"] for item in response.json()["items"]}


async def test_health(client: httpx.AsyncClient) -> None:
    response = await client.get("/health")
    assert response.status_code == HTTPStatus.OK
    assert response.json() == {"status": "ok"}


async def test_accounts_open_change_and_close(client: httpx.AsyncClient) -> None:
    created = await client.post("/accounts", json=account("ada", 500))
    assert created.status_code == HTTPStatus.CREATED
    assert created.json() == account("ada", 500)
    assert (await client.get("/accounts/ada")).json() == account("ada", 500)

    changed = await client.patch("/accounts/ada", json={"owner": "Ada L."})
    assert changed.status_code == HTTPStatus.OK
    assert changed.json() == {**account("ada", 500), "owner": "Ada L."}
    changed = await client.patch("/accounts/ada", json={"email": "ada@lovelace.org"})
    assert changed.json() == {**account("ada", 500), "owner": "Ada L.", "email": "ada@lovelace.org"}
    assert (await client.get("/accounts/ada")).json() == changed.json()
    # The old email is free again, the new one is taken.
    await open_accounts(client, account("bob", email="ada@example.com"))
    taken = await client.post("/accounts", json=account("cy", email="ada@lovelace.org"))
    assert "ada@lovelace.org" in problem(taken, HTTPStatus.CONFLICT, "UniqueViolationError")

    closed = await client.delete("/accounts/ada")
    assert closed.status_code == HTTPStatus.NO_CONTENT
    assert closed.content == b""
    detail = problem(await client.get("/accounts/ada"), HTTPStatus.NOT_FOUND, "KeyNotFoundError")
    assert detail == "no account 'ada'"
    assert await balances(client) == {"bob": 0}


async def test_transfer_moves_money_and_is_recorded(client: httpx.AsyncClient) -> None:
    await open_accounts(client, account("ada", 500), account("bob", 20))
    transfer_id = uuid.uuid4()
    body = {"id": str(transfer_id), "source": "ada", "target": "bob", "amount": 120}
    response = await client.post("/transfers", json=body)
    assert response.status_code == HTTPStatus.CREATED, response.text
    made = response.json()
    assert {key: made[key] for key in body} == body
    assert made["at"].endswith("Z") or made["at"].endswith("+00:00")
    assert (await client.get(f"/transfers/{transfer_id}")).json() == made
    assert await balances(client) == {"ada": 380, "bob": 140}


async def test_errors_map_to_statuses(client: httpx.AsyncClient) -> None:
    await open_accounts(client, account("ada", 100), account("bob", 0))

    detail = problem(
        await client.post("/accounts", json=account("ada", email="other@example.com")),
        HTTPStatus.CONFLICT,
        "KeyExistsError",
    )
    assert "'ada'" in detail
    detail = problem(
        await client.post("/accounts", json=account("cy", email="ada@example.com")),
        HTTPStatus.CONFLICT,
        "UniqueViolationError",
    )
    assert "by_email" in detail and "ada@example.com" in detail
    detail = problem(
        await client.patch("/accounts/bob", json={"email": "ada@example.com"}),
        HTTPStatus.CONFLICT,
        "UniqueViolationError",
    )
    assert "by_email" in detail and "ada@example.com" in detail

    detail = problem(
        await client.patch("/accounts/cy", json={"owner": "Cy"}),
        HTTPStatus.NOT_FOUND,
        "KeyNotFoundError",
    )
    assert "'cy'" in detail
    detail = problem(await client.delete("/accounts/cy"), HTTPStatus.NOT_FOUND, "KeyNotFoundError")
    assert detail == "no account 'cy'"
    missing = uuid.uuid4()
    detail = problem(
        await client.get(f"/transfers/{missing}"), HTTPStatus.NOT_FOUND, "KeyNotFoundError"
    )
    assert detail == f"no transfer {missing}"

    # Keys the coders refuse are the client's fault: 422, naming what was wrong.
    detail = problem(
        await client.post("/accounts", json=account("")),
        HTTPStatus.UNPROCESSABLE_ENTITY,
        "EncodeError",
    )
    assert "Accounts" in detail and "StringCoder" in detail and "empty" in detail
    detail = problem(
        await client.get(f"/accounts/{'x' * 600}"), HTTPStatus.UNPROCESSABLE_ENTITY, "EncodeError"
    )
    assert "Accounts" in detail and "600 bytes" in detail

    def transfer(source: str, target: str, amount: int) -> dict[str, Any]:
        return {"id": str(uuid.uuid4()), "source": source, "target": target, "amount": amount}

    detail = problem(
        await client.post("/transfers", json=transfer("ada", "cy", 10)),
        HTTPStatus.NOT_FOUND,
        "KeyNotFoundError",
    )
    assert detail == "no account 'cy'"
    detail = problem(
        await client.post("/transfers", json=transfer("ada", "bob", 101)),
        HTTPStatus.CONFLICT,
        "InsufficientFundsError",
    )
    assert detail == "account 'ada' holds 100, less than 101"
    once = transfer("ada", "bob", 30)
    assert (await client.post("/transfers", json=once)).status_code == HTTPStatus.CREATED
    detail = problem(
        await client.post("/transfers", json=once), HTTPStatus.CONFLICT, "KeyExistsError"
    )
    assert once["id"] in detail

    # What pydantic refuses never reaches the store.
    same = await client.post("/transfers", json=transfer("ada", "ada", 10))
    assert same.status_code == HTTPStatus.UNPROCESSABLE_ENTITY
    assert "a transfer needs two accounts, got 'ada' twice" in same.text
    for amount in (0, -5):
        refused = await client.post("/transfers", json=transfer("ada", "bob", amount))
        assert refused.status_code == HTTPStatus.UNPROCESSABLE_ENTITY
    assert (
        await client.get("/transfers/not-a-uuid")
    ).status_code == HTTPStatus.UNPROCESSABLE_ENTITY
    detail = problem(
        await client.get("/accounts", params={"after": ""}),
        HTTPStatus.UNPROCESSABLE_ENTITY,
        "EncodeError",
    )
    assert "Accounts" in detail and "empty" in detail
    for limit in (0, 501):
        refused = await client.get("/accounts", params={"limit": limit})
        assert refused.status_code == HTTPStatus.UNPROCESSABLE_ENTITY

    # The one transfer that went through moved money once.
    assert await balances(client) == {"ada": 70, "bob": 30}


async def test_pagination_walks_every_page_with_writes_in_between(
    client: httpx.AsyncClient,
) -> None:
    """Accounts opened behind the cursor are not seen, those ahead are, those closed ahead
    are not, nor does closing the cursor's account matter; no page repeats or skips one:
    each page is what the store holds past the cursor at the time."""
    stored = {f"a-{n:03d}" for n in range(0, 80, 2)}
    await open_accounts(client, *(account(account_id) for account_id in sorted(stored)))
    limit = 7
    listed: list[str] = []
    cursor: str | None = None
    pages = 0
    seen_later: list[str] = []
    never_seen: list[str] = []
    while True:
        params: dict[str, Any] = {"limit": limit}
        if cursor is not None:
            params["after"] = cursor
        response = await client.get("/accounts", params=params)
        assert response.status_code == HTTPStatus.OK, response.text
        page = response.json()
        ids = [item["id"] for item in page["items"]]
        ahead = sorted(k for k in stored if cursor is None or k > cursor)
        assert ids == ahead[:limit], f"page {pages} after {cursor!r}"
        assert page["next"] == (ids[-1] if len(ahead) > limit else None)
        listed += ids
        pages += 1
        if page["next"] is None:
            break
        cursor = page["next"]
        n = int(cursor[2:])
        behind, just_ahead, far_ahead = f"a-{n - 1:03d}", f"a-{n + 1:03d}", f"a-{n + 4:03d}"
        await open_accounts(client, account(behind), account(just_ahead))
        stored |= {behind, just_ahead}
        seen_later.append(just_ahead)
        never_seen.append(behind)
        if pages == 2:
            # The cursor's own account closed: the next page still follows it.
            assert (await client.delete(f"/accounts/{cursor}")).status_code == 204
            stored.discard(cursor)
        if far_ahead in stored:
            assert (await client.delete(f"/accounts/{far_ahead}")).status_code == 204
            stored.discard(far_ahead)
            never_seen.append(far_ahead)

    assert pages >= 6
    assert listed == sorted(set(listed))
    assert len(set(listed) - stored) == 1  # the cursor closed after its page
    assert set(seen_later) <= set(listed)
    assert not set(never_seen) & set(listed)
    empty = await client.get("/accounts", params={"after": "zzz"})
    assert empty.json() == {"items": [], "next": None}


async def test_concurrent_transfers_conserve_the_total(client: httpx.AsyncClient) -> None:
    names = [f"acct-{n}" for n in range(8)]
    await open_accounts(client, *(account(name, 1_000) for name in names))
    rng = random.Random(14)
    orders: list[dict[str, Any]] = []
    for _ in range(40):
        source, target = rng.sample(names, 2)
        orders.append(
            {
                "id": str(uuid.uuid4()),
                "source": source,
                "target": target,
                "amount": rng.randint(1, 400),
            }
        )
    responses = await bounded(
        asyncio.gather(*(client.post("/transfers", json=order) for order in orders)), 60
    )
    expected = dict.fromkeys(names, 1_000)
    made = 0
    for order, response in zip(orders, responses, strict=True):
        if response.status_code == HTTPStatus.CREATED:
            made += 1
            expected[order["source"]] -= order["amount"]
            expected[order["target"]] += order["amount"]
        else:
            problem(response, HTTPStatus.CONFLICT, "InsufficientFundsError")
    assert made > 0
    final = await balances(client)
    assert final == expected
    assert sum(final.values()) == 8_000
    assert min(final.values()) >= 0


async def test_a_closed_store_is_503(location: str) -> None:
    """A request still coming in once the store is closed (the server shutting down)."""
    async with in_process(create_app(location)) as served:
        await open_accounts(served.client, account("ada"))
        await served.store.env.close()
        response = await served.client.get("/accounts/ada")
    assert problem(response, HTTPStatus.SERVICE_UNAVAILABLE, "ClosedError") == "Service Unavailable"
    assert response.headers["Retry-After"] == "1"


async def test_a_database_server_gone_away_is_503_without_its_address() -> None:
    if os.environ.get(SWITCH) == "0":
        pytest.skip(f"{SWITCH}=0: the tests that need PostgreSQL are skipped")
    # A server of its own, since this test stops it.
    server = await asyncio.to_thread(PostgresServer().start)
    try:
        async with in_process(create_app(server.url, reconnect_timeout=0.5)) as served:
            await open_accounts(served.client, account("ada"))
            await asyncio.to_thread(server.stop)
            response = await served.client.get("/accounts/ada")
    finally:
        await asyncio.to_thread(server.stop)
    detail = problem(response, HTTPStatus.SERVICE_UNAVAILABLE, "UnavailableError")
    assert detail == "Service Unavailable"
    assert response.headers["Retry-After"] == "1"
    assert "postgresql" not in response.text and str(server.port) not in response.text


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (KeyNotFoundError("k"), HTTPStatus.NOT_FOUND),
        (KeyExistsError("k"), HTTPStatus.CONFLICT),
        (UniqueViolationError("u"), HTTPStatus.CONFLICT),
        (InsufficientFundsError("f"), HTTPStatus.CONFLICT),
        (EncodeError("e"), HTTPStatus.UNPROCESSABLE_ENTITY),
        (ConflictError("c"), HTTPStatus.SERVICE_UNAVAILABLE),
        (ConnectionLostError("c"), HTTPStatus.SERVICE_UNAVAILABLE),
        (CommitUnknownError("c"), HTTPStatus.SERVICE_UNAVAILABLE),
        (UnavailableError("u"), HTTPStatus.SERVICE_UNAVAILABLE),
        (IndexNotReadyError("i"), HTTPStatus.SERVICE_UNAVAILABLE),
        (ClosedError("c"), HTTPStatus.SERVICE_UNAVAILABLE),
        (ReadersFullError("r"), HTTPStatus.SERVICE_UNAVAILABLE),
        (DiskFullError("d"), HTTPStatus.INSUFFICIENT_STORAGE),
        (DecodeError("d"), HTTPStatus.INTERNAL_SERVER_ERROR),
        (TransactionError("t"), HTTPStatus.INTERNAL_SERVER_ERROR),
        (DatabaseDroppedError("d"), HTTPStatus.INTERNAL_SERVER_ERROR),
        (RuntimeError("r"), HTTPStatus.INTERNAL_SERVER_ERROR),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Exception) else str(int(value)),
)
def test_every_error_has_its_status(error: Exception, status: HTTPStatus) -> None:
    assert status_for(error) is status
    response = problem_response(error)
    assert response.status_code == status
    body = bytes(response.body).decode()
    if status < HTTPStatus.INTERNAL_SERVER_ERROR:
        assert body == f'{{"detail":"{error}","error":"{type(error).__name__}"}}'
    else:
        # The message stays in the log: it may name the server and its user.
        assert body == f'{{"detail":"{status.phrase}","error":"{type(error).__name__}"}}'
    assert ("retry-after" in response.headers) is (status is HTTPStatus.SERVICE_UNAVAILABLE)


class Uvicorn:
    """``uvicorn examples.webservice.app:app`` in a subprocess on a free port of 127.0.0.1."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.log: list[str] = []

    @classmethod
    async def start(cls, location: str) -> tuple[Uvicorn, str]:
        """The server, once it listens, and its base URL."""
        environ = {**os.environ, "AIOLMDB_LOCATION": location}
        environ["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(ROOT), environ.get("PYTHONPATH")])
        )
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "uvicorn",
            "examples.webservice.app:app",
            "--host",
            "127.0.0.1",
            "--port",
            "0",  # uvicorn logs the port it was given
            "--no-access-log",
            cwd=ROOT,
            env=environ,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        server = cls(process)
        assert process.stderr is not None
        while True:
            line = (await bounded(process.stderr.readline(), 30)).decode()
            if not line:
                raise AssertionError(f"uvicorn exited before listening:\n{''.join(server.log)}")
            server.log.append(line)
            found = re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", line)
            if found:
                return server, found.group(1)

    async def stop(self) -> int:
        """Stop it as an operator would (SIGTERM): its lifespan closes the store."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        assert self.process.stderr is not None
        rest = await bounded(self.process.stderr.read(), 30)
        self.log.append(rest.decode())
        return await bounded(self.process.wait(), TIMEOUT)


async def test_behind_a_real_uvicorn_server(tmp_path: Path) -> None:
    location = str(tmp_path / "ledger")
    server, base_url = await Uvicorn.start(location)
    try:
        names = [f"acct-{n}" for n in range(4)]
        async with httpx.AsyncClient(base_url=base_url, timeout=TIMEOUT) as setup:
            assert (await setup.get("/health")).json() == {"status": "ok"}
            await open_accounts(setup, *(account(name, 500) for name in names))

        async def client_run(seed: int) -> list[tuple[dict[str, Any], int]]:
            """One client of its own (its own connections), making transfers in turn."""
            rng = random.Random(seed)
            outcomes = []
            async with httpx.AsyncClient(base_url=base_url, timeout=TIMEOUT) as client:
                for _ in range(15):
                    source, target = rng.sample(names, 2)
                    order = {
                        "id": str(uuid.uuid4()),
                        "source": source,
                        "target": target,
                        "amount": rng.randint(1, 300),
                    }
                    response = await client.post("/transfers", json=order)
                    if response.status_code != HTTPStatus.CREATED:
                        problem(response, HTTPStatus.CONFLICT, "InsufficientFundsError")
                    outcomes.append((order, response.status_code))
            return outcomes

        runs = await bounded(asyncio.gather(*(client_run(seed) for seed in range(6))), 120)
        expected = dict.fromkeys(names, 500)
        for order, status in (outcome for run in runs for outcome in run):
            if status == HTTPStatus.CREATED:
                expected[order["source"]] -= order["amount"]
                expected[order["target"]] += order["amount"]
        async with httpx.AsyncClient(base_url=base_url, timeout=TIMEOUT) as check:
            assert await balances(check) == expected
    finally:
        returncode = await server.stop()
    log = "".join(server.log)
    # Uvicorn shuts down cleanly, then ends by the signal it was sent, as its exit status.
    assert returncode == -signal.SIGTERM, log
    assert "Application shutdown complete." in log

    # The lifespan closed the environment: it opens again here, with every transfer in it.
    async with aiolmdb.open(location) as env:
        stored = {key: account.balance async for key, account in Accounts(env).items()}
    assert stored == expected
    assert sum(stored.values()) == 2_000
