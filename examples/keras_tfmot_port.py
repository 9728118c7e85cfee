"""A TF Model Optimization pruning script ported to Keras 3 by changing one import.

The flow of TF MOT's "Pruning in Keras" tutorial on the bundled digits: train a CNN, prune it
to 80% with a PolynomialDecay schedule while fine-tuning, strip the pruning state, convert to
TFLite, and compare gzip sizes. Run: ``python examples/keras_tfmot_port.py``.
"""

import tempfile

import keras
import numpy as np

import prunekit.keras as sparsity  # was: import tensorflow_model_optimization as tfmot; sparsity = tfmot.sparsity.keras


def main(epochs: int = 10, prune_epochs: int = 4, log_dir: str | None = None) -> dict:
    """``log_dir`` receives the pruning summaries (default: a new temporary folder, not the working one)."""
    log_dir = log_dir or tempfile.mkdtemp(prefix="prunekit-pruning-logs-")
    keras.utils.set_random_seed(0)
    data = sparsity.load_digits_nhwc()
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    model = sparsity.digits_cnn()
    model.compile(optimizer=keras.optimizers.Adam(2e-3), loss=loss, metrics=["accuracy"])
    model.fit(data.x_train, data.y_train, batch_size=32, epochs=epochs, verbose=0)
    _, baseline_accuracy = model.evaluate(data.x_test, data.y_test, verbose=0)

    # --- from here on, the tfmot tutorial's code, unchanged apart from the import ---
    batch_size = 32
    frequency = int(np.ceil(len(data.x_train) / batch_size)) // 2  # twice per epoch
    end_step = frequency * 2 * prune_epochs
    pruning_params = {
        "pruning_schedule": sparsity.PolynomialDecay(
            initial_sparsity=0.50, final_sparsity=0.80, begin_step=0, end_step=end_step, frequency=frequency
        )
    }
    model_for_pruning = sparsity.prune_low_magnitude(model, **pruning_params)
    model_for_pruning.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss, metrics=["accuracy"])
    callbacks = [sparsity.UpdatePruningStep(), sparsity.PruningSummaries(log_dir=log_dir)]
    model_for_pruning.fit(
        data.x_train, data.y_train, batch_size=batch_size, epochs=prune_epochs + 1, verbose=0, callbacks=callbacks
    )
    _, pruned_accuracy = model_for_pruning.evaluate(data.x_test, data.y_test, verbose=0)
    model_for_export = sparsity.strip_pruning(model_for_pruning)
    # --- end of the tutorial's code ---

    dense_tflite = sparsity.convert_to_tflite(model)
    pruned_tflite = sparsity.convert_to_tflite(model_for_export)
    pruned_int8 = sparsity.convert_to_tflite(model_for_export, "int8", representative_data=data.x_val)
    results = {
        "baseline_accuracy": float(baseline_accuracy),
        "pruned_accuracy": float(pruned_accuracy),
        "sparsity": sparsity.sparsity_report(model_for_export)["layers"]["fc1/kernel"]["sparsity"],
        "dense_gzip_bytes": sparsity.TFLiteModel(dense_tflite).gzip_bytes,
        "pruned_gzip_bytes": sparsity.TFLiteModel(pruned_tflite).gzip_bytes,
        "int8": sparsity.evaluate_tflite(pruned_int8, data.x_test, data.y_test, latency_repeats=10),
    }
    print(
        f"baseline test accuracy {results['baseline_accuracy']:.2%}, pruned {results['pruned_accuracy']:.2%}, "
        f"fc1 sparsity {results['sparsity']:.0%}"
    )
    print(
        f"gzipped TFLite: dense {results['dense_gzip_bytes']:,} B, pruned {results['pruned_gzip_bytes']:,} B; "
        f"pruned int8 {results['int8']['gzip_bytes']:,} B at {results['int8']['accuracy']:.2%}"
    )
    print(f"pruning summaries: {log_dir}")
    return results


if __name__ == "__main__":
    main()
