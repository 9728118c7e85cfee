"""Load a ``save_pretrained`` model directory with checks, and save a pruned model atomically.

A saved directory is what ``transformers.AutoModelForCausalLM.from_pretrained`` loads
(safetensors + ``config.json``), with the tokenizer files of the source directory copied and
``prunekit_llm.json`` (the recipe and per-layer sparsity) beside them. It is written into a
hidden temporary directory next to the target and renamed into place, so a failed run leaves
no half-written directory (and an existing target stays as it was until the new one is whole).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from prunekit.artifacts.profile import PROFILE_FILE, ReferenceProfile
from prunekit.core.atomic import new_file_mode
from prunekit.errors import ConfigError

RECORD_NAME = "prunekit_llm.json"
COMPACT_NAME = "compact.safetensors"
WEIGHT_GLOBS = ("*.safetensors", "pytorch_model*.bin", "*.safetensors.index.json", "pytorch_model.bin.index.json")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "vocab.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "generation_config.json",
)


def check_model_dir(path: str | os.PathLike) -> Path:
    """``path`` as a ``Path`` if it holds ``config.json`` and weights, else a :class:`ConfigError` saying what is missing.

    Example::

        check_model_dir("pruned-model")
    """
    directory = Path(path)
    if not directory.is_dir():
        raise ConfigError(f"model directory {str(directory)!r} does not exist; give a save_pretrained directory")
    missing = []
    if not (directory / "config.json").is_file():
        missing.append("config.json")
    if not any(any(directory.glob(glob)) for glob in WEIGHT_GLOBS):
        missing.append("weights (*.safetensors or pytorch_model.bin)")
    if missing:
        raise ConfigError(
            f"model directory {str(directory)!r} has no {' and no '.join(missing)}; "
            "it must be a save_pretrained directory of a causal LM"
        )
    return directory


def load_model_dir(path: str | os.PathLike, *, dtype: Any = None) -> tuple[nn.Module, Any]:
    """``(model, tokenizer)`` from a checked model directory; the tokenizer is ``None`` when the directory has none.

    Raises :class:`ConfigError` when the tokenizer's vocabulary is larger than the model's.

    Example::

        model, tokenizer = load_model_dir("models/small-lm")
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = check_model_dir(path)
    kwargs = {"dtype": dtype} if dtype is not None else {}
    model = AutoModelForCausalLM.from_pretrained(directory, **kwargs).eval()
    tokenizer = None
    if any((directory / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        tokenizer = AutoTokenizer.from_pretrained(directory)
        check_vocab(model, tokenizer, str(directory))
    return model, tokenizer


def check_vocab(model: nn.Module, tokenizer: Any, where: str = "the model") -> None:
    """A :class:`ConfigError` when ``tokenizer`` can produce ids the model's embedding has no row for."""
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    size = len(tokenizer) if hasattr(tokenizer, "__len__") else getattr(tokenizer, "vocab_size", None)
    if isinstance(vocab, int) and isinstance(size, int) and size > vocab:
        raise ConfigError(
            f"tokenizer of {where} has {size} tokens but the model's vocabulary has {vocab}: they do not belong together"
        )


def prepare_output_dir(path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Check an output directory before any work: it must not exist (unless ``overwrite``) and its parent must be writable."""
    target = Path(path)
    if target.exists() and not overwrite:
        raise ConfigError(f"output directory {str(target)!r} already exists; choose another or pass overwrite")
    if target.exists() and not target.is_dir():
        raise ConfigError(f"output {str(target)!r} is a file, not a directory")
    parent = target.parent if str(target.parent) else Path(".")
    parent.mkdir(parents=True, exist_ok=True)
    if not os.access(parent, os.W_OK):
        raise ConfigError(f"cannot write into {str(parent)!r}; choose a writable output directory")
    return target


def save_pruned(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    tokenizer_dir: str | os.PathLike | None = None,
    tokenizer: Any = None,
    record: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    compact: bool = False,
    profile: ReferenceProfile | None = None,
) -> Path:
    """Save ``model`` (and tokenizer files, and ``record`` as ``prunekit_llm.json``) into ``path`` atomically.

    Tokenizer files are copied from ``tokenizer_dir`` when given, else written by ``tokenizer``.
    ``compact=True`` also writes the weights in prunekit's compact sparse format (``COMPACT_NAME``,
    read with :func:`prunekit.artifacts.compact.load_compact`), worth it for N:M and high sparsity.
    ``profile`` (from :func:`prunekit.torch.llm.profiling.lm_profile`) is written as ``profile.json``,
    the reference a server judges drift against.

    Example::

        save_pruned(model, "pruned", tokenizer_dir="models/small-lm", record=result.to_dict())
        AutoModelForCausalLM.from_pretrained("pruned")
    """
    target = prepare_output_dir(path, overwrite=overwrite)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        if compact:
            from prunekit.artifacts.compact import save_compact

            arrays = {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items() if v.is_floating_point()}
            save_compact(arrays, tmp / COMPACT_NAME, framework="torch", extra={"source": "prunekit.llm"})
        if tokenizer_dir is not None:
            for name in TOKENIZER_FILES:
                source = Path(tokenizer_dir) / name
                if source.is_file() and not (tmp / name).exists():
                    shutil.copy2(source, tmp / name)
        elif tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if profile is not None:
            profile.save(tmp / PROFILE_FILE)
        if record is not None:
            (tmp / RECORD_NAME).write_text(json.dumps(record, indent=2, sort_keys=True, allow_nan=False) + "\n")
        os.chmod(tmp, new_file_mode(directory=True))
        _swap_into_place(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _swap_into_place(tmp: Path, target: Path) -> None:
    if not target.exists():
        os.replace(tmp, target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
    old.rmdir()
    os.replace(target, old)
    try:
        os.replace(tmp, target)
    except BaseException:
        os.replace(old, target)
        raise
    with contextlib.suppress(OSError):
        shutil.rmtree(old)
