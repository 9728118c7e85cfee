"""examples/recover_after_pruning.py runs as written and does what it says."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_recover_example_distils_back_and_keeps_every_zero_in_int8():
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "recover_after_pruning.py")],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout
    removed = float(re.search(r"half the channels removed: ([\d.]+)%", out).group(1))
    distilled = float(re.search(r"after distillation: ([\d.]+)%", out).group(1))
    kept, pruned = map(int, re.search(r"int8 zeros: (\d+) of (\d+) pruned weights", out).groups())
    int8 = float(re.search(r"int8 ONNX Runtime test accuracy: ([\d.]+)%", out).group(1))
    assert distilled > removed and distilled >= 95.0, out
    assert kept == pruned > 0, out
    assert int8 >= 95.0, out
