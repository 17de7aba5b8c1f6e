"""Importing aiolmdb loads no storage engine; opening a location loads only the engine it names.

Each check runs in a fresh interpreter, since this one has long since loaded
every engine. The import-linter contracts in pyproject.toml hold the same
layering statically; these tests hold it for the imports that actually run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: The modules an engine brings in: the engine packages and the drivers they use.
ENGINES = (
    "lmdb",
    "aiolmdb.storage.lmdb",
    "aiolmdb.storage.memory",
    "psycopg",
    "psycopg_pool",
    "greenlet",
    "aiolmdb.storage.postgres",
)

# Runs after the code under test: which engine modules it loaded, and where aiolmdb
# came from (so that a stale installed copy cannot pass for this checkout).
REPORT = f"""
import json, sys
import aiolmdb
print(json.dumps({{
    "loaded": [name for name in {ENGINES!r} if sys.modules.get(name) is not None],
    "aiolmdb": aiolmdb.__file__,
}}))
"""

# Opens the location given as argv[1], and writes and reads back one record.
OPEN_AND_USE = """
import asyncio, sys
import aiolmdb

async def main() -> None:
    async with aiolmdb.open(sys.argv[1]) as env:
        db = env.open_db("layering")
        await db.put(b"key", b"value")
        assert await db.get(b"key") == b"value", "the record did not read back"

asyncio.run(main())
"""


def engines_loaded_by(code: str, *args: str) -> list[str]:
    """The engine modules a fresh interpreter has loaded once it has run ``code``."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    try:
        done = subprocess.run(
            [sys.executable, "-c", code + REPORT, *args],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": path},
            timeout=60,
        )
    except subprocess.TimeoutExpired as exc:  # run() kills the child on timeout
        raise AssertionError(f"the child running {code!r} did not exit: {exc.stderr!r}") from exc
    assert done.returncode == 0, f"the child running {code!r} failed:\n{done.stderr}"
    report = json.loads(done.stdout.splitlines()[-1])
    assert Path(report["aiolmdb"]).resolve() == ROOT / "aiolmdb" / "__init__.py"
    loaded: list[str] = report["loaded"]
    return loaded


@pytest.mark.parametrize(
    "module",
    ["aiolmdb.coders", "aiolmdb", "aiolmdb.models", "aiolmdb.storage", "aiolmdb.storage.locations"],
)
def test_importing_loads_no_engine(module: str) -> None:
    assert engines_loaded_by(f"import {module}") == [], f"import {module} loaded an engine"


def test_opening_a_path_loads_lmdb_and_not_the_memory_engine(tmp_path: Path) -> None:
    loaded = engines_loaded_by(OPEN_AND_USE, str(tmp_path / "env"))
    assert loaded == ["lmdb", "aiolmdb.storage.lmdb"]


def test_opening_memory_loads_the_memory_engine_and_not_lmdb() -> None:
    assert engines_loaded_by(OPEN_AND_USE, ":memory:") == ["aiolmdb.storage.memory"]


def test_opening_a_postgresql_url_loads_its_engine_and_driver_only(postgres_url: str) -> None:
    loaded = engines_loaded_by(OPEN_AND_USE, postgres_url)
    assert loaded == ["psycopg", "psycopg_pool", "greenlet", "aiolmdb.storage.postgres"]


# As if the postgres extra were not installed: its packages cannot be imported.
WITHOUT_THE_DRIVER = """
import sys
for name in ("psycopg", "psycopg_pool", "greenlet"):
    sys.modules[name] = None
import aiolmdb
try:
    aiolmdb.open("postgresql://app@127.0.0.1:1/app")
except aiolmdb.UnsupportedError as exc:
    assert "pip install 'aiolmdb[postgres]'" in str(exc), str(exc)
else:
    raise AssertionError("a postgresql URL opened without the driver")
"""


def test_without_the_postgres_extra_aiolmdb_imports_and_a_url_says_what_to_install() -> None:
    assert engines_loaded_by(WITHOUT_THE_DRIVER) == []
