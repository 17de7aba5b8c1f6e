"""An mkdocs hook (mkdocs.yml ``hooks:``): the charts of docs/benchmarks.md, drawn from
the page's own tables while the site is built.

The recorded figures live in one place, the page's tables; each results table gives
one chart, ``benchmarks/chart-<n>.svg`` (1-based, in page order), which the page shows
next to it. Nothing drawn is committed.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files

# mkdocs loads a hook by its path; the charts are drawn by the benchmarks package of
# this checkout, also when mkdocs runs as a console script (no checkout on sys.path).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.chart import render_svg, rows_from_table

PAGE = "benchmarks.md"
TITLES = ("LMDB workloads (W1-W10)", "PostgreSQL workloads (P1-P6)")


def chart_name(n: int) -> str:
    """The site path of the page's ``n``-th chart (1-based)."""
    return f"benchmarks/chart-{n}.svg"


def on_files(files: Files, config: MkDocsConfig, **kwargs: Any) -> Files:
    """Add one SVG chart per results table of the benchmarks page."""
    page = files.get_file_from_path(PAGE)
    if page is None:
        return files
    tables = rows_from_table(page.content_string)
    for n, rows in enumerate(tables, start=1):
        title = TITLES[n - 1] if n <= len(TITLES) else f"Table {n}"
        files.append(File.generated(config, chart_name(n), content=render_svg(rows, title)))
    return files
