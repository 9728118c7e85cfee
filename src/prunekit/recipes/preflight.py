"""Checks of a recipe against its model, before any training: the model builds, ``model.input_shape``
fits it, and every ``prune.exclude`` glob names something in it. ``prunekit run --check`` runs them too,
so a recipe that passes ``--check`` does not fail after minutes of dense training on these."""

from __future__ import annotations

import fnmatch
from typing import Any

from prunekit.recipes.config import Recipe
from prunekit.recipes.validation import RecipeError


def _names(model: Any, framework: str) -> list[str]:
    """Everything an exclude glob may match: parameter and module names (torch), layer names and weight paths (keras)."""
    if framework == "torch":
        return [name for name, _ in model.named_parameters()] + [name for name, _ in model.named_modules() if name]
    layers = [layer.name for layer in model.layers]
    return layers + [weight.path for weight in model.weights]


def _forward(model: Any, framework: str, shape: list[int]) -> None:
    import numpy as np

    if framework == "torch":
        import torch

        was_training = model.training
        model.eval()
        with torch.no_grad():
            model(torch.zeros(2, *shape))
        model.train(was_training)
    else:
        model(np.zeros((2, *shape), dtype="float32"))


def preflight(recipe: Recipe, model: Any, source: str = "recipe") -> None:
    """Raise a :class:`~prunekit.recipes.validation.RecipeError` naming each field the built ``model`` contradicts.

    Example::

        preflight(recipe, build_model(recipe))  # model.input_shape and prune.exclude checked
    """
    if recipe.model is None:
        return
    errors: list[tuple[str, str]] = []
    shape = recipe.model.input_shape
    try:
        _forward(model, recipe.framework, shape)
    except Exception as exc:  # the model's own error says what it expected
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        errors.append(("model.input_shape", f"{shape} does not fit the model (a batch of 2 zeros failed: {first[:300]})"))
    names = _names(model, recipe.framework)
    for key, globs in (("prune.exclude", recipe.prune.exclude), ("prune.ignore", recipe.prune.ignore)):
        for glob in globs:
            if not any(fnmatch.fnmatchcase(name, glob) for name in names):
                errors.append((key, f"glob {glob!r} matches no layer of the model; its layers are {names[:12]}"))
    if errors:
        raise RecipeError(errors, source)
