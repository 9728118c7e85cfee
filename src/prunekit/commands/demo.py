"""``prunekit demo``: the built-in demo on the bundled digits dataset."""

from __future__ import annotations

import argparse


def _sparsities(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers like 0.5,0.8,0.9, got {text!r}") from None
    if not values or not all(0 <= v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"sparsities should be in [0, 1), got {text!r}")
    return values


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--framework", choices=["torch", "keras"], default="torch", help="backend (default: torch)")
    parser.add_argument(
        "--method",
        choices=["gradual", "one-shot", "iterative", "structured", "all"],
        default="gradual",
        help="pruning-aware training mode, or 'structured' (remove channels); 'all' runs the three "
        "unstructured modes (default: gradual)",
    )
    parser.add_argument(
        "--sparsities",
        type=_sparsities,
        help="weight sparsities, or channel ratios with --method structured (default: 0.5,0.8,0.9; structured: 0.25,0.5)",
    )
    parser.add_argument("--output", metavar="DIR", help="write results.md and results.json to DIR")
    parser.add_argument("--quick", action="store_true", help="few epochs, for a smoke test (lower accuracy)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("--no-export", action="store_true", help="skip the ONNX/int8/compact artifacts table")
    parser.add_argument(
        "--print-recipe",
        action="store_true",
        help="print the demo as a YAML recipe to copy, edit and run with `prunekit run` (runs nothing)",
    )


def run(args: argparse.Namespace) -> int:
    if getattr(args, "print_recipe", False):
        from prunekit.recipes.config import builtin_recipe_text

        print(builtin_recipe_text("demo"), end="")
        return 0
    from prunekit.demo import run_demo

    methods = ["gradual", "one-shot", "iterative"] if args.method == "all" else [args.method]
    run_demo(
        framework=args.framework,
        methods=methods,
        sparsities=args.sparsities or ([0.25, 0.5] if args.method == "structured" else [0.5, 0.8, 0.9]),
        output_dir=args.output,
        quick=args.quick,
        seed=args.seed,
        progress=not args.no_progress,
        export=not args.no_export,
    )
    return 0
