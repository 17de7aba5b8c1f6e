"""A throwaway PostgreSQL server for the test suite, started by the tests themselves.

:class:`PostgresServer` runs ``initdb`` into a fresh temporary directory and starts
``postgres`` on a free port of 127.0.0.1, trusting connections on its own Unix socket
and on 127.0.0.1 only. PostgreSQL refuses to run as root, so as root every server
program runs as the ``postgres`` user (``runuser -u postgres --``) in directories that
user owns; otherwise as the current user. Each test gets a schema of its own
(:meth:`PostgresServer.schema_url`).

Stopping (``pg_ctl stop -m fast``, then removing the directory) is the job of a guard
process (``postgres_guard.py``), started before ``initdb``: :meth:`PostgresServer.stop`
tells it to, and the death of the test process wakes it too, so that a run that is
interrupted or killed leaves no server behind.
"""

from __future__ import annotations

import enum
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow

__all__ = ["DEFAULT_BINDIR", "PostgresServer", "PostgresServerError", "ServerState", "find_bindir"]

#: Where Debian puts PostgreSQL 15's server programs, for when ``pg_config`` is absent.
DEFAULT_BINDIR = Path("/usr/lib/postgresql/15/bin")
#: The server programs used.
PROGRAMS = ("initdb", "pg_ctl", "postgres")
#: Who runs the server programs when the tests run as root.
SERVER_USER = "postgres"
#: The database superuser, whoever runs the server.
SUPERUSER = "postgres"
GUARD = Path(__file__).with_name("postgres_guard.py")

#: For a throwaway server on a small machine: its data dies with the run, so nothing
#: is made durable; a suite opens many pools, so connections are plenty.
SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "fsync": "off",
    "full_page_writes": "off",
    "max_connections": "200",
}

#: Replaces initdb's, which also trusts ::1 and replication connections.
HBA = """\
local all all trust
host all all 127.0.0.1/32 trust
"""

#: A port found free may be taken before the server binds it: try a few.
PORT_ATTEMPTS = 3
#: Seconds for ``pg_ctl stop -m fast`` to wait for the server to exit.
STOP_WAIT = 60


class ServerState(enum.Enum):
    """Where a :class:`PostgresServer` is in its life (it starts at most once)."""

    NEW = "new"
    RUNNING = "running"
    STOPPED = "stopped"


class PostgresServerError(RuntimeError):
    """The server could not be started or stopped; the message says what was wrong."""


def find_bindir() -> Path:
    """The directory of PostgreSQL's server programs: ``pg_config --bindir``, else
    :data:`DEFAULT_BINDIR`.

    Raises :class:`PostgresServerError` naming the programs missing from each place.
    """
    places: list[tuple[Path, str]] = []
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        answer = subprocess.run(
            [pg_config, "--bindir"], capture_output=True, text=True, check=False
        )
        if answer.returncode == 0 and answer.stdout.strip():
            places.append((Path(answer.stdout.strip()), "pg_config --bindir"))
    places.append((DEFAULT_BINDIR, "the default"))
    lacks = []
    for bindir, source in places:
        missing = _missing_programs(bindir)
        if not missing:
            return bindir
        lacks.append(f"{', '.join(missing)} not in {bindir} ({source})")
    if pg_config is None:
        lacks.append("no pg_config on PATH")
    raise PostgresServerError(
        "PostgreSQL's server programs were not found: "
        + "; ".join(lacks)
        + " (on Debian they come with the postgresql-15 package)"
    )


def _missing_programs(bindir: Path) -> list[str]:
    return [name for name in PROGRAMS if not os.access(bindir / name, os.X_OK)]


def _server_user() -> tuple[pwd.struct_passwd | None, list[str]]:
    """Who runs the server programs (None: the current user), and the words that run
    a command as them."""
    if os.geteuid() != 0:
        return None, []
    try:
        owner = pwd.getpwnam(SERVER_USER)
    except KeyError:
        raise PostgresServerError(
            f"PostgreSQL refuses to run as root, and there is no {SERVER_USER!r} user to "
            "run it as (on Debian the postgresql-common package creates it)"
        ) from None
    runuser = shutil.which("runuser")
    if runuser is None:
        raise PostgresServerError(
            f"PostgreSQL refuses to run as root, and there is no runuser on PATH to run "
            f"it as {SERVER_USER!r} (it comes with util-linux)"
        )
    return owner, [runuser, "-u", owner.pw_name, "--"]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class PostgresServer:
    """A PostgreSQL server in a temporary directory of its own, for tests.

    Use as a context manager, or call :meth:`start` and :meth:`stop`. ``bindir`` is
    where the server programs are (default: :func:`find_bindir`); ``ready_timeout``
    bounds the seconds the server has to accept connections once started;
    ``settings`` (server parameters, e.g. ``{"fsync": "on"}``) override
    :data:`SETTINGS`, for a server that must behave like a durable one.
    """

    def __init__(
        self,
        *,
        bindir: Path | None = None,
        ready_timeout: float = 60.0,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        self._state = ServerState.NEW
        self._bindir = bindir
        self._ready_timeout = ready_timeout
        self._settings = {**SETTINGS, **(settings or {})}
        self._directory: Path | None = None
        self._port: int | None = None
        self._guard: subprocess.Popen[bytes] | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._admin: psycopg.Connection[TupleRow] | None = None
        self._schemas = itertools.count(1)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def state(self) -> ServerState:
        """Whether the server is yet to start, running, or stopped for good."""
        return self._state

    @property
    def directory(self) -> Path:
        """The temporary directory holding the server's data, socket and log."""
        if self._directory is None:
            raise PostgresServerError("the server has no directory before start()")
        return self._directory

    @property
    def data_directory(self) -> Path:
        """The cluster's data directory (``initdb -D``)."""
        return self.directory / "data"

    @property
    def socket_directory(self) -> Path:
        """Where the server puts its Unix socket (a directory the server's user owns)."""
        return self.directory / "socket"

    @property
    def log_path(self) -> Path:
        """The server's log (its stderr)."""
        return self.directory / "server.log"

    @property
    def port(self) -> int:
        """The TCP port the server listens on, on 127.0.0.1."""
        if self._port is None:
            raise PostgresServerError("the server has no port before start()")
        return self._port

    @property
    def url(self) -> str:
        """A libpq URL of the server's ``postgres`` database, as the superuser."""
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/postgres"

    @property
    def pid(self) -> int:
        """The process id of the running server (its postmaster)."""
        pidfile = self.data_directory / "postmaster.pid"
        try:
            return int(pidfile.read_text().split("\n", 1)[0])
        except FileNotFoundError:
            raise PostgresServerError(f"no server runs in {self.data_directory}") from None

    def start(self) -> PostgresServer:
        """Create the cluster, start the server and wait until it accepts connections.

        Raises :class:`PostgresServerError` saying what failed; nothing is left behind
        then. A server starts once: ``start()`` on a started one raises too.
        """
        if self._state is not ServerState.NEW:
            raise PostgresServerError(
                f"start() on a server that is {self.state.value}: a server starts once"
            )
        try:
            self._start()
        except BaseException:
            self._state = ServerState.STOPPED
            self._shut_down()
            raise
        self._state = ServerState.RUNNING
        return self

    def stop(self) -> None:
        """Stop the server (``pg_ctl stop -m fast``) and remove its directory.

        Doing nothing when already stopped (or never started); raises
        :class:`PostgresServerError` when the server would not stop.
        """
        if self._state is ServerState.STOPPED:
            return
        self._state = ServerState.STOPPED
        self._shut_down()

    def schema_url(self) -> str:
        """Create a fresh schema ``t_<n>`` and return a URL of it.

        Connections opened from the URL have ``search_path`` set to that schema alone
        (libpq's ``options``), so the unqualified tables they create land there.
        """
        if self._admin is None:
            raise PostgresServerError(f"schema_url() on a server that is {self.state.value}")
        schema = f"t_{next(self._schemas)}"
        self._admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        return f"{self.url}?options={quote(f'-csearch_path={schema}', safe='')}"

    def _start(self) -> None:
        bindir = self._bindir if self._bindir is not None else find_bindir()
        missing = _missing_programs(bindir)
        if missing:
            raise PostgresServerError(f"{', '.join(missing)} not in {bindir}")
        owner, runner = _server_user()
        self._directory = Path(tempfile.mkdtemp(prefix="aiolmdb-pg-"))
        self.socket_directory.mkdir()
        if owner is not None:
            for path in (self.directory, self.socket_directory):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        stop_command = [
            *runner,
            str(bindir / "pg_ctl"),
            "stop",
            f"--pgdata={self.data_directory}",
            "--mode=fast",
            "--wait",
            f"--timeout={STOP_WAIT}",
        ]
        self._guard = subprocess.Popen(
            [
                sys.executable,
                str(GUARD),
                str(self.directory),
                str(self.data_directory / "postmaster.pid"),
                *stop_command,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self._init_cluster(runner, bindir)
        if owner is not None:
            os.chown(self.data_directory / "pg_hba.conf", owner.pw_uid, owner.pw_gid)
        for _ in range(PORT_ATTEMPTS):
            if self._launch(runner, bindir):
                return
        raise PostgresServerError(
            f"no free port on 127.0.0.1 after {PORT_ATTEMPTS} tries: {self._log_tail()}"
        )

    def _init_cluster(self, runner: list[str], bindir: Path) -> None:
        created = subprocess.run(
            [
                *runner,
                str(bindir / "initdb"),
                f"--pgdata={self.data_directory}",
                f"--username={SUPERUSER}",
                "--auth=trust",
                "--encoding=UTF8",
                # Byte order for text, whatever locales the machine has.
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
            # As root the user's working directory may be closed to the server's user.
            cwd=self.directory,
        )
        if created.returncode != 0:
            raise PostgresServerError(
                f"initdb failed (exit {created.returncode}): {created.stdout}{created.stderr}"
            )
        (self.data_directory / "pg_hba.conf").write_text(HBA)

    def _launch(self, runner: list[str], bindir: Path) -> bool:
        """Start the server on a free port; False when the port was taken meanwhile."""
        self._port = _free_port()
        settings = {
            **self._settings,
            "port": str(self._port),
            "unix_socket_directories": str(self.socket_directory),
        }
        options = [f"--{name}={value}" for name, value in settings.items()]
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [*runner, str(bindir / "postgres"), "-D", str(self.data_directory), *options],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
                # Stopped by the guard alone, not by a Ctrl-C meant for the test run.
                start_new_session=True,
            )
        if self._await_ready(self._process):
            return True
        if "could not bind" in self._log_tail():
            return False
        raise PostgresServerError(
            f"postgres exited with {self._process.returncode} before accepting "
            f"connections: {self._log_tail()}"
        )

    def _await_ready(self, process: subprocess.Popen[bytes]) -> bool:
        """Wait for the server to accept connections; False if it exited first."""
        deadline = time.monotonic() + self._ready_timeout
        while process.poll() is None:
            try:
                admin = psycopg.connect(self.url, autocommit=True, connect_timeout=5)
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    raise PostgresServerError(
                        f"the server did not accept connections on {self.url} within "
                        f"{self._ready_timeout} s ({exc}): {self._log_tail()}"
                    ) from None
                time.sleep(0.05)
                continue
            # Another server may have taken the port, with ours about to fail to bind.
            answer = admin.execute("SHOW data_directory").fetchone()
            if answer == (str(self.data_directory),):
                self._admin = admin
                return True
            admin.close()
            process.wait(timeout=self._ready_timeout)
        process.wait()
        return False

    def _log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no server log)"
        return "\n".join(text.splitlines()[-lines:])

    def _shut_down(self) -> None:
        if self._admin is not None:
            self._admin.close()
            self._admin = None
        guard, self._guard = self._guard, None
        if guard is None:
            # Nothing ran yet, so there is at most an empty directory.
            if self._directory is not None:
                shutil.rmtree(self._directory, ignore_errors=True)
            return
        try:
            _, complaint = guard.communicate(b"stop\n", timeout=STOP_WAIT + 30)
        except subprocess.TimeoutExpired:
            raise PostgresServerError(
                f"the server in {self._directory} was still stopping after {STOP_WAIT + 30} s"
            ) from None
        if self._process is not None:
            # The server is gone: what is left is runuser (or nothing) about to exit.
            self._process.wait(timeout=30)
        if guard.returncode != 0:
            reason = complaint.decode(errors="replace")
            raise PostgresServerError(f"the server in {self._directory} did not stop: {reason}")
