"""The dynamic sparse training example runs as written and does what it says."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_dynamic_sparse_training_example_keeps_95_percent_zeros_and_learns():
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "dynamic_sparse_training.py")],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout
    match = re.search(r"(\d+) updates; final mask turnover: ([\d.]+)%", out)
    assert match, out
    assert int(match.group(1)) == 31  # every half epoch (10 steps) from step 10 to before 0.75 * 400
    assert 0 < float(match.group(2)) < 100
    counts = re.search(r"active weights per layer: \{'1.weight': (\d+), '3.weight': (\d+), '5.weight': (\d+)\}", out)
    assert counts and [int(c) for c in counts.groups()] == [
        64 * 256 - round(0.95 * 64 * 256),
        256 * 128 - round(0.95 * 256 * 128),
        128 * 10 - round(0.95 * 1280),
    ]
    accuracy = float(re.search(r"test accuracy: ([\d.]+)%", out).group(1))
    assert accuracy >= 90.0
