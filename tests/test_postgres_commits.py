"""A commit whose answer was lost is never applied twice, nor reported lost when it was made.

The environment reaches the suite's PostgreSQL server through a proxy
(``helpers/cutting_proxy.py``) that cuts the connection at a commit: after the
server committed, before it got the commit, or while it is still making it.
The engine then asks a new connection whether the commit's marker is in
``aiolmdb_commits``; these tests check what the calls return or raise, and
what the server holds, read on connections of their own that bypass the proxy.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import psycopg
import pytest
from conftest import TIMEOUT, bounded
from helpers.cutting_proxy import Afterwards, CutMode, CuttingProxy
from helpers.postgres import PostgresServer
from psycopg.rows import TupleRow

import aiolmdb
from aiolmdb.coders import Int64Coder, StringCoder

#: The engine's wait for a connection after a cut (``aiolmdb.open``'s reconnect_timeout).
RECONNECT_TIMEOUT = 5.0
#: The same, for the tests in which the server stays out of reach (they wait it out).
UNREACHABLE_TIMEOUT = 1.0
#: The advisory lock a stalled commit waits for (see :func:`stall_commits`).
STALL_LOCK = 731_204_918
#: Seconds between two looks at the server while waiting for a state of it.
POLL = 0.01

Counters = aiolmdb.AsyncDatabase[str, int]
#: A connection straight to the server, past the proxy.
Server = psycopg.AsyncConnection[TupleRow]


@pytest.fixture
async def proxy(postgres_server: PostgresServer) -> AsyncIterator[CuttingProxy]:
    """A cutting proxy to the suite's server, unarmed."""
    async with CuttingProxy("127.0.0.1", postgres_server.port) as cutting:
        yield cutting


@pytest.fixture
async def server(postgres_url: str) -> AsyncIterator[Server]:
    """A connection straight to the test's schema (autocommit), to see what the server holds."""
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
        yield conn


async def open_proxied(
    proxy: CuttingProxy, url: str, reconnect_timeout: float = RECONNECT_TIMEOUT
) -> tuple[aiolmdb.AsyncEnvironment, Counters]:
    """An environment through ``proxy`` and its counter ``n``, stored as 0."""
    env = aiolmdb.open(proxy.url(url), reconnect_timeout=reconnect_timeout)
    counters = env.open_db("counters", key_coder=StringCoder(), value_coder=Int64Coder())
    await bounded(counters.put("n", 0))
    return env, counters


@pytest.fixture
async def proxied(
    proxy: CuttingProxy, postgres_url: str
) -> AsyncIterator[tuple[aiolmdb.AsyncEnvironment, Counters]]:
    """An environment through the proxy (reconnect_timeout :data:`RECONNECT_TIMEOUT`)
    with its counter ``n`` at 0, closed after the test."""
    env, counters = await open_proxied(proxy, postgres_url)
    try:
        yield env, counters
    finally:
        await bounded(env.close())


async def stored_count(url: str) -> int | None:
    """The counter ``n`` as the server holds it, read without the proxy."""
    async with aiolmdb.open(url) as env:
        counters = env.open_db("counters", key_coder=StringCoder(), value_coder=Int64Coder())
        return await bounded(counters.get("n"))


async def count(server: Server, query: str, params: tuple[object, ...]) -> int:
    """The ``count(*)`` that ``query`` selects."""
    cursor = await server.execute(query, params)
    row = await cursor.fetchone()
    assert row is not None
    found: int = row[0]
    return found


async def has_marker(server: Server, marker: str) -> bool:
    """Whether ``aiolmdb_commits`` holds ``marker`` (committed, or claimed as not applied)."""
    query = "SELECT count(*) FROM aiolmdb_commits WHERE id = %s"
    return await count(server, query, (marker,)) == 1


async def until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Wait until ``check()`` holds; fail the test, naming ``what``, after :data:`TIMEOUT`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"still not {what} after {TIMEOUT} s")
        await asyncio.sleep(POLL)


def increment(n: int) -> int:
    return n + 1


def assert_ours(exc: BaseException) -> None:
    """``exc`` is an aiolmdb error, not the driver's."""
    assert isinstance(exc, aiolmdb.AiolmdbError), repr(exc)
    assert not isinstance(exc, psycopg.Error), repr(exc)


# -- auto-commit writes ----------------------------------------------------------


async def test_an_update_whose_answer_was_lost_after_the_commit_is_applied_once(
    proxied: tuple[aiolmdb.AsyncEnvironment, Counters],
    proxy: CuttingProxy,
    postgres_url: str,
    server: Server,
) -> None:
    _, counters = proxied
    sent = len(proxy.commits_sent)
    proxy.arm(CutMode.CUT_AFTER_SENDING)

    assert await bounded(counters.update("n", increment)) == 1

    (cut,) = proxy.cuts
    assert cut.mode is CutMode.CUT_AFTER_SENDING
    assert proxy.commits_sent[sent:] == [cut.marker]  # committed once, never sent again
    assert await has_marker(server, cut.marker)
    assert await stored_count(postgres_url) == 1
    assert await bounded(counters.update("n", increment)) == 2  # the environment goes on


async def test_an_insert_whose_answer_was_lost_after_the_commit_is_not_run_again(
    proxied: tuple[aiolmdb.AsyncEnvironment, Counters], proxy: CuttingProxy, server: Server
) -> None:
    # Run again, the insert would find its own record and raise KeyExistsError.
    _, counters = proxied
    sent = len(proxy.commits_sent)
    proxy.arm(CutMode.CUT_AFTER_SENDING)

    await bounded(counters.insert("m", 7))

    (cut,) = proxy.cuts
    assert proxy.commits_sent[sent:] == [cut.marker]
    assert await has_marker(server, cut.marker)
    assert await bounded(counters.get("m")) == 7


async def test_an_update_whose_commit_never_reached_the_server_is_run_again_once(
    proxied: tuple[aiolmdb.AsyncEnvironment, Counters],
    proxy: CuttingProxy,
    postgres_url: str,
    server: Server,
) -> None:
    _, counters = proxied
    sent = len(proxy.commits_sent)
    proxy.arm(CutMode.CUT_BEFORE_SENDING)

    assert await bounded(counters.update("n", increment)) == 1

    (cut,) = proxy.cuts
    (again,) = proxy.commits_sent[sent:]  # the run after the cut, with a marker of its own
    assert again != cut.marker
    # The lost one's marker is claimed (so that its commit can never happen any more).
    assert await has_marker(server, cut.marker)
    assert await has_marker(server, again)
    assert await stored_count(postgres_url) == 1


async def cut_and_claimed(proxy: CuttingProxy, server: Server) -> bool:
    """Whether the proxy cut a commit, and its marker is in ``aiolmdb_commits``."""
    return bool(proxy.cuts) and await has_marker(server, proxy.cuts[0].marker)


async def test_a_commit_reaching_the_server_after_it_was_claimed_is_refused_there(
    proxied: tuple[aiolmdb.AsyncEnvironment, Counters],
    proxy: CuttingProxy,
    postgres_url: str,
    server: Server,
) -> None:
    # The commit is still on its way when the engine asks: the claim writes the marker,
    # so the late commit fails on it, and the run after the cut is the only one applied.
    _, counters = proxied
    proxy.arm(CutMode.CUT_THEN_SEND_LATE)

    update = asyncio.ensure_future(counters.update("n", increment))
    await until(lambda: cut_and_claimed(proxy, server), "cut and claimed")
    await bounded(proxy.send_held())  # the late commit ends; the run after the cut may go on
    assert await bounded(update) == 1

    (cut,) = proxy.cuts
    assert cut.marker in proxy.commits_sent  # the late commit did reach the server
    assert await stored_count(postgres_url) == 1


# -- a commit still being made when its connection is lost --------------------------


async def stall_commits(server: Server) -> None:
    """Make every commit of a marker wait, at COMMIT, for the advisory lock
    :data:`STALL_LOCK` while ``server`` holds it (taken here), as a commit waits for
    a synchronous standby: the marker is written, the commit not yet made (whatever
    lock_timeout the session has)."""
    await server.execute(
        "CREATE FUNCTION stall_commit() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN PERFORM set_config('lock_timeout', '0', true); "
        f"PERFORM pg_advisory_xact_lock({STALL_LOCK}); RETURN NULL; END $$"
    )
    await server.execute(
        "CREATE CONSTRAINT TRIGGER stall_commit AFTER INSERT ON aiolmdb_commits "
        "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION stall_commit()"
    )
    await server.execute("SELECT pg_advisory_lock(%s)", (STALL_LOCK,))


async def waiting_for_a_transaction(server: Server) -> int:
    """How many sessions of the server wait for another transaction to end (as an
    insert of a key waits for the transaction that inserted it first)."""
    query = (
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND wait_event = %s"
    )
    return await count(server, query, ("transactionid",))


async def pids_waiting(server: Server) -> list[int]:
    """The sessions waiting for :data:`STALL_LOCK`: stalled commits."""
    cursor = await server.execute(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND objid = %s",
        (STALL_LOCK,),
    )
    return [pid for (pid,) in await cursor.fetchall()]


class StalledEnd(enum.Enum):
    """How a stalled commit ends."""

    COMMITTED = "committed"
    #: Its session is terminated (as a server going down mid-commit ends it).
    KILLED = "killed"


@pytest.mark.parametrize("end", list(StalledEnd), ids=[end.value for end in StalledEnd])
async def test_asking_about_a_commit_in_flight_waits_for_it(
    proxied: tuple[aiolmdb.AsyncEnvironment, Counters],
    proxy: CuttingProxy,
    postgres_url: str,
    server: Server,
    end: StalledEnd,
) -> None:
    # The claim waits on the marker the stalled commit wrote: committed, the write is
    # done (not run again); killed with its session, the write is run again. Once.
    _, counters = proxied
    await stall_commits(server)
    sent = len(proxy.commits_sent)
    proxy.arm(CutMode.CUT_WHEN_TOLD)

    update = asyncio.ensure_future(counters.update("n", increment))

    async def stalled() -> bool:
        return len(await pids_waiting(server)) == 1

    async def claim_waits() -> bool:
        return await waiting_for_a_transaction(server) == 1

    await until(stalled, "a commit stalled")
    (stalled_pid,) = await pids_waiting(server)
    proxy.cut_client()
    await until(claim_waits, "a claim waiting for the stalled commit")
    assert not update.done()
    if end is StalledEnd.KILLED:
        await server.execute("SELECT pg_terminate_backend(%s)", (stalled_pid,))
    await server.execute("SELECT pg_advisory_unlock(%s)", (STALL_LOCK,))
    assert await bounded(update) == 1

    (cut,) = proxy.cuts
    if end is StalledEnd.COMMITTED:
        assert proxy.commits_sent[sent:] == [cut.marker]
    else:
        assert len(proxy.commits_sent[sent:]) == 2  # run again after the claim
    assert await has_marker(server, cut.marker)
    assert await stored_count(postgres_url) == 1


# -- env.transaction() and env.transact ---------------------------------------------


async def test_a_transaction_whose_answer_was_lost_after_the_commit_exits_normally(
    proxied: tuple[aiolmdb.AsyncEnvironment, Counters],
    proxy: CuttingProxy,
    postgres_url: str,
    server: Server,
) -> None:
    env, counters = proxied
    sent = len(proxy.commits_sent)
    proxy.arm(CutMode.CUT_AFTER_SENDING)

    async with env.transaction():
        assert await counters.update("n", increment) == 1
        await counters.put("other", 5)

    (cut,) = proxy.cuts
    assert proxy.commits_sent[sent:] == [cut.marker]
    assert await has_marker(server, cut.marker)
    assert await stored_count(postgres_url) == 1
    assert await bounded(counters.get("other")) == 5


async def test_a_transaction_whose_commit_never_reached_the_server_raises_connection_lost(
    proxied: tuple[aiolmdb.AsyncEnvironment, Counters],
    proxy: CuttingProxy,
    postgres_url: str,
    server: Server,
) -> None:
    env, counters = proxied
    proxy.arm(CutMode.CUT_BEFORE_SENDING)

    with pytest.raises(aiolmdb.ConnectionLostError) as raised:
        async with env.transaction():
            await counters.update("n", increment)
            await counters.put("other", 5)

    assert isinstance(raised.value, aiolmdb.RetryableError)
    assert_ours(raised.value)
    message = str(raised.value)
    assert "the commit did not happen: nothing of it was applied" in message, message
    assert "run it again" in message, message
    (cut,) = proxy.cuts
    assert await has_marker(server, cut.marker)  # claimed: it can never commit now
    assert await stored_count(postgres_url) == 0
    assert await bounded(counters.get("other")) is None
    assert env.current_transaction() is None


@pytest.mark.parametrize(
    ("mode", "runs"),
    [(CutMode.CUT_BEFORE_SENDING, 2), (CutMode.CUT_AFTER_SENDING, 1)],
    ids=["before sending", "after sending"],
)
async def test_transact_runs_the_function_again_only_when_the_commit_did_not_happen(
    proxied: tuple[aiolmdb.AsyncEnvironment, Counters],
    proxy: CuttingProxy,
    postgres_url: str,
    mode: CutMode,
    runs: int,
) -> None:
    env, counters = proxied
    calls = 0

    async def add_one() -> int:
        nonlocal calls
        calls += 1
        return await counters.update("n", increment)

    proxy.arm(mode)
    assert await bounded(env.transact(add_one)) == 1

    assert calls == runs
    assert len(proxy.cuts) == 1
    assert await stored_count(postgres_url) == 1


# -- the server out of reach after the cut ------------------------------------------


async def update_in_transaction(env: aiolmdb.AsyncEnvironment, counters: Counters) -> None:
    async with env.transaction():
        await counters.update("n", increment)


async def update_alone(env: aiolmdb.AsyncEnvironment, counters: Counters) -> None:
    await counters.update("n", increment)


@pytest.mark.parametrize("write", [update_alone, update_in_transaction], ids=["alone", "session"])
@pytest.mark.parametrize(
    ("mode", "applied"),
    [(CutMode.CUT_AFTER_SENDING, True), (CutMode.CUT_BEFORE_SENDING, False)],
    ids=["after sending", "before sending"],
)
async def test_a_lost_commit_the_server_cannot_be_asked_about_raises_commit_unknown(
    proxy: CuttingProxy,
    postgres_url: str,
    server: Server,
    write: Callable[[aiolmdb.AsyncEnvironment, Counters], Awaitable[None]],
    mode: CutMode,
    applied: bool,
) -> None:
    env, counters = await open_proxied(proxy, postgres_url, UNREACHABLE_TIMEOUT)
    try:
        proxy.arm(mode, then=Afterwards.REFUSE)
        loop = asyncio.get_running_loop()
        began = loop.time()
        with pytest.raises(aiolmdb.CommitUnknownError) as raised:
            await bounded(write(env, counters), UNREACHABLE_TIMEOUT + TIMEOUT)
        waited = loop.time() - began
    finally:
        await bounded(env.close())

    assert_ours(raised.value)
    (cut,) = proxy.cuts
    message = str(raised.value)
    assert f"it happened if aiolmdb_commits holds the row {cut.marker!r}" in message, message
    assert "could not be asked since whether the commit happened" in message, message
    assert "its outcome is unknown" in message, message
    assert waited >= UNREACHABLE_TIMEOUT  # it kept trying for the whole reconnect_timeout
    assert await has_marker(server, cut.marker) is applied
    assert await stored_count(postgres_url) == (1 if applied else 0)


def with_options(url: str, *settings: str) -> str:
    """``url`` with ``-c`` settings added to its ``options``."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query["options"] = " ".join([query.get("options", ""), *(f"-c{s}" for s in settings)]).strip()
    return urlunsplit(parts._replace(query=urlencode(query, quote_via=quote)))


@pytest.mark.parametrize("write", [update_alone, update_in_transaction], ids=["alone", "session"])
async def test_a_claim_that_times_out_waiting_for_a_commit_in_flight_raises_commit_unknown(
    proxy: CuttingProxy,
    postgres_url: str,
    server: Server,
    write: Callable[[aiolmdb.AsyncEnvironment, Counters], Awaitable[None]],
) -> None:
    # lock_timeout (set here in the URL, as applications set it) ends the claim's wait
    # for the stalled commit: whether that commit happens is then unknown.
    url = with_options(postgres_url, "lock_timeout=100ms")
    env, counters = await open_proxied(proxy, url, UNREACHABLE_TIMEOUT)
    try:
        await stall_commits(server)
        proxy.arm(CutMode.CUT_WHEN_TOLD)
        update = asyncio.ensure_future(write(env, counters))

        async def stalled() -> bool:
            return len(await pids_waiting(server)) == 1

        await until(stalled, "a commit stalled")
        proxy.cut_client()
        with pytest.raises(aiolmdb.CommitUnknownError) as raised:
            await bounded(update, UNREACHABLE_TIMEOUT + TIMEOUT)
        await server.execute("SELECT pg_advisory_unlock(%s)", (STALL_LOCK,))
    finally:
        await bounded(env.close())

    assert_ours(raised.value)
    (cut,) = proxy.cuts
    assert f"it happened if aiolmdb_commits holds the row {cut.marker!r}" in str(raised.value)
    await until(lambda: has_marker(server, cut.marker), "the stalled commit made")
    assert await stored_count(postgres_url) == 1
