"""The benchmark suite in quick mode: it must keep running, not be fast.

Speed is judged by the full suite (``python -m benchmarks.run``), by ratios
measured side by side, never by a timed test; this test only keeps every
workload and contender from rotting.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.run import main

WORKLOADS = [f"W{n}" for n in range(1, 10)]
#: Where the in-memory engine is a contender (not W5's bulk load, not W8's loop lag).
MEMORY_WORKLOADS = [w for w in WORKLOADS if w not in ("W5", "W8")]


def test_quick_run_covers_every_workload_and_contender(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "quick.json"
    assert main(["--quick", "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["errors"] == []
    rows = results["rows"]
    seen = {row["workload"].split()[0] for row in rows}
    assert seen == set(WORKLOADS)
    for workload in WORKLOADS:
        contenders = {row["contender"] for row in rows if row["workload"].startswith(workload)}
        assert any(c.startswith("aiolmdb") for c in contenders), workload
        if workload not in ("W8", "W9"):
            assert any("sync py-lmdb" in c for c in contenders), workload
            assert "aiosqlite" in contenders, workload
    for workload in WORKLOADS:
        memory = [
            row
            for row in rows
            if row["workload"].startswith(workload)
            and row["contender"].startswith("aiolmdb :memory:")
        ]
        assert bool(memory) == (workload in MEMORY_WORKLOADS), workload
        # Informative: what the API costs without storage, held to no target.
        assert all(row["check"] is None and row["seconds"] > 0 for row in memory), workload
    # Every target is evaluated (pass or fail is the full run's business).
    assert results["targets"]["total"] >= 14
    printed = capsys.readouterr().out
    assert "| workload" in printed and "Targets:" in printed
