"""Export a (pruned, stripped) PyTorch model to ONNX with a dynamic batch dimension, and check it.

The check runs the ONNX file in ONNX Runtime and compares its outputs with PyTorch's on the
example batch and on a batch of another size (which proves the batch dimension is really
dynamic). A file that fails the check is never written.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from prunekit._atomic import atomic_path
from prunekit.errors import ConfigError, ExportError
from prunekit.torch._ort import feed, input_specs, quiet_exporters, session


@dataclass(frozen=True)
class OnnxCheck:
    """How closely ONNX Runtime reproduces PyTorch: the max abs error over the checked batch sizes.

    Example::

        print(verify_onnx(model, "model.onnx", x))  # ONNX Runtime vs PyTorch: max abs error 2.4e-07 ...
    """

    max_abs_error: float
    batch_sizes: tuple[int, ...]
    atol: float
    rtol: float

    def __str__(self) -> str:
        sizes = ", ".join(map(str, self.batch_sizes))
        return (f"ONNX Runtime vs PyTorch: max abs error {self.max_abs_error:.2e} at batch size(s) {sizes} "
                f"(tolerance {self.atol:.0e} + {self.rtol:.0e} x |output|)")


@dataclass(frozen=True)
class OnnxExport:
    """An exported file: where it is, its input/output names, and the ORT-vs-PyTorch check (if run)."""

    path: Path
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    check: OnnxCheck | None


def _as_inputs(example_input: Any) -> tuple[torch.Tensor, ...]:
    values = example_input if isinstance(example_input, (tuple, list)) else (example_input,)
    inputs = []
    for i, value in enumerate(values):
        tensor = torch.as_tensor(value) if not isinstance(value, torch.Tensor) else value
        if tensor.ndim == 0:
            raise ConfigError(f"example input {i} is a scalar; give a batch (first dimension = batch size)")
        inputs.append(tensor.detach().cpu())
    if not inputs:
        raise ConfigError("example_input is empty; give one example batch per model input")
    return tuple(inputs)


def _names(names: Sequence[str] | None, count: int | None, stem: str) -> list[str] | None:
    if names is not None:
        return list(names)
    if count is None:
        return None
    return [stem] if count == 1 else [f"{stem}_{i}" for i in range(count)]


def _torch_outputs(model: nn.Module, inputs: Sequence[torch.Tensor]) -> list[np.ndarray]:
    with torch.no_grad():
        out = model(*inputs)
    outs = out if isinstance(out, (tuple, list)) else (out,)
    if not all(isinstance(o, torch.Tensor) for o in outs):
        raise ConfigError("the model should return a tensor or a tuple of tensors to be exported")
    return [o.detach().cpu().numpy() for o in outs]


def _explain(exc: Exception, model: nn.Module) -> ExportError:
    text = str(exc)
    op = re.search(r"OpOverload\(op='([\w.:]+)'", text) or re.search(r"target=(?:torch\.ops\.)?([\w.:]+)", text)
    if op:
        return ExportError(f"exporting {type(model).__name__} to ONNX failed at op {op.group(1)!r}, which has no "
                           "ONNX translation in this torch version; replace that op in the model's forward, or "
                           "register a translation (torch.onnx.export's custom_translation_table)")
    if "Constraints violated" in text or "specializ" in text:
        return ExportError(f"the batch dimension of {type(model).__name__} cannot be dynamic: its forward treats "
                           "the batch size as a constant (e.g. x.view(64, -1)); use torch.flatten(x, 1) or "
                           f"x.reshape(x.shape[0], -1), or export with dynamic_batch=False. Cause: {text[:500]}")
    return ExportError(f"exporting {type(model).__name__} to ONNX failed: {type(exc).__name__}: {text[:800]}")


def _graph_io(path: Path, dynamic_batch: bool) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Input and output names of the exported graph; checks that the batch dim is symbolic when asked."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {init.name for init in graph.initializer}
    inputs = [value for value in graph.input if value.name not in initializers]
    for value in inputs if dynamic_batch else []:
        dims = value.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value"):
            raise ExportError(
                f"the exported input {value.name!r} has a fixed batch size {dims[0].dim_value}: the model's forward "
                "uses the batch size as a constant (e.g. x.view(64, -1)); use torch.flatten(x, 1) or "
                "x.reshape(x.shape[0], -1), or export with dynamic_batch=False")
    return tuple(v.name for v in inputs), tuple(v.name for v in graph.output)


def verify_onnx(
    model: nn.Module,
    onnx_path: str | os.PathLike,
    example_input: Any,
    *,
    atol: float = 1e-4,
    rtol: float = 1e-3,
    other_batch_size: int | None = None,
) -> OnnxCheck:
    """Run ``onnx_path`` in ONNX Runtime and PyTorch ``model`` on the same inputs; raise if they differ.

    Checks ``example_input`` and, when ``other_batch_size`` is given, a batch of that size built
    by repeating it. Raises :class:`~prunekit.errors.ExportError` naming the output and the
    error when ``|onnx - torch| > atol + rtol * |torch|`` anywhere.

    Example::

        check = verify_onnx(model, "model.onnx", torch.randn(4, 1, 8, 8))
        check.max_abs_error  # 3e-07
    """
    inputs = _as_inputs(example_input)
    batches = [inputs]
    if other_batch_size is not None and other_batch_size != len(inputs[0]):
        batches.append(tuple(t.repeat_interleave(-(-other_batch_size // len(t)), 0)[:other_batch_size] for t in inputs))
    was_training = model.training
    model.eval()
    try:
        sess = session(onnx_path)
        specs = input_specs(sess)
        output_names = [o.name for o in sess.get_outputs()]
        worst = 0.0
        for batch in batches:
            try:
                expected = _torch_outputs(model, batch)
            except RuntimeError as exc:
                raise ExportError(f"{type(model).__name__} itself fails at batch size {len(batch[0])} ({exc}): its "
                                  "forward fixes the batch size (e.g. x.view(64, -1)); use torch.flatten(x, 1) or "
                                  "x.reshape(x.shape[0], -1), or export with dynamic_batch=False") from None
            try:
                got = sess.run(None, feed(specs, tuple(batch), "example input"))
            except Exception as exc:  # onnxruntime raises its own untyped errors
                raise ExportError(f"ONNX Runtime could not run {onnx_path} at batch size {len(batch[0])}: {exc}") from None
            if len(got) != len(expected):
                raise ExportError(f"{onnx_path} has {len(got)} outputs but the model returns {len(expected)}")
            for name, want, have in zip(output_names, expected, got):
                if want.shape != have.shape:
                    raise ExportError(f"output {name!r} of {onnx_path} has shape {have.shape} but PyTorch gives "
                                      f"{want.shape} at batch size {len(batch[0])}")
                error = np.abs(have.astype(np.float64) - want.astype(np.float64))
                worst = max(worst, float(error.max(initial=0.0)))
                if (error > atol + rtol * np.abs(want)).any():
                    raise ExportError(
                        f"output {name!r} of {onnx_path} differs from PyTorch by up to {float(error.max()):.3g} "
                        f"at batch size {len(batch[0])} (tolerance {atol} + {rtol} x |output|); an op is "
                        "exported with different semantics: check ops such as custom layers, or loosen atol")
    finally:
        model.train(was_training)
    return OnnxCheck(worst, tuple(len(b[0]) for b in batches), atol, rtol)


def export_onnx(
    model: nn.Module,
    example_input: Any,
    path: str | os.PathLike,
    *,
    dynamic_batch: bool = True,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    opset: int | None = None,
    verify: bool = True,
    atol: float = 1e-4,
) -> OnnxExport:
    """Export ``model`` (in eval mode) to one ONNX file, written atomically, and check it in ONNX Runtime.

    ``example_input`` is one batch (a tensor, or a tuple for several inputs). With
    ``dynamic_batch`` the first dimension of every input is symbolic, so the file runs at any
    batch size. With ``verify`` the file is compared with PyTorch at the example's batch size
    and another one before it is moved into place; see :func:`verify_onnx`.

    Example::

        result = export_onnx(model, torch.randn(2, 1, 8, 8), "model.onnx")
        print(result.check)  # ONNX Runtime vs PyTorch: max abs error 2.4e-07 ...
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model should be an nn.Module, got {type(model).__name__}")
    inputs = _as_inputs(example_input)
    batch = len(inputs[0])
    if dynamic_batch and any(len(t) != batch for t in inputs):
        raise ConfigError(f"example inputs have different batch sizes {[len(t) for t in inputs]}; "
                          "with dynamic_batch they share one batch dimension")
    trace_inputs = inputs
    if dynamic_batch and batch < 2:  # torch.export specialises sizes 0 and 1, so trace with 2
        trace_inputs = tuple(torch.cat([t, t]) for t in inputs)
    in_names = _names(input_names, len(inputs), "input")
    dynamic_shapes = None
    if dynamic_batch:
        dim = torch.export.Dim("batch", min=1)
        dynamic_shapes = tuple({0: dim} for _ in inputs)
    was_training = model.training
    model.eval()
    try:
        try:
            out_names = _names(output_names, len(_torch_outputs(model, trace_inputs)), "output")
        except RuntimeError as exc:
            raise ConfigError(f"{type(model).__name__} fails on the example input: {exc}") from None
        with atomic_path(path) as tmp:
            try:
                with quiet_exporters():
                    torch.onnx.export(model, trace_inputs, str(tmp), input_names=in_names, output_names=out_names,
                                      opset_version=opset, dynamo=True, external_data=False,
                                      dynamic_shapes=dynamic_shapes, verbose=False)
            except Exception as exc:  # torch.onnx raises many types; all become one precise ExportError
                raise _explain(exc, model) from exc
            names = _graph_io(tmp, dynamic_batch)
            check = None
            if verify:
                other = batch + 1 if dynamic_batch else None
                check = verify_onnx(model, tmp, inputs, atol=atol, other_batch_size=other)
    finally:
        model.train(was_training)
    return OnnxExport(Path(path), *names, check)
