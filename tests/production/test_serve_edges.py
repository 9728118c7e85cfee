"""Server edge cases: exact integer ranges, /healthz discretion, no open non-loopback bind."""

from __future__ import annotations

import numpy as np
import pytest

from prunekit.errors import ConfigError
from prunekit.serve.codec import InvalidRequestError, decode_request
from prunekit.serve.config import ServeConfig, is_loopback
from prunekit.serve.runtimes import TensorSpec

IDS = TensorSpec("ids", (None, 2), np.dtype("int64"))


def _decode(instances):
    return decode_request({"instances": instances}, (IDS,), "model 'm' version 1")


def test_two_to_the_63_beside_small_ints_is_refused_not_wrapped():
    with pytest.raises(
        InvalidRequestError, match=r"value 9223372036854775808 lies outside \[-9223372036854775808, 9223372036854775807\]"
    ):
        _decode([[2**63, 1], [2, 3]])


def test_int64_extremes_with_promoted_floats_keep_their_exact_values():
    request = _decode([[2**63 - 1, 1.0], [-(2**63), 3]])
    assert request.feeds["ids"].tolist() == [[2**63 - 1, 1], [-(2**63), 3]]
    assert request.feeds["ids"].dtype == np.int64


def test_a_float_rounding_to_two_to_the_63_is_refused():
    with pytest.raises(InvalidRequestError, match="lies outside"):
        _decode([[9.3e18, 1.0]])


def test_non_loopback_without_a_token_is_refused_unless_insecure(tmp_path):
    with pytest.raises(ConfigError, match=r"host '0.0.0.0' is reachable from other machines .* --insecure"):
        ServeConfig(model_dir=tmp_path, host="0.0.0.0")
    assert ServeConfig(model_dir=tmp_path, host="0.0.0.0", insecure=True).insecure
    assert ServeConfig(model_dir=tmp_path, host="0.0.0.0", token=b"0123456789abcdef0123").host == "0.0.0.0"
    assert ServeConfig(model_dir=tmp_path, host="127.0.0.2").host == "127.0.0.2"


def test_loopback_addresses():
    assert [is_loopback(h) for h in ("localhost", "127.0.0.1", "::1", "[::1]", "0.0.0.0", "10.0.0.1", "example.org")] == [
        True, True, True, True, False, False, False,
    ]  # fmt: skip


def test_cli_refuses_a_public_bind_without_token(tmp_path, capsys):
    from prunekit.cli import main

    (tmp_path / "models").mkdir()
    assert main(["serve", str(tmp_path / "models"), "--host", "0.0.0.0"]) == 2
    assert "--insecure" in capsys.readouterr().err
