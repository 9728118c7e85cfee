"""Benchmark: int8 static vs fp32 in ONNX Runtime (CPU), and compact sparse files vs the dense file.

Two models, each exported to ONNX in fp32 and quantized to int8 (static, per-channel weights,
calibrated activations) by prunekit:

* the digits CNN (prunekit.torch.DigitsCNN), trained on the bundled digits, pruned to 90% by
  global magnitude with prunekit's Pruner and fine-tuned; accuracy of every file on the test set;
* a transformer MLP block (Linear 256->1024, GELU, Linear 1024->256) at batch 64 x seq 32,
  random weights pruned to 90%; its int8 error is reported as SQNR against fp32.

Latency: batch 64, fp32 and int8 sessions timed call by call, interleaved (A B A B ..., order
rotated every round), median over all calls and speedup as the median of per-round ratios;
with ONNX Runtime's default threads and with 1 thread. glibc malloc thresholds are pinned
(see _timing.py). The compact ratios are the dense model's safetensors file size divided by
the compact file size (``save_compressed``, fp32 and int8) of the 90%-sparse digits CNN; the int8 file
is loaded back (``load_compressed``) and its test accuracy reported beside the pruned model's.

Run: ``python benchmarks/quantization.py`` (``--quick`` for a smoke run). The last line is JSON.
Goal (read, never asserted): int8 static >= 1.5x faster than fp32 at batch 64.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import malloc_settings, paired_speedup, pin_malloc_settings, time_interleaved  # noqa: E402

from prunekit.artifacts.onnx_artifact import file_sizes, onnx_accuracy  # noqa: E402
from prunekit.artifacts.ort import session  # noqa: E402
from prunekit.data import load_digits  # noqa: E402
from prunekit.torch import (  # noqa: E402
    DigitsCNN,
    Pruner,
    export_onnx,
    fit,
    load_compressed,
    make_loader,
    quantize_onnx,
    save_compressed,
)
from prunekit.torch.backend import accuracy  # noqa: E402

SPARSITY = 0.9


class MLPBlock(nn.Module):
    """The feed-forward block of a transformer layer: Linear(d, 4d) -> GELU -> Linear(4d, d)."""

    def __init__(self, d_model: int = 256, d_hidden: int = 1024):
        super().__init__()
        self.up = nn.Linear(d_model, d_hidden)
        self.act = nn.GELU()
        self.down = nn.Linear(d_hidden, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.act(self.up(x)))


def _digits_models(epochs: int) -> tuple[DigitsCNN, DigitsCNN]:
    split = load_digits()
    loader = make_loader(split.x_train, split.y_train, batch_size=64, seed=0)
    torch.manual_seed(0)
    dense = DigitsCNN()
    fit(dense, loader, epochs=epochs, lr=3e-3, progress=False)
    pruned = copy.deepcopy(dense)
    pruner = Pruner(pruned, SPARSITY, scope="global")
    pruner.prune()
    fit(pruned, loader, epochs=max(1, epochs // 2), lr=3e-3, pruner=pruner, progress=False)
    pruner.strip()
    return dense.eval(), pruned.eval()


def _mlp_model() -> MLPBlock:
    torch.manual_seed(0)
    model = MLPBlock().eval()
    Pruner(model, SPARSITY, scope="layer").prune()
    return model


def _timings(fp32: Path, int8: Path, x: np.ndarray, threads: int | None, rounds: int, repeats: int) -> dict:
    sessions = {"fp32": session(fp32, threads), "int8": session(int8, threads)}
    feeds = {name: {s.get_inputs()[0].name: x} for name, s in sessions.items()}
    variants = {name: (lambda s=s, f=feeds[name]: s.run(None, f)) for name, s in sessions.items()}
    timings = time_interleaved(variants, rounds=rounds, repeats=repeats, warmup=3)
    return {
        "fp32_ms": timings["fp32"].median * 1e3,
        "int8_ms": timings["int8"].median * 1e3,
        "speedup": paired_speedup(timings["fp32"], timings["int8"]),
    }


def _sqnr_db(reference: np.ndarray, approx: np.ndarray) -> float:
    noise = float(np.sum((reference - approx) ** 2))
    return float("inf") if noise == 0 else 10 * np.log10(float(np.sum(reference**2)) / noise)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer epochs and timing rounds (smoke run)")
    args = parser.parse_args()
    epochs, rounds, repeats = (2, 4, 5) if args.quick else (8, 12, 15)
    work = Path(tempfile.mkdtemp(prefix="prunekit-bench-quant-"))
    split = load_digits()

    dense, pruned = _digits_models(epochs)
    cnn_fp32 = export_onnx(pruned, torch.from_numpy(split.x_val[:2]), work / "cnn.onnx").path
    cnn_int8 = quantize_onnx(cnn_fp32, work / "cnn.int8.onnx", "static", split.x_val).path
    from safetensors.torch import save_file

    save_file(dense.state_dict(), str(work / "dense.safetensors"))
    save_compressed(pruned, work / "cnn.compact-fp32.safetensors", dtype="fp32")
    save_compressed(pruned, work / "cnn.compact-int8.safetensors", dtype="int8")
    dense_size = os.path.getsize(work / "dense.safetensors")

    mlp = _mlp_model()
    tokens = np.random.default_rng(0).standard_normal((64, 32, 256)).astype(np.float32)
    calibration = np.random.default_rng(1).standard_normal((256, 32, 256)).astype(np.float32)
    mlp_fp32 = export_onnx(mlp, torch.from_numpy(tokens[:2]), work / "mlp.onnx").path
    mlp_int8 = quantize_onnx(mlp_fp32, work / "mlp.int8.onnx", "static", calibration).path
    save_file(mlp.state_dict(), str(work / "mlp.safetensors"))
    save_compressed(mlp, work / "mlp.compact-int8.safetensors", dtype="int8")

    x64 = np.ascontiguousarray(np.resize(split.x_test, (64, 1, 8, 8)))
    cnn_default = _timings(cnn_fp32, cnn_int8, x64, None, rounds, repeats)
    cnn_single = _timings(cnn_fp32, cnn_int8, x64, 1, rounds, repeats)
    mlp_default = _timings(mlp_fp32, mlp_int8, tokens, None, rounds, max(2, repeats // 3))
    mlp_single = _timings(mlp_fp32, mlp_int8, tokens, 1, rounds, max(2, repeats // 3))

    acc_fp32 = onnx_accuracy(cnn_fp32, split.x_test, split.y_test)
    acc_int8 = onnx_accuracy(cnn_int8, split.x_test, split.y_test)
    x_test, y_test = torch.from_numpy(split.x_test), torch.from_numpy(split.y_test)
    acc_pruned = accuracy(pruned, x_test, y_test)
    acc_compact_int8 = accuracy(load_compressed(work / "cnn.compact-int8.safetensors", DigitsCNN).eval(), x_test, y_test)
    mlp_out = {name: session(path).run(None, {"input": tokens})[0] for name, path in (("fp32", mlp_fp32), ("int8", mlp_int8))}
    sqnr = _sqnr_db(mlp_out["fp32"], mlp_out["int8"])
    sizes = {
        name: file_sizes(work / name)
        for name in (
            "dense.safetensors",
            "cnn.onnx",
            "cnn.int8.onnx",
            "cnn.compact-fp32.safetensors",
            "cnn.compact-int8.safetensors",
            "mlp.safetensors",
            "mlp.onnx",
            "mlp.int8.onnx",
            "mlp.compact-int8.safetensors",
        )
    }
    ratio_fp32 = dense_size / sizes["cnn.compact-fp32.safetensors"][0]
    ratio_int8 = dense_size / sizes["cnn.compact-int8.safetensors"][0]

    from rich.console import Console
    from rich.table import Table

    console = Console()
    latency = Table(title="ONNX Runtime CPU latency at batch 64 (median ms; speedup = median of per-round ratios)")
    for column in ("model", "threads", "fp32 ms", "int8 static ms", "speedup"):
        latency.add_column(column, justify="left" if column == "model" else "right")
    for model, threads, t in (
        ("digits CNN (90% sparse)", "default", cnn_default),
        ("digits CNN (90% sparse)", "1", cnn_single),
        ("MLP block 256-1024-256, 64x32 tokens", "default", mlp_default),
        ("MLP block 256-1024-256, 64x32 tokens", "1", mlp_single),
    ):
        latency.add_row(model, threads, f"{t['fp32_ms']:.3f}", f"{t['int8_ms']:.3f}", f"{t['speedup']:.2f}x")
    console.print(latency)
    files = Table(title="Files (KiB) and quality")
    for column in ("file", "size KiB", "gzip KiB", "dense / this"):
        files.add_column(column, justify="left" if column == "file" else "right")
    for name, (raw, packed) in sizes.items():
        reference = sizes["mlp.safetensors"][0] if name.startswith("mlp") else dense_size
        files.add_row(name, f"{raw / 1024:.1f}", f"{packed / 1024:.1f}", f"{reference / raw:.1f}x")
    console.print(files)
    console.print(
        f"digits CNN accuracy (ONNX Runtime, test set): fp32 {acc_fp32:.2%}, int8 static {acc_int8:.2%}; "
        f"MLP block int8 SQNR vs fp32: {sqnr:.1f} dB; torch: pruned {acc_pruned:.2%}, "
        f"reloaded from the compact int8 file {acc_compact_int8:.2%}"
    )
    console.print(
        f"malloc: {malloc_settings()}; ONNX Runtime CPU arena on; torch {torch.__version__}; "
        f"cpu count {os.cpu_count()}; quick={args.quick}"
    )
    print(
        json.dumps(
            {
                "benchmark": "quantization",
                "int8_speedup_cnn": round(cnn_default["speedup"], 3),
                "int8_speedup_mlp": round(mlp_default["speedup"], 3),
                "compact_ratio_fp32_90": round(ratio_fp32, 3),
                "compact_ratio_int8_90": round(ratio_int8, 3),
                "int8_speedup_cnn_1thread": round(cnn_single["speedup"], 3),
                "int8_speedup_mlp_1thread": round(mlp_single["speedup"], 3),
                "cnn_fp32_ms": round(cnn_default["fp32_ms"], 4),
                "cnn_int8_ms": round(cnn_default["int8_ms"], 4),
                "mlp_fp32_ms": round(mlp_default["fp32_ms"], 4),
                "mlp_int8_ms": round(mlp_default["int8_ms"], 4),
                "cnn_accuracy_fp32": round(acc_fp32, 4),
                "cnn_accuracy_int8_static": round(acc_int8, 4),
                "cnn_accuracy_pruned": round(acc_pruned, 4),
                "cnn_accuracy_compact_int8": round(acc_compact_int8, 4),
                "mlp_int8_sqnr_db": round(sqnr, 2),
                "quick": args.quick,
            }
        )
    )


if __name__ == "__main__":
    pin_malloc_settings()
    main()
