"""Remove half the hidden neurons of the 64 -> 128 -> 64 -> 10 MLP and fine-tune it back.

Structured pruning makes the model physically smaller: the rebuilt Sequential has Dense layers
of 64 and 32 units, with the kept weights copied. Run: ``python examples/keras_mlp_neuron_pruning.py``.
"""

import keras

import prunekit.keras as pk


def _compile(model: keras.Model, lr: float) -> keras.Model:
    model.compile(
        optimizer=keras.optimizers.Adam(lr),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def main(epochs: int = 30, finetune_epochs: int = 10) -> dict:
    keras.utils.set_random_seed(0)
    data = pk.load_digits_nhwc()
    mlp = _compile(pk.digits_mlp(hidden=(128, 64)), 2e-3)
    mlp.fit(data.x_train, data.y_train, batch_size=32, epochs=epochs, verbose=0)
    _, dense_accuracy = mlp.evaluate(data.x_test, data.y_test, verbose=0)

    small = _compile(pk.prune_channels(mlp, ratio=0.5, importance="l1").model, 1e-3)
    _, pruned_accuracy = small.evaluate(data.x_test, data.y_test, verbose=0)
    small.fit(data.x_train, data.y_train, batch_size=32, epochs=finetune_epochs, verbose=0)
    _, finetuned_accuracy = small.evaluate(data.x_test, data.y_test, verbose=0)

    results = {
        "units": [layer.units for layer in small.layers if isinstance(layer, keras.layers.Dense)],
        "params": (mlp.count_params(), small.count_params()),
        "accuracy": (float(dense_accuracy), float(pruned_accuracy), float(finetuned_accuracy)),
    }
    print(
        f"hidden units 128/64 -> {results['units'][0]}/{results['units'][1]}; "
        f"parameters {results['params'][0]:,} -> {results['params'][1]:,}"
    )
    print(
        f"test accuracy: dense {dense_accuracy:.2%}, right after removal {pruned_accuracy:.2%}, "
        f"after {finetune_epochs} fine-tuning epochs {finetuned_accuracy:.2%}"
    )
    return results


if __name__ == "__main__":
    main()
