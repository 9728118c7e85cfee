"""A resumed sweep reuses only trials measured under the same configuration."""

from __future__ import annotations

import json

import pytest

from prunekit.errors import ConfigError
from prunekit.sweep.runner import Trial, grid, objective_fingerprint, read_log, run_sweep, trial_key


class Scaled:
    """accuracy = scale * (1 - sparsity): two scales are two configurations of the same trials."""

    def __init__(self, scale: float):
        self.scale = scale
        self.calls: list[str] = []

    def fingerprint(self) -> dict:
        return {"objective": "Scaled", "scale": self.scale}

    def __call__(self, trial: Trial) -> dict:
        self.calls.append(trial.id)
        return {"accuracy": self.scale * (1 - trial.sparsity), "gzip_bytes": 100 * (1 - trial.sparsity)}


def test_same_configuration_reuses_every_trial(tmp_path):
    trials = grid(["one-shot"], [0.5, 0.9])
    run_sweep(Scaled(1.0), trials, tmp_path)
    again = Scaled(1.0)
    result = run_sweep(again, trials, tmp_path)
    assert again.calls == [] and result.ran == []
    assert [r["metrics"]["accuracy"] for r in result.records] == [0.5, pytest.approx(0.1)]


def test_another_configuration_is_refused_naming_trial_and_difference(tmp_path):
    trials = grid(["one-shot"], [0.5])
    run_sweep(Scaled(1.0), trials, tmp_path)
    with pytest.raises(ConfigError) as caught:
        run_sweep(Scaled(0.5), trials, tmp_path)
    message = str(caught.value)
    assert "one-shot@0.5" in message and "scale: 1.0 -> 0.5" in message and "another output folder" in message


def test_rerun_mode_measures_mismatched_trials_again_and_keeps_matching_ones(tmp_path):
    run_sweep(Scaled(1.0), grid(["one-shot"], [0.5]), tmp_path)
    run_sweep(Scaled(0.5), grid(["one-shot"], [0.9]), tmp_path)
    objective = Scaled(0.5)
    result = run_sweep(objective, grid(["one-shot"], [0.5, 0.9]), tmp_path, on_mismatch="rerun")
    assert objective.calls == ["one-shot@0.5"]
    assert [r["metrics"]["accuracy"] for r in result.records] == [0.25, pytest.approx(0.05)]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [t["metrics"]["accuracy"] for t in saved["trials"]] == [0.25, pytest.approx(0.05)]
    # a later run in the same folder and configuration reuses the new records
    assert run_sweep(Scaled(0.5), grid(["one-shot"], [0.5, 0.9]), tmp_path).ran == []


def test_records_from_before_keys_count_as_mismatched(tmp_path):
    run_sweep(Scaled(1.0), grid(["one-shot"], [0.5]), tmp_path)
    records = read_log(tmp_path)
    for record in records:
        del record["key"], record["fingerprint"]
    (tmp_path / "trials.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(ConfigError, match="no configuration record"):
        run_sweep(Scaled(1.0), grid(["one-shot"], [0.5]), tmp_path)


def test_the_key_covers_trial_options_seed_and_objective():
    base = trial_key(Trial("one-shot", 0.5), {"a": 1})
    assert len(base) == 16 and base == trial_key(Trial("one-shot", 0.5), {"a": 1})
    assert base != trial_key(Trial("one-shot", 0.5, seed=1), {"a": 1})
    assert base != trial_key(Trial("one-shot", 0.5, options={"epochs": 2}), {"a": 1})
    assert base != trial_key(Trial("one-shot", 0.5), {"a": 2})


def test_quick_and_full_digits_objectives_have_different_fingerprints():
    import numpy as np
    import torch

    from prunekit.data import DatasetSplit
    from prunekit.sweep.digits import DigitsObjective
    from prunekit.torch.models import DigitsCNN

    x = np.zeros((4, 1, 8, 8), np.float32)
    y = np.zeros(4, np.int64)
    split = DatasetSplit(x, y, x, y, x, y)
    torch.manual_seed(0)
    small = DigitsCNN(channels=(8, 16), hidden=32).state_dict()
    options = {"channels": (8, 16), "hidden": 32}
    quick = DigitsObjective(small, finetune_epochs=1, latency_repeats=3, model_options=options, split=split)
    full = DigitsObjective(DigitsCNN().state_dict(), finetune_epochs=2, split=split)
    a, b = objective_fingerprint(quick), objective_fingerprint(full)
    assert a["model_options"] == {"channels": [8, 16], "hidden": 32} and b["model_options"] == {}
    assert a["weights_and_data_sha256"] != b["weights_and_data_sha256"]
    assert trial_key(Trial("one-shot", 0.5), a) != trial_key(Trial("one-shot", 0.5), b)
