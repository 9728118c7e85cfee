"""Save a PyTorch model's weights as a compact sparse file, and load them back into a fresh model.

The file format lives in :mod:`prunekit.artifacts.compact` (framework-free); this module turns a
``state_dict`` into numpy arrays and back, and checks that the model a factory builds fits the
file before anything is loaded into it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from prunekit.artifacts.compact import CompactHeader, load_compact, save_compact
from prunekit.errors import ConfigError, CorruptFileError, StateMismatchError
from prunekit.torch.structured.plan import PLAN_FORMAT, apply_plan, attach_plan, plan_of, validate_plan

_TORCH_ONLY_DTYPES = {torch.bfloat16: "bfloat16"}  # numpy has no such dtype: stored as float32, cast back


def _plan_dict(plan: Any) -> dict[str, Any] | None:
    if plan is None or isinstance(plan, Mapping):
        return None if plan is None else dict(plan)
    for method in ("to_dict", "get_config"):
        if callable(getattr(plan, method, None)):
            return dict(getattr(plan, method)())
    raise ConfigError(f"plan should be a dict or have a to_dict() method, got {type(plan).__name__}")


def _state_arrays(state: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    arrays: dict[str, np.ndarray] = {}
    torch_dtypes: dict[str, str] = {}
    for name, tensor in state.items():
        if not isinstance(tensor, torch.Tensor):
            raise ConfigError(f"state_dict entry {name!r} is a {type(tensor).__name__}, not a tensor")
        if tensor.is_sparse or tensor.is_quantized or tensor.layout != torch.strided:
            raise ConfigError(
                f"tensor {name!r} has layout {tensor.layout}; convert it to a dense tensor "
                "(e.g. tensor.to_dense() or a dequantized model) before saving"
            )
        tensor = tensor.detach().cpu()
        if tensor.dtype in _TORCH_ONLY_DTYPES:
            torch_dtypes[name] = _TORCH_ONLY_DTYPES[tensor.dtype]
            tensor = tensor.float()
        try:
            arrays[name] = tensor.contiguous().numpy()
        except TypeError as exc:
            raise ConfigError(f"tensor {name!r} has dtype {tensor.dtype}, which the compact file cannot store: {exc}") from None
    return arrays, torch_dtypes


def check_state_fits(model: nn.Module, shapes: Mapping[str, tuple[int, ...]], source: str) -> None:
    """Raise :class:`StateMismatchError` naming the tensors unless ``shapes`` has exactly ``model``'s state_dict keys and shapes.

    Example::

        check_state_fits(model, {"fc1.weight": (128, 1024), ...}, "model.safetensors")
    """
    expected = {name: tuple(value.shape) for name, value in model.state_dict().items()}
    missing = [name for name in expected if name not in shapes]
    unexpected = [name for name in shapes if name not in expected]
    mismatched = [name for name in expected if name in shapes and tuple(shapes[name]) != expected[name]]
    if not (missing or unexpected or mismatched):
        return

    def listed(names: list[str]) -> str:
        return ", ".join(repr(n) for n in names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")

    problems = [
        f"tensor {name!r} has shape {list(shapes[name])} in the file but {list(expected[name])} in the model"
        for name in mismatched[:5]
    ]
    if len(mismatched) > 5:
        problems.append(f"{len(mismatched) - 5} more tensors differ in shape")
    if missing:
        problems.append(f"the model's tensor(s) {listed(missing)} are not in the file")
    if unexpected:
        problems.append(f"the file has tensor(s) {listed(unexpected)} that the model lacks")
    raise StateMismatchError(
        f"{source} does not fit the {type(model).__name__} built by the model factory: "
        + "; ".join(problems)
        + ". Pass a factory that builds the architecture the weights were saved from (for a structurally "
        "pruned model, the pruned one; files from save_compressed or save_pruned record the plan and accept "
        "the original architecture)"
    )


def save_compressed(
    model: nn.Module | Mapping[str, torch.Tensor],
    path: str | os.PathLike,
    dtype: str = "fp32",
    plan: Any = None,
    entropy: str = "auto",
) -> CompactHeader:
    """Write a model's weights (or a state_dict) as one compact sparse file, atomically.

    ``dtype``: ``"fp32"`` (bit-exact), ``"fp16"``, or ``"int8"`` (per-output-channel scales; zeros
    stay exactly zero; biases and norm statistics in float16). ``plan`` is a structured-pruning plan (a dict, or an object with
    ``to_dict()``) kept in the header; by default the plan ``prune_channels`` attached to the
    model, if any. ``entropy``: ``"fast"`` (zlib), ``"best"`` (zlib and lzma, the smallest file)
    or ``"auto"`` (best up to 64 MiB of weights, fast above). Returns the header (sparsity,
    per-tensor layout, ...).

    Example::

        header = save_compressed(pruned_model, "digits.safetensors", dtype="int8")
        model = load_compressed("digits.safetensors", DigitsCNN)
    """
    if plan is None and isinstance(model, nn.Module):
        plan = plan_of(model)
    state = model.state_dict() if isinstance(model, nn.Module) else model
    if not isinstance(state, Mapping):
        raise ConfigError(f"model should be an nn.Module or a state_dict, got {type(model).__name__}")
    arrays, torch_dtypes = _state_arrays(state)
    extra = {"torch_dtypes": torch_dtypes} if torch_dtypes else {}
    return save_compact(arrays, path, dtype, framework="torch", plan=_plan_dict(plan), extra=extra, entropy=entropy)


def load_compressed(path: str | os.PathLike, model_factory: Callable[[], nn.Module]) -> nn.Module:
    """Build a model with ``model_factory()`` and load a compact file's weights into it.

    The whole file is read and checked first (:class:`~prunekit.errors.CorruptFileError` for a
    truncated, corrupted or newer-version file), then the model's tensor names and shapes are
    checked against it (:class:`~prunekit.errors.StateMismatchError` naming the tensor), so a
    model is never half-loaded. fp32 files load bit for bit. When the file holds a structured
    plan (from ``prune_channels``) and the factory builds the original, unpruned architecture,
    the plan is replayed on it first, as ``load_pruned`` does.

    Example::

        model = load_compressed("digits.safetensors", DigitsCNN)
    """
    arrays, header = load_compact(path)
    model = model_factory()
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model_factory should return an nn.Module, got {type(model).__name__}")
    shapes = {name: entry.shape for name, entry in header.tensors.items()}
    plan = header.plan
    if isinstance(plan, dict) and plan.get("format") == PLAN_FORMAT:
        current = {name: tuple(t.shape) for name, t in model.state_dict().items()}
        try:
            if current != shapes:
                apply_plan(model, plan)  # the factory built the original architecture
            else:
                validate_plan(plan)
        except CorruptFileError as exc:
            raise CorruptFileError(f"{str(path)!r}: {exc}") from None
        attach_plan(model, plan)
    check_state_fits(model, shapes, str(path))
    torch_dtypes = header.extra.get("torch_dtypes", {})
    state: dict[str, torch.Tensor] = {}
    for name, array in arrays.items():
        tensor = torch.from_numpy(np.ascontiguousarray(array)) if array.ndim else torch.tensor(array)
        if torch_dtypes.get(name) == "bfloat16":
            tensor = tensor.to(torch.bfloat16)
        state[name] = tensor
    model.load_state_dict(state, strict=True)
    return model
