"""Parameters sharded as DTensors (FSDP2's ``fully_shard``): whole tensors for mask selection, masks sharded like them.

Every helper leaves a plain tensor as it is. None imports ``torch.distributed.tensor`` (close to a
second): a tensor can only be a DTensor once that module is loaded, so until then nothing is sharded.
"""

from __future__ import annotations

import sys
from collections.abc import Hashable

import torch
from torch import nn

from prunekit.errors import ConfigError


def is_dtensor(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is a ``torch.distributed.tensor.DTensor`` (FSDP2 and tensor-parallel parameters are).

    Example::

        is_dtensor(torch.zeros(3))  # False
    """
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(tensor, module.DTensor)


def full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor as a plain tensor: a DTensor is all-gathered (a collective: call on every rank).

    Example::

        scores = full(param.detach().abs())  # identical on every rank
    """
    return tensor.full_tensor() if is_dtensor(tensor) else tensor


def shard_like(whole: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """``whole`` (the parameter's full shape) laid out like ``param``: this rank's shard when ``param`` is a DTensor.

    Nothing is communicated: every rank must pass the same ``whole``.

    Example::

        mask = shard_like(torch.ones(param.shape), param)  # mask * param multiplies matching shards
    """
    if not is_dtensor(param):
        return whole
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(whole, param.device_mesh, param.placements, src_data_rank=None)


def count_zeros(tensor: torch.Tensor) -> int:
    """Exact zeros in ``tensor``, over all shards of a DTensor (an all-reduce: call on every rank).

    Example::

        count_zeros(torch.tensor([0.0, 1.0, 0.0]))  # 2
    """
    return int(full((tensor == 0).sum()))


def layout(tensor: torch.Tensor) -> Hashable:
    """What tensors must share to be multiplied in one ``torch._foreach_*`` call: the device mesh, or ``None``.

    Example::

        layout(torch.zeros(3))  # None
    """
    return tensor.device_mesh if is_dtensor(tensor) else None


def check_not_fsdp1(model: nn.Module) -> None:
    """Raise :class:`ConfigError` for a model wrapped by FSDP1, whose flattened shards hide each weight's shape.

    Example::

        check_not_fsdp1(model)  # passes for plain, DDP and fully_shard (FSDP2) models
    """
    module = sys.modules.get("torch.distributed.fsdp")
    wrapper = getattr(module, "FullyShardedDataParallel", None)
    if wrapper is not None and any(isinstance(m, wrapper) for m in model.modules()):
        raise ConfigError(
            "Pruner does not support FullyShardedDataParallel (FSDP1): its flat parameters hide each weight's "
            "shape; shard with torch.distributed.fsdp.fully_shard (FSDP2) and build the Pruner after it"
        )
