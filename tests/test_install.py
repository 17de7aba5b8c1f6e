"""The install path: a wheel built from the checkout installs into a fresh virtual
environment and works there, typed, without the tests."""

from __future__ import annotations

import email.parser
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

import aiolmdb

ROOT = Path(__file__).resolve().parent.parent
#: What a build of the checkout leaves out of its copy (caches, environments, builds).
NOT_BUILT_FROM = shutil.ignore_patterns(
    ".git",
    ".venv",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".mypy_cache",
    ".pytest_cache",
    ".ruff_cache",
    ".hypothesis",
)

#: Run in the fresh environment: where aiolmdb comes from, its version, whether every
#: requirement of the wheel (and of its postgres extra) is installed, and a round trip
#: through LMDB.
SMOKE = r"""
import asyncio, importlib.metadata, re, sys
import aiolmdb

def installed(requirement):
    name = re.match(r"[A-Za-z0-9_.-]+", requirement).group(0)
    try:
        importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True

missing = [r for r in importlib.metadata.requires("aiolmdb") or [] if not installed(r)]

async def main():
    async with aiolmdb.open(sys.argv[1]) as env:
        db = env.open_db("installed")
        await db.put(b"k", b"v")
        return await db.get(b"k")

print(aiolmdb.__file__)
print(aiolmdb.__version__, importlib.metadata.version("aiolmdb"))
print(missing)
print(asyncio.run(main()))
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel ``pip wheel --no-deps`` builds from a copy of the checkout (so that the
    build leaves nothing in the checkout), with the setuptools already installed."""
    work = tmp_path_factory.mktemp("build")
    source = work / "source"
    shutil.copytree(ROOT, source, ignore=NOT_BUILT_FROM)
    run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "--no-index",
        "--wheel-dir",
        str(work / "dist"),
        str(source),
    )
    (built,) = (work / "dist").glob("*.whl")
    return built


def run(*command: str, cwd: Path | None = None) -> str:
    """``command``'s output; its output and errors in the failure when it fails."""
    done = subprocess.run(command, capture_output=True, text=True, cwd=cwd, check=False)
    assert done.returncode == 0, f"{command} exited {done.returncode}:\n{done.stdout}{done.stderr}"
    return done.stdout


def test_the_wheel_holds_the_package_typed_and_no_tests(wheel: Path) -> None:
    assert wheel.name == f"aiolmdb-{aiolmdb.__version__}-py3-none-any.whl"
    names = zipfile.ZipFile(wheel).namelist()
    info = f"aiolmdb-{aiolmdb.__version__}.dist-info/"
    assert "aiolmdb/py.typed" in names
    for module in ("environment.py", "storage/lmdb/engine.py", "models/collection.py"):
        assert f"aiolmdb/{module}" in names
    # Nothing but the package and its metadata: no tests, benchmarks, examples or stubs.
    assert [name for name in names if not name.startswith(("aiolmdb/", info))] == []
    assert not [name for name in names if "__pycache__" in name or name.endswith(".pyc")]


def test_the_wheel_metadata_names_the_dependencies_and_the_postgres_extra(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        metadata = email.parser.Parser().parsestr(
            archive.read(f"aiolmdb-{aiolmdb.__version__}.dist-info/METADATA").decode()
        )
    assert metadata["Name"] == "aiolmdb"
    assert metadata["Version"] == aiolmdb.__version__ == "0.2.0"
    requires = metadata.get_all("Requires-Dist") or []
    plain = sorted(r.split(";")[0].split(">")[0] for r in requires if "extra ==" not in r)
    assert plain == ["lmdb", "msgpack", "pydantic", "typing_extensions"]
    postgres = [r for r in requires if 'extra == "postgres"' in r]
    assert {r.split(";")[0].split(">")[0].split("[")[0] for r in postgres} == {
        "psycopg",
        "psycopg_pool",
        "greenlet",
    }
    assert "postgres" in (metadata.get_all("Provides-Extra") or [])


def test_the_wheel_installs_into_a_fresh_environment_and_works(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", str(venv))
    python = venv / "bin" / "python"
    run(
        sys.executable,
        "-m",
        "pip",
        "--python",
        str(python),
        "install",
        "--no-index",
        "--no-deps",
        "--disable-pip-version-check",
        str(wheel),
    )
    # The dependencies are the ones installed here already, reused rather than
    # downloaded: their directory joins the new environment's path, after its own
    # (a directory named in a .pth file runs none of the .pth files inside it, so
    # this checkout's own install there stays out).
    site = Path(
        run(str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip()
    )
    (site / "reused-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    done = subprocess.run(
        [str(python), "-c", SMOKE, str(tmp_path / "data")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    location, versions, missing, value = done.stdout.splitlines()
    assert Path(location).is_relative_to(site / "aiolmdb")  # the wheel's copy, not the checkout
    assert versions == f"{aiolmdb.__version__} {aiolmdb.__version__}"
    assert missing == "[]"
    assert value == "b'v'"
