"""``prunekit export MODEL``: from saved weights to ONNX fp32/int8 files, compact files and a comparison table.

MODEL is a weight file: a prunekit compact file, a ``save_pruned`` file, a plain safetensors
state_dict, or a ``torch.save``d state_dict (``.pt``/``.pth``, loaded with ``weights_only=True``).
The architecture comes from ``--factory module:callable``, a zero-argument callable returning
the ``nn.Module``. For compact and ``save_pruned`` files of structurally pruned models it may
build the original architecture (the recorded plan is replayed); for plain state_dicts it must
build the architecture the weights belong to. Beside each ONNX file goes its reference profile
(``<file>.profile.json``: the test data's statistics and the model's outputs on it), which
``prunekit serve`` uses to watch for drift.

Example::

    prunekit export pruned.safetensors --factory prunekit.torch:DigitsCNN --dense dense.safetensors
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prunekit.commands import directory


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model", metavar="MODEL", help="weights of the pruned model: compact file, .safetensors or .pt state_dict"
    )
    parser.add_argument(
        "--factory",
        required=True,
        metavar="MODULE:CALLABLE",
        help="import path of a zero-argument callable building the model, e.g. prunekit.torch:DigitsCNN",
    )
    parser.add_argument("--dense", metavar="WEIGHTS", help="weights of the dense original (same factory) for the dense rows")
    parser.add_argument(
        "--data",
        default="digits",
        metavar="digits|FILE.npz",
        help="test and calibration data: the bundled digits (default) or an .npz with x_test, "
        "y_test, x_calib (several model inputs: x_test.NAME and x_calib.NAME per input)",
    )
    parser.add_argument(
        "--out", default="artifacts", metavar="DIR", type=directory, help="where to write the artifacts (default: artifacts)"
    )
    parser.add_argument("--json", metavar="FILE", help="also write the comparison as JSON to FILE")
    parser.add_argument("--threads", type=int, metavar="N", help="ONNX Runtime intra-op threads (default: ORT's choice)")
    parser.add_argument(
        "--repeats", type=int, default=30, metavar="N", help="timed runs per artifact and batch size (default: 30)"
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement (one subprocess per file)")


def import_factory(spec: str) -> Callable[[], Any]:
    """Resolve ``"package.module:callable"`` (attribute paths like ``module:Class.build`` work too).

    Example::

        import_factory("prunekit.torch:DigitsCNN")()
    """
    from prunekit.core.imports import resolve_import
    from prunekit.errors import ConfigError

    try:
        return resolve_import(spec)
    except ConfigError as exc:
        raise ConfigError(f"--factory {spec!r}: {exc}") from None


def _data(spec: str) -> tuple[tuple[Any, Any], Any]:
    import numpy as np

    from prunekit.errors import ConfigError

    if spec == "digits":
        from prunekit.data import load_digits

        split = load_digits()
        return (split.x_test, split.y_test), split.x_val
    path = Path(spec)
    if path.suffix != ".npz" or not path.is_file():
        raise ConfigError(f"--data should be 'digits' or an existing .npz file, got {spec!r}")
    with np.load(path) as arrays:
        inputs = {
            "x_test": _inputs(arrays, "x_test"),
            "y_test": arrays["y_test"] if "y_test" in arrays else None,
            "x_calib": _inputs(arrays, "x_calib"),
        }
        missing = [key for key, value in inputs.items() if value is None]
        if missing:
            raise ConfigError(
                f"{path} lacks the array(s) {missing} (for a model with several inputs, one array "
                f"per input named like x_test.input_ids); it has {sorted(arrays.files)}"
            )
        return (inputs["x_test"], inputs["y_test"]), inputs["x_calib"]


def _inputs(arrays: Any, key: str) -> Any:
    """The array ``key``, or the arrays ``key.NAME`` as a dict by model input name (None when neither is there)."""
    if key in arrays.files:
        return arrays[key]
    named = {name[len(key) + 1 :]: arrays[name] for name in arrays.files if name.startswith(key + ".")}
    return named or None


def _refuse_overwriting_inputs(args: argparse.Namespace) -> None:
    """Refuse before anything runs when an artifact (or --json) would be written over MODEL, --dense or --data."""
    from prunekit.artifacts.profile import PROFILE_SUFFIX
    from prunekit.core.paths import refuse_overwriting_inputs
    from prunekit.torch.deploy.compare import artifact_names

    out = Path(args.out)
    names = artifact_names(with_dense=args.dense is not None)
    onnx = [name for name in names if name.endswith(".onnx")]
    outputs = [out / name for name in names] + [out / f"{name}{suffix}" for name in onnx for suffix in (".data", PROFILE_SUFFIX)]
    inputs = [args.model, args.dense, None if args.data == "digits" else args.data]
    refuse_overwriting_inputs(outputs, inputs, "choose another --out (or move the input)")
    if args.json:
        refuse_overwriting_inputs([args.json], inputs, "choose another --json file")


def _write_profiles(out: Path, with_dense: bool, test_data: tuple[Any, Any]) -> None:
    """Beside each ONNX artifact, the reference profile of the test data it served (for drift monitoring)."""
    from prunekit.serve.profiling import profile_artifact
    from prunekit.torch.deploy.compare import artifact_names

    x_test, y_test = test_data
    for name in artifact_names(with_dense=with_dense):
        if name.endswith(".onnx"):
            profile_artifact(out / name, x_test, y_test)


def run(args: argparse.Namespace) -> int:
    from prunekit.artifacts.compact import is_compact_file, read_compact_header
    from prunekit.core.atomic import atomic_write_bytes
    from prunekit.errors import ConfigError
    from prunekit.torch.deploy.compare import compare_artifacts
    from prunekit.torch.deploy.weights import load_weights

    if args.repeats < 1:
        raise ConfigError(f"--repeats should be >= 1, got {args.repeats}")
    _refuse_overwriting_inputs(args)
    factory = import_factory(args.factory)
    pruned = load_weights(args.model, factory)
    dense = load_weights(args.dense, factory) if args.dense else None
    plan = read_compact_header(args.model).plan if is_compact_file(args.model) else None
    test_data, calibration = _data(args.data)
    comparison = compare_artifacts(
        dense,
        pruned,
        test_data,
        calibration,
        args.out,
        repeats=args.repeats,
        threads=args.threads,
        measure_memory=not args.no_memory,
        plan=plan,
    )
    _write_profiles(Path(args.out), dense is not None, test_data)
    comparison.print(title=f"prunekit export {Path(args.model).name}")
    if args.json:
        atomic_write_bytes(args.json, json.dumps(comparison.to_dict(), indent=2).encode())
    print(f"artifacts written to {Path(args.out).resolve()}")
    return 0
