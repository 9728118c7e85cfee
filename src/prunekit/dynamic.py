"""Dynamic sparse training (SET, RigL), framework-free: when to update, how much to drop, where to regrow.

A dynamic sparse network keeps its number of nonzeros fixed while its masks move: every
``update_interval`` steps it drops the ``drop_fraction`` smallest-magnitude active weights and
regrows as many inactive ones, chosen at random (SET, Mocanu et al. 2018) or where the dense
gradient is largest (RigL, Evci et al. 2020). The drop fraction decays along a cosine to 0 at
``end_step``. Regrown weights start at exactly 0.

Everything here works on numpy arrays and is shared by :mod:`prunekit.torch.unstructured.dynamic` and
:mod:`prunekit.keras.unstructured.dynamic`, so both backends choose the same masks from the same weights and
gradients. Selection is exact and deterministic (ties go to the lower flat index).
"""

from __future__ import annotations

import math
import numbers
import zlib
from collections.abc import Callable, Collection, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from prunekit.errors import ConfigError
from prunekit.masks import _lowest

SET, RIGL = "set", "rigl"  # the regrowth methods: the values of ``regrow=``
REGROW_METHODS = (SET, RIGL)
DISTRIBUTIONS = ("uniform", "erdos_renyi", "erdos_renyi_kernel")
BLOCK_POOLING = ("l1", "l2", "max")

Key = TypeVar("Key", bound=Hashable)


def _integer(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ConfigError(f"{name} should be an integer >= {minimum}, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class Regrowth:
    """When and how much a dynamic sparse pruner drops and regrows.

    Args:
        method: ``"set"`` (regrow at random) or ``"rigl"`` (regrow the largest dense gradients).
        end_step: the last update is strictly before this step; the drop fraction reaches 0 here.
        update_interval: steps between updates (RigL's ``ΔT``), >= 1.
        drop_fraction: fraction of each layer's active weights dropped at ``begin_step``, in (0, 1);
            it decays as ``drop_fraction / 2 * (1 + cos(pi * (t - begin_step) / (end_step - begin_step)))``.
        begin_step: the first update (``None``: resolved by the pruner to the step the sparsity
            schedule reaches its final sparsity).

    Example::

        regrowth = Regrowth("rigl", end_step=1000, update_interval=100, drop_fraction=0.3, begin_step=0)
        regrowth.drop_fraction_at(500)  # 0.15
    """

    method: str
    end_step: int
    update_interval: int = 100
    drop_fraction: float = 0.3
    begin_step: int | None = None

    def __post_init__(self) -> None:
        if self.method not in REGROW_METHODS:
            raise ConfigError(f"regrow should be one of {REGROW_METHODS}, got {self.method!r}")
        _integer(self.update_interval, "update_interval", 1)
        if isinstance(self.drop_fraction, bool) or not isinstance(self.drop_fraction, numbers.Real):
            raise ConfigError(f"drop_fraction should be a number in (0, 1), got {self.drop_fraction!r}")
        if not 0.0 < float(self.drop_fraction) < 1.0:
            raise ConfigError(
                f"drop_fraction should be in (0, 1) (the fraction of active weights moved), got {self.drop_fraction}"
            )
        _integer(self.end_step, "end_step", 1)
        if self.begin_step is not None:
            _integer(self.begin_step, "begin_step", 0)
            if self.begin_step >= self.end_step:
                raise ConfigError(f"begin_step ({self.begin_step}) should be < end_step ({self.end_step}) of the regrowth")

    @property
    def first_step(self) -> int:
        """The first update step (``begin_step``, 0 when unresolved)."""
        return self.begin_step or 0

    def is_update(self, step: int) -> bool:
        """Whether masks are dropped and regrown after ``step``."""
        begin = self.first_step
        return begin <= step < self.end_step and (step - begin) % self.update_interval == 0

    def drop_fraction_at(self, step: int) -> float:
        """The cosine-decayed drop fraction at ``step`` (the full fraction at ``begin_step``, 0 at ``end_step``)."""
        begin = self.first_step
        progress = min(1.0, max(0.0, (step - begin) / (self.end_step - begin)))
        return float(self.drop_fraction) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def update_steps(self) -> range:
        """Every update step, in order."""
        return range(self.first_step, self.end_step, self.update_interval)

    def get_config(self) -> dict[str, Any]:
        """JSON-serialisable fields."""
        return {
            "method": self.method,
            "end_step": self.end_step,
            "update_interval": self.update_interval,
            "drop_fraction": float(self.drop_fraction),
            "begin_step": self.begin_step,
        }


def check_constant_sparsity(sparsity_at: Callable[[int], float], final: float, begin: int, end: int, where: str) -> None:
    """Raise :class:`ConfigError` if ``sparsity_at(t) != final`` for a step ``t`` in ``[begin, end)``.

    Regrowth keeps the nonzero count fixed, so the sparsity schedule must have reached its
    final sparsity before the first update.

    Example::

        check_constant_sparsity(PolynomialDecay(0, 0.9, 0, 100).sparsity_at, 0.9, 100, 500, "schedule")
    """
    for step in range(begin, end):
        value = sparsity_at(step)
        if not math.isclose(value, final, rel_tol=0.0, abs_tol=1e-12):
            raise ConfigError(
                f"{where} changes sparsity during the regrowth phase (step {step}: {value:.4f}, final {final:.4f}); "
                "regrowth keeps the nonzero count fixed, which is not supported while the schedule still prunes: "
                f"start regrowth (begin_step) at or after the step the schedule reaches {final:.4f}"
            )


def regrowth_start(sparsity_at: Callable[[int], float], final: float, horizon: int) -> int:
    """The first step from which ``sparsity_at`` stays at ``final`` up to ``horizon`` (a default ``begin_step``).

    Example::

        regrowth_start(PolynomialDecay(0, 0.9, 0, 100).sparsity_at, 0.9, 1000)  # 100
    """
    start = 0
    for step in range(horizon):
        if not math.isclose(sparsity_at(step), final, rel_tol=0.0, abs_tol=1e-12):
            start = step + 1
    return start


# ----------------------------------------------------------------- per-layer sparsity
def layer_sparsities(
    shapes: Mapping[Key, Sequence[int]],
    sparsity: float,
    distribution: str = "uniform",
    *,
    dense: Collection[Key] = (),
) -> dict[Key, float]:
    """Each layer's sparsity so that the whole reaches ``sparsity`` (exactly, up to rounding).

    ``shapes`` are channel-first, ``(out, in, *kernel)`` (PyTorch's layout; the Keras backend
    transposes its kernels). ``"uniform"`` gives every layer ``sparsity``; ``"erdos_renyi"`` makes a
    layer's density proportional to ``(in + out) / (in * out)``; ``"erdos_renyi_kernel"`` to
    ``sum(shape) / prod(shape)`` (kernel sizes included), as in RigL. Layers whose density would
    exceed 1 are kept dense and the rest rescaled. Layers in ``dense`` keep sparsity 0 and are
    not counted in the budget.

    Example::

        layer_sparsities({"fc1": (128, 64), "fc2": (10, 128)}, 0.9, "erdos_renyi")
    """
    if distribution not in DISTRIBUTIONS:
        raise ConfigError(f"distribution should be one of {DISTRIBUTIONS}, got {distribution!r}")
    if isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real) or not 0.0 <= sparsity < 1.0:
        raise ConfigError(f"sparsity should be in [0, 1), got {sparsity!r}")
    if not shapes:
        raise ConfigError("layer_sparsities needs at least one layer shape")
    sizes = {name: int(np.prod(shape)) for name, shape in shapes.items()}
    sparse = [name for name in shapes if name not in dense]
    result = dict.fromkeys(shapes, 0.0)
    if distribution == "uniform" or not sparse:
        result.update(dict.fromkeys(sparse, float(sparsity)))
        return result
    raw = {}
    for name in sparse:
        shape = [int(d) for d in shapes[name]]
        if distribution == "erdos_renyi" and len(shape) >= 2:
            raw[name] = (shape[0] + shape[1]) / (shape[0] * shape[1])
        else:
            raw[name] = sum(shape) / float(np.prod(shape))
    kept_dense: set[str] = set()
    while True:
        budget = sum((1.0 - sparsity) * sizes[n] for n in sparse if n not in kept_dense) - sum(
            sparsity * sizes[n] for n in kept_dense
        )
        divisor = sum(raw[n] * sizes[n] for n in sparse if n not in kept_dense)
        if divisor <= 0:
            raise ConfigError(f"sparsity {sparsity} cannot be reached: every layer would have to be dense")
        epsilon = budget / divisor
        remaining = [n for n in sparse if n not in kept_dense]
        highest = max(raw[n] for n in remaining)
        if epsilon * highest <= 1.0:
            break
        kept_dense.update(n for n in remaining if raw[n] == highest)  # densest first, then rescale the rest
    for name in sparse:
        result[name] = 0.0 if name in kept_dense else float(1.0 - epsilon * raw[name])
    return result


def check_layer_share(name: str, numel: int, sparsity: float, where: str = "layer") -> None:
    """Raise :class:`ConfigError` when ``numel`` weights at ``sparsity`` would keep no weight at all."""
    if sparsity > 0 and numel - round(sparsity * numel) < 1:
        raise ConfigError(
            f"{where} {name!r} has {numel} weights: at sparsity {sparsity:.4f} it keeps none, so nothing can regrow "
            f"there; lower the sparsity, use distribution='erdos_renyi_kernel', or ignore it"
        )


# ----------------------------------------------------------------- drop and grow
@dataclass(frozen=True)
class LayerUpdate:
    """One layer's result of an update: the new keep-mask and what moved."""

    mask: np.ndarray
    dropped: int
    regrown: int
    regrown_mask: np.ndarray  # True where a weight was (re)grown: it restarts at 0 with zero optimizer state

    @property
    def nonzeros(self) -> int:
        return int(self.mask.sum())


def random_scores(seed: int, step: int, name: str, shape: Sequence[int]) -> np.ndarray:
    """SET's grow scores: uniform noise reproducible per ``(seed, step, name)``, identical on every rank.

    Example::

        random_scores(0, 100, "fc1.weight", (4, 4)).shape  # (4, 4)
    """
    key = zlib.crc32(f"{seed}:{step}:{name}".encode())
    return np.random.default_rng(key).random(tuple(shape))


def _highest(flat_scores: np.ndarray, count: int) -> np.ndarray:
    """Indices of the ``count`` highest scores; ties go to the lower index."""
    return _lowest(-flat_scores, count)


def drop_and_grow(
    mask: np.ndarray, drop_scores: np.ndarray, grow_scores: np.ndarray, count: int
) -> tuple[np.ndarray, np.ndarray]:
    """Drop the ``count`` lowest ``drop_scores`` among active entries, then grow the ``count`` highest
    ``grow_scores`` among the entries inactive after the drop (a just-dropped entry may come back, at 0).

    Returns ``(new_mask, grown_mask)``, both of ``mask``'s shape; the number of ``True`` is unchanged.

    Example::

        drop_and_grow(np.array([True, True, False]), np.array([1.0, 2.0, 0.0]), np.array([0.0, 0.0, 5.0]), 1)
        # (array([False, True, True]), array([False, False, True]))
    """
    flat_mask = np.asarray(mask, dtype=bool).reshape(-1)
    active = np.flatnonzero(flat_mask)
    count = min(int(count), active.size)
    after = flat_mask.copy()
    after[active[_lowest(np.asarray(drop_scores, np.float64).reshape(-1)[active], count)]] = False
    candidates = np.flatnonzero(~after)
    grown = np.zeros_like(flat_mask)
    grown[candidates[_highest(np.asarray(grow_scores, np.float64).reshape(-1)[candidates], count)]] = True
    return (after | grown).reshape(np.shape(mask)), grown.reshape(np.shape(mask))


def _drop_and_grow_nm(
    mask: np.ndarray, weights: np.ndarray, grow: np.ndarray, count: int, m: int, axis: int
) -> tuple[np.ndarray, np.ndarray]:
    """N:M: drop the ``count`` smallest active ``|w|`` of the tensor, then let every group of ``m`` grow
    as many as it lost (highest grow scores among its inactive entries), so each group keeps its ``n``."""
    moved_shape = np.moveaxis(mask, axis, -1).shape
    before = np.moveaxis(mask, axis, -1).reshape(-1, m)
    flat_weights = np.abs(np.moveaxis(weights, axis, -1)).reshape(-1).astype(np.float64)
    flat_after = before.reshape(-1).copy()
    active = np.flatnonzero(flat_after)
    flat_after[active[_lowest(flat_weights[active], min(int(count), active.size))]] = False
    after = flat_after.reshape(-1, m)
    lost = before.sum(axis=1) - after.sum(axis=1)
    scores = np.moveaxis(grow, axis, -1).reshape(-1, m).astype(np.float64)
    scores[after] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")  # highest first, ties to the lower index
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.broadcast_to(np.arange(m), order.shape), axis=1)
    grown = ranks < lost[:, None]
    back = [np.moveaxis(array.reshape(moved_shape), -1, axis) for array in (after | grown, grown)]
    return back[0], back[1]


def _block_view(array: np.ndarray, block: tuple[int, int]) -> np.ndarray:
    matrix = array.reshape(array.shape[0], -1)
    rows, cols = block
    return matrix.reshape(matrix.shape[0] // rows, rows, matrix.shape[1] // cols, cols)


def _pool(array: np.ndarray, block: tuple[int, int], pooling: str) -> np.ndarray:
    tiles = np.abs(_block_view(np.asarray(array, np.float64), block))
    if pooling == "l1":
        return tiles.mean(axis=(1, 3))
    if pooling == "l2":
        return np.sqrt((tiles**2).sum(axis=(1, 3)))
    return tiles.max(axis=(1, 3))


def _expand(block_keep: np.ndarray, block: tuple[int, int], shape: tuple[int, ...]) -> np.ndarray:
    rows, cols = block
    tiled = np.broadcast_to(block_keep[:, None, :, None], (block_keep.shape[0], rows, block_keep.shape[1], cols))
    return tiled.reshape(shape).copy()


@dataclass(frozen=True)
class Constraint:
    """The mask pattern regrowth must respect: ``nm=(n, m, axis)`` or ``block=(rows, cols)`` with a pooling."""

    nm: tuple[int, int, int] | None = None
    block: tuple[int, int] | None = None
    pooling: str = "l1"

    def __post_init__(self) -> None:
        if self.nm is not None and self.block is not None:
            raise ConfigError("a regrowth constraint is either N:M or blocks, not both")
        if self.pooling not in BLOCK_POOLING:
            raise ConfigError(f"block pooling should be one of {BLOCK_POOLING}, got {self.pooling!r}")


UNCONSTRAINED = Constraint()


def regrow(
    masks: Mapping[str, np.ndarray],
    weights: Mapping[str, np.ndarray],
    grow_scores: Mapping[str, np.ndarray],
    drop_fraction: float,
    *,
    pooled: bool = False,
    constraint: Constraint = UNCONSTRAINED,
) -> dict[str, LayerUpdate]:
    """One SET/RigL update of several tensors; nonzeros per tensor (or in all, when ``pooled``) unchanged.

    Each tensor drops ``round(drop_fraction * active)`` active weights of smallest ``|w|`` and
    regrows as many inactive ones of highest ``grow_scores`` (``|grad|`` for RigL, random for SET).
    ``pooled=True`` (global scope) drops and grows across all tensors at once, so layers can trade
    weights. Under an N:M constraint every group regrows what it lost; under blocks, whole blocks
    (scored by the pooled ``|w|`` and pooled grow scores) are dropped and grown. A tensor with no
    inactive weight (dense) is left as it is.

    Example::

        updates = regrow({"w": mask}, {"w": weights}, {"w": np.abs(grad)}, 0.3)
        updates["w"].mask.sum() == mask.sum()  # True
    """
    names = list(masks)
    for name in names:
        for what, source in (("weights", weights), ("grow scores", grow_scores)):
            if name not in source:
                raise ConfigError(f"regrow: no {what} for {name!r}")
            if np.shape(source[name]) != np.shape(masks[name]):
                raise ConfigError(
                    f"regrow: {what} of {name!r} have shape {np.shape(source[name])}, the mask has {np.shape(masks[name])}"
                )
    fraction = float(drop_fraction)
    result: dict[str, LayerUpdate] = {}
    sparse = [n for n in names if not np.asarray(masks[n], bool).all()]
    for name in names:
        if name not in sparse:
            mask = np.asarray(masks[name], bool)
            result[name] = LayerUpdate(mask.copy(), 0, 0, np.zeros_like(mask))
    if not sparse:
        return result
    if constraint.nm is not None:
        if pooled:
            raise ConfigError("N:M regrowth works per tensor; use scope='layer'")
        _, m, axis = constraint.nm
        for name in sparse:
            mask = np.asarray(masks[name], bool)
            count = round(fraction * int(mask.sum()))
            new, grown = _drop_and_grow_nm(mask, np.asarray(weights[name]), np.asarray(grow_scores[name]), count, m, axis)
            result[name] = _layer_update(mask, new, grown)
        return result
    if constraint.block is not None:
        block = constraint.block
        units = {n: _pool(masks[n], block, "max") > 0 for n in sparse}
        drop = {n: _pool(weights[n], block, constraint.pooling) for n in sparse}
        grow = {n: _pool(grow_scores[n], block, constraint.pooling) for n in sparse}
    else:
        units = {n: np.asarray(masks[n], bool) for n in sparse}
        drop = {n: np.abs(np.asarray(weights[n], np.float64)) for n in sparse}
        grow = {n: np.asarray(grow_scores[n], np.float64) for n in sparse}
    groups = [sparse] if pooled else [[n] for n in sparse]
    for group in groups:
        joined_mask = np.concatenate([units[n].reshape(-1) for n in group])
        count = round(fraction * int(joined_mask.sum()))
        new, grown = drop_and_grow(
            joined_mask,
            np.concatenate([drop[n].reshape(-1) for n in group]),
            np.concatenate([grow[n].reshape(-1) for n in group]),
            count,
        )
        offset = 0
        for name in group:
            size = units[name].size
            unit_new = new[offset : offset + size].reshape(units[name].shape)
            unit_grown = grown[offset : offset + size].reshape(units[name].shape)
            offset += size
            mask = np.asarray(masks[name], bool)
            if constraint.block is not None:
                shape = tuple(mask.shape)
                unit_new, unit_grown = _expand(unit_new, block, shape), _expand(unit_grown, block, shape)
            result[name] = _layer_update(mask, unit_new, unit_grown)
    return {name: result[name] for name in names}


def _layer_update(before: np.ndarray, after: np.ndarray, grown: np.ndarray) -> LayerUpdate:
    dropped = int((before & ~after).sum() + (before & grown).sum())  # a dropped-and-regrown weight counts as both
    return LayerUpdate(after, dropped, int(grown.sum()), grown)


def turnover(initial: Mapping[str, np.ndarray], current: Mapping[str, np.ndarray]) -> float:
    """Mask turnover: the fraction of the connections active in ``initial`` that are inactive now.

    Example::

        turnover({"w": np.array([True, True, False])}, {"w": np.array([True, False, True])})  # 0.5
    """
    active = sum(int(np.asarray(initial[n], bool).sum()) for n in initial)
    if active == 0:
        return 0.0
    gone = sum(int((np.asarray(initial[n], bool) & ~np.asarray(current[n], bool)).sum()) for n in initial if n in current)
    return gone / active
