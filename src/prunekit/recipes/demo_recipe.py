"""The recipe a ``prunekit demo`` invocation runs: the built-in demo recipe with that demo's method,
amounts, seed, recovery and epochs filled in (comments kept, so the printed file still teaches)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from prunekit.methods import FRAMEWORKS, default_method, get_method
from prunekit.recipes.config import builtin_recipe_text

QUICK_EPOCHS = {"train": 4, "prune": 3, "recover": 3}  # the demo's --quick budgets (dense, pruning, recovery)
_OPTIONS = ("scope", "importance", "epochs", "lr", "exclude")


def _yaml_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml_value(v) for v in value) + "]"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _set(line: str, value: Any) -> str:
    """Replace the value of a ``key: value  # comment`` line, keeping its indentation and comment."""
    match = re.match(r"^(\s*[\w-]+:\s*)([^#]*?)(\s*#.*)?$", line)
    if match is None:
        return line
    head, _, comment = match.groups()
    new = f"{head}{_yaml_value(value)}"
    return f"{new:<39} {comment.strip()}" if comment else new


def demo_recipe_text(
    framework: str = "torch",
    method: str | None = None,
    sparsities: Sequence[float] | None = None,
    *,
    seed: int = 0,
    recover: str | None = None,
    quick: bool = False,
) -> str:
    """The YAML recipe that reproduces ``prunekit demo`` with these flags under ``prunekit run``.

    The prune section keeps only the options ``method`` takes, set to the values the demo uses
    (the method's defaults, or the ``--quick`` budget), so a structured or Keras demo prints the
    recipe that actually runs rather than the default one.

    Example::

        print(demo_recipe_text("torch", "channels", [0.25, 0.5]))
    """
    if framework not in FRAMEWORKS:
        from prunekit.errors import ConfigError

        raise ConfigError(f"framework should be one of {FRAMEWORKS}, got {framework!r}")
    lines = builtin_recipe_text("demo" if framework == FRAMEWORKS[0] else f"demo-{framework}").splitlines()
    chosen = get_method(method or default_method(framework=framework).name, framework=framework)
    section = ""
    out: list[str] = []
    for line in lines:
        top = re.match(r"^([\w-]+):", line)
        if top:
            section = top.group(1)
        key_match = re.match(r"^\s+([\w-]+):", line)
        key = key_match.group(1) if key_match else None
        if top and section == "seed":
            line = _set(line, seed)
        elif section == "train" and key == "epochs" and quick:
            line = _set(line, QUICK_EPOCHS["train"])
        elif section == "prune" and key is not None:
            if key == "method":
                line = _set(line, chosen.name)
            elif key == "sparsities" and sparsities is not None:
                line = _set(line, [float(s) for s in sparsities])
            elif key in _OPTIONS:
                if key not in chosen.defaults:
                    continue  # this method takes no such option
                if key == "epochs":
                    line = _set(line, QUICK_EPOCHS["prune"] if quick else chosen.defaults["epochs"])
                elif key != "exclude":
                    line = _set(line, chosen.defaults[key])
        out.append(line)
    if recover is not None:
        recovery = get_method(recover, kind="recover", framework=framework)
        block = ["recover:                                # after pruning, on each pruned model", f"  method: {recovery.name}"]
        if quick:
            block.append(f"  epochs: {QUICK_EPOCHS['recover']}")
        insert_at = next((i for i, line in enumerate(out) if line.startswith("export:")), len(out))
        out[insert_at:insert_at] = block
    return "\n".join(out) + "\n"
