"""A zoo generated from ``transformers``' auto-model mappings: every vision, text and audio family.

Families are discovered, not listed: each ``model_type`` of the image-classification,
audio-classification and sequence-classification mappings is one family, built from its
default config shrunk generically (layer counts to 2, widths to 32, heads to 4, intermediate
sizes to 64, vocabularies to 128, images to 32 pixels; lists of stage widths and heads divided
by a common factor) with random weights, so nothing is downloaded. A family that cannot be built
small and fast is skipped with the reason (a missing optional package, a config whose fields
constrain each other beyond the generic shrink, a forward slower than ``MAX_BUILD_SECONDS``).

:func:`check_family` is what the zoo test asserts and what ``scripts/zoo_report.py`` tabulates
into ``docs/structured.md``: the oracle (silenced channels removed leave outputs equal to 1e-5)
and a 50 % prune (forward runs, output shape unchanged, MACs fall at least 1.6x where any group
is prunable, ``save_pruned`` -> ``load_pruned`` round-trips).

Example::

    model, inputs = build_family("vit")
    outcome = check_family("bert")  # FamilyOutcome(family='bert', status='pass', ...)
"""

from __future__ import annotations

import math
import signal
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

#: Mappings searched for families, by modality, in this order (a family takes its first hit).
MAPPINGS = (
    ("vision", "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES"),
    ("audio", "MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES"),
    ("text", "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES"),
)
#: The families the default test run checks: one or two per modality and attention style
#: (conv stages, a ViT, an encoder, decoders with and without GQA, an encoder-decoder, speech).
DEFAULT_FAMILIES = ("resnet", "convnext", "vit", "bert", "gpt2", "llama", "bart", "wav2vec2")
MAX_BUILD_SECONDS = 15.0  # generous: a loaded 2-core machine must not skip what a quiet one builds
WIDTH, HEADS, HEAD_DIM, INTERMEDIATE, VOCAB, POSITIONS, IMAGE = 32, 4, 8, 64, 128, 128, 32
BATCH, TOKENS, SAMPLES = 2, 12, 4000

_LAYER_KEYS = {
    "num_hidden_layers",
    "num_layers",
    "n_layer",
    "n_layers",
    "encoder_layers",
    "decoder_layers",
    "num_encoder_layers",
    "num_decoder_layers",
}
_WIDTH_KEYS = {"hidden_size", "d_model", "n_embd", "embed_dim", "dim", "hidden_dim", "output_hidden_size"}
_HEAD_KEYS = {
    "num_attention_heads",
    "n_head",
    "num_heads",
    "encoder_attention_heads",
    "decoder_attention_heads",
    "n_heads",
}
_INTERMEDIATE_KEYS = {"n_inner", "d_ff", "ffn_hidden_size", "encoder_ffn_dim", "decoder_ffn_dim", "ffn_dim"}
_EXPERT_KEYS = {"num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts"}
_ACTIVE_EXPERT_KEYS = {"num_experts_per_tok", "top_k", "moe_topk"}
_POSITION_KEYS = {"max_position_embeddings", "n_positions", "max_source_positions", "max_target_positions"}
_STAGE_LISTS = {"hidden_sizes", "conv_dim", "embed_dims", "dims", "widths", "channels"}
_HEAD_LISTS = {"num_heads", "num_attention_heads", "heads"}


class FamilySkipped(Exception):
    """A family that cannot be built small, offline and fast; the message is the recorded reason."""


@dataclass
class FamilyOutcome:
    """What :func:`check_family` found: ``status`` is ``"pass"``, ``"fail"`` or ``"skip"``."""

    family: str
    modality: str
    status: str
    reason: str = ""
    macs_ratio: float | None = None
    seconds: float = 0.0
    groups: int = 0
    notes: list[str] = field(default_factory=list)


def discover_families() -> dict[str, tuple[str, str]]:
    """``{model_type: (modality, model class name)}`` for every family in :data:`MAPPINGS`, sorted."""
    from transformers.models.auto import modeling_auto

    found: dict[str, tuple[str, str]] = {}
    for modality, mapping in MAPPINGS:
        for family, class_name in getattr(modeling_auto, mapping).items():
            if isinstance(class_name, (tuple, list)):
                class_name = class_name[0]
            found.setdefault(family, (modality, class_name))
    return dict(sorted(found.items()))


def _common_factor(values: list[int], smallest: int) -> int:
    """The largest divisor of every value that keeps the first at least ``smallest``."""
    factor = math.gcd(*values)
    for candidate in range(factor, 0, -1):
        if factor % candidate == 0 and values[0] // candidate >= smallest:
            return candidate
    return 1


def shrink_overrides(config: Any) -> dict[str, Any]:
    """Config fields (by name, never by family) that make a model of this config small."""
    overrides: dict[str, Any] = {}
    values = config.to_dict()
    heads = values.get("num_attention_heads")
    for key, value in values.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, int):
            if key in _LAYER_KEYS and value > 2:
                overrides[key] = 2
            elif key in _WIDTH_KEYS and value > WIDTH:
                overrides[key] = WIDTH
            elif key in _HEAD_KEYS and value > HEADS:
                overrides[key] = HEADS
            elif key == "num_key_value_heads" and value > 2:
                overrides[key] = HEADS if value == heads else 2
            elif key == "head_dim" and value > HEAD_DIM:
                overrides[key] = HEAD_DIM
            elif ("intermediate_size" in key or key in _INTERMEDIATE_KEYS) and value > INTERMEDIATE:
                overrides[key] = INTERMEDIATE
            elif key.endswith("vocab_size") and value > VOCAB:
                overrides[key] = VOCAB
            elif key.endswith("_token_id") and value >= VOCAB:
                overrides[key] = VOCAB - 1
            elif key in _POSITION_KEYS and value > POSITIONS:
                overrides[key] = POSITIONS
            elif key == "image_size" and value > IMAGE:
                overrides[key] = IMAGE
            elif key in _EXPERT_KEYS and value > 4:
                overrides[key] = 4
            elif key in _ACTIVE_EXPERT_KEYS and value > 2:
                overrides[key] = 2
            elif key == "window_size" and value > 2:
                overrides[key] = 2  # the last stage of a 64-pixel image still holds a window
        elif isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            if key == "depths":
                overrides[key] = [1] * len(value)
            elif key in _STAGE_LISTS and value[0] > 16:
                factor = _common_factor(value, 16)
                overrides[key] = [v // factor for v in value]
            elif key in _HEAD_LISTS:
                factor = math.gcd(*value)
                overrides[key] = [v // factor for v in value]
    layers = {key: overrides[key] for key in _LAYER_KEYS if key in overrides}
    for key, value in values.items():  # per-layer lists (``layer_types``) follow the layer count
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            for layer_key, count in layers.items():
                if len(value) == values[layer_key]:
                    overrides[key] = value[:count]
    if isinstance(values.get("image_size"), list):
        overrides["image_size"] = [IMAGE, IMAGE]
    return overrides


def shrunk_config(family: str) -> Any:
    """The default config of ``family`` (a ``model_type``) with :func:`shrink_overrides` applied, sub-configs too."""
    from transformers import AutoConfig, PretrainedConfig

    config = AutoConfig.for_model(family)
    config = AutoConfig.for_model(family, **shrink_overrides(config), num_labels=2)
    for name, value in list(vars(config).items()):  # multimodal/composite configs: shrink the parts too
        if isinstance(value, PretrainedConfig):
            setattr(config, name, type(value)(**{**value.to_dict(), **shrink_overrides(value)}))
    if getattr(config, "pad_token_id", None) is None:
        config.pad_token_id = 0
    return config


def _input_candidates(model: nn.Module, config: Any) -> list[dict[str, torch.Tensor]]:
    """Example inputs to try for the model's main input, in order (the first that runs is used)."""
    name = getattr(model, "main_input_name", "input_ids")
    if name == "pixel_values":
        size = config.image_size if isinstance(getattr(config, "image_size", None), int) else IMAGE
        channels = getattr(config, "num_channels", 3)
        return [{name: torch.randn(BATCH, channels, s, s)} for s in dict.fromkeys((size, IMAGE, 64))]
    if name == "input_values":
        return [{name: torch.randn(BATCH, SAMPLES)}]
    if name == "input_features":
        mels = getattr(config, "num_mel_bins", 80)
        frames = [2 * getattr(config, "max_source_positions", 0), getattr(config, "max_length", 0), 64]
        shapes = [(BATCH, mels, f) for f in frames if f] + [(BATCH, f, mels) for f in frames if f]
        return [{name: torch.randn(shape)} for shape in shapes]
    vocab = getattr(config, "vocab_size", VOCAB) or VOCAB
    ids = torch.randint(3, max(4, min(vocab, VOCAB)), (BATCH, TOKENS))
    eos = getattr(config, "eos_token_id", None)
    if isinstance(eos, int) and 0 <= eos < vocab:
        ids[:, -1] = eos  # sequence classifiers of encoder-decoders read the last <eos>
    return [{"input_ids": ids, "attention_mask": torch.ones_like(ids)}, {"input_ids": ids}]


def build_family(family: str) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """A randomly initialised, eval-mode model of ``family`` (a ``model_type``) and inputs it runs on.

    Raises :class:`FamilySkipped` with the reason when the family cannot be built small and fast.
    """
    import transformers

    families = discover_families()
    if family not in families:
        raise FamilySkipped(f"{family!r} is in none of the vision/audio/text classification mappings")
    modality, class_name = families[family]
    try:
        model_class = getattr(transformers, class_name)  # imports the family's module (not timed)
    except Exception as exc:
        raise FamilySkipped(f"cannot import {class_name}: {first_line(exc)}") from exc
    with time_limit(MAX_BUILD_SECONDS, f"building and running {class_name} took over {MAX_BUILD_SECONDS:.0f} s"):
        try:
            config = shrunk_config(family)
            model = model_class(config).eval()
        except FamilySkipped:
            raise
        except Exception as exc:
            raise FamilySkipped(f"cannot build {class_name} from a shrunk config: {first_line(exc)}") from exc
        errors = []
        for inputs in _input_candidates(model, config):
            try:
                with torch.no_grad():
                    model(**inputs)
            except FamilySkipped:
                raise
            except Exception as exc:
                errors.append(first_line(exc))
                continue
            return model, inputs
    raise FamilySkipped(f"{class_name} does not run on generated {modality} inputs: {errors[0]}")


@contextmanager
def time_limit(seconds: float, reason: str) -> Iterator[None]:
    """Raise :class:`FamilySkipped` with ``reason`` if the block runs longer than ``seconds``
    (by a timer signal in the main thread; elsewhere, by checking the time afterwards)."""
    start = time.perf_counter()
    main = threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")

    def expire(signum: int, frame: Any) -> None:
        raise FamilySkipped(reason)

    previous = signal.signal(signal.SIGALRM, expire) if main else None
    if main:
        signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        if main:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
    if time.perf_counter() - start > seconds:
        raise FamilySkipped(reason)


def first_line(exc: BaseException) -> str:
    """``"ErrorType: first line of the message"``, at most 200 characters: a reason fit for a status table."""
    text = f"{type(exc).__name__}: {exc}".strip().splitlines()[0]
    return text[:200]


def check_family(family: str, tmp_dir: str | None = None) -> FamilyOutcome:
    """Build ``family`` and run the oracle and a 50 % prune with its round trip; never raises."""
    import tempfile

    from prunekit.torch import load_pruned, prune_channels, save_pruned
    from prunekit.torch.structured.prune import PruningShortfallWarning
    from tests.torch.structured_helpers import run_oracle
    from tests.zoo import main_output

    modality = discover_families().get(family, ("?", ""))[0]
    start = time.perf_counter()
    outcome = FamilyOutcome(family, modality, "pass")
    torch.manual_seed(0)
    try:
        model, inputs = build_family(family)
    except FamilySkipped as exc:
        outcome.status, outcome.reason = "skip", str(exc)
        return outcome
    stage = "oracle"
    try:
        with warnings.catch_warnings():  # shortfalls (heads kept whole) are recorded by the 50 % prune below
            warnings.simplefilter("ignore", PruningShortfallWarning)
            expected, actual, oracle = run_oracle(model, inputs, fraction=0.5, seed=0)
        if expected.shape != actual.shape or not torch.allclose(actual, expected, atol=1e-5, rtol=1e-5):
            difference = (actual - expected).abs().max().item() if expected.shape == actual.shape else "shape"
            raise AssertionError(f"outputs differ after removing silenced channels (max |diff| {difference})")
        stage = "50% prune"
        with torch.no_grad():
            reference = main_output(model(**inputs))
        with warnings.catch_warnings(record=True) as caught:  # a shortfall is judged below by the MACs ratio
            warnings.simplefilter("always", PruningShortfallWarning)
            result = prune_channels(model, inputs, 0.5)
        shortfalls = [str(w.message) for w in caught if issubclass(w.category, PruningShortfallWarning)]
        pruned = result.model.eval()
        with torch.no_grad():
            output = main_output(pruned(**inputs))
        if output.shape != reference.shape:
            raise AssertionError(f"output shape {tuple(output.shape)} != {tuple(reference.shape)}")
        report = result.report
        outcome.macs_ratio, outcome.groups = report.macs_ratio, len(report.groups)
        prunable = any(g.channels_after < g.channels_before for g in report.groups)
        if not prunable:
            raise AssertionError("no channel group could be pruned")
        if report.macs_ratio < 1.6:
            raise AssertionError(f"MACs fell only {report.macs_ratio:.2f}x at 50% of channels")
        stage = "save/load"
        with tempfile.TemporaryDirectory(dir=tmp_dir) as folder:
            path = f"{folder}/{family}.safetensors"
            save_pruned(result, path)
            loaded = load_pruned(path, lambda: _rebuilt(family)).eval()
            with torch.no_grad():
                again = main_output(loaded(**inputs))
        if not torch.allclose(again, output, atol=1e-6, rtol=1e-5):
            raise AssertionError("the loaded model's outputs differ from the pruned model's")
        outcome.notes = [f"{label}: {reason}" for label, reason in report.unsupported] + shortfalls
    except Exception as exc:
        outcome.status, outcome.reason = "fail", f"{stage}: {first_line(exc)}"
    outcome.seconds = time.perf_counter() - start
    return outcome


def _rebuilt(family: str) -> nn.Module:
    torch.manual_seed(1)  # other weights than the pruned model's: load_pruned must bring them
    return build_family(family)[0]


__all__ = [
    "DEFAULT_FAMILIES",
    "FamilyOutcome",
    "FamilySkipped",
    "build_family",
    "check_family",
    "discover_families",
    "first_line",
    "shrink_overrides",
    "shrunk_config",
    "time_limit",
]
