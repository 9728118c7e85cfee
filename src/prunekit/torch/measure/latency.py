"""Latency and peak inference memory of a PyTorch model, on CPU and (when present) CUDA.

Latency: ``warmup`` untimed runs, then ``repeats`` timed runs per batch size and device; the
report keeps the median and the 90th percentile in milliseconds. CUDA runs are synchronised
before and after each timed call, so the figure is the kernel time users wait for.
:func:`latency_ratio` times two models alternately, so the drift of a shared machine cancels in
their ratio: what a latency budget is measured with.

Peak memory: on CUDA, ``torch.cuda.max_memory_allocated`` around one forward pass. On CPU, a
dispatch mode follows every tensor the forward pass allocates and frees, so the figure is the
peak of live tensor bytes (weights and buffers plus activations alive at the same time): the
memory the model needs, independent of the allocator's caching and of the rest of the process.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from prunekit.core.records import LatencyResult, MemoryResult
from prunekit.errors import ConfigError
from prunekit.torch.structured.tracing import ExampleInputs, call_model


def available_devices() -> list[str]:
    """``["cpu"]`` plus ``"cuda"`` when a CUDA device is present.

    Example::

        available_devices()  # ["cpu"] on a CPU-only machine
    """
    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


def _batch(sample_shape: Sequence[int], batch_size: int, device: str) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn((batch_size, *sample_shape), generator=generator).to(device)


def _check_shape(sample_shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(sample_shape)
    if not shape or not all(isinstance(d, int) and d > 0 for d in shape):
        raise ConfigError(f"sample_shape should be positive integers without the batch dim, e.g. (1, 8, 8); got {sample_shape!r}")
    return shape


def _check_devices(devices: Sequence[str] | None) -> list[str]:
    devices = list(devices) if devices is not None else available_devices()
    for device in devices:
        if device not in ("cpu", "cuda"):
            raise ConfigError(f"devices should be 'cpu' or 'cuda', got {device!r}")
        if device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("devices include 'cuda' but no CUDA device is available; use devices=['cpu']")
    return devices


def _check_batches(batch_sizes: Sequence[int]) -> list[int]:
    sizes = list(batch_sizes)
    if not sizes or not all(isinstance(b, int) and b > 0 for b in sizes):
        raise ConfigError(f"batch_sizes should be positive integers, got {batch_sizes!r}")
    return sizes


def measure_latency(
    model: nn.Module,
    sample_shape: Sequence[int],
    batch_sizes: Sequence[int] = (1, 32),
    *,
    devices: Sequence[str] | None = None,
    warmup: int = 5,
    repeats: int = 30,
    threads: int | None = None,
) -> list[LatencyResult]:
    """Time ``model`` in eval mode under ``torch.inference_mode``: median and p90 per device and batch size.

    ``sample_shape`` is one input's shape without the batch dimension; inputs are seeded random
    normals. ``devices`` defaults to CPU plus CUDA when present; ``threads`` sets torch's intra-op
    threads for the measurement (restored afterwards). The model is moved back to its device.

    Example::

        results = measure_latency(DigitsCNN(), (1, 8, 8), batch_sizes=(1, 64))
        results[0].median_ms, results[0].p90_ms
    """
    shape = _check_shape(sample_shape)
    sizes = _check_batches(batch_sizes)
    devices = _check_devices(devices)
    if not isinstance(repeats, int) or repeats < 1 or not isinstance(warmup, int) or warmup < 0:
        raise ConfigError(f"repeats should be >= 1 and warmup >= 0, got repeats={repeats!r}, warmup={warmup!r}")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"threads should be a positive integer or None, got {threads!r}")
    original_device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    previous_threads = torch.get_num_threads()
    results: list[LatencyResult] = []
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        model.eval()
        for device in devices:
            model.to(device)
            for size in sizes:
                results.append(_time_one(model, _batch(shape, size, device), device, warmup, repeats))
    finally:
        torch.set_num_threads(previous_threads)
        model.to(original_device)
        model.train(was_training)
    return results


def _time_one(model: nn.Module, batch: torch.Tensor, device: str, warmup: int, repeats: int) -> LatencyResult:
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    samples = []
    with torch.inference_mode():
        for _ in range(warmup):
            model(batch)
        sync()
        for _ in range(repeats):
            start = time.perf_counter()
            model(batch)
            sync()
            samples.append((time.perf_counter() - start) * 1e3)
    return LatencyResult(
        device, len(batch), float(np.median(samples)), float(np.percentile(samples, 90)), repeats, torch.get_num_threads()
    )


def latency_ratio(
    model: nn.Module,
    reference: nn.Module,
    example_inputs: ExampleInputs,
    *,
    rounds: int = 30,
    warmup: int = 3,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    """Latency of ``model`` divided by that of ``reference`` on the same inputs (0.5: twice as fast).

    The two run alternately, ``rounds`` times each after ``warmup`` untimed calls, in eval mode
    under ``torch.inference_mode`` on ``model``'s device (CUDA synchronised around every call);
    the result is the median of the per-round ratios, so load that comes and goes on a shared
    machine affects both sides of each ratio alike. ``example_inputs`` is a tensor, a tuple of
    positional inputs or a dict of keyword inputs; its batch size is the one that is timed, with
    torch's current intra-op thread count (set it to the deployment's, one per free core). ``clock``
    reads the time in seconds (a deterministic cost model in tests).

    Example::

        latency_ratio(pruned, dense, torch.zeros(64, 1, 8, 8))  # e.g. 0.42
    """
    if not isinstance(rounds, int) or rounds < 1 or not isinstance(warmup, int) or warmup < 0:
        raise ConfigError(f"rounds should be >= 1 and warmup >= 0, got rounds={rounds!r}, warmup={warmup!r}")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    inputs = pytree.tree_map_only(torch.Tensor, lambda tensor: tensor.to(device), example_inputs)
    states = [(m, m.training, next((p.device for p in m.parameters()), device)) for m in (model, reference)]
    ratios = []
    try:
        for m in (model, reference):
            m.eval().to(device)
        with torch.inference_mode():
            for _ in range(warmup):
                call_model(model, inputs)
                call_model(reference, inputs)
            for _ in range(rounds):
                seconds = []
                for m in (model, reference):
                    sync()
                    start = clock()
                    call_model(m, inputs)
                    sync()
                    seconds.append(clock() - start)
                ratios.append(seconds[0] / max(seconds[1], 1e-12))
    finally:
        for m, training, original in states:
            m.to(original).train(training)
    return float(np.median(ratios))


class _LiveBytes(TorchDispatchMode):
    """Tracks bytes of tensor storages created during a forward pass, freed when their tensors die."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, int] = {}
        self.current = 0
        self.peak = 0

    def _release(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, (tuple, list)) else (out,):
            if not isinstance(tensor, torch.Tensor) or tensor._base is not None:
                continue
            storage = tensor.untyped_storage()
            key = storage.data_ptr()
            if key in self.live or storage.nbytes() == 0:
                continue
            self.live[key] = storage.nbytes()
            self.current += storage.nbytes()
            self.peak = max(self.peak, self.current)
            weakref.finalize(tensor, self._release, key)
        return out


def _weight_bytes(model: nn.Module) -> int:
    seen: set[int] = set()
    total = 0
    for tensor in [*model.parameters(), *model.buffers()]:
        if id(tensor) not in seen:
            seen.add(id(tensor))
            total += tensor.numel() * tensor.element_size()
    return total


def measure_peak_memory(
    model: nn.Module, sample_shape: Sequence[int], batch_size: int = 1, *, device: str = "cpu"
) -> MemoryResult:
    """Peak memory of one inference forward pass: weights and buffers plus the activations alive at the peak.

    On CPU it counts live tensor bytes (input included); on CUDA it reads the allocator's peak.

    Example::

        memory = measure_peak_memory(DigitsCNN(), (1, 8, 8), batch_size=64)
        memory.peak_bytes, memory.peak_activation_bytes
    """
    shape = _check_shape(sample_shape)
    _check_batches([batch_size])
    _check_devices([device])
    original_device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    weights = _weight_bytes(model)
    try:
        model.eval().to(device)
        if device == "cuda":
            batch = _batch(shape, batch_size, device)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            with torch.inference_mode():
                model(batch)
            torch.cuda.synchronize()
            activations = torch.cuda.max_memory_allocated() - base + batch.numel() * batch.element_size()
        else:
            tracker = _LiveBytes()
            with torch.inference_mode(), tracker:
                batch = torch.randn((batch_size, *shape), generator=torch.Generator().manual_seed(0))
                output = model(batch)
                del output, batch
            activations = tracker.peak
    finally:
        model.to(original_device)
        model.train(was_training)
    return MemoryResult(device, batch_size, weights, int(activations), int(weights + activations))
