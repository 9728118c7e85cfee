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
import re
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.torch.llm.discovery import in_features
from prunekit.torch.llm.experts import stacked_matrices
from tests.zoo.generated import HEAD_DIM, INTERMEDIATE, VOCAB, WIDTH, FamilySkipped, first_line, shrunk_config, time_limit

METHODS = ("magnitude", "wanda", "sparsegpt")
PATTERNS = ("0.5", "2:4")
#: New families (beyond tests/torch/llm/tiny.py) the default test run checks: sliding-window
#: attention with soft-capping, fused q/k/v with parallel attention + MLP, a mixture of experts
#: (fused 3-D expert tensors) and a hybrid stack of short-convolution and attention blocks.
DEFAULT_LLM_FAMILIES = ("gemma2", "falcon", "qwen2_moe", "lfm2")
MAX_FAMILY_SECONDS = 20.0  # the budget of one family's whole check on a loaded 2-core machine
SAMPLES, SEQ_LEN, EVAL_TOKENS, PROMPT, NEW_TOKENS = 4, 32, 96, 6, 4


@dataclass
class LLMOutcome:
    """What :func:`check_llm_family` found: ``status`` is ``"pass"``, ``"fail"`` or ``"skip"``.

    ``ppl`` maps method -> pattern (``"0.5"``, ``"2:4"``) -> perplexity after pruning;
    ``width`` / ``depth`` say what the width / depth prune removed or why the family has none;
    ``dense_weights`` names the block weights no LLM method prunes (fused tensors used other than as
    per-expert projections, state-space convolutions...); ``fused_pruned`` counts the fused expert tensors
    (and 2-D router weights) pruned slice by slice.
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
    generate: str = ""
    dense_weights: str = ""
    fused_pruned: str = ""
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
            "generate": self.generate,
            "dense_weights": self.dense_weights,
            "fused_pruned": self.fused_pruned,
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


#: Width-like fields the structured zoo's shrinker leaves alone (latent ranks, state sizes, per-head
#: and feed-forward widths under other names), cut to ``DEEP_WIDTH`` when a shrunk model is still big.
_DEEP_FIELDS = re.compile(
    r"(rotary_dim|head_dim|dim_head|_rank$|^dff$|dim_ff|d_ssm|d_state|state_size|chunk_size|_n_heads$|num_heads$|topk$)"
)
_MODEL_WIDTHS = re.compile(r"^(emb_dim|d_embed|n_embed)$")  # hidden sizes under names the zoo does not shrink
_MLP_WIDTHS = re.compile(r"^(d_inner|dim_feedforward|expert_ffn_hidden_size)$")  # MLP widths the zoo does not shrink
_ROUTING = {
    "n_group": 1,
    "topk_group": 1,
    "num_expert_group": 1,
    "num_experts_per_token": 2,
    "num_experts_per_tok": 2,
    "moe_k": 2,
    "zero_expert_num": 2,
}
DEEP_WIDTH = 16


def _deep_overrides(config: Any) -> dict[str, Any]:
    """Overrides cutting every remaining width-like field over DEEP_WIDTH (by name, never by family)."""
    deep = {
        key: HEAD_DIM if "rotary" in key else DEEP_WIDTH
        for key, value in config.to_dict().items()
        if type(value) is int and value > DEEP_WIDTH and _DEEP_FIELDS.search(key)
    }
    for key, value in config.to_dict().items():
        if type(value) is int and value > WIDTH and _MODEL_WIDTHS.match(key):
            deep[key] = WIDTH
        elif type(value) is int and value > INTERMEDIATE and _MLP_WIDTHS.match(key):
            deep[key] = INTERMEDIATE
        elif key in _ROUTING and (value is None or (type(value) is int and value > _ROUTING[key])):  # for 4 experts
            deep[key] = _ROUTING[key]
    parts = [k for k in ("qk_nope_head_dim", "qk_rope_head_dim") if k in config.to_dict()]
    if "qk_head_dim" in config.to_dict() and len(parts) == 2:  # a derived field: keep it the sum of its parts
        deep["qk_head_dim"] = sum(deep.get(k, config.to_dict()[k]) for k in parts)
    if len(parts) == 2 and "head_dim" in config.to_dict():  # latent attention rotates head_dim = the rope part
        deep["head_dim"] = deep.get("qk_rope_head_dim", config.to_dict()["qk_rope_head_dim"])
    return deep


def _keep_layer_kinds(config: Any, default: Any) -> None:
    """Per-layer lists cut to the first blocks (``layer_types``) that lost a kind of block get one of each kind
    back, so a hybrid stack keeps its attention blocks beside its linear-attention / state-space ones."""
    for key, value in vars(config).items():
        full = getattr(default, key, None)
        if (
            isinstance(value, list)
            and isinstance(full, list)
            and len(full) > len(value) > 0
            and all(isinstance(v, str) for v in full)
        ):
            kinds = list(dict.fromkeys(full))
            if len(set(value)) < min(len(kinds), len(value)):
                setattr(config, key, (kinds + [kinds[-1]] * len(value))[: len(value)])


def _configs_to_try(family: str, model_class: type) -> list[Any]:
    """Shrunk configs to try in turn, as the class takes them (a composite config's sub-config when the class
    wants that): with the big width-like fields cut and the layer kinds kept, then without each of the two."""
    from transformers import AutoConfig

    default = AutoConfig.for_model(family)
    plain = shrunk_config(family)
    kinds = copy.deepcopy(plain)
    _keep_layer_kinds(kinds, default)
    for name, part in list(vars(kinds).items()):
        if hasattr(part, "to_dict") and hasattr(part, "model_type") and getattr(default, name, None) is not None:
            _keep_layer_kinds(part, getattr(default, name))
    tries = []
    for config in (kinds, plain):
        if getattr(config, "is_decoder", None) is False:  # a causal LM is a decoder (BERT-like, Reformer)
            config.is_decoder = True
        wanted = getattr(model_class, "config_class", None)
        if isinstance(wanted, type) and not isinstance(config, wanted):
            config = next((v for v in vars(config).values() if isinstance(v, wanted)), config)
        deep = copy.deepcopy(config)
        for key, value in _deep_overrides(config).items():
            setattr(deep, key, value)
        tries += [deep, config]
    unique: dict[str, Any] = {}
    for config in tries:
        unique.setdefault(config.to_json_string(), config)
    return list(unique.values())


def build_causal_lm(family: str) -> nn.Module:
    """A randomly initialised, float32, eval-mode causal LM of ``family`` that runs on token ids.

    The structured zoo's shrunk config is tried with the remaining big width-like fields cut too
    (when there are any), then as it is. Raises :class:`~tests.zoo.generated.FamilySkipped` with
    the reason when ``transformers`` cannot build or run it from either.
    """
    import transformers

    class_name = discover_causal_families()[family]
    try:
        model_class = getattr(transformers, class_name)
    except Exception as exc:
        raise FamilySkipped(f"cannot import {class_name}: {first_line(exc)}") from exc
    try:
        configs = _configs_to_try(family, model_class)
    except Exception as exc:
        note = _default_note(family, model_class)
        raise FamilySkipped(f"transformers cannot make a shrunk {family} config: {first_line(exc)}{note}") from exc
    errors = []
    for config in configs:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = model_class(config).float().eval()
        except FamilySkipped:
            raise
        except Exception as exc:
            errors.append(f"cannot build {class_name} from a shrunk random config: {first_line(exc)}")
            continue
        ids = token_ids(model, (2, SEQ_LEN), seed=0)
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model(input_ids=ids, use_cache=False)
        except FamilySkipped:
            raise
        except Exception as exc:
            errors.append(f"{class_name} does not run a forward on token ids: {first_line(exc)}")
            continue
        return model
    raise FamilySkipped(f"{errors[-1]}{_default_note(family, model_class, built=' forward ' in errors[-1])}")


def _default_note(family: str, model_class: type, built: bool = False) -> str:
    """Whether the family's own, unshrunk default config builds (on ``meta``): says whose constraint failed."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.for_model(family)
        wanted = getattr(model_class, "config_class", None)
        if isinstance(wanted, type) and not isinstance(config, wanted):
            config = next((v for v in vars(config).values() if isinstance(v, wanted)), config)
        if getattr(config, "is_decoder", None) is False:
            config.is_decoder = True
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model_class(config)
    except Exception as exc:
        return f" (its unshrunk default config fails to build too: {first_line(exc)[:100]})"
    if built:  # the shrunk model built but its forward failed: the full-size forward is too big to try here
        return " (its unshrunk default config builds too, on meta; its full-size forward is not tried)"
    return " (its unshrunk default config builds: the generic shrink breaks a constraint between its fields)"


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
    classes = "/".join(dict.fromkeys(type(block).__name__ for block in stack.blocks))
    outcome.stack = f"{stack.path} ({len(stack.blocks)} x {classes})"
    outcome.projections = sum(len(p) for p in stack.projections)
    calibration = token_ids(model, (SAMPLES, SEQ_LEN), seed=1)
    text = token_ids(model, (EVAL_TOKENS,), seed=2)
    stages.append("dense perplexity")
    outcome.ppl_dense = _perplexity(model, text)
    stages.append("dense generate")
    try:
        _assert_generates(model)
    except Exception as exc:  # transformers' own generate() on the dense model: not prunekit's to check
        outcome.generate = f"n/a: the dense model's generate() fails: {first_line(exc)}"
    else:
        outcome.generate = "dense and pruned"
    modules = dict(model.named_modules())
    indivisible = [n for i in range(len(stack.blocks)) for n in stack.projection_names(i) if in_features(modules[n]) % 4]
    indivisible += [  # a fused expert tensor's input side is learned while pruning: both sides must divide
        n
        for n, p in model.named_parameters()
        if stacked_matrices(p) and n.startswith(f"{stack.path}.") and any(s % 4 for s in p.shape[1:])
    ]
    pruned = model
    for method in METHODS:
        for pattern in PATTERNS:
            stages.append(f"{method} {pattern}")
            pruned = copy.deepcopy(model)
            spec: dict[str, Any] = {"pattern": pattern, "skip": indivisible} if ":" in pattern else {"sparsity": float(pattern)}
            result = pl.prune(pruned, calibration, method=method, n_samples=SAMPLES, seq_len=SEQ_LEN, **spec)
            _assert_exact_sparsity(model, pruned, result, pattern)
            fused = result.extra.get("fused_input_dims", {})
            if fused:
                slices = sum(n.endswith("]") for n in result.achieved)
                outcome.fused_pruned = f"{len(fused)} fused weight tensors pruned per expert ({slices} expert slices)"
            if "dense_weight_share" in result.extra:
                names = ", ".join(sorted({n.rsplit(".", 1)[0] for n in result.extra["dense_weights"]})[:3])
                outcome.dense_weights = f"{result.extra['dense_weight_share']:.0%} of block weights are no projection ({names})"
            outcome.ppl.setdefault(method, {})[pattern] = _perplexity(pruned, text)
    stages.append("generate after pruning")
    if outcome.generate.startswith("dense"):
        _assert_generates(pruned)
    stages.append("depth prune")
    outcome.depth = _depth(model, calibration, text, outcome.generate.startswith("dense"))
    stages.append("width prune")
    outcome.width = _width(model, calibration, text, outcome.generate.startswith("dense"))


def _perplexity(model: nn.Module, text: torch.Tensor) -> float:
    import prunekit.llm as pl

    value = pl.perplexity(model, text, context=SEQ_LEN).perplexity
    if not math.isfinite(value):
        raise AssertionError(f"perplexity is {value}")
    return value


def _matrix(model: nn.Module, name: str, input_dims: dict[str, int]) -> torch.Tensor:
    """A pruned projection's or expert slice's (``...experts.down_proj[3]``) weight as ``[out, in]``."""
    from prunekit.torch.llm.discovery import weight_matrix

    param, _, expert = name[:-1].rpartition("[") if name.endswith("]") else (name, "", "")
    if param in input_dims:
        piece = model.get_parameter(param)
        piece = piece[int(expert)] if expert else piece
        return (piece.t() if input_dims[param] == 0 else piece).detach()
    return weight_matrix(model.get_submodule(name)).detach()


def _assert_exact_sparsity(dense: nn.Module, pruned: nn.Module, result: Any, pattern: str) -> None:
    """Every discovered projection and every slice of a fused expert tensor pruned per expert holds exactly the
    zeros its comparison group asks for (or the N:M pattern along its input dim)."""
    import prunekit.llm as pl
    from prunekit.torch.llm.selection import pruned_count

    names = [
        n for i in range(len(pl.find_decoder_stack(pruned).blocks)) for n in pl.find_decoder_stack(pruned).projection_names(i)
    ]
    names = [n for n in names if n not in result.recipe["skip"]]  # N:M: the layers whose inputs M does not divide
    input_dims = result.extra.get("fused_input_dims", {})
    fused = [n for n in result.achieved if n not in names]
    if not set(names) <= set(result.achieved) or any((n[:-1].rpartition("[")[0] or n) not in input_dims for n in fused):
        raise AssertionError(
            f"pruned {len(result.achieved)} weights: not the {len(names)} projections discovered plus fused experts"
        )
    for name in names + fused:
        weight = _matrix(pruned, name, input_dims)
        zeros = int((weight == 0).sum())
        already = int((_matrix(dense, name, input_dims) == 0).sum())
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
            expected = rows * pruned_count(cols, share) if comparison == "row" else pruned_count(rows * cols, share)
        dead = rows * int((weight == 0).all(dim=0).sum())  # SparseGPT zeroes the weights of inputs that are always 0
        if not expected <= zeros <= expected + already + dead:
            raise AssertionError(
                f"{name}: {zeros} zeros of {rows * cols}, expected {expected} (+{already} already zero, {dead} in dead columns)"
            )
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


def _depth(model: nn.Module, calibration: torch.Tensor, text: torch.Tensor, generates: bool) -> str:
    """Remove one block of a copy by block influence; check the block count, the config, a perplexity, generate()."""
    import prunekit.llm as pl

    count = len(pl.find_decoder_stack(model).blocks)
    if count < 2:
        return f"none: the stack holds {count} block"
    shallow = copy.deepcopy(model)
    try:
        depth = pl.prune_depth(shallow, calibration, remove=1, n_samples=SAMPLES, seq_len=SEQ_LEN)
    except ConfigError as exc:
        return "none: " + str(exc)[:160]
    left = len(pl.find_decoder_stack(shallow).blocks)
    if left != count - 1:
        raise AssertionError(f"depth prune left {left} of {count} blocks")
    _assert_config_rebuilds(shallow)  # the config describes the shallower model: it reloads
    _perplexity(shallow, text)
    if generates:
        _assert_generates(shallow)
    return f"removed block {depth.removed[0]} of {count}"


def _width(model: nn.Module, calibration: torch.Tensor, text: torch.Tensor, generates: bool) -> str:
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
        if generates:
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
    "METHODS",
    "PATTERNS",
    "build_causal_lm",
    "check_llm_family",
    "discover_causal_families",
    "token_ids",
]
