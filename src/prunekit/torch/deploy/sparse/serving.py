"""Write a compact sparse file that ``prunekit serve`` can run with the sparse runtime."""

from __future__ import annotations

import importlib
import os
from typing import Any

import torch
from torch import nn

from prunekit.artifacts.compact import CompactHeader, save_compact
from prunekit.errors import ConfigError
from prunekit.torch.deploy.compact import _state_arrays


def _spec(name: str, tensor: torch.Tensor) -> dict[str, Any]:
    return {"name": name, "shape": [None, *tensor.shape[1:]], "dtype": str(tensor.detach().cpu().numpy().dtype)}


def save_servable(
    model: nn.Module, path: str | os.PathLike, example_input: torch.Tensor, factory: str, dtype: str = "fp32"
) -> CompactHeader:
    """Save ``model`` as a compact file whose header tells the server how to rebuild and run it.

    ``factory`` is ``"module:callable"`` of an installed package that builds the (unpruned or
    pruned) architecture with no arguments; the server imports it, so only name code you trust.
    ``example_input`` is one batch of the single input (its first dimension is the batch).
    Put the file at ``<repository>/<name>/<version>/model.sparse.safetensors``.

    Example::

        save_servable(pruned, "models/mlp/3/model.sparse.safetensors", torch.randn(1, 784), "mypkg.models:MLP")
    """
    module_name, sep, attribute = factory.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigError(f"factory should be 'module:callable' (e.g. 'mypkg.models:MLP'), got {factory!r}")
    try:
        target: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"factory {factory!r} cannot be imported here ({exc}); the server could not import it either") from None
    if not isinstance(example_input, torch.Tensor) or example_input.ndim < 1:
        raise ConfigError("example_input should be one batched tensor (its first dimension is the batch)")
    with torch.no_grad():
        output = model.eval()(example_input)
    outputs = output if isinstance(output, (tuple, list)) else (output,)
    extra: dict[str, Any] = {
        "serve": {
            "factory": factory,
            "inputs": [_spec("input", example_input)],
            "outputs": [_spec(f"output_{i}" if len(outputs) > 1 else "output", out) for i, out in enumerate(outputs)],
        }
    }
    arrays, torch_dtypes = _state_arrays(model.state_dict())
    if torch_dtypes:
        extra["torch_dtypes"] = torch_dtypes
    return save_compact(arrays, path, dtype, framework="torch", extra=extra)
