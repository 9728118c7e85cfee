"""``prunekit demo``: the built-in demo on the bundled digits dataset."""

from __future__ import annotations

import argparse

from prunekit.commands import directory


def _sparsities(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers like 0.5,0.8,0.9, got {text!r}") from None
    if not values or not all(0 <= v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"sparsities should be in [0, 1), got {text!r}")
    return values


def configure_parser(parser: argparse.ArgumentParser) -> None:
    from prunekit.methods import FRAMEWORKS, TRAINING_KINDS, default_method, method_names

    parser.add_argument("--framework", choices=FRAMEWORKS, default=FRAMEWORKS[0], help=f"backend (default: {FRAMEWORKS[0]})")
    parser.add_argument(
        "--method",
        choices=[*method_names(kind=TRAINING_KINDS, aliases=True), "all"],
        default=default_method().name,
        help="a training method of the registry (`prunekit methods` describes them); 'all' runs every unstructured "
        f"method of the framework (default: {default_method().name})",
    )
    parser.add_argument(
        "--sparsities",
        type=_sparsities,
        help="weight sparsities, or channel ratios for channel removal (default: 0.5,0.8,0.9; channels: 0.25,0.5)",
    )
    parser.add_argument(
        "--recover",
        choices=method_names(kind="recover"),
        help="recover each pruned model after pruning: fine-tune, distil from the dense model, QAT or PQAT",
    )
    parser.add_argument("--output", metavar="DIR", type=directory, help="write results.md and results.json to DIR")
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
    from prunekit.methods import get_method, method_names

    methods = method_names(kind="unstructured", framework=args.framework) if args.method == "all" else [args.method]
    channel_ratios = args.method != "all" and get_method(args.method).amount == "channel ratio"
    sparsities = args.sparsities or ([0.25, 0.5] if channel_ratios else [0.5, 0.8, 0.9])
    if getattr(args, "print_recipe", False):
        from prunekit.errors import ConfigError
        from prunekit.recipes.demo_recipe import demo_recipe_text

        if len(methods) > 1:
            raise ConfigError("a recipe runs one method; use --print-recipe with --method NAME rather than --method all")
        print(
            demo_recipe_text(args.framework, methods[0], sparsities, seed=args.seed, recover=args.recover, quick=args.quick),
            end="",
        )
        return 0
    from prunekit.demo import run_demo

    run_demo(
        framework=args.framework,
        methods=methods,
        sparsities=sparsities,
        output_dir=args.output,
        quick=args.quick,
        seed=args.seed,
        progress=not args.no_progress,
        export=not args.no_export,
        recover=args.recover,
    )
    return 0
