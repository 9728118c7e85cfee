"""Small helpers shared by the Keras tests (compile, accuracy, tiny models, random data)."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import prunekit.keras as pk  # noqa: E402


def compile_classifier(model, lr: float = 2e-3, eager: bool = False):
    """Compile a logits classifier the way every test trains one (``eager`` skips graph tracing,
    which costs more than a few tiny training steps)."""
    model.compile(
        optimizer=keras.optimizers.Adam(lr),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        run_eagerly=eager,
    )
    return model


def accuracy(model, x, y) -> float:
    return float((np.asarray(model.predict(x, verbose=0, batch_size=256)).argmax(-1) == y).mean())


def tiny_cnn():
    """An untrained digits CNN small enough for step-by-step tests."""
    return pk.digits_cnn(channels=(4, 8), hidden=16)


def random_digits(count: int = 64, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.random((count, 8, 8, 1), dtype=np.float32), rng.integers(0, 10, count)
