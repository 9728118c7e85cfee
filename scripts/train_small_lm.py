"""Train prunekit's small byte-level Llama on the standard library's source (<= 10 minutes on 2 CPU cores).

Usage::

    python scripts/train_small_lm.py                 # into the cache ($PRUNEKIT_CACHE or ~/.cache/prunekit)
    python scripts/train_small_lm.py --output DIR --steps 200
"""

from __future__ import annotations

import argparse
import dataclasses

from prunekit.torch.llm.small_lm import MODEL_NAME, SmallLMConfig, cache_dir, train_small_lm


def main() -> None:
    defaults = SmallLMConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=str(cache_dir() / MODEL_NAME), help="model directory to write")
    parser.add_argument(
        "--max-seconds", type=float, default=defaults.max_seconds, help="stop early after this long (machine-dependent result)"
    )
    parser.add_argument("--steps", type=int, default=defaults.steps, help="most optimizer steps")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--batch", type=int, default=defaults.batch, help="sequences per step")
    parser.add_argument("--lr", type=float, default=defaults.lr, help="peak learning rate")
    parser.add_argument("--continue-from", metavar="DIR", help="keep training the model saved in DIR")
    args = parser.parse_args()
    config = dataclasses.replace(
        defaults, max_seconds=args.max_seconds, steps=args.steps, seed=args.seed, batch=args.batch, lr=args.lr
    )
    path = train_small_lm(args.output, config, init_from=args.continue_from)
    print(f"saved {path}")


if __name__ == "__main__":
    main()
