"""The console's exit codes, and the error that carries one."""

from __future__ import annotations

import enum

__all__ = ["CliError", "ExitCode"]


class ExitCode(enum.IntEnum):
    """What ``aiolmdb`` exits with (documented in docs/cli.md)."""

    OK = 0
    #: ``verify`` found problems (or ``load`` an input line it cannot read).
    PROBLEMS = 1
    #: A wrong command line (click's own code for usage errors).
    USAGE = 2
    #: No environment at the location, no such database, no such key.
    NOT_FOUND = 3
    #: A stored key or value does not decode with the collection given.
    DECODE = 4
    #: The command is not supported on the location's engine.
    UNSUPPORTED = 5
    #: The ``cli`` extra (typer, rich) is not installed.
    MISSING_EXTRA = 6
    #: Interrupted (Ctrl-C), as shells report SIGINT.
    INTERRUPTED = 130


class CliError(Exception):
    """A failure the console reports as one line, exiting with ``code``."""

    def __init__(self, message: str, code: ExitCode) -> None:
        super().__init__(message)
        self.code = code
