"""The README's Keras block runs as pasted (the digits CNN ends in logits) and leaves nothing in the working folder."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def keras_block() -> str:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), re.S)
    return next(block for block in blocks if "prune_low_magnitude(" in block)


@pytest.mark.slow
def test_readme_keras_block_runs_with_a_logits_model_and_writes_nothing_here(tmp_path):
    script = keras_block() + (
        "\nimport numpy as np\n"
        "weights = [w for w in final.get_weights() if w.ndim > 1]\n"
        "print('SPARSITY', sum((w == 0).sum() for w in weights) / sum(w.size for w in weights))\n"
        "print('ACCURACY', float(np.mean(np.argmax(model.predict(data.x_test, verbose=0), 1) == data.y_test)))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "TF_CPP_MIN_LOG_LEVEL": "3"}
    work = tmp_path / "work"
    work.mkdir()
    done = subprocess.run([sys.executable, "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    values = dict(line.split() for line in done.stdout.splitlines() if line.startswith(("SPARSITY", "ACCURACY")))
    assert abs(float(values["SPARSITY"]) - 0.9) < 0.01
    assert float(values["ACCURACY"]) > 0.8  # trained with from_logits=True: the loss fits the model's outputs
    assert sorted(os.listdir(work)) == []  # no logs/ or other files left where the user ran it
