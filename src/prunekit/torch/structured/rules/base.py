"""The public rule hook: how a module's channels couple and how to shrink it.

A :class:`ChannelRule` describes one module type to the structured-pruning engine in two steps:

* ``couple(module, ctx)`` runs during the analysis. The module runs as a black box; the rule
  reads the channel labels of its inputs and of its own parameters from ``ctx``
  (:class:`Coupling`) and says how they relate: ``tie`` (these positions are the same channels),
  ``pass_through`` (an output carries an input's channels), ``produce`` (a weight dimension makes
  new channels), ``fix`` (these positions cannot be removed), then ``set_output``.
* ``shrink(module, ctx)`` runs when a plan is built: the engine has already decided which
  positions of every tensor the rule named survive (it slices them); the rule returns the plain
  attributes to set (``{"num_features": ctx.shape("weight")[0]}``) so ``forward`` computes
  shapes that fit. Those updates go into the plan, so ``load_pruned`` replays them without the rule.

Rules are passed per call, ``prune_channels(model, x, 0.5, rules={MyNorm: MyNormRule()})``;
there is no global registry. The built-in layers (``nn.Linear``, ``nn.Conv2d``, norms, ...) are
:class:`TracedRule` objects: their forward is traced op by op and only ``shrink`` is theirs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
from torch import nn

from prunekit.core.rule_maps import check_rule_map, rule_for
from prunekit.errors import ConfigError
from prunekit.torch.structured.labels import FIXED, Labels, LabelState, tensor_refs
from prunekit.torch.structured.tracing import OpRecord, TensorRef


class RuleError(ConfigError):
    """A channel rule did something inconsistent with the traced graph (names the rule and module)."""


class Coupling:
    """What a rule sees while the model is analysed: channel labels and the verbs to relate them.

    A *label array* has one integer per position of a tensor dimension, naming the channel held
    there (``0`` = a position that cannot be removed). ``ctx.input(0)`` is a list with one label
    array per dimension of the module's first positional input; ``ctx.tensor("weight")`` the same
    for the module's parameter or buffer ``weight`` (dotted names reach submodules:
    ``"proj.weight"``). Slicing and reshaping label arrays with numpy describes layouts:
    ``ctx.tie(out, rows[:h])`` says output channel ``i`` lives in row ``i`` of the weight.
    """

    def __init__(self, state: LabelState, op: OpRecord, name: str, module: nn.Module, rule: ChannelRule):
        self.name = name
        self.module = module
        self._state = state
        self._op = op
        self._rule = rule
        self._inputs_read: set[int] = set()
        self._outputs = tensor_refs(op.outputs)
        self._outputs_set: set[int] = set()

    # -- reading ---------------------------------------------------------------------------

    def input(self, index: int | str = 0) -> Labels:
        """Labels of a tensor input: a positional index or a keyword name."""
        ref = self._input_ref(index)
        self._inputs_read.add(ref.vid)
        return list(self._state.get(ref))

    def input_shape(self, index: int | str = 0) -> tuple[int, ...]:
        """Shape of a tensor input as traced."""
        return self._state.shape(self._input_ref(index))

    def output_shape(self, index: int = 0) -> tuple[int, ...]:
        """Shape of the ``index``-th tensor output (in flattening order) as traced."""
        return self._state.shape(self._output_ref(index))

    @property
    def num_outputs(self) -> int:
        """Number of tensors the module returned."""
        return len(self._outputs)

    def tensor(self, name: str) -> Labels:
        """Labels of the module's parameter or buffer ``name`` (relative, dotted for submodules)."""
        full = self._full_name(name)
        atoms = self._state.tensor_atoms.get(full)
        if atoms is None:
            atoms = [self._state.fresh(size) for size in self._tensor_shape(name)]
            self._state.tensor_atoms[full] = atoms
        return list(atoms)

    @staticmethod
    def fixed(size: int) -> np.ndarray:
        """A label array of ``size`` positions that cannot be removed (batch, space, tokens)."""
        return np.full(size, FIXED, np.int64)

    # -- relating --------------------------------------------------------------------------

    def tie(self, a: np.ndarray, b: np.ndarray) -> None:
        """Positions ``a[i]`` and ``b[i]`` hold the same channel (removed together)."""
        a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
        if a.size != b.size:
            raise self.error(f"tie() got label arrays of {a.size} and {b.size} positions; they must be equally long")
        self._state.unify(a, b)

    def fix(self, a: np.ndarray) -> None:
        """These positions are never removed (and neither is anything tied to them)."""
        self._state.fix(a)

    def normalised(self, a: np.ndarray) -> None:
        """These channels are normalised together (a mean or norm over them): pruning is inexact."""
        self._state.mark_inexact(a)

    def produce(self, tensor: str, dim: int) -> np.ndarray:
        """Dimension ``dim`` of the module's ``tensor`` makes new channels; returns its labels."""
        labels = self.tensor(tensor)
        self._check_dim(tensor, dim, len(labels))
        full = (self._full_name(tensor), dim)
        if full not in self._state.producers:
            self._state.producers.append(full)
        return labels[dim]

    def consume(self, tensor: str, dim: int) -> np.ndarray:
        """Dimension ``dim`` of the module's ``tensor`` reads channels; returns its labels."""
        labels = self.tensor(tensor)
        self._check_dim(tensor, dim, len(labels))
        self._state.consumers.add((self._full_name(tensor), dim))
        return labels[dim]

    def set_output(self, index: int, labels: Sequence[np.ndarray]) -> None:
        """The channels each dimension of output ``index`` carries (one label array per dimension)."""
        ref = self._output_ref(index)
        shape = self._state.shape(ref)
        sizes = tuple(int(np.asarray(lab).size) for lab in labels)
        if sizes != tuple(shape):
            raise self.error(f"set_output({index}) gave labels of shape {sizes}, but the traced output has shape {tuple(shape)}")
        self._state.set(ref, [np.asarray(lab, np.int64).reshape(-1) for lab in labels])
        self._outputs_set.add(index)

    def pass_through(self, input: int | str = 0, output: int = 0) -> None:
        """Output ``output`` carries exactly the channels of input ``input`` (same shape)."""
        self.set_output(output, self.input(input))

    def keep_output(self, index: int) -> None:
        """Output ``index`` carries no prunable channels (every position kept)."""
        self.set_output(index, [self.fixed(size) for size in self.output_shape(index)])

    def error(self, message: str) -> RuleError:
        """A :class:`RuleError` naming this rule and module."""
        return RuleError(f"rule {type(self._rule).__name__} for module {self.name!r} ({type(self.module).__name__}): {message}")

    # -- internal --------------------------------------------------------------------------

    def _input_ref(self, index: int | str) -> TensorRef:
        if isinstance(index, str):
            value = self._op.kwargs.get(index)
            where = f"keyword input {index!r}"
        else:
            value = self._op.args[index] if -len(self._op.args) <= index < len(self._op.args) else None
            where = f"positional input {index}"
        if not isinstance(value, TensorRef):
            raise self.error(f"{where} is not a tensor the module was called with")
        return value

    def _output_ref(self, index: int) -> TensorRef:
        if not 0 <= index < len(self._outputs):
            raise self.error(f"output {index} does not exist; the module returned {len(self._outputs)} tensor(s)")
        return self._outputs[index]

    def _full_name(self, name: str) -> str:
        return f"{self.name}.{name}" if self.name else name

    def _tensor_shape(self, name: str) -> tuple[int, ...]:
        owner: Any = self.module
        *path, last = name.split(".")
        for part in path:
            owner = getattr(owner, part, None)
        tensor = None
        if isinstance(owner, nn.Module):
            tensor = owner._parameters.get(last)
            if tensor is None:
                tensor = owner._buffers.get(last)
        if tensor is None:
            raise self.error(f"it has no parameter or buffer {name!r}")
        return tuple(tensor.shape)

    def _check_dim(self, tensor: str, dim: int, ndim: int) -> None:
        if not 0 <= dim < ndim:
            raise self.error(f"{tensor!r} has {ndim} dimension(s); dimension {dim} does not exist")

    def _finish(self) -> None:
        """Fix inputs the rule never read and check every output was described."""
        missing = [i for i in range(len(self._outputs)) if i not in self._outputs_set]
        if missing:
            raise self.error(
                f"couple() did not describe output(s) {missing}; call ctx.set_output(i, labels), "
                "ctx.pass_through(input, i) or ctx.keep_output(i) for each"
            )
        for ref in tensor_refs((self._op.args, self._op.kwargs)):
            if ref.vid not in self._inputs_read:
                self._state.fix_value(ref)


class Shrink:
    """What a rule sees when a plan is built: the new shapes after the chosen channels go.

    ``ctx.shape("weight")`` is the new shape of the module's parameter or buffer (relative,
    dotted names for submodules), ``ctx.kept("weight", 0)`` the surviving positions of one of
    its dimensions; for a black-box rule (one with ``couple``), ``ctx.input_shape(i)`` and
    ``ctx.output_shape(i)`` are the new shapes of its traced inputs and outputs.
    """

    def __init__(
        self,
        name: str,
        module: nn.Module,
        new_shapes: Mapping[str, tuple[int, ...]],
        kept: Callable[[str, int], np.ndarray | None],
        io_shapes: tuple[list[tuple[int, ...]], list[tuple[int, ...]]] | None = None,
    ):
        self.name = name
        self.module = module
        self._new_shapes = new_shapes
        self._kept = kept
        self._io = io_shapes

    def shape(self, tensor: str) -> tuple[int, ...]:
        """New shape of the module's parameter or buffer ``tensor``."""
        full = f"{self.name}.{tensor}" if self.name else tensor
        if full in self._new_shapes:
            return tuple(self._new_shapes[full])
        value = _lookup(self.module, tensor)
        if value is None:
            raise ConfigError(f"module {self.name!r} ({type(self.module).__name__}) has no parameter or buffer {tensor!r}")
        return tuple(value.shape)

    def has(self, tensor: str) -> bool:
        """Whether the module has a (non-``None``) parameter or buffer ``tensor``."""
        return _lookup(self.module, tensor) is not None

    def kept(self, tensor: str, dim: int) -> list[int]:
        """Surviving positions of dimension ``dim`` of ``tensor`` (all of them if it is not pruned)."""
        full = f"{self.name}.{tensor}" if self.name else tensor
        positions = self._kept(full, dim)
        if positions is None:
            return list(range(self.shape(tensor)[dim]))
        return [int(i) for i in positions]

    def input_shape(self, index: int = 0) -> tuple[int, ...]:
        """New shape of the ``index``-th tensor input (black-box rules only)."""
        return self._io_shape(0, index, "input")

    def output_shape(self, index: int = 0) -> tuple[int, ...]:
        """New shape of the ``index``-th tensor output (black-box rules only)."""
        return self._io_shape(1, index, "output")

    def _io_shape(self, side: int, index: int, what: str) -> tuple[int, ...]:
        if self._io is None:
            raise ConfigError(f"module {self.name!r}: {what} shapes are only known for rules that define couple()")
        shapes = self._io[side]
        if not 0 <= index < len(shapes):
            raise ConfigError(f"module {self.name!r} has {len(shapes)} tensor {what}(s); {index} does not exist")
        return shapes[index]


def _lookup(module: nn.Module, dotted: str) -> Any:
    owner: Any = module
    *path, last = dotted.split(".")
    for part in path:
        owner = getattr(owner, part, None)
    if not isinstance(owner, nn.Module):
        return None
    value = owner._parameters.get(last)
    return value if value is not None else owner._buffers.get(last)


class ChannelRule(ABC):
    """How one module type's channels couple (``couple``) and how to shrink it (``shrink``).

    Subclass it for a custom layer the analysis cannot follow (a fused op, a custom norm, a
    custom attention) and pass an instance per call: ``prune_channels(model, x, 0.5,
    rules={MyLayer: MyRule()})``. The module then runs as a black box and ``couple`` alone says
    how its channels flow. Example (a per-channel scale over the last dimension)::

        class ScaleRule(ChannelRule):
            def couple(self, module, ctx):
                x = ctx.input(0)
                ctx.tie(x[-1], ctx.tensor("scale")[0])
                ctx.pass_through(0, 0)

            def shrink(self, module, ctx):
                return {"features": ctx.shape("scale")[0]}
    """

    traced: ClassVar[bool] = False

    @abstractmethod
    def couple(self, module: nn.Module, ctx: Coupling) -> None:
        """Relate the module's input, parameter and output channels through ``ctx``."""

    def shrink(self, module: nn.Module, ctx: Shrink) -> dict[str, Any]:
        """Attributes to set (name, dotted for submodules, -> new value) after the tensors shrink."""
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class TracedRule(ChannelRule):
    """A rule for a module whose forward the analysis follows op by op; only ``shrink`` is its own.

    Use it for a layer whose ``forward`` reads a size from an attribute
    (``x.view(b, self.channels, -1)``): the tracer finds the couplings, ``shrink`` updates
    ``channels``.
    """

    traced: ClassVar[bool] = True

    def couple(self, module: nn.Module, ctx: Coupling) -> None:
        """Never called: the module's forward is traced."""


RuleMap = Mapping[type, ChannelRule]


def check_rules(rules: Any) -> dict[type, ChannelRule]:
    """Validate a ``rules=`` argument: a mapping from module classes to :class:`ChannelRule` objects."""
    return check_rule_map(
        rules, layer_base=nn.Module, layer_label="an nn.Module", rule_type=ChannelRule, package="prunekit.torch.structured.rules"
    )


def black_box_modules(model: nn.Module, rules: RuleMap) -> dict[str, ChannelRule]:
    """Modules the user's rules cover with ``couple`` (outermost first; nested ones are inside a black box)."""
    found: dict[str, ChannelRule] = {}
    for name, module in model.named_modules():
        if any(name.startswith(f"{outer}.") for outer in found if outer) or (found and "" in found):
            continue
        rule = rule_for(module, rules)
        if rule is not None and not rule.traced:
            found[name] = rule
    return found


def apply_black_box_rule(state: LabelState, op: OpRecord, module: nn.Module, rule: ChannelRule) -> None:
    """Run a user rule's ``couple`` on the recorded call of its module; errors name the rule and module."""
    ctx = Coupling(state, op, op.module, module, rule)
    try:
        rule.couple(module, ctx)
    except RuleError:
        raise
    except Exception as exc:
        raise ctx.error(f"couple() raised {type(exc).__name__}: {exc}") from exc
    ctx._finish()


__all__ = [
    "ChannelRule",
    "Coupling",
    "RuleError",
    "RuleMap",
    "Shrink",
    "TracedRule",
    "apply_black_box_rule",
    "black_box_modules",
    "check_rules",
    "rule_for",
]
