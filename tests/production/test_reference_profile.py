"""Reference profiles and the drift scores computed from them, checked by hand computations."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from prunekit.artifacts.drift import ks, psi
from prunekit.artifacts.profile import (
    ReferenceProfile,
    bin_counts,
    build_profile,
    choose_layout,
    class_scores,
    feature_matrix,
    profile_tensor,
)
from prunekit.errors import ConfigError, CorruptFileError


def test_psi_equals_the_hand_computation_with_half_count_smoothing():
    r = np.array([50.5, 50.5]) / 101
    w = np.array([90.5, 10.5]) / 101
    expected = float(((w - r) * np.log(w / r)).sum())
    assert psi(np.array([[50, 50]]), np.array([[90, 10]]))[0] == pytest.approx(expected)
    assert psi(np.array([[700, 300, 0]]), np.array([[7000, 3000, 0]]))[0] < 0.01  # same shares, more rows: no drift
    assert psi(np.array([[10, 10]]), np.array([[10, 10]]))[0] == 0.0


def test_ks_is_the_largest_gap_between_cumulative_shares():
    assert ks(np.array([[50, 50]]), np.array([[90, 10]]))[0] == pytest.approx(0.4)
    assert ks(np.array([[1, 0, 0]]), np.array([[0, 0, 1]]))[0] == pytest.approx(1.0)
    assert ks(np.array([[2, 2, 4]]), np.array([[1, 1, 2]]))[0] == pytest.approx(0.0)


def test_padding_bins_are_left_out_of_both_scores():
    valid = np.array([[True, True, False]])
    padded = psi(np.array([[50, 50, 0]]), np.array([[90, 10, 0]]), valid)
    assert padded[0] == pytest.approx(psi(np.array([[50, 50]]), np.array([[90, 10]]))[0])
    assert ks(np.array([[50, 50, 0]]), np.array([[90, 10, 0]]), valid)[0] == pytest.approx(0.4)


def test_bin_counts_put_a_value_on_an_edge_in_the_lower_bin():
    counts = bin_counts(np.array([[0.0, 5.0], [0.5, 5.0], [1.0, 9.0], [2.0, -1.0]]), np.array([[0.5, 1.5], [5.0, np.inf]]))
    assert counts.tolist() == [[2, 1, 1], [3, 1, 0]]


def test_layouts_follow_dtype_and_sample_size():
    assert choose_layout(np.dtype("float32"), (1, 8, 8)) == "elements"
    assert choose_layout(np.dtype("float32"), (3, 32, 32)) == "channels"
    assert choose_layout(np.dtype("int64"), (128,)) == "pooled"
    assert feature_matrix(np.zeros((5, 3, 4, 4)), "channels", 1).shape == (80, 3)
    assert feature_matrix(np.zeros((5, 4, 4, 3)), "channels", -1).shape == (80, 3)
    assert feature_matrix(np.zeros((5, 7), np.int64), "pooled", None).shape == (35, 1)


def test_feature_statistics_equal_numpy():
    x = np.random.default_rng(0).normal(size=(500, 3)).astype(np.float32)
    profile = profile_tensor("x", x)
    assert profile.layout == "elements" and [f.name for f in profile.features] == ["x[0]", "x[1]", "x[2]"]
    for column, feature in zip(x.T.astype(np.float64), profile.features):
        assert feature.mean == pytest.approx(column.mean()) and feature.std == pytest.approx(column.std())
        assert (feature.min, feature.max) == (column.min(), column.max())
        assert feature.quantiles[3] == pytest.approx(np.median(column))
        assert feature.edges == tuple(np.unique(np.quantile(column, [i / 10 for i in range(1, 10)])))
        assert feature.counts == (50,) * 10  # decile edges: equal reference mass per bin
        assert sum(feature.counts) == feature.count == 500


def test_channel_features_pool_every_position_of_a_channel():
    x = np.random.default_rng(1).normal(size=(10, 3, 20, 20)).astype(np.float32)
    x[:, 2] += 5.0
    profile = profile_tensor("image", x, channel_axis=1)
    assert profile.layout == "channels" and len(profile.features) == 3
    assert profile.features[2].name == "image[channel 2]" and profile.features[2].count == 10 * 400
    assert profile.features[2].mean == pytest.approx(float(x[:, 2].astype(np.float64).mean()))


def test_class_output_profile_counts_predictions_and_confidence():
    logits = np.array([[2.0, 0.0], [0.0, 3.0], [0.0, 1.0]], np.float32)
    profile = build_profile({"x": np.zeros((3, 2), np.float32)}, {"y": logits}, labels=np.array([0, 1, 0]))
    (output,) = profile.outputs
    top = [1 / (1 + math.exp(-2)), 1 / (1 + math.exp(-3)), 1 / (1 + math.exp(-1))]  # softmax of two logits
    bins = [min(int(p * 10 - 1e-12), 9) for p in top]
    assert output.kind == "classes" and output.softmax and output.class_counts == (1, 2)
    assert output.confidence_counts == tuple(bins.count(b) for b in range(10))
    assert profile.accuracy == pytest.approx(2 / 3)
    predicted, confidence = class_scores(np.array([[0.3, 0.7]]), softmax=False)
    assert predicted.tolist() == [1] and confidence.tolist() == [0.7]


def test_probability_outputs_are_not_softmaxed_again():
    probs = np.array([[0.95, 0.05], [0.25, 0.75]], np.float32)
    (output,) = build_profile({"x": np.zeros((2, 1), np.float32)}, {"p": probs}).outputs
    assert not output.softmax and output.confidence_counts == (0, 0, 0, 0, 0, 0, 0, 1, 0, 1)


def test_profile_round_trips_through_its_json_file(tmp_path):
    x = np.random.default_rng(2).normal(size=(50, 4)).astype(np.float32)
    ids = np.random.default_rng(3).integers(0, 100, size=(50, 6))
    profile = build_profile(
        {"x": x, "ids": ids}, {"y": x @ np.ones((4, 3), np.float32)}, labels=np.zeros(50, int), source="m.onnx"
    )
    path = profile.save(tmp_path / "profile.json")
    assert ReferenceProfile.load(path) == profile
    assert json.loads(path.read_text())["inputs"][1]["layout"] == "pooled"


def test_a_malformed_profile_is_a_corrupt_file_error_naming_the_file_and_field(tmp_path):
    profile = build_profile({"x": np.arange(20, dtype=np.float32)[:, None]}, {"y": np.zeros((20, 2), np.float32)})
    data = profile.to_json()
    data["inputs"][0]["features"][0]["histogram"]["counts"] = [1, 2]
    bad = tmp_path / "profile.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(CorruptFileError, match=r"profile.json.*inputs\[0\]\.features\[0\]\.histogram"):
        ReferenceProfile.load(bad)
    bad.write_text(json.dumps({**profile.to_json(), "version": 99}))
    with pytest.raises(CorruptFileError, match="'version' is 99"):
        ReferenceProfile.load(bad)
    bad.write_text("{not json")
    with pytest.raises(CorruptFileError, match="cannot read the reference profile"):
        ReferenceProfile.load(bad)


def test_bad_reference_data_is_refused_before_anything_is_written():
    with pytest.raises(ConfigError, match="same number of rows"):
        build_profile({"x": np.zeros((3, 2))}, {"y": np.zeros((4, 2))})
    with pytest.raises(ConfigError, match="NaN or Inf"):
        profile_tensor("x", np.array([[1.0], [np.nan]]))
    with pytest.raises(ConfigError, match="no output holds class scores"):
        build_profile({"x": np.zeros((3, 2))}, {"y": np.zeros((3, 1))}, labels=np.zeros(3))
