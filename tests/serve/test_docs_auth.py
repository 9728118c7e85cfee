"""docs/serving.md: the auth examples work as written against a server started with --token-env."""

from __future__ import annotations

import os

from tests.serve.doc_examples import run_examples
from tests.serve.live import LiveServer

TOKEN = "docs-example-token-0123456789abcdef"


def test_auth_curl_examples_print_what_the_guide_shows(doc_workdir):
    env = {**os.environ, "PRUNEKIT_SERVE_TOKEN": TOKEN}
    served = LiveServer(doc_workdir / "models", "--token-env", "--poll-interval", "0", env={"PRUNEKIT_SERVE_TOKEN": TOKEN})
    with served as server:
        assert run_examples("auth", server.url, doc_workdir, env=env) == []
