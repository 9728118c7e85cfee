"""The Foundation's examples run as written and do what they say."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_prune_in_your_loop_example_reaches_80_percent_and_keeps_accuracy():
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "prune_in_your_loop.py")],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout
    match = re.search(r"pruned weights: ([\d.]+)% zeros; test accuracy: ([\d.]+)%", out)
    assert match, out
    assert float(match.group(1)) == 80.0
    assert float(match.group(2)) >= 95.0
