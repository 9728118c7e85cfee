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
"""Tests for Pruning callbacks.

Ported from TF MOT's pruning_callbacks_test.py (tensorflow/model-optimization, Apache 2.0, header
above). Changes: the imports (prunekit.keras; Keras 3); tfmot's ``build_simple_dense_model`` test
helper is copied in; a layer's ``pruning_step`` (a wrapper attribute in tfmot) is read with
``_pruning_step(layer)``. Left out: ``testPruneTrainingLoopRaisesError_PruningStepCallbackMissing_CustomTrainingLoop``
(tfmot raises in the wrapper's forward pass; prunekit has no wrapper and raises at the optimizer
step instead, tested in tests/keras/test_unstructured.py).
"""

import os
import tempfile

import keras
import numpy as np
import tensorflow as tf

import prunekit.keras as prune
import prunekit.keras as pruning_callbacks
from prunekit.keras.unstructured.state import get_pruning


class keras_test_utils:  # noqa: N801 - tfmot's test helper module, as used below
    @staticmethod
    def build_simple_dense_model():
        l = keras.layers  # noqa: E741 - as in tfmot
        return keras.Sequential(
            [
                l.Dense(8, activation="relu", input_shape=(10,)),
                l.Dense(5, activation="softmax"),
            ]
        )


def _pruning_step(layer):
    return int(get_pruning(layer).step.numpy())


errors_impl = tf.errors


class PruneCallbacksTest(tf.test.TestCase):
    _BATCH_SIZE = 20

    def _assertLogsExist(self, log_dir):
        self.assertNotEmpty(os.listdir(log_dir))

    def _pruned_model_setup(self, custom_training_loop=False):
        pruned_model = prune.prune_low_magnitude(keras_test_utils.build_simple_dense_model())

        x_train = np.random.rand(self._BATCH_SIZE, 10)
        y_train = keras.utils.to_categorical(np.random.randint(5, size=(self._BATCH_SIZE, 1)), 5)

        loss = keras.losses.categorical_crossentropy
        optimizer = keras.optimizers.SGD()

        if custom_training_loop:
            return pruned_model, loss, optimizer, x_train, y_train
        else:
            pruned_model.compile(loss=loss, optimizer=optimizer, metrics=["accuracy"])
            return pruned_model, x_train, y_train

    def testUpdatePruningStepsAndLogsSummaries(self):
        log_dir = tempfile.mkdtemp()
        pruned_model, x_train, y_train = self._pruned_model_setup()
        pruned_model.fit(
            x_train,
            y_train,
            batch_size=self._BATCH_SIZE,
            epochs=3,
            callbacks=[pruning_callbacks.UpdatePruningStep(), pruning_callbacks.PruningSummaries(log_dir=log_dir)],
        )

        self.assertEqual(3, _pruning_step(pruned_model.layers[0]))
        self.assertEqual(3, _pruning_step(pruned_model.layers[1]))

        self._assertLogsExist(log_dir)

    # This style of custom training loop isn't available in graph mode.
    def testUpdatePruningStepsAndLogsSummaries_CustomTrainingLoop(self):
        log_dir = tempfile.mkdtemp()
        pruned_model, loss, optimizer, x_train, y_train = self._pruned_model_setup(custom_training_loop=True)

        unused_arg = -1

        step_callback = pruning_callbacks.UpdatePruningStep()
        log_callback = pruning_callbacks.PruningSummaries(log_dir=log_dir)
        # TODO(tfmot): we need a separate API for custom training loops
        # that doesn't rely on users setting the model and optimizer.
        #
        # Example is currently based on callbacks.py configure_callbacks
        # and model.compile internals.
        step_callback.set_model(pruned_model)
        log_callback.set_model(pruned_model)
        pruned_model.optimizer = optimizer

        step_callback.on_train_begin()
        for _ in range(3):
            log_callback.on_epoch_begin(epoch=unused_arg)
            # only one batch given batch_size = 20 and input shape.
            step_callback.on_train_batch_begin(batch=unused_arg)
            inp = np.reshape(x_train, [self._BATCH_SIZE, 10])  # original shape: from [10].
            with tf.GradientTape() as tape:
                logits = pruned_model(inp, training=True)
                loss_value = loss(y_train, logits)
                grads = tape.gradient(loss_value, pruned_model.trainable_variables)
                optimizer.apply_gradients(zip(grads, pruned_model.trainable_variables))
            step_callback.on_epoch_end(batch=unused_arg)

        self.assertEqual(3, _pruning_step(pruned_model.layers[0]))
        self.assertEqual(3, _pruning_step(pruned_model.layers[1]))
        self._assertLogsExist(log_dir)

    def testUpdatePruningStepsAndLogsSummaries_RunInference(self):
        pruned_model, _, _, x_train, _ = self._pruned_model_setup(custom_training_loop=True)
        model_output = pruned_model(x_train)
        del model_output

        self.assertEqual(-1, _pruning_step(pruned_model.layers[0]))
        self.assertEqual(-1, _pruning_step(pruned_model.layers[1]))

    def testPruneTrainingRaisesError_PruningStepCallbackMissing(self):
        pruned_model, x_train, y_train = self._pruned_model_setup()

        # Throws an error since UpdatePruningStep is missing.
        with self.assertRaises(errors_impl.InvalidArgumentError):
            pruned_model.fit(x_train, y_train)

    def testPruningSummariesRaisesError_LogDirNotNonEmptyString(self):
        with self.assertRaises(ValueError):
            pruning_callbacks.PruningSummaries(log_dir="")

        with self.assertRaises(ValueError):
            pruning_callbacks.PruningSummaries(log_dir=None)

        with self.assertRaises(ValueError):
            pruning_callbacks.PruningSummaries(log_dir=object())
