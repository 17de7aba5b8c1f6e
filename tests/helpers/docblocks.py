"""The fenced code blocks of a Markdown page, as the docs tests run them.

The convention (README.md and docs/**/*.md): ```python blocks run, in order, in one
namespace per page; ```bash blocks run with ``bash -euo pipefail``; ```text blocks are
output and ```toml, ```yaml, ```ini blocks configuration, shown and not run. A block
preceded by the line ``<!-- fragment: why -->`` is skipped, for that reason. Any other
fence language (or none) is refused, so that nothing goes unrun without saying so.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Block", "Kind", "PageError", "parse_page"]


class Kind(enum.Enum):
    """What the docs tests do with a block."""

    PYTHON = "python"  # run in the page's namespace
    BASH = "bash"  # run with bash -euo pipefail
    SHOWN = "shown"  # output or configuration: not run
    FRAGMENT = "fragment"  # marked as a fragment: skipped, with its reason


#: Fence languages shown to the reader and never run.
SHOWN_LANGUAGES = frozenset({"text", "toml", "yaml", "ini"})
_FENCE = re.compile(r"^(?P<indent>[ ]*)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*?)\s*$")
_FRAGMENT = re.compile(r"^\s*<!--\s*fragment:(?P<reason>.*?)-->\s*$")


class PageError(ValueError):
    """A page breaks the convention (an unknown fence language, a fence left open, a
    fragment marker without a reason or without a block after it)."""


@dataclass(frozen=True)
class Block:
    """One fenced block of a page."""

    page: Path
    line: int  # the 1-based line of the block's first code line
    language: str
    kind: Kind
    code: str  # dedented by the fence's indentation
    reason: str = ""  # why a fragment is skipped

    @property
    def where(self) -> str:
        """``page:line``, for messages and test ids."""
        return f"{self.page}:{self.line}"


def _kind(language: str, where: str) -> Kind:
    if language == "python":
        return Kind.PYTHON
    if language == "bash":
        return Kind.BASH
    if language in SHOWN_LANGUAGES:
        return Kind.SHOWN
    known = ", ".join(["python", "bash", *sorted(SHOWN_LANGUAGES)])
    raise PageError(
        f"{where}: fence language {language or '(none)'!r} is not one the docs tests know"
        f" ({known}); mark a block that must not run with <!-- fragment: why -->"
    )


def parse_page(page: Path, text: str) -> list[Block]:
    """Every fenced block of ``text`` (the Markdown of ``page``), in order."""
    lines = text.splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        marker = _FRAGMENT.match(lines[i])
        opening = _FENCE.match(lines[i])
        if marker is not None:
            reason = marker.group("reason").strip()
            if not reason:
                raise PageError(f"{page}:{i + 1}: a fragment marker must say why")
            if i + 1 >= len(lines) or _FENCE.match(lines[i + 1]) is None:
                raise PageError(f"{page}:{i + 1}: a fragment marker must come right before a fence")
            i += 1
            opening = _FENCE.match(lines[i])
        else:
            reason = ""
        if opening is None:
            i += 1
            continue
        indent, fence = opening.group("indent"), opening.group("fence")
        language = opening.group("info").split(maxsplit=1)[0] if opening.group("info") else ""
        start = i + 1
        end = start
        while end < len(lines):
            closing = _FENCE.match(lines[end])
            if (
                closing is not None
                and closing.group("fence").startswith(fence[0])
                and len(closing.group("fence")) >= len(fence)
                and not closing.group("info")
            ):
                break
            end += 1
        else:
            raise PageError(f"{page}:{i + 1}: the fence opened here is never closed")
        where = f"{page}:{start + 1}"
        kind = Kind.FRAGMENT if reason else _kind(language, where)
        code = "\n".join(
            line[len(indent) :] if line.startswith(indent) else line.lstrip()
            for line in lines[start:end]
        )
        blocks.append(Block(page, start + 1, language, kind, code + "\n", reason))
        i = end + 1
    return blocks
