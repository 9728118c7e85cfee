"""Issue 16: PQAT/QAT export of a model with fully pruned channels that keep a bias.

ONNX Runtime's int8 kernels store a layer's bias in int32 with scale ``input_scale * weight_scale``;
a fully pruned channel used to get weight scale 1e-12, its bias overflowed int32 and was lost in
the int8 model (SQNR 6-20 dB against the fake-quant model). These tests fail without the
bias-aware weight-scale floor and check that the exported zeros are exactly the masks'.
"""

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from prunekit.torch import make_loader, prune_unstructured
from prunekit.torch.recover.qat import (
    BIAS_INT32_LIMIT,
    DEFAULT_SQNR_FLOOR_DB,
    QuantizationAwareTraining,
    bias_scale_floor,
    pqat,
    sqnr_db,
    weight_codes,
)
from tests.torch.pruned_digits import dense_cnn, digits


def initializers(path) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}


def onnx_output(path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def test_weight_codes_floor_raises_only_the_scales_below_it():
    weight = torch.tensor([[0.0, 0.0], [1.27, -0.635]])
    codes, scales = weight_codes(weight, min_scales=torch.tensor([0.5, 0.001]))
    assert scales.tolist() == pytest.approx([0.5, 0.01])  # all-zero channel: the floor; the other: max|w| / 127
    assert codes.tolist() == [[0.0, 0.0], [127.0, -64.0]]  # -0.635 / 0.01 = -63.5 rounds half to even
    conv = nn.Conv2d(1, 2, 1)
    with torch.no_grad():
        conv.bias.copy_(torch.tensor([0.5, -0.25]))
    floor = bias_scale_floor(conv, 0.25)
    assert floor.tolist() == pytest.approx([0.5 / (0.25 * BIAS_INT32_LIMIT), 0.25 / (0.25 * BIAS_INT32_LIMIT)])
    assert bias_scale_floor(nn.Linear(2, 2, bias=False), 0.25) is None


class DeadChannels(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6 * 8 * 8, 10)

    def forward(self, x):
        return self.fc(torch.flatten(torch.relu(self.bn(self.conv(x))), 1))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pqat_with_fully_pruned_channels_exports_within_the_floor_and_keeps_the_zeros(tmp_path, seed):
    torch.manual_seed(seed)
    split = digits()
    model = DeadChannels()
    masks = {"conv.weight": torch.rand(6, 1, 3, 3) > 0.5, "fc.weight": torch.rand(10, 384) > 0.8}
    masks["conv.weight"][[1, 4]] = False  # two conv channels and one output row fully pruned
    masks["fc.weight"][7] = False
    with torch.no_grad():
        model.conv.bias.copy_(torch.linspace(-0.3, 0.3, 6))
        model.fc.bias[7] = 0.4
    loader = make_loader(split.x_train[:256], split.y_train[:256], batch_size=64, seed=seed)
    controller = pqat(model, loader, epochs=1, lr=1e-3, masks=masks, progress=False)
    x = split.x_val[:64]
    result = controller.export_onnx(torch.as_tensor(x), tmp_path / "pqat.onnx")
    model.eval()
    with torch.no_grad():
        fake = model(torch.as_tensor(x)).numpy()
    assert result.sqnr_db >= DEFAULT_SQNR_FLOOR_DB
    assert sqnr_db(fake, onnx_output(result.path, x)) == pytest.approx(result.sqnr_db)
    stored = initializers(result.path)
    for name, mask in masks.items():
        codes = stored[f"{name}_quantized"]
        assert int((codes == 0).sum()) == int((~mask).sum()) == result.zeros[name], name
        assert np.array_equal(codes == 0, (~mask).numpy()), name
    # the dead channels' biases fit int32 at the stored scales, and they are the floor exactly
    input_scale = float(stored["conv.input_scale"])
    weight_scale = stored["conv.weight_scale"]
    bias = model.conv.bias.detach().numpy()
    assert np.all(np.abs(bias) / (input_scale * weight_scale.astype(np.float64)) <= BIAS_INT32_LIMIT * (1 + 1e-6))
    assert weight_scale[[1, 4]] == pytest.approx(np.abs(bias[[1, 4]]) / (input_scale * BIAS_INT32_LIMIT), rel=1e-6)
    # the check is deterministic: a second export gives the same figure and the same file
    again = controller.export_onnx(torch.as_tensor(x), tmp_path / "again.onnx")
    assert again.sqnr_db == result.sqnr_db
    assert (tmp_path / "again.onnx").read_bytes() == (tmp_path / "pqat.onnx").read_bytes()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pqat_on_the_issues_80_percent_digits_cnn_passes_its_sqnr_check(tmp_path, seed):
    torch.manual_seed(seed)
    split = digits()
    model = dense_cnn()
    prune_unstructured(model, 0.8)
    dead = int((model.conv1.weight.detach().reshape(32, -1) == 0).all(dim=1).sum())
    assert dead >= 1  # the case of the issue: fully pruned conv1 channels with a nonzero bias
    zeros = {n: int((p == 0).sum()) for n, p in model.named_parameters() if n.endswith("weight") and p.dim() > 1}
    loader = make_loader(split.x_train[:512], split.y_train[:512], batch_size=64, seed=seed)
    controller = pqat(model, loader, epochs=1, lr=1e-3, progress=False)
    result = controller.export_onnx(torch.as_tensor(split.x_val[:64]), tmp_path / "pqat.onnx")
    assert result.sqnr_db >= DEFAULT_SQNR_FLOOR_DB
    assert result.zeros == zeros
    stored = initializers(result.path)
    assert {n: int((stored[f"{n}_quantized"] == 0).sum()) for n in zeros} == zeros


def test_plain_qat_export_with_an_all_zero_channel_keeps_its_bias(tmp_path):
    torch.manual_seed(0)
    split = digits()
    model = dense_cnn()
    with torch.no_grad():
        model.conv1.weight[[3, 17]] = 0.0  # channels whose weights are all zero, biases kept
        model.conv1.bias[[3, 17]] = torch.tensor([0.3, -0.2])
    controller = QuantizationAwareTraining(model)
    model.train()
    with torch.no_grad():
        for start in range(0, 256, 64):  # calibrate the activation ranges
            model(torch.as_tensor(split.x_train[start : start + 64]))
    x = split.x_val[:64]
    result = controller.export_onnx(torch.as_tensor(x), tmp_path / "qat.onnx")
    assert result.sqnr_db >= DEFAULT_SQNR_FLOOR_DB
    codes = initializers(result.path)["conv1.weight_quantized"]
    assert not codes[[3, 17]].any()
    assert int((codes == 0).sum()) == result.zeros["conv1.weight"] >= 18
