"""A pruning workflow that fails midway leaves the caller's model exactly as it was."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit.torch.rollback import rollback_on_error
from prunekit.torch.unstructured.dynamic_training import train_sparse
from prunekit.torch.unstructured.workflows import prune_gradually, prune_iteratively, prune_one_shot


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4)).eval()


def _loader():
    torch.manual_seed(1)
    return [(torch.randn(8, 8), torch.randint(0, 4, (8,))) for _ in range(4)]


class FailingLoss:
    """Cross-entropy that raises on call ``fail_at`` (after some optimizer steps have changed the weights)."""

    def __init__(self, fail_at: int):
        self.calls, self.fail_at = 0, fail_at

    def __call__(self, logits, labels):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("loss blew up")
        return nn.functional.cross_entropy(logits, labels)


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
    "workflow",
    [
        lambda m, loss: prune_one_shot(m, _loader(), 0.8, finetune_epochs=2, loss_fn=loss, progress=False),
        lambda m, loss: prune_iteratively(m, _loader(), 0.8, rounds=2, epochs_per_round=1, loss_fn=loss, progress=False),
        lambda m, loss: prune_gradually(m, _loader(), 0.8, epochs=3, loss_fn=loss, progress=False),
        lambda m, loss: train_sparse(m, _loader(), 0.8, epochs=3, loss_fn=loss, progress=False),
    ],
    ids=["one_shot", "iterative", "gradual", "train_sparse"],
)
def test_a_failed_workflow_leaves_the_model_untouched(workflow):
    model = _model()
    before = _snapshot(model)
    loss = FailingLoss(fail_at=6)
    with pytest.raises(RuntimeError, match="loss blew up"):
        workflow(model, loss)
    assert loss.calls == 6  # it did train (and prune) before failing
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not model.training and all(p.requires_grad and p.grad is None for p in model.parameters())
    assert int((model[0].weight == 0).sum()) == 0


def test_a_successful_workflow_still_prunes_in_place():
    model = _model()
    run = prune_one_shot(model, _loader(), 0.5, finetune_epochs=1, progress=False)
    assert run.model is model
    assert int((model[0].weight == 0).sum()) == 64


def test_rollback_restores_replaced_tensors_and_frozen_flags():
    model = _model()
    model[0].bias.requires_grad_(False)
    weight = model[0].weight
    with pytest.raises(KeyboardInterrupt):
        with rollback_on_error(model):
            model[0].weight = nn.Parameter(torch.zeros(16, 8))
            model[0].bias.requires_grad_(True)
            model.train()
            raise KeyboardInterrupt
    assert model[0].weight is weight and not model[0].bias.requires_grad and not model.training
