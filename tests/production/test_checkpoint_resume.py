"""kill -9 a gradual pruning run mid-way, resume it: the final weights are bitwise those of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from prunekit.errors import ConfigError, StateMismatchError
from prunekit.torch.checkpoint import EpochCheckpoint
from prunekit.torch.unstructured.dynamic_training import train_sparse
from prunekit.torch.unstructured.workflows import prune_gradually

SETUP = """
import numpy as np, torch
from torch import nn
from prunekit.torch.training import make_loader

def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 4))

def loader():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((96, 16)).astype(np.float32)
    y = (x[:, :4].argmax(1)).astype(np.int64)
    return make_loader(x, y, batch_size=16, seed=3)
"""
namespace: dict = {}
exec(SETUP, namespace)  # the same model and data in this process and in the child  # noqa: S102
build, loader = namespace["build"], namespace["loader"]
EPOCHS = 6


def _gradual(model, **options):
    return prune_gradually(model, loader(), 0.75, epochs=EPOCHS, lr=1e-2, progress=False, **options)


def _same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


class StopAfter:
    """Raises KeyboardInterrupt after ``batches`` optimizer steps (an interruption in the middle of an epoch)."""

    def __init__(self, batches: int):
        self.left = batches

    def on_train_batch_end(self):
        self.left -= 1
        if self.left == 0:
            raise KeyboardInterrupt


def test_an_interrupted_run_resumes_bitwise_identical(tmp_path):
    reference = _gradual(build()).model
    path = tmp_path / "run.ckpt"
    with pytest.raises(KeyboardInterrupt):
        _gradual(build(), checkpoint=EpochCheckpoint(path), callbacks=[StopAfter(6 * 3 + 2)])  # in epoch 4
    assert torch.load(path, weights_only=True)["epoch"] == 3
    resumed = _gradual(build(), checkpoint=EpochCheckpoint(path, resume=True))
    assert _same(resumed.model, reference)
    assert len(resumed.history) == EPOCHS and not path.exists()  # removed once the run finished


def test_kill_9_mid_run_then_resume_is_bitwise_identical(tmp_path):
    path = tmp_path / "killed.ckpt"
    script = SETUP + textwrap.dedent(
        f"""
        import time
        from prunekit.torch.checkpoint import EpochCheckpoint
        from prunekit.torch.unstructured.workflows import prune_gradually

        class Slow:
            def on_train_batch_end(self):
                time.sleep(0.05)

        prune_gradually(build(), loader(), 0.75, epochs={EPOCHS}, lr=1e-2, progress=False,
                        checkpoint=EpochCheckpoint({str(path)!r}), callbacks=[Slow()])
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen([sys.executable, "-c", script], env=env)
    deadline = time.monotonic() + 120
    while not path.exists() and time.monotonic() < deadline and child.poll() is None:
        time.sleep(0.02)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert path.exists(), "the child should have written a checkpoint before it was killed"
    done = torch.load(path, weights_only=True)["epoch"]
    assert 1 <= done < EPOCHS
    resumed = _gradual(build(), checkpoint=EpochCheckpoint(path, resume=True)).model
    assert _same(resumed, _gradual(build()).model)


def test_dynamic_sparse_training_resumes_bitwise_identical(tmp_path):
    def run(**options):
        return train_sparse(build(), loader(), 0.8, regrow="rigl", epochs=4, lr=1e-2, progress=False, **options)

    reference = run().model
    path = tmp_path / "rigl.ckpt"
    with pytest.raises(KeyboardInterrupt):
        run(checkpoint=EpochCheckpoint(path), callbacks=[StopAfter(6 * 2 + 1)])
    assert _same(run(checkpoint=EpochCheckpoint(path, resume=True)).model, reference)


def test_an_existing_checkpoint_is_never_overwritten_without_resume(tmp_path):
    path = tmp_path / "run.ckpt"
    with pytest.raises(KeyboardInterrupt):
        _gradual(build(), checkpoint=EpochCheckpoint(path), callbacks=[StopAfter(8)])
    before = path.read_bytes()
    with pytest.raises(ConfigError, match="exists; pass resume=True"):
        _gradual(build(), checkpoint=EpochCheckpoint(path))
    assert path.read_bytes() == before


def test_a_checkpoint_of_another_run_is_refused_naming_the_difference(tmp_path):
    path = tmp_path / "run.ckpt"
    with pytest.raises(KeyboardInterrupt):
        _gradual(build(), checkpoint=EpochCheckpoint(path, key={"recipe": "a"}), callbacks=[StopAfter(8)])
    with pytest.raises(StateMismatchError, match="its key is"):
        _gradual(build(), checkpoint=EpochCheckpoint(path, resume=True, key={"recipe": "b"}))
    with pytest.raises(StateMismatchError, match="its epochs is 6, this run's is 5"):
        prune_gradually(build(), loader(), 0.75, epochs=5, lr=1e-2, progress=False,
                        checkpoint=EpochCheckpoint(path, resume=True, key={"recipe": "a"}))  # fmt: skip


def test_a_loader_without_its_own_generator_resumes_from_the_global_rng(tmp_path):
    from torch.utils.data import DataLoader, TensorDataset

    def plain_loader():
        torch.manual_seed(5)
        data = TensorDataset(torch.randn(64, 16), torch.randint(0, 4, (64,)))
        return DataLoader(data, batch_size=16, shuffle=True)

    def run(**options):
        data = plain_loader()
        return prune_gradually(build(), data, 0.5, epochs=4, lr=1e-2, progress=False, **options).model

    reference = run()
    path = tmp_path / "g.ckpt"
    with pytest.raises(KeyboardInterrupt):
        run(checkpoint=EpochCheckpoint(path), callbacks=[StopAfter(4 * 2 + 1)])
    assert _same(run(checkpoint=EpochCheckpoint(path, resume=True)), reference)


def test_every_must_be_a_positive_integer():
    with pytest.raises(ConfigError, match="every should be an integer >= 1"):
        EpochCheckpoint("x.ckpt", every=0)


def test_run_method_hands_the_checkpoint_to_the_torch_handler(tmp_path):
    import numpy as np

    from prunekit.methods import run_method

    rng = np.random.default_rng(1)
    x = rng.standard_normal((64, 16)).astype(np.float32)
    y = x[:, :4].argmax(1).astype(np.int64)

    def run(**options):
        return run_method("gradual", "torch", build(), x, y, 0.6, seed=2, batch_size=16, epochs=4, lr=1e-2, **options).model

    reference = run()
    path = tmp_path / "method.ckpt"
    with pytest.raises(KeyboardInterrupt):
        with _interrupting_after_checkpoint(path):
            run(checkpoint=EpochCheckpoint(path))
    assert _same(run(checkpoint=EpochCheckpoint(path, resume=True)), reference)


class _interrupting_after_checkpoint:
    """Interrupt the run right after its first checkpoint is written (patches EpochCheckpoint.save)."""

    def __init__(self, path):
        self.path = path

    def __enter__(self):
        self.original = EpochCheckpoint.save

        def save(checkpoint, *args, **kwargs):
            self.original(checkpoint, *args, **kwargs)
            if self.path.exists():
                raise KeyboardInterrupt

        EpochCheckpoint.save = save  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc):
        EpochCheckpoint.save = self.original  # type: ignore[method-assign]
        return False
