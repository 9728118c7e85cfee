"""Dynamic sparsity under DDP and FSDP2: two gloo ranks on different data choose identical masks at every update."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel

from prunekit.torch import DigitsCNN
from prunekit.torch.unstructured.dynamic import DynamicPruner

STEPS = 24
RUNS = {"ddp_set": ("ddp", "set"), "ddp_rigl": ("ddp", "rigl"), "fsdp2_rigl": ("fsdp2", "rigl")}


def _wrap(kind: str, model: nn.Module) -> nn.Module:
    if kind == "ddp":
        return DistributedDataParallel(model)
    for layer in (model.conv2, model.fc1):
        fully_shard(layer)
    return fully_shard(model)


def _run(rank: int, kind: str, regrow: str) -> dict:
    torch.manual_seed(0)
    model = _wrap(kind, DigitsCNN())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    pruner = DynamicPruner(model, 0.8, regrow=regrow, end_step=STEPS, update_interval=4, optimizer=optimizer)
    pruner.prune()
    generator = torch.Generator().manual_seed(100 + rank)  # each rank sees different data
    masks_per_update = []
    for step in range(STEPS):
        x, y = torch.randn(8, 1, 8, 8, generator=generator), torch.randint(0, 10, (8,), generator=generator)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        pruner.step()
        if pruner.regrowth.is_update(step):
            masks_per_update.append({name: _whole(mask) for name, mask in pruner.masks.items()})
    return {"masks": masks_per_update, "history": pruner.history}


def _whole(mask: torch.Tensor) -> torch.Tensor:
    return mask.full_tensor() if hasattr(mask, "full_tensor") else mask


def _worker(rank: int, directory: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{directory}/store", rank=rank, world_size=2)
    torch.save({run: _run(rank, *RUNS[run]) for run in RUNS}, f"{directory}/rank{rank}.pt")
    dist.destroy_process_group()


def test_ddp_ranks_choose_identical_masks_at_every_update(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path),), nprocs=2, join=True)
    first, second = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))
    for run in RUNS:
        ours, theirs = first[run], second[run]
        assert len(ours["masks"]) == 5  # updates at steps 4, 8, 12, 16, 20
        for update, (a, b) in enumerate(zip(ours["masks"], theirs["masks"])):
            for name in a:
                assert torch.equal(a[name], b[name]), (run, update, name)
        assert ours["history"] == theirs["history"]
        assert sum(ours["history"][0]["regrown"].values()) > 0
