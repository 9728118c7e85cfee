"""Layer-by-layer LLM pruning killed mid-way resumes at the next block and ends bitwise identical."""

from __future__ import annotations

import pytest
import torch

from prunekit.errors import ConfigError, StateMismatchError
from prunekit.torch.llm.checkpoint import BlockCheckpoint
from prunekit.torch.llm.methods import sparsegpt, wanda
from prunekit.torch.llm.sequential import prune
from tests.torch.llm.tiny import tiny_model, tokens


class DyingCheckpoint(BlockCheckpoint):
    """Saves as usual, then the process 'dies' (as a kill would) once ``die_after`` blocks are saved."""

    die_after: int = 0

    def save(self, done, *args, **kwargs):
        super().save(done, *args, **kwargs)
        if done == self.die_after:
            raise KeyboardInterrupt


def _dying(folder, die_after: int) -> DyingCheckpoint:
    checkpoint = DyingCheckpoint(folder)
    checkpoint.die_after = die_after
    return checkpoint


@pytest.mark.parametrize("method", [wanda, sparsegpt])
def test_a_killed_run_resumes_at_the_next_block_bitwise_identical(tmp_path, method):
    ids = tokens(6, 32)
    options = dict(method=method, sparsity=0.5, ratios="owl", owl_threshold=2.0, batch_size=4)
    whole = tiny_model("llama", num_hidden_layers=4)
    expected = prune(whole, ids, **options)
    folder = tmp_path / "run.partial"
    killed = tiny_model("llama", num_hidden_layers=4)
    with pytest.raises(KeyboardInterrupt):
        prune(killed, ids, **options, checkpoint=_dying(folder, die_after=2))
    assert sorted(p.name for p in folder.iterdir()) == ["block-00000.safetensors", "block-00001.safetensors", "state.json"]
    with pytest.raises(ConfigError, match="pass resume=True"):
        prune(tiny_model("llama", num_hidden_layers=4), ids, **options, checkpoint=BlockCheckpoint(folder))
    fresh = tiny_model("llama", num_hidden_layers=4)  # a new process: the dense model again
    resumed = prune(fresh, ids, **options, checkpoint=BlockCheckpoint(folder, resume=True))
    for (name, a), (_, b) in zip(whole.state_dict().items(), fresh.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert resumed.targets == expected.targets and resumed.achieved == expected.achieved
    assert not folder.exists()  # removed once the run is complete


def test_a_checkpoint_of_another_run_is_refused_naming_the_difference(tmp_path):
    ids = tokens(6, 32)
    folder = tmp_path / "run.partial"
    with pytest.raises(KeyboardInterrupt):
        prune(
            tiny_model("llama", num_hidden_layers=3),
            ids,
            method=wanda,
            sparsity=0.5,
            batch_size=4,
            checkpoint=_dying(folder, die_after=1),
        )
    state = (folder / "state.json").read_bytes()
    with pytest.raises(StateMismatchError, match="belongs to another run: its sparsity is 0.5, this run's is 0.6"):
        prune(
            tiny_model("llama", num_hidden_layers=3),
            ids,
            method=wanda,
            sparsity=0.6,
            batch_size=4,
            checkpoint=BlockCheckpoint(folder, resume=True),
        )
    with pytest.raises(StateMismatchError, match="its tokens is"):
        prune(
            tiny_model("llama", num_hidden_layers=3),
            tokens(6, 32) + 1,
            method=wanda,
            sparsity=0.5,
            batch_size=4,
            checkpoint=BlockCheckpoint(folder, resume=True),
        )
    assert (folder / "state.json").read_bytes() == state  # nothing overwritten
