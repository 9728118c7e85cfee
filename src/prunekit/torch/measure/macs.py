"""Count multiply-accumulates (MACs) and parameters of a PyTorch model, per layer.

MACs are counted from the operators the model actually runs on the example inputs (a
``TorchDispatchMode`` sees every ATen operator after autograd), and each operator is charged
to the innermost module whose ``forward`` was running. That covers modules and plain function
calls alike: ``nn.Conv*``/``nn.Linear``, ``torch.matmul``/``@``/``einsum``/``bmm`` written in a
custom attention, and ``F.scaled_dot_product_attention``.

What counts (one MAC = one multiply plus one add; FLOPs ≈ 2 × MACs):

* convolution: ``output elements × in_channels/groups × kernel elements``; a transposed
  convolution: ``input elements × out_channels/groups × kernel elements``;
* matrix products (linear, matmul, bmm, einsum, addmm, mv, dot): ``m × k × n`` per matrix;
* attention kernels: ``Q·Kᵀ`` plus ``A·V``, i.e. ``batch × heads × L × S × (E + Ev)``;
* recurrent layers: their input and hidden matrix products at every time step;
* everything else counts 0: normalisation (BatchNorm/LayerNorm/GroupNorm/RMSNorm — foldable
  into the neighbouring layer at inference), activations, pooling, elementwise arithmetic,
  softmax, embeddings (a table lookup) and data movement.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from prunekit.errors import ConfigError
from prunekit.torch.structured.tracing import ExampleInputs, attention_fastpath_disabled, call_model, hook_tables

aten = torch.ops.aten


@dataclass(frozen=True)
class MacsReport:
    """MACs and parameters of a model, in total and per layer.

    Attributes:
        total: multiply-accumulates of one forward pass on the example inputs.
        per_layer: qualified module name -> MACs of the operators run directly inside that
            module's ``forward`` (not in its children). ``""`` is the root module.
        per_layer_params: qualified module name -> parameters the module owns directly
            (shared parameters are counted once, at their first owner).
        layer_types: qualified module name -> class name, for the same keys.

    ``per_layer``, ``per_layer_params`` and ``layer_types`` have the same keys: every module that
    runs MACs or owns parameters, in ``named_modules()`` order.
    """

    total: int
    per_layer: dict[str, int]
    per_layer_params: dict[str, int] = field(default_factory=dict)
    layer_types: dict[str, str] = field(default_factory=dict)

    @property
    def flops(self) -> int:
        """Floating-point operations, counted as 2 × MACs."""
        return 2 * self.total

    @property
    def params(self) -> int:
        """Total parameters (the sum of ``per_layer_params``)."""
        return sum(self.per_layer_params.values())


def count_params(model: nn.Module, nonzero_only: bool = False) -> int:
    """Number of parameters of ``model`` (buffers such as BN running stats are not parameters).

    Shared (tied) parameters count once. With ``nonzero_only=True`` only nonzero entries count,
    which is what unstructured pruning reduces.

    Example::

        count_params(nn.Linear(10, 4))                     # 44
        count_params(nn.Linear(10, 4), nonzero_only=True)  # 44 minus the zeros
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"count_params expects an nn.Module, got {type(model).__name__}")
    if nonzero_only:
        return sum(int(torch.count_nonzero(p.detach())) for p in model.parameters())
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, example_inputs: ExampleInputs) -> MacsReport:
    """Count the multiply-accumulates of one forward pass, in total and per layer.

    ``example_inputs`` is a tensor, a tuple/list of positional inputs, or a dict of keyword
    inputs (``{"input_ids": ...}`` for ``transformers`` models). MACs scale with the batch size
    of the inputs. One MAC is one multiply-add, so FLOPs ≈ 2 × MACs (``report.flops``).
    Convolutions, matrix products and attention count; normalisation, activations, pooling,
    elementwise ops and embeddings count 0 (see the module docstring for the formulas).

    The forward pass runs under ``torch.no_grad()`` on meta or fake tensors (shapes only, so
    counting costs the same for any batch size), or for real when the model's code needs values
    (data-dependent branches); either way the model's parameters, buffers (BatchNorm
    statistics), attributes and training mode are as they were afterwards.

    Example::

        report = count_macs(nn.Conv2d(3, 8, 3, padding=1), torch.zeros(1, 3, 32, 32))
        report.total  # 1 * 8 * 32 * 32 * 3 * 3 * 3 = 221184
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"count_macs expects an nn.Module, got {type(model).__name__}")
    names = {module: name for name, module in model.named_modules()}
    for strategy in ("meta", "fake"):
        try:
            macs = _count(model, example_inputs, names, strategy)
            break
        except Exception:
            continue  # the model needs real values (or the inputs are wrong): try the next way
    else:
        macs = _count(model, example_inputs, names, "real")
    return _report(model, names, macs)


# --- running the model ---------------------------------------------------------------------


def _count(model: nn.Module, example_inputs: ExampleInputs, names: dict[nn.Module, str], strategy: str) -> dict[str, int]:
    """MACs per module name from one forward pass.

    ``strategy`` is ``"meta"`` (parameters, buffers and inputs swapped for meta tensors: shapes
    only, fastest), ``"fake"`` (``FakeTensorMode``: shapes only, also for tensors the model makes
    itself) or ``"real"`` (a real run, the only one whose errors are reported to the user).
    """
    counter = _MacCounter()
    handles = []
    for module, name in names.items():
        handles.append(module.register_forward_pre_hook(_push(counter, name)))
        handles.append(module.register_forward_hook(_pop(counter)))
    try:
        with torch.no_grad(), attention_fastpath_disabled(), _model_state_preserved(model):
            if strategy == "meta":
                _swap_to_meta(model)
                example_inputs = _to_meta(example_inputs)
            with _fake_tensors() if strategy == "fake" else nullcontext(), counter:
                call_model(model, example_inputs)
    except Exception as exc:
        if strategy != "real":
            raise
        raise ConfigError(
            f"count_macs could not run {type(model).__name__} on the example inputs "
            f"(failed inside {counter.current or 'the root module'!r}: {type(exc).__name__}: {exc}); "
            "pass inputs the model's forward accepts: a tensor, a tuple of positional inputs, "
            "or a dict of keyword inputs"
        ) from exc
    finally:
        for handle in handles:
            handle.remove()
    return counter.macs


def _swap_to_meta(model: nn.Module) -> None:
    """Replace every parameter and buffer by a meta tensor of its shape (tied ones stay tied).

    Only called inside ``_model_state_preserved``, which puts the real tensors back.
    """
    meta: dict[int, torch.Tensor] = {}
    for module in model.modules():
        for store in (module._parameters, module._buffers):
            for key, value in store.items():
                if value is None:
                    continue
                if id(value) not in meta:
                    shadow = torch.empty_like(value, device="meta")
                    meta[id(value)] = nn.Parameter(shadow, value.requires_grad) if isinstance(value, nn.Parameter) else shadow
                store[key] = meta[id(value)]


def _to_meta(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return torch.empty_like(value, device="meta")
    if isinstance(value, dict):
        return {key: _to_meta(item) for key, item in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(_to_meta(item) for item in value)
    return value


def _fake_tensors() -> Any:
    """A mode that runs operators on shapes only; real parameters are converted as they are used."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    return FakeTensorMode(allow_non_fake_inputs=True)


@contextmanager
def _model_state_preserved(model: nn.Module) -> Iterator[None]:
    """Put back every module's attributes, parameters, buffers and buffer values after the block.

    A forward pass may update buffers in place (BatchNorm statistics in training mode) or cache
    tensors on the module; counting must leave the model exactly as it was.
    """
    modules = list(model.modules())
    saved = [(dict(m.__dict__), dict(m._parameters), dict(m._buffers), dict(m._modules)) for m in modules]
    hooks = [hook_tables(m) for m in modules]
    values = [(buffer, buffer.detach().clone()) for m in modules for buffer in m._buffers.values() if buffer is not None]
    try:
        yield
    finally:
        for module, (attributes, parameters, buffers, children), tables in zip(modules, saved, hooks):
            module.__dict__.clear()
            module.__dict__.update(attributes)
            for live, kept in ((module._parameters, parameters), (module._buffers, buffers), (module._modules, children)):
                live.clear()
                live.update(kept)
            for live, kept in tables:  # hooks a forward installs lazily go with the flag that says so
                live.clear()
                live.update(kept)
        with torch.no_grad():
            for buffer, value in values:
                buffer.copy_(value)


def _push(counter: _MacCounter, name: str) -> Callable:
    def hook(module: nn.Module, args: Any) -> None:
        counter.stack.append(name)

    return hook


def _pop(counter: _MacCounter) -> Callable:
    def hook(module: nn.Module, args: Any, output: Any) -> None:
        if counter.stack:
            counter.stack.pop()

    return hook


# --- counting ------------------------------------------------------------------------------


def _numel(shape: torch.Size | tuple[int, ...]) -> int:
    return math.prod(shape)


def _conv_macs(args: tuple, out: torch.Tensor) -> int:
    x, weight = args[0], args[1]
    transposed = bool(args[6]) if len(args) > 6 else False
    kernel = _numel(weight.shape[2:])
    if transposed:
        # weight: (in_channels, out_channels / groups, *kernel); every input element is
        # multiplied into out_channels/groups × kernel outputs.
        return x.numel() * weight.shape[1] * kernel
    # weight: (out_channels, in_channels / groups, *kernel)
    return out.numel() * weight.shape[1] * kernel


def _mm_macs(a: torch.Tensor, b: torch.Tensor) -> int:
    # a: (..., m, k), b: (..., k, n) -> batch × m × k × n; batch dims broadcast.
    batch = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    return _numel(batch) * a.shape[-2] * a.shape[-1] * b.shape[-1]


def _attention_macs(args: tuple, out: Any) -> int:
    query, key, value = args[0], args[1], args[2]
    batch_heads = _numel(query.shape[:-2])  # query heads, also for grouped-query attention
    length, source = query.shape[-2], key.shape[-2]
    return batch_heads * length * source * (query.shape[-1] + value.shape[-1])


def _rnn_layer_macs(args: tuple, out: Any) -> int:
    # mkldnn_rnn_layer(input, w_ih, w_hh, ...): every time step multiplies the input by w_ih
    # and the hidden state by w_hh.
    x, w_ih, w_hh = args[0], args[1], args[2]
    return (x.numel() // x.shape[-1]) * (w_ih.numel() + w_hh.numel())


_FORMULAS: dict[Any, Callable[[tuple, Any], int]] = {
    aten.convolution: _conv_macs,
    aten._convolution: _conv_macs,
    aten.mm: lambda args, out: _mm_macs(args[0], args[1]),
    aten.bmm: lambda args, out: _mm_macs(args[0], args[1]),
    aten.addmm: lambda args, out: _mm_macs(args[1], args[2]),
    aten._addmm_activation: lambda args, out: _mm_macs(args[1], args[2]),
    aten.baddbmm: lambda args, out: _mm_macs(args[1], args[2]),
    aten.addbmm: lambda args, out: _mm_macs(args[1], args[2]),
    aten.mv: lambda args, out: args[0].numel(),
    aten.addmv: lambda args, out: args[1].numel(),
    aten.dot: lambda args, out: args[0].numel(),
    aten.vdot: lambda args, out: args[0].numel(),
    aten._scaled_dot_product_flash_attention_for_cpu: _attention_macs,
    aten._scaled_dot_product_flash_attention: _attention_macs,
    aten._scaled_dot_product_efficient_attention: _attention_macs,
    aten._scaled_dot_product_cudnn_attention: _attention_macs,
    aten.mkldnn_rnn_layer: _rnn_layer_macs,
}


class _MacCounter(TorchDispatchMode):
    """Adds up MACs of every ATen operator, charged to the module on top of ``stack``."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.macs: dict[str, int] = {}

    @property
    def current(self) -> str:
        return self.stack[-1] if self.stack else ""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        formula = _FORMULAS.get(func.overloadpacket)
        if formula is not None:
            name = self.current
            self.macs[name] = self.macs.get(name, 0) + int(formula(args, out))
        return out


def _report(model: nn.Module, names: dict[nn.Module, str], macs: dict[str, int]) -> MacsReport:
    params: dict[str, int] = {}
    seen: set[int] = set()
    for module, name in names.items():
        owned = 0
        for parameter in module.parameters(recurse=False):
            if id(parameter) not in seen:
                seen.add(id(parameter))
                owned += parameter.numel()
        params[name] = owned
    types = {name: type(module).__name__ for module, name in names.items()}
    keys = [name for name in names.values() if macs.get(name, 0) or params[name]]
    return MacsReport(
        total=sum(macs.values()),
        per_layer={name: macs.get(name, 0) for name in keys},
        per_layer_params={name: params[name] for name in keys},
        layer_types={name: types[name] for name in keys},
    )
