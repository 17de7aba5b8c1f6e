#!/usr/bin/env bash
# The quick-start demo, on a temporary environment that is removed afterwards.
source "$(dirname "$0")/_venv.sh" ""
.venv/bin/python examples/quickstart.py
