"""A small byte-level Llama trained here, on the source of Python's standard library (no download needed).

:func:`ensure_small_lm` returns the cached model directory (``$PRUNEKIT_CACHE`` or
``~/.cache/prunekit``, then ``small-lm-v2``), training it when missing: ~1.7M parameters
(hidden 128, 8 blocks so that depth pruning has blocks to choose from, vocabulary of 256 bytes +
3 specials). Training is a fixed number of seeded steps (no wall-clock cutoff unless asked), so the
same machine builds the same model every time.
The directory holds a ``save_pretrained`` model, its tokenizer, and ``train.txt``/``valid.txt``
(the stdlib split by file, the validation text held out).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sysconfig
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from prunekit.core.atomic import new_file_mode
from prunekit.errors import ConfigError

CACHE_ENV = "PRUNEKIT_CACHE"
SPECIALS = ("<s>", "</s>", "<pad>")
MODEL_NAME = "small-lm-v2"


def cache_dir() -> Path:
    """prunekit's cache directory: ``$PRUNEKIT_CACHE``, else ``$XDG_CACHE_HOME/prunekit``, else ``~/.cache/prunekit``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "prunekit"


def byte_tokenizer() -> Any:
    """A ``transformers`` fast tokenizer with one token per byte (ids 0-255) plus ``<s>``, ``</s>``, ``<pad>`` (256-258).

    Example::

        byte_tokenizer().encode("hi", add_special_tokens=False)  # [104, 105]
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    byte_to_char = _bytes_to_unicode()
    vocab = {byte_to_char[b]: b for b in range(256)}
    assert set(vocab) == set(alphabet)
    for offset, token in enumerate(SPECIALS):
        vocab[token] = 256 + offset
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (the alphabet of ``ByteLevel``)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars, strict=True)}


def stdlib_texts(max_bytes: int = 12_000_000, valid_every: int = 25) -> tuple[str, str]:
    """``(train, valid)`` text from the standard library's ``.py`` files, sorted by path; every ``valid_every``-th file is held out.

    Example::

        train, valid = stdlib_texts(2_000_000)
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(
        p for p in root.rglob("*.py") if "site-packages" not in p.parts and "test" not in p.parts[len(root.parts) :][:1]
    )
    if not files:
        raise ConfigError(f"found no Python files under the standard library at {root}")
    train, valid = [], []
    size = 0
    for index, path in enumerate(files):
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        (valid if index % valid_every == valid_every - 1 else train).append(text)
        size += len(text)
        if size >= max_bytes:
            break
    train_text, valid_text = "\n\n".join(train), "\n\n".join(valid)
    if len(valid_text) < len(train_text) // (4 * valid_every):  # too few files to hold some out: hold out the tail
        cut = len(train_text) - len(train_text) // valid_every
        train_text, valid_text = train_text[:cut], train_text[cut:] + ("\n\n" + valid_text if valid_text else "")
    return train_text, valid_text


@dataclass(frozen=True)
class SmallLMConfig:
    """Size and training budget of the small LM: 1.7M parameters in 8 blocks, a fixed number of seeded steps.

    ``max_seconds`` (default none) stops training early after that much wall-clock time; it makes
    the result depend on the machine's speed, so the cached model is built without it.
    """

    hidden: int = 128
    intermediate: int = 384
    layers: int = 8
    heads: int = 2
    context: int = 128
    steps: int = 500
    batch: int = 16
    lr: float = 4e-3
    warmup: int = 30
    seed: int = 0
    max_seconds: float | None = None
    max_bytes: int = 12_000_000


def train_small_lm(
    output: str | os.PathLike,
    config: SmallLMConfig = SmallLMConfig(),
    log: Callable[[str], None] | None = print,
    init_from: str | os.PathLike | None = None,
) -> Path:
    """Train the byte-level Llama on the stdlib and save it (atomically) with its tokenizer and text split into ``output``.

    Training runs ``config.steps`` seeded steps (linear warmup, then cosine decay to a tenth of the
    peak rate), or stops at ``config.max_seconds`` when that is given;
    ``init_from`` (a directory this function wrote) continues training that model instead of a fresh one.

    Example::

        train_small_lm("/tmp/small-lm", SmallLMConfig(steps=50, max_seconds=30))
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(config.seed)
    tokenizer = byte_tokenizer()
    train_text, valid_text = stdlib_texts(config.max_bytes)
    stream = torch.frombuffer(bytearray(train_text.encode("utf-8")), dtype=torch.uint8).long()
    model_config = LlamaConfig(
        vocab_size=len(SPECIALS) + 256,
        hidden_size=config.hidden,
        intermediate_size=config.intermediate,
        num_hidden_layers=config.layers,
        num_attention_heads=config.heads,
        num_key_value_heads=config.heads,
        max_position_embeddings=config.context,
        bos_token_id=256,
        eos_token_id=257,
        pad_token_id=258,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM.from_pretrained(init_from) if init_from is not None else LlamaForCausalLM(model_config)
    previous = json.loads((Path(init_from) / "training.json").read_text()) if init_from is not None else {}
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.1, betas=(0.9, 0.95))
    generator = torch.Generator().manual_seed(config.seed)
    started = time.perf_counter()
    model.train()
    done = 0
    for step in range(config.steps):
        if config.max_seconds is not None and time.perf_counter() - started > config.max_seconds:
            break
        done = step + 1
        warm = min(1.0, (step + 1) / max(config.warmup, 1))
        decay = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / config.steps))
        for group in optimizer.param_groups:
            group["lr"] = config.lr * warm * decay
        starts = torch.randint(0, stream.numel() - config.context - 1, (config.batch,), generator=generator)
        batch = torch.stack([stream[int(s) : int(s) + config.context] for s in starts])
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if log is not None and (step % 50 == 0 or step == config.steps - 1):
            log(f"step {step:5d}  loss {loss.item():.3f}  {time.perf_counter() - started:6.0f} s")
    model.eval()
    target = Path(output)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "train.txt").write_text(train_text, encoding="utf-8")
        (tmp / "valid.txt").write_text(valid_text, encoding="utf-8")
        (tmp / "training.json").write_text(
            json.dumps(
                {
                    **asdict(config),
                    "steps_done": done + previous.get("steps_done", 0),
                    "seconds": time.perf_counter() - started + previous.get("seconds", 0.0),
                },
                indent=2,
            )
            + "\n"
        )
        os.chmod(tmp, new_file_mode(directory=True))  # mkdtemp's owner-only mode is not the cache's
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def ensure_small_lm(
    rebuild: bool = False, log: Callable[[str], None] | None = print, config: SmallLMConfig = SmallLMConfig()
) -> Path:
    """The cached small LM's directory, trained first when it is missing (or ``rebuild``).

    Example::

        model_dir = ensure_small_lm()
        AutoModelForCausalLM.from_pretrained(model_dir)
    """
    target = cache_dir() / MODEL_NAME
    complete = all((target / name).is_file() for name in ("config.json", "model.safetensors", "valid.txt", "tokenizer.json"))
    if rebuild or not complete:
        if log is not None:
            log(f"training the small LM into {target} (once; a few minutes on 2 CPU cores)")
        train_small_lm(target, config, log)
    return target
