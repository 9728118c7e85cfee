"""One-shot pruning of ``transformers`` causal LMs: the public front door of :mod:`prunekit.torch.llm`.

Example::

    import prunekit.llm as pl
    model, tokenizer = pl.load_model_dir("my-llm")
    result = pl.prune(model, "train.txt", tokenizer=tokenizer, method="wanda", sparsity=0.5, n_samples=32, seq_len=512)
    print(pl.perplexity(model, "valid.txt", tokenizer, context=512).perplexity)
    pl.save_pruned(model, "my-llm-pruned", tokenizer_dir="my-llm", record=result.to_dict())
"""

from __future__ import annotations

from prunekit.core.allocator import return_large_frees
from prunekit.torch.llm.calibration import calibration_tokens
from prunekit.torch.llm.checkpoint import BlockCheckpoint
from prunekit.torch.llm.depth import DepthResult, block_influence, prune_depth, remove_blocks, skip_perplexity
from prunekit.torch.llm.discovery import DecoderStack, find_decoder_stack
from prunekit.torch.llm.evaluate import Perplexity, comparison_rows, layer_sparsity, model_report, perplexity
from prunekit.torch.llm.methods import LayerTask, LLMMethod
from prunekit.torch.llm.profiling import lm_profile
from prunekit.torch.llm.ratios import owl_sparsities
from prunekit.torch.llm.saving import check_model_dir, load_model_dir, save_pruned
from prunekit.torch.llm.sequential import PruneResult, prune
from prunekit.torch.llm.small_lm import SmallLMConfig, byte_tokenizer, ensure_small_lm, train_small_lm
from prunekit.torch.llm.width import WidthResult, prune_width

__all__ = [
    "BlockCheckpoint",
    "DecoderStack",
    "DepthResult",
    "LLMMethod",
    "LayerTask",
    "Perplexity",
    "PruneResult",
    "SmallLMConfig",
    "WidthResult",
    "block_influence",
    "byte_tokenizer",
    "calibration_tokens",
    "check_model_dir",
    "comparison_rows",
    "ensure_small_lm",
    "find_decoder_stack",
    "layer_sparsity",
    "lm_profile",
    "load_model_dir",
    "model_report",
    "owl_sparsities",
    "perplexity",
    "prune",
    "prune_depth",
    "prune_width",
    "remove_blocks",
    "return_large_frees",
    "save_pruned",
    "skip_perplexity",
    "train_small_lm",
]
