"""The benchmark chart: drawn from a results JSON, and from a results table."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmarks.chart import main, render_svg, rows_from_table

TABLE = """\
Some text.

| workload     | contender    |     ops |   ops/s | µs/op | aiolmdb x |
|--------------|--------------|--------:|--------:|------:|----------:|
| W1 get bytes | sync py-lmdb | 100,000 | 333,956 |  2.99 |     0.62x |
| W1 get bytes | aiolmdb      | 100,000 | 208,337 |  4.80 |           |
| W8 loop lag  | idle loop    |     864 |         |       |           |

| keyword | default |
|---|---|
| map_size | 10 MiB |

| workload | contender | ops | ops/s |
|---|---|--:|--:|
| P1 get bytes | aiolmdb | 1,000 | 5,166 |
"""


def test_rows_come_from_every_results_table_and_no_other() -> None:
    tables = rows_from_table(TABLE)
    assert [[(r["workload"], r["contender"]) for r in t] for t in tables] == [
        [
            ("W1 get bytes", "sync py-lmdb"),
            ("W1 get bytes", "aiolmdb"),
            ("W8 loop lag", "idle loop"),
        ],
        [("P1 get bytes", "aiolmdb")],
    ]
    assert tables[0][0]["ops_per_s"] == 333_956
    assert math.isnan(tables[0][2]["ops_per_s"])


def test_the_chart_of_a_results_json_is_written(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    rows = [
        {"workload": r["workload"], "contender": r["contender"], "ops_per_s": r["ops_per_s"]}
        for r in rows_from_table(TABLE)[0]
    ]
    results.write_text(json.dumps({"mode": "quick", "date": "2026-12-01", "rows": rows}))
    chart = tmp_path / "chart.svg"
    assert main([str(results), str(chart)]) == 0
    svg = chart.read_text(encoding="utf-8")
    assert svg.startswith("<?xml") and "W1 get bytes: aiolmdb" in svg
    assert "idle loop" not in svg  # a row without a rate has no bar


def test_rows_without_a_rate_cannot_be_drawn() -> None:
    with pytest.raises(ValueError, match=r"no row of 'empty' has a rate \(ops_per_s\) to draw"):
        render_svg([{"workload": "W8", "contender": "idle loop", "ops_per_s": math.nan}], "empty")
