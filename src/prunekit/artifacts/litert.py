"""The TFLite interpreter class: LiteRT's (``ai_edge_litert``) when installed, else TensorFlow's ``tf.lite``."""

from __future__ import annotations

import warnings

from prunekit.errors import MissingDependencyError


def interpreter_class() -> type:
    """LiteRT's ``Interpreter``, else ``tf.lite.Interpreter`` (its deprecation warning silenced).

    Raises :class:`~prunekit.errors.MissingDependencyError` naming the extra when neither is installed.

    Example::

        interpreter = interpreter_class()(model_path="model.tflite")
    """
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter
    except ImportError:
        pass
    try:
        import tensorflow as tf
    except ImportError as exc:
        raise MissingDependencyError(
            "running a .tflite model needs the LiteRT interpreter (ai-edge-litert) or TensorFlow; "
            "install it with: pip install 'prunekit[keras]'"
        ) from exc
    # Precise (message, category, module), so no other warning is hidden from the user.
    warnings.filterwarnings(
        "ignore", message=".*tf.lite.Interpreter is deprecated", category=UserWarning, module=r"tensorflow\.lite"
    )
    return tf.lite.Interpreter
