"""The server's metrics: prometheus_client series in a registry of the server's own."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from prunekit.serve.metrics import ServeMetrics


def _samples(metrics: ServeMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    families = text_string_to_metric_families(metrics.render().decode())
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for family in families for s in family.samples}


def test_errors_are_counted_only_for_4xx_and_5xx():
    metrics = ServeMetrics()
    metrics.record_request("predict", "mlp", 200, 0.01)
    metrics.record_request("predict", "mlp", 400, 0.01)
    labels = {"endpoint": "predict", "model": "mlp"}
    assert metrics.value("prunekit_serve_requests_total", **labels, code="200") == 1
    assert metrics.value("prunekit_serve_errors_total", **labels, code="200") == 0
    assert metrics.value("prunekit_serve_errors_total", **labels, code="400") == 1
    assert metrics.value("prunekit_serve_request_duration_seconds_count", **labels) == 2


def test_the_exposition_parses_and_histograms_are_cumulative():
    metrics = ServeMetrics()
    for rows in (1, 3, 3, 700):
        metrics.record_batch("mlp", 2, rows, 0.002)
    samples = _samples(metrics)
    bucket = "prunekit_serve_batch_size_bucket"
    le = {
        bound: samples[(bucket, (("le", bound), ("model", "mlp"), ("version", "2")))] for bound in ("1.0", "4.0", "512.0", "+Inf")
    }
    assert le == {"1.0": 1, "4.0": 3, "512.0": 3, "+Inf": 4}
    assert samples[("prunekit_serve_batch_size_sum", (("model", "mlp"), ("version", "2")))] == 707


def test_two_servers_keep_separate_series_and_a_removed_version_leaves():
    first, second = ServeMetrics(), ServeMetrics()
    first.record_reload("mlp", "loaded")
    first.set_latest_version("mlp", 3)
    assert first.value("prunekit_serve_model_reloads_total", model="mlp", result="loaded") == 1
    assert second.value("prunekit_serve_model_reloads_total", model="mlp", result="loaded") == 0
    assert first.value("prunekit_serve_model_latest_version", model="mlp") == 3
    first.set_latest_version("mlp", None)
    first.set_latest_version("never-loaded", None)  # no error
    assert ("prunekit_serve_model_latest_version", (("model", "mlp"),)) not in _samples(first)
