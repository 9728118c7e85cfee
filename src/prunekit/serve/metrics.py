"""Prometheus metrics in the text exposition format (version 0.0.4), without a client library.

Example::

    registry = MetricsRegistry()
    hits = registry.counter("app_hits_total", "Hits.", ["path"])
    hits.inc(("/",))
    registry.render()
    # '# HELP app_hits_total Hits.\\n# TYPE app_hits_total counter\\napp_hits_total{path="/"} 1\\n'
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{name}="{_escape(str(value))}"' for name, value in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class _Metric:
    kind = ""

    def __init__(self, name: str, help_text: str, labelnames: Sequence[str]) -> None:
        self.name = name
        self.help = help_text
        self.labelnames = tuple(labelnames)
        self._lock = threading.Lock()

    def _check(self, labels: Sequence[str]) -> tuple[str, ...]:
        if len(labels) != len(self.labelnames):
            raise ValueError(f"metric {self.name} takes labels {self.labelnames}, got {tuple(labels)}")
        return tuple(str(label) for label in labels)

    def _header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    """A value that only goes up, per label set.

    Example::

        errors = Counter("errors_total", "Errors.", ["code"]); errors.inc(("404",))
    """

    kind = "counter"

    def __init__(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> None:
        super().__init__(name, help_text, labelnames)
        self._values: dict[tuple[str, ...], float] = {}

    def inc(self, labels: Sequence[str] = (), amount: float = 1.0) -> None:
        """Add ``amount`` (>= 0) to the series of ``labels``."""
        if amount < 0:
            raise ValueError(f"counter {self.name} can only increase, got {amount}")
        key = self._check(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, labels: Sequence[str] = ()) -> float:
        """The current value of one series (0 when never incremented)."""
        return self._values.get(self._check(labels), 0.0)

    def render(self) -> list[str]:
        """Exposition lines."""
        with self._lock:
            items = sorted(self._values.items())
        return self._header() + [f"{self.name}{_labels(self.labelnames, k)} {_number(v)}" for k, v in items]


class Gauge(Counter):
    """A value that can go up and down, per label set.

    Example::

        version = Gauge("model_version", "Version.", ["model"]); version.set(("mlp",), 2)
    """

    kind = "gauge"

    def set(self, labels: Sequence[str], value: float) -> None:
        """Set the series of ``labels`` to ``value``."""
        key = self._check(labels)
        with self._lock:
            self._values[key] = float(value)

    def remove(self, labels: Sequence[str]) -> None:
        """Drop the series of ``labels``."""
        with self._lock:
            self._values.pop(self._check(labels), None)


class Histogram(_Metric):
    """Observations counted into cumulative ``le`` buckets, with their sum and count.

    Example::

        latency = Histogram("latency_seconds", "Latency.", ["model"], buckets=(0.01, 0.1))
        latency.observe(("mlp",), 0.02)
    """

    kind = "histogram"

    def __init__(
        self, name: str, help_text: str, labelnames: Sequence[str] = (), buckets: Sequence[float] = LATENCY_BUCKETS
    ) -> None:
        super().__init__(name, help_text, labelnames)
        if list(buckets) != sorted(set(buckets)) or not buckets:
            raise ValueError(f"histogram {name}: buckets must be increasing and unique, got {list(buckets)}")
        self.buckets = tuple(float(b) for b in buckets)
        self._series: dict[tuple[str, ...], list[float]] = {}  # per-bucket counts, then +Inf, sum

    def observe(self, labels: Sequence[str], value: float) -> None:
        """Count one observation of ``value``."""
        key = self._check(labels)
        with self._lock:
            series = self._series.setdefault(key, [0.0] * (len(self.buckets) + 2))
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    series[i] += 1
                    break
            else:
                series[len(self.buckets)] += 1
            series[-1] += value

    def count(self, labels: Sequence[str]) -> int:
        """How many observations the series of ``labels`` holds."""
        series = self._series.get(self._check(labels))
        return 0 if series is None else int(sum(series[:-1]))

    def render(self) -> list[str]:
        """Exposition lines: cumulative buckets, ``_sum`` and ``_count`` per series."""
        with self._lock:
            items = sorted((k, list(v)) for k, v in self._series.items())
        lines = self._header()
        for key, series in items:
            cumulative = 0.0
            for bound, count in zip(self.buckets + (math.inf,), series[:-1]):
                cumulative += count
                le = 'le="' + _number(bound) + '"'
                lines.append(f"{self.name}_bucket{_labels(self.labelnames, key, le)} {_number(cumulative)}")
            lines.append(f"{self.name}_sum{_labels(self.labelnames, key)} {_number(series[-1])}")
            lines.append(f"{self.name}_count{_labels(self.labelnames, key)} {_number(cumulative)}")
        return lines


class MetricsRegistry:
    """The metrics of one server, rendered together.

    Example::

        registry = MetricsRegistry()
        registry.counter("requests_total", "Requests.", ["code"]).inc(("200",))
        print(registry.render())
    """

    def __init__(self) -> None:
        self._metrics: list[_Metric] = []

    def _add(self, metric: _Metric) -> _Metric:
        if any(m.name == metric.name for m in self._metrics):
            raise ValueError(f"metric {metric.name} is already registered")
        self._metrics.append(metric)
        return metric

    def counter(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> Counter:
        """Register and return a :class:`Counter`."""
        return self._add(Counter(name, help_text, labelnames))  # type: ignore[return-value]

    def gauge(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> Gauge:
        """Register and return a :class:`Gauge`."""
        return self._add(Gauge(name, help_text, labelnames))  # type: ignore[return-value]

    def histogram(
        self, name: str, help_text: str, labelnames: Sequence[str] = (), buckets: Sequence[float] = LATENCY_BUCKETS
    ) -> Histogram:
        """Register and return a :class:`Histogram`."""
        return self._add(Histogram(name, help_text, labelnames, buckets))  # type: ignore[return-value]

    def render(self) -> str:
        """Every metric in the text exposition format."""
        lines: list[str] = []
        for metric in self._metrics:
            lines.extend(metric.render())  # type: ignore[attr-defined]
        return "\n".join(lines) + "\n"


class ServeMetrics:
    """The server's metrics: requests, errors, latency, inference time, batch sizes, reloads.

    Example::

        metrics = ServeMetrics()
        metrics.record_request("predict", "mlp", 200, 0.004)
        metrics.registry.render()
    """

    def __init__(self) -> None:
        self.registry = MetricsRegistry()
        r = self.registry
        self.requests = r.counter(
            "prunekit_serve_requests_total",
            "HTTP requests answered, by endpoint, model and status code.",
            ["endpoint", "model", "code"],
        )
        self.errors = r.counter(
            "prunekit_serve_errors_total",
            "HTTP requests answered with a 4xx or 5xx status.",
            ["endpoint", "model", "code"],
        )
        self.latency = r.histogram(
            "prunekit_serve_request_duration_seconds",
            "Time from request start to response, in seconds.",
            ["endpoint", "model"],
        )
        self.inference = r.histogram(
            "prunekit_serve_inference_duration_seconds",
            "Time of one inference call (one batch), in seconds.",
            ["model", "version"],
        )
        self.batch_size = r.histogram(
            "prunekit_serve_batch_size",
            "Rows per inference call after micro-batching.",
            ["model", "version"],
            buckets=BATCH_SIZE_BUCKETS,
        )
        self.reloads = r.counter(
            "prunekit_serve_model_reloads_total",
            "Model versions loaded, refused or unloaded.",
            ["model", "result"],
        )
        self.latest_version = r.gauge("prunekit_serve_model_latest_version", "Highest loaded version of each model.", ["model"])

    def record_request(self, endpoint: str, model: str, code: int, seconds: float) -> None:
        """Count one answered request and its latency."""
        self.requests.inc((endpoint, model, str(code)))
        if code >= 400:
            self.errors.inc((endpoint, model, str(code)))
        self.latency.observe((endpoint, model), seconds)

    def record_batch(self, model: str, version: int, rows: int, seconds: float) -> None:
        """Count one inference call of ``rows`` rows."""
        self.batch_size.observe((model, str(version)), rows)
        self.inference.observe((model, str(version)), seconds)
