"""TF MOT's pruning policies: which layers ``prune_low_magnitude`` prunes, checked against the model first.

:class:`PruneForLatencyOnXNNPack` ports TF MOT's check of what XNNPACK's sparse inference path
runs (the subgraph from a stride-2 3x3 ``Conv2D`` on 3 input channels after a 1-pixel
``ZeroPadding2D`` to a ``GlobalAveragePooling2D``, made of 1x1 convolutions, 3x3/5x5 depthwise
convolutions, BatchNorm, element-wise activations and adds/multiplies; see XNNPACK's
``subgraph.c``), on the Keras 3 functional graph, and prunes only the 1x1 ``Conv2D`` layers, the
ones XNNPACK runs sparse.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from typing import Any

import keras
from keras.src.ops import numpy as knp

from prunekit.errors import ConfigError

_layers = keras.layers
_ACTIVATIONS = ("relu", "relu6", "leaky_relu", "elu", "sigmoid")
_ELEMENTWISE_OPS: tuple[type, ...] = (knp.Add, knp.Subtract, knp.Multiply)


class PruningPolicy(ABC):
    """Which layers to prune, and a check that the model suits the policy (TF MOT's ``PruningPolicy``).

    Example::

        class DenseOnly(PruningPolicy):
            def allow_pruning(self, layer):
                return isinstance(layer, keras.layers.Dense)
            def ensure_model_supports_pruning(self, model):
                pass

        prune_low_magnitude(model, pruning_policy=DenseOnly())
    """

    @abstractmethod
    def allow_pruning(self, layer: Any) -> bool:
        """Whether ``layer`` is pruned."""

    @abstractmethod
    def ensure_model_supports_pruning(self, model: Any) -> None:
        """Raise :class:`~prunekit.errors.ConfigError` (a ``ValueError``) when ``model`` does not suit the policy."""


def _producers(layer: Any) -> set[Any]:
    found = set()
    for node in getattr(layer, "_inbound_nodes", []):
        for tensor in node.input_tensors:
            history = getattr(tensor, "_keras_history", None)
            if history is not None:
                found.add(history.operation)
    return found


def _consumers(layer: Any) -> list[Any]:
    def unpack(operation: Any) -> Any:
        return unpack(operation.layers[0]) if isinstance(operation, keras.Sequential) else operation

    return [unpack(node.operation) for node in getattr(layer, "_outbound_nodes", [])]


def _lookup(sources: Iterable[Any], stop: Callable[[Any], bool], step: Callable[[Any], Iterable[Any]]) -> set[Any]:
    """Walk from ``sources`` along ``step``; the layers where ``stop`` holds, or ``set()`` when a path
    ends without reaching one (TF MOT's ``_lookup_layers``)."""
    to_visit, seen, found = set(sources), set(sources), set()
    while to_visit:
        layer = to_visit.pop()
        if stop(layer):
            found.add(layer)
            continue
        following = list(step(layer))
        if not following:
            return set()
        for item in following:
            if item not in seen:
                seen.add(item)
                to_visit.add(item)
    return found


class PruneForLatencyOnXNNPack(PruningPolicy):
    """Prune only the 1x1 ``Conv2D`` layers, in a model XNNPACK's sparse inference can run (TF MOT's policy).

    ``prune_low_magnitude(model, pruning_policy=PruneForLatencyOnXNNPack())`` first checks the
    model: every input branch must start with ``ZeroPadding2D(1)`` then a 3x3, stride-2, ``valid``
    ``Conv2D`` on 3 channels; every output branch must end at a ``GlobalAveragePooling2D``; every
    layer between must be one XNNPACK's sparse path accepts. Otherwise it raises with TF MOT's message,
    naming the layer class.

    Example::

        pruned = prune_low_magnitude(mobilenet_like, pruning_schedule=ConstantSparsity(0.75, 1),
                                     pruning_policy=PruneForLatencyOnXNNPack())
    """

    def allow_pruning(self, layer: Any) -> bool:
        return isinstance(layer, _layers.Conv2D) and tuple(layer.kernel_size) == (1, 1)

    def _is_start(self, layer: Any) -> bool:
        if not isinstance(layer, _layers.Conv2D) or isinstance(layer, _layers.DepthwiseConv2D):
            return False
        producers = list(_producers(layer))
        return (
            hasattr(layer, "kernel")
            and tuple(layer.kernel.shape[:3]) == (3, 3, 3)
            and tuple(layer.strides) == (2, 2)
            and layer.padding.lower() == "valid"
            and len(producers) == 1
            and isinstance(producers[0], _layers.ZeroPadding2D)
            and tuple(map(tuple, producers[0].padding)) == ((1, 1), (1, 1))
        )

    def _is_end(self, layer: Any) -> bool:
        return isinstance(layer, _layers.GlobalAveragePooling2D)

    def _supported(self, layer: Any) -> bool:
        """Whether XNNPACK's sparse subgraph accepts ``layer`` (TF MOT's ``_check_layer_support``)."""
        if isinstance(
            layer,
            (_layers.Add, _layers.Multiply, _layers.ZeroPadding2D, _layers.ReLU, _layers.LeakyReLU, _layers.ELU, _layers.Dropout),
        ):
            return True
        if isinstance(layer, _layers.DepthwiseConv2D):
            return self._depthwise_supported(layer)
        if isinstance(layer, _layers.Conv2D):
            return (
                layer.groups == 1
                and tuple(layer.dilation_rate) == (1, 1)
                and tuple(layer.kernel_size) == (1, 1)
                and tuple(layer.strides) == (1, 1)
            )
        if isinstance(layer, _layers.GlobalAveragePooling2D):
            return bool(layer.keepdims)
        if isinstance(layer, _layers.BatchNormalization):
            return layer.axis in (3, -1)
        if isinstance(layer, _layers.UpSampling2D):
            return layer.interpolation == "bilinear"
        if isinstance(layer, _layers.Activation):
            return getattr(layer.activation, "__name__", None) in _ACTIVATIONS
        return isinstance(layer, _ELEMENTWISE_OPS)  # keras.ops.add/subtract/multiply in a functional graph

    def _depthwise_supported(self, layer: Any) -> bool:
        padding = layer.padding.lower()
        producers = list(_producers(layer))
        zero_padding = producers[0] if len(producers) == 1 and isinstance(producers[0], _layers.ZeroPadding2D) else None
        pads = None if zero_padding is None else tuple(map(tuple, zero_padding.padding))
        kernel, strides = tuple(layer.kernel_size), tuple(layer.strides)
        cases = (
            kernel == (3, 3) and strides == (1, 1) and padding == "same",
            kernel == (3, 3) and strides in ((1, 1), (2, 2)) and padding == "valid" and pads == ((1, 1), (1, 1)),
            kernel == (5, 5) and strides == (1, 1) and padding == "same",
            kernel == (5, 5) and strides in ((1, 1), (2, 2)) and padding == "valid" and pads == ((2, 2), (2, 2)),
        )
        return layer.depth_multiplier == 1 and tuple(layer.dilation_rate) == (1, 1) and any(cases)

    def ensure_model_supports_pruning(self, model: Any) -> None:
        if not isinstance(model, keras.Model):
            raise ConfigError(f"{type(self).__name__} checks a Keras model, got {type(model).__name__}")
        from keras.src.models.functional import Functional

        if not isinstance(model, (keras.Sequential, Functional)):
            raise ConfigError("Subclassed models are not supported currently.")
        if not model.built:
            raise ConfigError("Unbuilt models are not supported currently.")
        inputs = {tensor._keras_history.operation for tensor in model.inputs}
        starts = _lookup(inputs, self._is_start, _consumers)
        if not starts:
            raise ConfigError(
                "Could not find `Conv2D 3x3` layer with stride 2x2, `input filters == 3` and `VALID` padding and "
                "preceding `ZeroPadding2D` with `padding == 1` in all input branches of the model"
            )
        outputs = {tensor._keras_history.operation for tensor in model.outputs}
        ends = _lookup(outputs, self._is_end, _producers)
        if not ends:
            raise ConfigError("Could not find a `GlobalAveragePooling2D` layer in all output branches")

        def visit(layer: Any) -> bool:
            if layer not in ends and not self._supported(layer):
                raise ConfigError(f"Layer {type(layer).__name__} is not supported for the {type(self).__name__} pruning policy")
            return layer in ends

        _lookup([c for layer in starts for c in _consumers(layer)], visit, _consumers)
