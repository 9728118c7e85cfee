"""Load weights of any kind prunekit writes into a freshly built model."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any


def load_weights(path: str, factory: Callable[[], Any]) -> Any:
    """Build ``factory()`` and load a compact file, ``save_pruned`` file, safetensors or torch state_dict into it.

    Example::

        model = load_weights("pruned.safetensors", DigitsCNN)
    """
    import torch

    from prunekit.artifacts.compact import is_compact_file
    from prunekit.errors import ConfigError, CorruptFileError
    from prunekit.torch.deploy.compact import check_state_fits, load_compressed

    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"weights file {file} does not exist")
    if is_compact_file(file):
        return load_compressed(file, factory)
    if file.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open
        from safetensors.torch import load_file

        from prunekit.torch.structured.plan import STRUCTURED_PLAN_KEY, load_pruned

        try:
            with safe_open(str(file), framework="pt") as handle:
                metadata = handle.metadata() or {}
            state = load_file(str(file))
        except (SafetensorError, OSError) as exc:
            raise CorruptFileError(f"{file} is not a readable safetensors file: {exc}") from None
        if STRUCTURED_PLAN_KEY in metadata:  # written by save_pruned: replay its plan
            return load_pruned(file, factory)
    else:
        try:
            state = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch.load raises many types for a bad or non-weights file
            raise CorruptFileError(
                f"{file} is not a readable torch state_dict (weights_only load): {str(exc).splitlines()[0][:300]}. "
                "prunekit never unpickles code from a file; if it is a pickled model you trust, convert it once "
                "to safetensors: load it in Python with torch.load (weights_only disabled, trusted files only), then "
                "safetensors.torch.save_model(model, 'model.safetensors')"
            ) from None
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"{file} does not hold a state_dict (a dict of tensors)")
    model = factory()
    check_state_fits(model, {name: tuple(t.shape) for name, t in state.items()}, str(file))
    model.load_state_dict(state, strict=True)
    return model
