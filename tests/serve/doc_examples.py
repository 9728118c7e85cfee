"""The runnable examples of docs/serving.md: blocks after a ``<!-- doc-test: TAG -->`` comment.

In a ``console`` block, each ``$ command`` line is followed by its exact output, or by nothing
when only its exit status is checked.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "serving.md"
DOC_URL = "http://127.0.0.1:8501"
_BLOCK = re.compile(r"<!-- doc-test: (\w+) -->\n```(\w+)\n(.*?)```", re.DOTALL)


def blocks(tag: str) -> list[str]:
    """The bodies of the code blocks tagged ``tag``, in document order."""
    return [body for found_tag, _, body in _BLOCK.findall(DOC.read_text()) if found_tag == tag]


def commands(tag: str) -> list[tuple[str, str | None]]:
    """``(command, expected output or None)`` for every ``$`` line of the blocks tagged ``tag``."""
    found: list[tuple[str, list[str]]] = []
    for body in blocks(tag):
        for line in body.splitlines():
            if line.startswith("$ "):
                found.append((line[2:], []))
            elif found:
                found[-1][1].append(line)
    return [(command, "\n".join(output) if output else None) for command, output in found]


def run_examples(tag: str, url: str, cwd: Path, env: dict[str, str] | None = None) -> list[str]:
    """Run the tagged commands against ``url``; return one message per example that misbehaved."""
    failures = []
    for command, expected in commands(tag):
        done = subprocess.run(
            ["bash", "-c", command.replace(DOC_URL, url)], cwd=cwd, env=env, capture_output=True, text=True, timeout=30
        )
        if done.returncode != 0:
            failures.append(f"{command}\n  exited {done.returncode}: {done.stderr.strip()}")
        elif expected is not None and done.stdout.strip() != expected:
            failures.append(f"{command}\n  documented: {expected}\n  got:        {done.stdout.strip()}")
    return failures


def make_doc_models(cwd: Path, python: str) -> Path:
    """Run the documentation's setup snippet in ``cwd``; return the model directory it made."""
    for code in blocks("setup"):
        subprocess.run([python, "-c", code], cwd=cwd, check=True, capture_output=True, timeout=120)
    return cwd / "models"
