"""The suite's warnings policy (pyproject.toml ``filterwarnings``): a new warning fails, a listed third-party one passes.

Each test runs a tiny pytest in a subprocess under the repository's own configuration, on a test file written
under ``tmp_path`` (outside ``tests/``, so no conftest of ours changes the filters).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run_pytest_on(tmp_path: Path, body: str) -> subprocess.CompletedProcess[str]:
    test_file = tmp_path / "test_policy_probe.py"
    test_file.write_text(textwrap.dedent(body), encoding="utf-8")
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-c", str(ROOT / "pyproject.toml")]
    command += ["--rootdir", str(ROOT), str(test_file)]
    return subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)


def test_a_new_warning_fails_the_test(tmp_path):
    done = _run_pytest_on(
        tmp_path,
        """
        import warnings

        def test_emits_a_new_warning():
            warnings.warn("a warning nobody has seen before", UserWarning)
        """,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "1 failed" in done.stdout
    assert "UserWarning: a warning nobody has seen before" in done.stdout


def test_a_listed_third_party_warning_passes_also_when_pytest_warns_re_emits_it(tmp_path):
    done = _run_pytest_on(
        tmp_path,
        """
        import warnings

        import pytest

        MESSAGE = "    Warning: tf.lite.Interpreter is deprecated and is scheduled for deletion in TF 2.20."
        FILE = "/venv/lib/python3.11/site-packages/tensorflow/lite/python/interpreter.py"

        def test_emits_tensorflows_interpreter_deprecation():
            warnings.warn_explicit(MESSAGE, UserWarning, FILE, 457, module="tensorflow.lite.python.interpreter")

        def test_pytest_warns_re_emits_it_by_file_path():
            with pytest.warns(DeprecationWarning, match="ours"):
                warnings.warn("ours", DeprecationWarning)
                warnings.warn_explicit(MESSAGE, UserWarning, FILE, 457, module="tensorflow.lite.python.interpreter")
        """,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout
    assert "warning" not in done.stdout.lower()


def test_the_same_message_from_our_code_still_fails(tmp_path):
    done = _run_pytest_on(
        tmp_path,
        """
        import warnings

        def test_emits_tensorflows_message_itself():
            warnings.warn("    Warning: tf.lite.Interpreter is deprecated and is scheduled for deletion", UserWarning)
        """,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "1 failed" in done.stdout


def test_an_exception_in_a_background_thread_fails_the_test(tmp_path):
    done = _run_pytest_on(
        tmp_path,
        """
        import threading

        def test_starts_a_thread_that_raises():
            def work():
                raise RuntimeError("lost in a worker thread")

            worker = threading.Thread(target=work)
            worker.start()
            worker.join()
        """,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "PytestUnhandledThreadExceptionWarning" in done.stdout
