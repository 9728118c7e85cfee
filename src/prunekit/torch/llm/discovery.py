"""Find a causal LM's stack of decoder blocks and the linear projections inside each block.

Nothing here keys on a class name: the stack is an outermost ``nn.ModuleList`` whose every child
holds projections, and the projections are the ``nn.Linear`` modules and the transposed ``Conv1D``
modules of ``transformers`` (GPT-2) inside a block. The blocks need not be identical: hybrid stacks
(attention and state-space blocks), dense-then-MoE stacks and per-layer-type blocks are one stack.
Among several such lists (a vision tower beside the language model, an audio encoder) the one
nearest the input embeddings in the module tree wins, then the shallowest, the longest, the largest.
A model whose layers are split over parallel lists indexed together by its forward (XLM's
``attentions[i]``, ``ffns[i]``) gets a stack of their units, layer by layer, in list order.
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
    of the projections inside block ``i``, in module order. When the layers are split over parallel
    lists of equal length (``lists``: ``"transformer.attentions"``, ``"transformer.ffns"``...), the
    blocks are the units holding projections, layer by layer in list order, ``names`` their qualified
    names and ``path`` the lists' parent; the model's forward runs the code between them, so such a
    stack is replayed through that forward (:class:`~prunekit.torch.llm.replay.ForwardReplay`).

    Example::

        stack = find_decoder_stack(model)
        stack.path, len(stack.blocks), stack.projections[0]
    """

    path: str
    blocks: nn.ModuleList
    projections: tuple[tuple[str, ...], ...]
    names: tuple[str, ...] = ()
    lists: tuple[str, ...] = ()

    @property
    def parallel(self) -> bool:
        """Whether the blocks are units of parallel lists (whose forward code lives in the model's forward)."""
        return bool(self.lists)

    def block_name(self, index: int) -> str:
        """The qualified name of block ``index``, e.g. ``"model.layers.3"`` (``"transformer.ffns.1"`` for a unit)."""
        if self.names:
            return self.names[index]
        return f"{self.path}.{index}" if self.path else str(index)

    def projection_names(self, index: int) -> list[str]:
        """The qualified names (relative to the model) of block ``index``'s projections."""
        return [f"{self.block_name(index)}.{name}" for name in self.projections[index]]


def _block_projections(block: nn.Module) -> tuple[str, ...]:
    return tuple(name for name, module in block.named_modules() if name and is_projection(module))


def _shared_depth(a: str, b: str) -> int:
    """How many leading name parts ``a`` and ``b`` share."""
    depth = 0
    for x, y in zip(a.split("."), b.split("."), strict=False):
        if x != y:
            break
        depth += 1
    return depth


def _inside(name: str, other: str) -> bool:
    """Whether module ``name`` lies strictly inside module ``other`` (``""`` is the root)."""
    return name != other and (other == "" or name.startswith(f"{other}."))


def _input_embedding_name(model: nn.Module) -> str:
    getter = getattr(model, "get_input_embeddings", None)
    try:
        embeddings = getter() if callable(getter) else None
    except (NotImplementedError, AttributeError):
        embeddings = None
    for name, module in model.named_modules():
        if embeddings is not None and module is embeddings:
            return name
    return next((name for name, module in model.named_modules() if isinstance(module, nn.Embedding)), "")


def find_decoder_stack(model: nn.Module) -> DecoderStack:
    """Find the decoder blocks of ``model``: the outermost ``ModuleList`` of blocks that all hold projections.

    When several qualify, the one sharing the longest module path with the input embeddings wins
    (the language model, not a vision or audio tower), then the shallowest, then the longest and
    the largest. Raises :class:`~prunekit.errors.ConfigError` naming the model and listing the
    ``ModuleList`` candidates seen when none qualifies.

    Example::

        stack = find_decoder_stack(AutoModelForCausalLM.from_config(LlamaConfig(num_hidden_layers=2)))
        stack.path  # "model.layers"
    """
    seen: list[str] = []
    candidates: list[tuple[str, nn.ModuleList]] = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        children = list(module)
        counts = [len(_block_projections(child)) for child in children]
        classes = sorted({type(child).__name__ for child in children})
        spread = f"{min(counts)}" if min(counts) == max(counts) else f"{min(counts)}-{max(counts)}"
        seen.append(f"{name or '<root>'} ({len(children)} x {'/'.join(classes)}, {spread} projections per block)")
        if min(counts) > 0:
            candidates.append((name, module))
    outermost = [(name, blocks) for name, blocks in candidates if not any(_inside(name, other) for other, _ in candidates)]
    if not outermost:
        listing = "; ".join(seen) if seen else "no nn.ModuleList at all"
        raise ConfigError(
            f"found no stack of decoder blocks in {type(model).__name__}: prunekit.llm looks for an nn.ModuleList whose "
            f"every block holds nn.Linear or transformers Conv1D projections; seen: {listing}. Pass a model whose "
            "decoder layers live in an nn.ModuleList"
        )
    embedding = _input_embedding_name(model)

    def rank(item: tuple[str, nn.ModuleList]) -> tuple[int, int, int, int]:
        name, blocks = item
        size = sum(p.numel() for p in blocks.parameters())
        return (_shared_depth(name, embedding), -name.count("."), len(blocks), size)

    path, blocks = max(outermost, key=rank)
    parallel = _parallel_lists(model, path, len(blocks))
    holding = [(name, lst) for name, lst in parallel if all(_block_projections(child) for child in lst)]
    if len(holding) > 1:
        units = [(f"{name}.{i}", lst[i]) for i in range(len(blocks)) for name, lst in holding]
        return DecoderStack(
            path=path.rpartition(".")[0],
            blocks=nn.ModuleList([unit for _, unit in units]),
            projections=tuple(_block_projections(unit) for _, unit in units),
            names=tuple(name for name, _ in units),
            lists=tuple(name for name, _ in parallel),
        )
    return DecoderStack(path=path, blocks=blocks, projections=tuple(_block_projections(block) for block in blocks))


def _parallel_lists(model: nn.Module, path: str, length: int) -> list[tuple[str, nn.ModuleList]]:
    """The ``ModuleList`` children of ``path``'s parent as long as it (``path`` among them), by qualified name."""
    parent = path.rpartition(".")[0]
    return [
        (f"{parent}.{name}" if parent else name, child)
        for name, child in model.get_submodule(parent).named_children()
        if isinstance(child, nn.ModuleList) and len(child) == length
    ]


def require_whole_blocks(model: nn.Module, stack: DecoderStack, job: str) -> None:
    """Refuse ``job`` (depth or width pruning, a block replayed alone) on a stack split over parallel lists.

    Such a model's forward runs code of its own between the units (residuals, norms) and loops over
    the lists by a count it keeps, so a unit cannot run alone nor a layer be removed by removing a block.

    Example::

        require_whole_blocks(model, find_decoder_stack(model), "depth pruning")
    """
    if stack.parallel:
        raise ConfigError(
            f"{job} needs whole decoder blocks in one nn.ModuleList, but {type(model).__name__} splits its layers over "
            f"the parallel lists {', '.join(repr(name) for name in stack.lists)}, indexed together by its forward; "
            "unstructured and N:M pruning (prunekit.llm.prune) work on it, or prune it with prunekit.torch's structured engine"
        )
