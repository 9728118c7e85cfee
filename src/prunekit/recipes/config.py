"""The recipe schema: a whole pruning job as typed dataclasses, loaded from YAML and validated up front.

Example recipe (the shipped demo, ``prunekit demo --print-recipe``)::

    name: digits-demo
    model: {factory: "prunekit.torch:DigitsCNN", input_shape: [1, 8, 8]}
    data: {loader: "prunekit.data:load_digits"}
    train: {epochs: 25, lr: 0.002}
    prune: {method: gradual, sparsities: [0.5, 0.8, 0.9], scope: global, epochs: 12, lr: 0.001}
"""

from __future__ import annotations

import math
import os
from contextvars import ContextVar
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Optional

from prunekit.core.imports import resolve_import, resolve_trusted_import, trusted_modules
from prunekit.core.results import candidate_name
from prunekit.errors import ConfigError
from prunekit.methods import FRAMEWORKS, TRAINING_KINDS, default_method, get_method
from prunekit.methods.llm_options import COMPARISON_CHOICES, RATIO_SCHEMES
from prunekit.recipes.validation import RecipeError, build, checked

CHECKPOINT_DIR = ".checkpoints"  # under a run's output folder: what `prunekit run --resume` continues from

#: The modules the recipe being validated may import from (set by :func:`parse_recipe`).
_TRUSTED: ContextVar[tuple[str, ...]] = ContextVar("prunekit_recipe_trusted", default=())


def _importable(value: str) -> str | None:
    try:
        resolve_trusted_import(value, _TRUSTED.get() or trusted_modules())
    except ConfigError as exc:
        return str(exc)
    return None


def _at_least(minimum: float, what: str = "") -> Any:
    return lambda v: None if v >= minimum else f"should be >= {minimum}{what}, got {v!r}"


def _positive_ints(values: list[int]) -> str | None:
    if not values or any(v < 1 for v in values):
        return f"should be a non-empty list of positive integers, got {values!r}"
    return None


def _sparsities(values: list[float]) -> str | None:
    if not values:
        return "should list at least one sparsity"
    bad = [v for v in values if not 0 <= v < 1]
    return f"every sparsity should be in [0, 1), got {bad}" if bad else None


def _ratios(values: list[float]) -> str | None:
    bad = [v for v in values if not 0 < v < 1]
    return f"every ratio should be in (0, 1), got {bad}" if bad else None


def _positive_float(value: float) -> str | None:
    return None if value > 0 and math.isfinite(value) else f"should be > 0 and finite, got {value!r}"


def _batch_sizes(values: list[int]) -> str | None:
    bad = [v for v in values if v < 1]
    return f"every batch size should be an integer >= 1 ([] skips latency), got {bad}" if bad else None


def _seed(value: int) -> str | None:
    return None if 0 <= value < 2**32 else f"should be an integer in [0, 2**32) (numpy and torch seeds), got {value}"


@dataclass
class ModelConfig:
    """The model: a factory import path, its keyword arguments, one sample's shape, optional weights."""

    factory: str = checked(_importable)
    input_shape: list[int] = checked(_positive_ints)
    kwargs: dict[str, Any] = field(default_factory=dict)
    weights: Optional[str] = checked(
        lambda v: None if v is None or Path(v).is_file() else f"file {v!r} does not exist", default=None
    )


@dataclass
class DataConfig:
    """Data: a loader import path returning an object with ``x_train, y_train, x_val, y_val, x_test, y_test``."""

    loader: str = checked(_importable, default="prunekit.data:load_digits")
    kwargs: dict[str, Any] = field(default_factory=dict)
    batch_size: int = checked(_at_least(1), default=64)


@dataclass
class TrainConfig:
    """Dense training before pruning (skipped when ``model.weights`` is given)."""

    epochs: int = checked(_at_least(0), default=10)
    lr: float = checked(_positive_float, default=2e-3)


def _training_method(name: str) -> str | None:
    try:
        get_method(name, kind=TRAINING_KINDS)
    except ConfigError as exc:
        return str(exc)
    return None


def _optional(check: Any) -> Any:
    return lambda v: None if v is None else check(v)


@dataclass
class PruneConfig:
    """How to prune: a training method of the registry, target amounts and the method's options.

    ``epochs``, ``lr``, ``scope`` and ``importance`` left out take the method's defaults
    (``prunekit methods`` shows them); ``exclude`` globs name layers left dense (``ignore`` is its
    deprecated old name).
    """

    method: str = checked(_training_method, default_factory=lambda: default_method().name)
    sparsities: list[float] = checked(_sparsities, default_factory=lambda: [0.5])
    scope: Optional[Literal["layer", "global"]] = None
    importance: Optional[Literal["magnitude", "taylor", "random"]] = None
    epochs: Optional[int] = checked(_optional(_at_least(1)), default=None)
    lr: Optional[float] = checked(_optional(_positive_float), default=None)
    exclude: list[str] = field(default_factory=list)
    ignore: list[str] = field(default_factory=list)

    def options(self) -> dict[str, Any]:
        """The options this section sets (what it leaves out keeps the method's default)."""
        options: dict[str, Any] = {
            k: getattr(self, k) for k in ("scope", "importance", "epochs", "lr") if getattr(self, k) is not None
        }
        if self.exclude or self.ignore:
            options["exclude"] = [*self.exclude, *self.ignore]
        return options


def _recover_method(name: str) -> str | None:
    try:
        get_method(name, kind="recover")
    except ConfigError as exc:
        return str(exc)
    return None


@dataclass
class RecoverConfig:
    """Recovery after pruning, on each pruned model: a ``recover`` method of the registry (fine-tune, distil
    from the dense model, QAT/PQAT with an int8 export), its epochs and learning rate, any other option
    (``prunekit methods --kind recover`` lists them). Left-out options take the method's defaults.
    """

    method: str = checked(_recover_method)
    epochs: Optional[int] = checked(_optional(_at_least(1)), default=None)
    lr: Optional[float] = checked(_optional(_positive_float), default=None)
    options: dict[str, Any] = field(default_factory=dict)

    def overrides(self) -> dict[str, Any]:
        """The options this section sets."""
        chosen = {k: getattr(self, k) for k in ("epochs", "lr") if getattr(self, k) is not None}
        return {**self.options, **chosen}


@dataclass
class ExportConfig:
    """Export the pruned models: PyTorch to ONNX (``onnx``), Keras to TFLite (``tflite``); ``int8`` adds a
    statically quantized int8 file of the same format, calibrated on validation samples."""

    onnx: bool = False
    tflite: bool = False
    int8: bool = False


@dataclass
class ReportConfig:
    """What the report measures: latency batch sizes (empty: none) and sensitivity ratios (empty: none)."""

    latency_batch_sizes: list[int] = checked(_batch_sizes, default_factory=lambda: [1, 32])
    sensitivity_ratios: list[float] = checked(_ratios, default_factory=list)


def _bound(value: float | None) -> str | None:
    if value is None:
        return None
    return None if value >= 0 and value != float("inf") else f"should be a finite number >= 0, got {value!r}"


@dataclass
class GateConfig:
    """Bounds checked on the results after the run (like ``prunekit gate``); ``prunekit run`` exits 1 when one
    fails and writes ``gate.xml`` (JUnit) beside the report. ``max_accuracy_drop`` is in percentage points,
    ``min_compression`` a ratio of gzip bytes against the dense model, ``max_latency_ms`` at the smallest
    ``report.latency_batch_sizes``; ``candidate`` gates one run (``gradual 90%``), ``require`` all runs or any."""

    max_accuracy_drop: Optional[float] = checked(_bound, default=None)
    min_compression: Optional[float] = checked(
        lambda v: None if v is None or 0 < v < float("inf") else f"should be a finite number > 0, got {v!r}", default=None
    )
    max_latency_ms: Optional[float] = checked(_bound, default=None)
    candidate: Optional[str] = None
    require: Literal["all", "any"] = "all"


@dataclass
class AllocateConfig:
    """Per-layer ratios for a budget from the sensitivity data, compared with uniform and global allocation.

    ``pruning: weights`` zeroes weights (targets macs, params, size); ``pruning: channels`` removes
    channels and measures the cost on the smaller model at ``batch_size`` (targets latency, macs, params).
    """

    budget: float = checked(lambda v: None if 0 < v <= 1 else f"should be a fraction of the dense cost in (0, 1], got {v!r}")
    target: Literal["macs", "params", "size", "latency"] = "macs"
    pruning: Literal["weights", "channels"] = "weights"
    batch_size: int = checked(_at_least(1), default=64)


def _llm_method(name: str) -> str | None:
    try:
        get_method(name, kind="llm")
    except ConfigError as exc:
        return str(exc)
    return None


def _model_dir(value: str) -> str | None:
    if value == "demo":
        return None
    folder = Path(value)
    if not folder.is_dir():
        return f"directory {value!r} does not exist (give a save_pretrained model directory, or demo for the small LM)"
    if not (folder / "config.json").is_file():
        return f"{value!r} has no config.json: it is not a save_pretrained model directory"
    return None


def _pattern(value: str | None) -> str | None:
    if value is None:
        return None
    parts = value.split(":")
    if len(parts) != 2 or not all(p.isdigit() for p in parts) or not 0 < int(parts[0]) < int(parts[1]):
        return f"should be an N:M pattern such as '2:4' (0 < N < M), got {value!r}"
    return None


def _text_file(value: str | None) -> str | None:
    return None if value is None or Path(value).is_file() else f"file {value!r} does not exist"


@dataclass
class LLMConfig:
    """One-shot pruning of a causal language model (``prunekit.llm``) instead of the train-prune-fine-tune chain.

    ``model`` is a ``save_pretrained`` directory, or ``demo`` for the cached small LM (trained once);
    ``calibration`` and ``eval_text`` default to the directory's ``train.txt`` and ``valid.txt``.
    """

    model: str = checked(_model_dir)
    method: str = checked(_llm_method)
    sparsity: float = checked(lambda v: None if 0 <= v < 1 else f"should be in [0, 1), got {v!r}", default=0.5)
    pattern: Optional[str] = checked(_pattern, default=None)
    ratios: str = checked(
        lambda v: None if v in RATIO_SCHEMES else f"should be one of {list(RATIO_SCHEMES)}, got {v!r}", default="uniform"
    )
    comparison: Optional[str] = checked(
        lambda v: None if v is None or v in COMPARISON_CHOICES else f"should be one of {list(COMPARISON_CHOICES)}, got {v!r}",
        default=None,
    )
    layer_ratios: dict[str, float] = field(default_factory=dict)
    skip: list[str] = field(default_factory=list)
    calibration: Optional[str] = checked(_text_file, default=None)
    eval_text: Optional[str] = checked(_text_file, default=None)
    samples: int = checked(_at_least(1), default=128)
    seq_len: int = checked(_at_least(2), default=2048)
    eval_tokens: Optional[int] = checked(_optional(_at_least(2)), default=None)
    device: Optional[Literal["cpu", "cuda"]] = None


@dataclass
class Recipe:
    """A whole job. ``name`` and ``model`` (or, for a language model, ``llm``) are required; every other
    section has defaults."""

    name: str
    model: Optional[ModelConfig] = None
    framework: str = checked(
        lambda v: None if v in FRAMEWORKS else f"should be one of {list(FRAMEWORKS)}, got {v!r}", default=FRAMEWORKS[0]
    )
    seed: int = checked(_seed, default=0)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    allocate: Optional[AllocateConfig] = None
    recover: Optional[RecoverConfig] = None
    llm: Optional[LLMConfig] = None
    gate: Optional[GateConfig] = None

    #: Modules this recipe's ``factory``/``loader`` may come from; set by the caller (``--trust-module``),
    #: never by the recipe file (a shared recipe cannot vouch for itself).
    trusted: tuple[str, ...] = field(default=(), metadata={"internal": True})

    def resolve(self, spec: str) -> Any:
        """The callable ``spec`` names, refused unless it lives in a trusted module (see :attr:`trusted`)."""
        return resolve_trusted_import(spec, self.trusted or trusted_modules())


def _section(data: Any, name: str) -> dict[str, Any]:
    value = data.get(name) if isinstance(data, dict) else None
    return value if isinstance(value, dict) else {}


def _cross_checks(data: Any) -> list[tuple[str, str]]:
    """Checks across fields, on the raw data so they are reported with the per-field errors."""
    errors = []
    export, prune = _section(data, "export"), _section(data, "prune")
    framework = data.get("framework", "torch") if isinstance(data, dict) else "torch"
    file_format = "tflite" if framework == "keras" else "onnx"
    other = "onnx" if file_format == "tflite" else "tflite"
    if export.get(other) is True:
        errors.append((f"export.{other}", f"{framework} models export to {file_format}; set export.{file_format}: true instead"))
    if export.get("int8") is True and export.get(file_format) is not True:
        errors.append(("export.int8", f"int8 quantization works on the {file_format} export; set export.{file_format}: true too"))
    if isinstance(data, dict) and (data.get("model") is None) == (data.get("llm") is None):
        errors.append(
            (
                "model",
                "give model: (a model factory to train and prune) or llm: (a language model directory "
                "to prune one-shot), exactly one of them",
            )
        )
    if not isinstance(data, dict) or data.get("llm") is None:
        errors += _method_checks(data, prune)
    errors += _gate_checks(data, prune)
    allocate = _section(data, "allocate")
    if (
        isinstance(data, dict)
        and isinstance(data.get("allocate"), dict)
        and not _section(data, "report").get("sensitivity_ratios")
    ):
        errors.append(
            ("allocate", "allocation chooses ratios from sensitivity data; set report.sensitivity_ratios, e.g. [0.5, 0.7, 0.9]")
        )
    if allocate.get("target") == "latency" and allocate.get("pruning", "weights") == "weights":
        errors.append(
            (
                "allocate.target",
                "a latency budget needs channel removal (zeroed weights do not make dense "
                "kernels faster); set allocate.pruning: channels",
            )
        )
    if allocate.get("target") == "size" and allocate.get("pruning") == "channels":
        errors.append(("allocate.target", "with pruning: channels the targets are latency, macs or params"))
    return errors


def _gate_checks(data: Any, prune: dict[str, Any]) -> list[tuple[str, str]]:
    """The gate section: at least one bound, bounds the run can measure, a candidate the run will produce."""
    if not isinstance(data, dict) or not isinstance(data.get("gate"), dict):
        return []
    gate = data["gate"]
    errors = []
    bounds = ("max_accuracy_drop", "min_compression", "max_latency_ms")
    if all(gate.get(name) is None for name in bounds):
        errors.append(("gate", f"give at least one bound: {', '.join(bounds)}"))
    if isinstance(data, dict) and data.get("llm") is not None:
        errors.append(("gate", "gates check accuracy, size and latency of trained models; LLM recipes are not gated yet"))
        return errors
    if gate.get("max_latency_ms") is not None and _section(data, "report").get("latency_batch_sizes", [1]) == []:
        errors.append(("gate.max_latency_ms", "needs latency measured: give report.latency_batch_sizes (e.g. [1])"))
    candidate = gate.get("candidate")
    method, sparsities = prune.get("method", default_method().name), prune.get("sparsities", PruneConfig().sparsities)
    if isinstance(candidate, str) and isinstance(method, str) and isinstance(sparsities, list):
        names = [candidate_name(method, s) for s in sparsities if isinstance(s, (int, float))]
        if candidate not in names:
            errors.append(("gate.candidate", f"should name a run of this recipe, one of {names}; got {candidate!r}"))
    return errors


def _method_checks(data: Any, prune: dict[str, Any]) -> list[tuple[str, str]]:
    """The method's own recipe checks, and whether it takes the options the section sets on this framework."""
    framework = data.get("framework", FRAMEWORKS[0]) if isinstance(data, dict) else FRAMEWORKS[0]
    try:
        method = get_method(prune.get("method", default_method().name), kind=TRAINING_KINDS)
    except ConfigError:
        return []  # reported by the field check
    errors = method.check(prune)
    if framework in FRAMEWORKS and framework not in method.frameworks:
        errors.append(
            ("prune.method", f"method {method.name!r} has no {framework} handler; it runs on {list(method.frameworks)}")
        )
    for key in ("scope", "importance", "epochs", "lr", "exclude", "ignore"):
        option = "exclude" if key == "ignore" else key
        if prune.get(key) not in (None, []) and option not in method.defaults:
            errors.append(
                (f"prune.{key}", f"method {method.name!r} takes no {option!r}; its options are {sorted(method.defaults)}")
            )
    recover = _section(data, "recover")
    if recover.get("method") is not None:
        try:
            recovery = get_method(recover["method"], kind="recover")
        except ConfigError:
            recovery = None  # reported by the field check
        if recovery is not None:
            if framework in FRAMEWORKS and framework not in recovery.frameworks:
                errors.append(("recover.method", f"method {recovery.name!r} has no {framework} handler"))
            set_here = {
                **(recover.get("options") or {}),
                **{k: recover[k] for k in ("epochs", "lr") if recover.get(k) is not None},
            }
            unknown = sorted(set(set_here) - set(recovery.defaults))
            if unknown:
                errors.append(
                    (
                        "recover.options",
                        f"method {recovery.name!r} has no option {unknown}; its options are {sorted(recovery.defaults)}",
                    )
                )
    if framework == "keras" and isinstance(data, dict) and data.get("allocate") is not None:
        errors.append(
            ("allocate", "budget allocation in recipes runs on PyTorch; use prunekit.keras.allocate_ratios from Python")
        )
    return errors


def parse_recipe(data: Any, source: str = "recipe", trust_modules: tuple[str, ...] | list[str] = ()) -> Recipe:
    """Validate a parsed recipe (a dict) and build the :class:`Recipe`; every error is reported at once.

    A recipe is a shared file, so its ``model.factory`` and ``data.loader`` may only name callables
    in prunekit itself, in ``trust_modules`` (the CLI's ``--trust-module``) or in the modules listed
    in ``$PRUNEKIT_TRUST_MODULES``; an untrusted module is refused *before* it is imported.

    Example::

        recipe = parse_recipe({"name": "x", "model": {"factory": "prunekit.torch:DigitsCNN", "input_shape": [1, 8, 8]}})
    """
    trusted = trusted_modules(tuple(trust_modules))
    token = _TRUSTED.set(trusted)
    try:
        errors: list[tuple[str, str]] = []
        recipe = build(Recipe, data, "", errors)
        errors += _cross_checks(data)
    finally:
        _TRUSTED.reset(token)
    if errors:
        raise RecipeError(errors, source)
    recipe.trusted = trusted
    return recipe


def load_recipe(path: str | os.PathLike, trust_modules: tuple[str, ...] | list[str] = ()) -> Recipe:
    """Read and validate a YAML recipe file (``trust_modules``: see :func:`parse_recipe`).

    Example::

        recipe = load_recipe("recipe.yaml")
    """
    import yaml

    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"recipe file {file} does not exist")
    try:
        loader = _unique_key_loader()(file.read_text(encoding="utf-8"))  # a SafeLoader subclass
        try:
            data = loader.get_single_data()
        finally:
            loader.dispose()
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{file} is not UTF-8 text (byte {exc.start}); save the recipe as UTF-8") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file} is not valid YAML: {exc}") from None
    return parse_recipe(data, str(file), trust_modules)


def _unique_key_loader() -> Any:
    """A yaml SafeLoader that refuses a key given twice in one mapping (plain YAML keeps the last silently)."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        f"key {key!r} is given twice (lines {seen[key] + 1} and {key_node.start_mark.line + 1}); keep one",
                        key_node.start_mark,
                    )
                seen[key] = key_node.start_mark.line
            return super().construct_mapping(node, deep=deep)

    return UniqueKeyLoader


def builtin_recipe_text(name: str = "demo") -> str:
    """The text of a recipe shipped in ``prunekit/recipes/`` (``demo`` is the built-in demo).

    Example::

        print(builtin_recipe_text("demo"))
    """
    files = resources.files("prunekit.recipes")
    available = sorted(p.name[:-5] for p in files.iterdir() if p.name.endswith(".yaml"))
    if name not in available:
        raise ConfigError(f"no built-in recipe {name!r}; available: {available}")
    return (files / f"{name}.yaml").read_text(encoding="utf-8")


__all__ = ["Recipe", "RecipeError", "load_recipe", "parse_recipe", "builtin_recipe_text", "resolve_import"]
