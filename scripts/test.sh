#!/usr/bin/env bash
# Sets up .venv with every extra (CPU torch pinned by constraints.txt) and runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q -c constraints.txt -e ".[all,dev]"
exec .venv/bin/python -m pytest -q --durations=15 "$@"
