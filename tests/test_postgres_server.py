"""The suite's PostgreSQL server (``tests/helpers/postgres.py``) and its fixtures.

The server answers on 127.0.0.1 with the settings it was given; schema URLs keep
tests apart; stopping it (by :meth:`PostgresServer.stop`, at the end of a pytest run,
or by its guard when the test process is killed) ends the server and removes its
directory. The last two run in child processes of their own.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import psycopg
import pytest
from helpers.postgres import PostgresServer, PostgresServerError, ServerState
from helpers.postgres_fixtures import SWITCH

HELPERS = Path(__file__).parent / "helpers"
#: Upper bound for a child run or a cleanup that could hang if the helper is broken.
DEADLINE = 120.0


def running(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def schema_of(url: str) -> str:
    """The schema a URL of :meth:`PostgresServer.schema_url` names in its options."""
    (options,) = parse_qs(urlsplit(url).query)["options"]
    assert options.startswith("-csearch_path="), url
    return options.removeprefix("-csearch_path=")


def child_environment(**extra: str) -> dict[str, str]:
    """The environment of a child that imports the helpers as the tests do."""
    path = os.pathsep.join(filter(None, [str(HELPERS.parent), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, **extra}


def test_server_answers_on_loopback_with_its_settings(
    postgres_server: PostgresServer,
) -> None:
    with psycopg.connect(postgres_server.url) as conn:
        row = conn.execute(
            "SELECT current_user, current_database(), host(inet_server_addr()),"
            " inet_server_port(), current_setting('server_version_num')::int / 10000,"
            " current_setting('server_encoding'), current_setting('listen_addresses'),"
            " current_setting('fsync'), current_setting('full_page_writes'),"
            " current_setting('max_connections')"
        ).fetchone()
        rules = conn.execute(
            "SELECT type, database, user_name, address, auth_method FROM pg_hba_file_rules"
        ).fetchall()
    assert row == (
        "postgres",
        "postgres",
        "127.0.0.1",
        postgres_server.port,
        15,
        "UTF8",
        "127.0.0.1",
        "off",
        "off",
        "200",
    )
    assert rules == [
        ("local", ["all"], ["all"], None, "trust"),
        ("host", ["all"], ["all"], "127.0.0.1", "trust"),
    ]
    assert postgres_server.state is ServerState.RUNNING
    assert postgres_server.url == f"postgresql://postgres@127.0.0.1:{postgres_server.port}/postgres"


def test_settings_given_override_the_throwaway_defaults() -> None:
    with (
        PostgresServer(settings={"fsync": "on", "full_page_writes": "on"}) as server,
        psycopg.connect(server.url) as conn,
    ):
        row = conn.execute(
            "SELECT current_setting('fsync'), current_setting('full_page_writes'),"
            " current_setting('max_connections'), current_setting('listen_addresses')"
        ).fetchone()
    assert row == ("on", "on", "200", "127.0.0.1")


def test_schema_urls_keep_unqualified_tables_apart(
    postgres_server: PostgresServer,
) -> None:
    first, second = postgres_server.schema_url(), postgres_server.schema_url()
    schemas = [schema_of(first), schema_of(second)]
    assert schemas[0] != schemas[1]
    assert all(name.startswith("t_") for name in schemas)
    assert f"?options=-csearch_path%3D{schemas[0]}" in first
    for url, schema, value in [(first, schemas[0], 1), (second, schemas[1], 2)]:
        with psycopg.connect(url) as conn:
            assert conn.execute("SHOW search_path").fetchone() == (schema,)
            conn.execute("CREATE TABLE x (v int)")
            conn.execute("INSERT INTO x VALUES (%s)", (value,))
    for url, value in [(first, 1), (second, 2)]:
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT v FROM x").fetchall() == [(value,)]
    with psycopg.connect(postgres_server.url) as conn:
        homes = conn.execute(
            "SELECT table_schema FROM information_schema.tables"
            " WHERE table_name = 'x' ORDER BY table_schema"
        ).fetchall()
        assert conn.execute("SELECT to_regclass('x')").fetchone() == (None,)
    assert homes == [(name,) for name in sorted(schemas)]


def test_postgres_url_fixture_gives_an_empty_schema(postgres_url: str) -> None:
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT current_schema()").fetchone() == (schema_of(postgres_url),)
        tables = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = current_schema()"
        ).fetchone()
    assert tables == (0,)


def test_stop_ends_the_server_and_removes_its_directory() -> None:
    server = PostgresServer()
    with server:
        pid, directory, url = server.pid, server.directory, server.url
        assert running(pid)
        assert (directory / "data" / "PG_VERSION").read_text() == "15\n"
    assert server.state is ServerState.STOPPED
    assert not running(pid)
    assert not directory.exists()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=2)
    server.stop()  # stopping again does nothing
    with pytest.raises(PostgresServerError, match="start\\(\\) on a server that is stopped"):
        server.start()
    with pytest.raises(PostgresServerError, match="schema_url\\(\\) on a server that is stopped"):
        server.schema_url()


def test_missing_server_programs_are_named(tmp_path: Path) -> None:
    with pytest.raises(PostgresServerError) as raised:
        PostgresServer(bindir=tmp_path).start()
    assert str(raised.value) == f"initdb, pg_ctl, postgres not in {tmp_path}"


def test_a_killed_test_process_leaves_no_server() -> None:
    program = textwrap.dedent(
        """
        import os, signal
        from helpers.postgres import PostgresServer
        server = PostgresServer().start()
        print(server.pid, server.directory, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    child = subprocess.run(
        [sys.executable, "-c", program],
        env=child_environment(),
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=False,
    )
    assert child.returncode == -9, child.stderr
    pid_text, directory_text = child.stdout.split()
    pid, directory = int(pid_text), Path(directory_text)
    deadline = time.monotonic() + DEADLINE
    while (running(pid) or directory.exists()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not running(pid)
    assert not directory.exists()


INNER_TESTS = """
from helpers.postgres_fixtures import postgres_server, postgres_url

def test_first(postgres_server, postgres_url):
    print("SERVER", postgres_server.pid, postgres_server.directory)
    assert postgres_url.endswith("options=-csearch_path%3Dt_1")

def test_second(postgres_url):
    assert postgres_url.endswith("options=-csearch_path%3Dt_2")
"""


def run_inner_tests(tmp_path: Path, **environment: str) -> subprocess.CompletedProcess[str]:
    """A pytest run, in a child process, of two tests that use the fixtures."""
    (tmp_path / "test_inner.py").write_text(INNER_TESTS)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "test_inner.py"],
        cwd=tmp_path,
        env=child_environment(**environment),
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=False,
    )


def test_a_pytest_run_shares_one_server_and_stops_it_at_the_end(tmp_path: Path) -> None:
    run = run_inner_tests(tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "2 passed" in run.stdout
    (line,) = [line for line in run.stdout.splitlines() if "SERVER" in line]
    _, pid_text, directory_text = line[line.index("SERVER") :].split()
    assert not running(int(pid_text))
    assert not Path(directory_text).exists()


def test_switch_off_skips_the_tests_that_need_postgres(tmp_path: Path) -> None:
    run = run_inner_tests(tmp_path, **{SWITCH: "0"})
    assert run.returncode == 0, run.stdout + run.stderr
    assert "2 skipped" in run.stdout
    assert "SERVER" not in run.stdout
