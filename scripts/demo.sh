#!/usr/bin/env bash
# Sets up .venv with the PyTorch extra (CPU torch pinned by constraints.txt) and runs the built-in demo.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q -c constraints.txt -e ".[torch,report]"
exec .venv/bin/prunekit demo "$@"
