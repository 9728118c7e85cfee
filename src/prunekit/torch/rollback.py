"""Undo a failed in-place job: the caller's model is left exactly as it was handed over.

The pruning workflows (``prune_one_shot``, ``prune_iteratively``, ``prune_gradually``,
``train_sparse``) change the model in place — that is their contract, and what makes them cheap
for big models. When one fails midway (a bad loss, an interrupted fine-tuning, out of memory) it
restores every parameter and buffer (values, device and dtype), ``requires_grad`` and each
module's training flag from a snapshot taken before it started, then re-raises.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


@contextlib.contextmanager
def rollback_on_error(model: nn.Module) -> Iterator[None]:
    """Run the block; if it raises (anything, KeyboardInterrupt too), put ``model`` back as it was, then re-raise.

    The snapshot is one copy of every tensor, on the tensor's own device, so it costs one
    model's memory for the duration of the block.

    Example::

        with rollback_on_error(model):
            pruner.prune()
            fit(model, loader, epochs=3, pruner=pruner)   # fails -> model unpruned again
    """
    tensors: list[tuple[torch.Tensor, torch.Tensor, bool]] = []
    seen: set[int] = set()
    for tensor in [*model.parameters(), *model.buffers()]:
        if id(tensor) not in seen:
            seen.add(id(tensor))
            tensors.append((tensor, tensor.detach().clone(), tensor.requires_grad))
    slots = [
        (store, name, tensor)
        for module in model.modules()
        for store in (module._parameters, module._buffers)
        for name, tensor in store.items()
    ]
    modes = [(module, module.training) for module in model.modules()]
    try:
        yield
    except BaseException:
        with torch.no_grad():
            for store, name, tensor in slots:  # a job that replaced a tensor object gets the original back
                store[name] = tensor
            for tensor, saved, requires_grad in tensors:
                tensor.data = saved
                if tensor.is_leaf:
                    tensor.requires_grad_(requires_grad)
                tensor.grad = None
        for module, training in modes:
            module.training = training
        raise
