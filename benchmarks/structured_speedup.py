"""Does structured pruning make models faster in proportion to the MACs it removes?

For several CNNs and transformers (the zoo's architectures at benchmark size, batch 32), prune
50% of channels with ``prunekit.torch.prune_channels`` (L1 importance) and with Torch-Pruning
(``MetaPruner`` + L1 ``MagnitudeImportance``), then time dense, ours and Torch-Pruning's model
interleaved on the CPU, with all threads and with 1 thread. Also times analysing and pruning a
ResNet-50 (torchvision's layout, random weights) end to end.

    python benchmarks/structured_speedup.py            # a few minutes on 2 cores
    python benchmarks/structured_speedup.py --quick    # fewer rounds, fewer models

Figures (last line, JSON): ``min_speedup_over_macs`` (the worst model's speedup divided by its
MACs ratio; goal >= 0.8), ``resnet50_prune_seconds`` (goal <= ``torch_pruning_resnet50_prune_seconds``,
Torch-Pruning's time in the same run; ``_cpu_seconds`` twins are the process CPU time), and per model
``macs_ratio`` (dense MACs / pruned MACs), ``speedup`` (dense latency / pruned latency),
``torch_pruning_speedup``, and ``speedup_over_macs`` beside ``torch_pruning_speedup_over_macs``
(also as ``_1thread_cpu`` figures). On a shared machine the all-threads figures swing with other
processes' load; the ``_1thread_cpu`` figures (CPU time of the one compute thread) do not, and the
load average before and after is printed. Nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the zoo lives in tests/zoo

import torch  # noqa: E402
from benchmarks._timing import (  # noqa: E402
    malloc_settings,
    paired_speedup,
    pin_malloc_settings,
    time_interleaved,
    torch_threads,
)
from tests.zoo import cnns, main_output, run, sequence  # noqa: E402
from torch import nn  # noqa: E402

from prunekit.torch import count_macs, count_params  # noqa: E402

RATIO = 0.5
BATCH = 32


@dataclass
class Case:
    """A benchmark model: how to build it with inputs, and which layers make the output."""

    name: str
    build: Callable[[], tuple[nn.Module, Any]]
    output_layers: Callable[[nn.Module], list[nn.Module]]
    torch_pruning_options: Callable[[nn.Module], dict[str, Any]] = field(default=lambda model: {})


def _images(size: int = 32) -> torch.Tensor:
    return torch.randn(BATCH, 3, size, size)


# Stage widths follow the CIFAR versions of the real networks (VGG/ResNet-18: 64-256 channels,
# MobileNetV2's first five stages), one block per stage to keep each forward near 0.1 s on one
# core; activations stay below glibc's 32 MiB mmap threshold. Very narrow layers (16-32
# channels) are a poor guide: their convolutions run far from peak and shrink sub-linearly.


def _vgg() -> tuple[nn.Module, Any]:
    return cnns.VGG(cfg=(64, 64, "M", 128, 128, "M", 256, 256, "M")).eval(), _images()


def _resnet() -> tuple[nn.Module, Any]:
    return cnns.ResNet(cnns.BasicBlock, (1, 1, 1), widths=(64, 128, 256), stem=64).eval(), _images()


def _bottleneck() -> tuple[nn.Module, Any]:
    return cnns.ResNet(cnns.Bottleneck, (1, 1, 1), widths=(32, 64, 128), stem=64).eval(), _images()


def _mobilenet() -> tuple[nn.Module, Any]:
    setting = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 2, 2), (6, 96, 1, 1))
    return cnns.MobileNetV2(setting=setting, last_channel=512).eval(), _images()


def _transformer() -> tuple[nn.Module, Any]:
    model = sequence.TransformerClassifier(
        vocab_size=1000, d_model=256, nhead=8, num_layers=2, dim_feedforward=1024, max_len=64, num_classes=10
    )
    return model.eval(), torch.randint(0, 1000, (BATCH, 64))


def _transformer_tp_options(model: nn.Module) -> dict[str, Any]:
    heads = {layer.self_attn: layer.self_attn.num_heads for layer in model.encoder.layers}
    # Torch-Pruning 1.6 annotates unwrapped_parameters as a dict but iterates (param, dim) pairs.
    return {"num_heads": heads, "unwrapped_parameters": [(model.pos_embedding, 2)]}


CASES = [
    Case("vgg", _vgg, lambda m: [m.classifier[-1]]),
    Case("resnet_basic", _resnet, lambda m: [m.fc]),
    Case("resnet_bottleneck", _bottleneck, lambda m: [m.fc]),
    Case("mobilenetv2", _mobilenet, lambda m: [m.classifier[-1]]),
    Case("transformer_encoder", _transformer, lambda m: [m.head], _transformer_tp_options),
]
QUICK_CASES = ("vgg", "resnet_basic", "mobilenetv2", "transformer_encoder")


class ImageNetResNet(cnns.ResNet):
    """torchvision's ResNet: a 7x7 stride-2 stem and a max-pool before the stages."""

    def __init__(self, layers: tuple[int, ...] = (3, 4, 6, 3), num_classes: int = 1000):
        super().__init__(cnns.Bottleneck, layers, widths=(64, 128, 256, 512), stem=64, num_classes=num_classes)
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layers(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


# --- pruning -------------------------------------------------------------------------------


def prune_ours(model: nn.Module, inputs: Any) -> nn.Module:
    """``prunekit.torch.prune_channels`` at 50% with L1 importance (it prunes a copy of ``model``)."""
    from prunekit.torch import prune_channels

    return prune_channels(model, inputs, ratio=RATIO, importance="l1").model


def prune_torch_pruning(model: nn.Module, inputs: Any, case: Case, inplace: bool = False) -> nn.Module:
    """Torch-Pruning's ``MetaPruner`` at 50% with L1 magnitude importance, on a copy unless ``inplace``."""
    import torch_pruning as tp

    pruned = model if inplace else copy.deepcopy(model)
    ignored = {id(layer) for layer in case.output_layers(model)}
    ignored_layers = [layer for layer, original in zip(pruned.modules(), model.modules()) if id(original) in ignored]
    options = case.torch_pruning_options(pruned)
    pruner = tp.pruner.MetaPruner(
        pruned,
        inputs,
        importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=RATIO,
        ignored_layers=ignored_layers,
        **options,
    )
    pruner.step()
    for module in pruned.modules():  # keep nn.MultiheadAttention's head bookkeeping consistent
        if isinstance(module, nn.MultiheadAttention):
            module.head_dim = module.embed_dim // module.num_heads
    return pruned


# --- measuring -----------------------------------------------------------------------------


def _forward(model: nn.Module, inputs: Any) -> Callable[[], object]:
    def call() -> object:
        with torch.inference_mode():
            return run(model, inputs)

    return call


def _check_output_shape(name: str, dense: nn.Module, pruned: nn.Module, inputs: Any) -> None:
    with torch.inference_mode():
        expected = main_output(run(dense, inputs)).shape
        got = main_output(run(pruned, inputs)).shape
    if expected != got:
        raise RuntimeError(f"{name}: pruned output shape {tuple(got)} differs from dense {tuple(expected)}")


def measure_case(case: Case, rounds: int, repeats: int) -> dict[str, Any]:
    """MACs, params and interleaved latency of dense, ours and Torch-Pruning for one model."""
    torch.manual_seed(0)
    dense, inputs = case.build()
    variants: dict[str, nn.Module] = {"dense": dense}
    result: dict[str, Any] = {}
    for label, prune in (
        ("ours", lambda: prune_ours(dense, inputs)),
        ("torch_pruning", lambda: prune_torch_pruning(dense, inputs, case)),
    ):
        try:
            start = time.perf_counter()
            pruned = prune()
            result[f"{label}_prune_seconds"] = time.perf_counter() - start
            _check_output_shape(case.name, dense, pruned, inputs)
            variants[label] = pruned.eval()
        except Exception as exc:  # a failure of one pruner is a result, not the end of the run
            result[f"{label}_error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            traceback.print_exc(limit=3, file=sys.stderr)
    macs = {label: count_macs(model, inputs).total for label, model in variants.items()}
    params = {label: count_params(model) for label, model in variants.items()}
    calls = {label: _forward(model, inputs) for label, model in variants.items()}
    timings = time_interleaved(calls, rounds=rounds, repeats=repeats)
    with torch_threads(1):
        single = time_interleaved(calls, rounds=rounds, repeats=repeats)
    result.update(
        dense_macs=macs["dense"],
        dense_params=params["dense"],
        dense_ms=1e3 * timings["dense"].best,
        dense_ms_1thread=1e3 * single["dense"].best,
    )
    for label in variants.keys() - {"dense"}:
        prefix = "" if label == "ours" else "torch_pruning_"
        result[f"{prefix}macs_ratio"] = macs["dense"] / macs[label]
        result[f"{prefix}params_ratio"] = params["dense"] / params[label]
        result[f"{prefix}speedup"] = timings["dense"].best / timings[label].best
        result[f"{prefix}speedup_median"] = timings["dense"].median / timings[label].median
        result[f"{prefix}speedup_paired"] = paired_speedup(timings["dense"], timings[label])
        result[f"{prefix}speedup_1thread"] = single["dense"].best / single[label].best
        result[f"{prefix}speedup_1thread_cpu"] = single["dense"].cpu_best / single[label].cpu_best
        result[f"{label}_ms"] = 1e3 * timings[label].best
    return result


def time_resnet50_pruning(attempts: int = 2) -> dict[str, Any]:
    """Seconds to analyse and prune a ResNet-50 at 50% (best of ``attempts``), ours and Torch-Pruning's.

    Each is timed as a user calls it: ``prune_channels`` copies the model itself (and verifies
    the result), Torch-Pruning prunes in place, so it gets a copy made outside the timed region.
    Wall-clock and process CPU seconds are both recorded (CPU time is what a quiet machine's
    wall time would be for this mostly single-threaded work).
    """
    torch.manual_seed(0)
    model = ImageNetResNet().eval()
    inputs = torch.randn(1, 3, 224, 224)
    case = Case("resnet50", lambda: (model, inputs), lambda m: [m.fc])
    result: dict[str, Any] = {"params": count_params(model), "macs": count_macs(model, inputs).total}
    pruners = {
        "ours": lambda m: prune_ours(m, inputs),
        "torch_pruning": lambda m: prune_torch_pruning(m, inputs, case, inplace=True),
    }
    wall: dict[str, list[float]] = {label: [] for label in pruners}
    cpu: dict[str, list[float]] = {label: [] for label in pruners}
    for _ in range(attempts):  # interleaved, ours then Torch-Pruning, so both see the same load
        for label, prune in pruners.items():
            if f"{label}_error" in result:
                continue
            try:
                victim = copy.deepcopy(model)  # copied outside the timed region
                start, start_cpu = time.perf_counter(), time.process_time()
                pruned = prune(victim)
                cpu[label].append(time.process_time() - start_cpu)
                wall[label].append(time.perf_counter() - start)
                result[f"{label}_macs_ratio"] = result["macs"] / count_macs(pruned, inputs).total
            except Exception as exc:
                result[f"{label}_error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
                traceback.print_exc(limit=3, file=sys.stderr)
    for label in pruners:
        if wall[label]:
            result[f"{label}_seconds"] = min(wall[label])
            result[f"{label}_cpu_seconds"] = min(cpu[label])
    return result


# --- reporting -----------------------------------------------------------------------------


def _fmt(value: Any, spec: str = ".2f") -> str:
    return format(value, spec) if isinstance(value, (int, float)) else "-"


def _over_macs(row: dict[str, Any], key: str, prefix: str = "") -> float | None:
    speedup, macs = row.get(f"{prefix}{key}"), row.get(f"{prefix}macs_ratio")
    return speedup / macs if speedup is not None and macs else None


def print_table(models: dict[str, dict[str, Any]], resnet50: dict[str, Any], settings: dict[str, Any]) -> None:
    """A readable summary: one row per model and pruner, speedups and speedup / MACs ratio."""
    columns = ("speedup", "speedup_1thread", "speedup_1thread_cpu")
    header = (
        f"{'model':<20} {'pruner':<14} {'dense ms':>8} {'MACs x':>7} {'params x':>8} "
        f"{'speedup':>8} {'1-thread':>8} {'1-thr CPU':>9} | {'spd/MACs':>8} {'1-thread':>8} {'1-thr CPU':>9}"
    )
    print(
        f"\nStructured pruning at {RATIO:.0%} of channels, batch {BATCH}, CPU, {settings['threads']} threads "
        f"and 1 thread; latency = min of per-round medians; 'CPU' = thread CPU time (immune to other processes)"
    )
    print(header)
    print("-" * len(header))
    for name, row in models.items():
        for pruner, prefix in (("prunekit", ""), ("Torch-Pruning", "torch_pruning_")):
            speedups = " ".join(f"{_fmt(row.get(prefix + key)):>{w}}" for key, w in zip(columns, (8, 8, 9)))
            ratios = " ".join(f"{_fmt(_over_macs(row, key, prefix)):>{w}}" for key, w in zip(columns, (8, 8, 9)))
            dense = _fmt(row.get("dense_ms"), ".1f") if prefix == "" else ""
            print(
                f"{name if prefix == '' else '':<20} {pruner:<14} {dense:>8} {_fmt(row.get(prefix + 'macs_ratio')):>7} "
                f"{_fmt(row.get(prefix + 'params_ratio')):>8} {speedups} | {ratios}"
            )
        for key in ("ours_error", "torch_pruning_error"):
            if key in row:
                print(f"{'':<20} {key}: {row[key]}")
    print(
        f"\nResNet-50 ({resnet50['params'] / 1e6:.1f}M params), analyse + prune 50%: prunekit "
        f"{_fmt(resnet50.get('ours_seconds'))} s wall / {_fmt(resnet50.get('ours_cpu_seconds'))} s CPU, "
        f"Torch-Pruning {_fmt(resnet50.get('torch_pruning_seconds'))} s wall / "
        f"{_fmt(resnet50.get('torch_pruning_cpu_seconds'))} s CPU"
    )
    for key in ("ours_error", "torch_pruning_error"):
        if key in resnet50:
            print(f"  {key}: {resnet50[key]}")
    print(f"malloc: {settings['malloc']}; load average before/after: {settings['load_average']}\n")


def _worst(models: dict[str, dict[str, Any]], key: str) -> float | None:
    ratios = [r for r in (_over_macs(row, key) for row in models.values()) if r is not None]
    return min(ratios) if ratios else None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the table and the JSON line; returns the JSON figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer models and rounds (about a minute)")
    parser.add_argument(
        "--system-malloc",
        action="store_true",
        help="keep the allocator settings of the environment instead of pinning glibc's thresholds",
    )
    args = parser.parse_args(argv)
    if not args.system_malloc:
        pin_malloc_settings()
    rounds, repeats = (4, 3) if args.quick else (8, 5)
    cases = [case for case in CASES if not args.quick or case.name in QUICK_CASES]
    settings: dict[str, Any] = {
        "threads": torch.get_num_threads(),
        "malloc": malloc_settings(),
        "torch": torch.__version__,
        "batch": BATCH,
        "ratio": RATIO,
        "rounds": rounds,
        "repeats": repeats,
        "load_average": [round(os.getloadavg()[0], 2)],
    }

    models = {}
    for case in cases:
        print(f"measuring {case.name} ...", file=sys.stderr, flush=True)
        models[case.name] = measure_case(case, rounds, repeats)
    print("timing ResNet-50 analysis and pruning ...", file=sys.stderr, flush=True)
    resnet50 = time_resnet50_pruning(attempts=1 if args.quick else 3)
    settings["load_average"].append(round(os.getloadavg()[0], 2))
    print_table(models, resnet50, settings)

    figures = {
        "benchmark": "structured_speedup",
        "min_speedup_over_macs": _worst(models, "speedup"),
        "min_speedup_over_macs_1thread": _worst(models, "speedup_1thread"),
        "min_speedup_over_macs_1thread_cpu": _worst(models, "speedup_1thread_cpu"),
        "resnet50_prune_seconds": resnet50.get("ours_seconds"),
        "resnet50_prune_cpu_seconds": resnet50.get("ours_cpu_seconds"),
        "resnet50_torch_pruning_seconds": resnet50.get("torch_pruning_seconds"),
        "torch_pruning_resnet50_prune_seconds": resnet50.get("torch_pruning_seconds"),
        "torch_pruning_resnet50_prune_cpu_seconds": resnet50.get("torch_pruning_cpu_seconds"),
        "models": {
            name: {
                "macs_ratio": row.get("macs_ratio"),
                "speedup": row.get("speedup"),
                "torch_pruning_speedup": row.get("torch_pruning_speedup"),
                "speedup_over_macs": _over_macs(row, "speedup"),
                "torch_pruning_speedup_over_macs": _over_macs(row, "speedup", "torch_pruning_"),
                "speedup_over_macs_1thread_cpu": _over_macs(row, "speedup_1thread_cpu"),
                "torch_pruning_speedup_over_macs_1thread_cpu": _over_macs(row, "speedup_1thread_cpu", "torch_pruning_"),
                **row,
            }
            for name, row in models.items()
        },
        "resnet50": resnet50,
        "settings": settings,
    }
    figures = _rounded(figures)
    print(json.dumps(figures))
    return figures


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {key: _rounded(item) for key, item in value.items()}
    return value


if __name__ == "__main__":
    main()
