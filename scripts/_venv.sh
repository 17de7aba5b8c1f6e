# Sourced by the other scripts: create .venv on first use and install the project into it.
# $1: the extras to install, e.g. "[dev,bench]" (empty for the library alone).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --editable ".${1:-}"
