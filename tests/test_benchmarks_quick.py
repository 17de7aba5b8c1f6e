"""The benchmark suite in quick mode: it must keep running, not be fast.

Speed is judged by the full suite (``python -m benchmarks.run``), by ratios
measured side by side, never by a timed test; this test only keeps every
workload and contender from rotting. The PostgreSQL workloads run on the
suite's server (``--postgres``); without PostgreSQL (``AIOLMDB_TEST_POSTGRES=0``)
the quick run leaves them out.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import psycopg
import pytest
from helpers.postgres import PostgresServer
from helpers.postgres_fixtures import SWITCH

from benchmarks._harness import Skipped
from benchmarks._pg_server import PostgresSource, postgres_source
from benchmarks.run import main

LMDB_WORKLOADS = [f"W{n}" for n in range(1, 10)]
POSTGRES_WORKLOADS = [f"P{n}" for n in range(1, 7)]
#: Where the in-memory engine is a contender (not W5's bulk load, not W8's loop lag).
MEMORY_WORKLOADS = [w for w in LMDB_WORKLOADS if w not in ("W5", "W8")]
#: The raw driver sending the engine's statements: every P workload's target compares with it.
RAW = "psycopg (same statements)"


def test_quick_run_covers_every_workload_and_contender(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], request: pytest.FixtureRequest
) -> None:
    out = tmp_path / "quick.json"
    argv = ["--quick", "--json", str(out)]
    workloads = list(LMDB_WORKLOADS)
    server: PostgresServer | None = None
    if os.environ.get(SWITCH) == "0":
        argv += ["--only", ",".join(LMDB_WORKLOADS)]
    else:
        server = request.getfixturevalue("postgres_server")
        assert server is not None
        argv += ["--postgres", server.url]
        workloads += POSTGRES_WORKLOADS
    assert main(argv) == 0
    results = json.loads(out.read_text())
    assert results["errors"] == []
    assert results["skipped"] == []
    rows = results["rows"]
    seen = {row["workload"].split()[0] for row in rows}
    assert seen == set(workloads)
    for workload in LMDB_WORKLOADS:
        contenders = {row["contender"] for row in rows if row["workload"].split()[0] == workload}
        assert any(c.startswith("aiolmdb") for c in contenders), workload
        if workload not in ("W8", "W9"):
            assert any("sync py-lmdb" in c for c in contenders), workload
            assert "aiosqlite" in contenders, workload
    for workload in LMDB_WORKLOADS:
        memory = [
            row
            for row in rows
            if row["workload"].split()[0] == workload
            and row["contender"].startswith("aiolmdb :memory:")
        ]
        assert bool(memory) == (workload in MEMORY_WORKLOADS), workload
        # Informative: what the API costs without storage, held to no target.
        assert all(row["check"] is None and row["seconds"] > 0 for row in memory), workload
    for workload in set(workloads) & set(POSTGRES_WORKLOADS):
        mine = [row for row in rows if row["workload"].split()[0] == workload]
        by_name = {row["contender"]: row for row in mine}
        assert {"aiolmdb", RAW} <= set(by_name), workload
        assert by_name["aiolmdb"]["check"]["target"] == "≤ 1.3x psycopg µs/op", workload
        assert [row["contender"] for row in mine if row["check"]] == ["aiolmdb"], workload
        assert all(row["seconds"] > 0 and row["extra"]["cpu_us_per_op"] > 0 for row in mine)
    # Every target is evaluated (pass or fail is the full run's business).
    expected_targets = 14 + (len(POSTGRES_WORKLOADS) if server is not None else 0)
    assert results["targets"]["total"] >= expected_targets
    printed = capsys.readouterr().out
    assert "| workload" in printed and "Targets:" in printed
    if server is not None:
        assert any(note.startswith("P: PostgreSQL 15") for note in results["notes"])
        with psycopg.connect(server.url) as conn:
            left = conn.execute(
                "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'aiolmdb_bench_%'"
            ).fetchall()
        assert left == []  # every workload's schema was dropped


@pytest.mark.usefixtures("postgres_server")  # skipped, like the suite's, without PostgreSQL
def test_without_a_url_a_durable_throwaway_server_runs_and_is_stopped() -> None:
    with postgres_source(None) as source:
        url = source.url()
        assert source.url() == url  # started once
        with psycopg.connect(url) as conn:
            settings = conn.execute(
                "SELECT current_setting('fsync'), current_setting('full_page_writes'), "
                "current_setting('synchronous_commit')"
            ).fetchone()
        assert settings == ("on", "on", "on")
        assert "throwaway server" in source.describe()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=2)


def test_without_server_programs_the_postgres_workloads_are_skipped(tmp_path: Path) -> None:
    source = PostgresSource(bindir=tmp_path)
    with pytest.raises(Skipped, match=r"no server could be started: .*initdb.* not in"):
        source.url()
    with pytest.raises(Skipped, match="no server could be started"):
        source.url()  # the reason is kept: no second attempt
    source.close()


def test_a_url_with_options_is_refused_by_the_runner(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--postgres", "postgresql://127.0.0.1/db?options=-cfoo%3Dbar", "--only", "P1"])
    assert exit_info.value.code == 2
    assert "may not carry options=" in capsys.readouterr().err
