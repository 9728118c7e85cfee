"""Quantization-aware training (QAT) and its sparsity-preserving variant (PQAT), exported to int8 QDQ ONNX.

During training every targeted layer (``Linear``, ``Conv1d/2d/3d``) computes with

* weights fake-quantized to int8, symmetric, per output channel (``scale = max|w| / 127``, raised
  where needed so the bias fits int32 at ``input_scale * scale``: see :func:`bias_scale_floor`);
* its input and its output fake-quantized to uint8, affine, per tensor, with ranges observed
  as an exponential moving average of the batch min/max while the model is in training mode;

and gradients pass straight through the rounding (zero outside the clipped activation range).
:meth:`QuantizationAwareTraining.export_onnx` writes the same arithmetic as an ONNX QDQ graph:
int8 weight initializers with per-channel ``DequantizeLinear``, and ``QuantizeLinear`` /
``DequantizeLinear`` pairs carrying the learned activation ranges, which ONNX Runtime fuses into
its int8 kernels (``QLinearConv``, ``QGemm``). The export is checked against the fake-quant PyTorch
model (SQNR) before it is moved into place.

**PQAT** takes masks (a :class:`~prunekit.torch.Pruner`, a dict of boolean masks, or the exact
zeros already in a pruned model's weights) and keeps them through training: the fake-quantized
weight is ``quantize(w * mask)`` and a kept weight never rounds to 0 (it becomes +-1 step), so the
int8 file has exactly the mask's zeros; the export raises :class:`~prunekit.errors.ExportError` if
it would not. N:M masks (2:4) survive the same way.

Why not torchao: its QAT flow (``torchao.quantization.qat``) fake-quantizes ``nn.Linear`` and
``nn.Embedding`` only (no convolutions) and converts to torchao tensor subclasses for PyTorch
inference rather than to an ONNX Runtime graph; the arithmetic above is the few lines it needs.

Modules: :mod:`.fake_quant` holds the arithmetic (codes, scales, observed ranges), :mod:`.qdq` writes the
int8 QDQ graph; this module is the controller (hooks, masks, checkpoint state) and the training drivers.
Their public names stay importable from here.

The model is not wrapped: its class and ``state_dict`` keys are unchanged (ranges and masks live
in the controller). While the controller is attached, each targeted layer carries a forward
pre-hook and a forward hook; :meth:`~QuantizationAwareTraining.close` removes them.
"""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from prunekit.artifacts.ort import feed, input_specs, quiet_exporters, session
from prunekit.core.atomic import atomic_paths
from prunekit.core.progress import progress as progress_bar
from prunekit.errors import ConfigError, ExportError
from prunekit.torch.recover.fake_quant import BIAS_INT32_LIMIT as BIAS_INT32_LIMIT
from prunekit.torch.recover.fake_quant import (
    QUANTIZABLE,
    LayerState,
    ObservedRange,
    _fake_quant_activation,
    _fake_quant_weight,
    _weight,
)
from prunekit.torch.recover.fake_quant import bias_scale_floor as bias_scale_floor
from prunekit.torch.recover.fake_quant import weight_codes as weight_codes
from prunekit.torch.recover.qdq import QatExport as QatExport
from prunekit.torch.recover.qdq import _first, insert_qdq
from prunekit.torch.recover.qdq import sqnr_db as sqnr_db
from prunekit.torch.training import _length, _model_device, evaluate
from prunekit.torch.unstructured.pruner import Pruner

DEFAULT_SQNR_FLOOR_DB = 25.0
STATE_FORMAT = "prunekit.qat"
"""``format`` of :meth:`QuantizationAwareTraining.state_dict`."""


def _check_freeze(name: str, value: Any, least: int) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
        raise ConfigError(f"{name} should be None or an integer >= {least} (training batches), got {value!r}")


def _masks_from(masks: Any, model: nn.Module) -> dict[str, torch.Tensor]:
    """Masks by parameter name from a Pruner, a dict, or ``"zeros"`` (the exact zeros of the weights)."""
    if isinstance(masks, Pruner):
        if masks.stripped:
            raise ConfigError("the pruner was stripped and holds no masks; pass masks='zeros' to keep the model's zeros")
        return dict(masks.masks)
    if isinstance(masks, str):
        if masks != "zeros":
            raise ConfigError(f"masks should be a Pruner, a dict of boolean masks or 'zeros', got {masks!r}")
        found = {}
        for name, module in model.named_modules():
            weight = getattr(module, "weight", None)
            if isinstance(module, QUANTIZABLE) and isinstance(weight, torch.Tensor) and bool((weight == 0).any()):
                found[f"{name}.weight"] = weight.detach() != 0
        return found
    if isinstance(masks, Mapping):
        params = dict(model.named_parameters())
        result = {}
        for name, mask in masks.items():
            if name not in params:
                raise ConfigError(f"mask {name!r} names no parameter of {type(model).__name__}")
            mask = torch.as_tensor(mask).bool()
            if mask.shape != params[name].shape:
                raise ConfigError(f"mask {name!r} has shape {tuple(mask.shape)}, the parameter {tuple(params[name].shape)}")
            result[name] = mask
        return result
    raise ConfigError(f"masks should be a Pruner, a dict of boolean masks or 'zeros', got {type(masks).__name__}")


class QuantizationAwareTraining:
    """Fake-quantizes a model's Linear/Conv layers for training, and exports the result as int8 QDQ ONNX.

    Args:
        model: the model, modified in place only by training (no wrappers; hooks until :meth:`close`).
        targets: module-name globs to quantize (default: every ``Linear``/``Conv1d/2d/3d``).
        exclude: module-name globs left in float.
        masks: for PQAT, a :class:`Pruner`, ``{param name: bool mask}`` or ``"zeros"``; kept exactly.
        quantize_outputs: fake-quantize each layer's output too (lets ONNX Runtime fuse int8 kernels).
        momentum: EMA factor of the observed activation ranges.
        freeze_ranges_after: training batches (forwards in training mode) after which the activation
            ranges stop moving, as PyTorch's QAT recipe disables its observers; ``None``: never.
        freeze_bn_after: training batches after which BatchNorm layers run on their running
            statistics and stop updating them (``torch.ao``'s ``freeze_bn_stats``; 0: from the
            start); ``None``: never. Their weight and bias train either way.

    Layers with weights that cannot be fake-quantized (e.g. ``ConvTranspose2d``, ``Embedding``)
    stay in float and are listed in :attr:`float_layers` with the reason.

    Example::

        controller = QuantizationAwareTraining(model)
        fit(model, loader, epochs=2)                  # any loop trains the fake-quant model
        controller.export_onnx(x[:8], "model.int8.onnx")
        model = controller.close()
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        targets: Sequence[str] | None = None,
        exclude: Sequence[str] = (),
        masks: Any = None,
        quantize_outputs: bool = True,
        momentum: float = 0.1,
        freeze_ranges_after: int | None = None,
        freeze_bn_after: int | None = None,
    ):
        if not isinstance(model, nn.Module):
            raise ConfigError(f"model should be a torch.nn.Module, got {type(model).__name__}")
        if not 0 < momentum <= 1:
            raise ConfigError(f"momentum should be in (0, 1], got {momentum!r}")
        if isinstance(targets, str) or isinstance(exclude, str):
            raise ConfigError("targets and exclude take lists of module-name globs, e.g. ['features.*']")
        _check_freeze("freeze_ranges_after", freeze_ranges_after, 1)
        _check_freeze("freeze_bn_after", freeze_bn_after, 0)
        self.model = model
        self.momentum = float(momentum)
        self.freeze_ranges_after = freeze_ranges_after
        self.freeze_bn_after = freeze_bn_after
        self.steps = 0
        """Training batches seen while attached (forwards of the model in training mode)."""
        self.quantize_outputs = bool(quantize_outputs)
        self.masks = _masks_from(masks, model) if masks is not None else {}
        self.float_layers: dict[str, str] = {}
        self.layers: dict[str, LayerState] = {}
        matched: set[str] = set()
        for name, module in model.named_modules():
            weight = getattr(module, "weight", None)
            if not name or not isinstance(weight, nn.Parameter):
                continue
            chosen = targets is None or any(fnmatch.fnmatchcase(name, g) for g in targets)
            matched.update(g for g in targets or () if fnmatch.fnmatchcase(name, g))
            if not chosen or any(fnmatch.fnmatchcase(name, g) for g in exclude):
                continue
            if not isinstance(module, QUANTIZABLE):
                if weight.dim() >= 2:
                    self.float_layers[name] = f"{type(module).__name__} cannot be fake-quantized; left in float"
                continue
            mask = self.masks.get(f"{name}.weight")
            self.layers[name] = LayerState(name, module, mask.to(weight.device) if mask is not None else None)
        unmatched = sorted(set(targets or ()) - matched)
        if unmatched:
            raise ConfigError(f"target glob(s) {unmatched} match no layer of {type(model).__name__}")
        stray = sorted(set(self.masks) - {f"{n}.weight" for n in self.layers})
        if stray:
            raise ConfigError(f"mask(s) {stray[:5]} belong to no quantized layer; they could not be kept through QAT")
        if not self.layers:
            raise ConfigError(f"{type(model).__name__} has no Linear/Conv layer to quantize (targets={targets!r})")
        self.history: list[dict[str, float]] = []
        self._handles: list[Any] = []
        self._attach()

    # ------------------------------------------------------------------ hooks
    def _attach(self) -> None:
        self._handles.append(self.model.register_forward_pre_hook(self._count_step))
        for layer in self.layers.values():
            self._handles.append(layer.module.register_forward_pre_hook(self._pre_hook(layer)))
            self._handles.append(layer.module.register_forward_hook(self._post_hook(layer)))

    def _count_step(self, model: nn.Module, args: tuple[Any, ...]) -> None:
        """Count a training batch; past ``freeze_bn_after``, put the BatchNorm layers in eval mode for it."""
        if not model.training:
            return
        self.steps += 1
        if self.freeze_bn_after is not None and self.steps > self.freeze_bn_after:
            for module in model.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()

    def _observing(self, layer: LayerState, which: ObservedRange) -> bool:
        if not which.seen:
            return True
        frozen = self.freeze_ranges_after is not None and self.steps > self.freeze_ranges_after
        return layer.module.training and not frozen

    def _pre_hook(self, layer: LayerState) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
            x = args[0]
            if self._observing(layer, layer.input_range):
                layer.input_range.observe(x, self.momentum)
            input_scale, input_zero_point = layer.input_range.qparams()
            x = _fake_quant_activation(x, input_scale, input_zero_point)
            # shadow the parameter for this call only: state_dict and parameters() still see it
            floor = bias_scale_floor(module, input_scale)
            module.__dict__["weight"] = _fake_quant_weight(_weight(module), layer.mask, floor)
            return (x, *args[1:])

        return hook

    def _post_hook(self, layer: LayerState) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
            module.__dict__.pop("weight", None)
            if not self.quantize_outputs:
                return output
            if self._observing(layer, layer.output_range):
                layer.output_range.observe(output, self.momentum)
            return _fake_quant_activation(output, *layer.output_range.qparams())

        return hook

    def state_dict(self) -> dict[str, Any]:
        """What the model's ``state_dict`` does not hold: the training-batch count (which drives the freezes),
        each layer's observed activation ranges and the PQAT masks; ``torch.save`` it beside the model's.

        Example::

            torch.save({"model": model.state_dict(), "qat": controller.state_dict()}, "checkpoint.pt")
        """
        return {
            "format": STATE_FORMAT,
            "steps": self.steps,
            "options": {"freeze_ranges_after": self.freeze_ranges_after, "freeze_bn_after": self.freeze_bn_after},
            "ranges": {
                name: [[r.low, r.high, r.seen] for r in (layer.input_range, layer.output_range)]
                for name, layer in self.layers.items()
            },
            "masks": {f"{name}.weight": layer.mask.cpu() for name, layer in self.layers.items() if layer.mask is not None},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume from :meth:`state_dict` (a controller built on the same model with the same options);
        a state for other layers, masks or freeze options is refused, naming the first difference.

        Example::

            controller = QuantizationAwareTraining(model, masks="zeros"); controller.load_state_dict(saved["qat"])
        """
        if not isinstance(state, Mapping) or state.get("format") != STATE_FORMAT:
            raise ConfigError("not a prunekit QAT state (expected the dict from QuantizationAwareTraining.state_dict())")
        options = {"freeze_ranges_after": self.freeze_ranges_after, "freeze_bn_after": self.freeze_bn_after}
        for key, value in options.items():
            if state["options"].get(key) != value:
                raise ConfigError(
                    f"the QAT state was saved with {key}={state['options'].get(key)!r}, this controller has {value!r}"
                )
        if sorted(state["ranges"]) != sorted(self.layers):
            extra = sorted(set(state["ranges"]) ^ set(self.layers))
            raise ConfigError(f"the QAT state and this controller quantize different layers (first: {extra[0]!r})")
        mine = {f"{name}.weight" for name, layer in self.layers.items() if layer.mask is not None}
        if set(state["masks"]) != mine:
            raise ConfigError(
                f"the QAT state has masks for {sorted(state['masks'])[:5]}, this controller for {sorted(mine)[:5]}: "
                "build it with the same masks (PQAT: masks='zeros' on the pruned model)"
            )
        for name, layer in self.layers.items():
            for target, (low, high, seen) in zip((layer.input_range, layer.output_range), state["ranges"][name]):
                target.low, target.high, target.seen = float(low), float(high), bool(seen)
            if layer.mask is not None:
                layer.mask = torch.as_tensor(state["masks"][f"{name}.weight"]).bool().to(layer.mask.device)
        self.steps = int(state["steps"])

    @property
    def attached(self) -> bool:
        """Whether the fake-quant hooks are on the model."""
        return bool(self._handles)

    @torch.no_grad()
    def apply_masks(self) -> None:
        """Zero the pruned float weights (PQAT; call after each optimizer step, as :func:`qat` does)."""
        for layer in self.layers.values():
            if layer.mask is not None:
                _weight(layer.module).mul_(layer.mask)

    def close(self) -> nn.Module:
        """Remove the hooks (apply the masks first) and return the plain float model."""
        self.apply_masks()
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for layer in self.layers.values():
            layer.module.__dict__.pop("weight", None)
        return self.model

    # ------------------------------------------------------------------ export
    def export_onnx(
        self,
        example_input: torch.Tensor,
        path: str | Path,
        *,
        sqnr_floor_db: float = DEFAULT_SQNR_FLOOR_DB,
    ) -> QatExport:
        """Write the fake-quant model as int8 QDQ ONNX (atomically), checked against PyTorch.

        ONNX Runtime's output on ``example_input`` must reach ``sqnr_floor_db`` against the
        fake-quant model's, and with masks the int8 weights must have exactly the masks' zeros;
        otherwise :class:`~prunekit.errors.ExportError` and nothing is written.

        Example::

            result = controller.export_onnx(torch.as_tensor(x_val[:64]), "model.int8.onnx")
            result.sqnr_db  # 41.3
        """
        if not self.attached:
            raise ConfigError("this QAT controller was closed; export before close()")
        if not isinstance(example_input, torch.Tensor):
            example_input = torch.as_tensor(np.asarray(example_input))
        if example_input.dim() == 0 or len(example_input) == 0:
            raise ConfigError("example_input should be a batch of inputs (first dimension = batch size)")
        missing = [n for n, layer in self.layers.items() if not layer.input_range.seen]
        if missing:
            raise ConfigError(f"layer(s) {missing[:5]} never ran, so they have no activation range; train or calibrate first")
        device = _model_device(self.model)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                reference = _first(self.model(example_input.to(device))).cpu().numpy()
            self.apply_masks()
            proto = self._export_float(example_input.to(device))
        finally:
            self.model.train(was_training)
        zeros = insert_qdq(proto, self.layers, self.quantize_outputs, self.float_layers)
        target = Path(path)
        with atomic_paths(target) as (tmp,):
            import onnx

            onnx.save(proto, str(tmp))
            try:
                sess = session(tmp, threads=1)  # one thread: the check gives the same figure on every run
                got = sess.run(None, feed(input_specs(sess), (example_input.cpu().numpy(),), "example input"))[0]
            except Exception as exc:  # onnxruntime raises untyped errors
                raise ExportError(f"ONNX Runtime could not run the int8 QDQ model of {type(self.model).__name__}: {exc}") from exc
            quality = sqnr_db(reference, got)
            if quality < sqnr_floor_db:
                raise ExportError(
                    f"the int8 ONNX output differs from the fake-quant PyTorch model: SQNR {quality:.1f} dB < "
                    f"{sqnr_floor_db} dB; a layer is exported with other semantics than it trained with"
                )
        return QatExport(target, quality, zeros, dict(self.float_layers))

    def _export_float(self, example: torch.Tensor) -> Any:
        handles, self._handles = self._handles, []
        for handle in handles:
            handle.remove()
        try:
            trace = torch.cat([example, example]) if len(example) < 2 else example
            with quiet_exporters():
                program = torch.onnx.export(
                    self.model,
                    (trace,),
                    None,
                    input_names=["input"],
                    output_names=None,
                    dynamo=True,
                    optimize=False,  # keep parameter names and one node per layer (no BN folding)
                    dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
                    verbose=False,
                )
        except Exception as exc:
            raise ExportError(f"exporting {type(self.model).__name__} to ONNX failed: {type(exc).__name__}: {exc}") from exc
        finally:
            self._attach()
        if program is None:
            raise ExportError(f"torch.onnx.export returned no program for {type(self.model).__name__}")
        return program.model_proto


def qat(
    model: nn.Module,
    train_loader: Iterable,
    *,
    epochs: int,
    lr: float = 1e-4,
    weight_decay: float = 0.0,
    masks: Any = None,
    targets: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
    quantize_outputs: bool = True,
    freeze_ranges_after: int | None = None,
    freeze_bn_after: int | None = None,
    loss_fn: Any = None,
    val_loader: Iterable | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> QuantizationAwareTraining:
    """Fine-tune ``model`` with fake-quantized weights and activations; returns the attached controller.

    With ``masks`` (a Pruner, a dict, or ``"zeros"``) this is PQAT: the masked weights stay
    exactly zero, in float and in int8 (see :func:`pqat`). Export with
    ``controller.export_onnx(x, path)``, then ``controller.close()``. ``controller.history``
    holds one record per epoch.

    Example::

        controller = qat(model, loader, epochs=2, lr=1e-4)
        controller.export_onnx(torch.as_tensor(x_val[:64]), "model.int8.onnx")
    """
    if not isinstance(epochs, int) or epochs < 0:
        raise ConfigError(f"epochs should be an integer >= 0, got {epochs!r}")
    device = torch.device(device) if device is not None else _model_device(model)
    model.to(device)
    controller = QuantizationAwareTraining(
        model,
        targets=targets,
        exclude=exclude,
        masks=masks,
        quantize_outputs=quantize_outputs,
        freeze_ranges_after=freeze_ranges_after,
        freeze_bn_after=freeze_bn_after,
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    handle = optimizer.register_step_post_hook(lambda *_: controller.apply_masks())
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    history: list[dict[str, float]] = []
    try:
        with progress_bar(
            "quantization-aware training", epochs * (_length(train_loader) or 0) or None, enabled=progress
        ) as advance:
            for epoch in range(epochs):
                model.train()
                started, total, batches = time.perf_counter(), 0.0, 0
                for inputs, labels in train_loader:
                    optimizer.zero_grad(set_to_none=True)
                    loss = loss_fn(model(inputs.to(device)), labels.to(device))
                    loss.backward()
                    optimizer.step()
                    total += float(loss.detach())
                    batches += 1
                    advance()
                record = {"epoch": epoch + 1, "loss": total / max(batches, 1), "seconds": time.perf_counter() - started}
                if val_loader is not None:
                    record["val_accuracy"] = evaluate(model, val_loader, device)
                history.append(record)
    finally:
        handle.remove()
    controller.history = history
    return controller


def pqat(
    model: nn.Module,
    train_loader: Iterable,
    *,
    epochs: int,
    masks: Any = "zeros",
    **options: Any,
) -> QuantizationAwareTraining:
    """Sparsity-preserving QAT: :func:`qat` with the pruning masks enforced (default: the model's exact zeros).

    A model without masks (no zero weights, or a pruner that pruned nothing) is an error:
    prune first, or use :func:`qat`.

    Example::

        pruner = Pruner(model, NM(2, 4), pattern=NM(2, 4)); pruner.prune()
        controller = pqat(model, loader, epochs=2, masks=pruner)
        controller.export_onnx(x[:64], "model.int8.onnx").zeros   # exactly the 2:4 zeros
    """
    found = _masks_from(masks, model)
    if not found or all(bool(m.all()) for m in found.values()):
        raise ConfigError(f"PQAT found no pruning masks in {type(model).__name__} (no pruned weights); prune first, or use qat")
    return qat(model, train_loader, epochs=epochs, masks=found, **options)
