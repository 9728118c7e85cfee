"""Choose Keras PQAT's defaults on the digits *validation* split, never the test split.

The setting of ``benchmarks/recovery.py``'s ``keras_pqat_minus_ptq_pt``: the Keras digits CNN
trained 10 epochs, ``prune_gradually`` to 90% (5 epochs), then every arm trains that pruned model
for the same epochs on the same batches (Adam, lr 1e-4, batch 64, ``set_random_seed(seed)``
before each): the float fine-tune with the pruned zeros held exactly (``KeepZeros``), converted by
PTQ (int8 TFLite), against
PQAT variants exported to int8 TFLite. Accuracy is read through the TFLite interpreter on
``split.x_val`` (270 images per seed); the fake-quant model's own validation accuracy is printed too.

Variants (``--variants``): ``default`` (``pqat``'s defaults), ``ranges=N`` (activation ranges
frozen after N training batches, ``freeze_ranges_after``), ``bn=N`` (folded BatchNormalization
statistics frozen after N batches, ``freeze_bn_after``; 0: from the start, the default; ``none``:
never), both comma-separated,
``bn-train`` (``fold_batchnorm=False``: BatchNormalization left as a layer, trained, and the
convolution's own output fake-quantized). One training epoch is 19 batches.

Run: ``python scripts/keras_pqat_search.py [--seeds 0 1 2 3 4] [--epochs 3]``; the last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from statistics import mean

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import prunekit.keras as pk  # noqa: E402
from prunekit.keras.deploy.tflite import TFLiteModel, convert_to_tflite  # noqa: E402
from prunekit.keras.recover import export_tflite, pqat  # noqa: E402
from prunekit.keras.recover.handlers import KeepZeros  # noqa: E402

VARIANTS = ["bn=none", "ranges=19,bn=none", "bn=0", "bn=19", "ranges=19,bn=19", "bn-train"]


def _pruned(split, seed: int, cache: Path) -> keras.Model:
    """The benchmark's pruned model for ``seed`` (cached under ``cache``: it takes most of the time)."""
    path = cache / f"pruned-seed{seed}.keras"
    if path.exists():
        return keras.saving.load_model(path, compile=False)
    keras.utils.set_random_seed(seed)
    dense = pk.digits_cnn()
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    dense.compile(optimizer=keras.optimizers.Adam(3e-3), loss=loss)
    dense.fit(split.x_train, split.y_train, epochs=10, batch_size=32, verbose=0)
    pruned = pk.prune_gradually(dense, split.x_train, split.y_train, 0.9, epochs=5, lr=1e-3).model
    cache.mkdir(parents=True, exist_ok=True)
    pruned.save(path)
    return pruned


def _float_arm(pruned: keras.Model, split, seed: int, epochs: int) -> keras.Model:
    """The PTQ arm's float fine-tune with the pruned model's exact zeros held (``KeepZeros``: checked)."""
    model = keras.models.clone_model(pruned)
    model.set_weights(pruned.get_weights())
    keras.utils.set_random_seed(seed)
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(split.x_train, split.y_train, epochs=epochs, batch_size=64, verbose=0, callbacks=[KeepZeros(model)])
    for before, after in zip(pruned.weights, model.weights):
        if len(before.shape) > 1 and not np.array_equal(np.asarray(before) == 0, np.asarray(after) == 0):
            raise RuntimeError(f"the float arm did not keep the zeros of {before.path}")
    return model


def _options(variant: str) -> dict[str, object]:
    """``pqat`` options of a variant: ``default``, ``bn-train`` or comma-separated ``ranges=N`` / ``bn=N``."""
    if variant == "default":
        return {}
    if variant == "bn-train":
        return {"fold_batchnorm": False}
    names = {"ranges": "freeze_ranges_after", "bn": "freeze_bn_after"}
    options: dict[str, object] = {}
    for part in variant.split(","):
        key, _, value = part.partition("=")
        if key not in names or not (value.isdigit() or value == "none"):
            raise SystemExit(f"unknown variant {variant!r}: use default, bn-train or e.g. ranges=19,bn=0 (or bn=none)")
        options[names[key]] = None if value == "none" else int(value)
    return options


def _one_seed(seed: int, epochs: int, variants: list[str], cache: Path) -> dict[str, float]:
    split = pk.load_digits_nhwc(seed=seed)
    pruned = _pruned(split, seed, cache)

    def val_accuracy(flatbuffer: bytes) -> float:
        return float((TFLiteModel(flatbuffer).predict(split.x_val).argmax(-1) == split.y_val).mean())

    def fake_accuracy(model: keras.Model) -> float:
        return float((np.asarray(model(split.x_val, training=False)).argmax(-1) == split.y_val).mean())

    row = {"pruned_ptq": val_accuracy(convert_to_tflite(pruned, "int8", split.x_val))}
    row["ptq"] = val_accuracy(convert_to_tflite(_float_arm(pruned, split, seed, epochs), "int8", split.x_val))
    for variant in variants:
        options = _options(variant)
        keras.utils.set_random_seed(seed)
        run = pqat(pruned, split.x_train, split.y_train, epochs=epochs, lr=1e-4, **options)
        row[variant] = val_accuracy(export_tflite(run.model, split.x_val)[0])
        row[f"{variant} fake-quant"] = fake_accuracy(run.model)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--variants", nargs="+", default=VARIANTS)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "prunekit-keras-pqat-search")
    args = parser.parse_args()
    rows = []
    for seed in args.seeds:
        rows.append(_one_seed(seed, args.epochs, args.variants, args.cache))
        print(f"seed {seed}: " + ", ".join(f"{k} {v:.2%}" for k, v in rows[-1].items()), flush=True)
    means = {key: mean(row[key] for row in rows) for key in rows[0]}
    print(f"\nvalidation accuracy (TFLite int8), mean of seeds {args.seeds}, {args.epochs} epochs")
    for key, value in means.items():
        print(f"{key:28} {value:8.2%} {100 * (value - means['ptq']):+7.2f} pt vs ptq")
    print(json.dumps({"search": "keras_pqat", "seeds": args.seeds, "epochs": args.epochs,
                      "val_accuracy": {k: round(v, 4) for k, v in means.items()},
                      "per_seed": rows}))  # fmt: skip


if __name__ == "__main__":
    main()
