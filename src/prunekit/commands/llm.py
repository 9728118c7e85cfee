"""``prunekit llm``: one-shot pruning of causal LMs (``prune``, ``eval``, ``depth``, ``width``, ``demo``).

Example::

    prunekit llm prune MODEL_DIR --method wanda --sparsity 0.5 --calibration train.txt --output pruned
    prunekit llm prune MODEL_DIR --method sparsegpt --pattern 2:4 --calibration train.txt --output pruned-24
    prunekit llm eval pruned --text valid.txt --json
    prunekit llm depth MODEL_DIR --remove 0.25 --calibration train.txt --output shallower
    prunekit llm width MODEL_DIR --mlp 0.25 --heads 0.25 --calibration train.txt --output narrower
    prunekit llm demo
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from prunekit.commands import directory
from prunekit.methods.llm_options import COMPARISON_CHOICES, RATIO_SCHEMES


def _ratios(text: str) -> str | dict[str, float]:
    if text in RATIO_SCHEMES:
        return text
    try:
        return {glob: float(value) for glob, value in (part.rsplit("=", 1) for part in text.split(",") if part.strip())}
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected {' or '.join(RATIO_SCHEMES)} or GLOB=SPARSITY[,GLOB=SPARSITY...], got {text!r}"
        ) from None


def _calibration_args(parser: argparse.ArgumentParser, samples: int, seq_len: int) -> None:
    parser.add_argument("--calibration", metavar="FILE", help="calibration text file (UTF-8)")
    parser.add_argument("--samples", type=int, default=samples, help=f"calibration sequences (default {samples})")
    parser.add_argument(
        "--seq-len", type=int, default=seq_len, help=f"tokens per sequence (default {seq_len}, clipped to the context)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", choices=["cpu", "cuda"], help="where each block is pruned (default: where the model is)")
    parser.add_argument(
        "--output", required=True, metavar="DIR", type=directory, help="output model directory (written atomically)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    parser.add_argument("--eval-text", metavar="FILE", help="also measure perplexity before and after on this text")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    from prunekit.methods import list_methods

    sub = parser.add_subparsers(dest="llm_command", metavar="SUBCOMMAND", required=True)
    prune = sub.add_parser("prune", help="one-shot unstructured or N:M pruning, block by block")
    prune.add_argument("model", metavar="MODEL_DIR", help="a save_pretrained directory of a causal LM")
    prune.add_argument("--method", required=True, choices=[m.name for m in list_methods(kind="llm")])
    prune.add_argument("--sparsity", type=float, default=0.5, help="share of weights to zero, in [0, 1) (default 0.5)")
    prune.add_argument("--pattern", help="N:M pattern such as 2:4 or 4:8 (then sparsity is 1 - N/M)")
    prune.add_argument(
        "--ratios", type=_ratios, default="uniform", help=f"{', '.join(RATIO_SCHEMES)}, or GLOB=SPARSITY,... per layer"
    )
    prune.add_argument(
        "--comparison",
        choices=COMPARISON_CHOICES,
        help="rank scores per output row or per layer, or auto: per projection, whichever reconstructs its "
        "calibration outputs better (default: the method's group)",
    )
    prune.add_argument("--skip", action="append", default=[], metavar="GLOB", help="leave matching layers/blocks dense")
    prune.add_argument("--resume", action="store_true", help="continue a killed run from its block checkpoint (OUTPUT.partial)")
    prune.add_argument(
        "--checkpoint-every",
        type=int,
        default=1,
        metavar="BLOCKS",
        help="blocks between checkpoints in OUTPUT.partial (default 1; removed when the run completes)",
    )
    _calibration_args(prune, 128, 2048)

    evaluate = sub.add_parser("eval", help="perplexity, next-token accuracy, sparsity, params, size")
    evaluate.add_argument("model", metavar="MODEL_DIR", nargs="+", help="one or more model directories (a table row each)")
    evaluate.add_argument("--text", required=True, metavar="FILE", help="evaluation text file")
    evaluate.add_argument("--context", type=int, help="window length (default: the model's context)")
    evaluate.add_argument("--stride", type=int, help="window stride (default: the context)")
    evaluate.add_argument("--max-tokens", type=int, help="evaluate the first tokens only")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object (perplexity, tokens, seconds, ...)")

    depth = sub.add_parser("depth", help="remove whole decoder blocks by influence or perplexity (or the last ones)")
    depth.add_argument("model", metavar="MODEL_DIR")
    depth.add_argument("--remove", type=float, default=0.25, help="fraction (< 1) or count (>= 1) of blocks to remove")
    depth.add_argument(
        "--criterion",
        default="influence",
        help="influence (default; one pass), perplexity (one forward pass per block) or last",
    )
    _calibration_args(depth, 32, 512)

    width = sub.add_parser("width", help="remove MLP neurons and attention KV groups (a physically smaller model)")
    width.add_argument("model", metavar="MODEL_DIR")
    width.add_argument("--mlp", type=float, default=0.0, help="fraction of MLP neurons to remove from every block")
    width.add_argument("--heads", type=float, default=0.0, help="fraction of KV groups (with their query heads) to remove")
    _calibration_args(width, 32, 512)

    demo = sub.add_parser("demo", help="train the small stdlib LM (cached), prune it every way, compare perplexity")
    demo.add_argument("--rebuild", action="store_true", help="retrain the small LM even if it is cached")
    demo.add_argument("--samples", type=int, default=32)
    demo.add_argument("--seq-len", type=int, default=256)
    demo.add_argument("--max-tokens", type=int, default=60000, help="evaluation tokens of the held-out text")
    demo.add_argument("--json", action="store_true", help="print the results as one JSON object")


def _load(args: argparse.Namespace) -> tuple[Any, Any, Path]:
    from prunekit.llm import check_model_dir, load_model_dir

    directory = check_model_dir(args.model)
    model, tokenizer = load_model_dir(directory)
    return model, tokenizer, directory


def _check_common(args: argparse.Namespace) -> None:
    from prunekit.torch.llm.calibration import read_text
    from prunekit.torch.llm.memory import resolve_device
    from prunekit.torch.llm.saving import check_model_dir, prepare_output_dir

    check_model_dir(args.model)
    prepare_output_dir(args.output, overwrite=args.overwrite)
    resolve_device(args.device)
    for path in filter(None, (getattr(args, "calibration", None), getattr(args, "eval_text", None))):
        read_text(path)


def _table(reports: dict[str, dict[str, Any]], title: str) -> None:
    from prunekit.core.tables import ResultTable
    from prunekit.llm import comparison_rows

    columns, rows = comparison_rows(reports)
    ResultTable(title, columns, rows).print()


def _calibration(args: argparse.Namespace, model: Any, tokenizer: Any) -> Any:
    """The calibration tokens, tokenized once for the pruning and the drift profile (``None`` without ``--calibration``)."""
    from prunekit.torch.llm.sequential import prepare_tokens

    if not args.calibration:
        return None
    return prepare_tokens(model, args.calibration, tokenizer, args.samples, args.seq_len, args.seed)


def _finish(
    args: argparse.Namespace,
    model: Any,
    tokens: Any,
    tokenizer: Any,
    directory: Path,
    record: dict[str, Any],
    dense: dict[str, Any] | None,
    label: str,
) -> int:
    from prunekit.llm import lm_profile, model_report, save_pruned

    compact = bool(record.get("recipe", {}).get("pattern"))  # N:M: also the compact sparse file
    # the reference for drift monitoring: the pruned model on the calibration tokens
    profile = lm_profile(model, tokens) if tokens is not None else None
    out = save_pruned(
        model, args.output, tokenizer_dir=directory, record=record, overwrite=args.overwrite, compact=compact, profile=profile
    )
    print(f"saved {out}")
    if dense is not None:
        pruned = model_report(model, args.eval_text, tokenizer, directory=out)
        _table({"dense": dense, label: pruned}, f"{directory.name}: dense beside {label}")
    return 0


def _run_prune(args: argparse.Namespace) -> int:
    from prunekit.llm import BlockCheckpoint, model_report, prune

    _check_common(args)
    checkpoint = BlockCheckpoint(f"{Path(args.output)}.partial", every=args.checkpoint_every, resume=args.resume)
    model, tokenizer, directory = _load(args)
    dense = model_report(model, args.eval_text, tokenizer, directory=directory) if args.eval_text else None
    tokens = _calibration(args, model, tokenizer)
    result = prune(
        model,
        tokens,
        tokenizer=tokenizer,
        method=args.method,
        sparsity=args.sparsity,
        pattern=args.pattern,
        comparison=args.comparison,
        ratios=args.ratios,
        skip=args.skip,
        n_samples=args.samples,
        seq_len=args.seq_len,
        seed=args.seed,
        device=args.device,
        progress=True,
        checkpoint=checkpoint,
    )
    print(
        f"{result.recipe['method']}: {result.sparsity:.2%} of {result.params_pruned:,} block weights zeroed "
        f"in {result.seconds:.1f} s"
    )
    _note_left_dense(result.extra)
    label = f"{result.recipe['method']} {result.recipe['pattern'] or format(result.recipe['sparsity'], '.0%')}"
    return _finish(args, model, tokens, tokenizer, directory, result.to_dict(), dense, label)


def _note_left_dense(extra: dict[str, Any]) -> None:
    """Say which block weights no projection owns (fused expert tensors...) and which projections fell back to magnitude."""
    dense = extra.get("dense_weights") or {}
    if dense:
        largest = ", ".join(sorted(dense, key=lambda name: -dense[name])[:3])
        print(
            f"note: {extra['dense_weight_share']:.1%} of the blocks' weights are no Linear/Conv1D or per-expert projection "
            f"and stay dense (largest: {largest}); the sparsity above counts the pruned weights only"
        )
    if extra.get("unreached"):
        print(f"note: no calibration token reached {len(extra['unreached'])} projection(s); pruned by magnitude")


def _run_depth(args: argparse.Namespace) -> int:
    from prunekit.llm import model_report, prune_depth

    _check_common(args)
    model, tokenizer, directory = _load(args)
    dense = model_report(model, args.eval_text, tokenizer, directory=directory) if args.eval_text else None
    tokens = _calibration(args, model, tokenizer)
    remove = int(args.remove) if args.remove >= 1 else args.remove
    result = prune_depth(
        model,
        tokens,
        tokenizer=tokenizer,
        remove=remove,
        criterion=args.criterion,
        n_samples=args.samples,
        seq_len=args.seq_len,
        seed=args.seed,
        device=args.device,
    )
    print(f"removed blocks {result.removed} ({result.criterion}); {result.blocks_left} left")
    return _finish(
        args, model, tokens, tokenizer, directory, {"depth": result.to_dict()}, dense, f"-{len(result.removed)} blocks"
    )


def _run_width(args: argparse.Namespace) -> int:
    from prunekit.llm import model_report, prune_width

    _check_common(args)
    model, tokenizer, directory = _load(args)
    dense = model_report(model, args.eval_text, tokenizer, directory=directory) if args.eval_text else None
    tokens = _calibration(args, model, tokenizer)
    result = prune_width(
        model,
        tokens,
        tokenizer=tokenizer,
        mlp=args.mlp,
        heads=args.heads,
        n_samples=args.samples,
        seq_len=args.seq_len,
        seed=args.seed,
        device=args.device,
    )
    print(f"MLP width {result.intermediate}, KV groups {result.kv_groups}")
    return _finish(args, model, tokens, tokenizer, directory, {"width": result.to_dict()}, dense, "narrower")


def _run_eval(args: argparse.Namespace) -> int:
    from prunekit.llm import load_model_dir, model_report

    reports = {}
    for path in args.model:
        model, tokenizer = load_model_dir(path)
        reports[path] = model_report(
            model, args.text, tokenizer, context=args.context, stride=args.stride, max_tokens=args.max_tokens, directory=path
        )
    if args.json:
        shown = {k: v for k, v in reports[args.model[0]].items() if k != "layers"}
        if len(reports) > 1:
            shown["models"] = {p: {k: v for k, v in r.items() if k != "layers"} for p, r in reports.items()}
        print(json.dumps(shown))
    else:
        _table(reports, f"perplexity on {Path(args.text).name}")
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    import torch

    from prunekit.llm import ensure_small_lm, load_model_dir, model_report, prune, prune_depth
    from prunekit.methods import list_methods
    from prunekit.torch.llm.depth import CRITERIA

    directory = ensure_small_lm(rebuild=args.rebuild, log=lambda line: print(line, file=sys.stderr))
    model, tokenizer = load_model_dir(directory)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    valid, train = directory / "valid.txt", directory / "train.txt"
    reports = {"dense": model_report(model, valid, tokenizer, max_tokens=args.max_tokens)}
    for method in list_methods(kind="llm"):
        for pattern in (None, "2:4"):
            model.load_state_dict(state)
            prune(
                model,
                train,
                tokenizer=tokenizer,
                method=method.name,
                sparsity=0.5,
                pattern=pattern,
                n_samples=args.samples,
                seq_len=args.seq_len,
                progress=not args.json,
            )
            reports[f"{method.name} {pattern or '50%'}"] = model_report(model, valid, tokenizer, max_tokens=args.max_tokens)
    for criterion in CRITERIA:
        fresh, _ = load_model_dir(directory)
        with torch.no_grad():
            prune_depth(
                fresh, train, tokenizer=tokenizer, remove=0.25, criterion=criterion, n_samples=args.samples, seq_len=args.seq_len
            )
        reports[f"depth -25% ({criterion})"] = model_report(fresh, valid, tokenizer, max_tokens=args.max_tokens)
    if args.json:
        print(json.dumps({name: {k: v for k, v in r.items() if k != "layers"} for name, r in reports.items()}))
    else:
        _table(reports, f"small LM ({directory}) on held-out stdlib text")
    return 0


def run(args: argparse.Namespace) -> int:
    from prunekit.core.allocator import return_large_frees

    return_large_frees()  # this process is ours: freed tensors go back to the system (peak memory)
    handlers = {"prune": _run_prune, "eval": _run_eval, "depth": _run_depth, "width": _run_width, "demo": _run_demo}
    return handlers[args.llm_command](args)
