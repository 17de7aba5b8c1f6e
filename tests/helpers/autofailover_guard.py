"""Child program of :class:`helpers.autofailover.FailoverCluster`: the one place that
stops the cluster and removes its directory.

Usage: ``python -m helpers.autofailover_guard DIRECTORY STOP_TIMEOUT``. It waits
until a line arrives on its stdin or the stdin closes, which also happens when the
test process dies without cleaning up (killed, or interrupted past its teardown).
Then it runs :func:`helpers.autofailover.tear_down`, and exits 1, saying why on
stderr, when a process of the cluster survived.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

from helpers.autofailover import ClusterError, tear_down


def main(directory: Path, stop_timeout: float) -> int:
    """Wait for the word to stop, then stop the cluster and remove ``directory``."""
    sys.stdin.readline()
    try:
        tear_down(directory, stop_timeout)
    except ClusterError as exc:
        # Nobody may be reading any more when the test process is gone.
        with contextlib.suppress(OSError):
            print(exc, file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), float(sys.argv[2])))
