"""The server's Prometheus metrics, kept in a ``prometheus_client`` registry of its own.

One registry per server (not the process-wide default), so two servers in one process, or a
server inside a user's application, never share or clash over series. ``/metrics`` renders it
with ``prometheus_client.generate_latest``; the drift collector registers into the same registry.

Example::

    metrics = ServeMetrics()
    metrics.record_request("predict", "mlp", 200, 0.004)
    metrics.value("prunekit_serve_requests_total", endpoint="predict", model="mlp", code="200")  # 1.0
"""

from __future__ import annotations

from typing import Any

from prunekit.core.optional import require

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class ServeMetrics:
    """Requests, errors, latency, inference time, batch sizes and reloads of one server.

    Example::

        metrics = ServeMetrics()
        metrics.record_batch("mlp", 1, rows=8, seconds=0.002)
        text = metrics.render()   # the text exposition format
    """

    def __init__(self) -> None:
        client = require("prometheus_client", "serve")
        self.registry = client.CollectorRegistry(auto_describe=False)
        r = self.registry
        self.requests = client.Counter(
            "prunekit_serve_requests",
            "HTTP requests answered, by endpoint, model and status code.",
            ["endpoint", "model", "code"],
            registry=r,
        )
        self.errors = client.Counter(
            "prunekit_serve_errors",
            "HTTP requests answered with a 4xx or 5xx status.",
            ["endpoint", "model", "code"],
            registry=r,
        )
        self.latency = client.Histogram(
            "prunekit_serve_request_duration_seconds",
            "Time from request start to response, in seconds.",
            ["endpoint", "model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference = client.Histogram(
            "prunekit_serve_inference_duration_seconds",
            "Time of one inference call (one batch), in seconds.",
            ["model", "version"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = client.Histogram(
            "prunekit_serve_batch_size",
            "Rows per inference call after micro-batching.",
            ["model", "version"],
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.reloads = client.Counter(
            "prunekit_serve_model_reloads", "Model versions loaded, refused or unloaded.", ["model", "result"], registry=r
        )
        self.latest_version = client.Gauge(
            "prunekit_serve_model_latest_version", "Highest loaded version of each model.", ["model"], registry=r
        )

    def record_request(self, endpoint: str, model: str, code: int, seconds: float) -> None:
        """Count one answered request and its latency."""
        self.requests.labels(endpoint, model, str(code)).inc()
        if code >= 400:
            self.errors.labels(endpoint, model, str(code)).inc()
        self.latency.labels(endpoint, model).observe(seconds)

    def record_batch(self, model: str, version: int, rows: int, seconds: float) -> None:
        """Count one inference call of ``rows`` rows."""
        self.batch_size.labels(model, str(version)).observe(rows)
        self.inference.labels(model, str(version)).observe(seconds)

    def record_reload(self, model: str, result: str) -> None:
        """Count one version ``loaded``, ``refused`` or ``unloaded``."""
        self.reloads.labels(model, result).inc()

    def set_latest_version(self, model: str, version: int | None) -> None:
        """The highest loaded version of ``model`` (``None``: it has none left)."""
        if version is None:
            try:
                self.latest_version.remove(model)
            except KeyError:
                pass  # never had one
        else:
            self.latest_version.labels(model).set(version)

    def value(self, name: str, **labels: str) -> float:
        """One sample's current value (0 when the series does not exist yet), e.g. ``name="..._total"``."""
        value = self.registry.get_sample_value(name, labels)
        return 0.0 if value is None else float(value)

    def register(self, collector: Any) -> None:
        """Add a collector (such as the drift monitors') to this server's registry."""
        self.registry.register(collector)

    def render(self) -> bytes:
        """Every metric in the text exposition format."""
        return bytes(require("prometheus_client", "serve").generate_latest(self.registry))

    @property
    def content_type(self) -> str:
        """The media type of :meth:`render`'s output."""
        return str(require("prometheus_client", "serve").CONTENT_TYPE_LATEST)
