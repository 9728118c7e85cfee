"""QAT and PQAT: hand-computed fake quantization, an int8 QDQ ONNX that ONNX Runtime runs like the fake-quant
model, the pruned zeros kept exactly (unstructured and 2:4), and loud errors."""

import functools
import importlib

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from prunekit import ConfigError, ExportError
from prunekit.torch import NM, DigitsCNN, Pruner, evaluate, make_loader
from prunekit.torch.recover.qat import QuantizationAwareTraining, pqat, qat, sqnr_db, weight_codes
from tests.torch.pruned_digits import dense_cnn, digits, pruned_cnn

fake_quant = importlib.import_module("prunekit.torch.recover.fake_quant")
qdq = importlib.import_module("prunekit.torch.recover.qdq")


@functools.cache
def loaders():
    split = digits()
    return make_loader(split.x_train, split.y_train, batch_size=64, seed=0), make_loader(
        split.x_test, split.y_test, shuffle=False
    )


def int8_weights(path) -> dict[str, np.ndarray]:
    model = onnx.load(str(path))
    return {
        i.name[: -len("_quantized")]: numpy_helper.to_array(i)
        for i in model.graph.initializer
        if i.name.endswith(".weight_quantized")
    }


def optimized_ops(path, tmp_path) -> list[str]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return [node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node]


def test_weight_codes_match_a_hand_computation():
    weight = torch.tensor([[0.5, -1.0, 0.001, 0.3], [0.2, 0.1, -0.05, 0.0]])
    codes, scales = weight_codes(weight)
    assert scales.tolist() == pytest.approx([1.0 / 127, 0.2 / 127])
    assert codes.tolist() == [[64.0, -127.0, 0.0, 38.0], [127.0, 64.0, -32.0, 0.0]]  # 63.5 -> 64, 31.75 -> 32
    mask = torch.tensor([[True, True, True, False], [True, True, True, True]])
    codes, scales = weight_codes(weight, mask)
    assert scales.tolist() == pytest.approx([1.0 / 127, 0.2 / 127])
    assert codes[0].tolist() == [64.0, -127.0, 1.0, 0.0]  # masked 0.3 -> 0; kept 0.001 never rounds to 0
    assert codes[1].tolist() == [127.0, 64.0, -32.0, 1.0]  # a kept exact zero becomes +1 step, so zeros == mask


def test_activation_qparams_and_fake_quant_match_a_hand_computation():
    scale, zero_point = fake_quant._act_qparams(-1.0, 3.0)
    assert scale == pytest.approx(4.0 / 255) and zero_point == 64
    x = torch.tensor([-2.0, -1.0, 0.0, 0.01, 3.0, 5.0], requires_grad=True)
    out = fake_quant._fake_quant_activation(x, scale, zero_point)
    expected = [(-64) * scale, (-64) * scale, 0.0, round(0.01 / scale) * scale, 191 * scale, 191 * scale]
    assert out.tolist() == pytest.approx(expected, abs=1e-6)
    out.sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 0.0]  # straight through inside the range only


def test_qat_keeps_class_and_state_dict_keys_and_close_leaves_a_plain_model():
    model = dense_cnn()
    keys = list(model.state_dict())
    controller = QuantizationAwareTraining(model)
    assert type(model) is DigitsCNN and list(model.state_dict()) == keys
    assert sorted(controller.layers) == ["conv1", "conv2", "fc1", "fc2"]
    x = torch.as_tensor(digits().x_val[:8])
    fake = model(x)
    assert not torch.equal(fake, dense_cnn()(x))  # the forward is fake-quantized
    assert all(not isinstance(v, torch.Tensor) or k != "weight" for m in model.modules() for k, v in vars(m).items())
    plain = controller.close()
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in plain.modules())
    torch.testing.assert_close(plain(x), dense_cnn()(x))


def test_qat_int8_onnx_matches_the_fake_quant_model_and_runs_int8_kernels(tmp_path):
    train, test = loaders()
    model = dense_cnn()
    controller = qat(model, train, epochs=1, lr=1e-4, progress=False)
    x = torch.as_tensor(digits().x_test[:128])
    with torch.no_grad():
        model.eval()
        fake = model(x).numpy()
    result = controller.export_onnx(x, tmp_path / "model.int8.onnx")
    import onnxruntime as ort

    got = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    assert sqnr_db(fake, got) >= 35.0
    assert result.sqnr_db == pytest.approx(sqnr_db(fake, got))
    assert (got.argmax(1) == fake.argmax(1)).mean() >= 0.99
    assert set(int8_weights(result.path)) == {"conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight"}
    ops = optimized_ops(result.path, tmp_path)
    assert ops.count("QLinearConv") == 2 and ops.count("QGemm") == 2
    assert evaluate(model, test) > 0.9
    controller.close()


def mask_zero_positions(masks: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {name: (~mask).numpy() for name, mask in masks.items()}


def test_pqat_export_has_exactly_the_unstructured_masks_zeros(tmp_path):
    train, _ = loaders()
    model = pruned_cnn()  # 90% of each conv/linear weight exactly zero, pruner stripped
    masks = {f"{n}.weight": (getattr(model, n).weight != 0) for n in ("conv1", "conv2", "fc1", "fc2")}
    controller = pqat(model, train, epochs=1, lr=1e-3, progress=False)  # masks from the zeros
    result = controller.export_onnx(torch.as_tensor(digits().x_val[:64]), tmp_path / "pqat.onnx")
    stored = int8_weights(result.path)
    for name, mask in masks.items():
        assert int((stored[name] == 0).sum()) == int((~mask).sum()) == result.zeros[name], name
        assert np.array_equal(stored[name] == 0, (~mask).numpy()), name
        assert torch.equal(model.get_parameter(name) == 0, ~mask)  # the float weights kept them too


def test_pqat_export_keeps_the_2_4_pattern(tmp_path):
    train, _ = loaders()
    model = dense_cnn()
    pruner = Pruner(model, 0.5, pattern=NM(2, 4), exclude=["conv1"])
    pruner.prune()
    masks = pruner.masks
    controller = pqat(model, train, epochs=1, lr=1e-3, masks=pruner, progress=False)
    result = controller.export_onnx(torch.as_tensor(digits().x_val[:64]), tmp_path / "nm.onnx")
    stored = int8_weights(result.path)
    for name, mask in masks.items():
        codes = stored[name]
        assert np.array_equal(codes == 0, (~mask).numpy()), name
        groups = (codes != 0).reshape(codes.shape[0], codes.shape[1] // 4, 4, -1)
        assert (groups.sum(axis=2) == 2).all(), f"{name}: not 2 of every 4"
    assert int((stored["conv1.weight"] == 0).sum()) == 0  # the unpruned layer holds no forced zeros


def test_pqat_without_masks_is_an_error():
    train, _ = loaders()
    with pytest.raises(ConfigError, match="prune first, or use qat"):
        pqat(dense_cnn(), train, epochs=1, progress=False)
    stripped = Pruner(dense_cnn(), 0.5)
    stripped.prune()
    stripped.strip()
    with pytest.raises(ConfigError, match="stripped"):
        pqat(stripped.model, train, epochs=1, masks=stripped, progress=False)


def test_export_whose_zeros_differ_from_the_masks_is_refused(tmp_path, monkeypatch):
    model = pruned_cnn()
    controller = QuantizationAwareTraining(model, masks="zeros")
    x = torch.as_tensor(digits().x_val[:16])
    model(x)  # observe ranges
    real = qdq.weight_codes

    def losing_a_zero(weight, mask=None, min_scales=None):
        codes, scales = real(weight, mask, min_scales)
        codes = codes.clone()
        codes.view(-1)[torch.nonzero(codes.view(-1) == 0)[0]] = 1.0
        return codes, scales

    monkeypatch.setattr(qdq, "weight_codes", losing_a_zero)
    with pytest.raises(ExportError, match="differ from its pruning mask"):
        controller.export_onnx(x, tmp_path / "bad.onnx")
    assert not (tmp_path / "bad.onnx").exists()


def test_unsupported_layers_are_named_and_left_in_float():
    class Decoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(10, 4)
            self.up = nn.ConvTranspose1d(4, 4, 2)
            self.head = nn.Linear(4, 3)

        def forward(self, ids):
            return self.head(self.up(self.embed(ids).transpose(1, 2)).transpose(1, 2))

    controller = QuantizationAwareTraining(Decoder())
    assert list(controller.layers) == ["head"]
    assert set(controller.float_layers) == {"embed", "up"}
    assert "ConvTranspose1d" in controller.float_layers["up"]


def test_bad_targets_and_masks_are_named():
    with pytest.raises(ConfigError, match=r"\['blocks\.\*'\] match no layer"):
        QuantizationAwareTraining(DigitsCNN(), targets=["blocks.*"])
    with pytest.raises(ConfigError, match="shape"):
        QuantizationAwareTraining(DigitsCNN(), masks={"fc2.weight": torch.ones(3, 3, dtype=torch.bool)})
    with pytest.raises(ConfigError, match="no quantized layer"):
        QuantizationAwareTraining(DigitsCNN(), exclude=["fc2"], masks={"fc2.weight": torch.ones(10, 128, dtype=torch.bool)})


def test_sqnr_of_a_hand_example():
    assert sqnr_db(np.array([1.0, 2.0]), np.array([1.0, 2.1])) == pytest.approx(10 * np.log10(5 / 0.01))
    assert sqnr_db(np.ones(3), np.ones(3)) == float("inf")


class _SequenceNet(nn.Module):
    """Conv1d, a depthwise Conv2d and a Linear applied to (batch, length, features): MatMul + Add in ONNX."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(4, 8, 3, padding=1)
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.proj = nn.Linear(8, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        h = torch.relu(self.conv(x))  # (B, 8, L)
        h = self.depthwise(h.unsqueeze(2)).squeeze(2)
        h = torch.relu(self.proj(h.transpose(1, 2)))  # (B, L, 6): MatMul + Add
        return self.head(h.mean(1))


def test_qat_export_handles_conv1d_depthwise_and_matmul_linears(tmp_path):
    torch.manual_seed(0)
    model = _SequenceNet()
    controller = QuantizationAwareTraining(model)
    x = torch.randn(64, 4, 10)
    model.train()
    for _ in range(5):
        model(x)  # observe ranges
    model.eval()
    with torch.no_grad():
        fake = model(x).numpy()
    result = controller.export_onnx(x, tmp_path / "seq.onnx")
    assert result.float_layers == {}
    assert set(int8_weights(result.path)) == {"conv.weight", "depthwise.weight", "proj.weight", "head.weight"}
    import onnxruntime as ort

    got = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    assert sqnr_db(fake, got) >= 35.0


def _ranges(controller):
    return [(r.low, r.high) for layer in controller.layers.values() for r in (layer.input_range, layer.output_range)]


def test_activation_ranges_frozen_after_n_training_batches_are_exactly_constant():
    x = torch.as_tensor(digits().x_val[:32])
    frozen, moving = QuantizationAwareTraining(dense_cnn(), freeze_ranges_after=2), QuantizationAwareTraining(dense_cnn())
    for controller in (frozen, moving):
        controller.model.train()
        controller.model(x)
        controller.model(x * 0.5)
    reached = _ranges(frozen)
    assert reached == _ranges(moving)  # the same EMA until the freeze
    for controller in (frozen, moving):
        for _ in range(3):
            controller.model(x * 4.0)  # a much wider batch range
    assert frozen.steps == 5 and _ranges(frozen) == reached
    assert _ranges(moving) != reached


def test_batchnorm_statistics_frozen_after_n_training_batches():
    model = dense_cnn()
    controller = QuantizationAwareTraining(model, freeze_bn_after=1)
    x = torch.as_tensor(digits().x_val[:32])
    model.train()
    before = model.bn1.running_mean.clone()
    model(x)  # batch 1 still updates the statistics
    after_first = model.bn1.running_mean.clone()
    assert not torch.equal(after_first, before)
    model.train()  # a training loop's model.train() each epoch does not unfreeze them
    out = model(x * 2.0)
    assert torch.equal(model.bn1.running_mean, after_first) and not model.bn1.training
    model.eval()
    torch.testing.assert_close(out, model(x * 2.0))  # frozen: training forward == inference forward
    controller.close()


def test_freeze_options_are_validated_by_name():
    with pytest.raises(ConfigError, match="freeze_ranges_after should be None or an integer >= 1"):
        QuantizationAwareTraining(dense_cnn(), freeze_ranges_after=0)
    with pytest.raises(ConfigError, match="freeze_bn_after should be None or an integer >= 0"):
        QuantizationAwareTraining(dense_cnn(), freeze_bn_after=True)


def test_pqat_with_frozen_ranges_and_batchnorm_keeps_exactly_the_masks_zeros(tmp_path):
    model = pruned_cnn()
    masks = {n: p != 0 for n, p in model.named_parameters() if n.endswith("weight") and p.dim() > 1}
    controller = pqat(model, loaders()[0], epochs=1, lr=1e-4, freeze_ranges_after=5, freeze_bn_after=5, progress=False)
    assert controller.steps == len(loaders()[0])
    result = controller.export_onnx(torch.as_tensor(digits().x_val[:64]), tmp_path / "pqat.int8.onnx")
    assert {n: result.zeros[n] for n in masks} == {n: int((~m).sum()) for n, m in masks.items()}


def _ranges_of(controller):
    return {n: (layer.input_range, layer.output_range) for n, layer in controller.layers.items()}


def test_a_checkpoint_of_model_and_controller_resumes_qat_exactly(tmp_path):
    model = pruned_cnn()
    x = torch.as_tensor(digits().x_val[:32])
    controller = QuantizationAwareTraining(model, masks="zeros", freeze_ranges_after=2, freeze_bn_after=1)
    model.train()
    for scale in (1.0, 0.5):
        model(x * scale)
    torch.save({"model": model.state_dict(), "qat": controller.state_dict()}, tmp_path / "checkpoint.pt")
    assert set(model.state_dict()) == set(pruned_cnn().state_dict())  # no wrapper keys in the model's state

    saved = torch.load(tmp_path / "checkpoint.pt")
    resumed_model = pruned_cnn()
    resumed_model.load_state_dict(saved["model"])
    resumed = QuantizationAwareTraining(resumed_model, masks="zeros", freeze_ranges_after=2, freeze_bn_after=1)
    resumed.load_state_dict(saved["qat"])
    assert resumed.steps == controller.steps == 2
    assert _ranges_of(resumed) == _ranges_of(controller)
    for name, layer in controller.layers.items():
        assert torch.equal(resumed.layers[name].mask, layer.mask), name
    for run in (model, resumed_model):  # past both freezes: ranges fixed, BatchNorm on its running statistics
        run.train()
        run(x * 4.0)
    assert _ranges_of(resumed) == _ranges_of(controller)
    assert not resumed_model.bn1.training and not model.bn1.training
    model.eval()
    resumed_model.eval()
    torch.testing.assert_close(resumed_model(x), model(x), rtol=0, atol=0)


def test_a_qat_state_for_other_options_or_layers_is_refused():
    state = QuantizationAwareTraining(dense_cnn(), freeze_ranges_after=3).state_dict()
    with pytest.raises(ConfigError, match="freeze_ranges_after=3"):
        QuantizationAwareTraining(dense_cnn()).load_state_dict(state)
    with pytest.raises(ConfigError, match="different layers"):
        QuantizationAwareTraining(dense_cnn(), freeze_ranges_after=3, exclude=["fc2"]).load_state_dict(state)
    with pytest.raises(ConfigError, match="not a prunekit QAT state"):
        QuantizationAwareTraining(dense_cnn()).load_state_dict({"steps": 1})
