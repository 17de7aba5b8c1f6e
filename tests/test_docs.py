"""Every code block of README.md and docs/**/*.md runs, as the page shows it.

One test per page: its ```python blocks run in order in one namespace (top-level
``await`` allowed, all on one event loop), its ```bash blocks with ``bash -euo
pipefail`` and the project's interpreter first on PATH, both in a fresh temporary
directory that is the current directory for the page. Blocks marked
``<!-- fragment: why -->`` are reported skipped, each with its reason, by
``test_fragment``. A page that mentions ``AIOLMDB_POSTGRES_URL`` gets it set to a fresh
schema on the suite's PostgreSQL server. See tests/helpers/docblocks.py.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers.docblocks import Block, Kind, PageError, parse_page
from helpers.postgres_fixtures import SWITCH

import aiolmdb

ROOT = Path(__file__).resolve().parent.parent
PAGES = [Path("README.md"), *sorted(p.relative_to(ROOT) for p in (ROOT / "docs").rglob("*.md"))]
POSTGRES_VARIABLE = "AIOLMDB_POSTGRES_URL"


def _blocks(page: Path) -> list[Block]:
    return parse_page(page, (ROOT / page).read_text(encoding="utf-8"))


def _fragments() -> list[Any]:
    params: list[Any] = []
    for page in PAGES:
        try:
            blocks = _blocks(page)
        except PageError:
            continue  # test_page reports it
        params += [
            pytest.param(block, id=block.where, marks=pytest.mark.skip(reason=block.reason))
            for block in blocks
            if block.kind is Kind.FRAGMENT
        ]
    return params


def _run_python(block: Block, namespace: dict[str, Any], loop: asyncio.AbstractEventLoop) -> None:
    # Padded so that tracebacks name the page's own line numbers.
    source = "\n" * (block.line - 1) + block.code
    code = compile(source, str(block.page), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    result = eval(code, namespace)  # a coroutine when the block awaits at top level
    if inspect.iscoroutine(result):
        loop.run_until_complete(result)


def _run_bash(block: Block, cwd: Path, environ: dict[str, str]) -> None:
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block.code],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(
            f"{block.where}: the bash block exited with {done.returncode}\n"
            f"--- stdout\n{done.stdout}--- stderr\n{done.stderr}",
            pytrace=False,
        )


def _close_environments(namespace: dict[str, Any], loop: asyncio.AbstractEventLoop) -> None:
    """Close what the page left open, so that its threads and servers end with it."""
    for value in list(namespace.values()):
        if isinstance(value, aiolmdb.AsyncEnvironment):
            loop.run_until_complete(value.close())


def _postgres_url(request: pytest.FixtureRequest) -> str:
    if os.environ.get(SWITCH) == "0":
        pytest.skip(f"{SWITCH}=0: the page needs PostgreSQL")
    try:
        url: str = request.getfixturevalue("postgres_url")
    except pytest.fail.Exception as exc:
        pytest.skip(f"the page needs PostgreSQL, and no server could be started: {exc}")
    return url


@pytest.mark.parametrize("page", PAGES, ids=[str(p) for p in PAGES])
def test_page(
    page: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    text = (ROOT / page).read_text(encoding="utf-8")
    refused = ""
    try:
        blocks = parse_page(page, text)
    except PageError as exc:
        blocks, refused = [], str(exc)
    if refused:  # failed outside the handler, so that the message is shown once
        pytest.fail(refused, pytrace=False)
    if POSTGRES_VARIABLE in text:
        monkeypatch.setenv(POSTGRES_VARIABLE, _postgres_url(request))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # modules the page writes import
    environ = dict(os.environ)
    environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{environ.get('PATH', '')}"
    # The checkout's code, also where the interpreter has another install of it.
    environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), environ.get("PYTHONPATH")]))
    modules_before = set(sys.modules)
    namespace: dict[str, Any] = {"__name__": "__main__"}
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        for block in blocks:
            if block.kind is Kind.PYTHON:
                _run_python(block, namespace, loop)
            elif block.kind is Kind.BASH:
                _run_bash(block, tmp_path, environ)
    finally:
        try:
            _close_environments(namespace, loop)
        finally:
            asyncio.set_event_loop(None)
            loop.close()
            for name in set(sys.modules) - modules_before:
                origin = getattr(sys.modules[name], "__file__", None) or ""
                if origin.startswith(str(tmp_path)):
                    del sys.modules[name]  # the next page may write a module of that name


@pytest.mark.parametrize("block", _fragments())
def test_fragment(block: Block) -> None:
    """Never runs: each fragment is reported skipped, with the reason its page gives."""
    raise AssertionError(f"{block.where} is a fragment and must not run")


def test_unknown_fence_language_is_refused() -> None:
    with pytest.raises(PageError, match=r"x\.md:2: fence language 'js' is not one"):
        parse_page(Path("x.md"), "```js\nalert(1)\n```\n")
    with pytest.raises(PageError, match=r"fence language '\(none\)'"):
        parse_page(Path("x.md"), "```\nsomething\n```\n")


def test_fragments_need_a_reason_and_a_block() -> None:
    with pytest.raises(PageError, match=r"x\.md:1: a fragment marker must say why"):
        parse_page(Path("x.md"), "<!-- fragment: -->\n```python\npass\n```\n")
    with pytest.raises(PageError, match=r"x\.md:1: a fragment marker must come right before"):
        parse_page(Path("x.md"), "<!-- fragment: needs a server -->\n\n```python\npass\n```\n")
    with pytest.raises(PageError, match=r"x\.md:1: the fence opened here is never closed"):
        parse_page(Path("x.md"), "```python\npass\n")


def test_blocks_keep_their_kind_line_and_indentation() -> None:
    text = (
        "# Page\n"
        "```python\nx = 1\n```\n"
        "!!! note\n    ```bash\n    echo hi\n    ```\n"
        "<!-- fragment: needs the network -->\n```python\nimport urllib\n```\n"
        "```text\noutput\n```\n"
    )
    blocks = parse_page(Path("p.md"), text)
    assert [(b.line, b.kind, b.code, b.reason) for b in blocks] == [
        (3, Kind.PYTHON, "x = 1\n", ""),
        (7, Kind.BASH, "echo hi\n", ""),
        (11, Kind.FRAGMENT, "import urllib\n", "needs the network"),
        (14, Kind.SHOWN, "output\n", ""),
    ]


def test_the_errors_page_names_every_public_error() -> None:
    text = (ROOT / "docs" / "errors.md").read_text(encoding="utf-8")
    public = [name for name in aiolmdb.__all__ if name.endswith("Error")]
    assert "ConflictError" in public
    assert [name for name in public if f"`{name}`" not in text] == []


def test_the_readme_links_to_files_of_the_checkout() -> None:
    """mkdocs checks the links of docs/; the README, read on its own, is checked here."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = [t for t in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text) if "://" not in t]
    assert "docs/index.md" in targets
    assert [t for t in targets if not (ROOT / t).is_file()] == []
