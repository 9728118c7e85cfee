"""Record TF MOT 0.8.1's step and schedule numbers once, as fixtures for prunekit's side-by-side test.

Runs on real ``tensorflow-model-optimization==0.8.1`` with ``tf-keras`` (TF MOT does not run on
Keras 3), in a separate virtualenv, never prunekit's::

    python -m venv /work/tfmot-venv
    /work/tfmot-venv/bin/pip install tensorflow==2.21.* tf-keras==2.21.0 tensorflow-model-optimization==0.8.1 dm-tree
    TF_USE_LEGACY_KERAS=1 /work/tfmot-venv/bin/python scripts/record_tfmot_fixtures.py

It writes ``tests/keras/tfmot_compat/fixtures/tfmot_0_8_1.json``: for each case, the sparsity of a
10x10 ``Dense`` kernel's mask after every training batch and of the kernel after training with ``UpdatePruningStep``, the pruning step after
the last batch, the schedules' ``(should_prune, sparsity)`` for a range of steps, and the steps at
which ``PruningSummaries`` logs. ``tests/keras/tfmot_compat/test_side_by_side.py`` runs the same
cases on prunekit.keras and asserts the same numbers.
"""

import json
import os
import sys
import tempfile
from pathlib import Path

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_model_optimization as tfmot  # noqa: E402
import tf_keras as keras  # noqa: E402

sparsity = tfmot.sparsity.keras
OUT = Path(__file__).resolve().parents[1] / "tests" / "keras" / "tfmot_compat" / "fixtures" / "tfmot_0_8_1.json"

# name -> (schedule class, keyword arguments, training batches)
TRAINING_CASES = {
    "constant_0.5_begin0_freq100_50_batches": (
        "ConstantSparsity",
        {"target_sparsity": 0.5, "begin_step": 0, "frequency": 100},
        50,
    ),
    "polynomial_0.5_0.8_end20_freq10_20_batches": (
        "PolynomialDecay",
        {"initial_sparsity": 0.5, "final_sparsity": 0.8, "begin_step": 0, "end_step": 20, "frequency": 10},
        20,
    ),
    "constant_0.5_begin5_freq5_5_batches": ("ConstantSparsity", {"target_sparsity": 0.5, "begin_step": 5, "frequency": 5}, 5),
    "polynomial_0.2_0.6_begin1_end4_freq1_6_batches": (
        "PolynomialDecay",
        {"initial_sparsity": 0.2, "final_sparsity": 0.6, "begin_step": 1, "end_step": 4, "power": 3, "frequency": 1},
        6,
    ),
    "constant_0.99_begin0_freq1_3_batches": ("ConstantSparsity", {"target_sparsity": 0.99, "begin_step": 0, "frequency": 1}, 3),
}
SCHEDULE_STEPS = list(range(0, 26))


def _train(schedule_name: str, kwargs: dict, batches: int) -> dict:
    keras.utils.set_random_seed(0)
    model = sparsity.prune_low_magnitude(
        keras.Sequential([keras.layers.Dense(10, input_shape=(10,), name="fc")]),
        pruning_schedule=getattr(sparsity, schedule_name)(**kwargs),
    )
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(batches, 10)).astype("float32"), rng.normal(size=(batches, 10)).astype("float32")
    per_batch = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            ((_, mask, _),) = model.layers[0].pruning_vars  # the kernel re-masks at the next forward pass
            per_batch.append(float(1.0 - mask.numpy().mean()))

    model.fit(x, y, batch_size=1, epochs=1, verbose=0, shuffle=False, callbacks=[sparsity.UpdatePruningStep(), Record()])
    kernel = sparsity.strip_pruning(model).layers[0].kernel.numpy()  # UpdatePruningStep re-masked it at epoch end
    return {
        "sparsity_per_batch": per_batch,
        "final_kernel_sparsity": float((kernel == 0).mean()),
        "final_step": int(model.layers[0].pruning_step.numpy()),
    }


def _schedule_values(schedule_name: str, kwargs: dict) -> list:
    schedule = getattr(sparsity, schedule_name)(**kwargs)
    values = []
    for step in SCHEDULE_STEPS:
        prune, value = schedule(tf.constant(step, tf.int64))
        values.append([bool(prune.numpy()), round(float(value.numpy()), 6)])
    return values


def _summary_steps() -> list:
    """The steps at which PruningSummaries logs in fit: 3 epochs of 4 batches."""
    model = sparsity.prune_low_magnitude(
        keras.Sequential([keras.layers.Dense(10, input_shape=(10,), name="fc")]),
        pruning_schedule=sparsity.ConstantSparsity(0.5, 0, frequency=2),
    )
    model.compile(optimizer="sgd", loss="mse")
    log_dir = tempfile.mkdtemp()
    x = np.ones((8, 10), "float32")
    model.fit(
        x, x, batch_size=2, epochs=3, verbose=0, callbacks=[sparsity.UpdatePruningStep(), sparsity.PruningSummaries(log_dir)]
    )
    steps = set()
    for root, _, files in os.walk(os.path.join(log_dir, "metrics")):
        for name in files:
            for event in tf.compat.v1.train.summary_iterator(os.path.join(root, name)):
                if any(value.tag.endswith("/sparsity") for value in event.summary.value):
                    steps.add(int(event.step))
    return sorted(steps)


def main() -> None:
    record = {
        "tfmot": tfmot.__version__,
        "tensorflow": tf.__version__,
        "training": {
            name: {"schedule": s, "kwargs": k, "batches": b, **_train(s, k, b)} for name, (s, k, b) in TRAINING_CASES.items()
        },
        "schedule_steps": SCHEDULE_STEPS,
        "schedules": {name: _schedule_values(s, k) for name, (s, k, _) in TRAINING_CASES.items()},
        "pruning_summaries_steps_3_epochs_of_4_batches": _summary_steps(),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    tmp = OUT.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    tmp.replace(OUT)
    print(json.dumps({k: record[k] for k in ("tfmot", "tensorflow")}), file=sys.stderr)


if __name__ == "__main__":
    main()
