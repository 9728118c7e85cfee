"""Prune under ``tf.distribute.MirroredStrategy`` on 2 logical CPUs and save what every replica holds.

Run as ``python -m tests.keras.distributed_runs OUT_DIR`` from the repository root, in a fresh
process: the CPU must be split into two logical devices before TensorFlow initialises, which a
pytest process that already ran Keras tests cannot do. ``test_distribute.py`` launches it once and
asserts on the files it writes: ``OUT_DIR/<run>.npz`` per training run (each replica's masks,
kernels, steps and trainable weights, the stripped model's kernels) and ``OUT_DIR/runs.json`` (variable
types, optimizer steps, the refusal message).

Example::

    python -m tests.keras.distributed_runs /tmp/runs   # writes /tmp/runs/fit.npz, ..., runs.json
"""

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf  # noqa: E402

tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2
)
tf.config.threading.set_intra_op_parallelism_threads(1)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import prunekit.keras as pk  # noqa: E402
from prunekit import ConfigError  # noqa: E402
from prunekit.keras.unstructured.state import prunings  # noqa: E402
from tests.keras.helpers import compile_classifier, random_digits, tiny_cnn  # noqa: E402

STRATEGY = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
BATCH, SAMPLES = 8, 64  # 8 optimizer steps: pruning steps 1..8


def schedule() -> pk.PolynomialDecay:
    """Prunes at steps 2, 4 and 6 of 1..8 (TF MOT numbering), reaching 0.8 at step 6."""
    return pk.PolynomialDecay(0.0, 0.8, begin_step=0, end_step=6, frequency=2)


def replicas(variable) -> list[np.ndarray]:
    """Each replica's copy of a (Keras or tf) variable, as arrays."""
    value = variable.value if isinstance(variable, keras.Variable) else variable
    return [np.asarray(local) for local in STRATEGY.experimental_local_results(value)]


def fit(model) -> None:
    x, y = random_digits(SAMPLES)
    model.fit(x, y, epochs=1, batch_size=BATCH, verbose=0, shuffle=False, callbacks=[pk.UpdatePruningStep()])


def fit_pruned_in_scope():
    keras.utils.set_random_seed(0)
    with STRATEGY.scope():
        pruned = compile_classifier(pk.prune_low_magnitude(tiny_cnn(), pruning_schedule=schedule()))
    fit(pruned)
    return pruned, pruned.optimizer


def fit_pruned_outside_scope():
    """Built in the scope, pruned (cloned) outside it: the clone and its masks must still be mirrored."""
    keras.utils.set_random_seed(0)
    with STRATEGY.scope():
        model = tiny_cnn()
    pruned = pk.prune_low_magnitude(model, pruning_schedule=schedule())
    with STRATEGY.scope():
        compile_classifier(pruned)
    fit(pruned)
    return pruned, pruned.optimizer


def custom_loop():
    """A GradientTape step under ``strategy.run`` in a ``tf.function``, the callback called by hand."""
    keras.utils.set_random_seed(0)
    with STRATEGY.scope():
        pruned = pk.prune_low_magnitude(tiny_cnn(), pruning_schedule=schedule())
        optimizer = keras.optimizers.Adam(2e-3)
        optimizer.build(pruned.trainable_variables)  # optimizer variables must exist before tf.function traces
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
    x, y = random_digits(SAMPLES)
    batches = STRATEGY.experimental_distribute_dataset(tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH))

    def replica_step(xb, yb):
        with tf.GradientTape() as tape:
            loss = tf.nn.compute_average_loss(loss_fn(yb, pruned(xb, training=True)), global_batch_size=BATCH)
        grads = tape.gradient(loss, pruned.trainable_variables)
        optimizer.apply_gradients(zip(grads, pruned.trainable_variables))

    train_step = tf.function(lambda xb, yb: STRATEGY.run(replica_step, args=(xb, yb)))
    callback = pk.UpdatePruningStep()
    callback.set_model(pruned)
    callback.on_train_begin()
    for batch, (xb, yb) in enumerate(batches):
        callback.on_train_batch_begin(batch=batch)
        train_step(xb, yb)
    callback.on_train_end()
    return pruned, optimizer


def mlp_on(strategy):
    """The digits MLP pruned and trained the same way under ``strategy`` (no BatchNorm: replicas see the same math)."""
    keras.utils.set_random_seed(0)
    with strategy.scope():
        pruned = compile_classifier(pk.prune_low_magnitude(pk.digits_mlp(), pruning_schedule=schedule()))
    fit(pruned)
    return pruned


def save_run(out: Path, name: str, pruned, optimizer) -> dict:
    """Write each replica's state of ``pruned`` to ``out/name.npz``; return its variable types and counts."""
    arrays, info = {}, {"layers": [], "variable_types": {}, "optimizer_steps": replicas(optimizer.iterations)[0].item()}
    for state in prunings(pruned):
        if not state.attached:
            continue  # a weightless layer (Flatten, ...) marked as a no-op, as tfmot wraps it
        info["layers"].append(state.layer_name)
        for kind, variable in (("mask", state.masks[0]), ("kernel", state.weights[0]), ("applied", state.applied[0])):
            for replica, value in enumerate(replicas(variable)):
                arrays[f"{state.layer_name}/{kind}/{replica}"] = value
            value = variable.value if isinstance(variable, keras.Variable) else variable
            info["variable_types"][f"{state.layer_name}/{kind}"] = type(value).__name__
        for replica, value in enumerate(replicas(state.step)):
            arrays[f"{state.layer_name}/step/{replica}"] = value
        info["variable_types"][f"{state.layer_name}/step"] = type(state.step).__name__
    for weight in pruned.trainable_weights:  # BatchNorm's moving statistics are per replica in Keras 3
        for replica, value in enumerate(replicas(weight)):
            arrays[f"trainable/{weight.path}/{replica}"] = value
    plain = pk.strip_pruning(pruned)
    info["stripped_pruned_layers"] = pk.pruned_layers(plain)
    for layer in info["layers"]:
        arrays[f"{layer}/stripped"] = plain.get_layer(layer).kernel.numpy()
    np.savez(out / f"{name}.npz", **arrays)
    return info


def refusal_under_another_strategy() -> str:
    with STRATEGY.scope():
        model = tiny_cnn()
    with tf.distribute.OneDeviceStrategy("/cpu:0").scope():
        try:
            pk.prune_low_magnitude(model, pruning_schedule=schedule())
        except ConfigError as exc:
            return str(exc)
    return "no error"


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    report = {"replicas": STRATEGY.num_replicas_in_sync, "runs": {}}
    runs = {"fit": fit_pruned_in_scope, "pruned_outside_scope": fit_pruned_outside_scope, "custom_loop": custom_loop}
    for name, run in runs.items():
        report["runs"][name] = save_run(out, name, *run())
    mirrored, single = mlp_on(STRATEGY), mlp_on(tf.distribute.get_strategy())
    arrays = {}
    for device, model in (("mirrored", mirrored), ("single", single)):
        arrays.update({f"{device}/weight/{w.path}": w.numpy() for w in model.weights})
        arrays.update({f"{device}/mask/{path}": mask for path, mask in pk.get_masks(model).items()})
    np.savez(out / "mlp.npz", **arrays)
    report["refusal"] = refusal_under_another_strategy()
    (out / "runs.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
