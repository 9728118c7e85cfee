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
.venv/bin/python -m pytest -q --durations=15 "$@"
if [ "$#" -eq 0 ]; then
    # The generated transformers zoo's long tail (every discovered family beyond the default subset):
    # its own step with its own time cap, so it cannot push the main suite past its budget.
    PRUNEKIT_ZOO_TAIL=1 timeout "${PRUNEKIT_ZOO_TAIL_SECONDS:-1200}" \
        .venv/bin/python -m pytest -q tests/zoo/test_generated_zoo.py -k tail
fi
