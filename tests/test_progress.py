"""Progress off a terminal: periodic plain lines with elapsed time and ETA, from fit, sweeps and the demo stages."""

import io
import re
import time

import torch

from prunekit.core.progress import format_line, progress
from prunekit.sweep.runner import grid, run_sweep
from prunekit.torch.training import fit, make_loader
from tests.report.sweep_objectives import ToyObjective


def test_format_line_counts_elapsed_and_eta_by_hand():
    assert format_line("dense", 1, 4, 10.0) == "dense: 1/4 (25%) elapsed 0:10 eta 0:30"
    assert format_line("export", 0, None, 75.0) == "export: running, elapsed 1:15"
    assert format_line("x", 0, 3, 3725.0, "warm") == "x: 0/3 (0%) elapsed 1:02:05 eta ? warm"


def test_a_silent_long_step_still_writes_a_line_every_interval():
    stream = io.StringIO()
    with progress("export", stream=stream, interval=0.1):
        time.sleep(0.55)  # no advance() at all: the heartbeat must speak
    lines = stream.getvalue().splitlines()
    assert lines[0] == "export: started"
    assert lines[-1].startswith("export: done in 0:00")
    beats = [line for line in lines if line.startswith("export: running, elapsed")]
    assert 3 <= len(beats) <= 6


def test_nested_steps_show_the_innermost_and_the_outer_in_between():
    stream = io.StringIO()
    with progress("demo", 2, stream=stream, interval=0.1) as stage:
        with progress("dense", 4) as advance:
            for _ in range(4):
                time.sleep(0.06)
                advance()
        stage()
        time.sleep(0.25)
        stage()
    text = stream.getvalue()
    assert "dense: done 4/4" in text
    assert re.search(r"^dense: [1-3]/4 \(\d+%\) elapsed 0:00 eta 0:0\d$", text, re.M)
    assert re.search(r"^demo: 1/2 \(50%\) elapsed 0:00 eta 0:00$", text, re.M)
    assert text.splitlines()[-1].startswith("demo: done 2/2")


def test_disabled_progress_writes_nothing(capsys):
    with progress("quiet", 3, enabled=False) as advance:
        advance()
    assert capsys.readouterr().err == ""


def test_fit_reports_its_steps_on_stderr_off_a_terminal(capsys):
    x, y = torch.randn(64, 4), torch.randint(0, 2, (64,))
    fit(torch.nn.Linear(4, 2), make_loader(x, y, batch_size=16), epochs=2, description="dense")
    err = capsys.readouterr().err
    assert "dense: started (8 steps)" in err
    assert "dense: done 8/8 in" in err


def test_sweep_reports_trials_done(tmp_path, capsys):
    run_sweep(ToyObjective(tmp_path / "exec"), grid(["one-shot"], [0.5, 0.9]), tmp_path / "out")
    err = capsys.readouterr().err
    assert "sweep: started (2 steps)" in err
    assert "sweep: done 2/2 in" in err
