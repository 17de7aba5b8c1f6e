"""The benchmark suite in quick mode: it must keep running, not be fast.

Speed is judged by the full suite (``python -m benchmarks.run``), by ratios
measured side by side, never by a timed test; this test only keeps every
workload and contender from rotting. The PostgreSQL workloads run on the
suite's server (``--postgres``); without PostgreSQL (``AIOLMDB_TEST_POSTGRES=0``)
the quick run leaves them out.
"""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path
from typing import Any

import psycopg
import pytest
from helpers.postgres import PostgresServer
from helpers.postgres_fixtures import SWITCH

from aiolmdb.coders import UInt64Coder
from aiolmdb.coders.base import escape_element
from benchmarks import _transactions as w10
from benchmarks._harness import Sizes, Skipped
from benchmarks._pg_server import PostgresSource, postgres_source
from benchmarks.run import main

LMDB_WORKLOADS = [f"W{n}" for n in range(1, 11)]
POSTGRES_WORKLOADS = [f"P{n}" for n in range(1, 7)]
#: Where the in-memory engine is a contender (not W5's bulk load, not W8's loop lag).
MEMORY_WORKLOADS = [w for w in LMDB_WORKLOADS if w not in ("W5", "W8")]
#: The raw driver sending the engine's statements: every P workload's target compares with it.
RAW = "psycopg (same statements)"
#: W10's rows: (workload, contender), in the order printed.
W10_ROWS = [
    ("W10 transfers", w10.SYNC),
    ("W10 transfers", w10.OPTIMISTIC),
    ("W10 transfers", w10.PESSIMISTIC),
    ("W10 transfers", w10.MEMORY),
    ("W10 10 hot keys", w10.OPTIMISTIC),
    ("W10 10 hot keys", w10.PESSIMISTIC),
]


def test_quick_run_covers_every_workload_and_contender(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], request: pytest.FixtureRequest
) -> None:
    out = tmp_path / "quick.json"
    chart = tmp_path / "quick.svg"
    argv = ["--quick", "--json", str(out), "--chart", str(chart)]
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
    assert chart.read_text(encoding="utf-8").startswith("<?xml")
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
        if workload not in ("W8", "W9", "W10"):
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
    _check_w10_rows([row for row in rows if row["workload"].split()[0] == "W10"])
    # Every target is evaluated (pass or fail is the full run's business).
    expected_targets = 15 + (len(POSTGRES_WORKLOADS) if server is not None else 0)
    assert results["targets"]["total"] >= expected_targets
    printed = capsys.readouterr().out
    assert "| workload" in printed and "Targets:" in printed
    # W10's rows show the latency per transaction and the share of bodies run again.
    w10_lines = [line for line in printed.splitlines() if line.startswith("| W10 10 hot keys")]
    assert len(w10_lines) == 2
    assert all(re.search(r"p50 [\d.,]+ / p99 [\d.,]+ ms; \d+\.\d% conflicts", x) for x in w10_lines)
    if server is not None:
        assert any(note.startswith("P: PostgreSQL 15") for note in results["notes"])
        with psycopg.connect(server.url) as conn:
            left = conn.execute(
                "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'aiolmdb_bench_%'"
            ).fetchall()
        assert left == []  # every workload's schema was dropped


def _check_w10_rows(rows: list[dict[str, Any]]) -> None:
    """Every W10 contender ran each transaction of the quick plan, timed per transaction."""
    assert [(row["workload"], row["contender"]) for row in rows] == W10_ROWS
    quick = Sizes.quick_mode()
    by_row = {(row["workload"], row["contender"]): row for row in rows}
    target = by_row[("W10 transfers", w10.OPTIMISTIC)]["check"]
    assert target["target"] == "≥ 10x pessimistic txn/s"
    assert [row for row in rows if row["check"]] == [by_row[("W10 transfers", w10.OPTIMISTIC)]]
    for row in rows:
        extra, runs = row["extra"], len(row["samples"])
        assert row["ops"] == quick.w10_tasks * quick.w10_txns_per_task, row
        assert runs == quick.reps and all(s > 0 for s in row["samples"]), row
        assert 0 < extra["txn_p50_ms"] <= extra["txn_p99_ms"], row
        if row["contender"] == w10.SYNC:
            assert "conflicts" not in extra, row
            continue
        # Every body run either committed or was a conflict run again.
        assert extra["bodies"] - extra["conflicts"] == row["ops"] * runs, row
        assert extra["conflict_rate"] == extra["conflicts"] / extra["bodies"], row
        if row["contender"] == w10.PESSIMISTIC:  # holds the writer: never conflicts
            assert extra["conflicts"] == 0, row


def test_w10_check_names_a_lost_update_a_lost_transfer_and_a_wrong_index() -> None:
    plan = w10.make_plan(3, 4, [0, 1, 2], first_id=0, seed=1)
    expected = w10.expected_state(3, [plan])
    assert sum(expected.balances.values()) == 3 * w10.INITIAL_BALANCE
    assert expected.transfers.total() == expected.indexed.total() == 12
    w10.verify("right", expected, expected)

    lost = copy.deepcopy(expected)
    first = plan[0][0]
    lost.balances[first.source] += 1  # its debit overwritten by a concurrent one
    with pytest.raises(AssertionError, match=r"^W10 lost: the balances sum to 3,000,001, not"):
        w10.verify("lost", lost, expected)

    swapped = copy.deepcopy(expected)
    swapped.balances[first.source] += 1
    swapped.balances[first.target] -= 1
    with pytest.raises(AssertionError, match=r"^W10 swapped: 2 balances differ"):
        w10.verify("swapped", swapped, expected)

    missing = copy.deepcopy(expected)
    missing.transfers[(first.source, first.target)] -= 1
    with pytest.raises(AssertionError, match=r"^W10 missing: 11 transfers stored, 12 expected"):
        w10.verify("missing", missing, expected)

    unindexed = copy.deepcopy(expected)
    unindexed.indexed[first.source] -= 1
    with pytest.raises(AssertionError, match=r"^W10 unindexed: 11 index entries stored, 12"):
        w10.verify("unindexed", unindexed, expected)


def test_w10_writes_index_entries_by_hand_as_the_collections_escape_them() -> None:
    # Index keys whose big-endian bytes hold zeros, which the layout escapes.
    for source, record in ((0, 1), (256, 2**40), (2**64 - 1, 0)):
        raw_key = w10.encode_key(record)
        entry = w10.index_entry(source, raw_key)
        assert entry == escape_element(UInt64Coder().serialize(source)) + raw_key
        assert w10.entry_source(entry) == (source, raw_key)


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
