"""Select Keras's TensorFlow backend before Keras is imported, or say why it cannot be."""

from __future__ import annotations

import os
import sys

from prunekit.core.optional import require
from prunekit.errors import ConfigError


def ensure_tensorflow_backend() -> None:
    """Make sure Keras 3 runs on TensorFlow; import both (they come with the ``keras`` extra).

    Sets ``KERAS_BACKEND=tensorflow`` when it is unset and Keras is not imported yet; raises
    :class:`~prunekit.ConfigError` when another backend is already chosen.

    Example::

        ensure_tensorflow_backend()  # then `import keras` runs on TensorFlow
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "keras" not in sys.modules:
        os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    require("tensorflow", "keras")
    keras = require("keras", "keras")
    version = getattr(keras, "__version__", "0")
    if int(version.split(".")[0]) < 3:
        raise ConfigError(f"prunekit.keras needs Keras 3, found keras {version}; install it with: pip install 'prunekit[keras]'")
    backend = keras.backend.backend()
    if backend != "tensorflow":
        raise ConfigError(
            f"prunekit.keras needs Keras's TensorFlow backend, but Keras runs on {backend!r}; "
            "set KERAS_BACKEND=tensorflow before anything imports keras"
        )
