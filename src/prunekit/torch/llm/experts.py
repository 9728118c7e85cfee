"""Fused expert tensors: learn how a block's forward uses each 3-D parameter, and collect per-expert statistics.

Mixture-of-experts blocks keep their experts as one ``[E, a, b]`` parameter used per expert. Nothing
here keys on a class or attribute name: while the block runs its calibration forward under
:class:`ExpertUses` (a ``TorchFunctionMode``), a 2-D slice ``param[e]`` (``select``/``unbind`` too)
fed to ``linear`` has its inputs along the slice's last dim, one fed to ``matmul``/``@``/``mm`` along
its first dim; the whole (possibly transposed) tensor fed to ``grouped_mm`` with ``offs`` gives
each expert its run of rows, and fed to ``bmm``/``@`` with an ``[E, tokens, in]`` batch its row ``e``; a whole 2-D parameter fed to ``linear``/``matmul`` (a router's weight) is one
projection. Any other use leaves the tensor dense. A 2-D parameter only ever indexed
by expert (a stacked bias) is no weight matrix.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from prunekit.torch.llm.statistics import InputStatistics

_SLICES = {"__getitem__", "select", "unbind"}
_SWAPS = {"transpose", "swapaxes", "swapdims"}
_LINEAR = {"linear"}
_MATMUL = {"matmul", "__matmul__", "mm"}
_GROUPED = {"grouped_mm", "_grouped_mm"}
_BATCHED = {"bmm", "matmul", "__matmul__"}
_METADATA = {"size", "dim", "numel", "__len__", "is_floating_point", "data_ptr", "stride", "element_size"}


@dataclass(frozen=True)
class _View:
    """A tracked tensor: parameter ``name``, one expert's slice (``expert``) or the whole, last two dims ``swapped``."""

    name: str
    expert: int | None
    swapped: bool


def expert_slice_name(param: str, expert: int) -> str:
    """The name of one expert's slice in reports, e.g. ``"model.layers.3.mlp.experts.gate_up_proj[5]"``."""
    return f"{param}[{expert}]"


def fused_candidates(block: nn.Module, owned: set[str]) -> dict[str, nn.Parameter]:
    """The block's parameters of 2 or more dims that belong to no projection (``owned`` holds ``"<proj>.weight"``)."""
    return {n: p for n, p in block.named_parameters() if p.dim() >= 2 and n not in owned}


def stacked_matrices(param: torch.Tensor) -> bool:
    """Whether ``param`` may hold one matrix per expert: 3-D with both matrix sides above 1 (a depthwise
    convolution's ``[C, 1, K]`` weight is no stack of projections)."""
    return param.dim() == 3 and min(param.shape[1:]) > 1


class ExpertUses(TorchFunctionMode):
    """Watch a block's forward: which fused parameters are used per expert, in which layout, with which inputs.

    ``layout[name]`` is True when ``param[e]`` is stored ``[in, out]`` (used as ``x @ W[e]``) and False when
    ``[out, in]`` (``linear(x, W[e])``); ``stats[(name, e)]`` sums the inputs routed to expert ``e``
    (``statistics`` ``"none"`` learns the layout only); ``dense`` names parameters used any other way and
    ``vectors`` the 2-D ones only indexed by expert.

    Example::

        with ExpertUses(fused_candidates(block, owned), "norms") as uses:
            block(hidden)
        uses.pruneable()  # {"mlp.experts.gate_up_proj": False, ...}
    """

    def __init__(self, params: dict[str, nn.Parameter], statistics: str) -> None:
        super().__init__()
        self.params = {id(p): (n, p) for n, p in params.items()}
        self.statistics = statistics
        self.stats: dict[tuple[str, int | None], InputStatistics] = {}
        self.layout: dict[str, bool] = {}
        self.dense: set[str] = set()
        self.vector_uses: set[str] = set()
        self._views: dict[int, tuple[torch.Tensor, _View]] = {}

    def new_batch(self) -> None:
        """Forget the previous batch's slices (their memory may be reused)."""
        self._views = {}

    def pruneable(self) -> dict[str, bool]:
        """The parameters whose every use was a projection (per expert for 3-D ones), with their layout."""
        return {n: t for n, t in self.layout.items() if n not in self.dense}

    def vectors(self) -> set[str]:
        """The 2-D parameters only ever indexed by expert (stacked biases): no weight matrix to prune."""
        return self.vector_uses - self.dense

    def _lookup(self, value: Any) -> _View | None:
        if not isinstance(value, torch.Tensor):
            return None
        if id(value) in self.params and self.params[id(value)][1] is value:
            return _View(self.params[id(value)][0], None, False)
        held = self._views.get(id(value))
        return held[1] if held is not None and held[0] is value else None

    def __torch_function__(self, func: Callable[..., Any], types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in _METADATA:
            return func(*args, **kwargs)
        tracked = [v for v in (self._lookup(a) for a in tree_flatten((args, kwargs))[0]) if v is not None]
        out = func(*args, **kwargs)
        if not tracked:
            return out
        first = self._lookup(args[0]) if args else None
        weight = self._lookup(args[1]) if len(args) > 1 else None
        if name == "__get__" and not isinstance(out, torch.Tensor):
            return out
        if first is not None and first.expert is None and len(tracked) == 1 and self._derive(name, first, args, kwargs, out):
            return out
        if weight is not None and len(tracked) == 1 and self._consume(name, weight, args, kwargs):
            return out
        self.dense.update(v.name for v in tracked)
        return out

    def _derive(self, name: str, view: _View, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> bool:
        """Record a per-expert slice or a transposed view of a whole parameter; False for any other use."""
        ndim = args[0].dim()
        if ndim == 2 and name in _SLICES | {"index_select"}:
            self.vector_uses.add(view.name)
            return True
        if ndim != 3:
            return False
        if name in _SWAPS:
            dims = sorted(d % 3 for d in (list(args[1:3]) or [kwargs.get("dim0"), kwargs.get("dim1")]))
            if dims != [1, 2]:
                return False
            self._hold(out, _View(view.name, None, not view.swapped))
            return True
        if name == "unbind" and _dim(args, kwargs) == 0:
            for expert, piece in enumerate(out):
                self._hold(piece, _View(view.name, expert, view.swapped))
            return True
        index = args[1] if name == "__getitem__" else args[2] if len(args) > 2 else kwargs.get("index")
        if name == "select" and _dim(args, kwargs) != 0:
            return False
        if name in ("__getitem__", "select") and _scalar(index) is not None:
            self._hold(out, _View(view.name, _scalar(index), view.swapped))
            return True
        return False

    def _consume(self, name: str, view: _View, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
        """Add the inputs of a projection by a tracked weight; False for an op that is none."""
        x = args[0]
        whole_matrix = view.expert is None and args[1].dim() == 2  # a 2-D parameter used as one projection (a router)
        if (view.expert is not None or whole_matrix) and name in _LINEAR | _MATMUL and isinstance(x, torch.Tensor):
            stored_in_out = view.swapped if name in _LINEAR else not view.swapped
            if not self._set_layout(view.name, stored_in_out):
                return False
            self._add(view.name, view.expert, x)
            return True
        stacked = view.expert is None and args[1].dim() == 3 and isinstance(x, torch.Tensor)
        if stacked and name in _BATCHED and x.dim() == 3 and x.shape[0] == args[1].shape[0]:
            if not self._set_layout(view.name, not view.swapped):
                return False
            for expert in range(x.shape[0]):
                self._add(view.name, expert, x[expert])
            return True
        if view.expert is None and name in _GROUPED and isinstance(x, torch.Tensor) and x.dim() == 2:
            offs = args[2] if len(args) > 2 else kwargs.get("offs")
            if not isinstance(offs, torch.Tensor) or not self._set_layout(view.name, not view.swapped):
                return False
            start = 0
            for expert, end in enumerate(offs.tolist()):
                if end > start:
                    self._add(view.name, expert, x[start:end])
                start = end
            return True
        return False

    def _set_layout(self, name: str, stored_in_out: bool) -> bool:
        if self.layout.setdefault(name, stored_in_out) != stored_in_out:
            self.dense.add(name)
            return False
        return True

    def _add(self, name: str, expert: int | None, x: torch.Tensor) -> None:
        if self.statistics == "none":
            return
        key = (name, expert)
        if key not in self.stats:
            self.stats[key] = InputStatistics(features=x.shape[-1], hessian=self.statistics == "hessian")
        self.stats[key].add(x)

    def _hold(self, tensor: Any, view: _View) -> None:
        if isinstance(tensor, torch.Tensor) and tensor.dim() == (2 if view.expert is not None else 3):
            self._views[id(tensor)] = (tensor, view)


def _dim(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    value = args[1] if len(args) > 1 else kwargs.get("dim", 0)
    return int(value) if isinstance(value, int) else -1


def _scalar(index: Any) -> int | None:
    """``index`` as one expert number (an int or a 0-d integer tensor), else None."""
    if isinstance(index, int) and not isinstance(index, bool):
        return index
    if isinstance(index, torch.Tensor) and index.dim() == 0 and not index.is_floating_point():
        return int(index)
    return None


def expert_matrix(param: torch.Tensor, expert: int | None, stored_in_out: bool) -> torch.Tensor:
    """Expert ``expert``'s slice of ``param`` (the whole 2-D ``param`` for ``None``) as an ``[out, in]`` view."""
    piece = param if expert is None else param[expert]
    return piece.t() if stored_in_out else piece


def set_expert_matrix(param: torch.Tensor, expert: int | None, stored_in_out: bool, matrix: torch.Tensor) -> None:
    """Write an ``[out, in]`` matrix into expert ``expert``'s slice (all of a 2-D ``param`` for ``None``), in its
    layout and dtype."""
    with torch.no_grad():
        target = param if expert is None else param[expert]
        target.copy_((matrix.t() if stored_in_out else matrix).to(dtype=target.dtype, device=target.device))
