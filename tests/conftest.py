"""Shared fixtures: real LMDB environments in pytest's ``tmp_path``."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Coroutine, Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar

import lmdb
import pytest

import aiolmdb
import aiolmdb.storage.lmdb.engine as environment_module
from aiolmdb.coders import Buffer, Coder
from aiolmdb.storage.lmdb import LmdbEngine
from aiolmdb.storage.lmdb.session import WriteSession

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


def detached(coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
    """A task that does not inherit the caller's context (so not its transaction)."""
    return contextvars.Context().run(asyncio.create_task, coro)


class EnvFactory(Protocol):
    """Open an environment (closed at teardown); ``path`` defaults to a fresh directory."""

    def __call__(self, path: Path | None = None, **kwargs: Any) -> aiolmdb.AsyncEnvironment: ...


@pytest.fixture
def env_path(tmp_path: Path) -> Path:
    """Where the ``env`` fixture's environment lives."""
    return tmp_path / "env"


@pytest.fixture
async def env(env_path: Path) -> AsyncIterator[aiolmdb.AsyncEnvironment]:
    """An environment on ``tmp_path``, closed after the test."""
    environment = aiolmdb.open(env_path, map_size=256 * 1024 * 1024)
    try:
        yield environment
    finally:
        await bounded(environment.close())


@pytest.fixture
async def open_env(tmp_path: Path) -> AsyncIterator[EnvFactory]:
    """A factory of environments with any options, every one closed at teardown."""
    opened: list[aiolmdb.AsyncEnvironment] = []
    counter = 0

    def factory(path: Path | None = None, **kwargs: Any) -> aiolmdb.AsyncEnvironment:
        nonlocal counter
        if path is None:
            counter += 1
            path = tmp_path / f"env{counter}"
        environment = aiolmdb.open(path, **kwargs)
        opened.append(environment)
        return environment

    try:
        yield factory
    finally:
        for environment in opened:
            await bounded(environment.close())


class WriterGate:
    """Holds the writer thread busy (in a ``run(write=True)``) until released.

    While it is held, writes queue up behind it, so that they are applied
    together in the next group commit once it is released.
    """

    def __init__(self, db: aiolmdb.AsyncDatabase[Any, Any]) -> None:
        self._db = db
        self._started = threading.Event()
        self._release = threading.Event()
        self._task: asyncio.Task[bool] | None = None

    async def hold(self) -> None:
        def block(_: aiolmdb.DatabaseTxn[Any, Any]) -> bool:
            self._started.set()
            return self._release.wait(TIMEOUT)

        self._task = asyncio.create_task(self._db.run(block, write=True))
        started = await bounded(asyncio.to_thread(self._started.wait, TIMEOUT))
        assert started, "the writer thread never ran the gate"

    def let_go(self) -> None:
        """Let the writer go on, without waiting for it (from a callback, say)."""
        self._release.set()

    async def release(self) -> None:
        self.let_go()
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


@pytest.fixture
def sessions(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[WriteSession]]:
    """Records every write session (``env.transaction()``) begun during the test.

    Lets a test unstick the writer thread (abort a session nobody owns any
    more) so that a failing test does not hang the environment's close.
    """
    recorded: list[WriteSession] = []

    class RecordingSession(WriteSession):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            recorded.append(self)

    monkeypatch.setattr(environment_module, "WriteSession", RecordingSession)
    yield recorded


async def abort_orphans(recorded: list[WriteSession]) -> None:
    """Abort the recorded sessions that are still open."""
    for session in recorded:
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
