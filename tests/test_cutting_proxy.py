"""The cutting proxy (``tests/helpers/cutting_proxy.py``) between psycopg and the suite's server.

It forwards a session whole, recognises the engine's commit of a marker, and cuts
there as armed: the server commits or not, the client learns nothing either way.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import psycopg
import pytest
from conftest import bounded
from helpers.cutting_proxy import (
    Afterwards,
    Cut,
    CutMode,
    CuttingProxy,
    ProxyError,
    commit_marker,
    proxied_url,
)
from helpers.postgres import PostgresServer
from psycopg.rows import TupleRow

from aiolmdb.storage.postgres.layout import Sql

Server = psycopg.AsyncConnection[TupleRow]


@pytest.fixture
async def proxy(postgres_server: PostgresServer) -> AsyncIterator[CuttingProxy]:
    async with CuttingProxy("127.0.0.1", postgres_server.port) as cutting:
        yield cutting


@pytest.fixture
async def server(postgres_url: str) -> AsyncIterator[Server]:
    """A connection straight to the test's schema, holding a table of markers."""
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
        await conn.execute("CREATE TABLE aiolmdb_commits (id uuid PRIMARY KEY)")
        yield conn


async def markers(server: Server) -> list[str]:
    cursor = await server.execute("SELECT id::text FROM aiolmdb_commits ORDER BY id")
    return [marker for (marker,) in await cursor.fetchall()]


async def commit_through(proxy: CuttingProxy, url: str, marker: str) -> None:
    """Open a transaction through ``proxy`` and commit it as the engine does."""
    async with await psycopg.AsyncConnection.connect(proxy.url(url), autocommit=True) as conn:
        await conn.execute("BEGIN")
        await conn.execute(Sql.commit_with_marker(marker), prepare=False)


def test_the_engine_s_commit_is_recognised_with_its_marker() -> None:
    marker = str(uuid.uuid4())
    assert commit_marker(Sql.commit_with_marker(marker).encode()) == marker
    assert commit_marker(b"COMMIT") is None
    assert commit_marker(Sql.FORGET_MARKERS.encode()) is None
    with pytest.raises(ProxyError, match="without a marker"):
        commit_marker(b"INSERT INTO aiolmdb_commits (id) VALUES ($1); COMMIT")


def test_a_proxied_url_keeps_user_database_and_options() -> None:
    url = "postgresql://postgres@127.0.0.1:5432/postgres?options=-csearch_path%3Dt_1"
    assert proxied_url(url, 6000) == (
        "postgresql://postgres@127.0.0.1:6000/postgres"
        "?options=-csearch_path%3Dt_1&sslmode=disable&gssencmode=disable"
    )


async def test_unarmed_it_forwards_whole_sessions(
    proxy: CuttingProxy, postgres_url: str, server: Server
) -> None:
    marker = str(uuid.uuid4())
    await bounded(commit_through(proxy, postgres_url, marker))
    assert await markers(server) == [marker]
    assert proxy.commits_sent == [marker]
    assert proxy.cuts == []


@pytest.mark.parametrize(
    ("mode", "committed"),
    [(CutMode.CUT_AFTER_SENDING, True), (CutMode.CUT_BEFORE_SENDING, False)],
    ids=["after sending", "before sending"],
)
async def test_a_cut_leaves_the_client_without_an_answer_and_the_server_as_the_mode_says(
    proxy: CuttingProxy, postgres_url: str, server: Server, mode: CutMode, committed: bool
) -> None:
    cut, after = str(uuid.uuid4()), str(uuid.uuid4())
    proxy.arm(mode)
    with pytest.raises(psycopg.OperationalError, match="server closed the connection"):
        await bounded(commit_through(proxy, postgres_url, cut))
    assert await markers(server) == ([cut] if committed else [])
    assert proxy.cuts == [Cut(mode, cut)]

    await bounded(commit_through(proxy, postgres_url, after))  # armed for one cut only
    assert set(await markers(server)) == ({cut, after} if committed else {after})


async def test_a_held_commit_reaches_the_server_when_sent(
    proxy: CuttingProxy, postgres_url: str, server: Server
) -> None:
    marker = str(uuid.uuid4())
    proxy.arm(CutMode.CUT_THEN_SEND_LATE)
    with pytest.raises(psycopg.OperationalError):
        await bounded(commit_through(proxy, postgres_url, marker))
    assert await markers(server) == []
    await bounded(proxy.send_held())
    assert await markers(server) == [marker]
    with pytest.raises(ProxyError, match="no Query is held"):
        await proxy.send_held()


async def test_refusing_after_the_cut_closes_every_connection(
    proxy: CuttingProxy, postgres_url: str, server: Server
) -> None:
    url = proxy.url(postgres_url)
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as idle:
        proxy.arm(CutMode.CUT_BEFORE_SENDING, then=Afterwards.REFUSE)
        with pytest.raises(psycopg.OperationalError):
            await bounded(commit_through(proxy, postgres_url, str(uuid.uuid4())))
        with pytest.raises(psycopg.OperationalError):
            await bounded(idle.execute("SELECT 1"))
    with pytest.raises(psycopg.OperationalError):
        await bounded(psycopg.AsyncConnection.connect(url, connect_timeout=5))


async def test_refused_connections_are_forwarded_again_once_admitted(
    proxy: CuttingProxy, postgres_url: str, server: Server
) -> None:
    marker = str(uuid.uuid4())
    proxy.refuse()
    with pytest.raises(psycopg.OperationalError, match="server closed the connection"):
        await bounded(commit_through(proxy, postgres_url, marker))
    proxy.admit()
    await bounded(commit_through(proxy, postgres_url, marker))
    assert await markers(server) == [marker]
