"""One-shot LLM pruning: perplexity of magnitude / Wanda / SparseGPT, OWL, depth; and the cost of pruning.

Quality, on prunekit's small byte-level Llama (trained once, cached; see ``prunekit llm demo``):
perplexity on held-out stdlib text of the dense model, of each method at 50 % unstructured and
at 2:4 (each in its paper's comparison group), of Wanda at 50 % compared per layer and with the
group chosen per projection by output error (``comparison="auto"``), of Wanda at 70 % with OWL
ratios beside uniform, and of removing 25 % of the blocks by block influence beside removing the
last 25 %.

Cost, on a randomly initialised GPT-2-small-size decoder (12 blocks of width 768, ~85M
parameters in its blocks) with 32 x 512 calibration tokens, each figure from its own process:
prune time over the time of one plain forward pass over the same tokens (forwards run before
and after each prune, the ratio uses their mean), and the peak RSS growth of a pruning process
(peak minus the RSS before the model was built) over the model's bytes; one block's
calibration activations are reported separately (``block_activation_bytes``).

    python benchmarks/llm_prune.py            # full run
    python benchmarks/llm_prune.py --quick    # fewer tokens, a 4-block cost model
    python benchmarks/llm_prune.py --skip-quality --compare-batch 1   # cost at the default batch and at 1 sequence

The last line is one JSON object: ``ppl_dense``, ``ppl`` (method -> "0.5"/"2:4" -> value),
``rise_over_magnitude`` (the issue's goals as ratios), ``ppl_wanda_comparison`` (group -> value at
50 %), OWL, depth and cost figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _timing import PINNED_TUNABLES, malloc_settings, pin_malloc_settings  # noqa: E402


def _rss_now() -> int:
    with open("/proc/self/statm", encoding="ascii") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak_rss() -> None:
    """Reset the kernel's peak RSS (VmHWM) of this process to its current RSS (Linux)."""
    with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
        handle.write("5")


def _peak_rss() -> int:
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _cost_model(layers: int):  # noqa: ANN202
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_layer=layers, n_embd=768, n_head=12, n_positions=1024, vocab_size=50257)
    return GPT2LMHeadModel(config).eval()


def _worker(kind: str, layers: int, samples: int, seq_len: int, batch_size: int | None) -> None:
    import torch

    from prunekit.core.allocator import return_large_frees
    from prunekit.llm import prune
    from prunekit.torch.llm.discovery import find_decoder_stack
    from prunekit.torch.llm.memory import default_batch_size, model_bytes

    allocator = return_large_frees()  # as `prunekit llm` and llm: recipes run (workers start without the timing pin)
    tokens = torch.randint(0, 50257, (samples, seq_len), generator=torch.Generator().manual_seed(1))
    # The same work on a 1-block model and 64 tokens first: imports, library code pages and thread
    # pools are then resident before the baseline RSS is read, so the peak measures the run itself.
    warm = _cost_model(1)
    with torch.no_grad():
        if kind == "forward":
            warm(input_ids=tokens[:1, :64], use_cache=False)
        else:
            prune(warm, tokens[:1, :64], method=kind, sparsity=0.5, n_samples=1, seq_len=64)
    del warm
    model = _cost_model(layers)
    after_model = _rss_now()
    model_rss = after_model  # the model's pages are resident now; the pruning run's growth is measured from here
    _reset_peak_rss()
    result: dict[str, float] = {"model_bytes": model_bytes(model), "large_frees_returned": allocator}
    if kind != "forward":
        result["batch_size"] = batch_size or default_batch_size(model, find_decoder_stack(model), samples, seq_len)
    started = time.perf_counter()
    with torch.no_grad():
        if kind == "forward":
            for start in range(0, samples, 4):
                model(input_ids=tokens[start : start + 4], use_cache=False)
        else:
            prune(model, tokens, method=kind, sparsity=0.5, n_samples=samples, seq_len=seq_len, batch_size=batch_size)
    result["seconds"] = time.perf_counter() - started
    result["peak_rss_growth"] = _peak_rss() - model_rss + result["model_bytes"]  # model + what the run added on top
    print(json.dumps(result))


def _run_worker(kind: str, layers: int, samples: int, seq_len: int, batch_size: int | None = None) -> dict[str, float]:
    command = [sys.executable, __file__, "--worker", kind, "--layers", str(layers), "--samples", str(samples)]
    command += ["--seq-len", str(seq_len)] + (["--batch-size", str(batch_size)] if batch_size else [])
    # workers run as `prunekit llm` does: without the timing pin (its trim threshold keeps freed memory), unless the user set one
    env = {k: v for k, v in os.environ.items() if not (k == "GLIBC_TUNABLES" and v == PINNED_TUNABLES)}
    out = subprocess.run(
        command,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _quality(quick: bool) -> dict:
    import torch

    from prunekit.llm import ensure_small_lm, load_model_dir, perplexity, prune, prune_depth
    from prunekit.methods import list_methods
    from prunekit.torch.llm.depth import CRITERIA

    directory = ensure_small_lm(log=lambda line: print(line, file=sys.stderr))
    model, tokenizer = load_model_dir(directory)
    dense_state = {k: v.clone() for k, v in model.state_dict().items()}
    valid, train = directory / "valid.txt", directory / "train.txt"
    max_tokens = 30_000 if quick else 120_000
    samples, seq_len = (32, 128) if quick else (128, 128)

    def ppl(m) -> float:  # noqa: ANN001
        return perplexity(m, valid, tokenizer, max_tokens=max_tokens).perplexity

    figures: dict = {"ppl_dense": ppl(model), "ppl": {}, "prune_seconds": {}}
    for method in list_methods(kind="llm"):
        figures["ppl"][method.name] = {}
        for label, kwargs in (("0.5", {"sparsity": 0.5}), ("2:4", {"pattern": "2:4"})):
            model.load_state_dict(dense_state)
            result = prune(model, train, tokenizer=tokenizer, method=method.name, n_samples=samples, seq_len=seq_len, **kwargs)
            figures["ppl"][method.name][label] = ppl(model)
            figures["prune_seconds"][f"{method.name} {label}"] = result.seconds
    figures["ppl_wanda_comparison"] = {"row": figures["ppl"]["wanda"]["0.5"]}
    for group in ("layer", "auto"):
        model.load_state_dict(dense_state)
        result = prune(
            model, train, tokenizer=tokenizer, method="wanda", sparsity=0.5, comparison=group, n_samples=samples, seq_len=seq_len
        )
        figures["ppl_wanda_comparison"][group] = ppl(model)
        figures["prune_seconds"][f"wanda 0.5 {group}"] = result.seconds
        if group == "auto":
            chosen = list(result.comparisons.values())
            figures["wanda_auto_layer_share"] = chosen.count("layer") / len(chosen)
    for ratios in ("uniform", "owl"):
        model.load_state_dict(dense_state)
        prune(model, train, tokenizer=tokenizer, method="wanda", sparsity=0.7, ratios=ratios, n_samples=samples, seq_len=seq_len)
        figures[f"ppl_wanda_70_{ratios}"] = ppl(model)
    for criterion in CRITERIA:
        fresh, _ = load_model_dir(directory)
        with torch.no_grad():
            depth = prune_depth(
                fresh, train, tokenizer=tokenizer, remove=0.25, criterion=criterion, n_samples=samples, seq_len=seq_len
            )
        figures[f"ppl_depth_{criterion}"] = ppl(fresh)
        figures[f"depth_removed_{criterion}"] = depth.removed
    dense = figures["ppl_dense"]
    rise = {m: {p: v - dense for p, v in row.items()} for m, row in figures["ppl"].items()}
    figures["ppl_increase"] = rise
    figures["rise_over_magnitude"] = {
        **{f"{m} {p}": rise[m][p] / rise["magnitude"][p] for m in rise if m != "magnitude" for p in rise[m]},
        **{f"wanda 0.5 {g}": (v - dense) / rise["magnitude"]["0.5"] for g, v in figures["ppl_wanda_comparison"].items()},
    }
    return figures


COST_METHODS = ("wanda", "sparsegpt")


def _cost(layers: int, samples: int, seq_len: int, compare_batch: int | None, methods: tuple[str, ...] = COST_METHODS) -> dict:
    """Cost figures at the default batch, forwards run before and after each method (A B A C A ...).

    With ``compare_batch``, each method also runs at that batch, beside its default run.
    """
    forwards = [_run_worker("forward", layers, samples, seq_len)]
    runs, compared_runs = {}, {}
    for method in methods:
        runs[method] = _run_worker(method, layers, samples, seq_len)
        if compare_batch:
            compared_runs[method] = _run_worker(method, layers, samples, seq_len, compare_batch)
        forwards.append(_run_worker("forward", layers, samples, seq_len))
    around = {m: (forwards[i]["seconds"] + forwards[i + 1]["seconds"]) / 2 for i, m in enumerate(methods)}
    model_bytes = runs[methods[0]]["model_bytes"]
    figures: dict = {
        "batch_size": runs[methods[0]]["batch_size"],
        "cost_model": f"random GPT-2, {layers} blocks of 768, {samples} x {seq_len} calibration tokens",
        "forward_seconds": sum(f["seconds"] for f in forwards) / len(forwards),
        "peak_rss_over_model_bytes": max(r["peak_rss_growth"] for r in runs.values()) / model_bytes,
        "model_bytes": model_bytes,
        "block_activation_bytes": samples * seq_len * 768 * 4,
    }
    for method, run in runs.items():
        figures[f"{method}_seconds"] = run["seconds"]
        figures[f"{method}_time_over_forward"] = run["seconds"] / around[method]
        figures[f"peak_rss_over_model_bytes_{method}"] = run["peak_rss_growth"] / model_bytes
    if compared_runs:
        figures["compare_batch"] = {"batch_size": compare_batch}
        for method, run in compared_runs.items():
            figures["compare_batch"][f"{method}_time_over_forward"] = run["seconds"] / around[method]
            figures["compare_batch"][f"peak_rss_over_model_bytes_{method}"] = run["peak_rss_growth"] / model_bytes
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description="one-shot LLM pruning: perplexity and cost")
    parser.add_argument("--quick", action="store_true", help="fewer evaluation/calibration tokens and a 4-block cost model")
    parser.add_argument("--skip-quality", action="store_true", help="only the cost figures")
    parser.add_argument("--skip-cost", action="store_true", help="only the perplexity figures")
    parser.add_argument("--cost-shape", help="cost model as BLOCKSxSAMPLESxSEQ_LEN (default 12x32x512, quick 4x8x256)")
    parser.add_argument("--compare-batch", type=int, help="also run the cost part at this many sequences per block call")
    parser.add_argument(
        "--cost-methods", default=",".join(COST_METHODS), help="comma-separated methods timed in the cost part (default: all)"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--layers", type=int, default=12, help=argparse.SUPPRESS)
    parser.add_argument("--samples", type=int, default=32, help=argparse.SUPPRESS)
    parser.add_argument("--seq-len", type=int, default=512, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args.worker, args.layers, args.samples, args.seq_len, args.batch_size)
        return
    pin_malloc_settings()
    shape = args.cost_shape or ("4x8x256" if args.quick else "12x32x512")
    layers, samples, seq_len = (int(part) for part in shape.split("x"))
    quality = {} if args.skip_quality else _quality(args.quick)
    methods = tuple(m.strip() for m in args.cost_methods.split(",") if m.strip())
    unknown = sorted(set(methods) - set(COST_METHODS))
    if unknown or not methods:
        parser.error(f"--cost-methods takes some of {', '.join(COST_METHODS)}, got {args.cost_methods!r}")
    cost = {} if args.skip_cost else _cost(layers, samples, seq_len, args.compare_batch, methods)
    from rich.console import Console

    console = Console()
    if quality:
        _print_quality(console, quality)
    if cost:
        _print_cost(console, cost)
    print(json.dumps({"benchmark": "llm_prune", **quality, **cost, "malloc": malloc_settings(), "quick": args.quick}))


def _print_quality(console, quality: dict) -> None:  # noqa: ANN001
    from rich.table import Table

    table = Table(title="small byte-level Llama, perplexity on held-out stdlib text")
    for column in ("variant", "perplexity", "rise over dense"):
        table.add_column(column, justify="right")
    table.add_row("dense", f"{quality['ppl_dense']:.3f}", "-")
    for method, row in quality["ppl"].items():
        for pattern, value in row.items():
            table.add_row(f"{method} {pattern}", f"{value:.3f}", f"{value - quality['ppl_dense']:+.3f}")
    for group, value in quality["ppl_wanda_comparison"].items():
        table.add_row(f"wanda 0.5, comparison={group}", f"{value:.3f}", f"{value - quality['ppl_dense']:+.3f}")
    for key in ("ppl_wanda_70_uniform", "ppl_wanda_70_owl", *(k for k in quality if k.startswith("ppl_depth_"))):
        table.add_row(key.removeprefix("ppl_"), f"{quality[key]:.3f}", f"{quality[key] - quality['ppl_dense']:+.3f}")
    console.print(table)


def _print_cost(console, cost: dict) -> None:  # noqa: ANN001
    from rich.table import Table

    cost_table = Table(title=cost["cost_model"])
    cost_table.add_column("figure")
    cost_table.add_column("value", justify="right")
    for key in (
        "batch_size",
        "forward_seconds",
        "wanda_seconds",
        "sparsegpt_seconds",
        "wanda_time_over_forward",
        "sparsegpt_time_over_forward",
        "peak_rss_over_model_bytes",
        "model_bytes",
        "block_activation_bytes",
    ):
        if key not in cost:  # a method left out by --cost-methods
            continue
        value = cost[key]
        cost_table.add_row(key, f"{value:.3f}" if isinstance(value, float) else f"{value:,}")
    for key, value in cost.get("compare_batch", {}).items():
        cost_table.add_row(f"at compare batch: {key}", f"{value:.3f}" if isinstance(value, float) else str(value))
    console.print(cost_table)


if __name__ == "__main__":
    main()
