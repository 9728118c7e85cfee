"""A zoo of small, randomly initialised architectures that structured pruning must handle.

``ZOO`` maps a name to a factory returning ``(model, example_inputs)``: the model is in eval
mode, and ``example_inputs`` is a tensor, a tuple of positional inputs, or a dict of keyword
inputs (``transformers`` models take ``{"input_ids": ...}``). Use :func:`run` to call a model
with any of the three, and :func:`main_output` to get the tensor a test should compare.

Example::

    from tests.zoo import ZOO, main_output, run
    model, inputs = ZOO["resnet_basic"]()
    logits = main_output(run(model, inputs))  # shape (2, 10)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from tests.zoo import cnns, hf, sequence

ExampleInputs = Any  # torch.Tensor | tuple[torch.Tensor, ...] | dict[str, torch.Tensor]


def _image_model(build: Callable[[], nn.Module], batch: int = 2, size: int = 32) -> Callable[[], tuple[nn.Module, torch.Tensor]]:
    def factory() -> tuple[nn.Module, torch.Tensor]:
        return build().eval(), torch.randn(batch, 3, size, size)

    factory.__name__ = getattr(build, "__name__", "factory")
    return factory


def _transformer_encoder() -> tuple[nn.Module, torch.Tensor]:
    return sequence.TransformerClassifier().eval(), torch.randint(0, 100, (2, 16))


ZOO: dict[str, Callable[[], tuple[nn.Module, ExampleInputs]]] = {
    "vgg": _image_model(cnns.VGG),
    "resnet_basic": _image_model(lambda: cnns.ResNet(cnns.BasicBlock, (2, 1, 1))),
    "resnet_bottleneck": _image_model(lambda: cnns.ResNet(cnns.Bottleneck, (2, 1), widths=(8, 16))),
    "mobilenetv2": _image_model(cnns.MobileNetV2),
    "densenet": _image_model(cnns.DenseNet),
    "unet": _image_model(cnns.UNet),
    "grouped_conv": _image_model(cnns.resnext),
    "chunk": _image_model(cnns.ChunkNet),
    "transformer_encoder": _transformer_encoder,
    "mlp_mixer": _image_model(sequence.MlpMixer),
    "hf_resnet": hf.hf_resnet,
    "hf_mobilenetv2": hf.hf_mobilenetv2,
    "hf_convnext": hf.hf_convnext,
    "hf_vit": hf.hf_vit,
    "hf_bert": hf.hf_bert,
    "hf_gpt2": hf.hf_gpt2,
    "hf_llama_gqa": hf.hf_llama_gqa,
}


def run(model: nn.Module, example_inputs: ExampleInputs) -> Any:
    """Call ``model`` with a tensor, a tuple of positional inputs, or a dict of keyword inputs."""
    if isinstance(example_inputs, dict):
        return model(**example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return model(*example_inputs)
    return model(example_inputs)


def main_output(output: Any) -> torch.Tensor:
    """The tensor to compare from a model's output: itself, ``logits``, ``last_hidden_state`` or the first."""
    if isinstance(output, torch.Tensor):
        return output
    for key in ("logits", "last_hidden_state"):
        value = getattr(output, key, None)
        if isinstance(value, torch.Tensor):
            return value
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"no tensor found in a model output of type {type(output).__name__}")


__all__ = ["ZOO", "ExampleInputs", "main_output", "run"]
