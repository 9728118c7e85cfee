"""Bearer tokens from an environment variable or a file, checked in constant time."""

from __future__ import annotations

import pytest

from prunekit.errors import ConfigError
from prunekit.serve.auth import check_bearer, load_token

TOKEN = "k3y-0123456789abcdefXYZ"


def test_no_source_means_no_auth():
    assert load_token() is None


def test_token_from_an_environment_variable(monkeypatch):
    monkeypatch.setenv("MY_TOKEN", TOKEN)
    assert load_token(env_var="MY_TOKEN") == TOKEN.encode()


def test_token_file_is_stripped_of_its_trailing_newline(tmp_path):
    (tmp_path / "token").write_text(TOKEN + "\n")
    assert load_token(file=tmp_path / "token") == TOKEN.encode()


def test_unset_environment_variable_is_an_error(monkeypatch):
    monkeypatch.delenv("MY_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="environment variable MY_TOKEN is not set"):
        load_token(env_var="MY_TOKEN")


def test_missing_token_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the token file"):
        load_token(file=tmp_path / "absent")


def test_short_token_is_refused(monkeypatch):
    monkeypatch.setenv("MY_TOKEN", "short")
    with pytest.raises(ConfigError, match="at least 16 characters"):
        load_token(env_var="MY_TOKEN")


def test_both_sources_at_once_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="not both"):
        load_token(env_var="X", file=tmp_path / "t")


def test_matching_bearer_token_passes():
    assert check_bearer(f"Bearer {TOKEN}", TOKEN.encode()) is None


def test_wrong_token_is_refused():
    assert check_bearer("Bearer " + "x" * len(TOKEN), TOKEN.encode()) == "invalid bearer token"


def test_missing_header_is_refused():
    assert check_bearer(None, TOKEN.encode()).startswith("missing bearer token")


def test_other_schemes_are_refused():
    assert check_bearer(f"Basic {TOKEN}", TOKEN.encode()).startswith("malformed Authorization header")
