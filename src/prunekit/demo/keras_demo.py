"""The built-in demo on Keras 3: train the digits CNN, prune it to several sparsities, fine-tune, measure."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np

from prunekit.core.atomic import atomic_path, atomic_write_text
from prunekit.errors import ConfigError
from prunekit.keras.measure.metrics import serialized_size
from prunekit.keras.models import digits_cnn, load_digits_nhwc
from prunekit.methods import default_method, get_method, run_method, run_recovery

SIZE_FORMAT = "HDF5 file of the stripped model's weights (one dataset per weight, no optimizer state)"


def _accuracy(model: keras.Model, x: Any, y: Any) -> float:
    # a direct call, not predict(): predict() traces a new function for every model
    return float((np.asarray(model(x, training=False)).argmax(-1) == y).mean())


def run_demo(
    output_dir: str | Path | None = None,
    quick: bool = False,
    methods: Sequence[str] | None = None,
    sparsities: Sequence[float] = (0.5, 0.8, 0.9),
    seed: int = 0,
    recover: str | None = None,
) -> dict[str, Any]:
    """Train the digits CNN in Keras, prune a copy per (method, sparsity) with fine-tuning, measure each
    (with ``recover``, recover each pruned model by that ``recover`` method, as the PyTorch demo does).

    Returns ``{"framework": "keras", "dense": {"accuracy", "size_bytes", "gzip_bytes", ...},
    "runs": [{"method", "sparsity", "accuracy", "size_bytes", "gzip_bytes", "seconds",
    "achieved_sparsity"}, ...]}`` on the held-out test split; sizes are those of
    :data:`SIZE_FORMAT`. With ``output_dir``, writes ``results.json`` and every model as ``.keras``.

    Example::

        results = run_demo(quick=True)
        results["runs"][-1]["accuracy"]
    """
    methods = list(methods) if methods else [default_method(framework="keras").name]
    for method in methods:
        get_method(method, framework="keras")  # unknown names fail before any training
    if recover is not None:
        get_method(recover, kind="recover", framework="keras")
    quick_options: dict[str, Any] = {"epochs": 3} if quick else {}  # a smoke test's fine-tuning budget
    for sparsity in sparsities:
        if not 0 <= sparsity < 1:
            raise ConfigError(f"demo sparsities should be in [0, 1), got {sparsity}")
    keras.utils.set_random_seed(seed)
    data = load_digits_nhwc(seed=seed)
    started = time.perf_counter()
    dense = digits_cnn()
    dense.compile(
        optimizer=keras.optimizers.Adam(2e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    dense.fit(data.x_train, data.y_train, batch_size=32, epochs=4 if quick else 15, verbose=0)
    sizes = serialized_size(dense)
    results: dict[str, Any] = {
        "framework": "keras",
        "model": "digits_cnn",
        "size_format": SIZE_FORMAT,
        "dense": {
            "accuracy": _accuracy(dense, data.x_test, data.y_test),
            "params": int(dense.count_params()),
            "size_bytes": sizes["raw_bytes"],
            "gzip_bytes": sizes["gzip_bytes"],
            "seconds": time.perf_counter() - started,
        },
        "runs": [],
    }
    models = {"dense": dense}
    for method in methods:
        for sparsity in sparsities:
            keras.utils.set_random_seed(seed)
            started = time.perf_counter()
            run = run_method(
                method,
                "keras",
                dense,
                data.x_train,
                data.y_train,
                sparsity,
                seed=seed,
                batch_size=32,
                **quick_options,
            )
            recovered: dict[str, Any] = {}
            if recover is not None:
                before = _accuracy(run.model, data.x_test, data.y_test)
                run.model = run_recovery(
                    recover,
                    "keras",
                    run.model,
                    data.x_train,
                    data.y_train,
                    teacher=dense,
                    seed=seed,
                    batch_size=32,
                    **quick_options,
                ).model
                recovered = {"recover": recover, "accuracy_before_recovery": before}
            sizes = serialized_size(run.model)
            results["runs"].append(
                {
                    "method": method,
                    "sparsity": float(sparsity),
                    "achieved_sparsity": float(run.sparsity),
                    "accuracy": _accuracy(run.model, data.x_test, data.y_test),
                    "size_bytes": sizes["raw_bytes"],
                    "gzip_bytes": sizes["gzip_bytes"],
                    "seconds": time.perf_counter() - started,
                    **recovered,
                }
            )
            models[f"{method}-{round(sparsity * 100)}"] = run.model
    if output_dir is not None:
        out = Path(output_dir)
        for name, model in models.items():
            with atomic_path(out / f"{name}.keras") as tmp:
                model.save(tmp)
        atomic_write_text(out / "results.json", json.dumps(results, indent=2) + "\n")
    return results
