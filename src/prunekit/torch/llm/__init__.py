"""One-shot pruning of ``transformers`` causal LMs, block by block within memory (the torch backend's LLM part).

Modules, one job each: :mod:`.discovery` (decoder stack and projections), :mod:`.calibration`
(token windows), :mod:`.capture` (first-block inputs, block replay), :mod:`.statistics` (input
norms, Hessians), :mod:`.selection` (row/layer/N:M masks), :mod:`.methods` (magnitude, Wanda,
SparseGPT handlers of registry kind ``"llm"``), :mod:`.ratios` (uniform, globs, OWL),
:mod:`.sequential` (the sequential driver), :mod:`.memory` (device and memory checks).
"""

from prunekit.torch.llm.calibration import calibration_tokens
from prunekit.torch.llm.discovery import DecoderStack, find_decoder_stack
from prunekit.torch.llm.methods import LayerTask, LLMMethod
from prunekit.torch.llm.sequential import PruneResult, prune

__all__ = ["DecoderStack", "LLMMethod", "LayerTask", "PruneResult", "calibration_tokens", "find_decoder_stack", "prune"]
