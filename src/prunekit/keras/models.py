"""Small reference models in Keras 3 (the twins of ``prunekit.torch.models``) and NHWC digits."""

from __future__ import annotations

import keras
import numpy as np

from prunekit.data import DatasetSplit, load_digits

DIGITS_SHAPE = (8, 8, 1)


def load_digits_nhwc(seed: int = 0) -> DatasetSplit:
    """The bundled digits split with images transposed to Keras's channels-last ``(N, 8, 8, 1)``.

    Example::

        split = load_digits_nhwc()
        split.x_train.shape  # (1221, 8, 8, 1)
    """
    split = load_digits(seed=seed)
    to_nhwc = lambda images: np.ascontiguousarray(images.transpose(0, 2, 3, 1))  # noqa: E731
    return DatasetSplit(
        to_nhwc(split.x_train),
        split.y_train,
        to_nhwc(split.x_val),
        split.y_val,
        to_nhwc(split.x_test),
        split.y_test,
    )


def digits_cnn(channels: tuple[int, int] = (32, 64), hidden: int = 128, num_classes: int = 10) -> keras.Model:
    """A Functional CNN for 8x8 digits: two conv-BN-ReLU blocks, a pool, a two-layer classifier (logits).

    BatchNormalization uses momentum 0.9 (PyTorch's 0.1), which suits the few hundred steps digits needs.

    Layer names match ``prunekit.torch.DigitsCNN``'s modules: conv1, bn1, conv2, bn2, pool, fc1, fc2.

    Example::

        model = digits_cnn()
        model(np.zeros((4, 8, 8, 1), "float32")).shape  # (4, 10)
    """
    layers = keras.layers
    inputs = keras.Input(DIGITS_SHAPE, name="image")
    x = layers.Conv2D(channels[0], 3, padding="same", name="conv1")(inputs)
    x = layers.ReLU(name="relu1")(layers.BatchNormalization(momentum=0.9, name="bn1")(x))
    x = layers.Conv2D(channels[1], 3, padding="same", name="conv2")(x)
    x = layers.ReLU(name="relu2")(layers.BatchNormalization(momentum=0.9, name="bn2")(x))
    x = layers.MaxPooling2D(2, name="pool")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(hidden, activation="relu", name="fc1")(x)
    outputs = layers.Dense(num_classes, name="fc2")(x)
    return keras.Model(inputs, outputs, name="digits_cnn")


def digits_mlp(hidden: tuple[int, int] = (128, 64), num_classes: int = 10) -> keras.Sequential:
    """The classic 64 -> 128 -> 64 -> 10 multilayer perceptron on flattened 8x8 digits (logits).

    Example::

        model = digits_mlp()
        [layer.name for layer in model.layers]  # ['flatten', 'fc1', 'fc2', 'fc3']
    """
    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input(DIGITS_SHAPE, name="image"),
            layers.Flatten(name="flatten"),
            layers.Dense(hidden[0], activation="relu", name="fc1"),
            layers.Dense(hidden[1], activation="relu", name="fc2"),
            layers.Dense(num_classes, name="fc3"),
        ],
        name="digits_mlp",
    )
