"""A sweep of ``prunekit.llm`` over every causal-LM family of the installed ``transformers``.

Families are discovered, not listed: each ``model_type`` of ``MODEL_FOR_CAUSAL_LM_MAPPING_NAMES``
is one family, built from its default config shrunk by the structured zoo's generic shrinker
(:func:`tests.zoo.generated.shrunk_config`: 2 layers, width 32, 4 heads, vocabulary 128, context
128) with random weights, so nothing is downloaded. :func:`check_llm_family` runs what a user of
``prunekit.llm`` would: discovery of the decoder stack, a dense perplexity, magnitude / Wanda /
SparseGPT at 50 % and at 2:4 on fresh copies (the sparsity must be exact, the model must still
run and score a finite perplexity), ``generate()`` on a pruned copy, a depth prune of one block
(and ``generate()``), and a width prune of MLP neurons and KV groups where the family's
structure allows one (the config must then rebuild the narrower shapes, so it reloads).

A family is skipped, with the reason, only when ``transformers`` cannot build or run it from a
shrunk random config offline, or when its checks take longer than ``MAX_FAMILY_SECONDS``.
``scripts/llm_zoo_report.py`` writes the outcomes to ``tests/zoo/llm_status.json`` and
``docs/llm.md``.

Example::

    outcome = check_llm_family("llama")  # LLMOutcome(family='llama', status='pass', ...)
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from prunekit.errors import ConfigError
from tests.zoo.generated import VOCAB, FamilySkipped, first_line, shrunk_config, time_limit

METHODS = ("magnitude", "wanda", "sparsegpt")
PATTERNS = ("0.5", "2:4")
#: New families (beyond tests/torch/llm/tiny.py) the default test run checks: sliding-window
#: attention with soft-capping, fused q/k/v with parallel attention + MLP, a mixture of experts
#: and a hybrid attention / state-space stack.
DEFAULT_LLM_FAMILIES = ("gemma2", "falcon", "qwen2_moe", "bamba")
MAX_FAMILY_SECONDS = 20.0  # the budget of one family's whole check on a loaded 2-core machine
SAMPLES, SEQ_LEN, EVAL_TOKENS, PROMPT, NEW_TOKENS = 4, 32, 96, 6, 4


@dataclass
class LLMOutcome:
    """What :func:`check_llm_family` found: ``status`` is ``"pass"``, ``"fail"`` or ``"skip"``.

    ``ppl`` maps method -> pattern (``"0.5"``, ``"2:4"``) -> perplexity after pruning;
    ``width`` says what the width prune removed or why the family has none.
    """

    family: str
    model_class: str
    status: str
    reason: str = ""
    stack: str = ""
    projections: int = 0
    ppl_dense: float | None = None
    ppl: dict[str, dict[str, float]] = field(default_factory=dict)
    depth: str = ""
    width: str = ""
    seconds: float = 0.0

    def to_record(self) -> dict[str, Any]:
        """The JSON record of ``tests/zoo/llm_status.json``."""
        return {
            "model_class": self.model_class,
            "status": self.status,
            "reason": self.reason,
            "stack": self.stack,
            "projections": self.projections,
            "ppl_dense": _round(self.ppl_dense),
            "ppl": {m: {p: _round(v) for p, v in by.items()} for m, by in self.ppl.items()},
            "depth": self.depth,
            "width": self.width,
            "seconds": round(self.seconds, 1),
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def discover_causal_families() -> dict[str, str]:
    """``{model_type: causal-LM class name}`` for every family of ``MODEL_FOR_CAUSAL_LM_MAPPING_NAMES``, sorted."""
    from transformers.models.auto import modeling_auto

    found = {}
    for family, class_name in modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.items():
        found[family] = class_name[0] if isinstance(class_name, (tuple, list)) else class_name
    return dict(sorted(found.items()))


def _special_ids(values: dict[str, Any]) -> set[int]:
    """Every id a config dict reserves (``*_token_id``, ``*_token_index``), in it or its sub-configs."""
    ids: set[int] = set()
    for key, value in values.items():
        if isinstance(value, dict):
            ids |= _special_ids(value)
        elif str(key).endswith(("_token_id", "_token_index", "_token_ids")):
            ids.update(v for v in (value if isinstance(value, list) else [value]) if isinstance(v, int))
    return ids


def _vocab(model: nn.Module) -> int:
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    weight = getattr(embeddings, "weight", None)
    return int(weight.shape[0]) if isinstance(weight, torch.Tensor) else VOCAB


def token_ids(model: nn.Module, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Random ids of ``shape`` below the model's vocabulary (at most 128), avoiding the ids its config reserves."""
    vocab = min(_vocab(model), VOCAB)
    allowed = torch.tensor([i for i in range(3, vocab) if i not in _special_ids(model.config.to_dict())])
    picks = torch.randint(0, allowed.numel(), shape, generator=torch.Generator().manual_seed(seed))
    return allowed[picks]


def build_causal_lm(family: str) -> nn.Module:
    """A randomly initialised, float32, eval-mode causal LM of ``family`` that runs on token ids.

    Raises :class:`~tests.zoo.generated.FamilySkipped` with the reason when ``transformers``
    cannot build or run it from a shrunk config.
    """
    import transformers

    class_name = discover_causal_families()[family]
    try:
        model_class = getattr(transformers, class_name)
    except Exception as exc:
        raise FamilySkipped(f"cannot import {class_name}: {first_line(exc)}") from exc
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = model_class(shrunk_config(family)).float().eval()
    except FamilySkipped:
        raise
    except Exception as exc:
        raise FamilySkipped(f"cannot build {class_name} from a shrunk random config: {first_line(exc)}") from exc
    ids = token_ids(model, (2, SEQ_LEN), seed=0)
    try:
        with torch.no_grad():
            model(input_ids=ids, use_cache=False)
    except FamilySkipped:
        raise
    except Exception as exc:
        raise FamilySkipped(f"{class_name} does not run a forward on token ids: {first_line(exc)}") from exc
    return model


def check_llm_family(family: str) -> LLMOutcome:
    """Build ``family`` and run every ``prunekit.llm`` check on it; never raises."""
    class_name = discover_causal_families().get(family, "")
    outcome = LLMOutcome(family, class_name, "pass")
    start = time.perf_counter()
    torch.manual_seed(0)
    stages = ["build"]
    try:
        with time_limit(MAX_FAMILY_SECONDS, f"its checks took over {MAX_FAMILY_SECONDS:.0f} s on 2 CPU cores"):
            model = build_causal_lm(family)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _checks(model, outcome, stages)
    except FamilySkipped as exc:
        outcome.status, outcome.reason = "skip", f"{exc} (at {stages[-1]})" if len(stages) > 1 else str(exc)
    except Exception as exc:
        outcome.status, outcome.reason = "fail", f"{stages[-1]}: {first_line(exc)}"
    outcome.seconds = time.perf_counter() - start
    return outcome


def _checks(model: nn.Module, outcome: LLMOutcome, stages: list[str]) -> None:
    """Run the checks on ``model``, appending each stage's name to ``stages`` before it runs (for the reason)."""
    import prunekit.llm as pl

    stages.append("discovery")
    stack = pl.find_decoder_stack(model)
    outcome.stack = f"{stack.path} ({len(stack.blocks)} x {type(stack.blocks[0]).__name__})"
    outcome.projections = sum(len(p) for p in stack.projections)
    calibration = token_ids(model, (SAMPLES, SEQ_LEN), seed=1)
    text = token_ids(model, (EVAL_TOKENS,), seed=2)
    stages.append("dense perplexity")
    outcome.ppl_dense = _perplexity(model, text)
    pruned = model
    for method in METHODS:
        for pattern in PATTERNS:
            stages.append(f"{method} {pattern}")
            pruned = copy.deepcopy(model)
            spec: dict[str, Any] = {"pattern": pattern} if ":" in pattern else {"sparsity": float(pattern)}
            result = pl.prune(pruned, calibration, method=method, n_samples=SAMPLES, seq_len=SEQ_LEN, **spec)
            _assert_exact_sparsity(model, pruned, result, pattern)
            outcome.ppl.setdefault(method, {})[pattern] = _perplexity(pruned, text)
    stages.append("generate after pruning")
    _assert_generates(pruned)
    stages.append("depth prune")
    shallow = copy.deepcopy(model)
    depth = pl.prune_depth(shallow, calibration, remove=1, n_samples=SAMPLES, seq_len=SEQ_LEN)
    left = len(pl.find_decoder_stack(shallow).blocks)
    if left != len(stack.blocks) - 1 or getattr(shallow.config, "num_hidden_layers", left) != left:
        raise AssertionError(f"depth prune left {left} blocks, config says {shallow.config.num_hidden_layers}")
    _perplexity(shallow, text)
    _assert_generates(shallow)
    outcome.depth = f"removed block {depth.removed[0]} of {len(stack.blocks)}"
    stages.append("width prune")
    outcome.width = _width(model, calibration, text)


def _perplexity(model: nn.Module, text: torch.Tensor) -> float:
    import prunekit.llm as pl

    value = pl.perplexity(model, text, context=SEQ_LEN).perplexity
    if not math.isfinite(value):
        raise AssertionError(f"perplexity is {value}")
    return value


def _assert_exact_sparsity(dense: nn.Module, pruned: nn.Module, result: Any, pattern: str) -> None:
    """Every discovered projection holds exactly the zeros its comparison group asks for (or the N:M pattern)."""
    import prunekit.llm as pl
    from prunekit.torch.llm.discovery import weight_matrix

    names = [
        n for i in range(len(pl.find_decoder_stack(pruned).blocks)) for n in pl.find_decoder_stack(pruned).projection_names(i)
    ]
    if sorted(result.achieved) != sorted(names):
        raise AssertionError(f"pruned {len(result.achieved)} projections of the {len(names)} discovered")
    before, after = dict(dense.named_modules()), dict(pruned.named_modules())
    for name in names:
        weight = weight_matrix(after[name]).detach()
        zeros = int((weight == 0).sum())
        already = int((weight_matrix(before[name]) == 0).sum())
        rows, cols = weight.shape
        if ":" in pattern:
            n, m = (int(x) for x in pattern.split(":"))
            kept = (weight.reshape(rows, cols // m, m) != 0).sum(-1)
            if int(kept.max()) > n:
                raise AssertionError(f"{name}: a group of {m} keeps {int(kept.max())} nonzeros, not at most {n}")
            expected = rows * cols // 2
        else:
            share = float(pattern)
            comparison = result.comparisons.get(name, "row")
            expected = rows * int(cols * share) if comparison == "row" else int(rows * cols * share)
        if not expected <= zeros <= expected + already:
            raise AssertionError(f"{name}: {zeros} zeros of {rows * cols}, expected {expected} (+{already} already zero)")
        if abs(result.achieved[name] - zeros / weight.numel()) > 1e-12:
            raise AssertionError(
                f"{name}: reported sparsity {result.achieved[name]} but the model holds {zeros / weight.numel()}"
            )


def _assert_generates(model: nn.Module) -> None:
    prompt = token_ids(model, (1, PROMPT), seed=3)
    with torch.no_grad():
        out = model.generate(
            prompt, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=int(prompt[0, 0])
        )
    if tuple(out.shape) != (1, PROMPT + NEW_TOKENS):
        raise AssertionError(f"generate() returned shape {tuple(out.shape)}, expected (1, {PROMPT + NEW_TOKENS})")


def _width(model: nn.Module, calibration: torch.Tensor, text: torch.Tensor) -> str:
    """Width-prune a copy (MLP neurons and KV groups, else MLP only) and check it runs and its config rebuilds it."""
    import prunekit.llm as pl

    tried = []
    for mlp, heads in ((0.5, 0.5), (0.5, 0.0)):
        narrow = copy.deepcopy(model)
        try:
            result = pl.prune_width(narrow, calibration, mlp=mlp, heads=heads, n_samples=SAMPLES, seq_len=SEQ_LEN)
        except ConfigError as exc:
            tried.append(str(exc))
            continue
        _perplexity(narrow, text)
        _assert_generates(narrow)
        _assert_config_rebuilds(narrow)
        parts = [f"MLP {result.intermediate[0]} -> {result.intermediate[1]}"] if result.intermediate else []
        parts += [f"KV groups {result.kv_groups[0]} -> {result.kv_groups[1]}"] if result.kv_groups else []
        return ", ".join(parts)
    return "none: " + tried[-1][:160]


def _assert_config_rebuilds(model: nn.Module) -> None:
    """A model built from the pruned config (on ``meta``) has the pruned model's parameter shapes: it reloads."""
    with torch.device("meta"):
        fresh = type(model)(model.config)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    again = {k: tuple(v.shape) for k, v in fresh.state_dict().items()}
    differ = [k for k in shapes if k in again and shapes[k] != again[k]]
    if differ:
        raise AssertionError(f"the pruned config rebuilds {differ[0]} as {again[differ[0]]}, the model holds {shapes[differ[0]]}")


__all__ = [
    "DEFAULT_LLM_FAMILIES",
    "LLMOutcome",
    "build_causal_lm",
    "check_llm_family",
    "discover_causal_families",
    "token_ids",
]
