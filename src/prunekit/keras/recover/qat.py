"""Quantization-aware training (QAT) and sparsity-preserving QAT (PQAT) for Keras 3, exported to int8 TFLite.

TF MOT's ``quantize_model`` does not run on Keras 3, so this module fake-quantizes the three
layer types that carry most of a CNN's weights, ``Dense``, ``Conv1D/2D/3D`` and
``DepthwiseConv2D``, by cloning the model with a fake-quant subclass of each (same names, same
config, same weights):

* kernels: int8 symmetric per output channel (``scale = max|w| / 127``, codes in [-127, 127]),
  the layout TFLite's converter uses, with a straight-through gradient;
* the layer's input and output: 8-bit per-tensor with ranges observed as a moving average of the
  batch min/max in training (``keras.quantizers.fake_quant_with_min_max_vars``);
* a ``BatchNormalization`` (and a ReLU) right after a quantized layer is folded into it first
  (:mod:`prunekit.keras.recover.fold`), so the output is fake-quantized after BN and ReLU, where
  the TFLite int8 model quantizes it.

:func:`strip_qat` clones back to the plain layers with the fake-quantized kernels as weights,
so the TFLite converter (:func:`export_tflite`, full int8 with a representative dataset) finds
weights already on the int8 grid and stores exactly those codes.

PQAT (:func:`pqat`) keeps the zeros of a pruned model (or the masks of a model still carrying
prunekit pruning state): pruned weights are multiplied out in every forward pass and a kept
weight never rounds to 0, so the int8 TFLite file has exactly the mask's zeros (checked).

Modules: :mod:`.quant_layers` holds the fake-quant layers (serialisable: ``model.save`` then
``keras.models.load_model`` resumes QAT), :mod:`.qat_export` strips them and writes the TFLite file,
:mod:`.fold` folds BatchNormalization; this module clones a model and trains it. Their public names
stay importable from here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from prunekit.core.records import epoch_records
from prunekit.errors import ConfigError
from prunekit.keras.recover.fold import FoldedAway, FoldedChain, fold_plan
from prunekit.keras.recover.qat_export import export_tflite as export_tflite
from prunekit.keras.recover.qat_export import strip_qat as strip_qat
from prunekit.keras.recover.quant_layers import WEIGHT_QMAX as WEIGHT_QMAX
from prunekit.keras.recover.quant_layers import QuantConv1D as QuantConv1D
from prunekit.keras.recover.quant_layers import QuantConv2D as QuantConv2D
from prunekit.keras.recover.quant_layers import QuantConv3D as QuantConv3D
from prunekit.keras.recover.quant_layers import QuantDense as QuantDense
from prunekit.keras.recover.quant_layers import QuantDepthwiseConv2D as QuantDepthwiseConv2D
from prunekit.keras.recover.quant_layers import _check_model, _quant_class
from prunekit.keras.recover.quant_layers import kernel_codes as kernel_codes

FREEZE_BN_AFTER = 0
"""Default ``freeze_bn_after``: a folded BatchNormalization keeps its moving statistics from the start (``gamma``
and ``beta`` still train), so training computes the int8 model's arithmetic; chosen on the digits validation
split by ``scripts/keras_pqat_search.py`` (docs/recovery.md, "Keras PQAT vs PTQ")."""


@dataclass
class KerasQat:
    """A fake-quant clone of a Keras model: ``model`` (train it with ``fit``), the quantized layer names,
    the layers left in float (name -> reason), the masked layers' zero counts (PQAT), and the
    BatchNormalization chains folded into their Dense/Conv before fake quantization.

    Example::

        run = quantize_model(model)
        run.model.compile(...); run.model.fit(x, y, epochs=2)
    """

    model: Any
    quantized: tuple[str, ...]
    float_layers: dict[str, str]
    mask_zeros: dict[str, int]
    history: list[dict[str, float]] = field(default_factory=list)
    folded: tuple[FoldedChain, ...] = ()


def quantize_model(
    model: Any,
    *,
    masks: Any = None,
    exclude: Sequence[str] = (),
    fold_batchnorm: bool = True,
    freeze_ranges_after: int | None = None,
    freeze_bn_after: int | None = FREEZE_BN_AFTER,
) -> KerasQat:
    """Clone ``model`` with fake-quantized Dense/Conv/DepthwiseConv2D layers (weights copied).

    ``masks``: ``None`` (QAT), ``"zeros"`` (keep the exact zeros of the kernels: PQAT) or a dict
    ``{layer name: boolean mask of its kernel}``. Layers with weights of other types stay float
    and are listed in ``float_layers``; ``exclude`` names layers to leave in float. With
    ``fold_batchnorm`` (default), each ``Dense/Conv -> BatchNormalization [-> ReLU]`` chain is
    folded into its first layer as the TFLite converter folds it (see :mod:`.fold`), so the
    fake quantization sits where the int8 file quantizes; ``folded`` lists the chains.
    ``freeze_ranges_after``: training batches after which each layer's activation ranges stop
    moving (the observers are frozen, as PyTorch's QAT recipe does after the first epochs); ``None``
    keeps them moving. ``freeze_bn_after``: training batches after which a folded BatchNormalization
    stops using batch statistics and updating its moving ones (default ``0``: frozen from the start;
    ``None``: never, as in a float fine-tune); its ``gamma``/``beta`` train either way.

    Example::

        qat_model = quantize_model(pruned, masks="zeros").model
    """
    _check_model(model)
    _check_freeze("freeze_ranges_after", freeze_ranges_after, 1)
    _check_freeze("freeze_bn_after", freeze_bn_after, 0)
    from prunekit.keras.unstructured.state import prunings

    if prunings(model):
        raise ConfigError(
            "this model still carries pruning state; pass strip_pruning(model) (its zeros are kept with masks='zeros')"
        )
    names = {layer.name for layer in model.layers}
    unknown = sorted(set(exclude) - names)
    if unknown:
        raise ConfigError(f"exclude names layer(s) {unknown} not in {model.name!r}")
    layer_masks: dict[str, np.ndarray] = {}
    if isinstance(masks, str):
        if masks != "zeros":
            raise ConfigError(f"masks should be None, 'zeros' or a dict of kernel masks by layer name, got {masks!r}")
        for layer in model.layers:
            if _quant_class(layer) is not None and layer.name not in exclude:
                kernel = np.asarray(layer.kernel)
                if (kernel == 0).any():
                    layer_masks[layer.name] = kernel != 0
    elif isinstance(masks, dict):
        for name, mask in masks.items():
            if name not in names:
                raise ConfigError(f"mask for layer {name!r}, which {model.name!r} does not have")
            layer = model.get_layer(name)
            if _quant_class(layer) is None:
                raise ConfigError(f"mask for layer {name!r} ({type(layer).__name__}), which QAT does not quantize")
            if tuple(np.shape(mask)) != tuple(layer.kernel.shape):
                raise ConfigError(f"mask for {name!r} has shape {np.shape(mask)}, its kernel {tuple(layer.kernel.shape)}")
            layer_masks[name] = np.asarray(mask, bool)
    elif masks is not None:
        raise ConfigError(f"masks should be None, 'zeros' or a dict of kernel masks by layer name, got {type(masks).__name__}")
    float_layers = {
        layer.name: f"{type(layer).__name__} cannot be fake-quantized; left in float"
        for layer in model.layers
        if _quant_class(layer) is None
        and layer.weights
        and not isinstance(layer, keras.Model)
        and not isinstance(layer, (keras.layers.BatchNormalization, keras.layers.LayerNormalization))
    }
    sources: dict[str, Any] = {}
    plan = fold_plan(model, lambda layer: _quant_class(layer) is not None and layer.name not in exclude) if fold_batchnorm else {}
    absorbed = {name for chain in plan.values() for name in (chain.norm, chain.activation) if name}

    def clone(layer: Any) -> Any:
        if layer.name in absorbed:
            return FoldedAway(name=layer.name)
        quant = _quant_class(layer)
        if quant is None or layer.name in exclude:
            return layer.__class__.from_config(layer.get_config())
        sources[layer.name] = layer
        config = {**layer.get_config(), "masked": layer.name in layer_masks, "freeze_ranges_after": freeze_ranges_after}
        if layer.name in plan:
            norm = model.get_layer(plan[layer.name].norm)
            batchnorm = {"epsilon": float(norm.epsilon), "momentum": float(norm.momentum)}
            batchnorm.update(center=bool(norm.center), scale=bool(norm.scale))
            config.update(batchnorm=batchnorm, freeze_bn_after=freeze_bn_after, use_bias=True)
            config.update(activation="relu" if plan[layer.name].activation else config["activation"])
        return quant.from_config(config)

    clone_model = keras.models.clone_model(model, clone_function=clone)
    for layer, original in zip(clone_model.layers, model.layers):
        if layer.name in plan:
            layer.kernel.assign(original.kernel)
            layer.bias.assign(original.bias if original.use_bias else np.zeros(layer.bias.shape, np.float32))
            layer.set_norm(model.get_layer(plan[layer.name].norm))
        elif layer.name not in absorbed:
            for target, value in zip(layer.weights, original.weights):
                target.assign(value)
        if layer.name in layer_masks:
            layer.pqat_mask.assign(layer_masks[layer.name].astype(np.float32))
            layer.kernel.assign(np.asarray(layer.kernel) * layer_masks[layer.name])
    zeros = {name: int((~mask).sum()) for name, mask in layer_masks.items()}
    return KerasQat(clone_model, tuple(sources), float_layers, zeros, folded=tuple(plan.values()))


def _check_freeze(name: str, value: Any, least: int) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
        raise ConfigError(f"{name} should be None or an integer >= {least} (training batches), got {value!r}")


def _train(
    model: Any, x: Any, y: Any, epochs: int, lr: float, batch_size: int, validation_data: Any, callbacks: Any
) -> list[dict[str, float]]:
    if not isinstance(epochs, int) or epochs < 0:
        raise ConfigError(f"epochs should be an integer >= 0, got {epochs!r}")
    model.compile(
        optimizer=keras.optimizers.Adam(lr),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    history = model.fit(
        x, y, epochs=epochs, batch_size=batch_size, validation_data=validation_data, callbacks=list(callbacks), verbose=0
    ).history
    return epoch_records(history)


def qat(
    model: Any,
    x: Any,
    y: Any,
    *,
    epochs: int,
    lr: float = 1e-4,
    batch_size: int = 64,
    masks: Any = None,
    exclude: Sequence[str] = (),
    fold_batchnorm: bool = True,
    freeze_ranges_after: int | None = None,
    freeze_bn_after: int | None = FREEZE_BN_AFTER,
    validation_data: Any = None,
    callbacks: Sequence[Any] = (),
) -> KerasQat:
    """Clone ``model`` with fake quantization and fine-tune it on ``(x, y)`` (a classifier with logits).

    Returns the :class:`KerasQat` run; export with :func:`export_tflite`, or :func:`strip_qat` for
    the plain model. ``masks`` as in :func:`quantize_model` (PQAT: see :func:`pqat`).

    Example::

        run = qat(model, split.x_train, split.y_train, epochs=2)
        flatbuffer, _ = export_tflite(run.model, split.x_val, "model.int8.tflite")
    """
    run = quantize_model(
        model,
        masks=masks,
        exclude=exclude,
        fold_batchnorm=fold_batchnorm,
        freeze_ranges_after=freeze_ranges_after,
        freeze_bn_after=freeze_bn_after,
    )
    run.history = _train(run.model, x, y, epochs, lr, batch_size, validation_data, callbacks)
    return run


def pqat(model: Any, x: Any, y: Any, *, epochs: int, masks: Any = "zeros", **options: Any) -> KerasQat:
    """Sparsity-preserving QAT: :func:`qat` keeping the model's pruned zeros (a model with pruning state is stripped first).

    A model without zeros in any quantized kernel is an error: prune first, or use :func:`qat`.

    Example::

        run = pqat(strip_pruning(pruned), split.x_train, split.y_train, epochs=2)
    """
    from prunekit.keras.unstructured.pruning import strip_pruning
    from prunekit.keras.unstructured.state import prunings

    known = {"lr", "batch_size", "validation_data", "callbacks", "exclude", "fold_batchnorm"}
    known |= {"freeze_ranges_after", "freeze_bn_after"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"pqat got unknown option(s) {unknown}")
    if prunings(model):
        model = strip_pruning(model)
    run = quantize_model(
        model,
        masks=masks,
        exclude=options.get("exclude", ()),
        fold_batchnorm=options.get("fold_batchnorm", True),
        freeze_ranges_after=options.get("freeze_ranges_after"),
        freeze_bn_after=options.get("freeze_bn_after", FREEZE_BN_AFTER),
    )
    if not any(run.mask_zeros.values()):
        raise ConfigError(f"PQAT found no pruning masks in {model.name!r} (no zero weights); prune first, or use qat")
    run.history = _train(
        run.model,
        x,
        y,
        epochs,
        options.get("lr", 1e-4),
        options.get("batch_size", 64),
        options.get("validation_data"),
        options.get("callbacks", ()),
    )
    return run
