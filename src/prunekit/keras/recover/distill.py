"""Knowledge distillation for Keras 3, on Keras's own ``keras.distillation``.

Keras 3 ships ``keras.distillation.Distiller`` with ``LogitsDistillation`` (temperature-scaled
KL, times ``T**2``) and ``FeatureDistillation`` (a loss between two named layers of equal shape).
prunekit adds what it lacks after structured pruning: :class:`ProjectedFeatureDistillation`, a
feature loss through a learned linear projection (student width -> teacher width, channels last)
that :class:`Distiller` creates only where the widths differ and trains with the student; and
:func:`distill`, which runs prunekit's pruning callbacks (``UpdatePruningStep``) during
distillation when the student carries pruning state.

The loss is Keras's: ``(1 - alpha) * task + alpha * (T**2 * KL + feature_weight * features)``
with ``alpha = 1 - student_loss_weight``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import keras
from keras import ops

from prunekit.errors import ConfigError, LayerNotFoundError


class ProjectedFeatureDistillation(keras.distillation.DistillationLoss):
    """MSE between a teacher layer's output and a student layer's output, mapped by ``projection`` when given.

    Example::

        loss = ProjectedFeatureDistillation("conv2", "conv2", keras.layers.Dense(64, use_bias=False))
    """

    def __init__(self, teacher_layer_name: str, student_layer_name: str, projection: Any = None):
        self.teacher_layer_name = teacher_layer_name
        self.student_layer_name = student_layer_name
        self.projection = projection

    def validate_outputs(self, teacher_outputs: Any, student_outputs: Any) -> None:
        keras.tree.assert_same_structure(teacher_outputs, student_outputs)

    def compute_loss(self, teacher_outputs: Any, student_outputs: Any, **kwargs: Any) -> Any:
        if self.projection is not None:
            student_outputs = self.projection(student_outputs)
        return ops.mean(ops.square(ops.subtract(teacher_outputs, student_outputs)))


def _pairs(features: Mapping[str, str] | Sequence[str] | None) -> dict[str, str]:
    if features is None:
        return {}
    if isinstance(features, str):
        raise ConfigError(f"features should be a list of layer names or a {{student: teacher}} dict, got the string {features!r}")
    if isinstance(features, Mapping):
        return {str(s): str(t) for s, t in features.items()}
    return {str(n): str(n) for n in features}


def _layer(model: Any, name: str, role: str) -> Any:
    try:
        return model.get_layer(name)
    except ValueError:
        raise LayerNotFoundError(
            f"feature layer {name!r} matches no layer of the {role} {model.name!r}; its layers are {[x.name for x in model.layers][:12]}"
        ) from None


class Distiller(keras.distillation.Distiller):
    """``keras.distillation.Distiller`` with logits distillation and projected feature distillation.

    Args:
        teacher, student: Functional or Sequential models with the same output shape.
        temperature: softmax temperature of the logits term.
        alpha: weight of the distillation terms (``1 - student_loss_weight``).
        features: layer names present in both, or ``{student_layer: teacher_layer}``; a projection
            (``Dense(teacher_width, use_bias=False)`` on the last axis) is made only where widths differ.
        feature_weight: weight of each feature term relative to the logits term.

    ``distiller.projections`` maps student layer names to their projection layers. Like Keras's
    Distiller it sets ``teacher.trainable = False`` (:func:`distill` restores it afterwards).

    Example::

        distiller = Distiller(teacher=dense, student=pruned, features=["conv2"], alpha=0.7)
        distiller.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        distiller.fit(x, y, epochs=5)
    """

    def __init__(
        self,
        teacher: Any,
        student: Any,
        *,
        temperature: float = 1.0,
        alpha: float = 0.5,
        features: Mapping[str, str] | Sequence[str] | None = None,
        feature_weight: float = 1.0,
        name: str = "distiller",
        **kwargs: Any,
    ):
        if not (isinstance(temperature, (int, float)) and temperature > 0):
            raise ConfigError(f"temperature should be a number > 0, got {temperature!r}")
        if not (isinstance(alpha, (int, float)) and 0 <= alpha <= 1):
            raise ConfigError(f"alpha (the weight of the distillation terms) should be in [0, 1], got {alpha!r}")
        for role, model in (("teacher", teacher), ("student", student)):
            if not isinstance(model, keras.Model):
                raise ConfigError(f"the {role} should be a keras.Model, got {type(model).__name__}")
        t_out, s_out = tuple(teacher.outputs[0].shape), tuple(student.outputs[0].shape)
        if t_out != s_out:
            raise ConfigError(
                f"teacher and student outputs differ in shape: teacher {t_out}, student {s_out}; "
                "distil between models with the same output layer"
            )
        # a KLDivergence *instance*: Keras's default loss="kl_divergence" resolves to the plain function, which
        # LogitsDistillation then applies to the raw scaled logits (no softmax, no T**2): a wrong loss
        kl = keras.losses.KLDivergence()
        losses: list[Any] = [keras.distillation.LogitsDistillation(temperature=float(temperature), loss=kl)]
        weights = [1.0]
        projections: dict[str, Any] = {}
        for s_name, t_name in _pairs(features).items():
            s_shape = tuple(_layer(student, s_name, "student").output.shape)
            t_shape = tuple(_layer(teacher, t_name, "teacher").output.shape)
            projection = None
            if s_shape != t_shape:
                if len(s_shape) != len(t_shape) or s_shape[:-1] != t_shape[:-1]:
                    raise ConfigError(
                        f"feature pair {s_name!r} -> {t_name!r} has outputs {s_shape} and {t_shape}: they may differ "
                        "in the last (channel) axis only"
                    )
                projection = keras.layers.Dense(t_shape[-1], use_bias=False, name=f"projection_{s_name}")
                projection.build(s_shape)
                projections[s_name] = projection
            losses.append(ProjectedFeatureDistillation(t_name, s_name, projection))
            weights.append(float(feature_weight))
        super().__init__(
            teacher=teacher,
            student=student,
            distillation_losses=losses,
            distillation_loss_weights=weights,
            student_loss_weight=1.0 - float(alpha),
            name=name,
            **kwargs,
        )
        self.projection_layers = list(projections.values())  # tracked, so their weights train
        self.projections = projections


def distill(
    student: Any,
    teacher: Any,
    x: Any,
    y: Any,
    *,
    epochs: int,
    lr: float = 1e-3,
    batch_size: int = 64,
    temperature: float = 1.0,
    alpha: float = 0.5,
    features: Mapping[str, str] | Sequence[str] | None = None,
    feature_weight: float = 1.0,
    validation_data: Any = None,
    callbacks: Sequence[Any] = (),
) -> Any:
    """Train ``student`` (logits out) on ``(x, y)`` by distilling ``teacher``; returns the Keras ``History``.

    A student carrying prunekit pruning state (``prune_low_magnitude``) keeps pruning on its
    schedule: ``UpdatePruningStep`` is added to the callbacks when missing. The projections are
    dropped with the distiller; the student is the same model object, trained in place.

    Example::

        distill(pruned_student, dense, split.x_train, split.y_train, epochs=5, alpha=0.7)
    """
    from prunekit.keras.unstructured.callbacks import UpdatePruningStep
    from prunekit.keras.unstructured.state import prunings

    if not isinstance(epochs, int) or epochs < 0:
        raise ConfigError(f"epochs should be an integer >= 0, got {epochs!r}")
    callbacks = list(callbacks)
    if prunings(student) and not any(isinstance(c, UpdatePruningStep) for c in callbacks):
        callbacks.append(UpdatePruningStep())
    trainable = teacher.trainable
    try:
        distiller = Distiller(
            teacher, student, temperature=temperature, alpha=alpha, features=features, feature_weight=feature_weight
        )
        distiller.compile(optimizer=keras.optimizers.Adam(lr), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return distiller.fit(
            x, y, epochs=epochs, batch_size=batch_size, validation_data=validation_data, callbacks=callbacks, verbose=0
        )
    finally:
        teacher.trainable = trainable  # keras.distillation freezes the teacher for good; give it back as it was
