"""The torch and Keras structured-pruning verbs are twins: the parameters they share have the same
names, order and kind, so a call written for one backend reads the same for the other."""

from __future__ import annotations

import importlib.util
import inspect
from collections.abc import Callable

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("keras") is None, reason="needs the keras extra")

SHARED = {
    "prune_channels": ["model", "example_inputs", "ratio", "importance", "rules"],
    "remove_channels": ["model", "example_inputs", "channels", "rules"],
}


def _parameters(function: Callable) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(function).parameters)


@pytest.mark.parametrize("verb", sorted(SHARED))
def test_shared_parameters_have_the_same_names_order_and_kind(verb: str) -> None:
    import prunekit.keras as pk
    import prunekit.torch as pt

    torch_params, keras_params = _parameters(getattr(pt, verb)), _parameters(getattr(pk, verb))
    shared = [name for name in torch_params if name in keras_params]
    assert shared == SHARED[verb]
    assert [name for name in keras_params if name in torch_params] == shared  # same order
    for name in shared:
        assert keras_params[name].kind == torch_params[name].kind, f"{verb}({name}=...) differs in kind"
    positional = [p.name for p in torch_params.values() if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    assert [p.name for p in keras_params.values() if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD] == positional


def test_keras_prune_channels_selects_layers_with_the_projects_exclude_name() -> None:
    import prunekit.keras as pk
    from prunekit.torch import prune_unstructured

    keras_params = _parameters(pk.prune_channels)
    assert "exclude" in _parameters(prune_unstructured) and "exclude" in keras_params  # one name for "leave these layers alone"
    assert keras_params["exclude"].kind is inspect.Parameter.KEYWORD_ONLY
    assert "ignore" not in keras_params
