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
"""Distributed pruning test.

Ported from TF MOT's prune_distributed_test.py (tensorflow/model-optimization, Apache 2.0, header
above). Changes: the imports (prunekit.keras; Keras 3; tfmot's test helpers from
``tfmot_test_utils``); the CPU is split into two logical devices before TensorFlow starts and
``MirroredStrategy`` is given both (its default takes only ``/cpu:0`` when there is no GPU), so the
replicas really are two; the ``.h5`` round trip is a ``.keras`` file read with
``prunekit.keras.load_model`` (Keras 3's ``.h5`` cannot hold the pruning state, and prunekit
refuses it). The strategies must exist before TensorFlow initialises, so this module runs in its
own process: ``test_prune_distributed.py`` launches ``python -m unittest`` on it.

Example::

    python -m unittest tests.keras.tfmot_compat.prune_distributed_port
"""

import os
import tempfile

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf  # noqa: E402

tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2
)

import keras  # noqa: E402
import numpy as np  # noqa: E402
from absl.testing import parameterized  # noqa: E402

import prunekit.keras as prune  # noqa: E402
import prunekit.keras as pruning_callbacks  # noqa: E402
import prunekit.keras as pruning_schedule  # noqa: E402
from tests.keras.tfmot_compat import tfmot_test_utils as keras_test_utils  # noqa: E402
from tests.keras.tfmot_compat import tfmot_test_utils as test_utils  # noqa: E402


def _distribution_strategies():
    return [
        tf.distribute.MultiWorkerMirroredStrategy(),
        tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]),
        # TODO(pulkitb): Add parameter_server
        # tf.distribute.experimental.ParameterServerStrategy once ready in TF2.
        tf.distribute.OneDeviceStrategy("/cpu:0"),
    ]


class PruneDistributedTest(tf.test.TestCase, parameterized.TestCase):
    def setUp(self):
        super().setUp()
        self.params = {
            "pruning_schedule": pruning_schedule.ConstantSparsity(0.5, 0, -1, 1),
            "block_size": (1, 1),
            "block_pooling_type": "AVG",
        }

    @parameterized.parameters(_distribution_strategies())
    def testPrunesSimpleDenseModel(self, distribution):
        with distribution.scope():
            model = prune.prune_low_magnitude(keras_test_utils.build_simple_dense_model(), **self.params)
            model.compile(loss="categorical_crossentropy", optimizer="sgd", metrics=["accuracy"])

        # Model hasn't been trained yet. Sparsity 0.0
        test_utils.assert_model_sparsity(self, 0.0, model)

        # Simple unpruned model. No sparsity.
        model.fit(
            np.random.rand(20, 10),
            keras.utils.to_categorical(np.random.randint(5, size=(20, 1)), 5),
            epochs=2,
            callbacks=[pruning_callbacks.UpdatePruningStep()],
            batch_size=20,
        )
        model.predict(np.random.rand(20, 10))
        test_utils.assert_model_sparsity(self, 0.5, model)

        _, keras_file = tempfile.mkstemp(".keras")
        keras.models.save_model(model, keras_file)

        with prune.prune_scope():
            loaded_model = prune.load_model(keras_file)

        test_utils.assert_model_sparsity(self, 0.5, loaded_model)


if __name__ == "__main__":
    tf.test.main()
