"""The LLM path's reference profile: what the generic profile builder gives on the same logits, chunk by chunk."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prunekit.artifacts.profile import PROFILE_FILE, ReferenceProfile, build_profile
from prunekit.errors import ConfigError
from prunekit.serve.drift import check_profile
from prunekit.serve.runtimes import TensorSpec
from prunekit.torch.llm.profiling import lm_profile
from prunekit.torch.llm.saving import save_pruned
from tests.torch.llm.tiny import VOCAB, tiny_model, tokens


def test_the_profile_equals_the_generic_builder_on_the_whole_logits():
    model = tiny_model("llama")
    ids = tokens(6, 32)
    with torch.no_grad():
        logits = model(input_ids=ids).logits.numpy()
    expected = build_profile({"input_ids": ids.numpy()}, {"logits": logits})
    for chunk in (32, 64, 10_000):  # one sequence per call, two, all at once: the same counts
        profile = lm_profile(model, ids, chunk_tokens=chunk)
        assert profile.samples == 6
        assert profile.inputs == expected.inputs
        (output,), (reference,) = profile.outputs, expected.outputs
        assert output.class_counts == reference.class_counts and len(output.class_counts) == VOCAB
        assert output.confidence_counts == reference.confidence_counts and sum(output.confidence_counts) == 6 * 32
        assert output.softmax


def test_at_most_max_tokens_whole_sequences_are_profiled_and_bad_ids_are_refused():
    model = tiny_model("gpt2")
    profile = lm_profile(model, tokens(8, 32), max_tokens=100)
    assert profile.samples == 3 and sum(profile.outputs[0].class_counts) == 3 * 32
    with pytest.raises(ConfigError, match=r"\(sequences, length\) integer token ids"):
        lm_profile(model, tokens(2, 8).float())


def test_save_pruned_writes_the_profile_a_server_accepts_for_the_exported_model(tmp_path):
    model = tiny_model("llama")
    out = save_pruned(model, tmp_path / "pruned", profile=lm_profile(model, tokens(4, 16)))
    loaded = ReferenceProfile.load(out / PROFILE_FILE)
    assert loaded.inputs[0].layout == "pooled" and loaded.inputs[0].features[0].count == 4 * 16
    inputs = [TensorSpec("input_ids", (None, None), np.dtype("int64"))]
    outputs = [TensorSpec("logits", (None, None, VOCAB), np.dtype("float32"))]
    check_profile(loaded, inputs, outputs, out / PROFILE_FILE)
    with pytest.raises(ConfigError, match=f"{VOCAB} classes in the profile but 7 in the model"):
        check_profile(loaded, inputs, [TensorSpec("logits", (None, None, 7), np.dtype("float32"))], out / PROFILE_FILE)
    assert sum(loaded.outputs[0].class_counts) == 4 * 16
