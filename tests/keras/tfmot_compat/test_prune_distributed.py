"""TF MOT's prune_distributed_test, ported in ``prune_distributed_port.py``, run in a fresh process.

The CPU can be split into logical devices (the two replicas of ``MirroredStrategy``) only before
TensorFlow initialises, which a pytest process that already ran Keras tests cannot do.
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.slow
def test_tfmots_distributed_pruning_tests_pass_under_three_strategies():
    done = subprocess.run(
        [sys.executable, "-m", "unittest", "-v", "tests.keras.tfmot_compat.prune_distributed_port"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    # MultiWorkerMirroredStrategy, MirroredStrategy over 2 CPUs, OneDeviceStrategy, and tf.test.TestCase's
    # own test_session, which it skips
    assert re.search(r"^Ran 4 tests", done.stderr, re.MULTILINE), done.stderr[-2000:]
    assert re.search(r"^OK \(skipped=1\)$", done.stderr, re.MULTILINE), done.stderr[-2000:]
