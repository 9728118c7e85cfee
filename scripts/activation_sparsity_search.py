"""Compare activation-sparsity allocations on the trained small LM: perplexity dense vs 50 % sparse.

The setting of ``benchmarks/sparse_speed.py``'s ``activation_sparsity_ppl_increase_50``, without
its timing parts: calibration on 16 windows of 128 tokens of the small LM's *training* text (the
same seeded windows), perplexity on the first ``--chars`` characters of its validation text. The
increase is relative to the dense perplexity on the same text; the weighted sparsity is the mean
fraction of input entries zeroed, weighted by each layer's weight count (its share of the reads).

Run: ``python scripts/activation_sparsity_search.py [--allocations greedy kl] [--chars 40000]``;
the last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.sparse_speed import calibration_windows, small_lm  # noqa: E402

from prunekit.torch.deploy.sparse import (  # noqa: E402
    activation_sparsity_report,
    apply_activation_sparsity,
    calibrate_activation_sparsity,
)
from prunekit.torch.llm.evaluate import perplexity  # noqa: E402
from prunekit.torch.llm.small_lm import byte_tokenizer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--allocations", nargs="+", default=["greedy", "kl"])
    parser.add_argument("--target", type=float, default=0.5)
    parser.add_argument("--chars", type=int, default=40_000, help="validation characters scored")
    parser.add_argument("--no-rescale", action="store_true", help="no per-layer output scale (rescale=False)")
    parser.add_argument("--save", type=Path, help="a folder to write each allocation's thresholds to (JSON)")
    args = parser.parse_args()
    loaded = small_lm()
    if loaded is None:
        raise SystemExit("the small LM is not cached: python -c 'import prunekit.llm as l; l.ensure_small_lm()'")
    model, train, valid = loaded
    tokenizer = byte_tokenizer()
    text = valid[: args.chars]
    ids = calibration_windows(train, tokenizer)
    dense = perplexity(model, [text], tokenizer).perplexity
    results: dict[str, object] = {"dense": round(dense, 4)}
    for allocation in args.allocations:
        start = time.perf_counter()
        thresholds = calibrate_activation_sparsity(
            model, [ids[:8], ids[8:]], target=args.target, allocation=allocation, rescale=not args.no_rescale
        )
        seconds = time.perf_counter() - start
        if args.save:
            args.save.mkdir(parents=True, exist_ok=True)
            (args.save / f"{allocation}.json").write_text(json.dumps(thresholds.to_json()))
        fast = apply_activation_sparsity(model, thresholds)
        ppl = perplexity(fast, [text], tokenizer).perplexity
        achieved = activation_sparsity_report(fast)
        sizes = {name: model.get_submodule(name).weight.numel() for name in achieved}
        weighted = sum(achieved[name] * sizes[name] for name in achieved) / sum(sizes.values())
        results[allocation] = {
            "perplexity": round(ppl, 4),
            "increase": round(ppl / dense - 1, 4),
            "weighted_sparsity": round(weighted, 4),
            "calibration_s": round(seconds, 1),
            "sparsities": {name: round(value, 3) for name, value in thresholds.sparsities.items()},
        }
        print(f"{allocation}: perplexity {ppl:.4f} (+{100 * (ppl / dense - 1):.2f} %), weighted {weighted:.3f}, {seconds:.0f} s")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
