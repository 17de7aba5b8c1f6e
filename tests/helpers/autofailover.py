"""A real high-availability PostgreSQL cluster on loopback, for failover tests.

pg_auto_failover runs a monitor, a primary and a synchronous standby, each a
``pg_autoctl run`` process owned by the test process, in a temporary directory::

    with FailoverCluster() as cluster:          # started, synchronous, ready
        psycopg.connect(cluster.url)            # reaches whichever node is primary
        killed = cluster.kill_primary()         # SIGKILL of every process of that node
        seconds = cluster.wait_failover(60.0)   # the other node is primary and commits

The monitor's health checks are shortened, so a failover takes seconds rather
than a minute. While both data nodes run, the primary acknowledges a commit only
once the standby has it; after a failover the promoted node commits alone
(pg_auto_failover's ``wait_primary``) until a standby joins it again, and none
does here.

Every method blocks; call them through ``asyncio.to_thread`` from asyncio code.
Waits are bounded, and a wait that runs out raises :class:`ClusterTimeout`
with the monitor's view of the nodes. A guard process (``autofailover_guard.py``)
stops the cluster and removes its directory when told to, and also when the test
process dies without cleaning up. The server tools refuse root, so they run as the
``postgres`` user through ``runuser``: that needs root and ``pg_autoctl``
(Debian: ``postgresql-15-auto-failover``); :func:`unavailable` says what is
missing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from types import TracebackType
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg

from helpers.postgres import SERVER_USER, find_bindir

__all__ = [
    "ClusterError",
    "ClusterTimeout",
    "FailoverCluster",
    "Health",
    "Node",
    "NodeState",
    "NodeStatus",
    "tear_down",
    "unavailable",
]

HOST = "127.0.0.1"
#: libpq's per-host connect timeout in every URL given out, in seconds.
CONNECT_TIMEOUT = 2
#: How long one ``pg_autoctl`` command may take (``create`` runs initdb or a base backup).
COMMAND_TIMEOUT = 60.0
#: Pause between two looks at the cluster while waiting.
POLL_INTERVAL = 0.1
#: How long a probe's commit may wait (for a standby's acknowledgement) before it counts
#: as not writable.
COMMIT_TIMEOUT = 5.0
#: Where this machine's PostgreSQL puts its Unix sockets; the server refuses to start
#: without it.
SOCKET_DIRECTORY = Path("/var/run/postgresql")
#: The program that stops the cluster when told to or when the test process dies.
GUARD = "helpers.autofailover_guard"

#: The monitor's health checks, shortened so that a dead primary is noticed within
#: seconds (with the defaults a failover takes about 50 s). Milliseconds, except retries.
MONITOR_SETTINGS = {
    "pgautofailover.health_check_period": 1000,
    "pgautofailover.health_check_timeout": 1000,
    "pgautofailover.health_check_max_retries": 1,
    "pgautofailover.health_check_retry_delay": 500,
    "pgautofailover.node_considered_unhealthy_timeout": 3000,
    "pgautofailover.primary_demote_timeout": 4000,
}
#: Seconds a keeper that reaches neither the monitor nor its peer waits before it
#: takes its Postgres for partitioned (default 20).
NETWORK_PARTITION_TIMEOUT = 2


class ClusterError(Exception):
    """The cluster is not as a step needs it; the message says how it was."""


class ClusterTimeout(ClusterError, TimeoutError):
    """A bounded wait on the cluster ran out; the message says how the cluster was."""


class NodeState(enum.Enum):
    """A state of pg_auto_failover's node state machine (its ``replication_state``)."""

    UNKNOWN = "unknown"
    INIT = "init"
    SINGLE = "single"
    WAIT_PRIMARY = "wait_primary"
    PRIMARY = "primary"
    DRAINING = "draining"
    DEMOTE_TIMEOUT = "demote_timeout"
    DEMOTED = "demoted"
    CATCHINGUP = "catchingup"
    SECONDARY = "secondary"
    PREPARE_PROMOTION = "prepare_promotion"
    STOP_REPLICATION = "stop_replication"
    WAIT_STANDBY = "wait_standby"
    MAINTENANCE = "maintenance"
    JOIN_PRIMARY = "join_primary"
    APPLY_SETTINGS = "apply_settings"
    PREPARE_MAINTENANCE = "prepare_maintenance"
    WAIT_MAINTENANCE = "wait_maintenance"
    REPORT_LSN = "report_lsn"
    FAST_FORWARD = "fast_forward"
    JOIN_SECONDARY = "join_secondary"
    DROPPED = "dropped"


#: The states in which a node is the writable primary of its group: alone (single),
#: without a synchronous standby (wait_primary), or with one (primary).
PRIMARY_STATES = frozenset({NodeState.SINGLE, NodeState.WAIT_PRIMARY, NodeState.PRIMARY})


class Health(enum.Enum):
    """What the monitor's last health check of a node found."""

    UNKNOWN = -1
    BAD = 0
    GOOD = 1


@dataclasses.dataclass(frozen=True)
class Node:
    """One node of the cluster: its port on 127.0.0.1 and its directory.

    Every process of the node (``pg_autoctl`` and Postgres) works in ``directory``,
    which is how the cluster finds them to kill them.
    """

    name: str
    port: int
    directory: Path

    @property
    def pgdata(self) -> Path:
        """The node's Postgres data directory."""
        return self.directory / "pgdata"

    @property
    def url(self) -> str:
        """A libpq URL of this node alone (as ``postgres``, database ``postgres``)."""
        return _with_query(
            f"postgresql://{SERVER_USER}@{HOST}:{self.port}/postgres",
            connect_timeout=str(CONNECT_TIMEOUT),
        )


@dataclasses.dataclass(frozen=True)
class NodeStatus:
    """A data node as the monitor sees it (a row of ``pg_autoctl show state``)."""

    node_id: int
    name: str
    port: int
    reported: NodeState
    assigned: NodeState
    health: Health

    def settled_in(self, states: Collection[NodeState]) -> bool:
        """Whether the node reached the state the monitor assigned it, one of ``states``."""
        return self.reported == self.assigned and self.reported in states

    def __str__(self) -> str:
        return (
            f"{self.name} (port {self.port}): reported {self.reported.value}, "
            f"assigned {self.assigned.value}, health {self.health.name.lower()}"
        )


def unavailable() -> str | None:
    """Why a cluster cannot start on this machine, or None when it can."""
    if os.geteuid() != 0:
        return "the server tools run as the postgres user through runuser, which needs root"
    try:
        pwd.getpwnam(SERVER_USER)
    except KeyError:
        return f"there is no {SERVER_USER} user"
    if shutil.which("pg_autoctl") is None:
        return "pg_autoctl is not installed (Debian: postgresql-15-auto-failover)"
    return None


class FailoverCluster:
    """A pg_auto_failover monitor, primary and synchronous standby on 127.0.0.1.

    Use it as a context manager: entering starts it and waits until it is ready
    (:meth:`start`), leaving stops every process and removes its directory
    (:meth:`close`), also when a test failed midway.

    The data nodes are ``nodes[0]`` (the first primary) and ``nodes[1]``; which one
    is primary now is :meth:`primary`. Connect through :attr:`url`, which finds
    the primary on its own, or to one node through its :attr:`Node.url`.
    """

    def __init__(self, *, ready_timeout: float = 90.0, stop_timeout: float = 20.0) -> None:
        """Make the cluster's directory, start its guard and choose its ports; no
        server runs yet.

        ``ready_timeout`` bounds :meth:`start` as a whole, ``stop_timeout`` the
        orderly stop in :meth:`close` before the rest is killed.
        """
        self._ready_timeout = ready_timeout
        self._stop_timeout = stop_timeout
        # realpath: processes' working directories are compared with it.
        self.directory = Path(os.path.realpath(tempfile.mkdtemp(prefix="failover-")))
        shutil.chown(self.directory, SERVER_USER, SERVER_USER)
        helpers = Path(__file__).resolve().parent
        self._guard = subprocess.Popen(
            [sys.executable, "-m", GUARD, str(self.directory), str(stop_timeout)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            # Outside the cluster's directory, or it would kill itself there.
            cwd=helpers,
            env={**os.environ, "PYTHONPATH": str(helpers.parent)},
            # A Ctrl-C meant for the test run must not end it before its work is done.
            start_new_session=True,
        )
        ports = _free_ports(3)
        self.monitor = self._node("monitor", ports[0])
        self.nodes = (self._node("node1", ports[1]), self._node("node2", ports[2]))
        self._runs: dict[Node, subprocess.Popen[bytes]] = {}
        self._url: str | None = None
        #: The node :meth:`kill_primary` killed, and when (``time.monotonic()``) it began.
        self.killed: Node | None = None
        self.killed_at: float | None = None

    def __enter__(self) -> FailoverCluster:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def url(self) -> str:
        """The libpq multi-host URL of both data nodes that connects to the primary.

        It is ``pg_autoctl show uri --formation default`` (both nodes,
        ``target_session_attrs=read-write``) with the user, ``sslmode=disable``
        and a ``connect_timeout`` added: libpq tries the nodes in turn and keeps
        the one that accepts writes.
        """
        if self._url is None:
            raise ClusterError("the cluster has not been started")
        return self._url

    @property
    def monitor_url(self) -> str:
        """The libpq URL of the monitor's database, ``pg_auto_failover``."""
        return _with_query(self._tool(self.monitor, "show", "uri", "--formation", "monitor"))

    def start(self) -> None:
        """Create and run the monitor and both data nodes, then :meth:`wait_ready`."""
        deadline = time.monotonic() + self._ready_timeout

        def left() -> float:
            return max(0.0, deadline - time.monotonic())

        _ensure_socket_directory()
        # Without SSL, and trusting every connection on loopback.
        shared = ("--pgctl", str(find_bindir() / "pg_ctl"), "--no-ssl", "--auth", "trust")
        self._tool(
            self.monitor,
            *("create", "monitor", "--pgport", str(self.monitor.port), "--hostname", HOST),
            *shared,
            timeout=left(),
        )
        # The monitor listens on every address unless told otherwise before its first run.
        self._tool(self.monitor, "config", "set", "postgresql.listen_addresses", HOST)
        # postgresql.conf includes pg_auto_failover's settings first, so what follows wins.
        with (self.monitor.pgdata / "postgresql.conf").open("a") as conf:
            conf.writelines(f"{name} = {value}\n" for name, value in MONITOR_SETTINGS.items())
        self._run(self.monitor)
        monitor_url = self.monitor_url
        for index, node in enumerate(self.nodes):
            self._tool(
                node,
                *("create", "postgres", "--name", node.name, "--pgport", str(node.port)),
                *("--listen", HOST, "--hostname", HOST, "--pghost", HOST),
                *("--monitor", monitor_url, "--replication-quorum", "true"),
                *shared,
                timeout=left(),
            )
            self._tool(
                node,
                *("config", "set", "timeout.network_partition_timeout"),
                str(NETWORK_PARTITION_TIMEOUT),
            )
            self._run(node)
            if index == 0:
                # The standby's base backup needs a running primary to copy.
                self._wait(
                    "the first node to run alone",
                    left(),
                    lambda: _missing_states(self.state(), {NodeState.SINGLE}),
                )
        self._url = _with_query(
            self._tool(self.monitor, "show", "uri", "--formation", "default"),
            user=SERVER_USER,
            connect_timeout=str(CONNECT_TIMEOUT),
        )
        self.wait_ready(left())

    def state(self) -> tuple[NodeStatus, ...]:
        """The data nodes as the monitor sees them (``pg_autoctl show state --json``)."""
        rows = json.loads(self._tool(self.monitor, "show", "state", "--json"))
        return tuple(
            NodeStatus(
                node_id=row["node_id"],
                name=row["nodename"],
                port=row["nodeport"],
                reported=NodeState(row["current_group_state"]),
                assigned=NodeState(row["assigned_group_state"]),
                health=Health(row["health"]),
            )
            for row in rows
        )

    def primary(self) -> Node:
        """The node the monitor has as primary now (settled in a primary state).

        Raises ClusterError, with the monitor's view, unless exactly one node is:
        during a failover none is.
        """
        return self._settled_in(PRIMARY_STATES, "primary")

    def secondary(self) -> Node:
        """The node the monitor has as the primary's standby now (ClusterError unless
        exactly one node is)."""
        return self._settled_in({NodeState.SECONDARY}, "secondary")

    def wait_ready(self, timeout: float) -> None:
        """Wait until one node is primary and the other its synchronous standby.

        Ready means: the monitor shows one node settled as ``primary`` and the
        other as ``secondary``, both found good by its health checks, and the
        primary has the standby in ``synchronous_standby_names`` and streams to it
        as a quorum standby, so that it acknowledges a commit only once the standby
        has it.
        """
        self._wait("the cluster to be ready", timeout, self._missing_for_ready)

    def kill_primary(self) -> Node:
        """SIGKILL every process of the primary's node, as if its machine died.

        Its ``pg_autoctl`` processes go first, so that none restarts Postgres
        (killing only the postmaster does not fail over), then the postmaster and
        its backends. Sets :attr:`killed` and :attr:`killed_at`, and returns the node.
        """
        node = self.primary()
        self.killed_at = time.monotonic()
        self.killed = node
        _kill_processes_in(node.directory)
        self._runs.pop(node).wait(COMMAND_TIMEOUT)
        return node

    def wait_failover(self, timeout: float) -> float:
        """Wait until the node that was not killed is primary and commits a write.

        Returns the seconds from :attr:`killed_at` until that commit. The write
        is a transaction that gets a transaction id, with the server's default
        ``synchronous_commit``: so it returns only when the new primary no longer
        waits for a standby it does not have.
        """
        if self.killed is None or self.killed_at is None:
            raise ClusterError("no node has been killed: call kill_primary() first")
        survivor = next(node for node in self.nodes if node != self.killed)
        self._wait(
            f"{survivor.name} to take over from {self.killed.name}",
            timeout,
            lambda: self._missing_for_failover(survivor),
        )
        return time.monotonic() - self.killed_at

    def close(self) -> None:
        """Stop every process of the cluster and remove its directory (:func:`tear_down`,
        run by the guard). Does nothing the second time.

        Raises ClusterError if a process survived, after cleaning up what it could.
        """
        if self._guard.returncode is not None:
            return
        # What tear_down() may take: a stop command per node, the stop, the kill.
        bound = self._stop_timeout + 4 * COMMAND_TIMEOUT
        try:
            _, complaint = self._guard.communicate(b"stop\n", timeout=bound)
        except subprocess.TimeoutExpired:
            raise ClusterTimeout(
                f"the cluster in {self.directory} was still stopping after {bound:g}s"
            ) from None
        finally:
            for run in self._runs.values():
                run.wait(COMMAND_TIMEOUT)
            self._runs.clear()
        if self._guard.returncode != 0:
            reason = complaint.decode(errors="replace")
            raise ClusterError(f"the cluster in {self.directory} did not stop: {reason}")

    def _node(self, name: str, port: int) -> Node:
        directory = self.directory / name
        directory.mkdir()
        shutil.chown(directory, SERVER_USER, SERVER_USER)
        return Node(name, port, directory)

    def _tool(self, node: Node, *args: str, timeout: float = COMMAND_TIMEOUT) -> str:
        """Run one ``pg_autoctl`` command for ``node`` and return its standard output."""
        try:
            # In the node's directory: a command cut short is then among the processes
            # close() kills there.
            done = subprocess.run(
                _pg_autoctl(self.directory, node.pgdata, *args),
                cwd=node.directory,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise ClusterTimeout(
                f"pg_autoctl {' '.join(args)} for {node.name} did not finish within "
                f"{timeout:.1f}s; it printed:\n{_tail(exc.stderr)}"
            ) from None
        if done.returncode != 0:
            raise ClusterError(
                f"pg_autoctl {' '.join(args)} for {node.name} exited with status "
                f"{done.returncode}; it printed:\n{_tail(done.stderr)}"
            )
        return done.stdout.strip()

    def _run(self, node: Node) -> None:
        """Start ``pg_autoctl run`` for ``node`` in the background, logging to its directory."""
        with (node.directory / "run.log").open("ab") as log:
            self._runs[node] = subprocess.Popen(
                _pg_autoctl(self.directory, node.pgdata, "run"),
                cwd=node.directory,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Out of the test's process group: an interrupt of the test run reaches
                # the test, whose teardown stops the cluster in order.
                start_new_session=True,
            )

    def _wait(self, what: str, timeout: float, missing: Callable[[], str | None]) -> None:
        """Poll ``missing`` (None once done, else what is missing) for at most ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            self._check_runs()
            try:
                lacking = missing()
            except (ClusterError, psycopg.Error) as exc:
                lacking = f"{type(exc).__name__}: {exc}"
            if lacking is None:
                return
            if time.monotonic() >= deadline:
                raise ClusterTimeout(f"waited {timeout:.1f}s for {what}: {lacking}")
            time.sleep(POLL_INTERVAL)

    def _check_runs(self) -> None:
        for node, run in self._runs.items():
            status = run.poll()
            if status is not None:
                raise ClusterError(
                    f"pg_autoctl run of {node.name} exited with status {status}; its log ends:\n"
                    + _tail((node.directory / "run.log").read_text(errors="replace"))
                )

    def _named(self, name: str) -> Node:
        return next(node for node in self.nodes if node.name == name)

    def _settled_in(self, states: Collection[NodeState], role: str) -> Node:
        statuses = self.state()
        names = [status.name for status in statuses if status.settled_in(states)]
        if len(names) != 1:
            raise ClusterError(f"{len(names)} nodes are {role}: {_describe(statuses)}")
        return self._named(names[0])

    def _missing_for_ready(self) -> str | None:
        statuses = self.state()
        lacking = _missing_states(statuses, {NodeState.PRIMARY}, {NodeState.SECONDARY})
        if lacking is not None:
            return lacking
        # The monitor fails over only to a standby its health checks found good.
        if any(status.health is not Health.GOOD for status in statuses):
            return _describe(statuses)
        primary = next(status for status in statuses if status.reported == NodeState.PRIMARY)
        standby = next(status for status in statuses if status.reported == NodeState.SECONDARY)
        name = f"pgautofailover_standby_{standby.node_id}"
        with psycopg.connect(self._named(primary.name).url) as conn:
            row = conn.execute(
                "SELECT current_setting('synchronous_standby_names'),"
                " current_setting('synchronous_commit'),"
                " (SELECT sync_state FROM pg_stat_replication"
                "  WHERE application_name = %s AND state = 'streaming')",
                (name,),
            ).fetchone()
        wanted = (f"ANY 1 ({name})", "on", "quorum")
        if row != wanted:
            return (
                "the primary's synchronous_standby_names, synchronous_commit and its "
                f"standby's sync_state are {row}, not {wanted}"
            )
        return None

    def _missing_for_failover(self, survivor: Node) -> str | None:
        statuses = self.state()
        status = next(status for status in statuses if status.name == survivor.name)
        if not status.settled_in(PRIMARY_STATES):
            return _describe(statuses)
        refused = _commit_refused(survivor.url)
        return None if refused is None else f"{_describe(statuses)}; a write failed: {refused}"


def tear_down(directory: Path, stop_timeout: float) -> None:
    """Stop the cluster in ``directory`` and remove it: the guard's work.

    Every node gets ``pg_autoctl stop`` and ``stop_timeout`` seconds in all; then
    whatever still works in the directory is killed, and what a killed postmaster
    left outside it is removed. Raises ClusterError if a process survived SIGKILL.
    """
    pgdatas = [node / "pgdata" for node in directory.iterdir() if (node / "pgdata").is_dir()]
    try:
        for pgdata in pgdatas:
            # It fails for a node that does not run: nothing to stop there.
            subprocess.run(
                _pg_autoctl(directory, pgdata, "stop"),
                cwd=directory,
                capture_output=True,
                timeout=COMMAND_TIMEOUT,
                check=False,
            )
        deadline = time.monotonic() + stop_timeout
        while _processes_in(directory) and time.monotonic() < deadline:
            time.sleep(POLL_INTERVAL)
    finally:
        try:
            _kill_processes_in(directory)
        finally:
            for pgdata in pgdatas:
                _remove_stale_ipc(pgdata)
            shutil.rmtree(directory, ignore_errors=True)


def _pg_autoctl(directory: Path, pgdata: Path, *args: str) -> list[str]:
    """``pg_autoctl args`` for the node in ``pgdata`` of the cluster in ``directory``,
    run as the server user in a bare environment."""
    xdg = directory / "xdg"
    environment = {
        "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "HOME": pwd.getpwnam(SERVER_USER).pw_dir,
        # pg_autoctl keeps its configuration and state files there, per data directory.
        "XDG_CONFIG_HOME": str(xdg / "config"),
        "XDG_DATA_HOME": str(xdg / "data"),
        "XDG_RUNTIME_DIR": str(xdg / "runtime"),
        "PGDATA": str(pgdata),
    }
    variables = [f"{name}={value}" for name, value in environment.items()]
    return ["runuser", "-u", SERVER_USER, "--", "env", "-i", *variables, "pg_autoctl", *args]


def _commit_refused(url: str) -> str | None:
    """None when a transaction with a transaction id commits at ``url``, else why not."""
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            # A commit waiting for a standby cannot be given a timeout on the server: a
            # cancelled wait reports success. So the client cancels it and says it failed.
            gave_up = threading.Event()

            def give_up() -> None:
                gave_up.set()
                with contextlib.suppress(psycopg.Error):
                    conn.cancel_safe()

            timer = threading.Timer(COMMIT_TIMEOUT, give_up)
            timer.start()
            try:
                conn.execute("SELECT txid_current()")
            finally:
                timer.cancel()
    except psycopg.Error as exc:
        return f"{type(exc).__name__}: {exc}".strip()
    if gave_up.is_set():
        return f"the commit did not return within {COMMIT_TIMEOUT:g}s"
    return None


def _missing_states(statuses: tuple[NodeStatus, ...], *states: Collection[NodeState]) -> str | None:
    """None when each node is settled in one of the sets of ``states``, one node a set;
    otherwise the nodes as they are."""
    unmatched = list(states)
    for status in statuses:
        match = next((wanted for wanted in unmatched if status.settled_in(wanted)), None)
        if match is None:
            return _describe(statuses)
        unmatched.remove(match)
    return _describe(statuses) if unmatched else None


def _with_query(uri: str, user: str | None = None, **params: str) -> str:
    """``uri`` with ``user`` and the query parameters given set (``sslmode=disable``
    always: the nodes run without SSL)."""
    parts = urlsplit(uri)
    netloc = parts.netloc if user is None else f"{user}@{parts.netloc.rpartition('@')[2]}"
    query = dict(parse_qsl(parts.query)) | {"sslmode": "disable"} | params
    return urlunsplit(parts._replace(netloc=netloc, query=urlencode(query, safe=",")))


def _free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports free on 127.0.0.1 and in the Unix socket directory."""
    ports: list[int] = []
    with contextlib.ExitStack() as stack:
        while len(ports) < count:
            # Kept bound until all are chosen, so that the same port does not come twice.
            sock = stack.enter_context(socket.socket())
            sock.bind((HOST, 0))
            port: int = sock.getsockname()[1]
            if not (SOCKET_DIRECTORY / f".s.PGSQL.{port}.lock").exists():
                ports.append(port)
    return ports


def _ensure_socket_directory() -> None:
    if not SOCKET_DIRECTORY.is_dir():
        SOCKET_DIRECTORY.mkdir(parents=True, mode=0o2775)
        shutil.chown(SOCKET_DIRECTORY, SERVER_USER, SERVER_USER)


def _processes_in(directory: Path) -> list[int]:
    """Processes working in ``directory`` or below, those that are not Postgres first."""
    found: list[tuple[bool, int]] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if not Path(os.readlink(entry / "cwd")).is_relative_to(directory):
                continue
            is_postgres = os.readlink(entry / "exe").endswith("/postgres")
        except OSError:  # gone, or a zombie
            continue
        found.append((is_postgres, int(entry.name)))
    return [pid for _, pid in sorted(found)]


def _kill_processes_in(directory: Path, timeout: float = COMMAND_TIMEOUT) -> None:
    """SIGKILL every process working in ``directory`` until none is left.

    The ``pg_autoctl`` processes go first, so that none restarts Postgres. A
    Postgres backend the postmaster forked meanwhile works in its data directory
    too, orphaned or not, so the next round finds it.
    """
    deadline = time.monotonic() + timeout
    while pids := _processes_in(directory):
        if time.monotonic() >= deadline:
            raise ClusterError(f"processes {pids} in {directory} survived SIGKILL")
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.02)


def _remove_stale_ipc(pgdata: Path) -> None:
    """Remove what a killed postmaster leaves outside its data directory.

    Its Unix socket and lock file, and its System V shared memory segment, which
    outlive it (Postgres would reuse them only on the next start on this port).
    Only what ``postmaster.pid`` names and nothing else uses goes.
    """
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
    except FileNotFoundError:  # never started, or stopped cleanly
        return
    if len(lines) < 7:  # it died before it made its shared memory and socket
        return
    pid, port, sockets, (key, shmid) = lines[0], lines[3], Path(lines[4]), lines[6].split()
    lock = sockets / f".s.PGSQL.{port}.lock"
    with contextlib.suppress(FileNotFoundError):
        if lock.read_text().split("\n", 1)[0] == pid:
            (sockets / f".s.PGSQL.{port}").unlink(missing_ok=True)
            lock.unlink()
    for segment in _shared_memory_segments():
        # Fields: key, shmid, perms, size, cpid, lpid, nattch, ...
        if segment[:2] == [key, shmid] and segment[6] == "0":
            subprocess.run(["ipcrm", "-m", shmid], check=False, capture_output=True)


def _shared_memory_segments() -> Iterator[list[str]]:
    with open("/proc/sysvipc/shm") as table:
        next(table)  # the header
        yield from (line.split() for line in table)


def _describe(statuses: tuple[NodeStatus, ...]) -> str:
    return "; ".join(map(str, statuses)) or "the monitor knows no data node"


def _tail(text: str | bytes | None, lines: int = 20) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return "\n".join((text or "").splitlines()[-lines:])
