"""The typing cases run mypy in a temporary directory: point it at our stubs and mypy."""

import os
import sys
from pathlib import Path

_STUBS = Path(__file__).resolve().parents[2] / "stubs"


def _prepend(variable: str, entry: str) -> None:
    os.environ[variable] = os.pathsep.join(p for p in (entry, os.environ.get(variable, "")) if p)


_prepend("MYPYPATH", str(_STUBS))
# mypy is installed beside the running interpreter, which may not be on PATH.
_prepend("PATH", str(Path(sys.executable).parent))
