"""Worker pools started from an unguarded script fail at once with what to add, not with BrokenProcessPool."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1] / "src")


def run_script(tmp_path, body):
    script = tmp_path / "user_script.py"
    script.write_text(textwrap.dedent(body))
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)


def test_unguarded_script_gets_an_error_naming_the_guard_and_line(tmp_path):
    done = run_script(
        tmp_path,
        """\
        import math
        from prunekit.core.pool import run_jobs

        print(sorted(result for _, result, _ in run_jobs(math.sqrt, [4.0, 9.0], workers=2)))
        """,
    )
    assert done.returncode == 1
    assert "BrokenProcessPool" not in done.stderr
    assert 'put the script\'s code under `if __name__ == "__main__":` (line 4 is at its top level)' in done.stderr
    assert "user_script.py" in done.stderr


def test_guarded_script_runs_its_jobs_in_workers(tmp_path):
    done = run_script(
        tmp_path,
        """\
        import math
        from prunekit.core.pool import run_jobs

        if __name__ == "__main__":
            print(sorted(result for _, result, _ in run_jobs(math.sqrt, [4.0, 9.0], workers=2)))
        """,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[2.0, 3.0]"
