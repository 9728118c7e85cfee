"""Run a recipe's ``llm:`` section: prune a causal LM one-shot, measure it beside the dense model, save it, report.

Every step is a public :mod:`prunekit.llm` call (``prune``, ``model_report``, ``save_pruned``); this
module only wires them as the recipe says, like :mod:`prunekit.recipes.runner` does for the
train-prune-fine-tune chain.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prunekit.core.allocator import return_large_frees
from prunekit.core.atomic import atomic_write_text
from prunekit.core.tables import ResultTable
from prunekit.errors import ConfigError
from prunekit.recipes.config import CHECKPOINT_DIR, LLMConfig, Recipe
from prunekit.report.html import Report, Section, write_report


def _model_dir(config: LLMConfig) -> Path:
    from prunekit.llm import ensure_small_lm

    return ensure_small_lm(log=None) if config.model == "demo" else Path(config.model)


def run_llm_recipe(
    recipe: Recipe, out_dir: str | Path, recipe_text: str | None = None, *, resume: bool = False, checkpoint_every: int = 1
) -> dict[str, Any]:
    """Prune ``recipe.llm.model`` one-shot and write ``OUT/pruned`` (a ``from_pretrained`` directory),
    ``results.json`` and ``report.{html,md,json}``.

    The pruned blocks are checkpointed into ``OUT/.checkpoints/llm`` every ``checkpoint_every``
    blocks; after a kill, ``resume=True`` continues at the next block (removed once complete).

    Returns ``{"recipe", "dense": {perplexity, ...}, "pruned": {...}, "prune": {...}, "model_dir"}``.

    Example::

        results = run_llm_recipe(load_recipe("llm.yaml"), "out")
        results["pruned"]["perplexity"]
    """
    from prunekit.llm import BlockCheckpoint, comparison_rows, lm_profile, load_model_dir, model_report, prune, save_pruned
    from prunekit.torch.llm.sequential import prepare_tokens

    return_large_frees()  # recipes run in prunekit's own process: freed tensors go back to the system

    config = recipe.llm
    if config is None:
        raise ConfigError("the recipe has no llm section")
    out = Path(out_dir)
    directory = _model_dir(config)
    model, tokenizer = load_model_dir(directory)
    calibration = config.calibration or directory / "train.txt"
    evaluation = config.eval_text or directory / "valid.txt"
    for what, path in (("llm.calibration", calibration), ("llm.eval_text", evaluation)):
        if not Path(path).is_file():
            raise ConfigError(f"{what}: {path} does not exist; give a text file (the model directory has none)")
    dense = model_report(model, evaluation, tokenizer, max_tokens=config.eval_tokens, directory=directory)
    result = prune(
        model,
        calibration,
        tokenizer=tokenizer,
        method=config.method,
        sparsity=config.sparsity,
        pattern=config.pattern,
        ratios=config.layer_ratios or config.ratios,
        comparison=config.comparison,
        skip=config.skip,
        n_samples=config.samples,
        seq_len=config.seq_len,
        seed=recipe.seed,
        device=config.device,
        checkpoint=BlockCheckpoint(out / CHECKPOINT_DIR / "llm", every=checkpoint_every, resume=resume),
    )
    saved = save_pruned(
        model,
        out / "pruned",
        tokenizer_dir=directory,
        record=result.to_dict(),
        overwrite=True,
        compact=config.pattern is not None,
        profile=lm_profile(model, prepare_tokens(model, calibration, tokenizer, config.samples, config.seq_len, recipe.seed)),
    )
    pruned = model_report(model, evaluation, tokenizer, max_tokens=config.eval_tokens, directory=saved)
    label = f"{config.method} {config.pattern or format(config.sparsity, '.0%')}"
    results = {
        "recipe": recipe.name,
        "model_dir": str(directory),
        "dense": dense,
        "pruned": pruned,
        "prune": result.to_dict(),
        "output": str(saved),
    }
    atomic_write_text(out / "results.json", json.dumps(results, indent=2, default=str) + "\n")
    columns, rows = comparison_rows({"dense": dense, label: pruned})
    table = ResultTable(f"{recipe.name}: dense beside {label} on {Path(evaluation).name}", columns, rows)
    report = Report(
        f"prunekit run: {recipe.name}", [Section("Dense and pruned", tables=[table])], data=results, recipe=recipe_text
    )
    write_report(report, out)
    return results
