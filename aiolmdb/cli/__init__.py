"""The ``aiolmdb`` console script: look at, check, back up and load environments.

Its commands' logic lives in functions over an :class:`~aiolmdb.AsyncEnvironment`
(:mod:`.inspect`, :mod:`.transfer`, :mod:`.verify`, :mod:`.maintenance`); the
console itself (:mod:`.app`) needs the ``cli`` extra (typer, rich).
"""

from __future__ import annotations

import sys

from .errors import ExitCode

__all__ = ["main"]


def main() -> None:
    """Run the console (``aiolmdb ...``); without the ``cli`` extra, say how to install it."""
    try:
        import rich  # noqa: F401
        import typer  # noqa: F401
    except ImportError as exc:
        sys.stderr.write(
            f"aiolmdb: the command line needs the cli extra ({exc.name} is missing): "
            "pip install 'aiolmdb[cli]'\n"
        )
        raise SystemExit(int(ExitCode.MISSING_EXTRA)) from None
    from .app import app

    app(prog_name="aiolmdb")
