"""Drift monitoring of a served model against its reference profile (``profile.json`` beside it).

Each loaded version with a profile gets a :class:`DriftMonitor`. Per request it bins the inputs
and outputs with the profile's bin edges and adds the counts to a sliding window; nothing else
is kept, so the cost per request is one comparison per value and bin edge and the memory is
``features x bins`` counters whatever the traffic. The window is two blocks of ``window / 2``
rows: when the newer block fills, the older one is dropped, so scores cover the last
``window / 2`` to ``window`` rows.

Scores (see :mod:`prunekit.artifacts.drift`): per input feature the population stability index
and the KS statistic; a feature has drifted when either crosses its threshold, and an input has
drifted when the share of drifted features reaches ``share_threshold``. Per class output the PSI
of the predicted-class frequencies and of the confidence histogram (a proxy for concept drift
when labels are absent). Labels that arrive later (``POST /v1/models/NAME/feedback`` with the
``X-Request-ID`` of the prediction) give a windowed accuracy. Crossing a threshold logs one
structured warning (``drift threshold crossed``) and going back under it one info line.

Example::

    monitor = DriftMonitor(profile, runtime.inputs, runtime.outputs, DriftSettings(), "mlp", 1)
    monitor.observe({"x": batch}, runtime.run({"x": batch}), request_id="r1")
    monitor.report()["inputs"]["x"]["max_psi"]
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from prunekit.artifacts.drift import ks, psi
from prunekit.artifacts.profile import (
    OutputProfile,
    ReferenceProfile,
    TensorProfile,
    bin_counts,
    class_scores,
    confidence_counts,
    feature_matrix,
)
from prunekit.errors import ConfigError
from prunekit.serve.codec import InvalidRequestError
from prunekit.serve.config import DriftSettings
from prunekit.serve.runtimes import TensorSpec

log = logging.getLogger("prunekit.serve.drift")
_TOP = 5


class UnknownPredictionError(InvalidRequestError):
    """Feedback names a request id whose prediction is not (or no longer) kept."""


class _Window:
    """Counts over the last ``half`` to ``2 * half`` rows, kept as two blocks."""

    def __init__(self, shape: tuple[int, ...], half: int) -> None:
        self.half = half
        self.older = np.zeros(shape, np.int64)
        self.newer = np.zeros(shape, np.int64)
        self.older_rows = 0
        self.newer_rows = 0

    def add(self, counts: np.ndarray, rows: int) -> None:
        self.newer += counts
        self.newer_rows += rows
        if self.newer_rows >= self.half:
            self.older, self.older_rows = self.newer, self.newer_rows
            self.newer, self.newer_rows = np.zeros_like(self.older), 0

    @property
    def rows(self) -> int:
        return self.older_rows + self.newer_rows

    def counts(self) -> np.ndarray:
        return self.older + self.newer


class _TensorWatch:
    """Binned window of one profiled tensor (an input or a non-class output)."""

    def __init__(self, profile: TensorProfile, half: int) -> None:
        self.profile = profile
        self.edges = profile.edge_matrix()
        self.reference = profile.reference_counts()
        self.valid = np.zeros(self.reference.shape, bool)
        for i, feature in enumerate(profile.features):
            self.valid[i, : len(feature.counts)] = True
        self.window = _Window(self.reference.shape, half)
        self.skipped = 0

    def observe(self, batch: np.ndarray) -> None:
        values = feature_matrix(batch, self.profile.layout, self.profile.channel_axis)
        if values.shape[1] != len(self.profile.features):  # a dynamic dimension took another size
            self.skipped += len(batch)
            return
        self.window.add(bin_counts(values, self.edges), len(batch))

    def scores(self, settings: DriftSettings) -> dict[str, Any]:
        counts = self.window.counts()
        psis, kss = psi(self.reference, counts, self.valid), ks(self.reference, counts, self.valid)
        drifted = (psis >= settings.psi_threshold) | (kss >= settings.ks_threshold)
        order = np.argsort(-psis)[:_TOP]
        names = [f.name for f in self.profile.features]
        return {
            "features": len(names),
            "drifted_features": int(drifted.sum()),
            "drift_share": float(drifted.mean()),
            "max_psi": float(psis.max()),
            "mean_psi": float(psis.mean()),
            "max_ks": float(kss.max()),
            "top": [{"feature": names[i], "psi": float(psis[i]), "ks": float(kss[i])} for i in order],
            "skipped_rows": self.skipped,
            "_psi": psis,
            "_ks": kss,
        }


class _ClassWatch:
    """Windows of the predicted classes and confidences of one class output."""

    def __init__(self, profile: OutputProfile, half: int) -> None:
        self.profile = profile
        self.classes = _Window((len(profile.class_counts),), half)
        self.confidence = _Window((len(profile.confidence_counts),), half)

    def observe(self, batch: np.ndarray) -> np.ndarray:
        predicted, confidence = class_scores(self.profile.scores(batch), self.profile.softmax)
        rows = len(batch)
        self.classes.add(np.bincount(predicted, minlength=len(self.profile.class_counts))[: len(self.profile.class_counts)], rows)
        self.confidence.add(confidence_counts(confidence), rows)
        return predicted

    def scores(self) -> dict[str, Any]:
        reference_classes = np.array([self.profile.class_counts])
        reference_confidence = np.array([self.profile.confidence_counts])
        classes = self.classes.counts()
        total = max(int(classes.sum()), 1)
        return {
            "class_psi": float(psi(reference_classes, classes[None])[0]),
            "confidence_psi": float(psi(reference_confidence, self.confidence.counts()[None])[0]),
            "confidence_ks": float(ks(reference_confidence, self.confidence.counts()[None])[0]),
            "class_frequencies": [round(int(c) / total, 6) for c in classes],
        }


def _stacked(batches: list[np.ndarray]) -> list[np.ndarray]:
    """The batches as one array when their sample shapes agree, else as they are."""
    if len(batches) > 1 and len({b.shape[1:] for b in batches}) == 1:
        return [np.concatenate(batches)]
    return batches


def _stacked_with_ids(batches: list[tuple[np.ndarray, str]]) -> list[tuple[np.ndarray, list[tuple[str, int]]]]:
    """Like :func:`_stacked`, with the request id and row count of each part."""
    if len(batches) > 1 and len({b.shape[1:] for b, _ in batches}) == 1:
        return [(np.concatenate([b for b, _ in batches]), [(i, len(b)) for b, i in batches])]
    return [(b, [(i, len(b))]) for b, i in batches]


def check_profile(profile: ReferenceProfile, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], path: Path) -> None:
    """Raise :class:`ConfigError` naming ``path`` and the mismatch when ``profile`` was not made for this signature.

    Example::

        check_profile(ReferenceProfile.load(p), runtime.inputs, runtime.outputs, p)
    """
    problems = []
    specs = {s.name: s for s in inputs}
    if {t.name for t in profile.inputs} != set(specs):
        problems.append(f"profile inputs {sorted(t.name for t in profile.inputs)} but model inputs {sorted(specs)}")
    for tensor in profile.inputs:
        spec = specs.get(tensor.name)
        if spec is None or spec.shape is None:
            continue
        sample = spec.shape[1:]
        if tensor.layout != "pooled" and (
            len(sample) != len(tensor.sample_shape) or any(d is not None and d != p for d, p in zip(sample, tensor.sample_shape))
        ):
            problems.append(
                f"input {tensor.name!r} has sample shape {list(tensor.sample_shape)} in the profile "
                f"but {[-1 if d is None else d for d in sample]} in the model"
            )
    names = {s.name: s for s in outputs}
    for output in profile.outputs:
        spec = names.get(output.name)
        if spec is None:
            problems.append(f"profile output {output.name!r} is not a model output (model outputs: {sorted(names)})")
        elif output.kind == "classes" and spec.shape and spec.shape[-1] not in (None, len(output.class_counts)):
            problems.append(
                f"output {output.name!r} has {len(output.class_counts)} classes in the profile but {spec.shape[-1]} in the model"
            )
    if problems:
        raise ConfigError(f"reference profile {path} does not match the model: " + "; ".join(problems))


class DriftMonitor:
    """Sliding-window drift scores of one loaded model version (see the module docstring)."""

    def __init__(
        self,
        profile: ReferenceProfile,
        inputs: Sequence[TensorSpec],
        outputs: Sequence[TensorSpec],
        settings: DriftSettings,
        model: str,
        version: int,
        path: Path = Path("profile.json"),
    ) -> None:
        check_profile(profile, inputs, outputs, path)
        half = max(1, settings.window // 2)
        self.profile = profile
        self.settings = settings
        self.model = model
        self.version = version
        self.inputs = {t.name: _TensorWatch(t, half) for t in profile.inputs}
        self.value_outputs = {o.name: _TensorWatch(o.tensor, half) for o in profile.outputs if o.tensor is not None}
        self.class_outputs = {o.name: _ClassWatch(o, half) for o in profile.outputs if o.kind == "classes"}
        self.rows = 0
        self._labelled = _Window((2,), half)  # [correct, labelled]
        self._predictions: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self._check_every = max(1, settings.window // 4)  # thresholds are checked four times per window
        self._next_check = settings.min_rows
        self._active: dict[str, str] = {}
        self._pending: list[tuple[Mapping[str, np.ndarray], Mapping[str, np.ndarray], str, int]] = []
        self._pending_rows = 0
        self._flush_rows = max(1, min(settings.flush_rows, settings.window // 4))

    # -- per request ---------------------------------------------------------------------------
    def observe(self, feeds: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray], request_id: str = "") -> None:
        """Add one answered request's inputs and outputs to the window (and keep its predictions for feedback).

        Requests are queued and binned together once ``flush_rows`` rows wait (or when scores are
        read), so the fixed cost of binning is shared by many small requests.
        """
        rows = len(next(iter(feeds.values())))
        with self._lock:
            self._pending.append((feeds, outputs, request_id, rows))
            self._pending_rows += rows
            if self._pending_rows < self._flush_rows:
                return
            self._flush()
            due = self.rows >= self._next_check
            if due:
                self._next_check = self.rows + self._check_every
        if due:
            self.check()

    def _flush(self) -> None:
        """Bin the queued requests (call with the lock held)."""
        pending, self._pending, self._pending_rows = self._pending, [], 0
        if not pending:
            return
        for watches, tensors in ((self.inputs, [f for f, *_ in pending]), (self.value_outputs, [o for _, o, *_ in pending])):
            for name, watch in watches.items():
                for batch in _stacked([t[name] for t in tensors if name in t]):
                    watch.observe(batch)
        first = True
        for name, classes in self.class_outputs.items():
            batches = [(o[name], request_id) for _, o, request_id, _ in pending if name in o]
            for batch, ids in _stacked_with_ids(batches):
                predicted = classes.observe(batch)
                if first and self.settings.kept_predictions and batch.ndim == 2:
                    self._keep(predicted, ids)
            first = False
        self.rows += sum(rows for *_, rows in pending)

    def _keep(self, predicted: np.ndarray, ids: list[tuple[str, int]]) -> None:
        start = 0
        for request_id, rows in ids:
            if request_id:
                self._predictions[request_id] = predicted[start : start + rows]
                if len(self._predictions) > self.settings.kept_predictions:
                    self._predictions.popitem(last=False)
            start += rows

    def feedback(self, request_id: str, labels: Any) -> dict[str, Any]:
        """Score the kept prediction of ``request_id`` against ``labels`` (one class per row).

        Raises :class:`UnknownPredictionError` when no prediction is kept under that id and
        :class:`InvalidRequestError` naming ``labels`` when they do not fit it.
        """
        if not isinstance(labels, list) or not labels or not all(isinstance(v, int) and not isinstance(v, bool) for v in labels):
            raise InvalidRequestError("'labels' should be a non-empty list of class indices (integers), one per predicted row")
        with self._lock:
            self._flush()
            predicted = self._predictions.get(request_id)
            if predicted is None:
                raise UnknownPredictionError(
                    f"no prediction is kept for request id {request_id!r} (the last {self.settings.kept_predictions} "
                    "predictions of this version are kept, each can be labelled once)"
                )
            if len(labels) != len(predicted):
                raise InvalidRequestError(
                    f"'labels' has {len(labels)} entries but request {request_id!r} predicted {len(predicted)} rows"
                )
            del self._predictions[request_id]
            correct = int((predicted == np.asarray(labels)).sum())
            self._labelled.add(np.array([correct, len(labels)]), len(labels))
        self.check()
        return {"request_id": request_id, "rows": len(labels), "correct": correct}

    # -- scores --------------------------------------------------------------------------------
    def _scores(self) -> dict[str, Any]:
        with self._lock:
            self._flush()
            inputs = {name: w.scores(self.settings) for name, w in self.inputs.items()}
            values = {name: w.scores(self.settings) for name, w in self.value_outputs.items()}
            classes = {name: w.scores() for name, w in self.class_outputs.items()}
            window_rows = max((w.window.rows for w in self.inputs.values()), default=0)
            correct, labelled = (int(v) for v in self._labelled.counts())
        return {
            "inputs": inputs,
            "values": values,
            "classes": classes,
            "window_rows": window_rows,
            "labelled": (correct, labelled),
        }

    def _alerts(self, scores: Mapping[str, Any]) -> dict[str, tuple[str, float, float]]:
        """Active alerts: key -> (message, score, threshold)."""
        s = self.settings
        alerts: dict[str, tuple[str, float, float]] = {}
        if scores["window_rows"] >= s.min_rows:
            for name, result in scores["inputs"].items():
                if result["drift_share"] >= s.share_threshold:
                    message = f"input {name!r}: {result['drifted_features']} of {result['features']} features drifted"
                    alerts[f"input:{name}"] = (message, result["drift_share"], s.share_threshold)
            for name, result in scores["values"].items():
                if result["drift_share"] >= s.share_threshold:
                    message = f"output {name!r}: {result['drifted_features']} of {result['features']} values drifted"
                    alerts[f"output:{name}"] = (message, result["drift_share"], s.share_threshold)
            for name, result in scores["classes"].items():
                if result["class_psi"] >= s.psi_threshold:
                    alerts[f"classes:{name}"] = (
                        f"output {name!r}: predicted-class frequencies shifted",
                        result["class_psi"],
                        s.psi_threshold,
                    )
                if result["confidence_psi"] >= s.psi_threshold:
                    alerts[f"confidence:{name}"] = (
                        f"output {name!r}: confidence histogram shifted",
                        result["confidence_psi"],
                        s.psi_threshold,
                    )
        correct, labelled = scores["labelled"]
        if s.min_accuracy is not None and labelled >= s.min_rows and correct / labelled < s.min_accuracy:
            alerts["accuracy"] = ("windowed accuracy on labelled feedback is low", correct / labelled, s.min_accuracy)
        return alerts

    def check(self) -> dict[str, tuple[str, float, float]]:
        """Score the window, log a warning for each threshold newly crossed (info when one clears); return the active alerts."""
        alerts = self._alerts(self._scores())
        for key, (message, score, threshold) in alerts.items():
            if key not in self._active:
                log.warning(
                    "drift threshold crossed",
                    extra={
                        "model": self.model,
                        "version": self.version,
                        "alert": key,
                        "detail": message,
                        "score": round(score, 6),
                        "threshold": threshold,
                    },
                )
        for key in set(self._active) - set(alerts):
            log.info("drift back under threshold", extra={"model": self.model, "version": self.version, "alert": key})
        self._active = {key: value[0] for key, value in alerts.items()}
        return alerts

    def report(self) -> dict[str, Any]:
        """The window's scores, alerts and thresholds as JSON data (``GET /v1/models/NAME/drift``)."""
        scores = self._scores()
        alerts = self._alerts(scores)
        strip = lambda result: {k: v for k, v in result.items() if not k.startswith("_")}  # noqa: E731
        correct, labelled = scores["labelled"]
        return {
            "model": self.model,
            "version": self.version,
            "rows_seen": self.rows,
            "window_rows": scores["window_rows"],
            "ready": scores["window_rows"] >= self.settings.min_rows,
            "inputs": {name: strip(r) for name, r in scores["inputs"].items()},
            "outputs": {**{name: strip(r) for name, r in scores["values"].items()}, **scores["classes"]},
            "accuracy": {
                "labelled_rows": labelled,
                "accuracy": correct / labelled if labelled else None,
                "reference_accuracy": self.profile.accuracy,
            },
            "alerts": [{"alert": key, "detail": m, "score": v, "threshold": t} for key, (m, v, t) in sorted(alerts.items())],
            "thresholds": {
                "psi": self.settings.psi_threshold,
                "ks": self.settings.ks_threshold,
                "share": self.settings.share_threshold,
                "min_accuracy": self.settings.min_accuracy,
                "min_rows": self.settings.min_rows,
                "window": self.settings.window,
            },
        }

    def series(self) -> Iterator[tuple[str, dict[str, str], float]]:
        """Prometheus gauge samples ``(metric suffix, labels, value)`` of the current window."""
        scores = self._scores()
        alerts = self._alerts(scores)
        base = {"model": self.model, "version": str(self.version)}
        yield "window_rows", base, float(scores["window_rows"])
        for name, result in scores["inputs"].items():
            yield "input_drift_share", {**base, "input": name}, result["drift_share"]
            yield "input_max_psi", {**base, "input": name}, result["max_psi"]
            yield "input_max_ks", {**base, "input": name}, result["max_ks"]
            for feature, value in zip(self.inputs[name].profile.features, result["_psi"]):
                yield "feature_psi", {**base, "input": name, "feature": feature.name}, float(value)
        for name, result in scores["classes"].items():
            yield "output_psi", {**base, "output": name, "part": "classes"}, result["class_psi"]
            yield "output_psi", {**base, "output": name, "part": "confidence"}, result["confidence_psi"]
        correct, labelled = scores["labelled"]
        yield "feedback_rows", base, float(labelled)
        if labelled:
            yield "feedback_accuracy", base, correct / labelled
        yield "alerts", base, float(len(alerts))


_HELP = {
    "window_rows": "Rows in the drift window.",
    "input_drift_share": "Share of an input's features whose PSI or KS crossed its threshold.",
    "input_max_psi": "Largest population stability index over an input's features.",
    "input_max_ks": "Largest Kolmogorov-Smirnov statistic over an input's features.",
    "feature_psi": "Population stability index of one input feature against the reference profile.",
    "output_psi": "PSI of a class output's predicted-class frequencies or confidence histogram.",
    "feedback_rows": "Labelled rows (feedback) in the accuracy window.",
    "feedback_accuracy": "Accuracy of the labelled rows in the window.",
    "alerts": "Drift thresholds currently crossed.",
}


class DriftCollector:
    """A ``prometheus_client`` collector reading the monitors at scrape time (no cost per request).

    Example::

        registry = CollectorRegistry(auto_describe=False)
        registry.register(DriftCollector(lambda: monitors))
        generate_latest(registry)
    """

    def __init__(self, monitors: Callable[[], Sequence[DriftMonitor]]) -> None:
        self._monitors = monitors

    def collect(self) -> Iterator[Any]:
        """One gauge family per drift figure, a series per model version (and input/feature/output)."""
        from prometheus_client.core import GaugeMetricFamily

        families: dict[str, Any] = {}  # each figure has one label set
        for monitor in self._monitors():
            for suffix, labels, value in monitor.series():
                family = families.get(suffix)
                if family is None:
                    family = families[suffix] = GaugeMetricFamily(f"prunekit_drift_{suffix}", _HELP[suffix], labels=list(labels))
                family.add_metric(list(labels.values()), value)
        yield from families.values()


__all__ = ["DriftCollector", "DriftMonitor", "DriftSettings", "UnknownPredictionError", "check_profile"]
