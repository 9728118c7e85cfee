"""The built-in methods: the one place in prunekit that names them.

Each record says what the method is, its defaults and where each framework's handler lives;
add a method here (or call :func:`prunekit.methods.register` from your own code) and every front
end can run it by name.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prunekit.methods.record import Method

_TRAINING = {"scope": "global", "importance": "magnitude", "exclude": ()}
_KERAS_LAYERWISE = {"scope": "layer"}  # prune_low_magnitude (as TF MOT) prunes every layer to the sparsity on its own
# QAT/PQAT: the observers' and BatchNorm statistics' freezes in training batches (None: never); Keras folds BN
# into the fake-quant layer and keeps its moving statistics from the start (prunekit.keras.recover.qat.FREEZE_BN_AFTER)
_QAT_DEFAULTS = {"epochs": 2, "lr": 1e-4, "freeze_ranges_after": None, "freeze_bn_after": None}
_QAT_FRAMEWORK_DEFAULTS = {"keras": {"freeze_bn_after": 0}}


def _channels_importance(section: Mapping[str, Any]) -> list[tuple[str, str]]:
    importance = section.get("importance")
    if importance not in (None, "l1"):
        return [("prune.importance", "channel removal ranks channels by their L1 norm; leave importance unset")]
    return []


def _layer_pruners(factory: str, keras: bool = True) -> dict[str, str]:
    """Sensitivity's per-layer pruner (``factory(example_inputs) -> prune``) in each framework's tradeoffs package."""
    frameworks = ("torch", "keras") if keras else ("torch",)
    return {framework: f"prunekit.{framework}.tradeoffs.sensitivity:{factory}" for framework in frameworks}


def _training(name: str, summary: str, function: str, defaults: dict[str, Any], keras: bool = True, **extra: Any) -> Method:
    handlers = {"torch": f"prunekit.torch.backend:{function}"}
    if keras:
        handlers["keras"] = f"prunekit.keras.backend:{function}"
    return Method(
        name=name,
        kind="unstructured",
        summary=summary,
        handlers=handlers,
        defaults={**_TRAINING, **defaults},
        framework_defaults={"keras": _KERAS_LAYERWISE} if keras else {},
        **{"layer_pruners": _layer_pruners("MagnitudePruner", keras), **extra},
    )


BUILTIN_METHODS: tuple[Method, ...] = (
    _training(
        "gradual",
        "raise sparsity along a polynomial schedule while fine-tuning (Zhu & Gupta)",
        "prune_gradually_job",
        {"epochs": 12, "lr": 1e-3},
    ),
    _training(
        "one-shot",
        "prune once to the target by importance, then fine-tune with the masks held",
        "prune_one_shot_job",
        {"epochs": 10, "lr": 5e-4},
    ),
    _training(
        "iterative",
        "prune and retrain in rounds, each removing the same share of the weights left",
        "prune_iteratively_job",
        {"epochs": 12, "lr": 1e-3, "rounds": 3},
    ),
    _training(
        "one-shot-layer",
        "one-shot with every layer pruned to the same sparsity",
        "prune_one_shot_job",
        {"epochs": 10, "lr": 5e-4, "scope": "layer"},
        aliases=("layer",),
    ),
    _training(
        "one-shot-random",
        "one-shot with random importance: the baseline a criterion must beat",
        "prune_one_shot_job",
        {"epochs": 10, "lr": 5e-4, "scope": "layer", "importance": "random"},
        keras=False,  # Keras prunes by magnitude only
        aliases=("random",),
        layer_pruners={},  # a random criterion has no per-layer sensitivity worth measuring
    ),
    Method(
        name="channels",
        kind="structured",
        summary="remove the lowest-L1 channels and heads of every prunable layer (a smaller model), then fine-tune",
        handlers={"torch": "prunekit.torch.backend:prune_channels_job", "keras": "prunekit.keras.backend:prune_channels_job"},
        amount="channel ratio",
        aliases=("structured",),
        defaults={"epochs": 4, "lr": 1e-3},
        checks=(_channels_importance,),
        layer_pruners=_layer_pruners("ChannelPruner"),
    ),
    # dynamic sparse training (issue #18): masks move during training at fixed sparsity
    *(
        Method(
            name=name,
            kind="dynamic",
            summary=summary,
            handlers={
                "torch": f"prunekit.torch.unstructured.dynamic_training:{function}",
                "keras": f"prunekit.keras.unstructured.dynamic:{function}",
            },
            defaults={
                "epochs": 30,
                "lr": 2e-3,
                "scope": "layer",
                "exclude": (),
                "update_interval": 0,  # 0: half an epoch
                "drop_fraction": 0.3,
                "end_fraction": 0.75,
                "distribution": "uniform",
                "gradual_epochs": 0,  # 0: sparse from the first step
            },
        )
        for name, function, summary in (
            ("rigl", "rigl_job", "train sparse, every interval moving the smallest weights to the largest gradients (RigL)"),
            ("set", "set_job", "train sparse, every interval moving the smallest weights to random positions (SET)"),
        )
    ),
    # --- recovery after pruning (issue #16): handler(job: RecoverJob) -> RecoveryRun, see prunekit.methods.recover
    *(
        Method(
            name=name,
            kind="recover",
            summary=summary,
            handlers={framework: f"prunekit.{framework}.recover.handlers:{name}_job" for framework in ("torch", "keras")},
            amount="epochs",
            defaults=defaults,
            framework_defaults=framework_defaults,
        )
        for name, summary, defaults, framework_defaults in (
            ("finetune", "fine-tune the pruned model with the task loss (the baseline)", {"epochs": 4, "lr": 1e-3}, {}),
            (
                "distill",
                "knowledge distillation from the dense teacher: T^2-scaled KL on logits (+ projected features)",
                {
                    "epochs": 4,
                    "lr": 1e-3,
                    "temperature": 1.0,
                    "alpha": 0.5,
                    "features": (),
                    "feature_weight": 1.0,
                    "feature_loss": "mse",
                },
                {},
            ),
            (
                "qat",
                "quantization-aware training: int8 fake-quant weights and activations, int8 export",
                _QAT_DEFAULTS,
                _QAT_FRAMEWORK_DEFAULTS,
            ),
            (
                "pqat",
                "sparsity-preserving QAT: the pruning masks kept exactly through int8 fake quantization and export",
                _QAT_DEFAULTS,
                _QAT_FRAMEWORK_DEFAULTS,
            ),
        )
    ),
    # One-shot LLM pruning (issue #15): handlers of kind "llm" are prunekit.torch.llm.methods.LLMMethod objects
    Method(
        name="magnitude",
        kind="llm",
        summary="one-shot: zero the smallest |W| of each decoder projection (per layer), no calibration data",
        handlers={"torch": "prunekit.torch.llm.methods:magnitude"},
    ),
    Method(
        name="wanda",
        kind="llm",
        summary="one-shot: zero the lowest |W| * ||X|| in each output row, from calibration input norms (Sun et al.)",
        handlers={"torch": "prunekit.torch.llm.methods:wanda"},
    ),
    Method(
        name="sparsegpt",
        kind="llm",
        summary="one-shot OBS reconstruction from the calibration Hessian, remaining weights updated (Frantar & Alistarh)",
        handlers={"torch": "prunekit.torch.llm.methods:sparsegpt"},
        defaults={"blocksize": 128, "dampening": 0.01},
    ),
)
