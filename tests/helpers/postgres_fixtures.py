"""Fixtures of the suite's PostgreSQL server: one server for the whole run, started at
the first test that asks for it, and a schema of its own for each test.

With ``AIOLMDB_TEST_POSTGRES=0`` in the environment every test that needs PostgreSQL
is skipped, and no server is tried (for a machine without PostgreSQL 15's server
programs). Otherwise a server that cannot be started fails those tests, saying why.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from helpers.postgres import PostgresServer, PostgresServerError

__all__ = ["SWITCH", "postgres_server", "postgres_url"]

#: The environment variable that, set to ``0``, skips the tests that need PostgreSQL.
SWITCH = "AIOLMDB_TEST_POSTGRES"


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """The suite's PostgreSQL server, stopped (and its directory removed) at the end
    of the run, also when the run is interrupted."""
    if os.environ.get(SWITCH) == "0":
        pytest.skip(f"{SWITCH}=0: the tests that need PostgreSQL are skipped")
    server = PostgresServer()
    try:
        server.start()
    except PostgresServerError as exc:
        pytest.fail(
            f"PostgreSQL for the tests could not be started: {exc}\n"
            f"(set {SWITCH}=0 to skip the tests that need it)",
            pytrace=False,
        )
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """A libpq URL of a fresh schema on the suite's server: the unqualified tables that
    its connections create land in that schema, out of sight of other tests."""
    return postgres_server.schema_url()
