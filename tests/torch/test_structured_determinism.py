"""Structured pruning decides the same in every process: groups, unpruned ops, the plan (byte for
byte) and the pruned weights agree between two fresh interpreters with different hash seeds, on
every hand-written zoo model and the generated transformers zoo's default subset."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import prunekit
from tests.zoo import ZOO
from tests.zoo.generated import DEFAULT_FAMILIES

ROOT = Path(__file__).resolve().parents[2]
NAMES = sorted(ZOO) + [f"gen:{family}" for family in DEFAULT_FAMILIES]


def _probe(out: Path, hash_seed: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONHASHSEED=hash_seed, OMP_NUM_THREADS="1")
    source = str(Path(prunekit.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([source, str(ROOT), env.get("PYTHONPATH", "")])
    command = [sys.executable, "-m", "tests.torch.determinism_probe", str(out), *NAMES]
    return subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_two_interpreters_with_different_hash_seeds_make_identical_plans(tmp_path):
    outs = {seed: tmp_path / f"seed{seed}.jsonl" for seed in ("1", "4242")}
    runs = {seed: _probe(out, seed) for seed, out in outs.items()}  # both at once: one per core
    for seed, process in runs.items():
        _, stderr = process.communicate(timeout=900)
        assert process.returncode == 0, f"probe with PYTHONHASHSEED={seed} failed:\n{stderr[-3000:]}"
    first, second = (out.read_text(encoding="utf-8").splitlines() for out in outs.values())
    assert len(first) == len(second) == len(NAMES)
    for line_a, line_b in zip(first, second):
        a, b = json.loads(line_a), json.loads(line_b)
        for key in ("groups", "unsupported", "plan", "weights"):
            assert a[key] == b[key], f"{a['name']}: {key} differ between hash seeds"
        assert line_a == line_b, f"{a['name']}: the serialised decisions differ between hash seeds"
        assert a["groups"], f"{a['name']}: no channel group found"
