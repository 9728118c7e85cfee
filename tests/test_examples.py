"""The examples run as written and do what they say."""

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_example(name: str) -> str:
    """Run ``examples/NAME`` in a fresh interpreter from an empty folder; its standard output.

    The folder must stay empty: an example writes under a temporary directory, never where it is run.
    """
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}
    with tempfile.TemporaryDirectory() as folder:
        out = subprocess.run(
            [sys.executable, str(ROOT / "examples" / name)],
            cwd=folder,
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=300,
        ).stdout
        assert sorted(os.listdir(folder)) == [], f"examples/{name} left files where it was run"
    return out


def test_prune_in_your_loop_example_reaches_80_percent_and_keeps_accuracy():
    out = run_example("prune_in_your_loop.py")
    match = re.search(r"pruned weights: ([\d.]+)% zeros; test accuracy: ([\d.]+)%", out)
    assert match, out
    assert float(match.group(1)) == 80.0
    assert float(match.group(2)) >= 95.0


@pytest.mark.slow
def test_dynamic_sparse_training_example_keeps_95_percent_zeros_and_learns():
    out = run_example("dynamic_sparse_training.py")
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


def test_recover_example_distils_back_and_keeps_every_zero_in_int8():
    out = run_example("recover_after_pruning.py")
    removed = float(re.search(r"half the channels removed: ([\d.]+)%", out).group(1))
    distilled = float(re.search(r"after distillation: ([\d.]+)%", out).group(1))
    kept, pruned = map(int, re.search(r"int8 zeros: (\d+) of (\d+) pruned weights", out).groups())
    int8 = float(re.search(r"int8 ONNX Runtime test accuracy: ([\d.]+)%", out).group(1))
    assert distilled > removed and distilled >= 95.0, out
    assert kept == pruned > 0, out
    assert int8 >= 95.0, out
