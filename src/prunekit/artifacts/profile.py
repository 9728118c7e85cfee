"""Reference profiles: what the data a model was exported with looked like, for drift monitoring.

A :class:`ReferenceProfile` summarises the inputs a model saw at export (calibration/validation
data) and the outputs it gave on them, as small JSON written beside the artifact
(``profile.json``). Per input *feature* it holds summary statistics (count, mean, std, min, max,
quantiles) and a histogram whose bin edges are the reference deciles; per classifier output it
holds the predicted-class frequencies and a confidence histogram. ``prunekit serve`` bins the
requests it serves with the same edges and compares the two (see :mod:`prunekit.artifacts.drift`).

What a feature is depends on the tensor (``layout``):

- ``elements``: every element of a sample is a feature (tabular rows, small images such as 8x8
  digits: a rotated digit moves mass between pixel positions, which a per-channel summary misses);
  used when a float sample has at most ``max_features`` elements.
- ``channels``: larger float tensors, one feature per channel (``channel_axis``: 1 for ONNX/NCHW,
  -1 for TFLite/NHWC), pooling every position of the channel.
- ``pooled``: integer tensors (token ids, masks) are one feature, the distribution of the ids.

Example::

    profile = build_profile({"x": x_val}, {"y": model_outputs}, labels=y_val)
    profile.save("models/mlp/1/profile.json")
    ReferenceProfile.load("models/mlp/1/profile.json").inputs[0].features[0].mean
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from prunekit.core.atomic import atomic_write_text
from prunekit.errors import ConfigError, CorruptFileError

PROFILE_FILE = "profile.json"
PROFILE_SUFFIX = ".profile.json"
FORMAT = "prunekit-reference-profile"
VERSION = 1
QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
BIN_QUANTILES = tuple(i / 10 for i in range(1, 10))  # decile edges: ten bins of equal reference mass
CONFIDENCE_EDGES = tuple(i / 10 for i in range(1, 10))
MAX_CLASSES = 1 << 17  # up to a language model's vocabulary
LAYOUTS = ("elements", "channels", "pooled")


def profile_path_for(artifact: str | os.PathLike[str]) -> Path:
    """Where the profile of ``artifact`` goes: ``<artifact>.profile.json`` (``.enc`` dropped).

    Example::

        profile_path_for("out/pruned.onnx")   # PosixPath('out/pruned.onnx.profile.json')
    """
    path = Path(artifact)
    name = path.name[: -len(".enc")] if path.name.endswith(".enc") else path.name
    return path.with_name(name + PROFILE_SUFFIX)


def profile_files_for(artifact: str | os.PathLike[str]) -> list[Path]:
    """The reference profiles a server would read for ``artifact``: ``<artifact>.profile.json`` and ``profile.json`` beside it."""
    path = Path(artifact)
    return [p for p in (path.with_name(PROFILE_FILE), profile_path_for(path)) if p.is_file()]


@dataclass(frozen=True)
class FeatureProfile:
    """Statistics of one feature; ``counts[i]`` reference values fall in bin ``(edges[i-1], edges[i]]``
    (the first bin is open below, the last above), so there are ``len(edges) + 1`` bins."""

    name: str
    count: int
    mean: float
    std: float
    min: float
    max: float
    quantiles: tuple[float, ...]
    edges: tuple[float, ...]
    counts: tuple[int, ...]


@dataclass(frozen=True)
class TensorProfile:
    """The features of one input (or non-class output): see the module docstring for ``layout``."""

    name: str
    dtype: str
    sample_shape: tuple[int, ...]
    layout: str
    channel_axis: int | None
    features: tuple[FeatureProfile, ...]

    def edge_matrix(self) -> np.ndarray:
        """Bin edges as one ``(features, max edges)`` float64 matrix padded with +inf, for :func:`bin_counts`."""
        width = max((len(f.edges) for f in self.features), default=0)
        matrix = np.full((len(self.features), width), np.inf)
        for i, feature in enumerate(self.features):
            matrix[i, : len(feature.edges)] = feature.edges
        return matrix

    def reference_counts(self) -> np.ndarray:
        """Reference bin counts as a ``(features, max edges + 1)`` matrix (padding bins hold 0)."""
        width = max((len(f.edges) for f in self.features), default=0) + 1
        matrix = np.zeros((len(self.features), width), np.int64)
        for i, feature in enumerate(self.features):
            matrix[i, : len(feature.counts)] = feature.counts
        return matrix


@dataclass(frozen=True)
class OutputProfile:
    """One output: ``kind`` ``"classes"`` (scores over the last axis: class frequencies of the
    arg-max and a histogram of the top probability, after a softmax when ``softmax``) or
    ``"values"`` (summarised like an input, in ``tensor``). ``quantization`` ``(scale, zero_point)``
    turns a quantized integer output back into scores first."""

    name: str
    kind: str
    class_counts: tuple[int, ...] = ()
    confidence_counts: tuple[int, ...] = ()
    softmax: bool = False
    tensor: TensorProfile | None = None
    quantization: tuple[float, int] | None = None

    def scores(self, batch: np.ndarray) -> np.ndarray:
        """``batch`` as float scores (dequantized when the output is quantized)."""
        if self.quantization is None:
            return batch
        scale, zero_point = self.quantization
        return (np.asarray(batch, np.float64) - zero_point) * scale


@dataclass(frozen=True)
class ReferenceProfile:
    """Inputs and outputs of a model on its reference data (see the module docstring)."""

    samples: int
    inputs: tuple[TensorProfile, ...]
    outputs: tuple[OutputProfile, ...]
    accuracy: float | None = None
    source: str = ""

    def to_json(self) -> dict[str, Any]:
        """Plain JSON data (what :meth:`save` writes)."""
        return {
            "format": FORMAT,
            "version": VERSION,
            "samples": self.samples,
            "source": self.source,
            "accuracy": self.accuracy,
            "quantile_levels": list(QUANTILES),
            "inputs": [_tensor_json(t) for t in self.inputs],
            "outputs": [_output_json(o) for o in self.outputs],
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the profile as JSON, atomically; returns the path."""
        atomic_write_text(path, json.dumps(self.to_json(), indent=1))
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ReferenceProfile:
        """Read a profile written by :meth:`save`; a malformed file raises :class:`CorruptFileError` naming it and the field."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CorruptFileError(f"{path}: cannot read the reference profile: {exc}") from exc
        try:
            return cls.from_json(data)
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptFileError(f"{path}: malformed reference profile: {exc}") from exc

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ReferenceProfile:
        """Rebuild a profile from :meth:`to_json` data; raises ValueError/KeyError/TypeError naming the bad field."""
        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            raise ValueError(f"field 'format' should be {FORMAT!r}")
        if data.get("version") != VERSION:
            raise ValueError(f"field 'version' is {data.get('version')!r}; this prunekit reads version {VERSION}")
        accuracy = data.get("accuracy")
        return cls(
            samples=int(data["samples"]),
            inputs=tuple(_tensor_from(t, f"inputs[{i}]") for i, t in enumerate(data["inputs"])),
            outputs=tuple(_output_from(o, f"outputs[{i}]") for i, o in enumerate(data["outputs"])),
            accuracy=None if accuracy is None else float(accuracy),
            source=str(data.get("source", "")),
        )


# -- reducing a batch to features (shared by the profile and the server's monitor) -------------
def choose_layout(dtype: np.dtype, sample_shape: Sequence[int], max_features: int = 256) -> str:
    """The layout of a tensor: ``pooled`` for integers, ``elements`` for small float samples, else ``channels``.

    Example::

        choose_layout(np.dtype("float32"), (1, 8, 8))   # 'elements' (64 features)
    """
    if np.dtype(dtype).kind in "iub":
        return "pooled"
    if len(sample_shape) < 2 or math.prod(sample_shape) <= max_features:
        return "elements"
    return "channels"


def feature_matrix(batch: np.ndarray, layout: str, channel_axis: int | None) -> np.ndarray:
    """Reshape a batch ``(rows, *sample_shape)`` to ``(values, features)`` float64 for binning.

    Example::

        feature_matrix(np.zeros((5, 3, 4, 4)), "channels", 1).shape   # (80, 3)
    """
    values = np.asarray(batch)
    if layout == "elements":
        return values.reshape(len(values), -1).astype(np.float64, copy=False)
    if layout == "pooled":
        return values.reshape(-1, 1).astype(np.float64, copy=False)
    if channel_axis is None:
        raise ConfigError("layout 'channels' needs a channel_axis")
    return np.moveaxis(values, channel_axis, -1).reshape(-1, values.shape[channel_axis]).astype(np.float64, copy=False)


def bin_counts(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts per feature and bin of ``values`` ``(n, features)`` for padded ``edges`` ``(features, E)``.

    A value lands in bin ``i`` when ``edges[i-1] < value <= edges[i]``; returns ``(features, E + 1)``.

    Example::

        bin_counts(np.array([[0.0], [1.0], [2.0]]), np.array([[0.5, 1.5]]))   # [[1, 1, 1]]
    """
    features, width = edges.shape
    flat = np.broadcast_to(np.arange(features) * (width + 1), values.shape).copy()
    for column in edges.T:  # one pass per edge: much faster than a reduction over a short third axis
        flat += values > column
    return np.bincount(flat.ravel(), minlength=features * (width + 1)).reshape(features, width + 1)


def class_scores(batch: np.ndarray, softmax: bool) -> tuple[np.ndarray, np.ndarray]:
    """Predicted class and its probability for every score vector on the last axis.

    Example::

        class_scores(np.array([[0.2, 0.8]]), softmax=False)   # (array([1]), array([0.8]))
    """
    scores = np.asarray(batch, dtype=np.float64).reshape(-1, batch.shape[-1])
    if softmax:
        shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
        scores = shifted / shifted.sum(axis=1, keepdims=True)
    return scores.argmax(axis=1), scores.max(axis=1)


def confidence_counts(confidence: np.ndarray) -> np.ndarray:
    """Counts of ``confidence`` values in the ten bins ``(-inf, .1], (.1, .2], ..., (.9, inf)``."""
    return bin_counts(confidence.reshape(-1, 1), np.array([CONFIDENCE_EDGES]))[0]


# -- building ---------------------------------------------------------------------------------
def _feature_names(name: str, layout: str, sample_shape: tuple[int, ...], channel_axis: int | None) -> list[str]:
    if layout == "pooled":
        return [name]
    if layout == "channels":
        assert channel_axis is not None
        return [f"{name}[channel {c}]" for c in range(sample_shape[channel_axis - 1 if channel_axis > 0 else channel_axis])]
    return [f"{name}[{','.join(map(str, idx))}]" for idx in np.ndindex(*sample_shape)] if sample_shape else [name]


def profile_tensor(
    name: str, batch: np.ndarray, *, channel_axis: int = 1, max_features: int = 256, layout: str | None = None
) -> TensorProfile:
    """Summarise one tensor's reference batch ``(rows, *sample_shape)`` feature by feature.

    Example::

        profile_tensor("x", np.random.rand(100, 4)).features[0].edges   # its deciles
    """
    array = np.asarray(batch)
    if array.ndim < 1 or len(array) == 0:
        raise ConfigError(f"reference data for {name!r} should be a non-empty batch, got shape {array.shape}")
    if array.dtype.kind not in "fiub":
        raise ConfigError(f"reference data for {name!r} should be numeric, got dtype {array.dtype}")
    sample_shape = tuple(int(d) for d in array.shape[1:])
    chosen = layout or choose_layout(array.dtype, sample_shape, max_features)
    if chosen not in LAYOUTS:
        raise ConfigError(f"layout should be one of {LAYOUTS}, got {chosen!r}")
    axis = None
    if chosen == "channels":
        if not -len(sample_shape) <= channel_axis <= len(sample_shape) or channel_axis == 0:
            raise ConfigError(f"channel_axis {channel_axis} is not a sample axis of {name!r} with shape {array.shape}")
        axis = channel_axis
    values = feature_matrix(array, chosen, axis)
    finite = np.isfinite(values).all(axis=1)
    if not finite.all():
        raise ConfigError(f"reference data for {name!r} holds NaN or Inf values; clean it before profiling")
    names = _feature_names(name, chosen, sample_shape, axis)
    features = []
    for column, feature_name in zip(values.T, names):
        edges = np.unique(np.quantile(column, BIN_QUANTILES))
        counts = bin_counts(column[:, None], edges[None, :])[0]
        features.append(
            FeatureProfile(
                name=feature_name,
                count=int(column.size),
                mean=float(column.mean()),
                std=float(column.std()),
                min=float(column.min()),
                max=float(column.max()),
                quantiles=tuple(float(q) for q in np.quantile(column, QUANTILES)),
                edges=tuple(float(e) for e in edges),
                counts=tuple(int(c) for c in counts),
            )
        )
    return TensorProfile(name, array.dtype.name, sample_shape, chosen, axis, tuple(features))


def is_class_output(batch: np.ndarray) -> bool:
    """Whether an output looks like class scores: float, rank >= 2, 2 to :data:`MAX_CLASSES` entries on the last axis."""
    return batch.dtype.kind == "f" and batch.ndim >= 2 and 2 <= batch.shape[-1] <= MAX_CLASSES


def profile_output(
    name: str, batch: np.ndarray, *, channel_axis: int = 1, quantization: tuple[float, int] | None = None
) -> OutputProfile:
    """Summarise one output: class frequencies and confidences for class scores, else like an input.

    ``quantization`` ``(scale, zero_point)`` of an integer output makes it scores again first.

    Example::

        profile_output("y", logits).class_counts   # how often each class is predicted
    """
    raw = np.asarray(batch)
    array = raw
    if quantization is not None and raw.dtype.kind in "iu":
        array = OutputProfile(name, "classes", quantization=quantization).scores(raw)
    else:
        quantization = None
    if not is_class_output(array):
        array = raw
        sample = array.shape[1:]
        layout = "elements" if math.prod(sample) <= 256 else "pooled"  # large non-class outputs: their value distribution
        return OutputProfile(name, "values", tensor=profile_tensor(name, array, channel_axis=channel_axis, layout=layout))
    if not np.isfinite(array).all():
        raise ConfigError(f"model output {name!r} holds NaN or Inf on the reference data")
    rows = array.reshape(-1, array.shape[-1]).astype(np.float64)
    tolerance = 1e-3 if quantization is None else max(1e-3, rows.shape[1] * quantization[0])  # rounding of each entry
    probabilities = bool((rows >= 0).all() and (rows <= 1).all() and np.allclose(rows.sum(axis=1), 1.0, atol=tolerance))
    predicted, confidence = class_scores(array, softmax=not probabilities)
    classes = np.bincount(predicted, minlength=array.shape[-1])
    return OutputProfile(
        name,
        "classes",
        class_counts=tuple(int(c) for c in classes),
        confidence_counts=tuple(int(c) for c in confidence_counts(confidence)),
        softmax=not probabilities,
        quantization=quantization,
    )


def build_profile(
    inputs: Mapping[str, np.ndarray],
    outputs: Mapping[str, np.ndarray],
    *,
    labels: np.ndarray | None = None,
    channel_axis: int = 1,
    max_features: int = 256,
    source: str = "",
    output_quantization: Mapping[str, tuple[float, int]] | None = None,
) -> ReferenceProfile:
    """A profile of reference ``inputs`` and the model's ``outputs`` on them (all batches of equal rows).

    ``labels`` (one class per row) adds the reference accuracy of the first class output.
    ``channel_axis`` is where image channels are: 1 for PyTorch/ONNX (NCHW), -1 for Keras/TFLite (NHWC).
    ``output_quantization`` maps quantized integer outputs to their ``(scale, zero_point)``.

    Example::

        profile = build_profile({"x": x_val}, {"logits": model(x_val)}, labels=y_val)
    """
    if not inputs:
        raise ConfigError("build_profile needs at least one input batch")
    rows = {name: len(np.asarray(batch)) for name, batch in {**inputs, **outputs}.items()}
    if len(set(rows.values())) != 1:
        raise ConfigError(f"reference inputs and outputs should have the same number of rows, got {rows}")
    samples = next(iter(rows.values()))
    input_profiles = tuple(
        profile_tensor(name, np.asarray(batch), channel_axis=channel_axis, max_features=max_features)
        for name, batch in inputs.items()
    )
    quantized = output_quantization or {}
    output_profiles = tuple(
        profile_output(name, np.asarray(batch), channel_axis=channel_axis, quantization=quantized.get(name))
        for name, batch in outputs.items()
    )
    accuracy = None
    if labels is not None:
        classes = [(o, np.asarray(outputs[o.name])) for o in output_profiles if o.kind == "classes"]
        if not classes:
            raise ConfigError("labels were given but no output holds class scores to compare them with")
        profile, batch = classes[0]
        if batch.ndim != 2:
            raise ConfigError(f"labels need a (rows, classes) output; {profile.name!r} has shape {batch.shape}")
        label_array = np.asarray(labels).reshape(-1)
        if len(label_array) != samples:
            raise ConfigError(f"labels has {len(label_array)} entries for {samples} reference rows")
        predicted, _ = class_scores(profile.scores(batch), profile.softmax)
        accuracy = float((predicted == label_array).mean())
    return ReferenceProfile(samples, input_profiles, output_profiles, accuracy, source)


# -- JSON ---------------------------------------------------------------------------------------
def _feature_json(f: FeatureProfile) -> dict[str, Any]:
    return {
        "name": f.name,
        "count": f.count,
        "mean": f.mean,
        "std": f.std,
        "min": f.min,
        "max": f.max,
        "quantiles": list(f.quantiles),
        "histogram": {"edges": list(f.edges), "counts": list(f.counts)},
    }


def _tensor_json(t: TensorProfile) -> dict[str, Any]:
    return {
        "name": t.name,
        "dtype": t.dtype,
        "sample_shape": list(t.sample_shape),
        "layout": t.layout,
        "channel_axis": t.channel_axis,
        "features": [_feature_json(f) for f in t.features],
    }


def _output_json(o: OutputProfile) -> dict[str, Any]:
    if o.kind == "values":
        assert o.tensor is not None
        return {"name": o.name, "kind": o.kind, "tensor": _tensor_json(o.tensor)}
    total = max(sum(o.class_counts), 1)
    return {
        "name": o.name,
        "kind": o.kind,
        "softmax": o.softmax,
        "class_counts": list(o.class_counts),
        "class_frequencies": [c / total for c in o.class_counts],
        "confidence_histogram": {"edges": list(CONFIDENCE_EDGES), "counts": list(o.confidence_counts)},
        "quantization": None if o.quantization is None else list(o.quantization),
    }


def _feature_from(data: Mapping[str, Any], where: str) -> FeatureProfile:
    edges = tuple(float(e) for e in data["histogram"]["edges"])
    counts = tuple(int(c) for c in data["histogram"]["counts"])
    if list(edges) != sorted(set(edges)) or len(counts) != len(edges) + 1 or min(counts, default=0) < 0:
        raise ValueError(f"{where}.histogram: edges should increase and counts hold len(edges) + 1 non-negative entries")
    return FeatureProfile(
        name=str(data["name"]),
        count=int(data["count"]),
        mean=float(data["mean"]),
        std=float(data["std"]),
        min=float(data["min"]),
        max=float(data["max"]),
        quantiles=tuple(float(q) for q in data["quantiles"]),
        edges=edges,
        counts=counts,
    )


def _tensor_from(data: Mapping[str, Any], where: str) -> TensorProfile:
    layout = data["layout"]
    if layout not in LAYOUTS:
        raise ValueError(f"{where}.layout should be one of {LAYOUTS}, got {layout!r}")
    axis = data.get("channel_axis")
    features = tuple(_feature_from(f, f"{where}.features[{i}]") for i, f in enumerate(data["features"]))
    if not features:
        raise ValueError(f"{where}.features is empty")
    return TensorProfile(
        str(data["name"]),
        str(data["dtype"]),
        tuple(int(d) for d in data["sample_shape"]),
        layout,
        None if axis is None else int(axis),
        features,
    )


def _output_from(data: Mapping[str, Any], where: str) -> OutputProfile:
    kind = data["kind"]
    if kind == "values":
        return OutputProfile(str(data["name"]), kind, tensor=_tensor_from(data["tensor"], f"{where}.tensor"))
    if kind != "classes":
        raise ValueError(f"{where}.kind should be 'classes' or 'values', got {kind!r}")
    classes = tuple(int(c) for c in data["class_counts"])
    confidence = tuple(int(c) for c in data["confidence_histogram"]["counts"])
    if len(classes) < 2 or len(confidence) != len(CONFIDENCE_EDGES) + 1:
        raise ValueError(
            f"{where}: class_counts needs >= 2 classes and the confidence histogram {len(CONFIDENCE_EDGES) + 1} bins"
        )
    quantization = data.get("quantization")
    if quantization is not None:
        quantization = (float(quantization[0]), int(quantization[1]))
    return OutputProfile(str(data["name"]), kind, classes, confidence, bool(data["softmax"]), quantization=quantization)


__all__ = [
    "PROFILE_FILE",
    "FeatureProfile",
    "OutputProfile",
    "ReferenceProfile",
    "TensorProfile",
    "bin_counts",
    "build_profile",
    "choose_layout",
    "class_scores",
    "feature_matrix",
    "profile_output",
    "profile_tensor",
]
