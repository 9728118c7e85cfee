"""The built-in digits objective and the `prunekit sweep` command, end to end on a tiny CNN."""

import json

from prunekit.cli import main
from prunekit.sweep.digits import DigitsObjective
from prunekit.sweep.runner import Trial


def test_digits_objective_reports_accuracy_size_and_macs_at_the_requested_sparsity():
    objective = DigitsObjective.train(
        epochs=1, model_options={"channels": (4, 8), "hidden": 16}, finetune_epochs=1, latency_repeats=2
    )
    metrics = objective(Trial("one-shot", 0.5))
    assert 0 <= metrics["accuracy"] <= 1
    assert 0.45 < metrics["sparsity"] < 0.5  # weights at 50%, biases and BN dense
    assert metrics["sparse_macs"] < metrics["macs"]
    assert metrics["latency_ms"] > 0


def test_digits_objective_channels_method_shrinks_dense_macs():
    objective = DigitsObjective.train(
        epochs=1, model_options={"channels": (4, 8), "hidden": 16}, finetune_epochs=1, latency_repeats=0
    )
    dense = objective(Trial("one-shot", 0.0))
    channels = objective(Trial("channels", 0.5))
    assert channels["macs"] < 0.5 * dense["macs"]
    assert channels["params"] < dense["params"] and channels["sparsity"] == 0.0
    assert "latency_ms" not in channels


def test_sweep_command_writes_results_plots_and_report_and_reports_failed_trials(tmp_path, capsys):
    out = tmp_path / "sweep"
    code = main(
        [
            "sweep",
            "--objective",
            "tests.report.test_sweep_digits:toy",
            "--methods",
            "m,broken",
            "--sparsities",
            "0.5,0.9",
            "--out",
            str(out),
        ]
    )
    assert code == 1  # a failed trial makes the exit status non-zero, after the others ran
    assert "[failed] broken@0.5" in capsys.readouterr().out
    saved = json.loads((out / "results.json").read_text())
    assert [t["status"] for t in saved["trials"]] == ["ok", "ok", "failed", "failed"]
    for name in ("pareto_gzip_bytes.png", "pareto_gzip_bytes.svg", "report.html", "report.md", "report.json", "results.csv"):
        assert (out / name).stat().st_size > 0, name


def toy():
    """Zero-argument factory for --objective: a toy objective logging to a fresh temporary file."""
    import tempfile

    from tests.report.sweep_objectives import ToyObjective

    with tempfile.NamedTemporaryFile(prefix="sweep-exec-", delete=False) as handle:
        return ToyObjective(handle.name)
