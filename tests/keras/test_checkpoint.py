"""Keras pruning workflows checkpoint at epoch boundaries and a resumed run ends bitwise identical."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import prunekit.keras as pk
from prunekit.errors import ConfigError, StateMismatchError
from prunekit.keras.checkpoint import EpochCheckpoint


def _model() -> keras.Model:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16,))
    hidden = keras.layers.Dense(24, activation="relu", name="fc1")(inputs)
    hidden = keras.layers.Dropout(0.3, name="drop")(hidden)  # its seed generator's state must resume too
    return keras.Model(inputs, keras.layers.Dense(3, name="fc2")(hidden))


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((96, 16)).astype("float32")
    return x, (x[:, :3].argmax(1)).astype("int64")


class Stop(keras.callbacks.Callback):
    """Dies at the start of epoch ``at`` (0-based), as a kill would, after the earlier epochs' checkpoints."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at = at

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        if epoch == self.at:
            raise KeyboardInterrupt


def _gradual(checkpoint: EpochCheckpoint, callbacks: tuple = ()) -> pk.PruningRun:
    x, y = _data()
    model = _model()
    keras.utils.set_random_seed(7)  # what the backend handler does with the job's seed
    return pk.prune_gradually(model, x, y, 0.75, epochs=5, lr=1e-2, batch_size=16, checkpoint=checkpoint, callbacks=callbacks)


def test_a_killed_run_resumes_to_bitwise_identical_weights_masks_and_history(tmp_path):
    whole = _gradual(EpochCheckpoint(tmp_path / "whole.npz"))
    path = tmp_path / "run.npz"
    with pytest.raises(KeyboardInterrupt):
        _gradual(EpochCheckpoint(path, every=1), callbacks=(Stop(3),))
    assert path.exists()  # three epochs are saved
    with pytest.raises(ConfigError, match="pass resume=True"):
        _gradual(EpochCheckpoint(path))
    resumed = _gradual(EpochCheckpoint(path, resume=True))
    for a, b in zip(whole.model.get_weights(), resumed.model.get_weights()):
        assert np.array_equal(a, b)
    assert [r["loss"] for r in whole.history] == [r["loss"] for r in resumed.history]
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3, 4, 5]
    assert resumed.sparsity == whole.sparsity == pytest.approx(0.75, abs=0.01)
    kernel = resumed.model.get_layer("fc1").kernel.numpy()
    assert int((kernel == 0).sum()) == round(0.75 * kernel.size)
    assert not path.exists() and not (tmp_path / "whole.npz").exists()  # removed once complete


def test_a_checkpoint_of_another_run_is_refused_naming_the_difference(tmp_path):
    path = tmp_path / "run.npz"
    with pytest.raises(KeyboardInterrupt):
        _gradual(EpochCheckpoint(path, key={"sparsity": 0.75}), callbacks=(Stop(2),))
    saved = path.read_bytes()
    with pytest.raises(StateMismatchError, match="belongs to another run: its key"):
        _gradual(EpochCheckpoint(path, resume=True, key={"sparsity": 0.9}))
    assert path.read_bytes() == saved
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(Exception, match="is not readable"):
        _gradual(EpochCheckpoint(path, resume=True, key={"sparsity": 0.75}))
