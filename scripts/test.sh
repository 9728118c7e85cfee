#!/usr/bin/env bash
# Sets up .venv with every extra (CPU torch pinned by constraints.txt), runs ruff, mypy and the docs build, then the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q -c constraints.txt -e ".[all,dev]"
.venv/bin/ruff check src tests benchmarks examples scripts
.venv/bin/ruff format --check src tests benchmarks examples scripts
.venv/bin/mypy
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --quiet --site-dir "$(mktemp -d)"   # the docs site: broken links or API references fail
exec .venv/bin/python -m pytest -q --durations=15 "$@"
