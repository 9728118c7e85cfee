"""Recorded pruning plans: which positions of which tensors survive, and which attributes change.

A plan is plain JSON-serialisable data::

    {"format": "prunekit.structured-plan", "version": 1, "model": "ResNet",
     "tensors": {"conv1.weight": {"shape": [64, 3, 3, 3], "keep": {"0": [0, 2, ...]}}, ...},
     "attributes": [{"module": "conv1", "name": "out_channels", "old": 64, "value": 32}, ...]}

``apply_plan`` replays it on a model of the original architecture (slicing parameters and
buffers, setting attributes) and can be undone; ``save_pruned``/``load_pruned`` store the plan
beside the weights in one safetensors file, so a pruned model is rebuilt from the original
architecture without pickling code.
"""

from __future__ import annotations

import copy
import json
import os
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit.core.atomic import atomic_path
from prunekit.errors import ConfigError, CorruptFileError, StateMismatchError

PLAN_FORMAT = "prunekit.structured-plan"
PLAN_VERSION = 1
_PLAN_ATTRIBUTE = "_prunekit_structured_plan"
STRUCTURED_PLAN_KEY = "prunekit_structured_plan"
CHECKSUMS_KEY = "prunekit_crc32"


def tensor_crc32(tensor: torch.Tensor) -> int:
    """CRC-32 of a tensor's bytes as stored (contiguous, CPU), whatever its dtype.

    Example::

        tensor_crc32(torch.zeros(3))
    """
    data = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
    return zlib.crc32(data.tobytes())


def empty_plan(model: nn.Module) -> dict[str, Any]:
    """A plan that changes nothing, for ``model``'s architecture."""
    return {"format": PLAN_FORMAT, "version": PLAN_VERSION, "model": type(model).__name__, "tensors": {}, "attributes": []}


def plan_of(model: nn.Module) -> dict[str, Any] | None:
    """The cumulative plan attached to a model pruned by prunekit, relative to its original
    architecture, or ``None`` for a model prunekit has not pruned.

    Example::

        plan_of(prune_channels(model, x, 0.5).model)["tensors"]["conv1.weight"]["keep"]
    """
    return getattr(model, _PLAN_ATTRIBUTE, None)


def attach_plan(model: nn.Module, plan: dict[str, Any]) -> None:
    """Record ``plan`` on ``model`` (a plain attribute: it survives deepcopy and pickling)."""
    object.__setattr__(model, _PLAN_ATTRIBUTE, plan)


def compose_plans(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """The plan equal to applying ``first`` and then ``second`` (recorded on ``first``'s result).

    Example::

        total = compose_plans(step1.plan, step2.plan)  # keep indices relative to the original
    """
    tensors = {name: {"shape": list(e["shape"]), "keep": dict(e["keep"])} for name, e in first["tensors"].items()}
    for name, entry in second["tensors"].items():
        if name not in tensors:
            tensors[name] = {"shape": list(entry["shape"]), "keep": dict(entry["keep"])}
            continue
        base = tensors[name]
        for dim, keep in entry["keep"].items():
            previous = base["keep"].get(dim)
            base["keep"][dim] = [previous[i] for i in keep] if previous is not None else list(keep)
    attributes = {(a["module"], a["name"]): dict(a) for a in first["attributes"]}
    for attr in second["attributes"]:
        key = (attr["module"], attr["name"])
        if key in attributes:
            attributes[key]["value"] = attr["value"]
        else:
            attributes[key] = dict(attr)
    return {
        "format": PLAN_FORMAT,
        "version": PLAN_VERSION,
        "model": first.get("model", second.get("model")),
        "tensors": tensors,
        "attributes": [a for a in attributes.values() if a["old"] != a["value"]],
    }


def new_shape(entry: dict[str, Any]) -> tuple[int, ...]:
    """Shape of a tensor after its plan entry is applied."""
    shape = list(entry["shape"])
    for dim, keep in entry["keep"].items():
        shape[int(dim)] = len(keep)
    return tuple(shape)


# -- applying -----------------------------------------------------------------------------


def _owners(model: nn.Module) -> dict[int, list[tuple[nn.Module, str, str]]]:
    owners: dict[int, list[tuple[nn.Module, str, str]]] = {}
    for module in model.modules():
        for attr, tensor in module._parameters.items():
            if tensor is not None:
                owners.setdefault(id(tensor), []).append((module, attr, "param"))
        for attr, tensor in module._buffers.items():
            if tensor is not None:
                owners.setdefault(id(tensor), []).append((module, attr, "buffer"))
    return owners


def _tensor_index(model: nn.Module) -> dict[str, torch.Tensor]:
    index: dict[str, torch.Tensor] = {}
    for name, tensor in model.named_parameters(remove_duplicate=False):
        index.setdefault(name, tensor)
    for name, tensor in model.named_buffers(remove_duplicate=False):
        index.setdefault(name, tensor)
    return index


_MAX_DIM = 2**40  # larger than any real tensor dimension; a bigger one is a crafted file


def _is_index(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate_plan(plan: Any) -> None:
    """Raise :class:`CorruptFileError` naming the field when ``plan`` is not a well-formed plan (no model needed).

    Checks the format and version, that every tensor entry has a ``shape`` of non-negative integers
    and ``keep`` lists of in-range integer positions per existing dimension, and
    that every attribute entry names a module and a public attribute path (no ``_``/dunder parts).

    Example::

        validate_plan({"format": "prunekit.structured-plan", "version": 1, "tensors": {}, "attributes": []})
    """
    if not isinstance(plan, dict) or plan.get("format") != PLAN_FORMAT:
        raise CorruptFileError(
            f"not a prunekit structured plan (format {plan.get('format') if isinstance(plan, dict) else type(plan).__name__!r})"
        )
    version = plan.get("version")
    if not _is_index(version) or version < 1:
        raise CorruptFileError(f"plan field 'version' should be a positive integer, got {version!r}")
    if version > PLAN_VERSION:
        raise CorruptFileError(f"plan version {version} is newer than this prunekit reads ({PLAN_VERSION}); upgrade prunekit")
    tensors, attributes = plan.get("tensors"), plan.get("attributes")
    if not isinstance(tensors, dict):
        raise CorruptFileError(f"plan field 'tensors' should be a mapping, got {type(tensors).__name__}")
    if not isinstance(attributes, list):
        raise CorruptFileError(f"plan field 'attributes' should be a list, got {type(attributes).__name__}")
    for name, entry in tensors.items():
        where = f"plan field 'tensors.{name}"
        shape = entry.get("shape") if isinstance(entry, dict) else None
        keep = entry.get("keep") if isinstance(entry, dict) else None
        if not isinstance(shape, list) or not all(_is_index(d) and 0 <= d < _MAX_DIM for d in shape):
            raise CorruptFileError(f"{where}.shape' should be a list of non-negative integers, got {shape!r}")
        if not isinstance(keep, dict):
            raise CorruptFileError(f"{where}.keep' should be a mapping of dimension -> kept positions, got {keep!r}")
        for dim, positions in keep.items():
            if not (isinstance(dim, str) and dim.isdigit() and int(dim) < len(shape)):
                raise CorruptFileError(f"{where}.keep' names dimension {dim!r}; the tensor has {len(shape)} dimension(s)")
            size = shape[int(dim)]
            if not isinstance(positions, list) or not all(_is_index(i) and 0 <= i < size for i in positions):
                raise CorruptFileError(f"{where}.keep.{dim}' should list positions in [0, {size}), got {positions!r}"[:300])
    for number, attr in enumerate(attributes):
        where = f"plan field 'attributes[{number}]"
        if not isinstance(attr, dict) or not isinstance(attr.get("module"), str) or not isinstance(attr.get("name"), str):
            raise CorruptFileError(f"{where}' should be a mapping with string 'module' and 'name', got {attr!r}"[:300])
        if "value" not in attr:
            raise CorruptFileError(f"{where}' has no 'value'")
        parts = attr["name"].split(".") + (attr["module"].split(".") if attr["module"] else [])
        if any(not part or part.startswith("_") for part in parts):
            raise CorruptFileError(
                f"{where}' sets {attr['module']}.{attr['name']}: plans may only set public attributes (no '_' or dunder names)"
            )


def _plain_kind(value: Any) -> str | None:
    """The kind of plain value a plan may set: 'int', 'float', 'bool', 'str', 'none', 'seq' (of ints), or None."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    if value is None:
        return "none"
    if isinstance(value, (list, tuple)) and all(_is_index(v) for v in value):
        return "seq"
    return None


def _check_attribute(model: nn.Module, modules: dict[str, nn.Module], attr: dict[str, Any]) -> None:
    """A plan's attribute update may only reach plain values on objects inside the model, keeping their kind."""
    import types

    inside = {id(m) for m in modules.values()}
    owner: Any = modules.get(attr["module"])
    parts = attr["name"].split(".")
    for part in parts[:-1]:
        owner = getattr(owner, part, None) if owner is not None else None
        if isinstance(owner, (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType)):
            raise CorruptFileError(
                f"plan attribute {attr['module']}.{attr['name']} reaches a {type(owner).__name__}, not an object of the model"
            )
        if isinstance(owner, nn.Module) and id(owner) not in inside:
            raise CorruptFileError(f"plan attribute {attr['module']}.{attr['name']} reaches a module outside the model")
    if owner is None or not hasattr(owner, parts[-1]):
        raise StateMismatchError(
            f"layer {attr['module']!r} does not match the plan: it has no attribute {attr['name']!r}; "
            "model_factory must build the architecture the model was pruned from"
        )
    current, value = getattr(owner, parts[-1]), attr["value"]
    kind, new_kind = _plain_kind(current), _plain_kind(value)
    if kind is None or kind in ("none", "str") or new_kind != kind and not (kind == "float" and new_kind == "int"):
        raise CorruptFileError(
            f"plan attribute {attr['module']}.{attr['name']} is a {type(current).__name__}; a plan may only set integer "
            f"sizes (or tuples of them) to values of the same type, got {value!r}"[:300]
        )
    if new_kind in ("int", "seq") and any(v < 0 for v in (value if new_kind == "seq" else [value])):
        raise CorruptFileError(f"plan attribute {attr['module']}.{attr['name']} should be non-negative, got {value!r}"[:300])


def check_plan(model: nn.Module, plan: dict[str, Any]) -> None:
    """Raise ``StateMismatchError`` naming the first layer of ``model`` the plan does not fit
    (``CorruptFileError`` for a malformed plan, or one that would set anything but plain sizes)."""
    validate_plan(plan)
    index = _tensor_index(model)
    order = {name: i for i, name in enumerate(index)}
    pending = sorted(plan["tensors"].items(), key=lambda kv: order.get(kv[0], -1))
    for name, entry in pending:
        layer = name.rpartition(".")[0] or name
        if name not in index:
            raise StateMismatchError(
                f"layer {layer!r} does not match the plan: the model has no tensor {name!r} "
                f"(the plan was recorded on a {plan.get('model', 'different')} model); model_factory must build "
                "the architecture the model was pruned from"
            )
        actual = tuple(index[name].shape)
        if actual != tuple(entry["shape"]):
            raise StateMismatchError(
                f"layer {layer!r} does not match the plan: {name!r} has shape {actual} but the plan was recorded "
                f"for shape {tuple(entry['shape'])}; model_factory must build the original, unpruned architecture "
                f"the plan was made from ({plan.get('model', 'unknown')})"
            )
    modules = dict(model.named_modules())
    for attr in plan["attributes"]:
        _check_attribute(model, modules, attr)


def apply_plan(model: nn.Module, plan: dict[str, Any]) -> Callable[[], None]:
    """Slice every planned tensor and set every planned attribute; returns a function undoing it.

    The plan is checked against the model first, so a mismatch raises before anything changes.

    Example::

        undo = apply_plan(model, result.plan)
        undo()  # model is back to its original shapes
    """
    check_plan(model, plan)
    index, owners = _tensor_index(model), _owners(model)
    modules = dict(model.named_modules())
    undo: list[Callable[[], None]] = [lambda: _refresh_recurrent(model)]

    def rollback() -> None:
        for step in reversed(undo):
            step()
        undo.clear()

    try:
        for name, entry in plan["tensors"].items():
            old = index[name]
            new = old.detach()
            for dim, keep in sorted(entry["keep"].items(), key=lambda kv: int(kv[0])):
                new = new.index_select(int(dim), torch.as_tensor(keep, dtype=torch.long, device=new.device))
            # index_select copies; only a plan entry keeping every dimension whole needs a copy made here
            new = new.contiguous() if entry["keep"] else new.clone()
            if isinstance(old, nn.Parameter):
                new = nn.Parameter(new, requires_grad=old.requires_grad)
            for module, attr, kind in owners.get(id(old), []):
                store = module._parameters if kind == "param" else module._buffers
                store[attr] = new
                undo.append(lambda s=store, a=attr, t=old: s.__setitem__(a, t))
        private: set[int] = set()
        for attr in plan["attributes"]:
            owner = modules[attr["module"]]
            *path, last = attr["name"].split(".")
            for part in path:
                owner = _private(owner, part, private, undo)
            previous = getattr(owner, last)
            value = tuple(attr["value"]) if isinstance(previous, tuple) else attr["value"]
            setattr(owner, last, value)
            undo.append(lambda o=owner, n=last, v=previous: setattr(o, n, v))
        _refresh_recurrent(model)
    except Exception:
        rollback()
        raise
    return rollback


def _private(parent: Any, part: str, private: set[int], undo: list[Callable[[], None]]) -> Any:
    """``parent.part``, first replaced by a shallow copy unless it is a module or already copied.

    A ``config`` object is shared by every block of a model: a size set on one block's config must
    not reach the others (their heads may shrink by other amounts, or not at all, and a rotary
    embedding may recompute its width from the shared head count)."""
    child = getattr(parent, part)
    if isinstance(child, nn.Module) or id(child) in private:
        return child
    own = copy.copy(child)
    setattr(parent, part, own)
    private.add(id(own))
    undo.append(lambda p=parent, n=part, c=child: setattr(p, n, c))
    return own


def _refresh_recurrent(model: nn.Module) -> None:
    """Point every ``nn.LSTM``/``nn.GRU``/``nn.RNN`` at its current parameters: they run from
    ``_flat_weights``, a list of them that replacing ``_parameters`` entries leaves stale."""
    for module in model.modules():
        if isinstance(module, nn.RNNBase):
            module._init_flat_weights()


# -- saving and loading -------------------------------------------------------------------


def save_pruned(result_or_model: Any, path: str | os.PathLike) -> Path:
    """Save a pruned model (or a ``StructuredResult``) as one safetensors file: the weights plus
    the recorded plan as JSON metadata, and a CRC-32 of every tensor and of the plan (checked by
    :func:`load_pruned`). Written atomically (temp file, then rename).

    Example::

        save_pruned(result, "resnet_pruned.safetensors")
        model = load_pruned("resnet_pruned.safetensors", lambda: ResNet())
    """
    from safetensors.torch import save_model

    model = getattr(result_or_model, "model", result_or_model)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"save_pruned expects a StructuredResult or an nn.Module, got {type(result_or_model).__name__}")
    plan = getattr(result_or_model, "plan", None) or plan_of(model) or empty_plan(model)
    path = Path(path)
    if not path.parent.exists():
        raise ConfigError(f"cannot save to {str(path)!r}: folder {str(path.parent)!r} does not exist")
    text = json.dumps(plan)
    checksums = {name: tensor_crc32(t) for name, t in model.state_dict().items()}
    checksums["__plan__"] = zlib.crc32(text.encode())
    with atomic_path(path) as temp:
        save_model(model, str(temp), metadata={STRUCTURED_PLAN_KEY: text, CHECKSUMS_KEY: json.dumps(checksums)})
    return path


def read_plan(path: str | os.PathLike) -> dict[str, Any]:
    """The plan stored in a file written by :func:`save_pruned`."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no such file: {str(path)!r}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception as exc:
        raise CorruptFileError(f"{str(path)!r} is not a readable safetensors file: {exc}") from exc
    if STRUCTURED_PLAN_KEY not in metadata:
        raise CorruptFileError(f"{str(path)!r} has no prunekit plan; it was not written by prunekit.torch.save_pruned")
    checksums = _checksums(path, metadata)
    text = metadata[STRUCTURED_PLAN_KEY]
    if checksums is not None:
        if checksums.get("__plan__") != zlib.crc32(text.encode()):
            raise CorruptFileError(f"{str(path)!r}: metadata field {STRUCTURED_PLAN_KEY!r} fails its CRC-32 check (corrupted)")
    try:
        plan = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CorruptFileError(f"{str(path)!r} holds a corrupted prunekit plan: {exc}") from exc
    try:
        validate_plan(plan)
    except CorruptFileError as exc:
        raise CorruptFileError(f"{str(path)!r}: {exc}") from None
    return plan


def _checksums(path: Path, metadata: dict[str, str]) -> dict[str, int] | None:
    """The per-tensor CRC-32s a file records (None for files written before prunekit recorded them)."""
    if CHECKSUMS_KEY not in metadata:
        return None
    try:
        checksums = json.loads(metadata[CHECKSUMS_KEY])
    except json.JSONDecodeError:
        checksums = None
    if not isinstance(checksums, dict) or not all(isinstance(v, int) and not isinstance(v, bool) for v in checksums.values()):
        raise CorruptFileError(f"{str(path)!r}: metadata field {CHECKSUMS_KEY!r} is not a mapping of tensor name -> CRC-32")
    return checksums


def verify_checksums(path: str | os.PathLike) -> int:
    """Check every tensor of a :func:`save_pruned` file against its recorded CRC-32; returns how many were checked.

    Raises :class:`CorruptFileError` naming the file and the first tensor whose bytes changed (or that
    has no recorded checksum). Files written before checksums were recorded check nothing (returns 0).

    Example::

        verify_checksums("digits_pruned.safetensors")
    """
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            checksums = _checksums(path, handle.metadata() or {})
            if checksums is None:
                return 0
            names = list(handle.keys())
            for name in names:
                if name not in checksums:
                    raise CorruptFileError(f"{str(path)!r}: tensor {name!r} has no recorded checksum (the file was altered)")
                if tensor_crc32(handle.get_tensor(name)) != checksums[name]:
                    raise CorruptFileError(
                        f"{str(path)!r}: tensor {name!r} fails its CRC-32 check (the file is corrupted); save it again"
                    )
    except CorruptFileError:
        raise
    except Exception as exc:
        raise CorruptFileError(f"{str(path)!r} is not a readable safetensors file: {exc}") from exc
    return len(names)


def load_pruned(path: str | os.PathLike, model_factory: Callable[[], nn.Module] | nn.Module) -> nn.Module:
    """Rebuild a pruned model: build the original architecture, replay the saved plan, load weights.

    ``model_factory`` is a callable returning the original (unpruned) model, or that model
    itself (then that model is modified in place). A model of another architecture raises
    ``StateMismatchError`` naming the first layer that does not match; a tensor whose bytes fail
    the CRC-32 recorded by :func:`save_pruned`, or a malformed plan, raises ``CorruptFileError``
    naming the file and tensor or field. Nothing is unpickled.

    Example::

        model = load_pruned("digits_cnn_pruned.safetensors", DigitsCNN)
    """
    from safetensors.torch import load_model

    plan = read_plan(path)
    verify_checksums(path)
    model = model_factory if isinstance(model_factory, nn.Module) else model_factory()
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model_factory must return an nn.Module, got {type(model).__name__}")
    try:
        apply_plan(model, plan)
    except CorruptFileError as exc:
        raise CorruptFileError(f"{str(path)!r}: {exc}") from None
    try:
        missing, unexpected = load_model(model, str(path), strict=False)
    except Exception as exc:
        raise StateMismatchError(f"weights in {str(path)!r} do not fit the rebuilt model: {exc}") from exc
    if missing or unexpected:
        first = (missing or unexpected)[0]
        raise StateMismatchError(
            f"layer {first.rpartition('.')[0]!r} does not match the file {str(path)!r}: tensor {first!r} is "
            f"{'missing from the file' if missing else 'not in the model'}; model_factory must build the "
            "architecture the model was pruned from"
        )
    attach_plan(model, plan)
    return model


__all__ = [
    "apply_plan",
    "attach_plan",
    "check_plan",
    "compose_plans",
    "empty_plan",
    "load_pruned",
    "plan_of",
    "read_plan",
    "save_pruned",
    "validate_plan",
    "verify_checksums",
]
