"""Knowledge distillation: a pruned student learns from its dense teacher's logits and features.

The loss is Hinton's: ``alpha * T**2 * KL(softmax(teacher / T) || softmax(student / T)) +
(1 - alpha) * task_loss(student, labels)``, plus, for feature distillation, ``feature_weight``
times a distance between named intermediate outputs (raw MSE, or a scale-free one: see
:mod:`prunekit.torch.recover.features`; ``"penultimate"`` names the logits layer's input, found
without a name). Where structured pruning made
a student layer narrower than its teacher's, a learned linear projection (student width ->
teacher width, no bias) maps the student's feature first; it exists only in the
:class:`Distiller` and is dropped with it, so the student stays a plain model.

The teacher always runs in eval mode under ``torch.no_grad()``; the student's class, state-dict
keys and hooks are untouched outside a :class:`Distiller`'s life (its feature hooks are removed by
:meth:`Distiller.close`, which :func:`distill` calls).
"""

from __future__ import annotations

import difflib
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from prunekit.core.progress import progress as progress_bar
from prunekit.errors import ConfigError, LayerNotFoundError
from prunekit.torch.recover.features import PENULTIMATE, check_feature_loss, feature_distance, head_layer
from prunekit.torch.training import _length, _model_device, evaluate
from prunekit.torch.unstructured.pruner import Pruner

TaskLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _check_mix(temperature: float, alpha: float) -> None:
    if not (isinstance(temperature, (int, float)) and temperature > 0):
        raise ConfigError(f"temperature should be a number > 0 (1, the default, to about 4), got {temperature!r}")
    if not (isinstance(alpha, (int, float)) and 0.0 <= alpha <= 1.0):
        raise ConfigError(f"alpha (the weight of the distillation term) should be in [0, 1], got {alpha!r}")


def _check_logits(student: torch.Tensor, teacher: torch.Tensor) -> None:
    if student.shape != teacher.shape:
        raise ConfigError(
            f"teacher and student outputs differ in shape: teacher {tuple(teacher.shape)}, student "
            f"{tuple(student.shape)}; distil between models with the same output layer (prune the student's "
            "hidden layers only, e.g. prune_channels protects the outputs by default)"
        )


def _check_not_probabilities(logits: torch.Tensor, role: str) -> None:
    """Softmax outputs distilled as logits would be softened twice (near-uniform targets): refuse them."""
    with torch.no_grad():
        rows = logits.detach().reshape(-1, logits.shape[-1]).float()
        probabilities = rows.shape[-1] > 1 and bool((rows >= 0).all()) and float((rows.sum(-1) - 1).abs().max()) <= 1e-4
    if probabilities:
        raise ConfigError(
            f"the {role}'s outputs look like probabilities (every row is >= 0 and sums to 1), not logits; distillation "
            "softens logits with the temperature, so remove the final softmax (or return the logits before it)"
        )


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    temperature: float = 1.0,
    alpha: float = 0.5,
    task_loss: TaskLoss | None = None,
) -> torch.Tensor:
    """Temperature-scaled KL divergence to the teacher, mixed with the task loss by ``alpha``.

    ``alpha * T**2 * KL(p_t || p_s) + (1 - alpha) * task_loss(student_logits, labels)`` where
    ``p = softmax(logits / T)`` over the last dimension, the KL is summed over classes and
    averaged over every other position (samples, and tokens for sequence logits), and the
    ``T**2`` keeps gradient magnitudes comparable across temperatures. ``temperature=1`` is the
    default: it won or tied every digits setting on the validation split and LLM recovery
    (``scripts/kd_defaults_search.py``, docs/recovery.md); higher ones slow a much smaller student
    on a short budget. ``task_loss`` defaults
    to cross-entropy; ``labels`` may be left out only with ``alpha=1`` (pure distillation).
    Both inputs are logits: outputs that are already probabilities (a model ending in softmax)
    are a ``ConfigError``, since softening them again would give near-uniform targets.

    Example::

        loss = distillation_loss(student(x), teacher(x).detach(), y, temperature=4.0, alpha=0.7)
    """
    _check_mix(temperature, alpha)
    _check_logits(student_logits, teacher_logits)
    _check_not_probabilities(teacher_logits, "teacher")
    _check_not_probabilities(student_logits, "student")
    classes = student_logits.shape[-1]
    log_student = F.log_softmax(student_logits.reshape(-1, classes).float() / temperature, dim=-1)
    log_teacher = F.log_softmax(teacher_logits.reshape(-1, classes).float() / temperature, dim=-1)
    kl = F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True)
    loss = alpha * temperature**2 * kl
    if alpha < 1.0:
        if labels is None:
            raise ConfigError("distillation_loss needs labels unless alpha=1 (pure distillation)")
        task = task_loss or nn.CrossEntropyLoss()
        loss = loss + (1.0 - alpha) * task(student_logits, labels)
    return loss


def _logits(out: Any, role: str) -> torch.Tensor:
    """The logits of a model's output: a tensor, a ``ModelOutput``/dict's ``logits``, or a tuple's first tensor."""
    if isinstance(out, torch.Tensor):
        return out
    logits = getattr(out, "logits", None)
    if logits is None and isinstance(out, Mapping):
        logits = out.get("logits")
    if logits is None and isinstance(out, (tuple, list)) and out:
        logits = out[0]
    if not isinstance(logits, torch.Tensor):
        raise ConfigError(f"the {role} returned {type(out).__name__}: return logits, or a ModelOutput/dict with 'logits'")
    return logits


def _call(model: nn.Module, inputs: Any) -> Any:
    return model(**inputs) if isinstance(inputs, Mapping) else model(inputs)


def _to(inputs: Any, device: torch.device) -> Any:
    if isinstance(inputs, torch.Tensor):
        return inputs.to(device)
    if isinstance(inputs, Mapping):
        return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    return inputs


def _split(batch: Any) -> tuple[Any, torch.Tensor | None]:
    """``(inputs, labels)`` from a loader's batch: a pair, or inputs alone (a tensor or a dict such as token ids)."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    if isinstance(batch, (tuple, list)) and len(batch) == 1:
        return batch[0], None
    return batch, None


def _module(model: nn.Module, name: str, role: str) -> nn.Module:
    modules = dict(model.named_modules())
    if name not in modules or name == "":
        close = difflib.get_close_matches(name, [n for n in modules if n], n=3)
        hint = f"; did you mean {close}?" if close else f"; its layers are {[n for n in modules if n][:12]}"
        raise LayerNotFoundError(f"feature layer {name!r} matches no module of the {role} ({type(model).__name__}){hint}")
    return modules[name]


def _feature_module(model: nn.Module, name: str, role: str, example_input: Any) -> nn.Module:
    """The module named ``name``; for ``"penultimate"``, the layer producing the logits (its input is captured)."""
    if name != PENULTIMATE:
        return _module(model, name, role)
    if PENULTIMATE in dict(model.named_modules()):
        raise ConfigError(
            f"the {role} has a module named {PENULTIMATE!r}, which features reserve for the input of the logits layer; "
            "rename the module to distil its output"
        )
    inputs = _to(example_input, _model_device(model))
    return model.get_submodule(head_layer(model, inputs, lambda out: _logits(out, role)))


def _feature_pairs(features: Mapping[str, str] | Sequence[str] | None) -> dict[str, str]:
    if features is None:
        return {}
    if features == PENULTIMATE:
        return {PENULTIMATE: PENULTIMATE}
    if isinstance(features, str):
        raise ConfigError(
            f"features should be a list of layer names, a {{student: teacher}} dict or {PENULTIMATE!r}, got the string {features!r}"
        )
    if isinstance(features, Mapping):
        return {str(s): str(t) for s, t in features.items()}
    return {str(name): str(name) for name in features}


class _Capture:
    """Forward hooks that keep the latest output of named modules (their first input for the ``inputs`` names)."""

    def __init__(self, modules: Mapping[str, nn.Module], inputs: frozenset[str] = frozenset()):
        self.values: dict[str, torch.Tensor] = {}
        self._handles = [
            module.register_forward_pre_hook(self._pre_hook(name))
            if name in inputs
            else module.register_forward_hook(self._hook(name))
            for name, module in modules.items()
        ]

    def _keep(self, name: str, value: Any, what: str) -> None:
        if isinstance(value, (tuple, list)):
            value = value[0] if value else None
        if not isinstance(value, torch.Tensor):
            raise ConfigError(f"feature layer {name!r} {what} {type(value).__name__}, not a tensor")
        self.values[name] = value

    def _hook(self, name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            self._keep(name, output, "returns")

        return hook

    def _pre_hook(self, name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, inputs: Any) -> None:
            self._keep(name, inputs, "takes")

        return hook

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.values.clear()


class _Projection(nn.Module):
    """A learned linear map of one dimension of a feature (student width -> teacher width)."""

    def __init__(self, student_width: int, teacher_width: int, dim: int):
        super().__init__()
        self.dim = dim
        self.linear = nn.Linear(student_width, teacher_width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.movedim(self.dim, -1)).movedim(-1, self.dim)


def _width_dim(student: torch.Size, teacher: torch.Size, where: str) -> int | None:
    """The one dimension where the widths differ (None when equal); an error for other mismatches."""
    if len(student) != len(teacher):
        raise ConfigError(f"feature pair {where} has outputs of rank {len(student)} and {len(teacher)}; pair layers of one kind")
    differ = [i for i, (s, t) in enumerate(zip(student, teacher)) if s != t]
    if not differ:
        return None
    if len(differ) > 1 or differ[0] == 0:
        raise ConfigError(
            f"feature pair {where} has outputs {tuple(student)} (student) and {tuple(teacher)} (teacher): they may differ in "
            "one channel/width dimension only (pair layers at the same resolution)"
        )
    return differ[0]


class Distiller:
    """Distils a teacher into a student in your own loop: ``loss = distiller(x, y)``.

    Args:
        student: the model being trained (e.g. the pruned one).
        teacher: the reference (e.g. the dense model); run in eval mode without gradients.
        temperature, alpha: see :func:`distillation_loss`.
        features: intermediate layers to match: a list of module names present in both models,
            or ``{student_name: teacher_name}``; ``"penultimate"`` (alone or in the list) is the input
            of each model's logits layer (:func:`~prunekit.torch.recover.features.head_layer`).
            Needs ``example_input``.
        feature_weight: weight of the summed feature terms.
        feature_loss: their distance: ``"mse"`` (raw), or the scale-free ``"cosine"`` or
            ``"standardized"`` (:mod:`prunekit.torch.recover.features`).
        example_input: one batch used once to find feature widths, so that the projections
            (only where the student's width differs from the teacher's) exist before you build
            the optimizer over :meth:`parameters`.
        task_loss: the task term (default cross-entropy).

    ``distiller.projections`` holds the projections by student layer name. :meth:`close` removes
    the feature hooks and returns the plain student.

    Example::

        distiller = Distiller(pruned, dense, features=["layer2"], example_input=x[:2])
        optimizer = torch.optim.Adam(distiller.parameters(), lr=1e-3)
        for x, y in loader:
            optimizer.zero_grad(); distiller(x, y).backward(); optimizer.step()
        student = distiller.close()
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        *,
        temperature: float = 1.0,
        alpha: float = 0.5,
        features: Mapping[str, str] | Sequence[str] | None = None,
        feature_weight: float = 1.0,
        feature_loss: str = "mse",
        example_input: Any = None,
        task_loss: TaskLoss | None = None,
    ):
        for role, model in (("student", student), ("teacher", teacher)):
            if not isinstance(model, nn.Module):
                raise ConfigError(f"the {role} should be a torch.nn.Module, got {type(model).__name__}")
        if student is teacher:
            raise ConfigError("the student and the teacher are the same object; distil from a copy (copy.deepcopy(model))")
        _check_mix(temperature, alpha)
        if not (isinstance(feature_weight, (int, float)) and feature_weight >= 0):
            raise ConfigError(f"feature_weight should be a number >= 0, got {feature_weight!r}")
        self.student, self.teacher = student, teacher
        self.temperature, self.alpha, self.feature_weight = float(temperature), float(alpha), float(feature_weight)
        self.task_loss = task_loss
        self.feature_kind = check_feature_loss(feature_loss)
        self.pairs = _feature_pairs(features)
        if self.pairs and example_input is None:
            raise ConfigError("feature distillation needs example_input (one batch) to size the width projections")
        student_modules = {s: _feature_module(student, s, "student", example_input) for s in self.pairs}
        teacher_modules = {t: _feature_module(teacher, t, "teacher", example_input) for t in set(self.pairs.values())}
        self.projections = nn.ModuleDict()
        self._student_capture = _Capture(student_modules, inputs=frozenset({PENULTIMATE}))
        self._teacher_capture = _Capture(teacher_modules, inputs=frozenset({PENULTIMATE}))
        if self.pairs:
            try:
                self._build_projections(example_input)
            except Exception:
                self.close()
                raise

    def _build_projections(self, example_input: Any) -> None:
        device = _model_device(self.student)
        with torch.no_grad():
            student_out, teacher_out = self._forward_both(example_input, device, grad=False)
        _check_logits(student_out, teacher_out)
        for s_name, t_name in self.pairs.items():
            s_shape = self._student_capture.values[s_name].shape
            t_shape = self._teacher_capture.values[t_name].shape
            dim = _width_dim(s_shape, t_shape, f"{s_name!r} -> {t_name!r}")
            if dim is not None:
                self.projections[self._key(s_name)] = _Projection(s_shape[dim], t_shape[dim], dim).to(device)
        self._student_capture.values.clear()
        self._teacher_capture.values.clear()

    @staticmethod
    def _key(name: str) -> str:
        return name.replace(".", "/")  # ModuleDict keys cannot contain dots

    def projection(self, student_layer: str) -> nn.Module | None:
        """The projection after ``student_layer``'s output, or None where the widths already match."""
        key = self._key(student_layer)
        return self.projections[key] if key in self.projections else None

    def parameters(self) -> Iterator[nn.Parameter]:
        """The student's parameters followed by the projections' (what the optimizer should update)."""
        yield from self.student.parameters()
        yield from self.projections.parameters()

    def _forward_both(self, inputs: Any, device: torch.device, grad: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = _to(inputs, device)
        teacher_mode = self.teacher.training
        self.teacher.eval()
        try:
            with torch.no_grad():  # no graph is kept: the teacher costs one forward pass of memory per batch
                teacher_out = _logits(_call(self.teacher, inputs), "teacher")
        finally:
            self.teacher.train(teacher_mode)
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            student_out = _logits(_call(self.student, inputs), "student")
        return student_out, teacher_out

    def feature_loss(self) -> torch.Tensor:
        """Sum of the feature distances of the last forward pass (0 without features)."""
        total = torch.zeros(())
        for s_name, t_name in self.pairs.items():
            student = self._student_capture.values[s_name]
            teacher = self._teacher_capture.values[t_name].detach()
            projection = self.projection(s_name)
            if projection is not None:
                student = projection(student)
            total = total.to(student.device) + feature_distance(student, teacher, self.feature_kind)
        return total

    def __call__(self, inputs: Any, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The distillation loss of one batch (teacher without gradients; student in its current mode)."""
        device = _model_device(self.student)
        student_out, teacher_out = self._forward_both(inputs, device)
        if labels is not None:
            labels = labels.to(student_out.device)
        loss = distillation_loss(
            student_out, teacher_out, labels, temperature=self.temperature, alpha=self.alpha, task_loss=self.task_loss
        )
        if self.pairs and self.feature_weight:
            loss = loss + self.feature_weight * self.feature_loss()
        self._student_capture.values.clear()
        self._teacher_capture.values.clear()
        return loss

    def close(self) -> nn.Module:
        """Remove the feature hooks, drop the projections, and return the plain student."""
        self._student_capture.close()
        self._teacher_capture.close()
        self.projections = nn.ModuleDict()
        return self.student


def distill(
    student: nn.Module,
    teacher: nn.Module,
    train_loader: Iterable,
    *,
    epochs: int,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    temperature: float = 1.0,
    alpha: float = 0.5,
    features: Mapping[str, str] | Sequence[str] | None = None,
    feature_weight: float = 1.0,
    feature_loss: str = "mse",
    task_loss: TaskLoss | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    pruner: Pruner | None = None,
    val_loader: Iterable | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> list[dict[str, float]]:
    """Train ``student`` on ``train_loader`` by distilling ``teacher``, like :func:`fit`.

    Batches are ``(inputs, labels)`` pairs, or inputs alone (a tensor, or a dict of keyword
    inputs such as ``{"input_ids": ...}`` for a language model) with ``alpha=1``: pure logit
    distillation over calibration or training text after one-shot pruning. Models may return
    logits or a ``ModelOutput``/dict with ``logits`` (sequence logits are distilled per token).

    With a ``pruner``, it steps after every optimizer step (and masks gradients and weights when
    ``distill`` builds the optimizer), so pruning and distillation run together. The feature
    projections are trained with the student and dropped at the end. Returns one record per
    epoch (loss, seconds, and ``val_accuracy`` with ``val_loader``).

    Example::

        result = prune_channels(model, x[:2], ratio=0.75).model
        distill(result, dense, loader, epochs=10, temperature=4.0, alpha=0.7)
    """
    if not isinstance(epochs, int) or epochs < 0:
        raise ConfigError(f"epochs should be an integer >= 0, got {epochs!r}")
    device = torch.device(device) if device is not None else _model_device(student)
    student.to(device)
    teacher.to(device)
    _check_mix(temperature, alpha)
    check_feature_loss(feature_loss)
    distiller: Distiller | None = None
    stepper: torch.optim.Optimizer | None = None  # the optimizer in use once the first batch built the distiller

    def start(example: Any) -> tuple[Distiller, torch.optim.Optimizer]:
        # built on the first training batch, so the loader is not iterated an extra time (its shuffling
        # generator would advance, and the epochs would see other batches than fit() on the same loader)
        made = Distiller(
            student,
            teacher,
            temperature=temperature,
            alpha=alpha,
            features=features,
            feature_weight=feature_weight,
            feature_loss=feature_loss,
            example_input=example if features else None,
            task_loss=task_loss,
        )
        if optimizer is None:
            built = torch.optim.Adam(made.parameters(), lr=lr, weight_decay=weight_decay)
            if pruner is not None:
                pruner.attach(built)
            return made, built
        if made.projections:
            optimizer.add_param_group({"params": list(made.projections.parameters())})
        return made, optimizer

    history: list[dict[str, float]] = []
    try:
        with progress_bar("distil", epochs * (_length(train_loader) or 0) or None, enabled=progress) as advance:
            for epoch in range(epochs):
                student.train()
                started, total, batches = time.perf_counter(), 0.0, 0
                for batch in train_loader:
                    inputs, labels = _split(batch)
                    if distiller is None or stepper is None:
                        distiller, stepper = start(inputs)
                    stepper.zero_grad(set_to_none=True)
                    loss = distiller(inputs, labels)
                    loss.backward()
                    stepper.step()
                    if pruner is not None:
                        pruner.step()
                    total += float(loss.detach())
                    batches += 1
                    advance()
                if distiller is None and features:
                    raise ConfigError("the training loader is empty")
                record = {"epoch": epoch + 1, "loss": total / max(batches, 1), "seconds": time.perf_counter() - started}
                if val_loader is not None:
                    record["val_accuracy"] = evaluate(student, val_loader, device)
                history.append(record)
    finally:
        if distiller is not None:
            distiller.close()
        if optimizer is None and stepper is not None and pruner is not None and not pruner.stripped:
            pruner.detach()  # only the hooks distill attached to its own optimizer
    return history
