"""``prunekit methods --json`` lists every registered method with the frameworks its handlers run on."""

import json

from prunekit.cli import main
from prunekit.methods import list_methods
from prunekit.methods.builtin import BUILTIN_METHODS


def _listed(capsys, *args: str) -> dict[str, dict]:
    assert main(["methods", "--json", *args]) == 0
    return {m["name"]: m for m in json.loads(capsys.readouterr().out)}


def test_every_built_in_method_is_listed_with_the_frameworks_whose_handlers_resolve(capsys):
    listed = _listed(capsys)
    assert set(listed) == {m.name for m in list_methods()} >= {m.name for m in BUILTIN_METHODS}
    for method in BUILTIN_METHODS:
        entry = listed[method.name]
        assert entry["kind"] == method.kind and entry["summary"] == method.summary
        assert entry["frameworks"] == sorted(method.handlers, key=["torch", "keras"].index)
        assert all(callable(method.handler(framework)) for framework in entry["frameworks"])  # claimed = runnable


def test_the_language_model_methods_are_torch_only_and_the_pruning_methods_run_on_both(capsys):
    listed = _listed(capsys)
    assert {name for name, m in listed.items() if m["kind"] == "llm"} == {"magnitude", "wanda", "sparsegpt"}
    assert all(m["frameworks"] == ["torch"] for m in listed.values() if m["kind"] == "llm")
    assert listed["gradual"]["frameworks"] == listed["channels"]["frameworks"] == ["torch", "keras"]


def test_the_framework_filter_lists_exactly_the_methods_with_a_handler_for_it(capsys):
    keras_only = _listed(capsys, "--framework", "keras")
    assert set(keras_only) == {m.name for m in list_methods() if "keras" in m.handlers}
    assert "wanda" not in keras_only and "gradual" in keras_only
