"""Gradual pruning inside your own GradientTape training loop (no model.fit).

UpdatePruningStep is driven by hand, as TF MOT documents for custom loops: before every
optimizer step, call ``on_train_batch_begin``. Forgetting it raises instead of silently not
pruning. Run: ``python examples/keras_custom_loop.py``.
"""

import keras
import numpy as np
import tensorflow as tf

import prunekit.keras as pk


def main(epochs: int = 12, sparsity: float = 0.8, batch_size: int = 32) -> dict:
    keras.utils.set_random_seed(0)
    data = pk.load_digits_nhwc()
    steps_per_epoch = int(np.ceil(len(data.x_train) / batch_size))
    schedule = pk.gradual_schedule(sparsity, epochs=epochs, steps_per_epoch=steps_per_epoch)
    model = pk.prune_low_magnitude(pk.digits_cnn(), pruning_schedule=schedule)
    optimizer = keras.optimizers.Adam(2e-3)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function
    def train_step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    step = pk.UpdatePruningStep()
    step.set_model(model)
    step.on_train_begin()
    dataset = tf.data.Dataset.from_tensor_slices((data.x_train, data.y_train))
    for epoch in range(epochs):
        for x, y in dataset.shuffle(len(data.x_train), seed=epoch).batch(batch_size):
            step.on_train_batch_begin(batch=-1)
            train_step(x, y)
    step.on_train_end()

    final = pk.strip_pruning(model)
    accuracy = float((final.predict(data.x_test, verbose=0).argmax(-1) == data.y_test).mean())
    report = pk.sparsity_report(final)
    kernels = {path: layer["sparsity"] for path, layer in report["layers"].items() if path.endswith("kernel")}
    print(f"kernel sparsity: {', '.join(f'{p} {s:.0%}' for p, s in kernels.items())}; test accuracy {accuracy:.2%}")
    return {"accuracy": accuracy, "kernel_sparsity": kernels}


if __name__ == "__main__":
    main()
