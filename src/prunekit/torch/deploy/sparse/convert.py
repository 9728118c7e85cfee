"""Convert a pruned model's Linear and Conv2d layers to sparse kernels, choosing per layer by measuring.

For each candidate layer :func:`sparsify` records the layer's real input at the deployment batch
(one forward pass of ``example_input``), packs the weight in the layout its zero pattern fits
(:func:`~prunekit.torch.deploy.sparse.formats.detect_layout`), times the dense layer and the
sparse one on that input (interleaved, median of ``repeats``), and swaps the layer only when the
sparse kernel is faster. Every decision and its reason is in the returned :class:`SparseReport`.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.torch.deploy.sparse import kernels
from prunekit.torch.deploy.sparse.formats import Layout, detect_layout
from prunekit.torch.deploy.sparse.layers import SparseConv2d, SparseLinear

#: Times candidate calls: ``{name: fn}`` and a repeat count in, ``{name: ms}`` out. Injectable, so
#: tests can decide which kernel "is faster" without real timings.
Timer = Callable[[Mapping[str, Callable[[], Any]], int], dict[str, float]]
_ROUNDS = 3


@dataclass
class LayerChoice:
    """What :func:`sparsify` decided for one layer, with the times it measured (ms) and why."""

    name: str
    kind: str  # "Linear" or "Conv2d"
    shape: tuple[int, ...]
    sparsity: float
    layout: str  # "csr", "bsr 8x8", "2:4", "... int8", or "-" when none was tried
    dense_ms: float | None
    sparse_ms: float | None
    sparse: bool
    reason: str

    @property
    def speedup(self) -> float | None:
        if self.dense_ms is None or self.sparse_ms is None or self.sparse_ms <= 0:
            return None
        return self.dense_ms / self.sparse_ms


@dataclass
class SparseReport:
    """Per-layer choices of :func:`sparsify` plus end-to-end latency of the dense and the converted model."""

    layers: list[LayerChoice] = field(default_factory=list)
    dense_ms: float | None = None
    sparse_ms: float | None = None
    threads: int = 1
    kernel_backend: str = "numba" if kernels.HAVE_NUMBA else "torch"

    @property
    def speedup(self) -> float | None:
        return self.dense_ms / self.sparse_ms if self.dense_ms and self.sparse_ms else None

    def to_json(self) -> dict[str, Any]:
        """Plain data for reports: every layer's choice and the end-to-end figures."""
        return {
            "threads": self.threads,
            "kernel_backend": self.kernel_backend,
            "dense_ms": self.dense_ms,
            "sparse_ms": self.sparse_ms,
            "speedup": self.speedup,
            "layers": [asdict(layer) | {"speedup": layer.speedup} for layer in self.layers],
        }

    def table(self) -> str:
        """A plain-text table: layer, shape, sparsity, layout, dense/sparse ms, choice and reason."""
        lines = [f"{'layer':<28} {'shape':<14} {'sparsity':>8} {'layout':<10} {'dense ms':>9} {'sparse ms':>9}  choice"]
        for c in self.layers:
            dense = f"{c.dense_ms:9.3f}" if c.dense_ms is not None else f"{'-':>9}"
            sparse = f"{c.sparse_ms:9.3f}" if c.sparse_ms is not None else f"{'-':>9}"
            shape = "x".join(str(d) for d in c.shape)
            lines.append(
                f"{c.name:<28} {shape:<14} {c.sparsity:8.3f} {c.layout:<10} {dense} {sparse}  "
                f"{'sparse' if c.sparse else 'dense'}: {c.reason}"
            )
        if self.dense_ms and self.sparse_ms:
            lines.append(f"end to end: dense {self.dense_ms:.3f} ms, sparse {self.sparse_ms:.3f} ms ({self.speedup:.2f}x)")
        return "\n".join(lines)


def time_call(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall time of ``fn()`` in ms over ``repeats`` runs (after one warm-up)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


def _time_pair(dense: Callable[[], Any], sparse: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """Milliseconds of two calls measured interleaved (see :func:`time_candidates`)."""
    times = time_candidates({"dense": dense, "sparse": sparse}, repeats)
    return times["dense"], times["sparse"]


def time_candidates(candidates: Mapping[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Each call's best per-round median in ms, over 3 rounds of ``repeats`` interleaved calls
    (A B C A B C ...), so drift hits every candidate alike and a burst of load on a shared machine
    spoils one round, not the choice."""
    for fn in candidates.values():
        fn()
    best = dict.fromkeys(candidates, float("inf"))
    for _ in range(_ROUNDS):
        samples: dict[str, list[float]] = {name: [] for name in candidates}
        for _ in range(repeats):
            for name, fn in candidates.items():
                start = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - start)
        for name, values in samples.items():
            best[name] = min(best[name], float(np.median(values)) * 1e3)
    return best


def choose_kernel(
    dense: nn.Module, options: Mapping[str, nn.Module], x: torch.Tensor, repeats: int, timer: Timer
) -> tuple[str, dict[str, float]]:
    """The fastest of ``options`` (sparse layouts by name) on input ``x`` and the ms of every candidate
    and of ``dense`` (under the key ``"dense"``)."""
    with torch.no_grad():
        times = timer({"dense": lambda: dense(x)} | {name: (lambda m=m: m(x)) for name, m in options.items()}, repeats)
    return min(options, key=lambda name: times[name]), times


def timed_layouts(layout: Layout) -> list[Layout]:
    """The layouts a layer is timed in: the one its zeros fit and, for blocks or N:M, CSR too
    (whose kernels can be faster at the deployment batch)."""
    return [layout] if layout.kind == "csr" else [layout, Layout("csr", int8=layout.int8)]


def _verdict(times: dict[str, float], best: str) -> str:
    """``"3.10x faster"``, with the other sparse layouts' ms when several were tried."""
    others = ", ".join(f"{name} {ms:.3f} ms" for name, ms in times.items() if name not in ("dense", best))
    return f"{times['dense'] / times[best]:.2f}x faster" + (f" (also tried {others})" if others else "")


def _candidates(model: nn.Module, names: set[str] | None) -> dict[str, nn.Module]:
    found = {}
    for name, module in model.named_modules():
        if names is not None and name not in names:
            continue
        if type(module) is nn.Linear or (
            type(module) is nn.Conv2d and module.groups == 1 and not isinstance(module.padding, str)
        ):
            found[name] = module
    if names is not None:
        missing = sorted(names - set(found))
        if missing:
            raise ConfigError(
                f"layers {missing[:5]} are not Linear or groups=1 Conv2d layers of the model; "
                "name layers as model.named_modules() does"
            )
    return found


def _capture_inputs(model: nn.Module, layers: dict[str, nn.Module], example_input: Any) -> dict[str, torch.Tensor]:
    captured: dict[str, torch.Tensor] = {}

    def hook(name: str) -> Callable[..., None]:
        def record(module: nn.Module, args: tuple[Any, ...]) -> None:
            captured.setdefault(name, args[0].detach())

        return record

    handles = [module.register_forward_pre_hook(hook(name)) for name, module in layers.items()]
    try:
        with torch.no_grad():
            _run(model, example_input)
    finally:
        for handle in handles:
            handle.remove()
    return captured


def _run(model: nn.Module, example_input: Any) -> Any:
    if isinstance(example_input, dict):
        return model(**example_input)
    if isinstance(example_input, tuple):
        return model(*example_input)
    return model(example_input)


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def sparsify(
    model: nn.Module,
    example_input: Any,
    *,
    min_sparsity: float = 0.5,
    layers: list[str] | None = None,
    threads: int | None = None,
    repeats: int = 10,
    force: bool = False,
    inplace: bool = False,
    timer: Timer | None = None,
) -> tuple[nn.Module, SparseReport]:
    """A copy of ``model`` whose pruned Linear/Conv2d layers run sparse kernels where that is faster.

    ``example_input`` is a batch at the deployment size (a tensor, a tuple of positional
    arguments or a dict of keyword arguments): each layer is timed on its own input from that
    batch. Layers sparser than ``min_sparsity`` are packed in the layout their zeros fit (CSR,
    BSR, N:M, int8 for per-channel-quantized weights) and kept sparse when faster than dense
    (``force=True`` keeps every packed layer sparse, e.g. for tests). ``layers`` restricts the
    candidates by module name; ``threads`` sets the thread count measured and run with. A block- or
    N:M-sparse layer is also timed as CSR, and the fastest layout is kept. ``timer`` replaces the
    measurement (:data:`Timer`, default :func:`time_candidates`).

    Example::

        fast, report = sparsify(pruned_mlp, torch.randn(8, 784))
        print(report.table())
    """
    if not 0.0 <= min_sparsity < 1.0:
        raise ConfigError(f"min_sparsity should be in [0, 1), got {min_sparsity}")
    if repeats < 1:
        raise ConfigError(f"repeats should be >= 1, got {repeats}")
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"threads should be >= 1, got {threads}")
        kernels.set_threads(threads)
    target = model if inplace else copy.deepcopy(model)
    target.eval()
    candidates = _candidates(target, set(layers) if layers is not None else None)
    try:
        inputs = _capture_inputs(target, candidates, example_input)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ConfigError(f"example_input does not run through the model: {exc}") from None
    report = SparseReport(threads=torch.get_num_threads())
    for name, module in candidates.items():
        report.layers.append(
            _choose(target, name, module, inputs.get(name), min_sparsity, repeats, force, timer or time_candidates)
        )
    with torch.no_grad():
        report.dense_ms, report.sparse_ms = _time_pair(
            lambda: _run(model, example_input), lambda: _run(target, example_input), repeats
        )
    return target, report


def _choose(
    model: nn.Module,
    name: str,
    module: nn.Module,
    x: torch.Tensor | None,
    min_sparsity: float,
    repeats: int,
    force: bool,
    timer: Timer,
) -> LayerChoice:
    weight = module.weight.detach().float().cpu().numpy()
    kind = type(module).__name__
    shape = tuple(weight.shape)
    sparsity = 1.0 - np.count_nonzero(weight) / weight.size
    if x is None:
        return LayerChoice(name, kind, shape, sparsity, "-", None, None, False, "not reached by example_input")
    if sparsity < min_sparsity:
        reason = f"sparsity {sparsity:.2f} is below min_sparsity {min_sparsity:.2f}"
        return LayerChoice(name, kind, shape, sparsity, "-", None, None, False, reason)
    layout = detect_layout(weight.reshape(weight.shape[0], -1))
    options: dict[str, nn.Module] = {}
    for candidate in timed_layouts(layout):
        if isinstance(module, nn.Conv2d):
            conv = SparseConv2d.from_conv(module, candidate)
            options[candidate.describe() + ("" if conv.pointwise else " im2col")] = conv
        else:
            options[candidate.describe()] = SparseLinear.from_linear(module, candidate)
    best, times = choose_kernel(module, options, x, repeats, timer)
    dense_ms, sparse_ms = times["dense"], times[best]
    if sparse_ms < dense_ms or force:
        _set_module(model, name, options[best])
        reason = f"forced sparse (measured {dense_ms / sparse_ms:.2f}x)" if sparse_ms >= dense_ms else _verdict(times, best)
        return LayerChoice(name, kind, shape, sparsity, best, dense_ms, sparse_ms, True, reason)
    reason = f"sparse kernel not faster at this batch ({sparse_ms:.3f} ms vs {dense_ms:.3f} ms dense)"
    return LayerChoice(name, kind, shape, sparsity, best, dense_ms, sparse_ms, False, reason)


def sparse_latency_report(
    model: nn.Module, example_input: Any, *, min_sparsity: float = 0.5, repeats: int = 10
) -> SparseReport | None:
    """Dense vs sparse-runtime latency per layer and end to end (what ``prunekit inspect --latency`` shows),
    or None when no Linear/Conv2d layer is at least ``min_sparsity`` sparse (nothing would run sparse).

    Example::

        report = sparse_latency_report(pruned, torch.randn(1, 784))
        print(report.table() if report else "dense model")
    """
    layers = _candidates(model, None)
    if not any(float((m.weight == 0).float().mean()) >= min_sparsity for m in layers.values()):
        return None
    return sparsify(model, example_input, min_sparsity=min_sparsity, repeats=repeats)[1]
