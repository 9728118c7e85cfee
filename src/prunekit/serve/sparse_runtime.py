"""The third runtime beside ONNX Runtime and LiteRT: a compact sparse file run by prunekit's sparse CPU kernels.

A version directory holds ``model.sparse.safetensors``, a compact file written by
:func:`prunekit.torch.deploy.sparse.save_servable`, whose header names the model factory (an
importable ``module:callable`` of an installed package, called with no arguments) and the input
and output specs. The server imports that module, builds the model on the meta device and loads
the file straight into the sparse kernels (:func:`~prunekit.torch.deploy.sparse.load_sparse`):
no dense weight of a sparse layer is ever materialised.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from prunekit.errors import ConfigError, MissingDependencyError
from prunekit.serve.runtimes import RuntimeOptions, TensorSpec

SERVE_KEY = "serve"  # the header's ``extra`` entry save_servable writes


def _factory(path: Path, spec: Any) -> Any:
    if not isinstance(spec, str) or ":" not in spec:
        raise ConfigError(f"{path}: the header's serve.factory should be 'module:callable', got {spec!r}")
    module_name, _, attribute = spec.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            f"{path}: the model factory {spec!r} cannot be imported ({exc}); install the package that defines it"
        ) from None
    if not callable(target):
        raise ConfigError(f"{path}: the model factory {spec!r} is not callable")
    return target


def _specs(path: Path, value: Any, what: str) -> tuple[TensorSpec, ...]:
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{path}: the header's serve.{what} should be a non-empty list of tensor specs")
    try:
        return tuple(
            TensorSpec(str(s["name"]), tuple(None if d is None or d < 0 else int(d) for d in s["shape"]), np.dtype(s["dtype"]))
            for s in value
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: a serve.{what} spec is malformed ({exc}); write the file with save_servable") from None


class SparseTorchRuntime:
    """A compact sparse file served through :func:`~prunekit.torch.deploy.sparse.load_sparse`.

    Example::

        runtime = SparseTorchRuntime(Path("models/mlp/3/model.sparse.safetensors"))
        runtime.run({"x": np.zeros((2, 784), np.float32)})
    """

    format = "sparse"

    def __init__(self, path: Path, options: RuntimeOptions = RuntimeOptions(), content: bytes | None = None) -> None:
        if content is not None:
            raise ConfigError(f"{path}: signed or encrypted sparse files are not supported; serve the plain compact file")
        try:
            import torch

            from prunekit.artifacts.compact import read_compact_header
            from prunekit.torch.deploy.sparse import load_sparse, set_threads
        except ImportError as exc:
            raise MissingDependencyError(f"serving {path} needs torch; install it with: pip install 'prunekit[torch]'") from exc
        meta = read_compact_header(path).extra.get(SERVE_KEY)
        if not isinstance(meta, Mapping):
            raise ConfigError(
                f"{path}: the compact file names no model factory; write it with "
                "prunekit.torch.deploy.sparse.save_servable(model, path, example_input, factory='pkg.module:Model')"
            )
        self.inputs = _specs(path, meta.get("inputs"), "inputs")
        self.outputs = _specs(path, meta.get("outputs"), "outputs")
        if options.intra_op_threads:
            set_threads(options.intra_op_threads)
        self._model, self.report = load_sparse(path, _factory(path, meta.get("factory")))
        self._torch = torch
        self._lock = threading.Lock()  # numba's thread pool and the layer counters are not re-entrant

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch: positional inputs in the order of :attr:`inputs`."""
        torch = self._torch
        args = [torch.from_numpy(np.ascontiguousarray(feeds[spec.name])) for spec in self.inputs]
        with self._lock, torch.no_grad():
            result = self._model(*args)
        values = result if isinstance(result, (tuple, list)) else (result,)
        return {spec.name: value.detach().cpu().numpy() for spec, value in zip(self.outputs, values)}
