"""Which weights of which Keras 3 layers are pruned (TF MOT's registry), and how a layer opts in.

Built-in layers prune their kernels; normalisation and depthwise layers are known and left
dense; layers without weights need nothing. Any other layer with weights, a subclass of a
built-in one included (as in TF MOT), must either be excluded or say what to prune through
TF MOT's protocol, a ``get_prunable_weights()`` method.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import keras

from prunekit.errors import ConfigError, LayerNotFoundError

_layers = keras.layers

#: Layer class -> names of the weight attributes pruned by default (TF MOT's choices).
PRUNABLE_WEIGHTS: dict[type, tuple[str, ...]] = {
    _layers.Dense: ("kernel",),
    _layers.EinsumDense: ("kernel",),
    _layers.Conv1D: ("kernel",),
    _layers.Conv2D: ("kernel",),
    _layers.Conv3D: ("kernel",),
    _layers.Conv1DTranspose: ("kernel",),
    _layers.Conv2DTranspose: ("kernel",),
    _layers.Conv3DTranspose: ("kernel",),
    _layers.SeparableConv1D: ("pointwise_kernel",),
    _layers.SeparableConv2D: ("pointwise_kernel",),
    _layers.Embedding: ("embeddings",),
    _layers.SimpleRNNCell: ("kernel", "recurrent_kernel"),
    _layers.GRUCell: ("kernel", "recurrent_kernel"),
    _layers.LSTMCell: ("kernel", "recurrent_kernel"),
}

#: Layers with weights that are known and stay dense (as in TF MOT).
DENSE_ONLY: tuple[type, ...] = (
    _layers.BatchNormalization,
    _layers.LayerNormalization,
    _layers.GroupNormalization,
    _layers.DepthwiseConv1D,
    _layers.DepthwiseConv2D,
    _layers.PReLU,
    _layers.Normalization,
)


#: Built-in layers whose prunable sublayers only exist once built (TF MOT prunes their projections' kernels):
#: an unbuilt one is accepted, its weights are found when it is built.
BUILT_FROM_SUBLAYERS: tuple[type, ...] = (_layers.MultiHeadAttention,)


#: Built-in layers without weights: TF MOT wraps them as no-ops, so prunekit marks them, built or not.
WEIGHTLESS: tuple[type, ...] = tuple(
    getattr(_layers, name)
    for name in (
        "Dropout SpatialDropout1D SpatialDropout2D SpatialDropout3D GaussianNoise GaussianDropout AlphaDropout "
        "ActivityRegularization Flatten Reshape Permute RepeatVector Activation ReLU LeakyReLU ELU Softmax Masking "
        "ZeroPadding1D ZeroPadding2D ZeroPadding3D Cropping1D Cropping2D Cropping3D UpSampling1D UpSampling2D "
        "UpSampling3D MaxPooling1D MaxPooling2D MaxPooling3D AveragePooling1D AveragePooling2D AveragePooling3D "
        "GlobalMaxPooling1D GlobalMaxPooling2D GlobalMaxPooling3D GlobalAveragePooling1D GlobalAveragePooling2D "
        "GlobalAveragePooling3D Add Subtract Multiply Average Maximum Minimum Concatenate Dot Identity"
    ).split()
    if hasattr(_layers, name)
)


class PrunableLayer:
    """TF MOT's protocol for custom layers: return the weights (variables) prunekit should prune.

    A layer does not have to inherit from this class; a ``get_prunable_weights`` method is enough.

    Example::

        class Scale(keras.layers.Layer, PrunableLayer):
            def build(self, shape):
                self.w = self.add_weight(shape=shape[-1:])
            def call(self, x):
                return x * self.w
            def get_prunable_weights(self):
                return [self.w]
    """

    def get_prunable_weights(self) -> list[Any]:
        """The variables to prune (a subset of the layer's own weights)."""
        raise NotImplementedError(f"{type(self).__name__} should implement get_prunable_weights()")


def iter_layers(model_or_layer: Any) -> Iterator[Any]:
    """Every layer inside ``model_or_layer`` (recursively, nested models and cells included), itself excluded."""
    yield from model_or_layer._flatten_layers(include_self=False, recursive=True)


def is_weightless(layer: Any) -> bool:
    """A built layer with nothing to prune: no weights of its own (Dropout, Flatten, pooling) nor prunable
    sublayers, or a known dense-only layer, and no ``get_prunable_weights``. TF MOT wraps these as no-ops."""
    if hasattr(layer, "get_prunable_weights"):
        return False
    if prunable_weight_names(layer) == ():
        return True
    return not _own_weights(layer) and not _sublayer_weights(layer)


def _sublayer_weights(layer: Any) -> list[Any]:
    """The prunable weights of a layer made of sublayers (an RNN's cell, Bidirectional's two RNNs,
    MultiHeadAttention's projections): TF MOT prunes an RNN by its cell's kernels."""
    if isinstance(layer, keras.Model):
        return []
    weights: list[Any] = []
    for child in layer._flatten_layers(include_self=False, recursive=False):
        if child.built and not is_weightless(child):
            weights.extend(prunable_weights(child))
    return weights


def _is_container(layer: Any) -> bool:
    """A nested model, an input layer or a layer made of sublayers (RNN, Bidirectional): never marked itself."""
    if isinstance(layer, (keras.Model, keras.layers.InputLayer)):
        return True
    return bool(list(layer._flatten_layers(include_self=False, recursive=False)))


def _own_weights(layer: Any) -> list[Any]:
    children = layer._flatten_layers(include_self=False, recursive=False)
    inherited = {id(weight) for child in children for weight in child.weights}
    return [weight for weight in layer.weights if id(weight) not in inherited]


def prunable_weight_names(layer: Any) -> tuple[str, ...] | None:
    """Attribute names of the weights pruned by default, ``()`` for known dense-only layers, or
    ``None`` when the layer type is unknown (and has no ``get_prunable_weights``).

    Only the built-in classes themselves are known, as in TF MOT: a subclass (of ``Dense``, say)
    may use its weights differently, so it says what to prune through ``get_prunable_weights``.
    """
    names = PRUNABLE_WEIGHTS.get(type(layer))
    if names is not None:
        return names
    if isinstance(layer, DENSE_ONLY):
        return ()
    return None


def prunable_weights(layer: Any) -> list[Any]:
    """The variables of ``layer`` that are pruned; raises for a layer prunekit does not know.

    Example::

        prunable_weights(keras.layers.Dense(4))  # after build: [layer.kernel]
    """
    if hasattr(layer, "get_prunable_weights"):
        weights = list(layer.get_prunable_weights())
        own = {id(w) for w in layer.weights}
        for weight in weights:
            if id(weight) not in own:
                raise ConfigError(
                    f"{type(layer).__name__}.get_prunable_weights() of layer {layer.name!r} returned "
                    f"{getattr(weight, 'path', weight)!r}, which is not one of the layer's weights"
                )
        return weights
    names = prunable_weight_names(layer)
    if names is None and layer.built and not _own_weights(layer):
        return _sublayer_weights(layer)  # [] for a weightless layer (Dropout, Flatten, Add)
    if names is None:
        raise unsupported_layer_error(layer)
    if getattr(layer, "lora_enabled", False) or getattr(layer, "quantization_mode", None):
        raise ConfigError(
            f"layer {layer.name!r} ({type(layer).__name__}) uses LoRA or quantized weights; prune it before "
            "enabling LoRA/quantization, or exclude it"
        )
    return [getattr(layer, name) for name in names]


def check_unbuilt_layer(layer: Any) -> None:
    """Raise now for an unbuilt layer prunekit will not know how to prune once built (TF MOT raises at wrap time)."""
    if hasattr(layer, "get_prunable_weights") or prunable_weight_names(layer) is not None or isinstance(layer, WEIGHTLESS):
        return
    if type(layer) in BUILT_FROM_SUBLAYERS:
        return
    if _is_container(layer):
        for child in layer._flatten_layers(include_self=False, recursive=False):
            check_unbuilt_layer(child)
        return
    raise unsupported_layer_error(layer)


def unsupported_layer_error(layer: Any) -> ConfigError:
    """The error for a layer with weights prunekit does not know how to prune."""
    cls = type(layer).__name__
    base = next((known for known in PRUNABLE_WEIGHTS if isinstance(layer, known)), None)
    why = (
        f"a subclass of {base.__name__}, which may use its weights differently, so prunekit (like TF MOT) does not "
        f"guess which to prune"
        if base is not None
        else "which has weights prunekit does not know how to prune"
    )
    return ConfigError(
        f"layer {layer.name!r} is a {cls}, {why}; "
        f"pass exclude=[{layer.name!r}] to leave it dense, or give {cls} a get_prunable_weights() method "
        "returning the variables to prune (TF MOT's PrunableLayer protocol, prunekit.keras.PrunableLayer)"
    )


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def select_layers(model: Any, exclude: Sequence[str] = (), allow: Callable[[Any], bool] | None = None) -> dict[Any, list[Any]]:
    """Layers to prune in ``model`` -> their prunable weights, skipping names matching ``exclude`` globs
    and layers ``allow(layer)`` refuses (a pruning policy). An unbuilt layer maps to ``[]``: its
    weights are found when it is built (a weightless one then stays a no-op, as in TF MOT).

    Raises for an unsupported layer with weights, an ``exclude`` pattern matching nothing, and a
    built model with nothing to prune.
    """
    if isinstance(exclude, str):
        exclude = [exclude]
    layers = list(iter_layers(model))
    names = [layer.name for layer in layers]
    for pattern in exclude:
        if not any(fnmatch.fnmatchcase(name, pattern) for name in names):
            raise LayerNotFoundError(f"exclude pattern {pattern!r} matches no layer of model {model.name!r}; layers are {names}")
    selected: dict[Any, list[Any]] = {}
    for layer in layers:
        if _matches(layer.name, exclude):
            continue
        if allow is not None and not allow(layer):
            continue
        if not layer.built:
            check_unbuilt_layer(layer)
            if hasattr(layer, "get_prunable_weights") or prunable_weight_names(layer) != ():
                selected[layer] = []
            continue
        if _is_container(layer):
            continue  # its sublayers are selected themselves
        if is_weightless(layer):
            if not _is_container(layer):
                selected[layer] = []  # TF MOT wraps it too, as a no-op: it keeps the model's settings
            continue
        weights = prunable_weights(layer)
        if weights:
            selected[layer] = weights
    nothing = not any(selected.values()) and all(layer.built for layer in layers)
    if nothing and allow is None:  # a policy may choose none
        raise ConfigError(
            f"model {model.name!r} has no prunable layers (Dense, Conv*, SeparableConv*, Embedding, RNN cells, "
            "or layers with get_prunable_weights()); nothing to prune"
        )
    return selected
