"""Input-adaptive activation sparsity (TEAL-style): zero the small entries of each layer's input at run time.

:func:`calibrate_activation_sparsity` runs sample batches through the model and sets, per
Linear layer, the threshold below which ``target`` of that layer's input entries fall (the
``target`` quantile of ``|x|``). :func:`apply_activation_sparsity` swaps those layers for
:class:`~prunekit.torch.deploy.sparse.layers.ActivationSparseLinear`, whose kernels read only
the weight columns of the surviving inputs at batch 1-4 (decoding, small-batch serving); a
weight that is itself pruned is kept as a CSC of its nonzeros, so both sparsities combine.
:func:`activation_sparsity_report` gives the fraction actually zeroed per layer since the
last reset. The model keeps its class and its ``generate()``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

import numpy as np
import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.torch.deploy.sparse.allocation import GRID, greedy_allocation, input_scores, layer_errors
from prunekit.torch.deploy.sparse.kl_allocation import kl_allocation
from prunekit.torch.deploy.sparse.layers import ActivationSparseLinear, column_norms
from prunekit.torch.deploy.sparse.rescale import output_scales

#: Layers never sparsified by default: an LM head's input is the final hidden state (and often tied).
DEFAULT_EXCLUDE = ("lm_head", "*.lm_head", "classifier", "*.classifier")
_SAMPLE_LIMIT = 200_000  # |x| entries kept per layer for the quantile (a random subsample beyond that)
ALLOCATIONS = ("uniform", "greedy", "kl")
#: How an input entry is scored against its layer's threshold: ``|x_j|`` (TEAL, CATS) or
#: ``|x_j| * ||W[:, j]||`` (WINA, R-Sparse: the entry's reach into the output).
SCORES = ("magnitude", "column_norm")


@dataclass(frozen=True)
class ActivationThresholds:
    """Per-layer input thresholds for a target fraction of zeroed activations; ``sparsities`` is the
    fraction each layer was calibrated for (all ``target`` when ``allocation`` is ``"uniform"``);
    ``output_scales`` the factor each layer's kept output is scaled by (empty: none, see ``rescale``).

    Example::

        thresholds = calibrate_activation_sparsity(model, batches, target=0.5)
        thresholds.values["model.layers.0.mlp.down_proj"]
    """

    target: float
    values: dict[str, float]
    sparsities: dict[str, float] = field(default_factory=dict)
    allocation: str = "uniform"
    score: str = "magnitude"
    output_scales: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "allocation": self.allocation,
            "score": self.score,
            "thresholds": dict(self.values),
            "sparsities": dict(self.sparsities),
            "output_scales": dict(self.output_scales),
        }


def _check_target(target: float) -> None:
    if not isinstance(target, (int, float)) or not 0.0 <= float(target) < 1.0:
        raise ConfigError(
            f"target activation sparsity should be in [0, 1) (the fraction of input entries zeroed), got {target!r}"
        )


def _linear_layers(model: nn.Module, include: Sequence[str] | None, exclude: Sequence[str]) -> dict[str, nn.Linear]:
    found = {}
    for name, module in model.named_modules():
        if type(module) is not nn.Linear:
            continue
        if include is not None and not any(fnmatchcase(name, pattern) for pattern in include):
            continue
        if any(fnmatchcase(name, pattern) for pattern in exclude):
            continue
        found[name] = module
    if not found:
        raise ConfigError(
            f"no nn.Linear layer of the model matches include={list(include) if include else None} "
            f"and exclude={list(exclude)}; name layers as model.named_modules() does (wildcards allowed)"
        )
    return found


def _run_batch(model: nn.Module, batch: Any, index: int) -> Any:
    try:
        if isinstance(batch, dict):
            return model(**batch)
        if isinstance(batch, (tuple, list)):
            return model(*batch)
        return model(batch)
    except (RuntimeError, TypeError, ValueError, IndexError) as exc:
        shape = list(batch.shape) if isinstance(batch, torch.Tensor) else type(batch).__name__
        raise ConfigError(
            f"calibration batch {index} (shape {shape}) does not fit the model: {str(exc).splitlines()[0][:300]}. "
            "Pass batches shaped like the model's input (token ids of shape [batch, seq] for a causal LM)"
        ) from None


def calibrate_activation_sparsity(
    model: nn.Module,
    batches: Iterable[Any],
    target: float = 0.5,
    *,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] = DEFAULT_EXCLUDE,
    seed: int = 0,
    allocation: str = "uniform",
    score: str = "column_norm",
    rescale: bool = True,
) -> ActivationThresholds:
    """Per-layer thresholds so that ``target`` of each Linear layer's input entries have ``|x|`` below them.

    ``batches`` are model inputs (tensors, tuples of positional arguments or dicts of keyword
    arguments); ``include``/``exclude`` pick layers by ``fnmatch`` pattern on their module names.
    Thresholds are computed on the dense model's activations (each layer sees its unthresholded
    input), as TEAL does. ``allocation="greedy"`` gives each layer its own fraction instead
    (:mod:`~prunekit.torch.deploy.sparse.allocation`): more where zeroing moves the model's output
    least, so that the weight-count-weighted mean is ``target``; it runs the calibration batches
    once per layer and grid point. ``allocation="kl"``
    (:mod:`~prunekit.torch.deploy.sparse.kl_allocation`) grows the fractions step by step on the
    whole model's KL divergence from the dense one, every layer measured with the others at their
    current sparsity, to the same weighted mean. ``score="column_norm"`` (the default) ranks input ``j`` by
    ``|x_j| * ||W[:, j]||`` (WINA, R-Sparse): at the same count of skipped weight columns it keeps the
    inputs that move the output most; ``score="magnitude"`` ranks by ``|x_j|`` alone (TEAL, CATS).
    ``rescale=True`` (the default) also fits one scale per layer for its kept output (least squares
    onto the dense output on the calibration batches, :mod:`~prunekit.torch.deploy.sparse.rescale`),
    folded into the weight so the kernels are unchanged; ``rescale=False`` keeps the kept entries as
    they are (the layer then equals the dense one on thresholded inputs).

    Example::

        thresholds = calibrate_activation_sparsity(lm, [ids[:, :64] for ids in windows], target=0.5)
    """
    _check_target(target)
    if allocation not in ALLOCATIONS:
        raise ConfigError(f"allocation should be one of {list(ALLOCATIONS)}, got {allocation!r}")
    if score not in SCORES:
        raise ConfigError(f"score should be one of {list(SCORES)}, got {score!r}")
    batches = list(batches)
    layers = _linear_layers(model, include, exclude)
    scales = {name: _input_scale(layer, score) for name, layer in layers.items()}
    rng = np.random.default_rng(seed)
    samples: dict[str, list[np.ndarray]] = {name: [] for name in layers}

    def hook(name: str) -> Callable[..., None]:
        def record(module: nn.Module, args: tuple[Any, ...]) -> None:
            values = input_scores(args[0].detach(), scales[name]).reshape(-1).cpu().numpy()
            if values.size > _SAMPLE_LIMIT:
                values = rng.choice(values, _SAMPLE_LIMIT, replace=False)
            samples[name].append(values)

        return record

    handles = [module.register_forward_pre_hook(hook(name)) for name, module in layers.items()]
    count = 0
    try:
        with _eval_mode(model), torch.no_grad():
            for count, batch in enumerate(batches, start=1):
                _run_batch(model, batch, count - 1)
    finally:
        for handle in handles:
            handle.remove()
    if count == 0:
        raise ConfigError("calibrate_activation_sparsity needs at least one calibration batch, got none")
    magnitudes = {name: np.concatenate(parts) for name, parts in samples.items() if parts}
    sparsities = dict.fromkeys(magnitudes, float(target))
    found = {name: layers[name] for name in magnitudes}
    if allocation == "greedy" and target > 0:
        sparsities = _greedy(model, found, magnitudes, scales, batches, float(target))
    if allocation == "kl" and target > 0:
        sparsities = _joint_kl(model, found, magnitudes, scales, batches, float(target))
    values = {
        name: float(np.quantile(magnitudes[name], sparsity)) if sparsity > 0 else 0.0 for name, sparsity in sparsities.items()
    }
    rescaled: dict[str, float] = {}
    if rescale:
        with _eval_mode(model):
            rescaled = output_scales(model, found, values, scales, batches, _run_batch)
    return ActivationThresholds(float(target), values, sparsities, allocation, score, rescaled)


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """The model in eval mode (dropout off) for the calibration passes, its mode given back after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _input_scale(layer: nn.Linear, score: str) -> torch.Tensor | None:
    """The per-input factor of the score: the weight's column norms for ``"column_norm"``, none for ``"magnitude"``."""
    if score == "magnitude":
        return None
    return torch.from_numpy(column_norms(layer.weight.detach().float().cpu().numpy())).to(layer.weight.device)


def _greedy(
    model: nn.Module,
    layers: dict[str, nn.Linear],
    magnitudes: dict[str, np.ndarray],
    scales: dict[str, torch.Tensor | None],
    batches: list[Any],
    target: float,
) -> dict[str, float]:
    """Per-layer sparsities from each layer's measured output error at the :data:`GRID` sparsities (in eval mode)."""
    grid = {name: [float(t) for t in np.quantile(values, GRID)] for name, values in magnitudes.items()}
    with _eval_mode(model):
        errors = layer_errors(model, layers, grid, scales, batches, _run_batch)
    return greedy_allocation(errors, {name: layer.weight.numel() for name, layer in layers.items()}, target)


def _joint_kl(
    model: nn.Module,
    layers: dict[str, nn.Linear],
    magnitudes: dict[str, np.ndarray],
    scales: dict[str, torch.Tensor | None],
    batches: list[Any],
    target: float,
) -> dict[str, float]:
    """Per-layer sparsities grown on the whole model's KL divergence from the dense one (in eval mode)."""
    ordered = {name: np.sort(values) for name, values in magnitudes.items()}

    def threshold(name: str, sparsity: float) -> float:
        return float(np.quantile(ordered[name], sparsity)) if sparsity > 0 else 0.0

    with _eval_mode(model):
        sparsities, _ = kl_allocation(model, layers, threshold, scales, batches, _run_batch, target)
    return sparsities


def apply_activation_sparsity(
    model: nn.Module,
    thresholds: ActivationThresholds,
    *,
    weight_sparse_above: float = 0.5,
    inplace: bool = False,
) -> nn.Module:
    """A copy of ``model`` whose calibrated Linear layers zero inputs below their thresholds and skip those columns.

    Layers whose weight is sparser than ``weight_sparse_above`` keep only their nonzeros (CSC),
    combining weight and activation sparsity.

    Example::

        fast = apply_activation_sparsity(lm, thresholds)
        fast.generate(ids, max_new_tokens=32)
    """
    target = model if inplace else copy.deepcopy(model)
    for name, threshold in thresholds.values.items():
        try:
            module = target.get_submodule(name)
        except AttributeError:
            raise ConfigError(f"thresholds name layer {name!r}, which the model does not have") from None
        if type(module) is not nn.Linear:
            raise ConfigError(f"layer {name!r} is a {type(module).__name__}, not an nn.Linear")
        weight = module.weight.detach()
        sparse_weight = float((weight == 0).float().mean()) > weight_sparse_above
        replacement = ActivationSparseLinear.from_linear(
            module,
            threshold,
            weight_sparse=sparse_weight,
            column_norm_scores=thresholds.score == "column_norm",
            output_scale=thresholds.output_scales.get(name, 1.0),
        )
        parent_name, _, child = name.rpartition(".")
        setattr(target.get_submodule(parent_name) if parent_name else target, child, replacement)
    return target


def activation_sparsity_report(model: nn.Module, reset: bool = False) -> dict[str, float]:
    """``{layer name: fraction of input entries zeroed}`` for every activation-sparse layer since the last reset.

    Example::

        activation_sparsity_report(fast)["model.layers.0.mlp.up_proj"]   # e.g. 0.503
    """
    report = {
        name: module.achieved_sparsity for name, module in model.named_modules() if isinstance(module, ActivationSparseLinear)
    }
    if reset:
        for module in model.modules():
            if isinstance(module, ActivationSparseLinear):
                module.reset_counts()
    return report
