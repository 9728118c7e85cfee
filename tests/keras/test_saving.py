"""model.save() in the middle of pruning keeps masks, step and schedule; load_model resumes training."""

import zipfile

import keras
import numpy as np
import pytest

import prunekit.keras as pk
from prunekit import PolynomialDecay
from prunekit.keras.unstructured.state import get_pruning
from tests.assertions import assert_sparsity
from tests.keras.helpers import compile_classifier, random_digits, tiny_cnn

SCHEDULE = PolynomialDecay(0.0, 0.8, begin_step=0, end_step=12, frequency=4)


def _train(model, batches):
    x, y = random_digits(8 * batches, seed=batches)
    model.fit(x, y, epochs=1, batch_size=8, verbose=0, callbacks=[pk.UpdatePruningStep()], shuffle=False)


# Saving mid-schedule is the point of these tests: the end of each short fit warns (SparsityWarning), on purpose.
STOPS_EARLY = pytest.mark.filterwarnings("ignore::prunekit.errors.SparsityWarning")


@pytest.fixture(scope="module")
def halfway(tmp_path_factory):
    """A tiny CNN pruned for 6 of 16 steps (two pruning steps done), saved to a .keras file (read-only)."""
    model = compile_classifier(pk.prune_low_magnitude(tiny_cnn(), pruning_schedule=SCHEDULE), eager=True)
    _train(model, 6)
    path = tmp_path_factory.mktemp("saving") / "halfway.keras"
    model.save(path)
    return model, path


@STOPS_EARLY
def test_load_model_restores_masks_step_and_schedule(halfway):
    model, path = halfway
    loaded = pk.load_model(path)
    assert pk.get_masks(loaded).keys() == pk.get_masks(model).keys()
    for key, keep in pk.get_masks(model).items():
        np.testing.assert_array_equal(pk.get_masks(loaded)[key], keep)
    for name in ("conv1", "fc1"):
        state = get_pruning(loaded.get_layer(name))
        assert int(state.step.numpy()) == 6  # 6 batches: steps 1..6 (TF MOT numbering)
        assert state.spec.schedule == SCHEDULE


@STOPS_EARLY
def test_training_resumes_after_loading_and_ends_exactly_at_the_final_sparsity(halfway):
    model, path = halfway
    loaded = pk.load_model(path)
    pruned_before = {key: ~keep for key, keep in pk.get_masks(loaded).items()}
    _train(loaded, 8)  # steps 7..14 include the pruning steps 8 and 12
    for name in ("conv1", "conv2", "fc1", "fc2"):
        kernel = loaded.get_layer(name).kernel
        assert_sparsity(kernel.numpy(), 0.8, name)
        assert (kernel.numpy()[pruned_before[kernel.path]] == 0).all(), f"{name}: a pruned weight came back"


@STOPS_EARLY
def test_plain_keras_load_gives_the_model_with_its_zeros_and_no_pruning_state(halfway):
    model, path = halfway
    plain = keras.saving.load_model(path)
    assert all(get_pruning(layer) is None for layer in plain.layers)
    np.testing.assert_array_equal(plain.get_layer("fc1").kernel.numpy(), model.get_layer("fc1").kernel.numpy())


@STOPS_EARLY
def test_the_state_is_stored_next_to_the_layer_weights_in_the_keras_file(halfway):
    _, path = halfway
    with zipfile.ZipFile(path) as archive:
        assert sorted(archive.namelist()) == ["config.json", "metadata.json", "model.weights.h5"]


class PrunedNet(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.flatten = keras.layers.Flatten()
        self.fc1 = pk.prune_low_magnitude(keras.layers.Dense(16, name="fc1"), pruning_schedule=SCHEDULE)
        self.fc2 = keras.layers.Dense(10, name="fc2")

    def call(self, x):
        return self.fc2(self.fc1(self.flatten(x)))


@STOPS_EARLY
def test_subclassed_model_gets_its_state_back_through_plain_keras_load(tmp_path):
    model = PrunedNet()
    model(np.zeros((1, 8, 8, 1), np.float32))
    compile_classifier(model, eager=True)
    _train(model, 5)
    model.save(tmp_path / "net.keras")
    loaded = keras.saving.load_model(tmp_path / "net.keras", custom_objects={"PrunedNet": PrunedNet})
    state = get_pruning(loaded.fc1)
    assert int(state.step.numpy()) == 5
    np.testing.assert_array_equal(pk.get_masks(loaded)[loaded.fc1.kernel.path], pk.get_masks(model)[model.fc1.kernel.path])
    assert_sparsity(pk.get_masks(loaded)[loaded.fc1.kernel.path], SCHEDULE.sparsity_at(4), "fc1 mask")
