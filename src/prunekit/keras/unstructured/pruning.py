"""``prune_low_magnitude`` and ``strip_pruning`` for Keras 3, with TF MOT's names and no wrapper layers.

The pruned model has the same layers, names and weights as the original: the masks and the
pruning step live in a small state object on each pruned layer (see :mod:`prunekit.keras.unstructured.state`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np

from prunekit.errors import ConfigError
from prunekit.keras.unstructured.layers import check_unbuilt_layer, is_weightless, iter_layers, prunable_weights, select_layers
from prunekit.keras.unstructured.policy import PruningPolicy
from prunekit.keras.unstructured.state import (
    LayerPruning,
    PruningSpec,
    distribution_scope,
    get_pruning,
    new_step_variable,
    prunings,
    set_pruning,
)
from prunekit.keras.unstructured.target import check_targets
from prunekit.schedules import ConstantSparsity, PruningSchedule


def _is_functional(model: Any) -> bool:
    from keras.src.models.functional import Functional

    return isinstance(model, Functional) and type(model).__init__ is Functional.__init__


def _check_keras3(obj: Any, what: str) -> None:
    if not isinstance(obj, keras.layers.Layer):
        hint = ""
        if type(obj).__module__.startswith(("tf_keras", "tensorflow.python.keras", "keras.engine")):
            hint = " It looks like a legacy tf-keras (Keras 2) object; rebuild it with Keras 3 (`import keras`)."
        if what == "prune_low_magnitude's first argument":  # TF MOT's message, word for word
            raise ConfigError(
                "`prune_low_magnitude` can only prune an object of the following types: keras.models.Sequential, "
                "keras functional model, keras.layers.Layer, list of keras.layers.Layer. You passed an object of "
                f"type: {type(obj).__name__}.{hint}"
            )
        raise ConfigError(f"{what} should be a Keras 3 model or layer, got {type(obj).__name__}.{hint}")


def prune_low_magnitude(
    to_prune: Any,
    pruning_schedule: PruningSchedule | None = None,
    block_size: tuple[int, int] = (1, 1),
    block_pooling_type: str = "AVG",
    pruning_policy: Any = None,
    sparsity_m_by_n: tuple[int, int] | None = None,
    *,
    exclude: Sequence[str] = (),
    inplace: bool = False,
    **kwargs: Any,
) -> Any:
    """Mark a model's (or layers') weights for magnitude pruning on ``pruning_schedule``, as TF MOT does.

    ``to_prune`` is a Sequential or Functional model, a layer, or a list of layers (the
    layer-wise form, also for the layers of subclassed models). A model is cloned (same layer
    names and weights) unless ``inplace=True``; layers are marked in place and returned. Then
    compile and fit with ``callbacks=[UpdatePruningStep()]``; :func:`strip_pruning` gives the
    plain model back.

    Args:
        pruning_schedule: when and how much to prune; default ``ConstantSparsity(0.5, 0)``.
        block_size: prune whole blocks of 2-D (Dense) kernels, ranked by ``block_pooling_type``
            (``"AVG"`` or ``"MAX"`` of ``|w|``).
        pruning_policy: a :class:`~prunekit.keras.PruningPolicy` (e.g. ``PruneForLatencyOnXNNPack()``):
            it checks the model first and chooses the layers to prune (models only, as in TF MOT).
        sparsity_m_by_n: ``(m, n)``: ``m`` zeros in every ``n`` consecutive weights along the input
            channels (``(2, 4)`` for sparse tensor cores); the schedule then only times the pruning.
        exclude: layer-name globs to leave dense (e.g. ``["conv1", "head_*"]``).
        inplace: prune the given model object instead of a clone.
        **kwargs: TF MOT's extra layer arguments, for a single layer: ``input_shape`` (or
            ``input_dim``) makes it the first layer of a Sequential. Ignored for models, as in TF MOT.

    Example::

        pruned = prune_low_magnitude(model, pruning_schedule=PolynomialDecay(0.0, 0.9, 0, 1000))
        pruned.compile("adam", "sparse_categorical_crossentropy")
        pruned.fit(x, y, epochs=5, callbacks=[UpdatePruningStep()])
    """
    if pruning_policy is not None and not isinstance(pruning_policy, PruningPolicy):
        raise ConfigError(
            f"pruning_policy should be a prunekit.keras.PruningPolicy (e.g. PruneForLatencyOnXNNPack()), got {pruning_policy!r}"
        )
    spec = PruningSpec(
        schedule=pruning_schedule if pruning_schedule is not None else ConstantSparsity(0.5, begin_step=0),
        block_size=block_size,
        block_pooling_type=block_pooling_type,
        sparsity_m_by_n=sparsity_m_by_n,
    )
    if isinstance(to_prune, (list, tuple)):
        if not to_prune:
            raise ConfigError("prune_low_magnitude got an empty list of layers")
        return [_prune_layer(layer, spec) for layer in to_prune]
    _check_keras3(to_prune, "prune_low_magnitude's first argument")
    if not isinstance(to_prune, keras.Model):
        _apply_layer_kwargs(to_prune, kwargs)
        return _prune_layer(to_prune, spec)
    if not (isinstance(to_prune, keras.Sequential) or _is_functional(to_prune)):
        raise ConfigError(
            f"model {to_prune.name!r} is a subclassed {type(to_prune).__name__}; prune its layers instead, "
            "e.g. in __init__: self.fc = prune_low_magnitude(keras.layers.Dense(64), pruning_schedule=...)"
        )
    if pruning_policy is not None:
        pruning_policy.ensure_model_supports_pruning(to_prune)
    with distribution_scope(to_prune.weights, f"model {to_prune.name!r}"):  # the clone trains where the model did
        return _prune_model(to_prune, spec, exclude, inplace, pruning_policy)


def _apply_layer_kwargs(layer: Any, kwargs: dict[str, Any]) -> None:
    """TF MOT passes ``**kwargs`` to its wrapper layer; the one that matters, ``input_shape``, is Keras's
    own legacy argument: Sequential makes an ``Input`` of it when the layer comes first."""
    kwargs = dict(kwargs)
    shape = kwargs.pop("input_shape", None)
    dim = kwargs.pop("input_dim", None)
    if kwargs:
        raise ConfigError(
            f"prune_low_magnitude got unexpected keyword arguments {sorted(kwargs)} for layer {layer.name!r}; "
            "for a layer it accepts input_shape= (or input_dim=), as TF MOT does"
        )
    if dim is not None:
        shape = (dim,)
    if shape is not None:
        if not isinstance(shape, (tuple, list)) or not all(d is None or isinstance(d, int) for d in shape):
            raise ConfigError(f"input_shape should be a tuple of ints (without the batch size), got {shape!r}")
        layer._input_shape_arg = tuple(shape)  # what keras.layers.Dense(..., input_shape=...) sets


def _prune_model(
    to_prune: keras.Model, spec: PruningSpec, exclude: Sequence[str], inplace: bool, policy: PruningPolicy | None
) -> keras.Model:
    # Layers already pruned keep their own settings (TF MOT keeps pre-wrapped layers as they are).
    own_specs = {layer.name: state.spec for layer in iter_layers(to_prune) if (state := get_pruning(layer)) is not None}
    model = to_prune if inplace else _clone(to_prune)
    selected = select_layers(model, exclude, None if policy is None else policy.allow_pruning)
    for name in own_specs:
        layer = model.get_layer(name)
        if layer not in selected:  # excluded or refused by the policy, but pruned by the user beforehand
            selected[layer] = []
    step = new_step_variable()
    for layer in selected:
        previous = get_pruning(layer)
        if previous is not None:  # inplace: the layer's own state goes on with the model's step
            previous.detach()
        pruning = LayerPruning(layer, own_specs.get(layer.name, spec), step)
        if layer.built:
            pruning.attach()
        set_pruning(layer, pruning)
    model.train_function = None  # a train step traced before pruning would not apply the masks
    return model


def _prune_layer(layer: Any, spec: PruningSpec) -> Any:
    _check_keras3(layer, "each layer to prune")
    if isinstance(layer, keras.Model):
        raise ConfigError(f"{layer.name!r} is a model; pass it alone, not in a list of layers")
    if get_pruning(layer) is not None:
        return layer  # TF MOT returns an already wrapped layer as it is, with its own settings
    if layer.built:
        prunable_weights(layer)  # raises for unsupported layers now, not at training time
    else:
        check_unbuilt_layer(layer)
    with distribution_scope(layer.weights, f"layer {layer.name!r}"):
        pruning = LayerPruning(layer, spec, new_step_variable())
    if layer.built:
        pruning.attach()
    set_pruning(layer, pruning)
    return layer


def _clone(model: keras.Model) -> keras.Model:
    try:
        if _is_functional(model):  # keep the input layers' names (Keras 3's clone renames them)
            inputs = keras.tree.map_structure(
                lambda t: keras.Input(batch_shape=t.shape, dtype=t.dtype, name=t._keras_history.operation.name),
                model.input,
            )
            clone = keras.models.clone_model(model, input_tensors=inputs)
        else:
            clone = keras.models.clone_model(model)
    except TypeError as exc:  # a custom layer whose get_config() does not give back its __init__ arguments
        raise ConfigError(
            f"model {model.name!r} cannot be cloned for pruning: {exc}. Give the custom layer a get_config() "
            "that returns its __init__ arguments, or prune the model object itself with inplace=True"
        ) from None
    clone.set_weights(model.get_weights())
    return clone


def prune_scope() -> Any:
    """TF MOT's ``prune_scope()``, for code that loads pruned models inside it; prunekit needs no custom
    objects (no wrapper layers), so the scope is empty. Use :func:`prunekit.keras.load_model` to get
    the pruning state back from a ``.keras`` file.

    Example::

        with prune_scope():
            model = prunekit.keras.load_model("pruned.keras")
    """
    return keras.saving.custom_object_scope({})


def strip_pruning(model: Any) -> Any:
    """A plain Keras model: same classes and layer names, pruned weights exactly zero, no pruning state.

    Sequential and Functional models are cloned (the pruning model is left as it was); a
    subclassed model, or a single layer, is stripped in place and returned. A model without
    pruned layers is returned as it is (TF MOT's clone reuses its unpruned layers too). A layer
    far below its schedule's final sparsity raises a ``SparsityWarning`` (unless the end of ``fit``
    already warned for it): TF MOT strips such a model silently.

    Example::

        final = strip_pruning(pruned)
        final.save("final.keras")  # loads anywhere, no custom objects needed
    """
    _check_keras3(model, "strip_pruning's argument")
    states = prunings(model)
    if not states:
        return model
    for state in states:
        if state.attached:
            state.apply_masks()
    check_targets(states, "strip_pruning")
    if isinstance(model, keras.Model) and (isinstance(model, keras.Sequential) or _is_functional(model)):
        return _clone(model)
    for state in states:
        state.detach()
        set_pruning(state.target_layer(), None)
    if isinstance(model, keras.Model):
        model.train_function = None
    return model


def get_masks(model: Any) -> dict[str, np.ndarray]:
    """Weight path -> boolean keep-mask, for every pruned weight in ``model``.

    Example::

        masks = get_masks(pruned)
        masks["digits_cnn/fc1/kernel"].mean()  # fraction of weights kept
    """
    result: dict[str, np.ndarray] = {}
    for state in prunings(model):
        result.update(state.mask_arrays())
    return result


def pruned_layers(model: Any) -> list[str]:
    """Names of the layers of ``model`` whose weights are pruned (weightless layers marked as no-ops, as TF MOT
    wraps them, are not listed)."""
    return [
        layer.name
        for layer in iter_layers(model)
        if get_pruning(layer) is not None and not (layer.built and is_weightless(layer))
    ]
