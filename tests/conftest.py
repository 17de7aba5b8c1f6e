"""Shared fixtures: environments on every engine (LMDB in pytest's ``tmp_path``, memory,
PostgreSQL in a schema of its own on the suite's server)."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import enum
import os
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, Protocol, TypeVar

import lmdb
import psycopg
import pytest
from helpers.postgres_fixtures import postgres_server, postgres_url

import aiolmdb
from aiolmdb.coders import Buffer, Coder
from aiolmdb.storage import Capabilities
from aiolmdb.storage.lmdb import LmdbEngine
from aiolmdb.storage.lmdb.session import WriteSession
from aiolmdb.storage.locations import MEMORY
from aiolmdb.storage.memory import MemoryEngine
from aiolmdb.storage.memory.session import MemorySession
from aiolmdb.storage.memory.writer import WriterHold
from aiolmdb.storage.postgres import PostgresEngine
from aiolmdb.storage.postgres.session import PostgresSession

__all__ = ["postgres_server", "postgres_url"]  # fixtures for every test module

T = TypeVar("T")

#: Upper bound for anything awaited that could deadlock if the engine is broken.
TIMEOUT = 10.0


async def bounded(aw: Awaitable[T], timeout: float = TIMEOUT) -> T:
    """Await ``aw``, failing the test (TimeoutError) instead of hanging."""
    return await asyncio.wait_for(aw, timeout=timeout)


def lmdb_engine(env: aiolmdb.AsyncEnvironment) -> LmdbEngine:
    """The LMDB engine of ``env``, for tests of what only it has."""
    assert isinstance(env.engine, LmdbEngine), f"{env!r} is not on LMDB"
    return env.engine


def memory_engine(env: aiolmdb.AsyncEnvironment) -> MemoryEngine:
    """The memory engine of ``env``, for tests of what only it has."""
    assert isinstance(env.engine, MemoryEngine), f"{env!r} is not in memory"
    return env.engine


def open_sessions(
    env: aiolmdb.AsyncEnvironment,
) -> tuple[WriteSession | MemorySession | PostgresSession, ...]:
    """The write sessions of ``env`` open or waiting to begin, on any engine."""
    if isinstance(env.engine, MemoryEngine | PostgresEngine):
        return env.engine.sessions
    return lmdb_engine(env).sessions


def queued_writes(env: aiolmdb.AsyncEnvironment) -> int:
    """Work waiting for the writer of ``env``, on any engine (on PostgreSQL, where writes
    run side by side, the writes under way)."""
    if isinstance(env.engine, PostgresEngine):
        return env.engine.writes_in_flight
    if isinstance(env.engine, MemoryEngine):
        return env.engine.queued_writes
    return lmdb_engine(env).queued_writes


def detached(coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
    """A task that does not inherit the caller's context (so not its transaction)."""
    return contextvars.Context().run(asyncio.create_task, coro)


class EnvFactory(Protocol):
    """Open an environment (closed at teardown); ``path`` defaults to a fresh directory.

    ``lmdb_options`` are given on LMDB only: tuning (map size, batch sizes) a
    test wants there, with nothing to tune on the other engines.
    """

    def __call__(
        self,
        path: Path | None = None,
        *,
        lmdb_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> aiolmdb.AsyncEnvironment: ...


class EngineKind(enum.Enum):
    """The engines every behaviour test runs on (the ids of the ``env`` fixtures)."""

    LMDB = "lmdb"
    MEMORY = "memory"
    POSTGRES = "postgresql"


#: What each engine declares it supports beyond the common API.
CAPABILITIES: dict[EngineKind, Capabilities] = {
    EngineKind.LMDB: LmdbEngine.capabilities,
    EngineKind.MEMORY: MemoryEngine.capabilities,
    EngineKind.POSTGRES: PostgresEngine.capabilities,
}

_CAPABILITY_NAMES = frozenset(field.name for field in dataclasses.fields(Capabilities))


def _needed(node: pytest.Item) -> list[str]:
    """The capabilities the test declares it needs (``@pytest.mark.needs(...)``)."""
    names: list[str] = []
    for marker in node.iter_markers("needs"):
        for name in marker.args:
            if name not in _CAPABILITY_NAMES:
                known = ", ".join(sorted(_CAPABILITY_NAMES))
                raise pytest.UsageError(
                    f"{node.nodeid}: needs({name!r}) names no capability (known: {known})"
                )
            names.append(name)
    return names


def skip_unless_supported(node: pytest.Item, kind: EngineKind) -> None:
    """Skip the test on ``kind`` if it is LMDB-only or needs what ``kind`` lacks."""
    if kind is not EngineKind.LMDB and node.get_closest_marker("lmdb_only") is not None:
        pytest.skip(f"{kind.value} engine: the test is about LMDB's own mechanism")
    capabilities = CAPABILITIES[kind]
    for name in _needed(node):
        if not getattr(capabilities, name):
            pytest.skip(f"{kind.value} engine lacks the capability {name}")


@pytest.fixture(params=list(EngineKind), ids=[kind.value for kind in EngineKind])
def engine_kind(request: pytest.FixtureRequest) -> EngineKind:
    """The engine the test runs on: every test using ``env`` or ``open_env`` runs on each."""
    kind: EngineKind = request.param
    skip_unless_supported(request.node, kind)
    return kind


@pytest.fixture
def env_path(tmp_path: Path) -> Path:
    """Where the LMDB ``env`` fixture's environment lives (for LMDB-only tests)."""
    return tmp_path / "env"


@pytest.fixture
async def env(
    engine_kind: EngineKind, env_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[aiolmdb.AsyncEnvironment]:
    """An environment on each engine (LMDB on ``env_path``, PostgreSQL in a fresh schema),
    closed after the test."""
    if engine_kind is EngineKind.LMDB:
        environment = aiolmdb.open(env_path, map_size=256 * 1024 * 1024)
    elif engine_kind is EngineKind.POSTGRES:
        environment = aiolmdb.open(request.getfixturevalue("postgres_url"))
    else:
        environment = aiolmdb.open(MEMORY)
    try:
        yield environment
    finally:
        await bounded(environment.close())


@pytest.fixture
async def open_env(
    engine_kind: EngineKind, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[EnvFactory]:
    """A factory of environments on each engine, every one closed at teardown.

    On LMDB it takes any option and a path (a fresh directory by default);
    on memory it opens a fresh store, so a test that passes LMDB options or
    reopens a path declares what it needs (``needs("durable")``, ...). On
    PostgreSQL a path stands for a schema: the same path opens the same one.
    """
    opened: list[aiolmdb.AsyncEnvironment] = []
    counter = 0
    schemas: dict[Path | None, str] = {}

    def factory(
        path: Path | None = None,
        *,
        lmdb_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> aiolmdb.AsyncEnvironment:
        nonlocal counter
        if engine_kind is EngineKind.MEMORY:
            if path is not None:
                raise AssertionError(
                    f"memory engine: open_env({path}) reopens a path, which only a durable "
                    "engine keeps: declare needs('durable')"
                )
            environment = aiolmdb.open(MEMORY, **kwargs)
        elif engine_kind is EngineKind.POSTGRES:
            if path is None or path not in schemas:
                server = request.getfixturevalue("postgres_server")
                url = server.schema_url()
                if path is None:
                    environment = aiolmdb.open(url, **kwargs)
                    opened.append(environment)
                    return environment
                schemas[path] = url
            environment = aiolmdb.open(schemas[path], **kwargs)
        else:
            if path is None:
                counter += 1
                path = tmp_path / f"env{counter}"
            environment = aiolmdb.open(path, **(lmdb_options or {}), **kwargs)
        opened.append(environment)
        return environment

    try:
        yield factory
    finally:
        for environment in opened:
            await bounded(environment.close())


class WriterGate:
    """Holds the writer busy until released.

    While it is held, writes queue up behind it, so that they are applied
    together in the next group commit once it is released. On LMDB it is a
    ``run(write=True)`` on the writer thread; on memory, the engine's
    ``hold_writer()``; on PostgreSQL, which has no single writer, a lock on the
    records' table that every write waits for.
    """

    def __init__(self, db: aiolmdb.AsyncDatabase[Any, Any]) -> None:
        self._db = db
        self._started = threading.Event()
        self._release = threading.Event()
        self._task: asyncio.Task[bool] | None = None
        self._hold: WriterHold | None = None
        self._lock: psycopg.AsyncConnection[Any] | None = None
        self._unlocking: asyncio.Future[None] | None = None

    async def hold(self) -> None:
        engine = self._db.env.engine
        if isinstance(engine, MemoryEngine):
            self._hold = engine.hold_writer()
            return
        if isinstance(engine, PostgresEngine):
            # Every write waits for the lock (reads do not): writes pile up in flight.
            await self._db.count()  # the tables exist
            self._lock = await psycopg.AsyncConnection.connect(engine.description)
            await self._lock.execute("BEGIN")
            await self._lock.execute("LOCK TABLE aiolmdb_records IN EXCLUSIVE MODE")
            return

        def block(_: aiolmdb.DatabaseTxn[Any, Any]) -> bool:
            self._started.set()
            return self._release.wait(TIMEOUT)

        self._task = asyncio.create_task(self._db.run(block, write=True))
        started = await bounded(asyncio.to_thread(self._started.wait, TIMEOUT))
        assert started, "the writer thread never ran the gate"

    def let_go(self) -> None:
        """Let the writer go on, without waiting for it (from a callback, say)."""
        self._release.set()
        if self._hold is not None:
            self._hold.release()
        if self._lock is not None:
            lock, self._lock = self._lock, None
            self._unlocking = asyncio.ensure_future(lock.close())  # the lock goes with it

    async def release(self) -> None:
        lock, self._lock = self._lock, None
        self.let_go()
        if lock is not None:
            await lock.close()
        if self._task is not None:
            assert await bounded(self._task)


#: How long the busy job holds the writer at most: code that blocks the loop
#: on the writer is held this long, and then fails the checks.
HOLD = 1.0


class BusyWriter:
    """Keeps the writer thread in one ``run(write=True)`` until released (or ``HOLD`` s)."""

    def __init__(self, db: aiolmdb.AsyncDatabase[Any, Any]) -> None:
        self._started = threading.Event()
        self._release = threading.Event()
        self._timed_out = False

        def job(_: aiolmdb.DatabaseTxn[Any, Any]) -> None:
            self._started.set()
            self._timed_out = not self._release.wait(HOLD)

        self.task = asyncio.ensure_future(db.run(job, write=True))

    async def started(self) -> None:
        assert await bounded(asyncio.to_thread(self._started.wait, TIMEOUT))

    def still_busy(self) -> bool:
        """True while the job holds the writer (it was neither released nor timed out)."""
        return not self._release.is_set() and not self._timed_out and not self.task.done()

    async def release(self) -> None:
        self._release.set()
        await bounded(self.task)


async def ticks_during(body: Callable[[], Awaitable[None]]) -> int:
    """How many times another task ran while ``body`` ran (counted from inside it)."""
    ticks = 0
    stop = False

    async def ticker() -> None:
        nonlocal ticks
        while not stop:
            ticks += 1
            await asyncio.sleep(0)

    async def measured() -> int:
        before = ticks
        await body()
        return ticks - before

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    try:
        return await bounded(measured())
    finally:
        stop = True
        await bounded(task)


class Ticker:
    """Counts 1 ms ticks of the event loop."""

    def __init__(self) -> None:
        self.ticks = 0
        self._task = asyncio.ensure_future(self._tick())

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(0.001)
            self.ticks += 1

    def stop(self) -> None:
        self._task.cancel()


class WhereDecoded(Coder[bytes]):
    """Bytes as they are, recording on which threads they were decoded."""

    def __init__(self) -> None:
        self.on_loop: list[bool] = []

    def serialize(self, obj: bytes) -> bytes:
        return obj

    def deserialize(self, buf: Buffer) -> bytes:
        self.on_loop.append(threading.current_thread() is threading.main_thread())
        return bytes(buf)


async def first_value(db: aiolmdb.AsyncDatabase[bytes, bytes]) -> bytes | None:
    first = await db.first()
    return None if first is None else first[1]


async def abort_orphans(env: aiolmdb.AsyncEnvironment) -> None:
    """Abort the write sessions of ``env`` still open.

    Lets a test unstick the writer (abort a session nobody owns any more) so
    that a failing test does not hang the environment's close.
    """
    for session in open_sessions(env):
        if not session.ended:
            with contextlib.suppress(aiolmdb.TransactionError, TimeoutError):
                await bounded(session.abort(), timeout=2)


def raw_records(path: Path, name: str | None) -> dict[bytes, bytes]:
    """Every record of one database, read with plain py-lmdb.

    Checks what an environment left on disk without going through aiolmdb;
    the aiolmdb environment at ``path`` must be closed.
    """
    environment = lmdb.open(os.fspath(path), max_dbs=128)
    try:
        try:
            handle = environment.open_db(None if name is None else name.encode(), create=False)
        except lmdb.NotFoundError:
            return {}
        with environment.begin() as txn:
            return {bytes(k): bytes(v) for k, v in txn.cursor(db=handle)}
    finally:
        environment.close()


# The typing cases (tests/typing/*.yml) run mypy in a temporary directory: point
# it at our stubs, and at the mypy installed beside this interpreter.
def _prepend(variable: str, entry: str) -> None:
    os.environ[variable] = os.pathsep.join(p for p in (entry, os.environ.get(variable, "")) if p)


_prepend("MYPYPATH", str(Path(__file__).resolve().parents[1] / "stubs"))
_prepend("PATH", str(Path(sys.executable).parent))
