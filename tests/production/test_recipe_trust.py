"""Recipes are shared files: they may only import callables from trusted modules, and --check imports nothing else."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from prunekit.core.imports import check_trusted, resolve_trusted_import, trusted_modules
from prunekit.errors import ConfigError
from prunekit.recipes.config import parse_recipe
from prunekit.recipes.validation import RecipeError


def _recipe(factory: str, loader: str = "prunekit.data:load_digits") -> dict:
    return {"name": "x", "model": {"factory": factory, "input_shape": [1, 8, 8]}, "data": {"loader": loader}}


def test_a_recipe_naming_subprocess_is_refused_with_how_to_trust():
    with pytest.raises(RecipeError) as caught:
        parse_recipe(_recipe("prunekit.torch:DigitsCNN", loader="subprocess:getoutput"))
    assert [p for p, _ in caught.value.errors] == ["data.loader"]
    assert "module 'subprocess' is not trusted" in str(caught.value)
    assert "--trust-module subprocess" in str(caught.value)


def test_an_untrusted_module_is_not_even_imported(tmp_path, monkeypatch):
    (tmp_path / "evil_recipe_mod.py").write_text("import pathlib\npathlib.Path(__file__).with_name('RAN').touch()\nf = print\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(RecipeError, match="'evil_recipe_mod' is not trusted"):
        parse_recipe(_recipe("evil_recipe_mod:f"))
    assert not (tmp_path / "RAN").exists()
    assert "evil_recipe_mod" not in sys.modules


def test_a_trusted_module_is_allowed_and_resolved(tmp_path, monkeypatch):
    (tmp_path / "mymodels_trust.py").write_text("from prunekit.torch import DigitsCNN\ndef build():\n    return DigitsCNN()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    recipe = parse_recipe(_recipe("mymodels_trust:build"), trust_modules=["mymodels_trust"])
    assert recipe.trusted == ("prunekit", "mymodels_trust")
    assert recipe.resolve("mymodels_trust:build")().__class__.__name__ == "DigitsCNN"


def test_the_environment_variable_trusts_modules(monkeypatch):
    monkeypatch.setenv("PRUNEKIT_TRUST_MODULES", "numpy, json")
    assert trusted_modules() == ("prunekit", "numpy", "json")


def test_a_recipe_cannot_trust_modules_itself():
    data = _recipe("prunekit.torch:DigitsCNN")
    data["trusted"] = ["subprocess"]
    with pytest.raises(RecipeError, match="trusted: unknown field"):
        parse_recipe(data)


@pytest.mark.parametrize(
    "spec, reason",
    [
        ("prunekit.recipes.config:os.system", "defined in 'posix'"),
        ("prunekit.torch:DigitsCNN.__init__", "private or special attribute '__init__'"),
        ("prunekit_evil:run", "'prunekit_evil' is not trusted"),
    ],
)
def test_escapes_through_a_trusted_module_are_refused(spec, reason):
    with pytest.raises(ConfigError, match=reason):
        resolve_trusted_import(spec, ("prunekit",))


def test_check_trusted_imports_nothing():
    assert check_trusted("os:system", ("prunekit",)).startswith("module 'os' is not trusted")
    assert check_trusted("prunekit.torch:DigitsCNN", ("prunekit",)) is None


def test_run_check_reports_a_malicious_recipe_invalid_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        textwrap.dedent(
            f"""
            name: evil
            model: {{factory: "prunekit.torch:DigitsCNN", input_shape: [1, 8, 8]}}
            data: {{loader: "subprocess:getoutput", kwargs: {{cmd: "touch {marker}"}}}}
            """
        )
    )
    done = subprocess.run(
        [sys.executable, "-m", "prunekit.cli", "run", str(recipe), "--check"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode != 0
    assert "data.loader: module 'subprocess' is not trusted" in done.stderr + done.stdout
    assert not marker.exists()
