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
"""Tests for keras pruning wrapper: the parts that use the public API.

Ported from TF MOT's pruning_wrapper_test.py (tensorflow/model-optimization, Apache 2.0, header
above). prunekit has no wrapper class: ``PruneLowMagnitude(layer, ...)`` is the public
``prune_low_magnitude(layer, ...)``, a layer's ``pruning_vars`` are the weights its pruning state
masks (``prunable_weights``), and ``collect_prunable_layers`` lists the layers carrying a pruning
state. Keras 3: ``Input(shape=(16,))`` and ``add_weight(shape=(output_dim,))`` take tuples; a Sequential
built from a layer's ``input_shape`` is not rebuilt with another shape; Conv3D takes 5-D inputs.
Left out: ``testCustomLayerPrunable`` asserts the wrapper's name ``prune_low_magnitude_<layer>``;
prunekit keeps the layer's own name.
"""

import keras
import tensorflow as tf

import prunekit.keras as pruning_schedule
from prunekit.keras import prune_low_magnitude
from prunekit.keras.unstructured.layers import iter_layers, prunable_weights
from prunekit.keras.unstructured.state import get_pruning


class pruning_wrapper:  # noqa: N801 - the names the tests use, on the public API
    PruneLowMagnitude = staticmethod(prune_low_magnitude)

    @staticmethod
    def collect_prunable_layers(model):
        return [layer for layer in iter_layers(model) if get_pruning(layer) is not None]


layers = keras.layers
Prune = pruning_wrapper.PruneLowMagnitude


def pk_masks(layer):
    return pruning_schedule.get_masks(layer)


class CustomLayer(keras.layers.Layer):
    """A custom layer which is not prunable."""

    def __init__(self, input_dim=16, output_dim=32):
        super().__init__()
        self.weight = self.add_weight(shape=(input_dim, output_dim), initializer="random_normal", trainable=True)
        self.bias = self.add_weight(shape=(output_dim,), initializer="zeros", trainable=True)

    def call(self, inputs):
        return tf.matmul(inputs, self.weight) + self.bias


class CustomLayerPrunable(CustomLayer):
    """A prunable custom layer.

    The layer is same with the CustomLayer except it has a 'get_prunable_weights'
    attribute.
    """

    def get_prunable_weights(self):
        return [self.weight, self.bias]


class PruningWrapperTest(tf.test.TestCase):
    def setUp(self):
        self.model = keras.Sequential()
        self.params = {
            "pruning_schedule": pruning_schedule.ConstantSparsity(0.5, 0),
            "block_size": (1, 1),
            "block_pooling_type": "AVG",
        }

    def testPruneWrapperAllowsOnlyValidPoolingType(self):
        layer = layers.Dense(10)
        with self.assertRaises(ValueError):
            pruning_wrapper.PruneLowMagnitude(layer, block_pooling_type="MIN")

        pruning_wrapper.PruneLowMagnitude(layer, block_pooling_type="AVG")
        pruning_wrapper.PruneLowMagnitude(layer, block_pooling_type="MAX")

    def _check_mask_count(self, expected_mask_count=0):
        mask_count = 0
        for l in self.model.layers:  # noqa: E741 (as in tfmot)
            mask_count += len(prunable_weights(l)) if get_pruning(l) is not None else 0
        self.assertEqual(mask_count, expected_mask_count)

    # TODO(suyoggupta): Randomize the layer dimensions
    def testDense(self):
        self.model.add(Prune(layers.Dense(10), **self.params))
        self.model.build(input_shape=(10, 1))

        self._check_mask_count(expected_mask_count=1)

    def testEmbedding(self):
        self.model.add(Prune(layers.Embedding(10, 10), input_shape=(10,), **self.params))
        self.model.build(input_shape=(None, 10))  # Keras 3: the shape input_shape gave

        self._check_mask_count(expected_mask_count=1)

    def testConv2D(self):
        self.model.add(Prune(layers.Conv2D(4, (3, 3)), **self.params))
        self.model.build(input_shape=(1, 16, 16, 4))

        self._check_mask_count(expected_mask_count=1)

    def testPruneModel(self):
        self.model.add(Prune(layers.Conv2D(32, 5)))
        self.model.add(Prune(layers.MaxPooling2D((2, 2), (2, 2))))
        self.model.add(Prune(layers.Conv2D(64, 5)))
        self.model.add(Prune(layers.MaxPooling2D((2, 2), (2, 2))))
        self.model.add(Prune(layers.Flatten()))
        self.model.add(Prune(layers.Dense(1024)))
        self.model.add(Prune(layers.Dropout(0.4)))
        self.model.add(Prune(layers.Dense(10)))
        self.model.build(input_shape=(1, 28, 28, 1))

        self._check_mask_count(expected_mask_count=4)

        # Test serialization
        model_config = self.model.get_config()
        pruned_model = self.model.__class__.from_config(
            model_config,
            custom_objects={"PruneLowMagnitude": pruning_wrapper.PruneLowMagnitude},
        )
        pruned_model_config = pruned_model.get_config()
        # New serialization format includes `build_config` in all layers
        for layer in model_config["layers"]:
            layer.pop("build_config", None)
        for layer in pruned_model_config["layers"]:
            layer.pop("build_config", None)
        self.assertEqual(model_config, pruned_model_config)

    def testCustomLayerNonPrunable(self):
        layer = CustomLayer(input_dim=16, output_dim=32)
        inputs = keras.layers.Input(shape=(16,))
        _ = layer(inputs)
        with self.assertRaises(ValueError):
            pruning_wrapper.PruneLowMagnitude(layer, block_pooling_type="MAX")

    def testCollectPrunableLayers(self):
        lstm_layer = keras.layers.RNN(layers.LSTMCell(4, dropout=0.5, recurrent_dropout=0.5), input_shape=(None, 4))
        self.model.add(Prune(lstm_layer))
        self.model.add(Prune(layers.BatchNormalization()))
        self.model.add(Prune(layers.Flatten()))
        self.model.add(Prune(layers.Dense(10)))
        self.model.add(Prune(layers.Dropout(0.5)))

        self.assertLen(pruning_wrapper.collect_prunable_layers(self.model), 5)

    def testConv3DWeightNotPrunedWithSparsityMbyN(self):
        layer = keras.layers.Conv3D(2, 3)
        inputs = keras.layers.Input(shape=(28, 28, 28, 1))  # Keras 3: no extra batch axis
        _ = layer(inputs)
        self.model.add(Prune(layer, sparsity_m_by_n=(2, 4)))

        pruned_layers = pruning_wrapper.collect_prunable_layers(self.model)

        self.assertLen(pruned_layers, 1)
        # Only rank-2 (e.g, Conv2D) or rank-4 (e.g, Dense) weight are pruned with
        # M-by-N sparsity.
        self.assertLen(pk_masks(pruned_layers[0]), 0)
