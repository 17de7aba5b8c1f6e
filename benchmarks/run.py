"""Benchmark suite: aiolmdb against sync py-lmdb, lmdb.aio, run_in_executor and aiosqlite.

aiolmdb runs on LMDB; its in-memory engine (``aiolmdb :memory:`` rows) runs
beside it, informative only, where a workload is about the API. P1-P6 run its
PostgreSQL engine against the raw driver (psycopg 3) sending the same statements.

Run ``python -m benchmarks.run [--quick] [--only W1,P3] [--json PATH] [--chart PATH]
[--strict] [--postgres URL]`` (without ``--postgres``, P1-P6 start a throwaway server; where
none can be had, they are reported skipped, with the reason).
Prints the machine, then one Markdown table (one row per contender per
workload, with the issue's targets evaluated as PASS/FAIL), then notes on how
each workload was measured; writes the same results as JSON (by default to
``benchmarks/results/latest.json``) and, with ``--chart``, a chart of them
(``benchmarks.chart``; ``python -m benchmarks.chart`` draws one from a JSON written earlier).

Speed is reported, never asserted: the exit code is 0 even when targets fail,
unless ``--strict`` is given (then 3). A workload that crashes is reported
and makes the exit code 1.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import math
import os
import platform
import sqlite3
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiosqlite
import lmdb
import pydantic

import aiolmdb

from . import chart
from ._harness import Row, Sizes, Skipped
from ._pg_server import check_url, postgres_source
from ._workloads import WORKLOADS

__all__ = ["main"]

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "latest.json"
COLUMNS = (
    "workload",
    "contender",
    "ops",
    "ops/s",
    "µs/op",
    "aiolmdb x",
    "target",
    "measured",
    "result",
)
RIGHT_ALIGNED = {"ops", "ops/s", "µs/op", "aiolmdb x"}


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu_model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model,
        "platform": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "py_lmdb": lmdb.__version__,
        "lmdb_library": ".".join(str(p) for p in lmdb.version()[:3]),
        "aiolmdb": aiolmdb.__version__,
        "aiosqlite": aiosqlite.__version__,
        "sqlite": sqlite3.sqlite_version,
        "pydantic": pydantic.VERSION,
        "temp_dir": tempfile.gettempdir(),
    }


# -- formatting ---------------------------------------------------------------------------


def _num(value: float, digits: int = 3) -> str:
    """``value`` with ``digits`` significant digits and thousands separators."""
    if math.isnan(value) or math.isinf(value):
        return "-"
    if value == 0:
        return "0"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(value))))
    return f"{value:,.{decimals}f}"


def _times(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.2f}x" if value < 10 else f"{value:,.0f}x"


def _measured(row: Row) -> str:
    """The check's measure, then what the row's extras say (loop lateness, or latency
    per transaction and conflicts)."""
    e = row.extra
    parts = [row.check.measured] if row.check else []
    if not parts and "p99_ms" in e:
        parts.append(f"p99 {e['p99_ms']:.2f} / max {e['max_ms']:.1f} ms")
    if "txn_p99_ms" in e:
        parts.append(f"p50 {_num(e['txn_p50_ms'])} / p99 {_num(e['txn_p99_ms'])} ms")
    if "conflict_rate" in e:
        parts.append(f"{e['conflict_rate']:.1%} conflicts")
    return "; ".join(parts)


def _cells(row: Row) -> dict[str, str]:
    measured = _measured(row)
    calibration = row.note == "calibration"
    return {
        "workload": row.workload,
        "contender": row.contender,
        "ops": f"{row.ops:,}",
        "ops/s": "" if calibration else _num(row.ops_per_s),
        "µs/op": "" if calibration else _num(row.us_per_op),
        "aiolmdb x": _times(row.vs_aiolmdb),
        "target": row.check.target if row.check else "",
        "measured": measured,
        "result": ("PASS" if row.check.passed else "**FAIL**") if row.check else "",
    }


def table(rows: Sequence[Row]) -> str:
    """A Markdown table, padded so that it also reads well in a terminal."""
    cells = [_cells(r) for r in rows]
    width = {c: max([len(c)] + [len(x[c]) for x in cells]) for c in COLUMNS}

    def line(values: dict[str, str]) -> str:
        parts = [
            values[c].rjust(width[c]) if c in RIGHT_ALIGNED else values[c].ljust(width[c])
            for c in COLUMNS
        ]
        return "| " + " | ".join(parts) + " |"

    rule = (
        "|"
        + "|".join(
            ("-" * (width[c] + 1) + ":") if c in RIGHT_ALIGNED else ("-" * (width[c] + 2))
            for c in COLUMNS
        )
        + "|"
    )
    return "\n".join([line({c: c for c in COLUMNS}), rule, *(line(x) for x in cells)])


# -- running ------------------------------------------------------------------------------


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--quick", action="store_true", help="small sizes: the whole run takes < 60 s"
    )
    parser.add_argument("--only", default="", help="comma-separated workloads, e.g. W1,W3")
    parser.add_argument(
        "--json", default=str(DEFAULT_JSON), help="where to write the results as JSON"
    )
    parser.add_argument(
        "--chart",
        metavar="PATH",
        help="also draw the results as a chart (matplotlib) to PATH, e.g. results.svg",
    )
    parser.add_argument("--strict", action="store_true", help="exit with 3 when a target fails")
    parser.add_argument(
        "--postgres",
        metavar="URL",
        help="PostgreSQL server of P1-P6 (default: a throwaway one, started and stopped here)",
    )
    args = parser.parse_args(argv)
    if args.postgres is not None:
        try:
            check_url(args.postgres)
        except ValueError as exc:
            parser.error(f"--postgres {exc}")
    if args.only:
        wanted = [w.strip().upper() for w in args.only.split(",") if w.strip()]
        unknown = [w for w in wanted if w not in WORKLOADS]
        if unknown:
            parser.error(
                f"unknown workload(s) {', '.join(unknown)}; choose among {', '.join(WORKLOADS)}"
            )
        args.only = wanted
    else:
        args.only = list(WORKLOADS)
    return args


Outcomes = tuple[list[Row], list[str], list[str], list[str]]  # rows, notes, errors, skipped


def _run_workloads(keys: Sequence[str], sizes: Sizes) -> Outcomes:
    rows: list[Row] = []
    notes: list[str] = []
    errors: list[str] = []
    skipped: list[str] = []
    for key in keys:
        workload = WORKLOADS[key]
        started = time.perf_counter()
        print(f"[{key}] {workload.title} ...", file=sys.stderr, flush=True)
        try:
            rows.extend(asyncio.run(workload.run(sizes, notes)))
        except Skipped as exc:
            skipped.append(f"{key}: {exc}")
            print(f"[{key}] skipped: {exc}", file=sys.stderr, flush=True)
        except Exception:
            errors.append(f"{key}: {traceback.format_exc()}")
            print(f"[{key}] FAILED TO RUN:\n{traceback.format_exc()}", file=sys.stderr, flush=True)
        print(f"[{key}] done in {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    return rows, notes, errors, skipped


def _in_own_thread(keys: Sequence[str], sizes: Sizes) -> Outcomes:
    """Run the workloads, in a thread of their own when called from a running event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _run_workloads(keys, sizes)
    box: list[Outcomes] = []
    thread = threading.Thread(target=lambda: box.append(_run_workloads(keys, sizes)))
    thread.start()
    thread.join()
    return box[0]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the suite; returns the process exit code (0 unless --strict and a target fails)."""
    args = _parse(argv)
    sizes = Sizes.quick_mode() if args.quick else Sizes()
    info = machine()
    started = time.perf_counter()
    print(
        f"aiolmdb {info['aiolmdb']} benchmarks ({'quick' if args.quick else 'full'} mode) on "
        f"{info['cpu_count']} CPUs ({info['cpu_model']}), {info['platform']}, {info['python']}, "
        f"py-lmdb {info['py_lmdb']} (LMDB {info['lmdb_library']}), aiosqlite {info['aiosqlite']} "
        f"(SQLite {info['sqlite']}), pydantic {info['pydantic']}; temp dir {info['temp_dir']}",
        flush=True,
    )
    with postgres_source(args.postgres):
        rows, notes, errors, skipped = _in_own_thread(args.only, sizes)
    elapsed = time.perf_counter() - started

    print()
    print(table(rows))
    print()
    checks = [r for r in rows if r.check is not None]
    failed = [r for r in checks if r.check is not None and not r.check.passed]
    print(f"Targets: {len(checks) - len(failed)}/{len(checks)} pass.", end="")
    if failed:
        print(
            " FAIL: "
            + "; ".join(
                f"{r.workload} {r.contender}: {r.check.target} (measured {r.check.measured})"
                for r in failed
                if r.check
            ),
            end="",
        )
    print()
    for skip in skipped:
        print(f"Skipped {skip}")
    print(
        "\nNotes: every contender runs in this process on its own environment in a fresh "
        "temporary directory on disk, default durability (LMDB sync=True, SQLite "
        "synchronous=FULL); time.perf_counter; a warm-up before each measurement; "
        "'aiolmdb x' = aiolmdb's ops/s ÷ the row's ops/s. The 'aiolmdb :memory:' rows run "
        "aiolmdb.open(':memory:') (no disk, nothing durable) in the same turns as aiolmdb "
        "on the same data: what the API costs without storage, held to no target."
    )
    for note in notes:
        print(f"- {note}")
    print(f"\nTotal {elapsed:.1f} s.")
    for error in errors:
        print(f"\nERROR in {error}")

    results = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full",
        "argv": list(argv) if argv is not None else sys.argv[1:],
        "machine": info,
        "elapsed_s": elapsed,
        "rows": [r.to_json() for r in rows],
        "targets": {"passed": len(checks) - len(failed), "total": len(checks)},
        "notes": notes,
        "errors": errors,
        "skipped": skipped,
    }
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    print(f"Results written to {path}")
    if args.chart is not None:
        chart.main([str(path), args.chart])

    if errors:
        return 1
    if args.strict and failed:
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
