"""Optional bearer-token auth: the token comes from an environment variable or a file, never from
the command line (where ``ps`` would show it), and is compared in constant time.

Example::

    token = load_token(env_var="PRUNEKIT_SERVE_TOKEN")
    check_bearer("Bearer s3cret", token)    # None when it matches, else the reason it does not
"""

from __future__ import annotations

import hmac
import os
from pathlib import Path

from prunekit.errors import ConfigError

#: Environment variable read by ``prunekit serve --token-env`` when no name is given.
DEFAULT_TOKEN_ENV = "PRUNEKIT_SERVE_TOKEN"
_MIN_LENGTH = 16


def load_token(env_var: str | None = None, file: Path | str | None = None) -> bytes | None:
    """The token from ``env_var`` or ``file`` (surrounding whitespace stripped); ``None`` when
    neither is given, which turns auth off.

    Raises :class:`~prunekit.errors.ConfigError` when both are given, the variable is unset, the
    file is unreadable, or the token is shorter than 16 characters.

    Example::

        load_token(file="/run/secrets/prunekit_token")
    """
    if env_var and file:
        raise ConfigError("give the token in an environment variable or a file, not both")
    if env_var:
        value = os.environ.get(env_var)
        if value is None:
            raise ConfigError(f"environment variable {env_var} is not set; it should hold the bearer token")
        source = f"environment variable {env_var}"
    elif file:
        try:
            value = Path(file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read the token file {file}: {exc}") from exc
        source = f"token file {file}"
    else:
        return None
    token = value.strip()
    if len(token) < _MIN_LENGTH or any(ch.isspace() for ch in token):
        raise ConfigError(
            f"the token in {source} should be at least {_MIN_LENGTH} characters without spaces, "
            "e.g. from: python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    return token.encode()


def check_bearer(authorization: str | None, token: bytes) -> str | None:
    """``None`` when the ``Authorization`` header carries ``token``, else why the request is refused.

    Example::

        check_bearer(None, b"0123456789abcdef")   # 'missing bearer token: send the header ...'
    """
    if not authorization:
        return "missing bearer token: send the header 'Authorization: Bearer <token>'"
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return "malformed Authorization header: expected 'Bearer <token>'"
    if not hmac.compare_digest(credentials.strip().encode(), token):
        return "invalid bearer token"
    return None
