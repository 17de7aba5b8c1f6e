#!/usr/bin/env bash
# The whole test suite: pytest (with the typing cases and the quick benchmark run),
# mypy --strict, the import-linter layering contracts (pyproject.toml), ruff and the docs
# site (mkdocs build --strict, into a temporary directory).
# Works on a fresh clone with Python >= 3.10 and pip; as root with apt-get it installs
# the system packages the tests need (scripts/_system.sh).
source "$(dirname "$0")/_venv.sh" "[dev,bench,postgres,cli,examples,docs]"
# System packages (pg_auto_failover); _venv.sh went to the checkout's root.
source scripts/_system.sh
.venv/bin/python -m pytest "$@"
.venv/bin/python -m mypy
# No cache: the graph is small, and a cache directory would litter the checkout.
.venv/bin/lint-imports --no-cache
.venv/bin/python -m ruff check .
.venv/bin/python -m ruff format --check .
site=$(mktemp -d)
trap 'rm -rf "$site"' EXIT
NO_MKDOCS_2_WARNING=1 .venv/bin/python -m mkdocs build --strict --quiet --site-dir "$site"
