"""Feature distillation's pieces: the distances between features, and the model's penultimate features.

Raw MSE between activations scales with their magnitude and, on the digits CNN, dwarfed the
cross-entropy (weight 1 cost 6 to 40 points). The scale-free distances compare shapes, not sizes:

* ``"mse"``: the mean squared error of the raw features (FitNets);
* ``"cosine"``: ``1 - cos(student, teacher)`` per sample over the flattened feature, averaged over the
  batch (in [0, 2]; equal to half the squared distance of the L2-normalised features);
* ``"standardized"``: the MSE after standardising each feature coordinate over the batch (zero
  mean, unit variance, as BatchNorm without its affine does; "A Comprehensive Overhaul of Feature
  Distillation" matches normalised pre-activations).

Both scale-free distances are unchanged when either side's features are multiplied by a constant > 0.
``"penultimate"`` in a feature list names the *input* of the layer that produces the logits,
found by running the model once (:func:`head_layer`), so it needs no layer name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from prunekit.errors import ConfigError

PENULTIMATE = "penultimate"
FEATURE_LOSSES = ("mse", "cosine", "standardized")
_EPS = 1e-12


def _standardize(x: torch.Tensor) -> torch.Tensor:
    flat = x.reshape(x.shape[0], -1)
    centred = flat - flat.mean(0, keepdim=True)
    return centred / (centred.pow(2).mean(0, keepdim=True) + _EPS).sqrt()


def _cosine(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    return (1.0 - F.cosine_similarity(student.reshape(student.shape[0], -1), teacher.reshape(teacher.shape[0], -1), dim=1)).mean()


def _standardized(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    if student.shape[0] < 2:
        raise ConfigError("feature_loss='standardized' standardises over the batch: use batches of 2 samples or more")
    return F.mse_loss(_standardize(student), _standardize(teacher))


_DISTANCES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "mse": F.mse_loss,
    "cosine": _cosine,
    "standardized": _standardized,
}


def check_feature_loss(kind: Any) -> str:
    """``kind`` if it names a feature distance, else a ``ConfigError`` listing them."""
    if kind not in _DISTANCES:
        raise ConfigError(f"feature_loss should be one of {list(FEATURE_LOSSES)}, got {kind!r}")
    return str(kind)


def feature_distance(student: torch.Tensor, teacher: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """The distance ``kind`` (see the module docstring) between same-shaped feature batches (first dim: samples).

    Example::

        feature_distance(torch.randn(8, 32), 10 * torch.randn(8, 32), "cosine")  # same as without the 10
    """
    return _DISTANCES[check_feature_loss(kind)](student.float(), teacher.float())


def head_layer(model: nn.Module, example_input: Any, logits_of: Callable[[Any], torch.Tensor]) -> str:
    """The name of the layer that produces the model's logits (its input: the penultimate features).

    Runs ``model`` once on ``example_input`` without gradients, hooking every leaf module that holds
    parameters (so an ``Identity`` or eval-mode ``Dropout`` after the head is passed over): the head
    is the last one whose output *is* the logits tensor, else the last one whose output has the
    logits' shape (a cast or reshape after it). ``logits_of`` maps the model's output
    to its logits. A ``ConfigError`` when no module produced them (logits computed by a function).

    Example::

        head_layer(DigitsCNN(), torch.zeros(2, 1, 8, 8), lambda out: out)  # 'fc2'
    """
    calls: list[tuple[str, torch.Tensor]] = []

    def hook(name: str) -> Callable[..., None]:
        def record(_module: nn.Module, _inputs: Any, output: Any) -> None:
            if isinstance(output, torch.Tensor):
                calls.append((name, output))

        return record

    leaves = [
        (name, m)
        for name, m in model.named_modules()
        if name and not any(True for _ in m.children()) and any(True for _ in m.parameters(recurse=False))
    ]
    handles = [module.register_forward_hook(hook(name)) for name, module in leaves]
    mode = model.training
    try:
        model.eval()
        with torch.no_grad():
            logits = logits_of(model(**example_input) if isinstance(example_input, dict) else model(example_input))
    finally:
        model.train(mode)
        for handle in handles:
            handle.remove()
    for name, output in reversed(calls):
        if output is logits:
            return name
    for name, output in reversed(calls):
        if output.shape == logits.shape:
            return name
    raise ConfigError(
        f"found no layer of {type(model).__name__} that outputs its logits (shape {tuple(logits.shape)}), so "
        f"{PENULTIMATE!r} has no input to match; name the feature layers instead (features=['layer', ...])"
    )
