"""Nothing a user passes in is unpickled: no pickle/marshal loads, torch.load only weights-only, safe YAML/NumPy/Keras."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

import prunekit
from prunekit.errors import CorruptFileError

SRC = Path(prunekit.__file__).parent

FORBIDDEN = {
    r"\bpickle\.loads?\(": "pickle.load",
    r"\b(c?Pickle|dill|joblib|marshal|shelve)\.(load|loads|open)\(": "an unpickling loader",
    r"weights_only\s*=\s*False": "weights_only=False",
    r"allow_pickle\s*=\s*True": "np.load(allow_pickle=True)",
    r"safe_mode\s*=\s*False": "Keras safe_mode=False",
    r"\byaml\.(load|unsafe_load|full_load)\(": "yaml.load without SafeLoader",
    r"(?<![.\w])(eval|exec)\(": "eval/exec",
}


def _code_lines():
    for path in sorted(SRC.rglob("*.py")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#", 1)[0]
            yield path.relative_to(SRC.parent), number, code


def test_src_has_no_unsafe_deserialisation():
    found = [
        f"{path}:{number}: {what}"
        for path, number, code in _code_lines()
        for pattern, what in FORBIDDEN.items()
        if re.search(pattern, code)
    ]
    assert found == []


def test_every_torch_load_is_weights_only():
    calls = [(path, n, code) for path, n, code in _code_lines() if re.search(r"\btorch\.load\(", code)]
    assert calls, "the grep should see the torch.load in prunekit.torch.deploy.weights"
    assert [f"{p}:{n}" for p, n, code in calls if "weights_only=True" not in code] == []


def test_the_grep_catches_what_it_should():
    bad = [
        "state = pickle.load(f)",
        "torch.load(p, weights_only=False)",
        "yaml.load(text)",
        "np.load(p, allow_pickle=True)",
        "eval(s)",
    ]
    assert all(any(re.search(pattern, line) for pattern in FORBIDDEN) for line in bad)
    assert not any(re.search(pattern, ok) for pattern in FORBIDDEN for ok in ("yaml.safe_load(text)", "model.eval()"))


def test_a_pickled_model_is_refused_with_how_to_convert(tmp_path):
    from prunekit.torch.deploy.weights import load_weights

    path = tmp_path / "model.pt"
    torch.save(nn.Linear(2, 2), path)  # a whole pickled module, not a state_dict
    with pytest.raises(CorruptFileError, match="never unpickles code.*save_model\\(model, 'model.safetensors'\\)"):
        load_weights(str(path), lambda: nn.Linear(2, 2))
