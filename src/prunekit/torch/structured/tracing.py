"""Record the tensor operations a model runs on example inputs, with the module running each.

The recorder is a ``TorchFunctionMode``: it sees every call into the torch API (``F.conv2d``,
``Tensor.view``, ``torch.cat``, ``F.scaled_dot_product_attention`` ...) at the level the Python
code wrote it, on real tensors, so data-dependent Python control flow, ``**kwargs`` inputs and
``transformers`` models trace as they run. Every tensor gets a value id; parameters and buffers
are recognised by identity and named by their qualified name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree

from prunekit.errors import ConfigError

ExampleInputs = Any  # torch.Tensor | tuple | list | dict[str, Any]


class TraceError(ConfigError):
    """The model raised while being traced; ``op_index`` is the op that was running."""

    def __init__(self, op_index: int, where: str, message: str):
        super().__init__(message)
        self.op_index = op_index
        self.where = where


@dataclass(frozen=True)
class TensorRef:
    """Stands for a traced tensor inside recorded arguments and outputs."""

    vid: int


@dataclass
class OpRecord:
    """One call into the torch API: normalised name, arguments with tensors as refs, module."""

    index: int
    name: str
    func: Callable
    args: tuple
    kwargs: dict
    outputs: Any
    module: str

    @property
    def label(self) -> str:
        """``module:op`` as shown in messages (``"layer1.0:view"``)."""
        return f"{self.module or '<root>'}:{self.name}"


@dataclass
class Trace:
    """What one forward pass did: operations in order, and every tensor's shape and origin."""

    ops: list[OpRecord]
    shapes: dict[int, tuple[int, ...]]
    sources: dict[int, tuple[str, str]]
    inputs: Any
    outputs: Any
    leaf_ops: list[OpRecord] = field(default_factory=list)
    fake: bool = False
    # the strides of the inputs of ops that address memory by strides (``as_strided``), by value id
    strides: dict[int, tuple[int, ...]] = field(default_factory=dict)

    def param_name(self, vid: int) -> str | None:
        """Qualified name of the parameter or buffer a value id is, else ``None``."""
        kind, name = self.sources.get(vid, ("", ""))
        return name if kind in ("param", "buffer") else None


def call_model(model: nn.Module, example_inputs: ExampleInputs) -> Any:
    """Call ``model`` with a tensor, a tuple/list of positional inputs, or a dict of keyword inputs."""
    if isinstance(example_inputs, dict):
        return model(**example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return model(*example_inputs)
    return model(example_inputs)


def normalise_name(func: Callable) -> str:
    """The op name rules are keyed by: ``Tensor.__iadd__`` -> ``add``, ``relu_`` -> ``relu``."""
    name = getattr(func, "__name__", None) or type(func).__name__
    if name == "__get__":
        owner = getattr(func, "__self__", None)
        name = getattr(owner, "__name__", name)
        return name
    if name.startswith("__") and name.endswith("__"):
        name = name[2:-2]
        if name.startswith(("i", "r")) and name[1:] in _DUNDER_BINARY:
            name = name[1:]
        return _ALIASES.get(name, name)
    if name.endswith("_") and not name.startswith("_"):
        name = name[:-1]
    return _ALIASES.get(name, name)


_DUNDER_BINARY = {"add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or", "xor", "lshift", "rshift"}
_ALIASES = {
    "truediv": "div",
    "true_divide": "div",
    "divide": "div",
    "multiply": "mul",
    "subtract": "sub",
    "negative": "neg",
    "concat": "cat",
    "concatenate": "cat",
    "moveaxis": "movedim",
    "swapdims": "transpose",
    "swapaxes": "transpose",
    "clip": "clamp",
    "mod": "remainder",
    "matmul": "matmul",
    "absolute": "abs",
    "rsub": "sub",
}


class SizeOf(int):
    """A size the model read from a traced tensor (``c = x.shape[-1]``, ``x.size(1)``): an ``int``
    remembering the value id and dimension it came from, so a reshape or split that takes it is tied
    to that dimension (``y.view(b, t, c)`` makes ``y``'s last dimension as wide as ``x``'s, however
    either is pruned). Arithmetic on it gives a plain ``int``."""

    vid: int
    dim: int

    def __new__(cls, value: int, vid: int = -1, dim: int = -1) -> SizeOf:
        size = super().__new__(cls, value)
        size.vid, size.dim = vid, dim
        return size


def _sizes_of(out: Any, vid: int, args: tuple, kwargs: dict) -> Any:
    """``x.shape`` / ``x.size()`` / ``x.size(d)`` with each size a :class:`SizeOf` naming ``x``'s dimension."""
    if isinstance(out, torch.Size):
        return torch.Size([SizeOf(v, vid, d) for d, v in enumerate(out)])
    dim = args[1] if len(args) > 1 else kwargs.get("dim")
    if isinstance(out, int) and isinstance(dim, int):
        return SizeOf(out, vid, dim % len(args[0].shape))
    return out


class _Recorder(TorchFunctionMode):
    """Assigns value ids and records each torch call with tensor arguments or results."""

    def __init__(
        self,
        named_tensors: dict[int, tuple[str, str, torch.Tensor]],
        stack: list[str],
        leaf_depth: list[int],
        observer: Callable[[OpRecord, Any], None] | None = None,
        fake: bool = False,
    ):
        super().__init__()
        self.fake = fake
        self.named = named_tensors
        self.stack = stack
        self.leaf_depth = leaf_depth
        self.observer = observer
        self.ids: dict[int, int] = {}
        self.alive: list[Any] = []
        self.shapes: dict[int, tuple[int, ...]] = {}
        self.sources: dict[int, tuple[str, str]] = {}
        self.ops: list[OpRecord] = []
        self.strides: dict[int, tuple[int, ...]] = {}
        self.current: str = ""
        self.in_call = False
        self.observer_failed = False

    def new_value(self, tensor: torch.Tensor, source: tuple[str, str]) -> int:
        vid = len(self.shapes)
        self.ids[id(tensor)] = vid
        self.alive.append(tensor)
        self.shapes[vid] = tuple(tensor.shape)
        self.sources[vid] = source
        return vid

    def ref(self, value: Any) -> Any:
        if not isinstance(value, torch.Tensor):
            return value
        vid = self.ids.get(id(value))
        if vid is None:
            named = self.named.get(id(value))
            source = (named[0], named[1]) if named is not None else ("const", "")
            vid = self.new_value(value, source)
        return TensorRef(vid)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.leaf_depth[0] > 0 or not self.stack:
            # inside a black-box module, or outside the model's forward (not the model's own op)
            return func(*args, **kwargs)
        name = normalise_name(func)
        module = self.stack[-1] if self.stack else ""
        self.current = f"{module or '<root>'}:{name}"
        arg_refs = pytree.tree_map(self.ref, args)
        kwarg_refs = pytree.tree_map(self.ref, kwargs)
        if name == "as_strided" and args and isinstance(args[0], torch.Tensor):
            self.strides[arg_refs[0].vid] = tuple(args[0].stride())
        self.in_call = True
        if self.fake and name in _SAME_SHAPE_OPS and args and isinstance(args[0], torch.Tensor):
            out = torch.empty_like(args[0])  # fake kernels decompose these op by op: slow, same shape
        else:
            out = func(*args, **kwargs)
        self.in_call = False
        if name in ("size", "shape") and args and isinstance(arg_refs[0], TensorRef):
            out = _sizes_of(out, arg_refs[0].vid, args, kwargs)
        inplace_target = None
        if name == "setitem" and args and isinstance(args[0], torch.Tensor):
            inplace_target = args[0]
        out_refs = pytree.tree_map(
            lambda v: TensorRef(self.new_value(v, ("op", str(len(self.ops))))) if isinstance(v, torch.Tensor) else v,
            out,
        )
        if inplace_target is not None:
            out_refs = TensorRef(self.new_value(inplace_target, ("op", str(len(self.ops)))))
        if _has_tensor(arg_refs) or _has_tensor(kwarg_refs) or _has_tensor(out_refs):
            record = OpRecord(len(self.ops), name, func, arg_refs, kwarg_refs, out_refs, module)
            self.ops.append(record)
            if self.observer is not None:
                try:
                    self.observer(record, out)
                except Exception:
                    self.observer_failed = True
                    raise
        return out


# Normalisations whose output has their input's shape and dtype; on fake tensors only that is needed.
_SAME_SHAPE_OPS = frozenset({"batch_norm"})


def _has_tensor(tree: Any) -> bool:
    return any(isinstance(leaf, TensorRef) for leaf in pytree.tree_leaves(tree))


def _named_tensors(model: nn.Module) -> dict[int, tuple[str, str, torch.Tensor]]:
    named: dict[int, tuple[str, str, torch.Tensor]] = {}
    for name, buffer in model.named_buffers():
        named.setdefault(id(buffer), ("buffer", name, buffer))
    for name, param in model.named_parameters():
        named.setdefault(id(param), ("param", name, param))
    return named


def trace_model(
    model: nn.Module,
    example_inputs: ExampleInputs,
    leaf_modules: Iterable[str] = (),
    observer: Callable[[OpRecord, Any], None] | None = None,
    fake: bool | None = None,
) -> Trace:
    """Run ``model`` once in eval mode without gradients and record every torch call.

    Large models or inputs (over a million parameters or input elements) traced without an
    ``observer`` (which needs real values) first run on fake tensors: shapes only, no arithmetic,
    so the cost follows the number of ops rather than the MACs or the batch. They run for real
    only if that fails (a forward whose Python control flow reads tensor values); small models
    run for real, which is then cheaper. ``fake=True``/``False`` forces the choice (a fake trace that
    fails still falls back to a real one): a pruned model is verified the way the original was
    traced, since the two ways can record different op sequences. Modules named in ``leaf_modules`` run untraced: each becomes one
    recorded op named ``leaf_module`` whose inputs keep all their channels. The model's training
    flags and attributes are restored afterwards. Raises ``TraceError`` (a ``ConfigError``)
    naming the module and op when the model fails.

    Example::

        trace = trace_model(nn.Sequential(nn.Linear(4, 3)), torch.zeros(2, 4))
        [op.name for op in trace.ops]  # ['linear']
    """
    inputs = sum(t.numel() for t in pytree.tree_leaves(example_inputs) if isinstance(t, torch.Tensor))
    params = sum(p.numel() for p in model.parameters())
    if fake is None:
        fake = observer is None and max(inputs, params) > _FAKE_ABOVE
    if fake and observer is None:
        try:
            return _trace_once(model, example_inputs, leaf_modules, None, fake=True)
        except Exception:
            pass  # the forward needs real values (or fails anyway): run it for real below
    return _trace_once(model, example_inputs, leaf_modules, observer, fake=False)


_FAKE_ABOVE = 1_000_000


@contextmanager
def attention_fastpath_disabled() -> Iterator[None]:
    """Make ``nn.MultiheadAttention``/``nn.TransformerEncoderLayer`` run their composite path.

    Their inference fast path is one fused kernel (``_native_multi_head_attention``,
    ``_transformer_encoder_layer_fwd``); the composite path computes the same result from
    linears and attention, which the counter and the tracer see one by one. The fast path's
    eligibility checks also depend on the model (an odd head count skips the rest), so without
    this a pruned model would run different checks than the original and fail verification.
    """
    mha = torch.backends.mha
    previous = mha.get_fastpath_enabled()
    mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        mha.set_fastpath_enabled(previous)


def hook_tables(module: nn.Module) -> list[tuple[dict, dict]]:
    """Each hook table of a module (``_forward_hooks``, ``_forward_pre_hooks`` ...) with a copy of
    its entries, to put back after a forward that may install hooks lazily (``transformers``'
    output capturing installs them once and sets a flag beside them: restoring the flag without
    the hooks would install them twice)."""
    return [
        (table, dict(table))
        for name, table in vars(module).items()
        if name.startswith(("_forward", "_backward")) and isinstance(table, dict)
    ]


@contextmanager
def _attributes_kept(model: nn.Module, fake: bool) -> Iterator[None]:
    """Run the block (on fake tensors if ``fake``) and put back every module attribute, parameter
    and buffer entry a forward may set (a cached mask, a fake tensor)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    saved = [(m, dict(m.__dict__), dict(m._parameters), dict(m._buffers), hook_tables(m)) for m in model.modules()]
    try:
        with FakeTensorMode(allow_non_fake_inputs=True) if fake else nullcontext():
            yield
    finally:
        for module, attributes, parameters, buffers, hooks in saved:
            module.__dict__.clear()
            module.__dict__.update(attributes)
            module._parameters.clear()
            module._parameters.update(parameters)
            module._buffers.clear()
            module._buffers.update(buffers)
            for table, entries in hooks:  # see hook_tables
                table.clear()
                table.update(entries)


def _trace_once(
    model: nn.Module,
    example_inputs: ExampleInputs,
    leaf_modules: Iterable[str],
    observer: Callable[[OpRecord, Any], None] | None,
    fake: bool,
) -> Trace:
    leaves = set(leaf_modules)
    stack: list[str] = []
    leaf_depth = [0]
    recorder = _Recorder(_named_tensors(model), stack, leaf_depth, observer, fake)
    leaf_ops: list[OpRecord] = []
    handles = []
    for mod_name, module in model.named_modules():
        is_leaf = mod_name in leaves
        handles.append(module.register_forward_pre_hook(_enter(stack, mod_name, leaf_depth, is_leaf, recorder), with_kwargs=True))
        handles.append(
            module.register_forward_hook(
                _exit(stack, leaf_depth, is_leaf, recorder, leaf_ops, mod_name), with_kwargs=True, always_call=True
            )
        )
    captured: list[Any] = []
    handles.append(model.register_forward_hook(lambda module, args, output: captured.append(output)))
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        input_refs = pytree.tree_map(
            lambda v: TensorRef(recorder.new_value(v, ("input", ""))) if isinstance(v, torch.Tensor) else v,
            example_inputs,
        )
        with torch.no_grad(), attention_fastpath_disabled(), _attributes_kept(model, fake), recorder:
            call_model(model, example_inputs)
        output_refs = pytree.tree_map(recorder.ref, captured[-1])
    except Exception as exc:
        if recorder.observer_failed:
            raise
        where = recorder.current or "<before the first op>"
        # failing inside a torch call: that call (not yet recorded); else the last call made
        failing = len(recorder.ops) if recorder.in_call else max(len(recorder.ops) - 1, 0)
        if isinstance(exc, ConfigError) and exc.__cause__ is not None:
            exc = exc.__cause__
        raise TraceError(
            failing,
            where,
            f"the model failed while tracing it on the example inputs, in {where!r}: {type(exc).__name__}: {exc}. "
            "Check that example_inputs run the model (a tensor, a tuple of positional inputs or a dict of "
            f"keyword inputs); if the model runs but cannot be traced, pass leaf_modules=[{where.split(':')[0]!r}] "
            "to treat that module as a black box",
        ) from exc
    finally:
        for handle in handles:
            handle.remove()
        for module, mode in modes.items():
            module.training = mode
    return Trace(recorder.ops, recorder.shapes, recorder.sources, input_refs, output_refs, leaf_ops, fake, recorder.strides)


def _enter(stack: list[str], name: str, leaf_depth: list[int], is_leaf: bool, recorder: _Recorder) -> Callable:
    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        if is_leaf and leaf_depth[0] == 0:
            recorder.leaf_inputs = pytree.tree_map(recorder.ref, (args, kwargs))
            # a black box raising is reported as the op it is about to become
            recorder.current = f"{name}:leaf_module"
            recorder.in_call = True
        if is_leaf:
            leaf_depth[0] += 1
        stack.append(name)

    return hook


def _exit(
    stack: list[str], leaf_depth: list[int], is_leaf: bool, recorder: _Recorder, leaf_ops: list[OpRecord], name: str
) -> Callable:
    def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        if stack:
            stack.pop()
        if not is_leaf:
            return
        leaf_depth[0] -= 1
        if leaf_depth[0] == 0 and output is not None:
            recorder.in_call = False
            out_refs = pytree.tree_map(
                lambda v: TensorRef(recorder.new_value(v, ("op", str(len(recorder.ops))))) if isinstance(v, torch.Tensor) else v,
                output,
            )
            in_args, in_kwargs = getattr(recorder, "leaf_inputs", ((), {}))
            record = OpRecord(len(recorder.ops), "leaf_module", module.forward, in_args, in_kwargs, out_refs, name)
            recorder.ops.append(record)
            leaf_ops.append(record)

    return hook
