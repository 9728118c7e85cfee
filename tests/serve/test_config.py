"""Serve settings and the CLI's argument parsing."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from prunekit.cli import build_parser
from prunekit.commands.serve import build_config, parse_size
from prunekit.errors import ConfigError
from prunekit.serve import ServeConfig


def test_every_invalid_setting_is_reported_at_once():
    with pytest.raises(ConfigError) as info:
        ServeConfig(model_dir=Path("m"), port=70000, max_batch_size=0, batch_timeout_ms=-1, log_level="loud")
    message = str(info.value)
    for fragment in (
        "port should be <= 65535, got 70000",
        "max_batch_size should be >= 1, got 0",
        "batch_timeout_ms should be >= 0.0, got -1",
        "log_level should be one of",
    ):
        assert fragment in message


def test_summary_never_contains_the_token():
    config = ServeConfig(model_dir=Path("m"), token=b"0123456789abcdefghij")
    assert config.summary()["auth"] is True and "token" not in config.summary()
    assert "0123456789abcdefghij" not in repr(config)


@pytest.mark.parametrize("text, size", [("1048576", 1048576), ("512K", 512 * 1024), ("8MiB", 8 * 1024**2), ("1g", 1024**3)])
def test_parse_size_reads_binary_units(text, size):
    assert parse_size(text) == size


def test_parse_size_refuses_other_text():
    with pytest.raises(argparse.ArgumentTypeError, match="expected a size such as"):
        parse_size("lots")


def test_cli_arguments_become_the_config(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNEKIT_SERVE_TOKEN", "t" * 20)
    argv = [
        "serve",
        str(tmp_path),
        "--port",
        "0",
        "--keep-versions",
        "all",
        "--no-batching",
        "--token-env",
        "--max-body-bytes",
        "1M",
        "--batch-timeout-ms",
        "0",
    ]
    config = build_config(build_parser(argv).parse_args(argv))
    assert (config.port, config.keep_versions, config.batching, config.max_body_bytes) == (0, 0, False, 1024**2)
    assert config.token == b"t" * 20 and config.batch_timeout_ms == 0.0


def test_cli_refuses_a_model_dir_that_is_not_a_directory(tmp_path):
    argv = ["serve", str(tmp_path / "absent")]
    with pytest.raises(ConfigError, match="is not a directory"):
        build_config(build_parser(argv).parse_args(argv))
