"""Find a causal LM's stack of decoder blocks and the linear projections inside each block.

Nothing here keys on a class name: the stack is the longest ``nn.ModuleList`` whose children all
share one class and one parameter layout, and the projections are the ``nn.Linear`` modules and
the transposed ``Conv1D`` modules of ``transformers`` (GPT-2) inside a block.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from prunekit.errors import ConfigError


def _conv1d_type() -> type | None:
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # transformers is optional for plain torch models
        return None
    return Conv1D


def is_projection(module: nn.Module) -> bool:
    """Whether ``module`` is a weight matrix prunekit's LLM methods prune (``nn.Linear`` or ``transformers``' ``Conv1D``).

    Example::

        is_projection(nn.Linear(4, 4))  # True
    """
    conv1d = _conv1d_type()
    return isinstance(module, nn.Linear) or (conv1d is not None and isinstance(module, conv1d))


def is_transposed(module: nn.Module) -> bool:
    """Whether ``module`` stores its weight as ``[in, out]`` (``Conv1D``) instead of ``[out, in]`` (``nn.Linear``)."""
    conv1d = _conv1d_type()
    return conv1d is not None and isinstance(module, conv1d)


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """The projection's weight as an ``[out_features, in_features]`` view (a transposed view for ``Conv1D``).

    Example::

        weight_matrix(nn.Linear(4, 3)).shape  # torch.Size([3, 4])
    """
    return module.weight.t() if is_transposed(module) else module.weight


def set_weight_matrix(module: nn.Module, matrix: torch.Tensor) -> None:
    """Write an ``[out_features, in_features]`` matrix into the projection, in its own layout and dtype."""
    with torch.no_grad():
        target = module.weight
        value = matrix.t() if is_transposed(module) else matrix
        target.copy_(value.to(dtype=target.dtype, device=target.device))


def in_features(module: nn.Module) -> int:
    """The projection's input width (columns of :func:`weight_matrix`)."""
    return int(weight_matrix(module).shape[1])


@dataclass(frozen=True)
class DecoderStack:
    """Where a causal LM keeps its decoder blocks.

    ``path`` is the qualified name of the ``ModuleList`` (``"model.layers"``, ``"transformer.h"``),
    ``blocks`` the list itself, and ``projections[i]`` the qualified names (relative to the block)
    of the projections inside block ``i``, in module order.

    Example::

        stack = find_decoder_stack(model)
        stack.path, len(stack.blocks), stack.projections[0]
    """

    path: str
    blocks: nn.ModuleList
    projections: tuple[tuple[str, ...], ...]

    def block_name(self, index: int) -> str:
        """The qualified name of block ``index``, e.g. ``"model.layers.3"``."""
        return f"{self.path}.{index}" if self.path else str(index)

    def projection_names(self, index: int) -> list[str]:
        """The qualified names (relative to the model) of block ``index``'s projections."""
        return [f"{self.block_name(index)}.{name}" for name in self.projections[index]]


def _layout(module: nn.Module) -> tuple:
    return (type(module), tuple((name, tuple(p.shape)) for name, p in module.named_parameters()))


def _block_projections(block: nn.Module) -> tuple[str, ...]:
    return tuple(name for name, module in block.named_modules() if name and is_projection(module))


def find_decoder_stack(model: nn.Module) -> DecoderStack:
    """Find the decoder blocks of ``model``: the longest ``ModuleList`` of identical blocks holding projections.

    Raises :class:`~prunekit.errors.ConfigError` listing the ``ModuleList`` candidates seen when
    none holds at least one block with a ``Linear``/``Conv1D`` projection.

    Example::

        stack = find_decoder_stack(AutoModelForCausalLM.from_config(LlamaConfig(num_hidden_layers=2)))
        stack.path  # "model.layers"
    """
    seen: list[str] = []
    best: tuple[tuple[int, int], str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        children = list(module)
        layouts = {_layout(child) for child in children}
        projections = _block_projections(children[0])
        seen.append(
            f"{name or '<root>'} ({len(children)} x {type(children[0]).__name__}, "
            f"{'identical' if len(layouts) == 1 else 'mixed'}, {len(projections)} projections)"
        )
        if len(layouts) != 1 or not projections:
            continue
        size = sum(p.numel() for p in module.parameters())
        key = (len(children), size)
        if best is None or key > best[0]:
            best = (key, name, module)
    if best is None:
        listing = "; ".join(seen) if seen else "no nn.ModuleList at all"
        raise ConfigError(
            f"found no stack of decoder blocks in {type(model).__name__}: prunekit.llm looks for the longest nn.ModuleList "
            f"of identical blocks holding nn.Linear or transformers Conv1D projections; seen: {listing}"
        )
    _, path, blocks = best
    return DecoderStack(path=path, blocks=blocks, projections=tuple(_block_projections(block) for block in blocks))
