"""The first call on a PostgreSQL environment, which opens its pool and checks the layout.

It fails with aiolmdb's errors, never the driver's; and when it failed because the
server could not be reached, a later call, once the server is back, works.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import psycopg
import pytest
from conftest import TIMEOUT, bounded
from helpers.cutting_proxy import CuttingProxy
from helpers.postgres import PostgresServer

import aiolmdb

#: The environment's wait for a connection (``aiolmdb.open``'s reconnect_timeout).
RECONNECT_TIMEOUT = 1.0


@pytest.fixture
async def proxy(postgres_server: PostgresServer) -> AsyncIterator[CuttingProxy]:
    async with CuttingProxy("127.0.0.1", postgres_server.port) as cutting:
        yield cutting


async def put_once_back(open_db: Callable[[], aiolmdb.AsyncDatabase[bytes, bytes]]) -> None:
    """``open_db().put(b"k", b"v")``, made again while the environment finds no connection
    (the pool may take a few seconds to try connecting again), for up to :data:`TIMEOUT`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    while True:
        try:
            await bounded(open_db().put(b"k", b"v"))
            return
        except aiolmdb.UnavailableError:
            if loop.time() > deadline:
                raise


async def out_of_reach_at_first(
    env: aiolmdb.AsyncEnvironment, proxy: CuttingProxy
) -> aiolmdb.AsyncDatabase[bytes, bytes]:
    """The environment's first call (on the database returned), with the server out of
    reach, fails; then the server is back."""
    proxy.refuse()
    first = env.open_db("first")
    with pytest.raises(aiolmdb.UnavailableError) as raised:
        await bounded(first.put(b"k", b"v"))
    assert not isinstance(raised.value, psycopg.Error)
    proxy.admit()
    return first


async def test_a_server_out_of_reach_at_the_first_call_is_used_once_it_is_back(
    proxy: CuttingProxy, postgres_url: str
) -> None:
    async with aiolmdb.open(proxy.url(postgres_url), reconnect_timeout=RECONNECT_TIMEOUT) as env:
        await out_of_reach_at_first(env, proxy)
        # Opened anew at each attempt: a database opened while no connection could be
        # made stays unusable (the test below).
        await put_once_back(lambda: env.open_db("later"))
        assert await bounded(env.open_db("later").get(b"k")) == b"v"


async def test_a_database_opened_while_the_server_was_out_of_reach_works_once_it_is_back(
    proxy: CuttingProxy, postgres_url: str
) -> None:
    async with aiolmdb.open(proxy.url(postgres_url), reconnect_timeout=RECONNECT_TIMEOUT) as env:
        first = await out_of_reach_at_first(env, proxy)
        await put_once_back(lambda: first)
        assert await bounded(first.get(b"k")) == b"v"


async def test_a_search_path_naming_no_schema_fails_the_first_call_with_an_aiolmdb_error(
    postgres_server: PostgresServer,
) -> None:
    url = f"{postgres_server.url}?options=-csearch_path%3Dno_such_schema"
    async with aiolmdb.open(url, reconnect_timeout=RECONNECT_TIMEOUT) as env:
        db = env.open_db()
        with pytest.raises(aiolmdb.AiolmdbError) as raised:
            await bounded(db.put(b"k", b"v"))
    assert not isinstance(raised.value, psycopg.Error), repr(raised.value)
    message = str(raised.value)
    assert "no schema has been selected to create in" in message, message
    assert "no_such_schema" in message, message  # the environment is named
