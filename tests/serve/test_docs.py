"""docs/serving.md: its setup snippet, serve commands and curl examples work as written."""

from __future__ import annotations

import shlex

import pytest

from prunekit.cli import build_parser
from tests.serve.doc_examples import DOC, blocks, commands, run_examples
from tests.serve.live import LiveServer


@pytest.fixture(scope="module")
def docs_server(doc_workdir):
    with LiveServer(doc_workdir / "models", "--poll-interval", "0") as server:
        yield server, doc_workdir


def test_the_guide_has_runnable_examples():
    assert len(blocks("setup")) == 1
    assert len(commands("plain")) >= 8 and len(commands("auth")) == 2


def test_plain_curl_examples_print_what_the_guide_shows(docs_server):
    server, cwd = docs_server
    assert run_examples("plain", server.url, cwd) == []


def test_documented_serve_commands_parse():
    lines = [line[2:] for line in DOC.read_text().splitlines() if line.startswith("$ prunekit serve ") and "--help" not in line]
    assert len(lines) >= 2
    for line in lines:
        argv = shlex.split(line)[1:]
        args = build_parser(argv).parse_args(argv)
        assert args.command == "serve"
