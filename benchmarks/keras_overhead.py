"""Time per Keras training step with prunekit pruning vs. the same model without pruning.

Both variants train their own copy of the same model on the same batch, interleaved call by call
(A B, then B A the next round). A step is what ``model.fit`` does per batch: the pruned variant
runs ``UpdatePruningStep.on_train_batch_begin`` and then the compiled train step, whose optimizer
update is followed by the mask constraint; the dense one runs the train step alone. The pruned
model holds 80% sparsity with masks recomputed every 100 steps (a gradual-pruning setting), so the
figure includes the per-step masking and the periodic mask selection. Measured at TensorFlow's
default thread count and, in a child process, at 1 thread.

Run: ``python benchmarks/keras_overhead.py [--quick]``. Last line: one JSON object with
``prunekit_keras_overhead`` (pruned step time / dense step time, the worst model at the default
thread count; the goal is <= 1.10, never asserted).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

MALLOC_ENV = ("GLIBC_TUNABLES", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_ARENA_MAX", "LD_PRELOAD")


def _configure_threads(threads: int | None) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import tensorflow as tf

    if threads is not None:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)


def _models() -> dict[str, tuple[Callable, int]]:
    import keras

    import prunekit.keras as pk

    def mlp_1024():
        layers = keras.layers
        return keras.Sequential(
            [
                keras.Input((8, 8, 1)),
                layers.Flatten(),
                layers.Dense(1024, activation="relu"),
                layers.Dense(1024, activation="relu"),
                layers.Dense(10),
            ],
            name="mlp_1024",
        )

    return {"digits_cnn": (pk.digits_cnn, 64), "mlp_1024": (mlp_1024, 128)}


def _variants(factory: Callable, batch: int) -> dict[str, Callable[[], None]]:
    import keras
    import numpy as np

    import prunekit.keras as pk
    from prunekit import ConstantSparsity

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.random((batch, 8, 8, 1), dtype=np.float32)
    y = rng.integers(0, 10, batch)
    base = factory()

    def compiled(model):
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return model

    dense = compiled(keras.models.clone_model(base))
    dense.set_weights(base.get_weights())
    pruned = compiled(pk.prune_low_magnitude(base, pruning_schedule=ConstantSparsity(0.8, begin_step=0, frequency=100)))
    callback = pk.UpdatePruningStep()
    callback.set_model(pruned)
    callback.on_train_begin()

    def dense_step() -> None:
        dense.train_on_batch(x, y)

    def pruned_step() -> None:
        callback.on_train_batch_begin(batch=-1)
        pruned.train_on_batch(x, y)

    return {"dense": dense_step, "pruned": pruned_step}


def _time_interleaved(
    variants: dict[str, Callable[[], None]], rounds: int, repeats: int, warmup: int = 3
) -> dict[str, list[float]]:
    """Per-round median seconds of each variant, calls interleaved and the order rotated every round."""
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    medians: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(rounds):
        order = names[round_index % 2 :] + names[: round_index % 2]
        samples: dict[str, list[float]] = {name: [] for name in names}
        for _ in range(repeats):
            for name in order:
                started = time.perf_counter()
                variants[name]()
                samples[name].append(time.perf_counter() - started)
        for name in names:
            medians[name].append(statistics.median(samples[name]))
    return medians


def measure(rounds: int, repeats: int) -> dict[str, dict[str, float]]:
    """Step times (ms, best and median of round medians) and the paired overhead ratio per model."""
    results = {}
    for name, (factory, batch) in _models().items():
        medians = _time_interleaved(_variants(factory, batch), rounds, repeats)
        ratios = [p / d for p, d in zip(medians["pruned"], medians["dense"])]
        results[name] = {
            "batch": batch,
            "dense_ms": 1000 * statistics.median(medians["dense"]),
            "pruned_ms": 1000 * statistics.median(medians["pruned"]),
            "dense_best_ms": 1000 * min(medians["dense"]),
            "pruned_best_ms": 1000 * min(medians["pruned"]),
            "overhead": statistics.median(ratios),
        }
    return results


def _print_table(title: str, results: dict[str, dict[str, float]]) -> None:
    print(f"\n{title}")
    print(f"{'model':<12} {'batch':>5} {'dense ms':>9} {'pruned ms':>10} {'overhead':>9}")
    for name, row in results.items():
        print(f"{name:<12} {row['batch']:>5} {row['dense_ms']:>9.2f} {row['pruned_ms']:>10.2f} {row['overhead']:>8.3f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (noisier)")
    parser.add_argument("--threads", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    _configure_threads(args.threads)
    rounds, repeats = (6, 10) if args.quick else (12, 25)
    results = measure(rounds, repeats)
    if args.child:
        print(json.dumps(results))
        return
    import tensorflow as tf

    _print_table(
        f"TensorFlow default threads (intra-op {tf.config.threading.get_intra_op_parallelism_threads() or 'auto'}), "
        f"{rounds} rounds x {repeats} interleaved steps",
        results,
    )
    child = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--threads", "1", "--child", *(["--quick"] if args.quick else [])],
        capture_output=True,
        text=True,
        check=True,
    )
    single = json.loads(child.stdout.strip().splitlines()[-1])
    _print_table("1 thread (child process)", single)
    malloc = {key: os.environ[key] for key in MALLOC_ENV if os.environ.get(key)} or {"allocator": "glibc defaults"}
    print(f"\nmalloc settings: {malloc}; goal: overhead <= 1.10 (not asserted)")
    print(
        json.dumps(
            {
                "benchmark": "keras_overhead",
                "prunekit_keras_overhead": round(max(row["overhead"] for row in results.values()), 4),
                "per_model": {name: round(row["overhead"], 4) for name, row in results.items()},
                "per_model_1_thread": {name: round(row["overhead"], 4) for name, row in single.items()},
                "step_ms": {
                    name: {"dense": round(row["dense_ms"], 3), "pruned": round(row["pruned_ms"], 3)}
                    for name, row in results.items()
                },
                "sparsity": 0.8,
                "mask_frequency": 100,
                "malloc": malloc,
                "tensorflow": tf.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
