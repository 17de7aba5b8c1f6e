"""The ``aiolmdb`` console itself, on LMDB and PostgreSQL: commands run as a user runs
them (``python -m aiolmdb.cli`` in a fresh process, and typer's CliRunner for the
details), their output, their exit codes, and what they leave behind."""

from __future__ import annotations

import asyncio
import enum
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from typer.testing import CliRunner

import aiolmdb
from aiolmdb.cli.app import app
from aiolmdb.cli.errors import ExitCode
from aiolmdb.cli.transfer import LOADS_DATABASE

ROOT = Path(__file__).resolve().parents[1]

#: The application's module, which the console finds in the current directory.
MODELS = (ROOT / "tests" / "helpers" / "shop.py").read_text()

USERS = [
    {"id": 1, "email": "ann@x", "city": "Oslo"},
    {"id": 2, "email": "bob@x", "city": "Bergen"},
    {"id": 3, "email": "cid@x", "city": "Oslo"},
]
LINES = "".join(json.dumps({"key": u["id"], "value": u}) + "\n" for u in USERS)


class Console(enum.Enum):
    """The engines the console reaches (the memory engine lives in one process)."""

    LMDB = "lmdb"
    POSTGRES = "postgresql"


@pytest.fixture(params=list(Console), ids=[kind.value for kind in Console])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a fresh environment may be made: an LMDB directory, or a PostgreSQL schema."""
    if request.param is Console.POSTGRES:
        url: str = request.getfixturevalue("postgres_url")
        return url
    return str(tmp_path / "data")


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The current directory, holding the application's module ``shop.py``."""
    (tmp_path / "shop.py").write_text(MODELS)
    (tmp_path / "users.jsonl").write_text(LINES)
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    sys.modules.pop("shop", None)


def aiolmdb_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``aiolmdb ARGS`` in a fresh process, in ``cwd``."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return subprocess.run(
        [sys.executable, "-m", "aiolmdb.cli", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": path},
        capture_output=True,
        text=True,
        timeout=120,
    )


runner = CliRunner()


def invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_a_session_loads_lists_reads_dumps_and_verifies(location: str, workdir: Path) -> None:
    loaded = aiolmdb_cli(
        "load", location, "users.jsonl", "-c", "shop:Users", "--create", cwd=workdir
    )
    assert (loaded.returncode, loaded.stderr.splitlines()[-1]) == (0, "3 records loaded (3 in all)")

    listed = aiolmdb_cli("ls", location, "--json", cwd=workdir)
    assert listed.returncode == 0, listed.stderr
    rows = {row["name"]: row for row in map(json.loads, listed.stdout.splitlines())}
    assert rows["users"]["kind"] == "collection"
    assert rows["users"]["records"] == 3
    assert rows["__aiolmdb__/index/users/by_email"]["of"] == "users.by_email"

    got = aiolmdb_cli("get", location, "2", "-c", "shop:Users", cwd=workdir)
    assert (got.returncode, json.loads(got.stdout)) == (0, USERS[1])

    scanned = aiolmdb_cli(
        "scan", location, "-c", "shop:Users", "--start", "2", "--reverse", "--json", cwd=workdir
    )
    assert [json.loads(line)["key"] for line in scanned.stdout.splitlines()] == [3, 2]

    dumped = aiolmdb_cli("dump", location, "-c", "shop:Users", cwd=workdir)
    assert (dumped.returncode, dumped.stdout) == (0, LINES)

    verified = aiolmdb_cli("verify", location, "-c", "shop:Users", cwd=workdir)
    assert (verified.returncode, verified.stdout) == (0, "")
    assert verified.stderr.strip() == "ok (collections checked: 1)"

    stat = aiolmdb_cli("stat", location, cwd=workdir)
    assert stat.returncode == 0
    assert stat.stdout.split("\n")[1].split() == ["engine", Console(_engine_of(location)).value]


def _engine_of(location: str) -> str:
    return "postgresql" if location.startswith("postgresql://") else "lmdb"


def test_a_wrong_location_is_an_error_and_creates_nothing(location: str, workdir: Path) -> None:
    code, _, stderr = invoke("ls", location)
    assert code == ExitCode.NOT_FOUND
    if location.startswith("postgresql://"):
        assert "no aiolmdb environment in postgresql://" in stderr
        with psycopg.connect(location) as conn:
            row = conn.execute("SELECT to_regclass('aiolmdb_layout') IS NULL").fetchone()
        assert row == (True,)
    else:
        assert (
            stderr
            == f"aiolmdb: error: no LMDB environment at {location}: the path does not exist\n"
        )
        assert not Path(location).exists()


def test_a_missing_database_and_a_missing_key_exit_3(location: str, workdir: Path) -> None:
    assert invoke("load", location, "users.jsonl", "-c", "shop:Users", "--create")[0] == 0
    code, _, stderr = invoke("get", location, "1", "--db", "nope")
    assert (code, "database 'nope' does not exist" in stderr) == (ExitCode.NOT_FOUND, True)
    code, _, stderr = invoke("get", location, "7", "-c", "shop:Users")
    assert (code, stderr) == (ExitCode.NOT_FOUND, "aiolmdb: error: database 'users': no key 7\n")


def test_a_model_that_does_not_match_the_data_exits_4_naming_database_and_key(
    location: str, workdir: Path
) -> None:
    assert invoke("load", location, "users.jsonl", "-c", "shop:Users", "--create")[0] == 0
    for command in (["get", location, "1"], ["scan", location], ["dump", location]):
        result = aiolmdb_cli(*command, "-c", "shop:WrongUsers", cwd=workdir)
        assert result.returncode == ExitCode.DECODE, result.stderr
        assert (
            "aiolmdb: error: database 'users': cannot decode the value of key 1 with "
            "PydanticCoder(Mismatch)" in result.stderr
        )


def test_verify_exits_1_saying_what_is_wrong(location: str, workdir: Path) -> None:
    assert invoke("load", location, "users.jsonl", "-c", "shop:Users", "--create")[0] == 0

    async def break_an_index() -> None:
        async with aiolmdb.open(location) as env:
            by_email = await env.open_db_async("__aiolmdb__/index/users/by_email")
            await by_email.delete(b"bob@x\x00\x00")

    asyncio.run(break_an_index())
    result = aiolmdb_cli("verify", location, "-c", "shop:Users", cwd=workdir)
    assert result.returncode == ExitCode.PROBLEMS
    assert result.stdout == (
        "index 'users'.by_email: missing entry: record 2 lacks its entry 'bob@x'\n"
    )
    assert result.stderr.splitlines()[-1] == (
        "aiolmdb: error: problems found: 1 (collections checked: 1)"
    )


def test_lmdb_only_commands_say_so_elsewhere(location: str, workdir: Path) -> None:
    (workdir / "raw.jsonl").write_text('{"key": "a", "value": "1"}\n{"key": "b", "value": "2"}\n')
    assert invoke("load", location, "raw.jsonl", "--db", "raw", "--create")[0] == 0
    if location.startswith("postgresql://"):
        code, _, stderr = invoke("copy", location, "backup")
        assert code == ExitCode.UNSUPPORTED
        assert "copy is LMDB's, and the postgresql engine does not have it" in stderr
        code, _, stderr = invoke("readers", location)
        assert code == ExitCode.UNSUPPORTED
        assert "postgresql:// locations have no reader table" in stderr
        return
    code, _, stderr = invoke("copy", location, "backup", "--compact")
    assert (code, stderr) == (0, "copied to backup (compacted)\n")
    assert invoke("dump", "backup", "--db", "raw") == invoke("dump", location, "--db", "raw")
    code, stdout, _ = invoke("readers", location, "--clear-stale")
    assert (code, stdout) == (0, "(no active readers)\n")


def test_readers_lists_and_clears_the_slot_of_a_process_that_died(
    tmp_path: Path, workdir: Path
) -> None:
    location = str(tmp_path / "data")
    (workdir / "raw.jsonl").write_text('{"key": "a", "value": "1"}\n')
    assert invoke("load", location, "raw.jsonl", "--db", "raw", "--create")[0] == 0
    # LMDB resets the reader table when a process opens an environment no other has
    # open: a process keeps it open, as a running application would.
    holds = (
        "import lmdb, sys\n"
        "env = lmdb.open(sys.argv[1], max_dbs=8)\n"
        "print('open', flush=True)\n"
        "input()\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", holds, location],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "open\n"
        dies_reading = (
            "import lmdb, os, signal, sys\n"
            "env = lmdb.open(sys.argv[1], max_dbs=8)\n"
            "txn = env.begin()\n"
            "print(os.getpid(), flush=True)\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n"
        )
        died = subprocess.run(
            [sys.executable, "-c", dies_reading, location],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert died.returncode == -signal.SIGKILL
        code, stdout, _ = invoke("readers", location)
        assert code == 0
        assert [line.split()[0] for line in stdout.splitlines()[1:]] == [died.stdout.strip()]
        code, stdout, stderr = invoke("readers", location, "--clear-stale")
        assert (code, stdout) == (0, "(no active readers)\n")
        assert stderr == "1 stale reader slots cleared\n"
    finally:
        holder.communicate("\n", timeout=60)


def test_raw_records_print_as_escaped_bytes(location: str, workdir: Path) -> None:
    line = r'{"key": "k\\x00\\x01", "value": "\\xff hi\\\\"}' + "\n"
    (workdir / "raw.jsonl").write_text(line)
    assert invoke("load", location, "raw.jsonl", "--db", "raw", "--create")[0] == 0

    async def stored() -> dict[bytes, bytes]:
        async with aiolmdb.open(location) as env:
            raw = await env.open_db_async("raw", create=False)
            return {key: value async for key, value in raw.items()}

    assert asyncio.run(stored()) == {b"k\x00\x01": b"\xff hi\\"}
    code, stdout, _ = invoke("get", location, r"k\x00\x01", "--db", "raw")
    assert (code, stdout) == (0, "\\xff hi\\\\\n")
    code, stdout, _ = invoke("scan", location, "--db", "raw", "--prefix", "k")
    assert (code, r"k\x00\x01" in stdout) == (0, True)
    assert invoke("scan", location, "--db", "raw", "--json")[1] == line


def test_memory_and_unknown_locations_are_refused(workdir: Path) -> None:
    code, _, stderr = invoke("ls", ":memory:")
    assert code == ExitCode.UNSUPPORTED
    assert "the console cannot reach another process's" in stderr
    code, _, stderr = invoke("ls", "redis://localhost")
    assert (code, "no engine opens redis:// locations" in stderr) == (ExitCode.UNSUPPORTED, True)


def test_mistakes_on_the_command_line_are_usage_errors(tmp_path: Path, workdir: Path) -> None:
    location = str(tmp_path / "data")
    assert invoke("load", location, "users.jsonl", "-c", "shop:Users", "--create")[0] == 0
    code, _, stderr = invoke("get", location, "1", "-c", "shop:Nobody")
    assert (code, stderr) == (
        ExitCode.USAGE,
        "aiolmdb: error: --collection 'shop:Nobody': module shop has no Nobody\n",
    )
    code, _, stderr = invoke("get", location, "1", "-c", "shop:User")
    assert code == ExitCode.USAGE
    assert "User is not a Collection subclass" in stderr
    code, _, stderr = invoke("get", location, "1", "-c", "shop:Users", "--db", "users")
    assert (code, "give --db or --collection, not both" in stderr) == (ExitCode.USAGE, True)


def test_the_console_script_is_declared_and_python_m_aiolmdb_runs_it(tmp_path: Path) -> None:
    project = (ROOT / "pyproject.toml").read_text()
    assert '[project.scripts]\naiolmdb = "aiolmdb.cli:main"\n' in project
    assert 'cli = [\n    "typer>=0.12",\n    "rich>=13",\n]' in project
    result = subprocess.run(
        [sys.executable, "-m", "aiolmdb", "--help"],
        env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "100"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "Usage: aiolmdb [OPTIONS] COMMAND [ARGS]..." in result.stdout
    for command in ("stat", "ls", "get", "scan", "dump", "load", "copy", "verify", "readers"):
        assert f"│ {command} " in result.stdout


def test_without_the_cli_extra_it_says_how_to_install_it(tmp_path: Path) -> None:
    code = "import sys; sys.modules['typer'] = None; from aiolmdb.cli import main; main()"
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == ExitCode.MISSING_EXTRA
    assert result.stderr == (
        "aiolmdb: the command line needs the cli extra (typer is missing): "
        "pip install 'aiolmdb[cli]'\n"
    )


def test_a_killed_load_run_again_ends_with_exactly_the_input(tmp_path: Path, workdir: Path) -> None:
    location = str(tmp_path / "data")
    people = [{"id": i, "email": f"u{i}@x", "city": f"c{i % 7}"} for i in range(3000)]
    (workdir / "many.jsonl").write_text(
        "".join(json.dumps({"key": p["id"], "value": p}) + "\n" for p in people)
    )
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    load = [sys.executable, "-m", "aiolmdb.cli", "load", location, "many.jsonl"]
    load += ["-c", "shop:Users", "--create", "--chunk", "1"]
    first = subprocess.Popen(load, cwd=workdir, env={**os.environ, "PYTHONPATH": path})

    async def progress() -> int | None:
        async with aiolmdb.open(location) as env:
            if LOADS_DATABASE.encode() not in await env.database_names():
                return None
            loads = await env.open_db_async(LOADS_DATABASE)
            done = await loads.first()
            return None if done is None else int(done[1])

    try:
        deadline = time.monotonic() + 120
        while first.poll() is None and time.monotonic() < deadline:
            if Path(location, "data.mdb").exists() and (asyncio.run(progress()) or 0) >= 10:
                break
            time.sleep(0.05)
        assert first.poll() is None, "the load ended before it could be killed"
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
    partly = asyncio.run(progress())
    assert partly is not None and 10 <= partly < len(people)
    again = aiolmdb_cli(*load[3:], cwd=workdir)
    assert again.returncode == 0, again.stderr
    assert again.stderr.splitlines()[-1] == (
        f"{len(people) - partly} records loaded, {partly} loaded before (3000 in all)"
    )
    dumped = aiolmdb_cli("dump", location, "-c", "shop:Users", cwd=workdir)
    assert dumped.stdout == (workdir / "many.jsonl").read_text()
    verified = aiolmdb_cli("verify", location, "-c", "shop:Users", cwd=workdir)
    assert verified.returncode == 0, verified.stdout
    assert asyncio.run(progress()) is None
