# Copyright 2019 The TensorFlow Authors. All Rights Reserved.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
# ==============================================================================
"""TF MOT's two Keras test helper modules, as the ported integration and distributed tests use them.

Ported from tensorflow_model_optimization/python/core/keras/test_utils.py (``ModelCompare``,
``build_simple_dense_model``) and .../sparsity/keras/test_utils.py (tensorflow/model-optimization,
Apache 2.0, header above). Changes: Keras 3 imports; prunekit has no ``PruneLowMagnitude`` wrapper,
so "the wrapped layers' prunable weights" are the weights prunekit's pruning state masks
(``_pruned_weights``); ``pruning_utils.is_pruned_m_by_n`` is written out (``_is_pruned_m_by_n``);
the ``.h5`` save/restore is a ``.keras`` file read with ``prunekit.keras.load_model`` (Keras 3's
``.h5`` cannot hold the pruning state); the TF SavedModel variant (Keras 3 has no
``save_format='tf'``) is dropped, as tfmot's tests skipped it too.
"""

import tempfile

import keras
import numpy as np

import prunekit.keras as prune
from prunekit.keras.unstructured.layers import iter_layers
from prunekit.keras.unstructured.state import get_pruning

l = keras.layers  # noqa: E741 - as in tfmot


# --- core/keras/test_utils.py ---


class ModelCompare:
    """Mixin with helper functions for model comparison.

    Needs to be used with tf.test.TestCase.

    Note the following test only trainable_weights.
    """

    def _assert_weights_same_objects(self, model1, model2):
        self.assertEqual(len(model1.trainable_weights), len(model2.trainable_weights))
        for w1, w2 in zip(model1.trainable_weights, model2.trainable_weights):
            self.assertEqual(id(w1), id(w2))

    def _assert_weights_different_objects(self, model1, model2):
        self.assertEqual(len(model1.trainable_weights), len(model2.trainable_weights))
        for w1, w2 in zip(model1.trainable_weights, model2.trainable_weights):
            self.assertNotEqual(id(w1), id(w2))

    def _assert_weights_same_values(self, model1, model2):
        self.assertEqual(len(model1.trainable_weights), len(model2.trainable_weights))

        model1_weights = [keras.ops.convert_to_numpy(w) for w in model1.trainable_weights]
        model2_weights = [keras.ops.convert_to_numpy(w) for w in model2.trainable_weights]
        for w1, w2 in zip(model1_weights, model2_weights):
            self.assertAllClose(w1, w2)

    def _assert_weights_different_values(self, model1, model2):
        self.assertEqual(len(model1.trainable_weights), len(model2.trainable_weights))

        model1_weights = [keras.ops.convert_to_numpy(w) for w in model1.trainable_weights]
        model2_weights = [keras.ops.convert_to_numpy(w) for w in model2.trainable_weights]
        for w1, w2 in zip(model1_weights, model2_weights):
            self.assertNotAllClose(w1, w2)


def build_simple_dense_model():
    return keras.Sequential(
        [
            l.Dense(8, activation="relu", input_shape=(10,)),
            l.Dense(5, activation="softmax"),
        ]
    )


# --- sparsity/keras/test_utils.py ---


def _build_mnist_layer_list():
    return [
        l.Conv2D(32, 5, padding="same", activation="relu", input_shape=(28, 28, 1)),
        l.MaxPooling2D((2, 2), (2, 2), padding="same"),
        l.BatchNormalization(),
        l.Conv2D(64, 5, padding="same", activation="relu"),
        l.MaxPooling2D((2, 2), (2, 2), padding="same"),
        l.Flatten(),
        l.Dense(1024, activation="relu"),
        l.Dropout(0.4),
        l.Dense(10, activation="softmax"),
    ]


def _build_mnist_sequential_model():
    return keras.Sequential(_build_mnist_layer_list())


def _build_mnist_functional_model():
    inp = keras.Input(shape=(28, 28, 1))
    x = l.Conv2D(32, 5, padding="same", activation="relu")(inp)
    x = l.MaxPooling2D((2, 2), (2, 2), padding="same")(x)
    x = l.BatchNormalization()(x)
    x = l.Conv2D(64, 5, padding="same", activation="relu")(x)
    x = l.MaxPooling2D((2, 2), (2, 2), padding="same")(x)
    x = l.Flatten()(x)
    x = l.Dense(1024, activation="relu")(x)
    x = l.Dropout(0.4)(x)
    out = l.Dense(10, activation="softmax")(x)

    return keras.models.Model([inp], [out])


def _build_mnist_layerwise_pruned_model(pruning_params):
    if pruning_params is None:
        raise ValueError("pruning_params should be provided.")

    return keras.Sequential(
        [
            prune.prune_low_magnitude(
                l.Conv2D(32, 5, padding="same", activation="relu"), input_shape=(28, 28, 1), **pruning_params
            ),
            l.MaxPooling2D((2, 2), (2, 2), padding="same"),
            l.BatchNormalization(),
            prune.prune_low_magnitude(l.Conv2D(64, 5, padding="same", activation="relu"), **pruning_params),
            l.MaxPooling2D((2, 2), (2, 2), padding="same"),
            l.Flatten(),
            prune.prune_low_magnitude(l.Dense(1024, activation="relu"), **pruning_params),
            l.Dropout(0.4),
            prune.prune_low_magnitude(l.Dense(10, activation="softmax"), **pruning_params),
        ]
    )


def build_mnist_model(model_type, pruning_params=None):
    return {
        "sequential": _build_mnist_sequential_model,
        "functional": _build_mnist_functional_model,
        "layer_list": _build_mnist_layer_list,
        "layer_wise": lambda: _build_mnist_layerwise_pruned_model(pruning_params),
    }[model_type]()


def model_type_keys():
    return ["sequential", "functional", "layer_list", "layer_wise"]


def _save_restore_keras_model(model):
    _, keras_file = tempfile.mkstemp(".keras")
    keras.models.save_model(model, keras_file)

    with prune.prune_scope():
        loaded_model = prune.load_model(keras_file)

    return loaded_model


def save_restore_fns():
    return [_save_restore_keras_model]


# Assertion/Sparsity Verification functions.


def _pruned_weights(model):
    """What tfmot reads as ``wrapper.layer.get_prunable_weights()`` for every ``PruneLowMagnitude`` in ``model``."""
    for layer in iter_layers(model):
        state = get_pruning(layer)
        if state is not None:
            yield from state.weights


def _get_sparsity(weights):
    return 1.0 - np.count_nonzero(weights) / float(weights.size)


def assert_model_sparsity(test_case, sparsity, model, rtol=1e-6, atol=1e-6):
    for weight in _pruned_weights(model):
        test_case.assertAllClose(sparsity, _get_sparsity(keras.ops.convert_to_numpy(weight)), rtol=rtol, atol=atol)


# Check if model does not have target sparsity.
def is_model_sparsity_not(sparsity, model):
    return any(sparsity != _get_sparsity(keras.ops.convert_to_numpy(weight)) for weight in _pruned_weights(model))


def _is_pruned_m_by_n(weight, m_by_n=(2, 4)):
    """tfmot's pruning_utils.is_pruned_m_by_n: at least m zeros in every n consecutive input channels."""
    values = keras.ops.convert_to_numpy(weight)
    zeros, group = m_by_n
    axis = values.ndim - 2
    moved = np.moveaxis(values, axis, -1)
    pad = -moved.shape[-1] % group
    moved = np.pad(moved, [(0, 0)] * (moved.ndim - 1) + [(0, pad)])
    groups = moved.reshape(-1, group)
    return bool(((groups == 0).sum(axis=1) >= zeros).all())


def assert_model_sparsity_m_by_n(test_case, model, m_by_n=(2, 4)):
    for weight in _pruned_weights(model):
        test_case.assertTrue(_is_pruned_m_by_n(weight, m_by_n=m_by_n))
