"""``prunekit inspect MODEL``: a per-layer table (params, nonzeros, sparsity, MACs), latency and peak memory.

MODEL is a factory import path ``package.module:callable`` (a zero-argument callable returning
an ``nn.Module`` or a ``keras.Model``), a saved Keras model (``.keras``), a PyTorch weight
file (compact, safetensors or torch state_dict) with ``--factory`` naming the architecture, or
an ONNX file (``.onnx``, with its ``.onnx.data`` beside it if it has one), measured without
torch: its weighted nodes, its file sizes, and peak memory and latency in ONNX Runtime, or a
TFLite file (``.tflite``): its weighted ops, its file sizes and latency in the TFLite interpreter
at the batch sizes the file allows (no peak memory: the interpreter does not report its arena).

Example::

    prunekit inspect prunekit.torch:DigitsCNN --input-shape 1,8,8 --latency
    prunekit inspect prunekit.torch:DigitsCNN --input-shape 1,8,8 --structured
    prunekit inspect pruned.safetensors --factory prunekit.torch:DigitsCNN --input-shape 1,8,8
    prunekit inspect model.keras --input-shape 8,8,1 --latency
    prunekit inspect model.int8.onnx --latency --batch-sizes 1,32
    prunekit inspect bert.onnx --input-shape 128 --json bert.json
    prunekit inspect model.int8.tflite --latency --json model.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _ints(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 1,8,8, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model",
        metavar="MODEL",
        help="factory 'package.module:callable', a weight file with --factory, a .keras, an .onnx or a .tflite file",
    )
    parser.add_argument(
        "--factory", metavar="MODULE:CALLABLE", help="architecture of a weight file, e.g. prunekit.torch:DigitsCNN"
    )
    parser.add_argument(
        "--input-shape",
        type=_ints,
        metavar="C,H,W",
        help="shape of one input sample without the batch dim, e.g. 1,8,8 (an .onnx file: only for "
        "dynamic dims such as a sequence length, applied to every input)",
    )
    parser.add_argument("--latency", action="store_true", help="also time the model (CPU, and CUDA when present)")
    parser.add_argument("--batch-sizes", type=_ints, default=[1, 32], metavar="N,N", help="latency batch sizes (default: 1,32)")
    parser.add_argument("--repeats", type=int, default=30, metavar="N", help="timed runs per batch size (default: 30)")
    parser.add_argument("--json", metavar="FILE", help="also write everything as JSON to FILE")
    parser.add_argument(
        "--structured",
        action="store_true",
        help="also list the channel groups structured pruning finds, and every channel dimension it leaves alone with "
        "the reason (PyTorch models)",
    )


def _is_keras_file(path: str) -> bool:
    return path.endswith((".keras", ".h5"))


def _report(
    framework: str,
    model: object,
    summary: Any,
    sizes: dict,
    memory: list,
    measure_latency: Callable,
    args: argparse.Namespace,
    title: str,
    weights: str,
) -> dict:
    """Print the layer table, sizes and peak memory; measure latency if asked; the JSON-ready result."""
    summary.table(f"prunekit inspect {args.model} ({title})").print()
    print(
        "; ".join(
            [
                f"{weights}: {sizes['raw_bytes']:,} bytes raw, {sizes['gzip_bytes']:,} bytes gzip",
                *(f"peak inference memory at batch {m.batch_size}: {m.peak_bytes:,} bytes" for m in memory),
            ]
        )
    )
    result: dict = {"framework": framework, "summary": summary.to_dict(), "sizes": sizes, "memory": [m.to_dict() for m in memory]}
    if args.latency:
        result["latency"] = measure_latency(model, args.input_shape, args.batch_sizes, repeats=args.repeats)
    return result


def _inspect_keras(model: Any, args: argparse.Namespace) -> dict:
    import numpy as np

    from prunekit.keras.measure.metrics import serialized_size
    from prunekit.keras.measure.summary import measure_latency, measure_peak_memory, summarize

    summary = _fitting(lambda: (model(np.zeros((1, *args.input_shape), dtype="float32")), summarize(model))[1], args)
    memory = [measure_peak_memory(model, args.input_shape, size) for size in args.batch_sizes]
    sizes, name = _file_sizes(args, lambda: serialized_size(model))
    return _report(
        "keras",
        model,
        summary,
        sizes,
        memory,
        measure_latency,
        args,
        "Keras; MACs per sample",
        name or "weights",
    )


def _inspect_torch(model: Any, args: argparse.Namespace) -> dict:
    import torch

    from prunekit.torch.measure.latency import measure_latency, measure_peak_memory
    from prunekit.torch.measure.metrics import serialized_size
    from prunekit.torch.measure.summary import summarize

    model.eval()
    summary = _fitting(lambda: summarize(model, torch.zeros(1, *args.input_shape)), args)
    memory = [measure_peak_memory(model, args.input_shape, size) for size in args.batch_sizes]
    sizes, name = _file_sizes(args, lambda: serialized_size(model))
    result = _report(
        "torch",
        model,
        summary,
        sizes,
        memory,
        measure_latency,
        args,
        "MACs per sample",
        name or "state_dict",
    )
    if getattr(args, "structured", False):
        result["structured"] = _structured_torch(model, torch.zeros(1, *args.input_shape))
    if args.latency:  # pruned layers: dense vs the sparse runtime, per layer and end to end, at the first batch size
        from prunekit.torch.deploy.sparse.convert import sparse_latency_report

        sparse = sparse_latency_report(model, torch.randn(args.batch_sizes[0], *args.input_shape), repeats=min(args.repeats, 20))
        if sparse is not None:
            print(f"sparse runtime at batch {args.batch_sizes[0]} ({sparse.kernel_backend} kernels):\n{sparse.table()}")
            result["sparse_runtime"] = sparse.to_json()
    return result


def _structured_torch(model: Any, example: Any) -> dict:
    """Print the channel groups and the dimensions left alone (with reasons); their JSON form."""
    from prunekit.core.tables import ResultTable
    from prunekit.torch.structured.graph import analyze_dependencies

    graph = analyze_dependencies(model, example)
    groups = ResultTable("structured pruning: channel groups", ["group", "kind", "channels", "exact", "consumers"])
    for group in graph.groups:
        groups.add_row(group.name, group.kind, group.size, "yes" if group.exact else "no", ", ".join(group.consumers))
    groups.print()
    kept = ResultTable("structured pruning: channels left alone", ["layer", "tensor", "channels kept", "reason"])
    for entry in graph.left_alone:
        kept.add_row(
            entry.module or "<root>", f"{entry.tensor} dim {entry.dim}", f"{entry.channels} of {entry.size}", entry.reason
        )
    kept.print()
    return {
        "groups": [
            {"name": g.name, "kind": g.kind, "size": g.size, "exact": g.exact, "producers": g.producers, "consumers": g.consumers}
            for g in graph.groups
        ],
        "left_alone": [
            {"module": e.module, "tensor": e.tensor, "dim": e.dim, "channels": e.channels, "size": e.size, "reason": e.reason}
            for e in graph.left_alone
        ],
    }


def _inspect_onnx(args: argparse.Namespace) -> dict:
    """The ONNX file's weighted nodes, its file sizes, and peak memory and latency in ONNX Runtime (CPU)."""
    from prunekit.artifacts.onnx_artifact import file_sizes, peak_memory, time_onnx_files
    from prunekit.artifacts.onnx_data import external_data_files
    from prunekit.artifacts.onnx_summary import summarize_onnx
    from prunekit.artifacts.ort import InputSpec, batch_of, generated_batch, input_specs, session
    from prunekit.core.records import LatencyResult, MemoryResult

    path = Path(args.model)
    summary = summarize_onnx(path, args.input_shape)
    raw, packed = file_sizes(path)
    files = [path.name, *(data.name for data in external_data_files(path))]
    specs = [
        InputSpec(spec.name, spec.dtype, (None, *args.input_shape)) if args.input_shape else spec
        for spec in input_specs(session(path, threads=1))
    ]
    sample = generated_batch(specs, 1, str(path))
    weights = _initializer_bytes(path)
    memory = []
    for size in args.batch_sizes:
        peak = peak_memory(path, batch_of(sample, size))
        if peak is not None:
            memory.append(MemoryResult("cpu", size, weights, max(0, peak - weights), peak))

    def measure(model: Path, shape: Any, batch_sizes: list[int], repeats: int) -> list[LatencyResult]:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        stats = time_onnx_files({"model": model}, sample, batch_sizes, repeats=repeats, threads=threads)["model"]
        return [LatencyResult("cpu", size, row.median_ms, row.p90_ms, row.runs, threads) for size, row in stats.items()]

    return _report(
        "onnx",
        path,
        summary,
        {"raw_bytes": raw, "gzip_bytes": packed, "files": files},
        memory,
        measure,
        args,
        "ONNX; MACs per sample",
        " + ".join(files),
    )


def _inspect_tflite(args: argparse.Namespace) -> dict:
    """The TFLite file's weighted ops, its file sizes, and latency in the TFLite interpreter (CPU)."""
    from prunekit.artifacts.onnx_artifact import file_sizes
    from prunekit.artifacts.tflite_summary import summarize_tflite
    from prunekit.errors import ConfigError

    if args.input_shape:
        raise ConfigError(
            f"{args.model} fixes its own input shape; drop --input-shape (convert the Keras model again to change it)"
        )
    path = Path(args.model)
    summary = summarize_tflite(path)
    raw, packed = file_sizes(path)

    def measure(model: Path, shape: Any, batch_sizes: list[int], repeats: int) -> list:
        import time

        import numpy as np

        from prunekit.core.records import LatencyResult
        from prunekit.keras.deploy.tflite import TFLiteModel

        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        tflite = TFLiteModel(model, num_threads=threads)
        fixed = int(tflite.inputs[0]["shape_signature"][0])
        timed = [size for size in batch_sizes if fixed in (-1, size)]
        if len(timed) < len(batch_sizes):
            print(f"{model.name} fixes its batch size to {fixed}: latency is timed at batch {fixed} only")
            timed = timed or [fixed]
        sample_shape = [int(d) for d in tflite.inputs[0]["shape"][1:]]
        results = []
        for size in timed:
            batch = np.random.default_rng(0).standard_normal((size, *sample_shape)).astype("float32")
            runs = []
            for _ in range(5 + repeats):  # 5 warm-up runs
                started = time.perf_counter()
                tflite.predict(batch, batch_size=size)
                runs.append((time.perf_counter() - started) * 1e3)
            runs = runs[5:]
            results.append(LatencyResult("cpu", size, float(np.median(runs)), float(np.percentile(runs, 90)), repeats, threads))
        return results

    return _report(
        "tflite",
        path,
        summary,
        {"raw_bytes": raw, "gzip_bytes": packed, "files": [path.name]},
        [],
        measure,
        args,
        "TFLite; MACs per sample",
        path.name,
    )


def _initializer_bytes(path: Path) -> int:
    """Bytes of the weights (initializers) an ONNX file holds, read from the tensor headers only."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return sum(math.prod(t.dims) * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize for t in model.graph.initializer)


def _load(args: argparse.Namespace) -> object:
    from prunekit.commands.export import import_factory
    from prunekit.errors import ConfigError
    from prunekit.torch.deploy.weights import load_weights

    if Path(args.model).is_dir():
        raise ConfigError(f"{args.model} is a directory; give a model file (.keras, .onnx, .tflite, a weight file) or a factory")
    if Path(args.model).is_file():
        if _is_keras_file(args.model):
            from prunekit.errors import CorruptFileError
            from prunekit.keras import load_model

            try:
                return load_model(args.model)
            except ConfigError:
                raise
            except Exception as exc:  # zipfile, h5py and Keras errors: the bytes are not a Keras model
                raise CorruptFileError(f"{args.model} is not a readable Keras model ({type(exc).__name__}: {exc})") from None
        if not args.factory:
            raise ConfigError(f"{args.model} is a weight file; name its architecture with --factory module:callable")
        return load_weights(args.model, import_factory(args.factory))
    return import_factory(args.model)()


def _defined_input_shape(model: object) -> list[int] | None:
    """One sample's shape from a Keras model's defined input (``None`` for torch models or open dimensions)."""
    inputs = getattr(model, "inputs", None)
    if type(model).__module__.split(".")[0] != "keras" or not inputs or len(inputs) != 1:
        return None
    shape = list(inputs[0].shape[1:])
    return [int(d) for d in shape] if all(isinstance(d, int) and d > 0 for d in shape) else None


def _fitting(summarize: Callable[[], Any], args: argparse.Namespace) -> Any:
    """Run the first forward pass (``summarize``), turning a shape mismatch into a ConfigError naming --input-shape."""
    from prunekit.errors import ConfigError

    try:
        return summarize()
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        shape = ",".join(map(str, args.input_shape))
        raise ConfigError(f"--input-shape {shape} does not fit {args.model}: {first}") from None


def _file_sizes(args: argparse.Namespace, model_sizes: Callable[[], dict]) -> tuple[dict, str]:
    """The size of the file inspected (a compact int8 file is its own size, not its float state_dict's), else the model's."""
    from prunekit.core.gzip import gzip_file_size

    path = Path(args.model)
    if path.is_file():
        return {"raw_bytes": path.stat().st_size, "gzip_bytes": gzip_file_size(path), "files": [path.name]}, path.name
    return model_sizes(), ""


def _inspect_framework(model: object, args: argparse.Namespace) -> dict:
    """Dispatch a built model to the Keras or the PyTorch branch."""
    from prunekit.errors import ConfigError

    kind = type(model).__module__.split(".")[0]
    if kind == "keras":
        if getattr(args, "structured", False):
            raise ConfigError("--structured lists the PyTorch engine's channel groups; it needs a torch.nn.Module")
        return _inspect_keras(model, args)
    if kind == "torch" or any(c.__module__.startswith("torch.nn") for c in type(model).__mro__):
        return _inspect_torch(model, args)
    raise ConfigError(f"{args.model} built a {type(model).__name__}; inspect takes a torch.nn.Module or a keras.Model")


def run(args: argparse.Namespace) -> int:
    from prunekit.core.atomic import atomic_write_text
    from prunekit.core.tables import ResultTable
    from prunekit.errors import ConfigError

    if args.repeats < 1:
        raise ConfigError(f"--repeats should be >= 1, got {args.repeats}")
    if args.json:
        from prunekit.core.paths import refuse_overwriting_inputs

        model = Path(args.model)
        refuse_overwriting_inputs([args.json], [model, model.with_name(model.name + ".data")], "choose another --json file")
    if args.model.endswith(".onnx"):
        result = _inspect_onnx(args)
    elif args.model.endswith(".tflite"):
        result = _inspect_tflite(args)
    else:
        built = _load(args)
        args.input_shape = args.input_shape or _defined_input_shape(built)
        if args.input_shape is None:
            raise ConfigError(
                f"inspecting {args.model} needs --input-shape: the shape of one input sample without the "
                "batch dim, e.g. --input-shape 1,8,8 (.onnx, .tflite and Keras models with a defined input know their own)"
            )
        result = _inspect_framework(built, args)
    if args.latency:
        table = ResultTable("latency", ["device", "batch", "median ms", "p90 ms", "runs", "threads"])
        for row in result["latency"]:
            table.add_row(row.device, row.batch_size, f"{row.median_ms:.3f}", f"{row.p90_ms:.3f}", row.runs, row.threads)
        table.print()
        result["latency"] = [row.to_dict() for row in result["latency"]]
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
    return 0
