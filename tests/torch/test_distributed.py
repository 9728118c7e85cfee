"""DDP and FSDP2: two real processes (gloo on CPU) prune identically and stay in sync."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.distributed.fsdp import FullyShardedDataParallel, fully_shard
from torch.nn.parallel import DistributedDataParallel

from prunekit import ConfigError, PolynomialDecay
from prunekit.torch import NM, DigitsCNN, Pruner

WORLD_SIZE = 2
STEPS = 25
PER_RANK_BATCH = 8
PRUNABLE = ["conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight"]
CONFIGS = {
    "global": {"scope": "global"},
    "layer_taylor": {"scope": "layer", "importance": "taylor"},
    "layer_nm": {"scope": "layer", "pattern": NM(2, 4), "exclude": ["conv1.weight"]},  # conv1 has 1 input channel
}


def _init(rank: int, directory: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{directory}/store", rank=rank, world_size=WORLD_SIZE)


def _worker(rank: int, world_size: int, directory: str) -> None:
    _init(rank, directory)
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


# ---------------------------------------------------------------- FSDP2 (fully_shard)
def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The global batches of every step; rank r trains on the r-th slice of each."""
    generator = torch.Generator().manual_seed(100)
    size = PER_RANK_BATCH * WORLD_SIZE
    return [
        (torch.randn(size, 1, 8, 8, generator=generator), torch.randint(0, 10, (size,), generator=generator))
        for _ in range(STEPS)
    ]


def _pruner(model: nn.Module, config: str, optimizer: torch.optim.Optimizer | None = None) -> Pruner:
    return Pruner(model, PolynomialDecay(0.0, 0.7, 0, 20, frequency=5), optimizer=optimizer, **CONFIGS[config])


def _fsdp1_error() -> str:
    with pytest.raises(ConfigError) as error:
        Pruner(FullyShardedDataParallel(nn.Sequential(nn.Linear(4, 4)), device_id=torch.device("cpu")), 0.5)
    return str(error.value)


def _train_sharded(rank: int, config: str) -> dict:
    torch.manual_seed(0)
    model = DigitsCNN()
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            fully_shard(module)
    fully_shard(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    pruner = _pruner(model, config, optimizer)
    for x, y in _batches():
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x.chunk(WORLD_SIZE)[rank]), y.chunk(WORLD_SIZE)[rank]).backward()
        optimizer.step()
        pruner.step()
    state = pruner.state_dict()
    resumed = _pruner(model, config)
    resumed.load_state_dict(state)
    shards = {
        name: {
            "weight": p.to_local(),
            "mask": pruner.masks[name].to_local(),
            "momentum": optimizer.state[p]["momentum_buffer"].to_local(),
            "resumed_mask": resumed.masks[name].to_local(),
        }
        for name, p in pruner.params.items()
    }
    return {
        "state": state,
        "shards": shards,
        "sparsity": pruner.sparsity(),
        "params": {name: p.full_tensor() for name, p in model.named_parameters()},
        "resumed_step": resumed.step_count,
    }


def _sparsity_with_one_sharded_layer() -> dict[str, float]:
    """Only fc1 sharded: its weight is a DTensor, the others plain tensors, masked in the same steps."""
    torch.manual_seed(0)
    model = DigitsCNN()
    fully_shard(model.fc1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    pruner = Pruner(model, 0.5, optimizer=optimizer)
    pruner.step()
    nn.functional.cross_entropy(model(torch.randn(4, 1, 8, 8)), torch.arange(4)).backward()
    optimizer.step()
    return pruner.sparsity()


def _fsdp_worker(rank: int, directory: str) -> None:
    _init(rank, directory)
    result = {config: _train_sharded(rank, config) for config in CONFIGS}  # one spawn: starting processes is slow
    result["fsdp1_error"] = _fsdp1_error()
    result["one_sharded_layer"] = _sparsity_with_one_sharded_layer()
    torch.save(result, f"{directory}/rank{rank}.pt")
    dist.destroy_process_group()


def _one_process_run(config: str) -> tuple[nn.Module, Pruner]:
    """The same training in one process: each rank's slice is a separate forward (BN batch statistics
    per slice, as on the ranks) and the gradient is their mean, as FSDP's reduce-scatter makes it.
    One thread, as on the ranks, so convolution gradients are summed in the same order."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = DigitsCNN()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        pruner = _pruner(model, config, optimizer)
        for x, y in _batches():
            optimizer.zero_grad()
            slices = zip(x.chunk(WORLD_SIZE), y.chunk(WORLD_SIZE))
            (sum(nn.functional.cross_entropy(model(xs), ys) for xs, ys in slices) / WORLD_SIZE).backward()
            optimizer.step()
            pruner.step()
    finally:
        torch.set_num_threads(threads)
    return model, pruner


@pytest.fixture(scope="module")
def fsdp_ranks(tmp_path_factory) -> list[dict]:
    """What each of the two ranks saved: per config, the FSDP1 error and the one-sharded-layer sparsity."""
    directory = tmp_path_factory.mktemp("fsdp")
    mp.spawn(_fsdp_worker, args=(str(directory),), nprocs=WORLD_SIZE, join=True)
    return [torch.load(directory / f"rank{r}.pt", weights_only=False) for r in range(WORLD_SIZE)]


@pytest.fixture
def fsdp_run(fsdp_ranks):
    """``fsdp_run(config)``: what each rank saved for that config."""
    return lambda config: [rank[config] for rank in fsdp_ranks]


@pytest.mark.parametrize("config", list(CONFIGS))
def test_fsdp2_ranks_end_with_identical_whole_masks(fsdp_run, config):
    first, second = (rank["state"]["masks"] for rank in fsdp_run(config))
    assert list(first) == (PRUNABLE[1:] if config == "layer_nm" else PRUNABLE)
    for name in first:
        assert first[name].dtype == torch.bool and first[name].shape == second[name].shape
        assert torch.equal(first[name], second[name]), name


def test_fsdp2_global_scope_prunes_exactly_round_s_n_weights_in_all(fsdp_run):
    masks = fsdp_run("global")[0]["state"]["masks"]
    total = sum(m.numel() for m in masks.values())
    assert total == 288 + 18432 + 131072 + 1280
    assert sum(int((~m).sum()) for m in masks.values()) == round(0.7 * total)


def test_fsdp2_layer_scope_prunes_exactly_round_s_n_weights_of_each_tensor(fsdp_run):
    for name, mask in fsdp_run("layer_taylor")[0]["state"]["masks"].items():
        assert int((~mask).sum()) == round(0.7 * mask.numel()), name


def test_fsdp2_nm_keeps_exactly_two_of_every_four_weights(fsdp_run):
    for name, mask in fsdp_run("layer_nm")[0]["state"]["masks"].items():
        groups = mask.flatten(2).transpose(1, 2).reshape(-1, 4) if mask.dim() == 4 else mask.reshape(-1, 4)
        assert (groups.sum(dim=1) == 2).all(), name


@pytest.mark.parametrize("config", list(CONFIGS))
def test_fsdp2_every_shard_is_zero_and_has_zero_momentum_where_pruned(fsdp_run, config):
    ranks = fsdp_run(config)
    for name, whole in ranks[0]["state"]["masks"].items():
        assert torch.equal(torch.cat([rank["shards"][name]["mask"] for rank in ranks]), whole), name
        for rank in ranks:
            shard = rank["shards"][name]
            assert (shard["weight"][~shard["mask"]] == 0).all(), name
            assert (shard["weight"][shard["mask"]] != 0).all(), name
            assert (shard["momentum"][~shard["mask"]] == 0).all(), name


def test_fsdp2_sparsity_counts_the_zeros_of_all_shards(fsdp_run):
    ranks = fsdp_run("global")
    for name, whole in ranks[0]["state"]["masks"].items():
        expected = float((~whole).sum()) / whole.numel()
        assert [rank["sparsity"][name] for rank in ranks] == [expected] * WORLD_SIZE, name


@pytest.mark.parametrize("config", list(CONFIGS))
def test_fsdp2_training_matches_one_process_bitwise(fsdp_run, config):
    ranks = fsdp_run(config)
    model, pruner = _one_process_run(config)
    for name, mask in pruner.masks.items():
        assert torch.equal(ranks[0]["state"]["masks"][name], mask), name
    for name, param in model.named_parameters():
        for rank in ranks:
            assert torch.equal(rank["params"][name], param.detach()), name


def test_fsdp2_state_resumes_on_two_ranks_and_in_one_process(fsdp_run):
    ranks = fsdp_run("global")
    for rank in ranks:
        assert rank["resumed_step"] == STEPS
        for name, shard in rank["shards"].items():
            assert torch.equal(shard["resumed_mask"], shard["mask"]), name
    model = DigitsCNN()
    model.load_state_dict(ranks[0]["params"], strict=False)  # BN running statistics stay fresh
    resumed = _pruner(model, "global")
    resumed.load_state_dict(ranks[0]["state"])
    assert resumed.step_count == STEPS
    for name, mask in resumed.masks.items():
        assert torch.equal(mask, ranks[0]["state"]["masks"][name]), name
        assert torch.equal(model.get_parameter(name) == 0, ~mask), name


def test_fsdp2_masks_sharded_and_plain_weights_together(fsdp_ranks):
    for rank in fsdp_ranks:
        assert rank["one_sharded_layer"] == dict.fromkeys(PRUNABLE, 0.5)


def test_fsdp1_is_refused_with_a_pointer_to_fully_shard(fsdp_ranks):
    message = fsdp_ranks[0]["fsdp1_error"]
    assert "FullyShardedDataParallel (FSDP1)" in message and "fully_shard (FSDP2)" in message
