"""Teacher logits computed once and kept on the CPU, so an LLM student distils without its teacher in memory.

After one-shot pruning of a language model, the dense teacher and the pruned student rarely fit
on one device together. :class:`TeacherLogitCache` runs the teacher over the calibration/training
batches once, batch by batch under ``torch.no_grad()``, and keeps per token either the full logits
or only the ``top_k`` largest, as log-probabilities at the distillation temperature (values and
vocabulary indices; ``top_k=64`` of a 32k vocabulary is 0.2% of the memory). :func:`distill_from_cache` then trains the student on those batches with
:func:`cached_distillation_loss`: the KL from the teacher's softened distribution to the student's,
over the top k tokens plus one "any other token" outcome, times ``T**2``. With ``top_k=None`` it equals
:func:`~prunekit.torch.recover.distillation_loss` with ``alpha=1``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from prunekit.core.progress import progress as progress_bar
from prunekit.errors import ConfigError
from prunekit.torch.recover.distill import _call, _logits, _split, _to
from prunekit.torch.training import _model_device
from prunekit.torch.unstructured.pruner import Pruner


def cached_distillation_loss(
    student_logits: torch.Tensor,
    teacher_log_probs: torch.Tensor,
    teacher_indices: torch.Tensor | None,
    *,
    temperature: float = 1.0,
) -> torch.Tensor:
    """``T**2 * KL(p_t || p_s)`` per position, averaged, from the teacher's cached log-probabilities at ``T``.

    ``teacher_log_probs`` are ``log_softmax(teacher_logits / T)``: all of them
    (``teacher_indices=None``), or the top k with their vocabulary ``teacher_indices``. Top-k is the
    exact KL between the two distributions coarsened to k + 1 outcomes (the k tokens and "any other
    token"), so the student is not pushed to put all its mass on the k tokens.

    Example::

        loss = cached_distillation_loss(student(**batch).logits, log_probs, indices, temperature=2.0)
    """
    if not temperature > 0:
        raise ConfigError(f"temperature should be > 0, got {temperature!r}")
    classes = student_logits.shape[-1]
    log_student = F.log_softmax(student_logits.reshape(-1, classes).float() / temperature, dim=-1)
    log_teacher = teacher_log_probs.reshape(-1, teacher_log_probs.shape[-1]).float().to(log_student.device)
    if log_teacher.shape[0] != log_student.shape[0]:
        raise ConfigError(
            f"cached teacher logits cover {log_teacher.shape[0]} positions but the student gives {log_student.shape[0]}: "
            "the batch differs from the one the cache was built on"
        )
    if teacher_indices is None:
        if log_teacher.shape[-1] != classes:
            raise ConfigError(f"cached teacher logits have {log_teacher.shape[-1]} classes, the student {classes}")
        kl = (log_teacher.exp() * (log_teacher - log_student)).sum(-1)
    else:
        log_student = log_student.gather(1, teacher_indices.reshape(log_teacher.shape).to(log_student.device))
        kl = (log_teacher.exp() * (log_teacher - log_student)).sum(-1)
        rest_teacher = (1.0 - log_teacher.exp().sum(-1)).clamp_min(1e-12)
        rest_student = (1.0 - log_student.exp().sum(-1)).clamp_min(1e-12)
        kl = kl + rest_teacher * (rest_teacher.log() - rest_student.log())
    return temperature**2 * kl.mean()


class TeacherLogitCache:
    """The teacher's log-probabilities at ``temperature`` over a fixed list of batches, computed once, kept on the CPU
    (top-k or full).

    Example::

        cache = TeacherLogitCache(dense_llm, batches, top_k=64, temperature=2.0)   # dicts of input_ids, or tensors
        del dense_llm                                             # the teacher is no longer needed
        distill_from_cache(pruned_llm, cache, epochs=2, lr=1e-4)
    """

    def __init__(
        self,
        teacher: nn.Module,
        batches: Iterable[Any],
        *,
        top_k: int | None = 64,
        temperature: float = 1.0,
        dtype: torch.dtype = torch.float32,
    ):
        if not isinstance(teacher, nn.Module):
            raise ConfigError(f"the teacher should be a torch.nn.Module, got {type(teacher).__name__}")
        if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
            raise ConfigError(f"top_k should be an integer >= 1 or None (full logits), got {top_k!r}")
        if not (isinstance(temperature, (int, float)) and temperature > 0):
            raise ConfigError(f"temperature should be a number > 0, got {temperature!r}")
        self.top_k = top_k
        self.temperature = float(temperature)
        self.inputs: list[Any] = []
        self.values: list[torch.Tensor] = []
        self.indices: list[torch.Tensor | None] = []
        device = _model_device(teacher)
        mode = teacher.training
        teacher.eval()
        try:
            with torch.no_grad():
                for batch in batches:
                    inputs, _ = _split(batch)
                    logits = _logits(_call(teacher, _to(inputs, device)), "teacher")
                    values = F.log_softmax(logits.float() / self.temperature, dim=-1)
                    if top_k is not None and top_k < logits.shape[-1]:
                        values, indices = values.topk(top_k, dim=-1)
                        self.indices.append(indices.cpu())
                    else:
                        self.indices.append(None)
                    self.values.append(values.to(dtype).cpu())
                    self.inputs.append(inputs)
        finally:
            teacher.train(mode)
        if not self.inputs:
            raise ConfigError("the batches to cache teacher logits over are empty")

    def __len__(self) -> int:
        return len(self.inputs)

    @property
    def nbytes(self) -> int:
        """Bytes held by the cached values and indices."""
        held = [t for t in (*self.values, *self.indices) if t is not None]
        return sum(t.numel() * t.element_size() for t in held)


def distill_from_cache(
    student: nn.Module,
    cache: TeacherLogitCache,
    *,
    epochs: int,
    lr: float = 1e-4,
    optimizer: torch.optim.Optimizer | None = None,
    pruner: Pruner | None = None,
    progress: bool = True,
) -> list[dict[str, float]]:
    """Pure logit distillation of ``student`` on the cache's batches (no teacher needed); one record per epoch.

    With a ``pruner`` (e.g. ``NM(2, 4)``) it steps after every optimizer step and masks gradients and
    weights when this function builds the optimizer, so the pattern holds.

    Example::

        history = distill_from_cache(student, TeacherLogitCache(teacher, batches, top_k=32), epochs=3, lr=2e-3)
    """
    if not isinstance(cache, TeacherLogitCache):
        raise ConfigError(f"cache should be a TeacherLogitCache, got {type(cache).__name__}")
    if not isinstance(epochs, int) or epochs < 0:
        raise ConfigError(f"epochs should be an integer >= 0, got {epochs!r}")
    device = _model_device(student)
    own = optimizer is None
    if optimizer is None:
        optimizer = torch.optim.Adam(student.parameters(), lr=lr)
        if pruner is not None:
            pruner.attach(optimizer)
    history: list[dict[str, float]] = []
    try:
        with progress_bar("distil (cached teacher)", epochs * len(cache), enabled=progress) as advance:
            for epoch in range(epochs):
                student.train()
                started, total = time.perf_counter(), 0.0
                for inputs, values, indices in zip(cache.inputs, cache.values, cache.indices):
                    optimizer.zero_grad(set_to_none=True)
                    logits = _logits(_call(student, _to(inputs, device)), "student")
                    loss = cached_distillation_loss(logits, values, indices, temperature=cache.temperature)
                    loss.backward()
                    optimizer.step()
                    if pruner is not None:
                        pruner.step()
                    total += float(loss.detach())
                    advance()
                history.append({"epoch": epoch + 1, "loss": total / len(cache), "seconds": time.perf_counter() - started})
    finally:
        if own and pruner is not None and not pruner.stripped:
            pruner.detach()
    return history
