"""Every zoo entry builds, is in eval mode, and runs forward to a finite output of the expected shape."""

import pytest
import torch

from tests.zoo import ZOO, main_output, run

EXPECTED_SHAPES = {
    "vgg": (2, 10),
    "resnet_basic": (2, 10),
    "resnet_bottleneck": (2, 10),
    "mobilenetv2": (2, 10),
    "densenet": (2, 10),
    "unet": (2, 2, 32, 32),
    "grouped_conv": (2, 10),
    "chunk": (2, 10),
    "transformer_encoder": (2, 5),
    "mlp_mixer": (2, 10),
    "hf_resnet": (2, 10),
    "hf_mobilenetv2": (2, 10),
    "hf_convnext": (2, 10),
    "hf_vit": (2, 10),
    "hf_bert": (2, 12, 32),
    "hf_gpt2": (2, 12, 100),
    "hf_llama_gqa": (2, 12, 100),
}


def test_zoo_lists_every_expected_architecture():
    assert sorted(ZOO) == sorted(EXPECTED_SHAPES)


@pytest.mark.parametrize("name", sorted(EXPECTED_SHAPES))
def test_zoo_model_runs_forward_to_finite_output_of_expected_shape(name):
    model, inputs = ZOO[name]()
    assert not model.training
    with torch.no_grad():
        output = main_output(run(model, inputs))
    assert tuple(output.shape) == EXPECTED_SHAPES[name]
    assert torch.isfinite(output).all()
