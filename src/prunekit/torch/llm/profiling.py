"""The reference profile of a pruned language model, for drift monitoring once it is served.

:func:`lm_profile` runs the model over (a bounded share of) its calibration tokens and summarises
what a server would see: the token ids as one pooled feature (``input_ids``) and the next-token
predictions as classes (``logits``: predicted-token frequencies and a top-probability histogram).
The logits are reduced chunk by chunk on the model's device, so memory stays at one chunk of
``tokens x vocabulary`` whatever the vocabulary size. ``save_pruned(..., profile=...)`` writes it as
``profile.json`` beside the model, the name ``prunekit serve`` reads in a version directory.

Example::

    profile = lm_profile(model, calibration_tokens("train.txt", tok, n_samples=8, seq_len=512))
    save_pruned(model, "pruned", tokenizer_dir="MODEL_DIR", profile=profile)
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from prunekit.artifacts.profile import OutputProfile, ReferenceProfile, confidence_counts, profile_tensor
from prunekit.errors import ConfigError
from prunekit.torch.llm.capture import model_device

INPUT_NAME = "input_ids"
OUTPUT_NAME = "logits"


def lm_profile(model: nn.Module, tokens: torch.Tensor, *, max_tokens: int = 8192, chunk_tokens: int = 1024) -> ReferenceProfile:
    """Profile ``model`` on ``tokens`` (``(sequences, length)`` ids): at most ``max_tokens`` tokens, whole sequences.

    Example::

        lm_profile(model, torch.randint(0, 256, (4, 128))).outputs[0].class_counts
    """
    if tokens.ndim != 2 or tokens.dtype not in (torch.int32, torch.int64) or tokens.numel() == 0:
        raise ConfigError(f"lm_profile needs (sequences, length) integer token ids, got {tuple(tokens.shape)} {tokens.dtype}")
    rows = max(1, min(tokens.shape[0], max_tokens // tokens.shape[1]))
    ids = tokens[:rows]
    device = model_device(model)
    per_call = max(1, chunk_tokens // ids.shape[1])
    predicted, confidence = [], []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, rows, per_call):
                logits = model(input_ids=ids[start : start + per_call].to(device)).logits.float()
                if not torch.isfinite(logits).all():
                    raise ConfigError(
                        "the model's logits hold NaN or Inf on the calibration tokens; the profile would be meaningless"
                    )
                top, index = torch.softmax(logits, dim=-1).max(dim=-1)
                predicted.append(index.reshape(-1).cpu().numpy())
                confidence.append(top.reshape(-1).double().cpu().numpy())
                vocab = logits.shape[-1]
    finally:
        model.train(was_training)
    classes = np.bincount(np.concatenate(predicted), minlength=vocab)
    output = OutputProfile(
        OUTPUT_NAME,
        "classes",
        class_counts=tuple(int(c) for c in classes),
        confidence_counts=tuple(int(c) for c in confidence_counts(np.concatenate(confidence))),
        softmax=True,
    )
    inputs = (profile_tensor(INPUT_NAME, ids.cpu().numpy().astype(np.int64), layout="pooled"),)
    return ReferenceProfile(rows, inputs, (output,), source="prunekit.llm calibration tokens")
