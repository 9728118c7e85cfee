"""Export a (pruned, stripped) PyTorch model to ONNX with a dynamic batch dimension, and check it.

The check runs the ONNX file in ONNX Runtime and compares its outputs with PyTorch's on the
example batch and on a batch of another size (which proves the batch dimension is really
dynamic). A file that fails the check is never written.

Protobuf caps one ONNX file at 2 GiB, so a model whose weights come near that is written in
ONNX's external-data format: ``model.onnx`` (the graph) plus ``model.onnx.data`` (the weights)
beside it, moved into place together.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from prunekit.artifacts.ort import feed, input_specs, quiet_exporters, session
from prunekit.core.atomic import atomic_paths
from prunekit.errors import ConfigError, ExportError, ExportFallbackWarning

#: Weight bytes above which ``export_onnx(external_data=None)`` writes the weights to a ``.data`` file
#: beside the ``.onnx``: 1.875 GiB, leaving 128 MiB under protobuf's 2 GiB cap for the graph and constants.
EXTERNAL_DATA_THRESHOLD = 2**31 - 2**27


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
        return (
            f"ONNX Runtime vs PyTorch: max abs error {self.max_abs_error:.2e} at batch size(s) {sizes} "
            f"(tolerance {self.atol:.0e} + {self.rtol:.0e} x |output|)"
        )


@dataclass(frozen=True)
class OnnxExport:
    """An exported file: where it is, its input/output names, the ORT-vs-PyTorch check (if run), and
    its external data file (``model.onnx.data`` beside it; None when the file is self-contained)."""

    path: Path
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    check: OnnxCheck | None
    data_path: Path | None = None


@dataclass(frozen=True)
class _Example:
    """Example batch: tensors, plus their keyword names when the example was a dict (``model(**batch)``)."""

    tensors: tuple[torch.Tensor, ...]
    keys: tuple[str, ...] | None

    def call(self, model: nn.Module) -> Any:
        return model(**dict(zip(self.keys, self.tensors))) if self.keys else model(*self.tensors)

    def with_tensors(self, tensors: Iterable[torch.Tensor]) -> _Example:
        return _Example(tuple(tensors), self.keys)

    def ort_batch(self) -> tuple[np.ndarray, ...] | dict[str, np.ndarray]:
        arrays = tuple(t.numpy() for t in self.tensors)
        return dict(zip(self.keys, arrays)) if self.keys else arrays


def _as_inputs(example_input: Any) -> _Example:
    keys = None
    if isinstance(example_input, Mapping):
        keys, values = tuple(str(k) for k in example_input), tuple(example_input.values())
    else:
        values = example_input if isinstance(example_input, (tuple, list)) else (example_input,)
    inputs = []
    for i, value in enumerate(values):
        tensor = torch.as_tensor(value) if not isinstance(value, torch.Tensor) else value
        if tensor.ndim == 0:
            name = repr(keys[i]) if keys else str(i)
            raise ConfigError(f"example input {name} is a scalar; give a batch (first dimension = batch size)")
        inputs.append(tensor.detach().cpu())
    if not inputs:
        raise ConfigError("example_input is empty; give one example batch per model input")
    return _Example(tuple(inputs), keys)


def _names(names: Sequence[str] | None, count: int | None, stem: str) -> list[str] | None:
    if names is not None:
        return list(names)
    if count is None:
        return None
    return [stem] if count == 1 else [f"{stem}_{i}" for i in range(count)]


def _flat_outputs(out: Any) -> tuple[list[Any], list[str] | None]:
    """The model's outputs in export order, and their names when it returns a dict (a transformers ``ModelOutput``)."""
    if isinstance(out, Mapping):
        return list(out.values()), [str(k) for k in out]
    return list(out) if isinstance(out, (tuple, list)) else [out], None


def _torch_outputs(model: nn.Module, example: _Example) -> tuple[list[np.ndarray], list[str] | None]:
    """The model's outputs on ``example`` as arrays, and their names when it returns a dict."""
    with torch.no_grad():
        outs, keys = _flat_outputs(example.call(model))
    if not all(isinstance(o, torch.Tensor) for o in outs):
        raise ConfigError(
            "the model should return a tensor, a tuple of tensors or a dict of tensors (such as a "
            "transformers ModelOutput) to be exported"
        )
    return [o.detach().cpu().numpy() for o in outs], keys


def _dynamic_shapes(
    example: _Example, names: list[str], dynamic_batch: bool, dynamic_dims: Mapping[str, Mapping[int, str]]
) -> Any:
    """torch.export ``dynamic_shapes``: the batch dim of every input, plus ``dynamic_dims`` (same name, same Dim)."""
    unknown = sorted(set(dynamic_dims) - set(names))
    if unknown:
        raise ConfigError(f"dynamic_dims names the input(s) {unknown}, but the inputs are {names}")
    dims: dict[str, Any] = {}
    shapes = []
    for name, tensor in zip(names, example.tensors):
        shape = {0: dims.setdefault("batch", torch.export.Dim("batch", min=1))} if dynamic_batch else {}
        for axis, dim_name in dynamic_dims.get(name, {}).items():
            if not 1 <= axis < tensor.ndim:
                raise ConfigError(
                    f"dynamic_dims[{name!r}] has axis {axis}, but the input has {tensor.ndim} dims; "
                    "give axes 1 to ndim-1 (axis 0 is the batch, set by dynamic_batch)"
                )
            shape[axis] = dims.setdefault(dim_name, torch.export.Dim(dim_name, min=1))
        shapes.append(shape or None)
    if not dims:
        return None
    return dict(zip(example.keys, shapes)) if example.keys else tuple(shapes)


def _explain(exc: Exception, model: nn.Module) -> ExportError:
    text = str(exc)
    op = re.search(r"OpOverload\(op='([\w.:]+)'", text) or re.search(r"target=(?:torch\.ops\.)?([\w.:]+)", text)
    if op:
        return ExportError(
            f"exporting {type(model).__name__} to ONNX failed at op {op.group(1)!r}, which has no "
            "ONNX translation in this torch version; replace that op in the model's forward, or "
            "register a translation (torch.onnx.export's custom_translation_table)"
        )
    if "Constraints violated" in text or "specializ" in text:
        return ExportError(
            f"the batch dimension of {type(model).__name__} (or a dimension in dynamic_dims) cannot be "
            "dynamic: its forward treats that size as a constant (e.g. x.view(64, -1)); use "
            "torch.flatten(x, 1) or x.reshape(x.shape[0], -1), or export with dynamic_batch=False "
            f"(or without that dynamic_dims entry). Cause: {text[:500]}"
        )
    return ExportError(f"exporting {type(model).__name__} to ONNX failed: {type(exc).__name__}: {text[:800]}")


def _weight_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and buffers: what its ONNX file stores as weights."""
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))


def _external(model: nn.Module, external_data: bool | None) -> bool:
    if external_data not in (None, True, False):
        raise ConfigError(f"external_data should be None (automatic), True or False, got {external_data!r}")
    return _weight_bytes(model) > EXTERNAL_DATA_THRESHOLD if external_data is None else external_data


def _save(program: Any, path: Path, external: bool, model: nn.Module) -> None:
    """Write an exported program: with ``external``, the weights go to ``<path name>.data`` beside ``path``."""
    import onnx

    if external:
        program.save(str(path), external_data=True)
        return
    try:
        onnx.save(program.model_proto, str(path))
    except ValueError as exc:  # protobuf cannot serialise one message over 2 GiB
        raise ExportError(
            f"{type(model).__name__} does not fit in one ONNX file {path.name} ({exc}); export it "
            f"with external_data=True (or None) to keep its weights in {path.name}.data beside it"
        ) from None


def _legacy_export(
    model: nn.Module,
    example: _Example,
    path: Path,
    in_names: list[str] | None,
    out_names: list[str],
    opset: int | None,
    dynamic_batch: bool,
    dynamic_dims: Mapping[str, Mapping[int, str]],
    dynamo_error: ExportError,
) -> None:
    """Export with the legacy TorchScript exporter after the dynamo exporter failed, warning why.

    The legacy exporter traces one run of the forward (so data-dependent Python branches are
    frozen to the example's path); the file is still verified against PyTorch like any other.
    When it fails too, the dynamo exporter's explained error is raised.
    """
    names = in_names or _names(None, len(example.tensors), "input") or []
    axes: dict[str, dict[int, str]] = {}
    for name in names:
        axes[name] = {**({0: "batch"} if dynamic_batch else {}), **dict(dynamic_dims.get(name, {}))}
    for name in out_names:
        if dynamic_batch:
            axes[name] = {0: "batch"}
    # a trailing dict holds keyword inputs for the legacy exporter
    args: tuple[Any, ...] = (dict(zip(example.keys, example.tensors)),) if example.keys else tuple(example.tensors)
    try:
        with quiet_exporters():
            torch.onnx.export(
                model,
                args,
                str(path),
                input_names=names,
                output_names=out_names,
                opset_version=opset,
                dynamic_axes={k: v for k, v in axes.items() if v} or None,
                dynamo=False,
            )
    except Exception:
        raise dynamo_error from None
    warnings.warn(
        f"the dynamo ONNX exporter could not export {type(model).__name__} ({dynamo_error}); exported it with the "
        "legacy TorchScript exporter instead, which records one run of the forward: data-dependent branches "
        "are fixed to the example's path. Fix the model for torch.export to use the dynamo exporter.",
        ExportFallbackWarning,
        stacklevel=3,
    )


def _externalize(path: Path) -> None:
    """Move the weights of a self-contained ONNX file into ``<name>.data`` beside it."""
    import onnx

    proto = onnx.load(str(path))
    onnx.save(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=f"{path.name}.data")


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
                "x.reshape(x.shape[0], -1), or export with dynamic_batch=False"
            )
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

    Checks ``example_input`` (a tensor, a tuple of positional inputs, or a dict of keyword
    inputs named like the ONNX inputs) and, when ``other_batch_size`` is given, a batch of that
    size built by repeating it. Raises :class:`~prunekit.errors.ExportError` naming the output
    and the error when ``|onnx - torch| > atol + rtol * |torch|`` anywhere.

    Example::

        check = verify_onnx(model, "model.onnx", torch.randn(4, 1, 8, 8))
        check.max_abs_error  # 3e-07
    """
    example = _as_inputs(example_input)
    batches = [example]
    if other_batch_size is not None and other_batch_size != len(example.tensors[0]):
        batches.append(
            example.with_tensors(
                t.repeat_interleave(-(-other_batch_size // len(t)), 0)[:other_batch_size] for t in example.tensors
            )
        )
    was_training = model.training
    model.eval()
    try:
        sess = session(onnx_path)
        specs = input_specs(sess)
        output_names = [o.name for o in sess.get_outputs()]
        worst = 0.0
        for batch in batches:
            size = len(batch.tensors[0])
            try:
                expected, _ = _torch_outputs(model, batch)
            except RuntimeError as exc:
                raise ExportError(
                    f"{type(model).__name__} itself fails at batch size {size} ({exc}): its "
                    "forward fixes the batch size (e.g. x.view(64, -1)); use torch.flatten(x, 1) or "
                    "x.reshape(x.shape[0], -1), or export with dynamic_batch=False"
                ) from None
            try:
                got = sess.run(None, feed(specs, batch.ort_batch(), "example input"))
            except Exception as exc:  # onnxruntime raises its own untyped errors
                raise ExportError(f"ONNX Runtime could not run {onnx_path} at batch size {size}: {exc}") from None
            if len(got) != len(expected):
                raise ExportError(f"{onnx_path} has {len(got)} outputs but the model returns {len(expected)}")
            for name, want, have in zip(output_names, expected, got):
                if want.shape != have.shape:
                    raise ExportError(
                        f"output {name!r} of {onnx_path} has shape {have.shape} but PyTorch gives "
                        f"{want.shape} at batch size {size}"
                    )
                error = np.abs(have.astype(np.float64) - want.astype(np.float64))
                worst = max(worst, float(error.max(initial=0.0)))
                if (error > atol + rtol * np.abs(want)).any():
                    raise ExportError(
                        f"output {name!r} of {onnx_path} differs from PyTorch by up to {float(error.max()):.3g} "
                        f"at batch size {size} (tolerance {atol} + {rtol} x |output|); an op is "
                        "exported with different semantics: check ops such as custom layers, or loosen atol"
                    )
    finally:
        model.train(was_training)
    return OnnxCheck(worst, tuple(len(b.tensors[0]) for b in batches), atol, rtol)


def export_onnx(
    model: nn.Module,
    example_input: Any,
    path: str | os.PathLike,
    *,
    dynamic_batch: bool = True,
    dynamic_dims: Mapping[str, Mapping[int, str]] | None = None,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    opset: int | None = None,
    verify: bool = True,
    atol: float = 1e-4,
    external_data: bool | None = None,
) -> OnnxExport:
    """Export ``model`` (in eval mode) to ONNX, written atomically, and check it in ONNX Runtime.

    ``example_input`` is one batch: a tensor, a tuple for several positional inputs, or a dict
    of keyword inputs (``model(**example_input)``, as transformers models take them; the keys
    name the ONNX inputs). With ``dynamic_batch`` the first dimension of every input is
    symbolic, so the file runs at any batch size; ``dynamic_dims`` makes more dimensions
    symbolic, ``{input name: {axis: dim name}}`` (one name shared by several inputs is one
    dimension). A model returning a dict (a ``ModelOutput``) gets its keys as output names.
    With ``verify`` the file is compared with PyTorch at the example's batch size and another
    one before it is moved into place; see :func:`verify_onnx`.

    ``external_data`` True writes the weights to ``<path>.data`` beside ``path`` (ONNX's external
    data format, needed past protobuf's 2 GiB cap), False writes one self-contained file, None
    (default) chooses external data when the parameters and buffers take more bytes than
    :data:`EXTERNAL_DATA_THRESHOLD`. The pair is written, checked and moved into place together,
    and replaces an old pair (or an old ``.data`` file) whole; move the two files together.

    Example::

        result = export_onnx(model, torch.randn(2, 1, 8, 8), "model.onnx")
        print(result.check)  # ONNX Runtime vs PyTorch: max abs error 2.4e-07 ...
        export_onnx(bert, {"input_ids": ids, "attention_mask": mask}, "bert.onnx",
                    dynamic_dims={"input_ids": {1: "sequence"}, "attention_mask": {1: "sequence"}})
        export_onnx(llm, ids, "llm.onnx").data_path  # PosixPath('llm.onnx.data'): over 1.875 GiB of weights
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model should be an nn.Module, got {type(model).__name__}")
    example = _as_inputs(example_input)
    batch = len(example.tensors[0])
    if dynamic_batch and any(len(t) != batch for t in example.tensors):
        raise ConfigError(
            f"example inputs have different batch sizes {[len(t) for t in example.tensors]}; "
            "with dynamic_batch they share one batch dimension"
        )
    external = _external(model, external_data)
    if example.keys and input_names is not None:
        raise ConfigError(
            "input_names cannot rename the inputs of a dict example_input: its keys are the "
            "model's keyword arguments and name the ONNX inputs; leave input_names out"
        )
    trace = example
    if dynamic_batch and batch < 2:  # torch.export specialises sizes 0 and 1, so trace with 2
        trace = example.with_tensors(torch.cat([t, t]) for t in example.tensors)
    in_names = list(example.keys) if example.keys else _names(input_names, len(example.tensors), "input")
    dynamic_shapes = _dynamic_shapes(example, in_names, dynamic_batch, dynamic_dims or {})
    was_training = model.training
    model.eval()
    try:
        try:
            outputs, keys = _torch_outputs(model, trace)
        except RuntimeError as exc:
            raise ConfigError(f"{type(model).__name__} fails on the example input: {exc}") from None
        out_names = list(output_names) if output_names is not None else keys or _names(None, len(outputs), "output")
        args, kwargs = ((), dict(zip(trace.keys, trace.tensors))) if trace.keys else (trace.tensors, None)
        target = Path(path)
        data = target.with_name(f"{target.name}.data")
        with atomic_paths(target, data) as (tmp, tmp_data):
            try:
                with quiet_exporters():
                    program = torch.onnx.export(
                        model,
                        args,
                        None,
                        kwargs=kwargs,
                        input_names=in_names,
                        output_names=out_names,
                        opset_version=opset,
                        dynamo=True,
                        dynamic_shapes=dynamic_shapes,
                        verbose=False,
                    )
            except Exception as exc:  # torch.onnx raises many types; all become one precise ExportError
                error = _explain(exc, model)
                _legacy_export(model, trace, tmp, in_names, out_names, opset, dynamic_batch, dynamic_dims or {}, error)
                if external:
                    _externalize(tmp)
            else:
                _save(program, tmp, external, model)
            names = _graph_io(tmp, dynamic_batch)
            check = None
            if verify:
                other = batch + 1 if dynamic_batch else None
                check = verify_onnx(model, tmp, example_input, atol=atol, other_batch_size=other)
            written = data if tmp_data.exists() else None
    finally:
        model.train(was_training)
    return OnnxExport(target, *names, check, written)
