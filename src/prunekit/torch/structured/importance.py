"""Group importance: one score per channel of a :class:`ChannelGroup`, higher means keep.

An importance is any callable ``(group) -> scores`` with ``group.size`` scores. The built-in
criteria aggregate over every tensor slice in the group (producers' rows, consumers' columns,
normalisation affine), so coupled layers are judged together:

* ``"l1"`` / ``"l2"``: weight magnitude (:class:`MagnitudeImportance`), the default;
* ``"random"``: a seeded baseline (:class:`RandomImportance`);
* ``"taylor"``: first-order Taylor expansion of a loss over calibration batches
  (:class:`TaylorImportance`, Molchanov et al. 2019);
* ``"bn_scale"``: |gamma| of the group's BatchNorm/GroupNorm/LayerNorm (network slimming,
  :class:`BNScaleImportance`);
* ``"activation"`` / ``"apoz"``: mean absolute activation, or 1 − average percentage of zeros,
  over calibration batches (:class:`ActivationImportance`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from prunekit.errors import ConfigError
from prunekit.torch.structured.graph import ChannelGroup, DependencyGraph
from prunekit.torch.structured.tracing import TensorRef, call_model, trace_model

Importance = Callable[[ChannelGroup], Any]
_NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)


class MagnitudeImportance:
    """Lp norm of each channel over every parameter slice of the group (p = 1 or 2).

    Example::

        scores = MagnitudeImportance(p=2)(graph.groups[0])  # one score per channel
    """

    def __init__(self, p: int = 1):
        if p not in (1, 2):
            raise ConfigError(f"MagnitudeImportance p should be 1 or 2, got {p!r}")
        self.p = p

    def __call__(self, group: ChannelGroup) -> np.ndarray:
        total = torch.zeros(group.size, dtype=torch.float64)
        for member, tensor in group.tensors():
            total += group.reduce(_position_power_sums(tensor.detach(), member.dim, self.p), member).cpu()
        return total.pow(1.0 / self.p).numpy()

    def __repr__(self) -> str:
        return f"MagnitudeImportance(p={self.p})"


def _position_power_sums(values: torch.Tensor, dim: int, p: int) -> torch.Tensor:
    """Sum of ``|w|^p`` over every dimension but ``dim``, shaped to broadcast against ``values``.

    Reduces the contiguous trailing dimensions first and the leading ones after, so a conv
    weight's input-channel sums cost one pass over memory instead of a strided reduction.
    """
    shape = values.shape
    flat = values.reshape(math.prod(shape[:dim]), shape[dim], math.prod(shape[dim + 1 :]))
    sums = (flat.abs() if p == 1 else flat.square()).sum(dim=2).sum(dim=0)
    return sums.reshape([1] * dim + [shape[dim]] + [1] * (len(shape) - dim - 1))


class RandomImportance:
    """Uniform random scores, seeded per group: the baseline every criterion should beat."""

    def __init__(self, seed: int = 0):
        self.seed = int(seed)

    def __call__(self, group: ChannelGroup) -> np.ndarray:
        return np.random.default_rng([self.seed, group.id]).random(group.size)

    def __repr__(self) -> str:
        return f"RandomImportance(seed={self.seed})"


class BNScaleImportance:
    """|gamma| of the normalisation layers in the group (network slimming, Liu et al. 2017).

    Groups without a normalisation layer are scored by L1 magnitude instead; their names are
    listed in ``notes`` (and in the pruning report).
    """

    def __init__(self) -> None:
        self.notes: list[str] = []

    def __call__(self, group: ChannelGroup) -> np.ndarray:
        modules = dict(group.graph.model.named_modules())
        total = torch.zeros(group.size, dtype=torch.float64)
        found = False
        for member, tensor in group.tensors():
            if member.tensor.endswith(".weight") and isinstance(modules.get(member.module), _NORM_TYPES):
                total += group.reduce(tensor.detach().double().abs(), member).cpu()
                found = True
        if not found:
            self.notes.append(f"bn_scale: group {group.name!r} has no normalisation layer; scored by L1 magnitude")
            return MagnitudeImportance(1)(group)
        return total.numpy()

    def __repr__(self) -> str:
        return "BNScaleImportance()"


def default_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    """Cross-entropy of ``model(inputs)`` against ``labels`` for a batch ``(inputs, labels)``."""
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise ConfigError("the default Taylor loss needs batches of (inputs, labels); pass loss_fn=(model, batch) -> loss")
    inputs, labels = batch
    output = call_model(model, inputs)
    logits = output if isinstance(output, torch.Tensor) else getattr(output, "logits", None)
    if logits is None:
        raise ConfigError("the model output has no logits for the default Taylor loss; pass loss_fn=(model, batch) -> loss")
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))


class TaylorImportance:
    """First-order Taylor importance: ``(sum over the channel's weights of w * dL/dw)^2``,
    with gradients accumulated over ``batches`` (Molchanov et al., CVPR 2019).

    ``loss_fn(model, batch) -> scalar`` defaults to cross-entropy on ``(inputs, labels)``
    batches. Gradients are computed once per analysed model, in eval mode; the model's own
    ``.grad`` fields are restored afterwards.

    Example::

        importance = TaylorImportance(loader_batches, loss_fn=my_loss)
    """

    def __init__(self, batches: Iterable[Any], loss_fn: Callable[[nn.Module, Any], torch.Tensor] | None = None):
        self.batches = list(batches)
        if not self.batches:
            raise ConfigError("TaylorImportance needs at least one calibration batch")
        self.loss_fn = loss_fn or default_loss
        self._cache: tuple[int, dict[str, torch.Tensor]] | None = None

    def _gradients(self, graph: DependencyGraph) -> dict[str, torch.Tensor]:
        if self._cache is not None and self._cache[0] == id(graph):
            return self._cache[1]
        model = graph.model
        params = dict(model.named_parameters())
        saved = {name: p.grad for name, p in params.items()}
        modes = {m: m.training for m in model.modules()}
        grads: dict[str, torch.Tensor] = {}
        try:
            model.eval()
            for p in params.values():
                p.grad = None
            with torch.enable_grad():
                for batch in self.batches:
                    loss = self.loss_fn(model, batch)
                    loss.backward()
            grads = {name: p.grad.detach().clone() for name, p in params.items() if p.grad is not None}
        finally:
            for name, p in params.items():
                p.grad = saved[name]
            for m, mode in modes.items():
                m.training = mode
        self._cache = (id(graph), grads)
        return grads

    def __call__(self, group: ChannelGroup) -> np.ndarray:
        grads = self._gradients(group.graph)
        total = torch.zeros(group.size, dtype=torch.float64)
        for member, tensor in group.tensors():
            grad = grads.get(member.tensor)
            if grad is not None:
                total += group.reduce((tensor.detach() * grad).double(), member).cpu()
        return total.pow(2).numpy()

    def __repr__(self) -> str:
        return f"TaylorImportance({len(self.batches)} batches)"


_ACTIVATIONS = {
    "relu",
    "relu6",
    "gelu",
    "silu",
    "hardswish",
    "leaky_relu",
    "elu",
    "selu",
    "celu",
    "mish",
    "softplus",
    "sigmoid",
    "tanh",
    "hardtanh",
    "prelu",
}


class ActivationImportance:
    """Activation statistics over calibration batches, measured where the group's channels are
    first activated (after the nonlinearity that follows the producing layer, else at its output).

    ``statistic="mean"`` scores mean |activation|; ``"apoz"`` scores 1 − the average percentage
    of zeros (Hu et al. 2016), for ReLU networks. Batches have the form of ``example_inputs``;
    ``(inputs, labels)`` pairs are accepted and their labels ignored.

    Example::

        importance = ActivationImportance([x[:64] for x in batches], statistic="apoz")
    """

    def __init__(self, batches: Iterable[Any], statistic: str = "mean"):
        if statistic not in ("mean", "apoz"):
            raise ConfigError(f"ActivationImportance statistic should be 'mean' or 'apoz', got {statistic!r}")
        self.batches = list(batches)
        if not self.batches:
            raise ConfigError("ActivationImportance needs at least one calibration batch")
        self.statistic = statistic
        self.notes: list[str] = []
        self._cache: tuple[int, dict[int, np.ndarray]] | None = None

    def _watch(self, graph: DependencyGraph) -> dict[int, tuple[int, int, int, np.ndarray]]:
        """For each group: (op index, output position, dim, position -> channel map)."""
        watch: dict[int, tuple[int, int, int, np.ndarray]] = {}
        fallback: dict[int, tuple[int, int, int, np.ndarray]] = {}
        for op in graph.trace.ops:
            outs = [leaf for leaf in _leaves(op.outputs)]
            for position, ref in enumerate(outs):
                labels = graph.state.labels.get(ref.vid)
                if labels is None:
                    continue
                for dim, atoms in enumerate(labels):
                    roots = graph.roots[atoms]
                    gids = graph.group_of_root[roots]
                    if (gids < 0).any() or len(np.unique(gids)) != 1:
                        continue
                    gid = int(gids[0])
                    channels = graph.channel_of_root[roots]
                    if len(np.unique(channels)) != graph.groups[gid].size:
                        continue
                    target = watch if op.name in _ACTIVATIONS else fallback
                    target.setdefault(gid, (op.index, position, dim, channels))
        for gid, entry in fallback.items():
            watch.setdefault(gid, entry)
        return watch

    def _statistics(self, graph: DependencyGraph) -> dict[int, np.ndarray]:
        if self._cache is not None and self._cache[0] == id(graph):
            return self._cache[1]
        watch = self._watch(graph)
        by_op: dict[int, list[tuple[int, int, int, np.ndarray]]] = {}
        for gid, (index, position, dim, channels) in watch.items():
            by_op.setdefault(index, []).append((gid, position, dim, channels))
        sums: dict[int, np.ndarray] = {gid: np.zeros(graph.groups[gid].size) for gid in watch}
        names = [op.name for op in graph.trace.ops]

        def observer(record, output) -> None:
            if record.index >= len(names) or record.name != names[record.index]:
                raise ConfigError(
                    f"calibration batch ran a different sequence of ops than example_inputs at "
                    f"{record.label}; use batches of the same form as example_inputs"
                )
            for gid, position, dim, channels in by_op.get(record.index, ()):
                tensor = [t for t in _tensor_leaves(output)][position].detach().double()
                moved = tensor.movedim(dim, 0).reshape(tensor.shape[dim], -1)
                value = moved.abs().mean(1) if self.statistic == "mean" else 1.0 - (moved == 0).double().mean(1)
                per_channel = np.zeros(graph.groups[gid].size)
                counts = np.zeros(graph.groups[gid].size)
                np.add.at(per_channel, channels, value.cpu().numpy())
                np.add.at(counts, channels, 1)
                sums[gid] += per_channel / np.maximum(counts, 1)

        for batch in self.batches:
            trace_model(graph.model, _inputs_of(batch), observer=observer)
        for group in graph.groups:
            if group.id not in watch:
                self.notes.append(f"activation: no activation of group {group.name!r} was found; scored by L1")
        stats = {gid: value / len(self.batches) for gid, value in sums.items()}
        self._cache = (id(graph), stats)
        return stats

    def __call__(self, group: ChannelGroup) -> np.ndarray:
        stats = self._statistics(group.graph)
        if group.id not in stats:
            return MagnitudeImportance(1)(group)
        return stats[group.id]

    def __repr__(self) -> str:
        return f"ActivationImportance(statistic={self.statistic!r}, {len(self.batches)} batches)"


def _leaves(tree: Any) -> list[TensorRef]:
    from torch.utils import _pytree as pytree

    return [leaf for leaf in pytree.tree_leaves(tree) if isinstance(leaf, TensorRef)]


def _tensor_leaves(tree: Any) -> list[torch.Tensor]:
    from torch.utils import _pytree as pytree

    return [leaf for leaf in pytree.tree_leaves(tree) if isinstance(leaf, torch.Tensor)]


def _inputs_of(batch: Any) -> Any:
    if (
        isinstance(batch, (tuple, list))
        and len(batch) == 2
        and isinstance(batch[1], torch.Tensor)
        and batch[1].dtype in (torch.int64, torch.int32)
        and batch[1].dim() <= 1
    ):
        return batch[0]
    return batch


def resolve_importance(
    importance: str | Importance, calibration: Iterable[Any] | None = None, loss_fn: Callable | None = None, seed: int = 0
) -> Importance:
    """Turn an importance name into a criterion (callables pass through unchanged).

    Example::

        resolve_importance("l2")  # MagnitudeImportance(p=2)
    """
    if callable(importance):
        return importance
    names = ("l1", "l2", "random", "taylor", "bn_scale", "activation", "apoz")
    if importance not in names:
        raise ConfigError(f"importance should be one of {names} or a callable (group) -> scores, got {importance!r}")
    if importance in ("taylor", "activation", "apoz") and calibration is None:
        raise ConfigError(f"importance={importance!r} needs calibration=... (an iterable of batches)")
    return {
        "l1": lambda: MagnitudeImportance(1),
        "l2": lambda: MagnitudeImportance(2),
        "random": lambda: RandomImportance(seed),
        "taylor": lambda: TaylorImportance(calibration, loss_fn),
        "bn_scale": BNScaleImportance,
        "activation": lambda: ActivationImportance(calibration, "mean"),
        "apoz": lambda: ActivationImportance(calibration, "apoz"),
    }[importance]()


__all__ = [
    "ActivationImportance",
    "BNScaleImportance",
    "Importance",
    "MagnitudeImportance",
    "RandomImportance",
    "TaylorImportance",
    "default_loss",
    "resolve_importance",
]
