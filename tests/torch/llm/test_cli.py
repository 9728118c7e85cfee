"""``prunekit llm`` end to end on a tiny trained LM: prune, eval --json, depth, width, and the bad-input errors."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from prunekit.artifacts.compact import load_compact
from prunekit.artifacts.profile import PROFILE_FILE, ReferenceProfile
from prunekit.cli import main
from prunekit.torch.llm.evaluate import layer_sparsity, perplexity
from prunekit.torch.llm.saving import COMPACT_NAME, RECORD_NAME

SMALL = ["--samples", "8", "--seq-len", "64"]
pytestmark = pytest.mark.slow  # the shared fixture trains a tiny LM (about 20 s on 2 idle cores)


def test_trained_tiny_lm_beats_the_unigram_model(trained_lm_dir):
    model = AutoModelForCausalLM.from_pretrained(trained_lm_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(trained_lm_dir)
    valid = (trained_lm_dir / "valid.txt").read_text()[:20000]
    counts = {}
    for byte in (trained_lm_dir / "train.txt").read_bytes():
        counts[byte] = counts.get(byte, 0) + 1
    total = sum(counts.values())
    data = valid.encode()
    unigram = math.exp(-sum(math.log(counts.get(b, 1) / total) for b in data) / len(data))
    assert perplexity(model, [valid], tokenizer, context=64).perplexity < 0.75 * unigram


def test_prune_then_eval_json(trained_lm_dir, tmp_path, capsys):
    out = tmp_path / "pruned"
    rc = main(
        [
            "llm",
            "prune",
            str(trained_lm_dir),
            "--method",
            "sparsegpt",
            "--pattern",
            "2:4",
            "--calibration",
            str(trained_lm_dir / "train.txt"),
            *SMALL,
            "--output",
            str(out),
        ]
    )
    assert rc == 0
    record = json.loads((out / RECORD_NAME).read_text())
    assert record["recipe"]["method"] == "sparsegpt" and record["recipe"]["pattern"] == "2:4"
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    assert set(layer_sparsity(model).values()) == {0.5}
    assert (out / "tokenizer.json").is_file()
    profile = ReferenceProfile.load(out / PROFILE_FILE)  # the drift reference: the pruned model on the calibration text
    assert profile.samples == 8 and sum(profile.outputs[0].class_counts) == 8 * 64
    arrays, _ = load_compact(out / COMPACT_NAME)  # N:M output also comes in the compact sparse format
    weight = model.model.layers[0].mlp.up_proj.weight.detach().numpy()
    assert (arrays["model.layers.0.mlp.up_proj.weight"] == weight).all()
    capsys.readouterr()
    assert main(["llm", "eval", str(out), "--text", str(trained_lm_dir / "valid.txt"), "--max-tokens", "3000", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    tokenizer = AutoTokenizer.from_pretrained(out)
    text = (trained_lm_dir / "valid.txt").read_text()
    expected = perplexity(model, tokenizer.encode(text, add_special_tokens=False)[:3000], context=64)
    assert printed["tokens"] == expected.tokens and printed["perplexity"] == pytest.approx(expected.perplexity, rel=1e-6)
    assert printed["seconds"] > 0 and printed["block_sparsity"] == 0.5


def test_depth_and_width_commands_write_loadable_smaller_models(trained_lm_dir, tmp_path):
    calib = ["--calibration", str(trained_lm_dir / "train.txt"), *SMALL]
    assert main(["llm", "depth", str(trained_lm_dir), "--remove", "1", *calib, "--output", str(tmp_path / "d")]) == 0
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "d").config.num_hidden_layers == 1
    assert (
        main(["llm", "width", str(trained_lm_dir), "--mlp", "0.25", "--heads", "0.5", *calib, "--output", str(tmp_path / "w")])
        == 0
    )
    narrow = AutoModelForCausalLM.from_pretrained(tmp_path / "w")
    assert narrow.config.intermediate_size == 96 and narrow.config.num_attention_heads == 2


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--sparsity", "1.5"], "sparsity must be in"),
        (["--pattern", "3:7"], "does not divide layer"),
        (["--device", "cuda"], "no CUDA GPU"),
    ],
)
def test_bad_input_errors_leave_no_output(trained_lm_dir, tmp_path, capsys, extra, message):
    import torch

    if "cuda" in extra and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    out = tmp_path / "out"
    rc = main(
        [
            "llm",
            "prune",
            str(trained_lm_dir),
            "--method",
            "wanda",
            "--calibration",
            str(trained_lm_dir / "train.txt"),
            *SMALL,
            *extra,
            "--output",
            str(out),
        ]
    )
    assert rc == 2 and message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_missing_model_files_and_short_calibration(trained_lm_dir, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["llm", "eval", str(tmp_path / "empty"), "--text", str(trained_lm_dir / "valid.txt")]) == 2
    assert "has no config.json and no weights" in capsys.readouterr().err
    short = tmp_path / "short.txt"
    short.write_text("def f(): pass\n")
    rc = main(
        [
            "llm",
            "prune",
            str(trained_lm_dir),
            "--method",
            "wanda",
            "--calibration",
            str(short),
            *SMALL,
            "--output",
            str(tmp_path / "o"),
        ]
    )
    assert rc == 2 and "shorter than one sequence" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_tokenizer_model_vocabulary_mismatch_is_refused(trained_lm_dir, tmp_path, capsys):
    from prunekit.torch.llm.small_lm import byte_tokenizer
    from tests.torch.llm.tiny import tiny_model

    directory = tmp_path / "mismatch"
    tiny_model("llama").save_pretrained(directory)  # vocabulary 96
    byte_tokenizer().save_pretrained(directory)  # 259 tokens
    assert main(["llm", "eval", str(directory), "--text", str(trained_lm_dir / "valid.txt")]) == 2
    assert "has 259 tokens but the model's vocabulary has 96" in capsys.readouterr().err


def test_a_killed_prune_resumes_from_its_block_checkpoint(trained_lm_dir, tmp_path, monkeypatch):
    from prunekit.torch.llm.checkpoint import BlockCheckpoint

    args = ["llm", "prune", str(trained_lm_dir), "--method", "wanda", "--calibration", str(trained_lm_dir / "train.txt"), *SMALL]
    assert main([*args, "--output", str(tmp_path / "whole")]) == 0
    saved = BlockCheckpoint.save

    def save_then_die(self, done, *rest, **kwargs):
        saved(self, done, *rest, **kwargs)
        if done == 1:
            raise KeyboardInterrupt  # the process is killed after the first block is checkpointed

    monkeypatch.setattr(BlockCheckpoint, "save", save_then_die)
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        main([*args, "--output", str(out)])
    assert (tmp_path / "resumed.partial" / "block-00000.safetensors").is_file() and not out.exists()
    monkeypatch.setattr(BlockCheckpoint, "save", saved)
    assert main([*args, "--output", str(out)]) == 2  # without --resume the checkpoint is not silently overwritten
    assert main([*args, "--output", str(out), "--resume"]) == 0
    whole = AutoModelForCausalLM.from_pretrained(tmp_path / "whole").state_dict()
    resumed = AutoModelForCausalLM.from_pretrained(out).state_dict()
    assert whole.keys() == resumed.keys() and all(torch.equal(whole[k], resumed[k]) for k in whole)
    assert not (tmp_path / "resumed.partial").exists()
