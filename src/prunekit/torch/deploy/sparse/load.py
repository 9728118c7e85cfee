"""Load a compact sparse file straight into sparse kernels, without densifying the sparse weights.

The model is built by ``model_factory`` on the ``meta`` device (no weight memory), checked
against the file's tensor names and shapes, and every ``nn.Linear`` whose weight the file stores
sparse (and at least ``min_sparsity`` sparse) becomes a
:class:`~prunekit.torch.deploy.sparse.layers.SparseLinear` fed from the stored nonzeros, in the
layout their positions fit (:func:`~prunekit.torch.deploy.sparse.formats.detect_layout_coo`:
N:M, BSR or CSR), int8 values and per-row scales kept as int8 when the file is int8. Only the
remaining tensors (biases, norms, embeddings, dense layers) are materialised.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from prunekit.artifacts.compact import SparseArray, load_compact_sparse
from prunekit.errors import ConfigError, CorruptFileError
from prunekit.torch.deploy.compact import check_state_fits
from prunekit.torch.deploy.sparse.convert import (
    LayerChoice,
    SparseReport,
    Timer,
    _capture_inputs,
    _set_module,
    _verdict,
    choose_kernel,
    time_candidates,
    timed_layouts,
)
from prunekit.torch.deploy.sparse.formats import BSR, CSR, Layout, NMPacked, detect_layout_coo
from prunekit.torch.deploy.sparse.layers import SparseLinear, pack
from prunekit.torch.structured.plan import PLAN_FORMAT, apply_plan


def _pack_stored(array: SparseArray) -> tuple[CSR | BSR | NMPacked, Layout]:
    """The stored nonzeros in the layout their positions fit, without a dense copy."""
    rows, cols = array.shape
    positions = array.positions
    row_index = (positions // cols).astype(np.int32)
    col_index = (positions % cols).astype(np.int32)
    layout = detect_layout_coo(array.shape, row_index, col_index, int8=array.scale is not None)
    if layout.kind == "nm":
        return NMPacked.from_coo(array.shape, row_index, col_index, array.values, *layout.block, array.scale), layout
    if layout.kind == "bsr":
        values = array.values.astype(np.float32)
        if array.scale is not None:
            values *= array.scale[row_index]
        return BSR.from_coo(array.shape, row_index, col_index, values, layout.block), layout
    values = array.values if array.scale is not None else array.values.astype(np.float32, copy=False)
    return CSR.from_coo((rows, cols), row_index, col_index, values, array.scale), layout


def _build_on_meta(model_factory: Callable[[], nn.Module]) -> tuple[nn.Module, bool]:
    """The factory's model on the meta device, or on the CPU when it has non-persistent buffers
    (computed at construction, e.g. rotary frequencies, which ``to_empty`` would leave undefined)."""
    with torch.device("meta"):
        model = model_factory()
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model_factory should return an nn.Module, got {type(model).__name__}")
    persistent = set(model.state_dict())
    if any(name not in persistent for name, _ in model.named_buffers()):
        return model_factory(), False
    return model, True


def load_sparse(
    path: str | os.PathLike,
    model_factory: Callable[[], nn.Module],
    *,
    min_sparsity: float = 0.5,
    example_input: Any = None,
    repeats: int = 10,
    timer: Timer | None = None,
) -> tuple[nn.Module, SparseReport]:
    """Build ``model_factory()`` and load a compact file into it, with its sparse Linear weights in sparse kernels.

    Raises :class:`~prunekit.errors.StateMismatchError` naming the first mismatching tensor when
    the file holds another architecture. With ``example_input`` (a batch at the deployment size)
    every sparse layer is timed against its dense form (and a block or N:M layer also as CSR): the
    fastest runs, an ``nn.Linear`` when no sparse layout is faster; the report records each layer's
    choice and why. ``timer`` replaces the measurement (see :data:`~prunekit.torch.deploy.sparse.convert.Timer`).

    Example::

        model, report = load_sparse("mlp.safetensors", lambda: MLP(), example_input=torch.randn(8, 1024))
    """
    if not 0.0 <= min_sparsity < 1.0:
        raise ConfigError(f"min_sparsity should be in [0, 1), got {min_sparsity}")
    arrays, header = load_compact_sparse(path)
    model, on_meta = _build_on_meta(model_factory)
    shapes = {name: entry.shape for name, entry in header.tensors.items()}
    plan = header.plan
    if isinstance(plan, dict) and plan.get("format") == PLAN_FORMAT:
        if {name: tuple(t.shape) for name, t in model.state_dict().items()} != shapes:
            try:
                apply_plan(model, plan)
            except CorruptFileError as exc:
                raise CorruptFileError(f"{str(path)!r}: {exc}") from None
    check_state_fits(model, shapes, str(path))
    report = SparseReport(threads=torch.get_num_threads())
    loaded: set[str] = set()
    for name, module in list(model.named_modules()):
        if type(module) is not nn.Linear:
            continue
        key = f"{name}.weight" if name else "weight"
        stored = arrays.get(key)
        sparsity = header.tensors[key].sparsity
        shape = tuple(header.tensors[key].shape)
        if not isinstance(stored, SparseArray) or sparsity < min_sparsity:
            reason = (
                f"sparsity {sparsity:.2f} is below min_sparsity {min_sparsity:.2f}"
                if sparsity < min_sparsity
                else "stored dense in the file"
            )
            report.layers.append(LayerChoice(name, "Linear", shape, sparsity, "-", None, None, False, reason))
            continue
        packed, layout = _pack_stored(stored)
        bias_key = f"{name}.bias" if name else "bias"
        bias = _tensor(arrays[bias_key]) if module.bias is not None else None
        _set_module(model, name, SparseLinear(packed, bias, layout))
        loaded.add(key)  # the bias is loaded below with the other tensors, into SparseLinear.bias
        report.layers.append(LayerChoice(name, "Linear", shape, sparsity, layout.describe(), None, None, True, "stored sparse"))
    rest = {name: _tensor(value) for name, value in arrays.items() if name not in loaded}
    if on_meta:
        model.to_empty(device="cpu")
    model.load_state_dict(rest, strict=True)  # every tensor but the sparse weights, which the model no longer has
    model.eval()
    if example_input is not None:
        _keep_faster(model, example_input, report, repeats, timer or time_candidates)
    return model, report


def _tensor(value: np.ndarray | SparseArray) -> torch.Tensor:
    array = value.to_dense() if isinstance(value, SparseArray) else value
    return torch.from_numpy(np.ascontiguousarray(array)) if array.ndim else torch.tensor(array)


def _keep_faster(model: nn.Module, example_input: Any, report: SparseReport, repeats: int, timer: Timer) -> None:
    """Time each loaded sparse layer (and, for a block or N:M layout, its CSR form) against its dense
    form on its real input; keep the fastest."""
    sparse_layers = {name: m for name, m in model.named_modules() if isinstance(m, SparseLinear)}
    try:
        inputs = _capture_inputs(model, sparse_layers, example_input)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ConfigError(f"example_input does not run through the model: {exc}") from None
    choices = {choice.name: choice for choice in report.layers}
    for name, layer in sparse_layers.items():
        choice = choices[name]
        x = inputs.get(name)
        if x is None:
            choice.reason = "not reached by example_input (kept sparse)"
            continue
        weight = layer.weight_data.to_dense()  # only while measuring: the dense candidate
        dense = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
        with torch.no_grad():
            dense.weight.copy_(torch.from_numpy(weight))
            if layer.bias is not None:
                dense.bias.copy_(layer.bias)
        options: dict[str, nn.Module] = {layer.layout.describe(): layer}
        for other in timed_layouts(layer.layout)[1:]:
            options[other.describe()] = SparseLinear(pack(weight, other), layer.bias, other)
        del weight
        best, times = choose_kernel(dense, options, x, repeats, timer)
        choice.dense_ms, choice.sparse_ms, choice.layout = times["dense"], times[best], best
        if choice.sparse_ms < choice.dense_ms:
            _set_module(model, name, options[best])
            choice.reason = _verdict(times, best)
        else:
            _set_module(model, name, dense)
            choice.sparse = False
            choice.reason = (
                f"sparse kernel not faster at this batch ({choice.sparse_ms:.3f} ms vs {choice.dense_ms:.3f} ms dense)"
            )
