"""Serve ONNX and TFLite models over HTTP in TensorFlow Serving's REST format.

Example::

    from prunekit.serve import ServeConfig, serve
    serve(ServeConfig(model_dir="models", port=8501))      # or: prunekit serve models/

Only the standard library and numpy are imported here; Starlette, uvicorn and the runtimes load
when a server is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prunekit.serve.config import ServeConfig

if TYPE_CHECKING:  # for type checkers; at run time __getattr__ imports lazily
    from prunekit.serve.app import ModelServer, create_app  # noqa: F401
    from prunekit.serve.repository import LoadedModel, ModelRepository  # noqa: F401
    from prunekit.serve.runtimes import Runtime, TensorSpec, load_runtime  # noqa: F401
    from prunekit.serve.server import serve  # noqa: F401

_LAZY = {
    "ModelServer": "prunekit.serve.app",
    "create_app": "prunekit.serve.app",
    "LoadedModel": "prunekit.serve.repository",
    "ModelRepository": "prunekit.serve.repository",
    "Runtime": "prunekit.serve.runtimes",
    "TensorSpec": "prunekit.serve.runtimes",
    "load_runtime": "prunekit.serve.runtimes",
    "serve": "prunekit.serve.server",
}

__all__ = ["ServeConfig", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'prunekit.serve' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
