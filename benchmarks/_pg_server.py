"""Where the PostgreSQL workloads (P1-P6) find a server, and a schema of their own on it.

``--postgres URL`` names a server. Without it, a throwaway one is started at the
first PostgreSQL workload (``tests/helpers/postgres.py``'s ``PostgresServer``, run as
the ``postgres`` user when the suite runs as root) and stopped when the run ends;
it is configured like a durable server: ``fsync`` and ``full_page_writes`` on,
every other setting PostgreSQL's default (``synchronous_commit=on``). Each workload
works in a fresh schema, dropped afterwards. When the driver or the server
programs are missing, the workloads raise :class:`~benchmarks._harness.Skipped`
saying so, and the other workloads run on.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import itertools
import os
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ._harness import Row, Sizes, Skipped

__all__ = [
    "DURABLE",
    "PostgresSource",
    "check_url",
    "current_source",
    "on_postgres",
    "postgres_source",
]

#: What the throwaway server is started with, over the test helper's throwaway defaults.
DURABLE = {"fsync": "on", "full_page_writes": "on", "synchronous_commit": "on"}
#: The server settings the notes report, whoever started the server.
REPORTED = (
    "fsync",
    "full_page_writes",
    "synchronous_commit",
    "wal_level",
    "shared_buffers",
    "max_connections",
)
#: What the PostgreSQL workloads need installed (``pip install .[postgres]``).
DRIVER_MODULES = ("psycopg", "psycopg_pool", "greenlet")


class PostgresSource:
    """A PostgreSQL server for the workloads: the one at ``url``, else a throwaway one
    started on first use (``bindir``: where its programs are, default: found).

    A failure to provide one is remembered: every later workload is skipped
    with the same reason, without trying again.
    """

    def __init__(self, url: str | None = None, *, bindir: Path | None = None) -> None:
        if url is not None:
            check_url(url)
        self._given = url
        self._bindir = bindir
        self._server: Any = None  # a tests.helpers.postgres.PostgresServer, once started
        self._url: str | None = None
        self._refusal: Skipped | None = None
        self._schemas = itertools.count(1)
        self.described = False

    @property
    def throwaway(self) -> bool:
        """Whether the server is one this source started (and stops)."""
        return self._given is None

    def url(self) -> str:
        """The server's URL; raises :class:`Skipped` when there can be none here."""
        if self._refusal is not None:
            raise self._refusal
        if self._url is None:
            try:
                _require_driver()
                self._url = self._given or self._start()
            except Skipped as refusal:
                self._refusal = refusal
                raise
        return self._url

    def _start(self) -> str:
        try:
            helper = importlib.import_module("tests.helpers.postgres")
        except ImportError as exc:
            raise Skipped(
                f"no --postgres URL given, and the throwaway server's helper "
                f"(tests/helpers/postgres.py) cannot be imported: {exc}"
            ) from exc
        server = helper.PostgresServer(bindir=self._bindir, settings=DURABLE)
        try:
            server.start()
        except helper.PostgresServerError as exc:
            raise Skipped(
                f"no --postgres URL given, and no server could be started: {exc}"
            ) from exc
        self._server = server
        url: str = server.url
        return url

    @contextlib.contextmanager
    def schema(self, label: str) -> Iterator[str]:
        """A URL whose connections work in a fresh schema (``search_path``), dropped after."""
        import psycopg
        from psycopg import sql

        base = self.url()
        name = f"aiolmdb_bench_{label}_{os.getpid()}_{next(self._schemas)}"
        with psycopg.connect(base, autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
        joiner = "&" if "?" in base else "?"
        try:
            yield f"{base}{joiner}options={quote(f'-csearch_path={name}', safe='')}"
        finally:
            with psycopg.connect(base, autocommit=True) as admin:
                admin.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))

    def settle(self, url: str) -> None:
        """After a load: vacuum and analyse the schema's tables and write a checkpoint, so
        that neither autovacuum nor a checkpoint is billed to the contender measured then
        (the checkpoint is skipped where the user may not make one)."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(url, autocommit=True) as conn:
            tables = conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
            ).fetchall()
            for (table,) in tables:
                conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(sql.Identifier(table)))
            with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
                conn.execute("CHECKPOINT")

    def describe(self) -> str:
        """What the server is and how it is set, for the notes."""
        import psycopg
        import psycopg_pool

        with psycopg.connect(self.url(), autocommit=True) as conn:
            row = conn.execute(
                "SELECT current_setting('server_version'), "
                + ", ".join(f"current_setting('{name}')" for name in REPORTED)
            ).fetchone()
        assert row is not None
        version, *values = row
        settings = ", ".join(
            f"{name}={value}" for name, value in zip(REPORTED, values, strict=True)
        )
        who = (
            "a throwaway server started for the run on 127.0.0.1, data in a temporary "
            "directory on the same disk, defaults but for fsync and full_page_writes on"
            if self.throwaway
            else "the server given by --postgres"
        )
        return (
            f"PostgreSQL {version} ({who}): {settings}; psycopg {psycopg.__version__} "
            f"({psycopg.pq.__impl__} libpq wrapper), psycopg_pool {psycopg_pool.__version__}"
        )

    def close(self) -> None:
        """Stop the throwaway server, if one was started (a given one is left alone)."""
        server, self._server = self._server, None
        if server is not None:
            server.stop()


def check_url(url: str) -> None:
    """Raise ValueError if the workloads cannot use ``url``."""
    if "options=" in url:
        raise ValueError(
            f"{url}: the URL may not carry options=, which each PostgreSQL workload sets "
            "(to the search_path of a schema of its own)"
        )


def _require_driver() -> None:
    missing = [name for name in DRIVER_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise Skipped(
            f"{', '.join(missing)} not installed (pip install .[postgres] brings "
            "psycopg 3, psycopg_pool and greenlet)"
        )


_current: PostgresSource | None = None


@contextlib.contextmanager
def postgres_source(url: str | None) -> Iterator[PostgresSource]:
    """Make the PostgreSQL workloads run on ``url`` (None: a throwaway server, started if
    one of them runs), for the block; a throwaway server is stopped at its end."""
    global _current
    source = PostgresSource(url)
    before, _current = _current, source
    try:
        yield source
    finally:
        _current = before
        source.close()


def current_source() -> PostgresSource:
    """The source the PostgreSQL workloads use now (inside :func:`postgres_source`)."""
    if _current is None:
        raise RuntimeError(
            "the PostgreSQL workloads run inside benchmarks._pg_server.postgres_source()"
        )
    return _current


def on_postgres(name: str) -> Callable[[Sizes, list[str]], Coroutine[Any, Any, list[Row]]]:
    """The workload ``name`` of :mod:`benchmarks._postgres`, which imports the driver: it
    is imported when the workload runs, once a server (and the driver) was found, so
    that without them the workload is skipped, not failed."""

    async def run(sizes: Sizes, notes: list[str]) -> list[Row]:
        current_source().url()
        workloads = importlib.import_module("._postgres", __package__)
        rows: list[Row] = await getattr(workloads, name)(sizes, notes)
        return rows

    return run
