"""Set-up code that runs before ``asyncio.run``: databases and collections opened there
are opened at once (blocking) on every engine, and usable once the loop runs."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from conftest import EngineKind
from helpers.accounts import Account, Accounts

import aiolmdb
from aiolmdb.storage.locations import MEMORY


@pytest.mark.parametrize("kind", list(EngineKind), ids=[kind.value for kind in EngineKind])
def test_databases_and_collections_opened_before_the_loop_work_in_it(
    kind: EngineKind, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    location: str | Path
    if kind is EngineKind.LMDB:
        location = tmp_path / "env"
    elif kind is EngineKind.MEMORY:
        location = MEMORY
    else:
        location = request.getfixturevalue("postgres_url")
    env = aiolmdb.open(location)
    # No event loop runs: each open (the collection's index catalog too) is made now.
    assert env.open_db("plain").access.keyspace.ready
    accounts = Accounts(env)
    assert accounts.access.keyspace.ready

    async def use() -> None:
        try:
            await env.open_db("plain").put(b"k", b"v")
            await accounts.put(1, Account(id=1, email="a@x", bio="b"))
            assert await accounts.by_email.get("a@x") == Account(id=1, email="a@x", bio="b")
            assert await env.open_db("plain").get(b"k") == b"v"
        finally:
            await env.close()

    asyncio.run(use())
