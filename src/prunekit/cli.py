"""``prunekit`` command line: a thin driver over the same functions users call from Python.

Each subcommand is a module in ``prunekit.commands`` exposing ``configure_parser(parser)`` and
``run(args) -> int``. Only the chosen subcommand's module is imported, so ``prunekit serve``
does not pay for TensorFlow and a broken optional extra breaks only its own command.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from prunekit import __version__
from prunekit.errors import PrunekitError

# name -> (module in prunekit.commands, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("prunekit.commands.demo", "train, prune and fine-tune a CNN on the bundled digits dataset"),
    "serve": ("prunekit.commands.serve", "serve ONNX/TFLite models over HTTP in TensorFlow Serving's REST format"),
    "export": (
        "prunekit.commands.export",
        "export a pruned PyTorch model to ONNX fp32/int8 and compact files, with a comparison table",
    ),
    "inspect": ("prunekit.commands.inspect", "print a model's per-layer params, nonzeros and MACs, its peak memory and latency"),
    "sweep": (
        "prunekit.commands.sweep",
        "prune over a grid of methods and sparsities in parallel, with Pareto plots and a report",
    ),
    "llm": ("prunekit.commands.llm", "one-shot pruning of causal language models: prune, eval, depth, width, demo"),
    "run": ("prunekit.commands.run", "run a YAML recipe (validated up front) and write an HTML/Markdown/JSON report"),
    "methods": ("prunekit.commands.methods", "list the registered pruning and recovery methods, their frameworks and defaults"),
    "sign": ("prunekit.commands.signing", "sign artifacts with an Ed25519 key (FILE.sig beside each)"),
    "verify": ("prunekit.commands.signing", "verify artifacts' Ed25519 signatures"),
    "encrypt": ("prunekit.commands.encryption", "encrypt an artifact at rest with AES-256-GCM (FILE.enc)"),
    "decrypt": ("prunekit.commands.encryption", "decrypt a FILE.enc written by prunekit encrypt"),
    # prunekit gate (issue 19): CI quality gate over results files
    "gate": ("prunekit.commands.gate", "fail a CI pipeline when results cross accuracy, compression or latency bounds"),
}


def _chosen_command(argv: list[str]) -> str | None:
    return next((arg for arg in argv if not arg.startswith("-")), None)


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    """The parser, with the arguments of the subcommand named in ``argv`` filled in."""
    parser = argparse.ArgumentParser(prog="prunekit", description="Make trained neural networks smaller and faster.")
    parser.add_argument("--version", action="version", version=f"prunekit {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error (anywhere on the line)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = _chosen_command(argv)
    for name, (module_name, help_text) in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            module = importlib.import_module(module_name)
            module.configure_parser(sub)
            sub.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``prunekit`` console script."""
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    argv = [arg for arg in argv if arg != "--debug"]
    args = build_parser(argv).parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except Exception as exc:
        if debug:
            raise
        bad_input = _is_bad_input(exc)
        detail = str(exc) if isinstance(exc, PrunekitError) else f"{type(exc).__name__}: {exc}"
        hint = "" if bad_input else " (a bug? run again with --debug for the traceback and report it)"
        print(f"prunekit {args.command}: error: {detail}{hint}", file=sys.stderr)
        return 2 if bad_input else 1


# Errors of the file formats and libraries prunekit reads: a bad input file or argument, not a bug
_INPUT_ERROR_MODULES = ("google.protobuf", "onnx", "onnxruntime", "h5py", "safetensors", "zipfile", "yaml", "json")


def _is_bad_input(exc: BaseException) -> bool:
    """Whether ``exc`` says the input was bad (exit 2) rather than that prunekit failed (exit 1)."""
    if isinstance(exc, (PrunekitError, OSError, ValueError, UnicodeError)):
        return True
    return any(cls.__module__.startswith(_INPUT_ERROR_MODULES) for cls in type(exc).__mro__)


if __name__ == "__main__":
    sys.exit(main())
