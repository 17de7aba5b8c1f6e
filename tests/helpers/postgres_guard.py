"""Child program of :class:`helpers.postgres.PostgresServer`: the one place that stops
the test suite's PostgreSQL server and removes its directory.

Usage: ``python postgres_guard.py DIRECTORY PIDFILE STOP_COMMAND...``. It waits
until a line arrives on its stdin or the stdin closes, which also happens when the
test process dies without cleaning up (killed, or interrupted past its teardown).
Then, if ``PIDFILE`` (the server's ``postmaster.pid``) exists, it runs
``STOP_COMMAND`` (``pg_ctl stop``); once no server runs there it removes
``DIRECTORY``. When the server would not stop it leaves the directory (removing it
under a running server would hide that server) and exits 1, saying why on stderr.

It runs in a session of its own, so that a Ctrl-C meant for the test run does not
end it before its work is done.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
from pathlib import Path


def main(directory: Path, pidfile: Path, stop_command: list[str]) -> int:
    """Wait for the word to stop, then stop the server and remove ``directory``."""
    sys.stdin.readline()
    if pidfile.exists():
        stopped = subprocess.run(stop_command, capture_output=True, text=True, check=False)
        if stopped.returncode != 0 and pidfile.exists():
            # Nobody may be reading any more when the test process is gone.
            with contextlib.suppress(OSError):
                print(
                    f"{' '.join(stop_command)} failed, {directory} is left: "
                    f"{stopped.stdout}{stopped.stderr}",
                    file=sys.stderr,
                    flush=True,
                )
            return 1
    shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]))
