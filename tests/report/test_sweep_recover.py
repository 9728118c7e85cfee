"""Sweeps take recovery methods as a grid axis: each trial is pruned, then recovered, and keyed by both."""

from prunekit.cli import main
from prunekit.sweep.digits import DigitsObjective
from prunekit.sweep.runner import Trial, grid


def test_the_grid_crosses_methods_recoveries_and_sparsities():
    trials = grid(["one-shot"], [0.5, 0.9], recoveries=[None, "distill"])
    assert [t.id for t in trials] == ["one-shot@0.5", "one-shot@0.9", "one-shot+distill@0.5", "one-shot+distill@0.9"]


def test_a_recovered_trial_keeps_the_pruned_zeros_and_differs_from_the_plain_one():
    objective = DigitsObjective.train(
        epochs=2, model_options={"channels": (4, 8), "hidden": 16}, latency_repeats=0, finetune_epochs=1
    )
    plain = objective(Trial("one-shot", 0.8))
    distilled = objective(Trial("one-shot", 0.8, options={"recover": "distill"}))
    assert distilled["nonzeros"] == plain["nonzeros"]  # distillation keeps every pruned weight at zero
    assert distilled["accuracy"] != plain["accuracy"] or distilled["gzip_bytes"] != plain["gzip_bytes"]


def test_an_unknown_recovery_is_refused_before_any_training(tmp_path, capsys):
    assert main(["sweep", "--methods", "one-shot", "--recover", "distil", "--out", str(tmp_path)]) == 2
    assert "unknown torch recover method 'distil' (did you mean 'distill'?)" in capsys.readouterr().err
    assert not (tmp_path / "trials.jsonl").exists() and not any(tmp_path.iterdir())
