"""The method registry: records, lookup by name or alias, options, handlers, registration rules."""

import pytest

from prunekit.errors import ConfigError
from prunekit.methods import KINDS, Method, default_method, get_method, list_methods, method_names, register, unregister


def _toy(**overrides):
    fields = dict(
        name="toy-registry",
        kind="unstructured",
        summary="a toy",
        handlers={"torch": lambda job: job},
        defaults={"epochs": 2, "lr": 1e-3},
        aliases=("toy-alias",),
    )
    return Method(**{**fields, **overrides})


@pytest.fixture
def toy():
    method = register(_toy())
    yield method
    unregister(method.name)


def test_built_in_methods_cover_every_framework_and_kind_they_claim():
    names = method_names()
    assert len(names) == len(set(names))
    assert all(m.kind in KINDS for m in list_methods())
    assert {m.name for m in list_methods(kind="structured")} == {get_method("structured").name}
    assert all("keras" in m.frameworks for m in list_methods(framework="keras"))


def test_an_alias_finds_its_method(toy):
    assert get_method("toy-alias") is toy
    assert "toy-alias" in method_names(aliases=True) and "toy-alias" not in method_names()


def test_an_unknown_name_lists_the_choices_and_suggests_the_closest(toy):
    with pytest.raises(ConfigError, match=r"unknown method 'toy-registri' \(did you mean 'toy-registry'\?\).*prunekit methods"):
        get_method("toy-registri")


def test_kind_and_framework_filters_reject_a_method_outside_them(toy):
    with pytest.raises(ConfigError, match="unknown keras method 'toy-registry'"):
        get_method("toy-registry", framework="keras")
    with pytest.raises(ConfigError, match="unknown structured method"):
        get_method("toy-registry", kind="structured")
    assert toy in list_methods(kind="unstructured", framework="torch")
    assert toy not in list_methods(framework="keras")


def test_a_taken_name_or_alias_is_refused_unless_replaced(toy):
    with pytest.raises(ConfigError, match="'toy-registry' is already registered"):
        register(_toy())
    with pytest.raises(ConfigError, match="'toy-alias' is already registered"):
        register(_toy(name="other-toy"))
    replacement = register(_toy(summary="replaced"), replace=True)
    assert get_method("toy-registry").summary == "replaced" and get_method("toy-alias") is replacement


def test_options_merge_defaults_framework_defaults_and_overrides():
    method = _toy(handlers={"torch": lambda job: job, "keras": lambda job: job}, framework_defaults={"keras": {"epochs": 5}})
    assert method.options("torch") == {"epochs": 2, "lr": 1e-3}
    assert method.options(epochs=3) == {"epochs": 3, "lr": 1e-3}  # framework-free once the differing option is set
    assert method.options("keras") == {"epochs": 5, "lr": 1e-3}
    assert method.options("keras", epochs=1) == {"epochs": 1, "lr": 1e-3}
    with pytest.raises(ConfigError, match=r"method 'toy-registry' has no option 'rounds'; its options are \['epochs', 'lr'\]"):
        method.options(rounds=3)


def test_a_string_handler_is_imported_on_first_use_and_a_bad_one_is_named():
    assert _toy(handlers={"torch": "prunekit.torch.backend:prune_one_shot_job"}).handler("torch").__name__ == "prune_one_shot_job"
    with pytest.raises(ConfigError, match="has no 'nothing_here'"):
        _toy(handlers={"torch": "prunekit.torch.backend:nothing_here"}).handler("torch")
    with pytest.raises(ConfigError, match="has no keras handler; it runs on \\['torch'\\]"):
        _toy().handler("keras")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"kind": "magic"}, "kind should be one of"),
        ({"handlers": {}}, "give at least one handler"),
        ({"handlers": {"torch": "no_colon"}}, "should be a callable or 'module:attribute'"),
        ({"name": " spaced "}, "non-empty string"),
        ({"framework_defaults": {"keras": {"epochs": 1}}}, "framework_defaults"),
        ({"framework_defaults": {"torch": {"rounds": 1}}}, "unknown \\['rounds'\\]"),
    ],
)
def test_a_malformed_record_is_refused_when_built(fields, message):
    with pytest.raises(ConfigError, match=message):
        _toy(**fields)


def test_records_are_frozen_and_their_defaults_read_only(toy):
    with pytest.raises(AttributeError):
        toy.name = "renamed"
    with pytest.raises(TypeError):
        toy.defaults["epochs"] = 100


def test_the_default_method_is_the_first_registered_of_its_kind():
    assert default_method().name == method_names(kind="unstructured")[0]
    assert default_method("structured", "keras").kind == "structured"
    with pytest.raises(ConfigError, match="no llm method is registered for keras"):
        default_method("llm", "keras")


def test_to_dict_has_what_prunekit_methods_json_promises(toy):
    record = toy.to_dict()
    assert record == {
        "name": "toy-registry",
        "kind": "unstructured",
        "frameworks": ["torch"],
        "summary": "a toy",
        "amount": "sparsity",
        "aliases": ["toy-alias"],
        "defaults": {"epochs": 2, "lr": 1e-3},
        "by_framework": {},
        "sensitivity": [],
    }


def test_options_without_a_framework_refuse_a_default_that_differs_by_framework():
    method = _toy(handlers={"torch": lambda job: job, "keras": lambda job: job}, framework_defaults={"keras": {"epochs": 5}})
    assert method.by_framework() == {"epochs": {"torch": 2, "keras": 5}}
    with pytest.raises(ConfigError, match=r"default of \['epochs'\] differs by framework \(epochs: \{'torch': 2, 'keras': 5\}\)"):
        method.options(lr=0.1)
    with pytest.raises(ConfigError, match=r"has no keras handler"):
        _toy().options("keras")
    same = _toy(handlers={"torch": lambda job: job, "keras": lambda job: job}, framework_defaults={"keras": {"epochs": 2}})
    assert same.by_framework() == {} and same.options() == {"epochs": 2, "lr": 1e-3}  # an override equal to the default


def test_pqat_freeze_bn_after_is_given_per_framework_never_guessed():
    method = get_method("pqat")
    assert method.by_framework() == {"freeze_bn_after": {"torch": None, "keras": 0}}
    assert method.options("torch")["freeze_bn_after"] is None and method.options("keras")["freeze_bn_after"] == 0
    with pytest.raises(ConfigError, match=r"call options\(framework\) with one of \['torch', 'keras'\]"):
        method.options(epochs=1)
    assert method.options(freeze_bn_after=3)["freeze_bn_after"] == 3
    assert method.to_dict()["by_framework"] == {"freeze_bn_after": {"torch": None, "keras": 0}}
