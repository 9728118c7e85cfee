"""TensorFlow Serving's JSON formats: decoding with validation, and encoding of outputs."""

from __future__ import annotations

import numpy as np
import pytest

from prunekit.serve.codec import InvalidRequestError, decode_request, dump_json, encode_response, parse_json
from prunekit.serve.runtimes import TensorSpec

X = TensorSpec("x", (None, 4), np.dtype("float32"))
IDS = TensorSpec("ids", (None, 2), np.dtype("int64"))
SMALL = TensorSpec("q", (None, 2), np.dtype("int8"))
FLAG = TensorSpec("flag", (None,), np.dtype("bool"))
LABEL = "model 'm' version 1"


def decode(body, specs=(X,), **kwargs):
    return decode_request(body, tuple(specs), LABEL, **kwargs)


def error_of(body, specs=(X,), **kwargs) -> str:
    with pytest.raises(InvalidRequestError) as info:
        decode(body, specs, **kwargs)
    return str(info.value)


def test_row_format_stacks_instances_of_a_single_input():
    request = decode({"instances": [[1, 2, 3, 4], [5, 6, 7, 8]]})
    assert request.row_format and request.rows == 2
    np.testing.assert_array_equal(request.feeds["x"], np.arange(1, 9, dtype=np.float32).reshape(2, 4))
    assert request.feeds["x"].dtype == np.float32


def test_row_format_accepts_named_instances_for_a_single_input():
    request = decode({"instances": [{"x": [1, 2, 3, 4]}]})
    assert request.feeds["x"].shape == (1, 4)


def test_row_format_with_several_inputs_takes_one_object_per_row():
    request = decode({"instances": [{"x": [1, 2, 3, 4], "ids": [1, 2]}, {"x": [0, 0, 0, 0], "ids": [3, 4]}]}, (X, IDS))
    np.testing.assert_array_equal(request.feeds["ids"], np.array([[1, 2], [3, 4]], dtype=np.int64))
    assert request.feeds["ids"].dtype == np.int64 and request.rows == 2


def test_columnar_format_takes_a_bare_value_for_a_single_input():
    request = decode({"inputs": [[1, 2, 3, 4]]})
    assert not request.row_format and request.feeds["x"].shape == (1, 4)


def test_columnar_format_takes_named_values_for_several_inputs():
    request = decode({"inputs": {"x": [[1, 2, 3, 4]] * 3, "ids": [[1, 2]] * 3}}, (X, IDS))
    assert request.rows == 3 and request.feeds["ids"].shape == (3, 2)


def test_rejects_a_body_with_both_instances_and_inputs():
    assert "exactly one of 'instances'" in error_of({"instances": [[1, 2, 3, 4]], "inputs": [[1, 2, 3, 4]]})


def test_rejects_an_unknown_top_level_field():
    assert "unknown field(s) ['instance']" in error_of({"instance": [[1, 2, 3, 4]]})


def test_rejects_a_body_that_is_not_an_object():
    assert "must be a JSON object" in error_of([[1, 2, 3, 4]])


def test_rejects_an_empty_instances_list():
    assert "non-empty list" in error_of({"instances": []})


def test_rejects_a_wrong_shape_naming_the_expected_one():
    message = error_of({"instances": [[1, 2, 3]]})
    assert message.startswith("model 'm' version 1: input 'x': expected shape [-1, 4]")
    assert message.endswith("got [1, 3]")


def test_rejects_ragged_rows():
    assert "nested lists of different lengths" in error_of({"instances": [[1, 2, 3, 4], [1, 2]]})


def test_rejects_strings_for_a_float_input():
    assert "expected float32 values, got strings" in error_of({"instances": [[1, 2, 3, "4"]]})


def test_rejects_null_for_a_float_input():
    assert "values that are not numbers" in error_of({"instances": [[1, 2, 3, None]]})


def test_rejects_booleans_for_a_float_input():
    assert "got booleans" in error_of({"instances": [[True, False, True, False]]})


def test_rejects_a_non_integer_for_an_int_input():
    message = error_of({"instances": [{"x": [1, 2, 3, 4], "ids": [1, 2.5]}]}, (X, IDS))
    assert "input 'ids': expected int64 values, got the non-integer 2.5" in message


def test_accepts_integral_floats_for_an_int_input():
    request = decode({"instances": [{"x": [1, 2, 3, 4], "ids": [1.0, 2.0]}]}, (X, IDS))
    assert request.feeds["ids"].dtype == np.int64


def test_rejects_integers_outside_the_input_dtype_range():
    assert "must lie in [-128, 127] for int8" in error_of({"instances": [[1, 300]]}, (SMALL,))


def test_bool_input_takes_true_and_false_only():
    assert decode({"instances": [True, False]}, (FLAG,)).feeds["flag"].dtype == np.bool_
    assert "expected bool values" in error_of({"instances": [1, 0]}, (FLAG,))


def test_rejects_nan_by_default():
    message = error_of(parse_json(b'{"instances": [[1, 2, NaN, 4]]}'))
    assert "NaN or infinity at index [0, 2]" in message and "--allow-nonfinite" in message


def test_rejects_values_that_overflow_float32():
    assert "NaN or infinity" in error_of({"instances": [[1e39, 0, 0, 0]]})


def test_accepts_nan_when_allowed():
    request = decode(parse_json(b'{"instances": [[1, 2, NaN, Infinity]]}'), allow_nonfinite=True)
    assert np.isnan(request.feeds["x"][0, 2]) and np.isinf(request.feeds["x"][0, 3])


def test_rejects_a_missing_input_naming_the_model_inputs():
    message = error_of({"instances": [{"x": [1, 2, 3, 4]}]}, (X, IDS))
    assert "instances[0]: missing ['ids']; the model's inputs are ['x', 'ids']" in message


def test_rejects_an_unknown_input_name():
    assert "unknown ['y']" in error_of({"inputs": {"y": [[1, 2, 3, 4]]}})


def test_rejects_columnar_inputs_with_different_batch_sizes():
    message = error_of({"inputs": {"x": [[1, 2, 3, 4]] * 2, "ids": [[1, 2]] * 3}}, (X, IDS))
    assert "same batch size, got {'x': 2, 'ids': 3}" in message


def test_rejects_an_unknown_signature_name():
    assert "unknown signature_name 'other'" in error_of({"signature_name": "other", "instances": [[1, 2, 3, 4]]})


def test_parse_json_names_the_syntax_error():
    with pytest.raises(InvalidRequestError, match="malformed JSON body: Expecting"):
        parse_json(b'{"instances": [[1, 2,')


def test_row_response_with_one_output_is_a_list_of_rows():
    y = TensorSpec("y", (None, 2), np.dtype("float32"))
    payload = encode_response({"y": np.array([[1.5, 2.0], [3.0, 4.0]], np.float32)}, (y,), row_format=True)
    assert payload == {"predictions": [[1.5, 2.0], [3.0, 4.0]]}


def test_row_response_with_several_outputs_is_one_object_per_row():
    a, b = TensorSpec("a", (None, 1), np.dtype("float32")), TensorSpec("b", (None,), np.dtype("int64"))
    payload = encode_response({"a": np.array([[0.5], [1.0]]), "b": np.array([7, 8])}, (a, b), row_format=True)
    assert payload == {"predictions": [{"a": [0.5], "b": 7}, {"a": [1.0], "b": 8}]}


def test_columnar_response_names_outputs_only_when_there_are_several():
    a, b = TensorSpec("a", (None,), np.dtype("int64")), TensorSpec("b", (None,), np.dtype("int64"))
    assert encode_response({"a": np.array([1])}, (a,), row_format=False) == {"outputs": [1]}
    assert encode_response({"a": np.array([1]), "b": np.array([2])}, (a, b), row_format=False) == {
        "outputs": {"a": [1], "b": [2]}
    }


def test_float32_outputs_survive_the_json_round_trip_exactly():
    values = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    y = TensorSpec("y", (None, 3), np.dtype("float32"))
    decoded = parse_json(dump_json(encode_response({"y": values}, (y,), row_format=True)))
    np.testing.assert_array_equal(np.asarray(decoded["predictions"], dtype=np.float32), values)
