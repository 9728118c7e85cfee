"""Judge a causal LM: sliding-window perplexity, next-token accuracy, sparsity, params, size, time, peak memory.

Perplexity follows the usual sliding window: windows of ``context`` tokens start every ``stride``
tokens, and each window scores only the tokens the previous one did not, each with up to
``context - 1`` tokens of history. With ``stride == context`` the windows are disjoint.
"""

from __future__ import annotations

import math
import os
import resource
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.torch.llm.calibration import _check_vocab, token_stream
from prunekit.torch.llm.capture import model_device
from prunekit.torch.llm.discovery import find_decoder_stack, weight_matrix
from prunekit.torch.llm.sequential import context_length


@dataclass
class Perplexity:
    """A perplexity run: ``perplexity = exp(nll / tokens)``, ``accuracy`` of the argmax next token, wall ``seconds``."""

    perplexity: float
    nll: float
    tokens: int
    accuracy: float
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def perplexity(
    model: nn.Module,
    text: Any,
    tokenizer: Any = None,
    *,
    context: int | None = None,
    stride: int | None = None,
    max_tokens: int | None = None,
    batch_size: int = 8,
) -> Perplexity:
    """Perplexity and next-token accuracy of ``model`` on ``text`` (a file path, strings or token ids).

    ``context`` defaults to the model's context length, ``stride`` to ``context`` (disjoint
    windows); ``max_tokens`` keeps only the first tokens of the text; ``batch_size`` windows
    of equal length run together.

    Example::

        perplexity(model, "valid.txt", tokenizer, context=512, stride=256).perplexity
    """
    ids = token_stream(text, tokenizer, max_tokens=max_tokens)
    limit = context_length(model)
    context = min(context or limit or 1024, limit or sys.maxsize)
    stride = stride or context
    if context < 2 or not 1 <= stride <= context:
        raise ConfigError(f"perplexity needs context >= 2 and 1 <= stride <= context, got context={context}, stride={stride}")
    if ids.numel() < 2:
        raise ConfigError(f"the evaluation text holds {ids.numel()} tokens; it needs at least 2")
    _check_vocab(ids, getattr(getattr(model, "config", None), "vocab_size", None), "evaluation")
    device = model_device(model)
    nll, correct, scored = 0.0, 0, 0
    started = time.perf_counter()
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            windows = []  # (begin, end, first): score targets[first:] of ids[begin:end]
            scored_until = 1  # absolute index of the first token not scored yet (token 0 has no history)
            for begin in range(0, ids.numel() - 1, stride):
                end = min(begin + context, ids.numel())
                windows.append((begin, end, max(scored_until, begin + 1) - begin - 1))
                scored_until = end
                if end == ids.numel():
                    break
            index = 0
            while index < len(windows):  # windows of one length and offset run as one batch
                _, end0, first = windows[index]
                length = end0 - windows[index][0]
                group = [windows[index]]
                while (
                    index + len(group) < len(windows)
                    and len(group) < batch_size
                    and windows[index + len(group)][1] - windows[index + len(group)][0] == length
                    and windows[index + len(group)][2] == first
                ):
                    group.append(windows[index + len(group)])
                index += len(group)
                batch = torch.stack([ids[b:e] for b, e, _ in group]).to(device)
                logits = _logits(model, batch)[:, :-1][:, first:].float()
                chosen = batch[:, 1:][:, first:]
                logp = torch.log_softmax(logits, dim=-1)
                nll -= float(logp.gather(2, chosen.unsqueeze(2)).sum())
                correct += int((logits.argmax(dim=-1) == chosen).sum())
                scored += int(chosen.numel())
    finally:
        model.train(was_training)
    return Perplexity(math.exp(nll / scored), nll, scored, correct / scored, time.perf_counter() - started)


def _logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    try:
        out = model(input_ids=ids, use_cache=False)
    except TypeError:
        out = model(ids)
    return out.logits if hasattr(out, "logits") else out[0] if isinstance(out, (tuple, list)) else out


def layer_sparsity(model: nn.Module) -> dict[str, float]:
    """The share of zeros of every decoder-block projection, by qualified name.

    Example::

        layer_sparsity(model)["model.layers.0.mlp.up_proj"]  # 0.5
    """
    stack = find_decoder_stack(model)
    modules = dict(model.named_modules())
    result = {}
    for index in range(len(stack.blocks)):
        for name in stack.projection_names(index):
            weight = weight_matrix(modules[name])
            result[name] = float((weight == 0).sum()) / weight.numel()
    return result


def directory_bytes(path: str | os.PathLike) -> int:
    """Total size of the files under ``path`` (a saved model directory)."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def peak_rss_bytes() -> int:
    """This process's peak resident memory so far (``ru_maxrss``)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def model_report(
    model: nn.Module,
    text: Any = None,
    tokenizer: Any = None,
    *,
    context: int | None = None,
    stride: int | None = None,
    max_tokens: int | None = None,
    directory: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Everything prunekit measures of a causal LM, as one JSON-ready dict.

    Keys: ``params``, ``nonzeros``, ``block_sparsity`` (zeros over all block projections),
    ``layers`` (per-projection sparsity), ``size_bytes`` (of ``directory`` if given), and with
    ``text``: ``perplexity``, ``accuracy``, ``tokens``, ``seconds``; ``peak_rss_bytes`` last.

    Example::

        model_report(model, "valid.txt", tokenizer, context=256)["perplexity"]
    """
    layers = layer_sparsity(model)
    modules = dict(model.named_modules())
    sizes = {n: weight_matrix(modules[n]).numel() for n in layers}
    report: dict[str, Any] = {
        "params": sum(p.numel() for p in model.parameters()),
        "nonzeros": sum(int((p != 0).sum()) for p in model.parameters()),
        "block_sparsity": sum(layers[n] * sizes[n] for n in layers) / max(sum(sizes.values()), 1),
        "layers": layers,
    }
    if directory is not None:
        report["size_bytes"] = directory_bytes(directory)
    if text is not None:
        report.update(perplexity(model, text, tokenizer, context=context, stride=stride, max_tokens=max_tokens).to_dict())
    report["peak_rss_bytes"] = peak_rss_bytes()
    if torch.cuda.is_available() and model_device(model).type == "cuda":
        report["peak_cuda_bytes"] = int(torch.cuda.max_memory_allocated())
    return report


def comparison_rows(reports: dict[str, dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Columns and formatted rows of a table with one row per model (dense beside pruned).

    Example::

        columns, rows = comparison_rows({"dense": dense_report, "wanda 50%": pruned_report})
    """
    columns = ["model", "perplexity", "next-token acc", "block sparsity", "params", "nonzeros", "size", "eval s", "peak RSS"]
    rows = []
    for name, r in reports.items():
        rows.append(
            [
                name,
                f"{r['perplexity']:.3f}" if "perplexity" in r else "-",
                f"{r['accuracy']:.2%}" if "accuracy" in r else "-",
                f"{r['block_sparsity']:.1%}",
                f"{r['params']:,}",
                f"{r['nonzeros']:,}",
                f"{r['size_bytes'] / 2**20:.1f} MiB" if "size_bytes" in r else "-",
                f"{r['seconds']:.1f}" if "seconds" in r else "-",
                f"{r['peak_rss_bytes'] / 2**20:.0f} MiB",
            ]
        )
    if not any("size_bytes" in r for r in reports.values()):  # no directory measured: leave the column out
        size = columns.index("size")
        columns = columns[:size] + columns[size + 1 :]
        rows = [row[:size] + row[size + 1 :] for row in rows]
    return columns, rows
