#!/usr/bin/env bash
# Sets up .venv with every extra (CPU torch pinned by constraints.txt), runs ruff and mypy, then the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q -c constraints.txt -e ".[all,dev]"
.venv/bin/ruff check src tests benchmarks examples scripts
.venv/bin/ruff format --check src tests benchmarks examples scripts
.venv/bin/mypy
exec .venv/bin/python -m pytest -q --durations=15 "$@"
