"""DDP: two real processes (gloo on CPU) prune identically and stay in sync."""

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from prunekit import PolynomialDecay
from prunekit.torch import DigitsCNN, Pruner


def _worker(rank: int, world_size: int, directory: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{directory}/store", rank=rank, world_size=world_size)
    torch.manual_seed(0)
    model = DistributedDataParallel(DigitsCNN())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    pruner = Pruner(model, PolynomialDecay(0.0, 0.7, 0, 20, frequency=5), optimizer=optimizer, scope="global")
    generator = torch.Generator().manual_seed(100 + rank)  # each rank sees different data
    for _ in range(25):
        x, y = torch.randn(8, 1, 8, 8, generator=generator), torch.randint(0, 10, (8,), generator=generator)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        pruner.step()
    params = {name: p.detach() for name, p in model.module.named_parameters()}  # BN running stats are per rank
    torch.save({"masks": pruner.masks, "params": params}, f"{directory}/rank{rank}.pt")
    dist.destroy_process_group()


def test_ddp_ranks_end_with_identical_masks_and_weights(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    first, second = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))
    assert list(first["masks"]) == ["module.conv1.weight", "module.conv2.weight", "module.fc1.weight", "module.fc2.weight"]
    for name in first["masks"]:
        assert torch.equal(first["masks"][name], second["masks"][name]), name
    for name in first["params"]:
        assert torch.equal(first["params"][name], second["params"][name]), name
    pruned = sum(int((~m).sum()) for m in first["masks"].values())
    total = sum(m.numel() for m in first["masks"].values())
    assert pruned == round(0.7 * total)
