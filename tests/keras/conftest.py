"""Keras test setup: TensorFlow on 2 threads, seeded, and the trained digits models shared by the tests.

Without the ``keras`` extra these tests are not collected. The dense CNN and its 90%-pruned twin
are trained once per session (a few seconds each) and reused read-only; tests that change a
model build or clone their own.
"""

import importlib.util
import os

import pytest

if importlib.util.find_spec("tensorflow") is None or importlib.util.find_spec("keras") is None:
    collect_ignore_glob = ["*.py"]
else:
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(2)
    tf.config.threading.set_inter_op_parallelism_threads(1)

    import prunekit.keras as pk
    from tests.keras.helpers import compile_classifier

    @pytest.fixture(autouse=True)
    def _seed_keras():
        keras.utils.set_random_seed(0)

    @pytest.fixture(scope="session")
    def digits():
        return pk.load_digits_nhwc()

    @pytest.fixture(scope="session")
    def dense_cnn(digits):
        """The digits CNN trained dense for 12 epochs (about 97-98% test accuracy)."""
        keras.utils.set_random_seed(0)
        model = compile_classifier(pk.digits_cnn())
        model.fit(digits.x_train, digits.y_train, epochs=12, batch_size=32, verbose=0)
        return model

    @pytest.fixture(scope="session")
    def pruned_90(dense_cnn, digits):
        """The dense CNN pruned gradually to 90% with fine-tuning (a stripped PruningRun)."""
        keras.utils.set_random_seed(0)
        return pk.prune_gradually(dense_cnn, digits.x_train, digits.y_train, 0.9, epochs=6, lr=1e-3)
