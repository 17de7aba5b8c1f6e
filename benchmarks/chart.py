"""A chart of benchmark results: ops/s of every contender, grouped by workload.

Drawn from the rows a run writes with ``--json`` (``python -m benchmarks.chart
RESULTS.json CHART.svg``, or ``python -m benchmarks.run --chart CHART.svg``), or from
a results table as ``benchmarks.run`` prints it (``rows_from_table``, which the docs
build uses on the tables of docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

__all__ = ["draw", "main", "render_svg", "rows_from_table"]

#: Bars of aiolmdb's own rows, and of every other contender.
AIOLMDB_COLOUR = "#3f51b5"
OTHER_COLOUR = "#b0b7c3"


def _number(cell: str) -> float:
    """A table's number cell (``333,956``; empty for none) as a float (NaN for none)."""
    cell = cell.strip().replace(",", "")
    return float(cell) if cell else math.nan


def rows_from_table(markdown: str) -> list[list[dict[str, Any]]]:
    """The rows of every results table in ``markdown`` (tables whose header has
    ``workload``, ``contender`` and ``ops/s``), one list per table, each row with the
    JSON rows' ``workload``, ``contender`` and ``ops_per_s``."""
    tables: list[list[dict[str, Any]]] = []
    header: list[str] | None = None
    for line in markdown.splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
            if {"workload", "contender", "ops/s"} <= set(header):
                tables.append([])
            continue
        if not {"workload", "contender", "ops/s"} <= set(header) or set(line) <= set("|-: "):
            continue
        row = dict(zip(header, cells, strict=False))
        tables[-1].append(
            {
                "workload": row["workload"],
                "contender": row["contender"],
                "ops_per_s": _number(row["ops/s"]),
            }
        )
    return tables


def draw(rows: Sequence[Mapping[str, Any]], title: str) -> Figure:
    """Horizontal bars of ops/s on a log scale, one per row with a rate, in the rows'
    order, aiolmdb's own rows coloured apart, a line between workloads."""
    rated = [
        r
        for r in rows
        if isinstance(r.get("ops_per_s"), int | float)
        and math.isfinite(r["ops_per_s"])
        and r["ops_per_s"] > 0
    ]
    if not rated:
        raise ValueError(f"no row of {title!r} has a rate (ops_per_s) to draw")
    figure = Figure(figsize=(9, 1.2 + 0.22 * len(rated)), layout="constrained")
    axes = figure.subplots()
    positions = list(range(len(rated)))
    axes.barh(
        positions,
        [r["ops_per_s"] for r in rated],
        color=[
            AIOLMDB_COLOUR if str(r["contender"]).startswith("aiolmdb") else OTHER_COLOUR
            for r in rated
        ],
    )
    axes.set_yticks(positions, [f"{r['workload']}: {r['contender']}" for r in rated], fontsize=7)
    axes.invert_yaxis()  # the table's order, top to bottom
    axes.set_xscale("log")
    axes.set_xlabel("ops/s (log scale; aiolmdb's rows in blue)")
    axes.set_title(title)
    axes.grid(axis="x", which="major", alpha=0.3)
    for i in range(1, len(rated)):
        if rated[i]["workload"].split()[0] != rated[i - 1]["workload"].split()[0]:
            axes.axhline(i - 0.5, color="black", linewidth=0.5)
    return figure


def render_svg(rows: Sequence[Mapping[str, Any]], title: str) -> bytes:
    """``draw``'s chart as SVG bytes."""
    out = io.BytesIO()
    draw(rows, title).savefig(out, format="svg")
    return out.getvalue()


def main(argv: Sequence[str] | None = None) -> int:
    """Draw the chart of a results JSON (as ``benchmarks.run --json`` writes it)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.chart", description=__doc__)
    parser.add_argument("results", help="a results JSON written by python -m benchmarks.run")
    parser.add_argument("chart", help="the image to write, in the format its suffix names (.svg)")
    args = parser.parse_args(argv)
    results = json.loads(Path(args.results).read_text(encoding="utf-8"))
    title = f"aiolmdb benchmarks ({results.get('mode', 'full')} run, {results.get('date', '')})"
    draw(results["rows"], title).savefig(args.chart)
    print(f"Chart written to {args.chart}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
