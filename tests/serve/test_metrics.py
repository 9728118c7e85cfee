"""Prometheus text exposition written by hand."""

from __future__ import annotations

import pytest

from prunekit.serve.metrics import Histogram, MetricsRegistry, ServeMetrics


def test_counter_renders_help_type_and_labelled_value():
    registry = MetricsRegistry()
    counter = registry.counter("hits_total", "Hits.", ["path"])
    counter.inc(("/a",))
    counter.inc(("/a",), 2)
    assert registry.render() == '# HELP hits_total Hits.\n# TYPE hits_total counter\nhits_total{path="/a"} 3\n'


def test_histogram_buckets_are_cumulative_with_sum_and_count():
    histogram = Histogram("lat_seconds", "Latency.", ["m"], buckets=(0.1, 1.0))
    for value in (0.05, 0.5, 0.5, 5.0):
        histogram.observe(("x",), value)
    assert histogram.render()[2:] == [
        'lat_seconds_bucket{m="x",le="0.1"} 1',
        'lat_seconds_bucket{m="x",le="1"} 3',
        'lat_seconds_bucket{m="x",le="+Inf"} 4',
        'lat_seconds_sum{m="x"} 6.05',
        'lat_seconds_count{m="x"} 4',
    ]


def test_label_values_are_escaped():
    registry = MetricsRegistry()
    registry.counter("c_total", "C.", ["v"]).inc(('a"b\\c\n',))
    assert 'c_total{v="a\\"b\\\\c\\n"} 1' in registry.render()


def test_counter_refuses_to_decrease():
    with pytest.raises(ValueError, match="can only increase"):
        MetricsRegistry().counter("c_total", "C.").inc((), -1)


def test_wrong_label_count_is_refused():
    with pytest.raises(ValueError, match=r"takes labels \('a', 'b'\)"):
        MetricsRegistry().counter("c_total", "C.", ["a", "b"]).inc(("x",))


def test_serve_metrics_count_errors_only_for_4xx_and_5xx():
    metrics = ServeMetrics()
    metrics.record_request("predict", "mlp", 200, 0.01)
    metrics.record_request("predict", "mlp", 400, 0.01)
    assert metrics.requests.value(("predict", "mlp", "200")) == 1
    assert metrics.errors.value(("predict", "mlp", "200")) == 0
    assert metrics.errors.value(("predict", "mlp", "400")) == 1
    assert metrics.latency.count(("predict", "mlp")) == 2
