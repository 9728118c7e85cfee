"""Pruning under tf.distribute.MirroredStrategy on 2 logical CPUs: every replica holds the same masks and weights.

The CPU can be split into logical devices only before TensorFlow initialises, so the training runs
once in a fresh process (``tests/keras/distributed_runs.py``) and these tests read what it saved.
Each run prunes the tiny digits CNN with ``PolynomialDecay(0.0, 0.8, 0, 6, frequency=2)`` over 8
optimizer steps of global batch 8: ``fit`` after pruning inside ``strategy.scope()``, ``fit`` after
pruning outside it, and a ``strategy.run`` GradientTape loop.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.assertions import assert_sparsity

ROOT = Path(__file__).resolve().parents[2]
RUNS = ("fit", "pruned_outside_scope", "custom_loop")
REPLICAS = (0, 1)
TARGET, OPTIMIZER_STEPS = 0.8, 8


@pytest.fixture(scope="module")
def distributed(tmp_path_factory):
    """(runs.json, {run: {array name: array}}) from one run of the helper script."""
    out = tmp_path_factory.mktemp("distributed")
    done = subprocess.run(
        [sys.executable, "-m", "tests.keras.distributed_runs", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads((out / "runs.json").read_text())
    arrays = {name: dict(np.load(out / f"{name}.npz")) for name in (*RUNS, "mlp")}
    return report, arrays


def _layers(distributed, run):
    report, arrays = distributed
    return report["runs"][run]["layers"], arrays[run]


@pytest.mark.parametrize("run", RUNS)
def test_masks_step_and_applied_counters_are_mirrored_like_the_kernels(distributed, run):
    report, _ = distributed
    assert report["replicas"] == 2
    types = report["runs"][run]["variable_types"]
    assert len(types) == 4 * 4  # conv1, conv2, fc1, fc2 x mask, kernel, applied, step
    assert set(types.values()) == {"MirroredVariable"}


@pytest.mark.parametrize("run", RUNS)
def test_every_replica_holds_the_same_masks(distributed, run):
    layers, arrays = _layers(distributed, run)
    for name in layers:
        np.testing.assert_array_equal(arrays[f"{name}/mask/0"], arrays[f"{name}/mask/1"], err_msg=name)


@pytest.mark.parametrize("run", RUNS)
def test_kernel_zeros_are_exactly_where_the_mask_is_zero_on_every_replica(distributed, run):
    layers, arrays = _layers(distributed, run)
    for name in layers:
        for replica in REPLICAS:
            kernel, mask = arrays[f"{name}/kernel/{replica}"], arrays[f"{name}/mask/{replica}"]
            np.testing.assert_array_equal(kernel == 0, ~mask, err_msg=f"{name} replica {replica}")


@pytest.mark.parametrize("run", RUNS)
def test_each_kernel_reaches_the_schedules_sparsity_to_the_element(distributed, run):
    layers, arrays = _layers(distributed, run)
    assert layers == ["conv1", "conv2", "fc1", "fc2"]
    for name in layers:
        for replica in REPLICAS:
            assert_sparsity(arrays[f"{name}/kernel/{replica}"], TARGET, f"{name} replica {replica}")


@pytest.mark.parametrize("run", RUNS)
def test_pruning_step_follows_every_optimizer_step_on_every_replica(distributed, run):
    report, arrays = distributed
    assert report["runs"][run]["optimizer_steps"] == OPTIMIZER_STEPS
    for name in report["runs"][run]["layers"]:
        for replica in REPLICAS:
            # TF MOT numbering: the first batch is step 1, so 8 optimizer steps end at step 8
            assert arrays[run][f"{name}/step/{replica}"] == OPTIMIZER_STEPS
            assert arrays[run][f"{name}/applied/{replica}"] == OPTIMIZER_STEPS


@pytest.mark.parametrize("run", RUNS)
def test_every_trainable_weight_is_equal_across_replicas(distributed, run):
    # BatchNormalization's moving statistics are per replica in Keras 3 (unless synchronized=True)
    _, arrays = _layers(distributed, run)
    names = sorted({key.rsplit("/", 1)[0] for key in arrays if key.startswith("trainable/")})
    assert len(names) == 12  # 4 kernels, 4 biases, 2 BatchNorms x (gamma, beta)
    for name in names:
        np.testing.assert_array_equal(arrays[f"{name}/0"], arrays[f"{name}/1"], err_msg=name)


@pytest.mark.parametrize("run", RUNS)
def test_strip_pruning_gives_a_plain_model_with_the_same_zeros(distributed, run):
    report, arrays = distributed
    assert report["runs"][run]["stripped_pruned_layers"] == []
    for name in report["runs"][run]["layers"]:
        stripped = arrays[run][f"{name}/stripped"]
        np.testing.assert_array_equal(stripped, arrays[run][f"{name}/kernel/0"], err_msg=name)
        assert_sparsity(stripped, TARGET, f"stripped {name}")


def test_mirrored_training_matches_the_same_training_on_one_device(distributed):
    _, arrays = distributed
    mlp = arrays["mlp"]
    masks = [key.split("/", 2)[2] for key in mlp if key.startswith("single/mask/")]
    assert len(masks) == 3
    for path in masks:
        np.testing.assert_array_equal(mlp[f"mirrored/mask/{path}"], mlp[f"single/mask/{path}"], err_msg=path)
    weights = [key.split("/", 2)[2] for key in mlp if key.startswith("single/weight/")]
    for path in weights:  # the same math, summed in another order: equal up to float rounding
        np.testing.assert_allclose(mlp[f"mirrored/weight/{path}"], mlp[f"single/weight/{path}"], rtol=0, atol=1e-6)


def test_pruning_under_another_strategys_scope_is_refused_naming_the_model(distributed):
    report, _ = distributed
    assert report["refusal"].startswith("model 'digits_cnn' was built under a different tf.distribute strategy")
    assert "prune it inside the scope of the strategy that built it" in report["refusal"]
