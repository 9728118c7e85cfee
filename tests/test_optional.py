"""`import prunekit` works without a framework; using a missing one names the extra to install."""

import subprocess
import sys

BLOCK = "import sys; sys.modules['torch'] = None; sys.modules['tensorflow'] = None; sys.modules['keras'] = None\n"


def run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK + code], capture_output=True, text=True, timeout=120)


def test_core_imports_and_works_without_any_framework():
    result = run("import prunekit, numpy as np\nprint(prunekit.topk_mask(np.arange(4.0), 0.5).tolist())")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[False, False, True, True]"


def test_torch_backend_without_torch_names_the_extra():
    result = run("import prunekit\ntry:\n    import prunekit.torch\nexcept prunekit.MissingDependencyError as e:\n    print(e)\n")
    assert result.returncode == 0, result.stderr
    assert "pip install 'prunekit[torch]'" in result.stdout
