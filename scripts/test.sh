#!/usr/bin/env bash
# Sets up .venv with every extra (CPU torch pinned by constraints.txt), runs ruff, mypy and the docs build, then the whole
# test suite in three steps, each with its own time cap (CI has 90 minutes): the main suite, the tests marked slow
# (training several epochs, subprocess end-to-end runs, every docs snippet), and the generated zoo's long tail.
# With arguments (`bash scripts/test.sh tests/torch -k structured`), pytest runs just those, uncapped.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q -c constraints.txt -e ".[all,dev]"
.venv/bin/ruff check src tests benchmarks examples scripts
.venv/bin/ruff format --check src tests benchmarks examples scripts
.venv/bin/mypy
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --quiet --site-dir "$(mktemp -d)"   # the docs site: broken links or API references fail
if [ "$#" -gt 0 ]; then
    exec .venv/bin/python -m pytest -q --durations=15 "$@"
fi
timeout "${PRUNEKIT_MAIN_SECONDS:-1500}" .venv/bin/python -m pytest -q --durations=15 -m "not slow"
timeout "${PRUNEKIT_SLOW_SECONDS:-1800}" .venv/bin/python -m pytest -q --durations=15 -m slow
# The generated transformers zoo's long tail (every discovered family beyond the default subset; marked slow, but
# skipped unless PRUNEKIT_ZOO_TAIL is set): its own step with its own cap.
PRUNEKIT_ZOO_TAIL=1 timeout "${PRUNEKIT_ZOO_TAIL_SECONDS:-1200}" \
    .venv/bin/python -m pytest -q tests/zoo/test_generated_zoo.py -k tail
