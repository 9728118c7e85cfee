"""``prunekit run RECIPE.yaml``: validate a recipe (every error at once), run it, write the report.

Example::

    prunekit demo --print-recipe > recipe.yaml   # edit it
    prunekit run recipe.yaml --out run-out       # run-out/report.html, report.md, report.json, results.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

from prunekit.commands import directory


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", metavar="RECIPE", help="a YAML recipe file (see `prunekit demo --print-recipe`)")
    parser.add_argument(
        "--out", default="run-out", metavar="DIR", type=directory, help="where results and the report go (default: run-out)"
    )
    parser.add_argument("--check", action="store_true", help="only validate the recipe (imports only trusted modules)")
    parser.add_argument(
        "--resume", action="store_true", help="continue a killed run from the checkpoints in OUT/.checkpoints (torch recipes)"
    )
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        default=1,
        metavar="EPOCHS",
        help="epochs between checkpoints of a pruning run (default 1)",
    )
    parser.add_argument(
        "--trust-module",
        action="append",
        default=[],
        metavar="MODULE",
        help="let the recipe's model.factory / data.loader import from MODULE (repeatable); only prunekit is trusted otherwise",
    )


def run(args: argparse.Namespace) -> int:
    from prunekit.recipes.config import load_recipe
    from prunekit.recipes.runner import check_recipe_model, run_recipe

    recipe = load_recipe(args.recipe, trust_modules=args.trust_module)
    if args.check:
        check_recipe_model(recipe, args.recipe)
        print(f"{args.recipe}: valid recipe {recipe.name!r}")
        return 0
    results = run_recipe(
        recipe,
        args.out,
        recipe_text=Path(args.recipe).read_text(encoding="utf-8"),
        resume=args.resume,
        checkpoint_every=args.checkpoint_every,
    )
    dense = results["dense"]
    if recipe.llm is not None:
        pruned = results["pruned"]
        print(
            f"dense: perplexity {dense['perplexity']:.3f}; pruned ({results['prune']['sparsity']:.1%} of block weights "
            f"zeroed): perplexity {pruned['perplexity']:.3f}; saved {results['output']}"
        )
        print(f"report: {Path(args.out) / 'report.html'}")
        return 0
    print(f"dense: accuracy {dense['accuracy']:.2%}, {dense['gzip_bytes']:,} bytes gzip")
    for row in results["runs"]:
        print(
            f"{row['method']} {row['target']:.0%}: accuracy {row['accuracy']:.2%}, sparsity {row['sparsity']:.1%}, "
            f"{row['gzip_bytes']:,} bytes gzip"
        )
    print(f"report: {Path(args.out) / 'report.html'}")
    if "gate" in results:  # the recipe's gate: section; exit 1 fails the pipeline
        from prunekit.report.gate import GateVerdict

        verdict = GateVerdict.from_dict(results["gate"])
        verdict.table().print()
        print(f"{verdict.summary()}; JUnit: {Path(args.out) / 'gate.xml'}")
        return 0 if verdict.passed else 1
    return 0
