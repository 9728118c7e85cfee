"""Channel labels: which parameter channel each position of each traced tensor dimension carries.

Every dimension of every parameter and buffer gets fresh *atoms* (integers >= 1), one per
position. A traced value stores, per dimension, an array naming the atom at each position, or
``0`` (``FIXED``) where the position cannot be removed (batch, space, tokens, model inputs).
Operations *unify* atoms whose positions must be removed together (a residual add, a BN after a
conv, a linear's inputs and the previous layer's outputs); a connected component of atoms is one
prunable channel. Unifying with ``FIXED`` makes a channel unprunable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from prunekit.torch.structured.tracing import OpRecord, TensorRef, Trace

FIXED = 0
Labels = list[np.ndarray]


@dataclass
class AttentionRecord:
    """Where attention ran: its module and the atoms of its query and key head dimensions."""

    op: int
    module: str
    query_heads: np.ndarray
    key_heads: np.ndarray
    head_dim: int


@dataclass
class RecurrentRecord:
    """Where an LSTM/GRU/RNN ran: its module and the atoms of its hidden units (one per unit)."""

    op: int
    module: str
    units: np.ndarray


@dataclass
class SplitRecord:
    """An equal-sections ``split`` whose section size may be held in a module attribute."""

    op: int
    module: str
    section: np.ndarray
    size: int


@dataclass
class NormRecord:
    """A normalisation call: its module and the atoms of the normalised dimensions."""

    op: int
    module: str
    kind: str
    dims: list[np.ndarray]
    num_groups: int = 0


@dataclass
class LabelState:
    """Mutable state of one dependency analysis."""

    trace: Trace
    opaque_ops: frozenset[int] = frozenset()
    next_atom: int = 1
    labels: dict[int, Labels] = field(default_factory=dict)
    tensor_atoms: dict[str, Labels] = field(default_factory=dict)
    edges: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    inexact: list[np.ndarray] = field(default_factory=list)
    producers: list[tuple[str, int]] = field(default_factory=list)
    consumers: set[tuple[str, int]] = field(default_factory=set)
    param_derived: dict[int, str] = field(default_factory=dict)
    unsupported: list[tuple[OpRecord, str]] = field(default_factory=list)
    attention: list[AttentionRecord] = field(default_factory=list)
    recurrent: list[RecurrentRecord] = field(default_factory=list)
    splits: list[SplitRecord] = field(default_factory=list)
    norms: list[NormRecord] = field(default_factory=list)
    # why positions became unremovable: (atoms tied to FIXED, reason), in the order it happened
    fixed_because: list[tuple[np.ndarray, str]] = field(default_factory=list)
    reason: str = ""
    # reshape op index -> the output dimension that is attention heads (see ``heads``)
    head_dims: dict[int, int] = field(default_factory=dict)
    # traced value id -> its attention heads dimension, for the outputs of those reshapes
    head_outputs: dict[int, int] = field(default_factory=dict)

    # -- atoms -----------------------------------------------------------------------------

    def fresh(self, size: int) -> np.ndarray:
        atoms = np.arange(self.next_atom, self.next_atom + size, dtype=np.int64)
        self.next_atom += size
        return atoms

    def get(self, value: Any) -> Labels:
        """Labels of a traced value (a ``TensorRef``); parameters get their atoms on first use."""
        vid = value.vid
        labels = self.labels.get(vid)
        if labels is not None:
            return labels
        shape = self.trace.shapes[vid]
        kind, name = self.trace.sources.get(vid, ("const", ""))
        if kind in ("param", "buffer"):
            atoms = self.tensor_atoms.get(name)
            if atoms is None:
                atoms = [self.fresh(size) for size in shape]
                self.tensor_atoms[name] = atoms
            labels = list(atoms)
            self.param_derived[vid] = name
        else:
            labels = [np.zeros(size, np.int64) for size in shape]
        self.labels[vid] = labels
        return labels

    def set(self, value: Any, labels: Labels) -> None:
        shape = self.trace.shapes[value.vid]
        if len(labels) != len(shape) or any(len(lab) != size for lab, size in zip(labels, shape)):
            raise AssertionError(f"labels {[len(x) for x in labels]} do not fit shape {shape}")
        self.labels[value.vid] = [np.asarray(lab, np.int64) for lab in labels]

    def shape(self, value: Any) -> tuple[int, ...]:
        return self.trace.shapes[value.vid]

    def tensor_name(self, value: Any) -> str | None:
        """The parameter a value is, or is a view/transpose of, else ``None``."""
        if not isinstance(value, TensorRef):
            return None
        self.get(value)
        return self.param_derived.get(value.vid)

    # -- constraints -----------------------------------------------------------------------

    def unify(self, a: np.ndarray, b: np.ndarray) -> None:
        """Positions ``a[i]`` and ``b[i]`` hold the same channel."""
        a = np.asarray(a, np.int64).reshape(-1)
        b = np.asarray(b, np.int64).reshape(-1)
        if a.shape != b.shape:
            raise AssertionError(f"cannot unify {a.shape} with {b.shape}")
        mask = a != b
        if mask.any():
            a, b = a[mask], b[mask]
            self.edges.append((a, b))
            to_fixed = (a == FIXED) | (b == FIXED)
            if to_fixed.any():
                self.fixed_because.append((np.where(a[to_fixed] == FIXED, b[to_fixed], a[to_fixed]), self.reason))

    def fix(self, atoms: np.ndarray, reason: str | None = None) -> None:
        """These positions cannot be removed (``reason`` defaults to the op being followed)."""
        atoms = np.asarray(atoms, np.int64).reshape(-1)
        atoms = atoms[atoms != FIXED]
        if atoms.size:
            self.edges.append((atoms, np.zeros_like(atoms)))
            self.fixed_because.append((atoms, reason or self.reason))

    def fix_value(self, value: Any, reason: str | None = None) -> None:
        for lab in self.get(value):
            self.fix(lab, reason)

    def coarsen(self, blocks: np.ndarray) -> np.ndarray:
        """Unify each row of a 2-D atom array; returns one representative per row."""
        blocks = np.asarray(blocks, np.int64)
        if blocks.shape[1] > 1:
            self.unify(blocks[:, 1:], np.repeat(blocks[:, :1], blocks.shape[1] - 1, axis=1))
        return blocks[:, 0].copy()

    def mark_inexact(self, atoms: np.ndarray) -> None:
        """Removing these channels changes other channels' values (a mean or norm over them)."""
        atoms = np.asarray(atoms, np.int64).reshape(-1)
        if (atoms != FIXED).any():
            self.inexact.append(atoms[atoms != FIXED])

    def mark_producer(self, value: Any, dim: int) -> None:
        name = self.tensor_name(value)
        if name is None:
            return
        base_dim = self._base_dim(value, name, dim)
        if base_dim is not None and (name, base_dim) not in self.producers:
            self.producers.append((name, base_dim))

    def mark_consumer(self, value: Any, dim: int) -> None:
        name = self.tensor_name(value)
        if name is None:
            return
        base_dim = self._base_dim(value, name, dim)
        if base_dim is not None:
            self.consumers.add((name, base_dim))

    def _base_dim(self, value: Any, name: str, dim: int) -> int | None:
        lab = self.get(value)[dim]
        for index, atoms in enumerate(self.tensor_atoms[name]):
            if atoms.shape == lab.shape and np.array_equal(atoms, lab):
                return index
        return None

    def unsupported_op(self, op: OpRecord, reason: str) -> None:
        """Keep every channel an op touches and give its outputs fixed labels."""
        touched = False
        why = f"unsupported op {op.name} at node {op.label} ({reason})"
        for leaf in tensor_refs((op.args, op.kwargs)):
            labels = self.get(leaf)
            if any((lab != FIXED).any() for lab in labels):
                touched = True
            for lab in labels:
                self.fix(lab, why)
        for out in tensor_refs(op.outputs):
            self.set(out, [np.zeros(size, np.int64) for size in self.shape(out)])
        if touched:
            self.unsupported.append((op, reason))

    # -- solving ---------------------------------------------------------------------------

    def fixed_reasons(self) -> tuple[np.ndarray, list[str]]:
        """Why each atom cannot be removed: an index into the returned reasons per atom (``-1``:
        removable). Found through the ties that do not pass through ``FIXED``, so each channel is
        blamed on the first thing that fixed it, not on everything else that is fixed."""
        if self.edges:
            a = np.concatenate([e[0] for e in self.edges])
            b = np.concatenate([e[1] for e in self.edges])
            free = (a != FIXED) & (b != FIXED)
            a, b = a[free], b[free]
        else:
            a = b = np.zeros(0, np.int64)
        roots = connected_roots(self.next_atom, a, b)
        root_reason = np.full(self.next_atom, -1, np.int64)
        texts: list[str] = []
        numbers: dict[str, int] = {}
        for atoms, reason in self.fixed_because:
            r = roots[atoms]
            unset = r[root_reason[r] < 0]
            if unset.size:
                number = numbers.setdefault(reason, len(texts))
                if number == len(texts):
                    texts.append(reason)
                root_reason[unset] = number
        return root_reason[roots], texts

    def components(self) -> np.ndarray:
        """Root atom of every atom after all unifications (``FIXED``'s root is ``FIXED``)."""
        if self.edges:
            a = np.concatenate([e[0] for e in self.edges])
            b = np.concatenate([e[1] for e in self.edges])
        else:
            a = b = np.zeros(0, np.int64)
        return connected_roots(self.next_atom, a, b)


def connected_roots(size: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Smallest member of each connected component, for every node ``0..size-1``."""
    parent = np.arange(size, dtype=np.int64)
    while True:
        ra, rb = parent[a], parent[b]
        differ = ra != rb
        if not differ.any():
            return parent
        ra, rb = ra[differ], rb[differ]
        np.minimum.at(parent, np.maximum(ra, rb), np.minimum(ra, rb))
        while True:
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped


def tensor_refs(tree: Any) -> list[TensorRef]:
    """Every ``TensorRef`` in a nested structure of args/outputs, in order."""
    from torch.utils import _pytree as pytree

    return [leaf for leaf in pytree.tree_leaves(tree) if isinstance(leaf, TensorRef)]


def arg(op: OpRecord, index: int, name: str, default: Any = None) -> Any:
    """Argument ``index`` of an op, or its keyword ``name``."""
    if len(op.args) > index:
        return op.args[index]
    return op.kwargs.get(name, default)


def normalise_dim(dim: int, ndim: int) -> int:
    return dim + ndim if dim < 0 else dim


def is_tensor(value: Any) -> bool:
    return isinstance(value, TensorRef)


def zeros_like_shape(shape: tuple[int, ...]) -> Labels:
    return [np.zeros(size, np.int64) for size in shape]


def as_int_list(value: Any) -> list[int]:
    if isinstance(value, (torch.Size, tuple, list)):
        return [int(v) for v in value]
    return [int(value)]
