"""MACs and parameter counts equal hand counts: convs, linears, attention and whole models."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunekit.errors import ConfigError
from prunekit.torch import DigitsCNN, count_macs, count_params
from prunekit.torch.measure.macs import MacsReport


def test_conv2d_macs_count_groups_stride_and_padding():
    conv = nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=4)
    # output (2, 16, 5, 5) = 800 elements, each 8/4 input channels x 3x3 kernel
    assert count_macs(conv, torch.zeros(2, 8, 10, 10)).total == 800 * 2 * 9


def test_depthwise_conv_macs_are_one_input_channel_per_output():
    conv = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
    assert count_macs(conv, torch.zeros(1, 8, 4, 4)).total == 8 * 16 * 1 * 9


def test_conv1d_macs_follow_output_length():
    conv = nn.Conv1d(4, 6, 5)
    assert count_macs(conv, torch.zeros(1, 4, 20)).total == 6 * 16 * 4 * 5


def test_conv3d_macs_follow_output_volume():
    conv = nn.Conv3d(2, 4, 3)
    assert count_macs(conv, torch.zeros(1, 2, 5, 5, 5)).total == 4 * 27 * 2 * 27


def test_transposed_conv_macs_count_each_input_times_kernel_and_outputs():
    up = nn.ConvTranspose2d(4, 6, kernel_size=2, stride=2)
    # 4*5*5 input elements, each scattered into 6 channels x 2x2 kernel positions
    assert count_macs(up, torch.zeros(1, 4, 5, 5)).total == 100 * 6 * 4


def test_linear_macs_count_every_leading_dimension():
    assert count_macs(nn.Linear(10, 4), torch.zeros(3, 7, 10)).total == 3 * 7 * 10 * 4


def test_macs_scale_with_batch_size():
    model = DigitsCNN()
    one = count_macs(model, torch.zeros(1, 1, 8, 8)).total
    assert count_macs(model, torch.zeros(4, 1, 8, 8)).total == 4 * one


def test_multihead_self_attention_counts_projections_and_both_attention_matmuls():
    attention = nn.MultiheadAttention(16, 4, batch_first=True).eval()
    x = torch.zeros(2, 6, 16)
    projections = 4 * (2 * 6 * 16 * 16)  # q, k, v and out, each 12 tokens x 16 x 16
    scores_and_values = 2 * (2 * 4 * 6 * 6 * 4)  # Q.K^T and A.V over 2 batches x 4 heads of dim 4
    assert count_macs(attention, (x, x, x)).total == projections + scores_and_values


def test_multihead_cross_attention_counts_query_times_source_length():
    attention = nn.MultiheadAttention(16, 4, batch_first=True).eval()
    query, memory = torch.zeros(2, 3, 16), torch.zeros(2, 5, 16)
    projections = 2 * (2 * 3 * 16 * 16) + 2 * (2 * 5 * 16 * 16)
    scores_and_values = 2 * (2 * 4 * 3 * 5 * 4)
    assert count_macs(attention, (query, memory, memory)).total == projections + scores_and_values


def test_transformer_encoder_layer_fast_path_is_still_counted():
    layer = nn.TransformerEncoderLayer(16, 4, dim_feedforward=32, batch_first=True).eval()
    attention = 4 * (12 * 16 * 16) + 2 * (2 * 4 * 6 * 6 * 4)
    feed_forward = 2 * (12 * 16 * 32)
    assert count_macs(layer, torch.zeros(2, 6, 16)).total == attention + feed_forward


def test_fast_path_setting_is_restored_after_counting():
    layer = nn.TransformerEncoderLayer(16, 4, dim_feedforward=32, batch_first=True).eval()
    count_macs(layer, torch.zeros(2, 6, 16))
    assert torch.backends.mha.get_fastpath_enabled() is True


class MatmulAttention(nn.Module):
    """Attention written by hand with ``@`` and ``torch.matmul``."""

    def forward(self, q, k, v):
        scores = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5
        return torch.matmul(scores.softmax(-1), v)


def test_matmul_attention_counts_scores_and_weighted_values():
    q = k = v = torch.zeros(2, 4, 6, 8)
    assert count_macs(MatmulAttention(), (q, k, v)).total == 2 * (2 * 4 * 6 * 6 * 8)


class SdpaAttention(nn.Module):
    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)


def test_scaled_dot_product_attention_with_grouped_kv_counts_every_query_head():
    q, kv = torch.zeros(1, 4, 5, 8), torch.zeros(1, 2, 7, 8)
    assert count_macs(SdpaAttention(), (q, kv, kv)).total == 4 * 5 * 7 * (8 + 8)


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(100, 8)
        self.norm = nn.LayerNorm(8)
        self.attn = MatmulAttention()
        self.proj = nn.Linear(8, 8)

    def forward(self, input_ids):
        x = self.norm(self.embed(input_ids))
        return self.proj(self.attn(x, x, x))


def test_functional_ops_are_charged_to_the_module_that_calls_them():
    report = count_macs(Block(), {"input_ids": torch.zeros(2, 6, dtype=torch.long)})
    assert report.per_layer["attn"] == 2 * (2 * 6 * 6 * 8)
    assert report.per_layer["proj"] == 12 * 8 * 8


def test_embeddings_and_norms_count_zero_macs_but_their_parameters():
    report = count_macs(Block(), {"input_ids": torch.zeros(2, 6, dtype=torch.long)})
    assert report.per_layer["embed"] == 0 and report.per_layer_params["embed"] == 800
    assert report.per_layer["norm"] == 0 and report.per_layer_params["norm"] == 16


def test_whole_digits_cnn_matches_hand_count_per_layer():
    report = count_macs(DigitsCNN(), torch.zeros(1, 1, 8, 8))
    expected = {
        "conv1": 32 * 64 * 1 * 9,
        "bn1": 0,
        "conv2": 64 * 64 * 32 * 9,
        "bn2": 0,
        "fc1": 1024 * 128,
        "fc2": 128 * 10,
    }
    assert report.per_layer == expected
    assert report.total == sum(expected.values()) == 1_330_432
    assert report.flops == 2 * report.total
    assert report.per_layer_params["conv1"] == 32 * 9 + 32
    assert report.params == count_params(DigitsCNN())
    assert report.layer_types["bn2"] == "BatchNorm2d"


def test_huggingface_bert_counts_projections_ffn_attention_and_pooler():
    from tests.zoo import ZOO

    model, inputs = ZOO["hf_bert"]()  # 2 layers, hidden 32, 4 heads, ffn 64, 2 x 12 tokens
    per_layer = 4 * (24 * 32 * 32) + 2 * (24 * 32 * 64) + 2 * (2 * 4 * 12 * 12 * 8)
    pooler = 2 * 32 * 32
    assert count_macs(model, inputs).total == 2 * per_layer + pooler


def test_counting_leaves_model_mode_and_hooks_unchanged():
    model = DigitsCNN().train()
    count_macs(model, torch.zeros(2, 1, 8, 8))
    assert model.training
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_inputs_that_do_not_run_the_model_raise_config_error_naming_the_layer():
    with pytest.raises(ConfigError, match="conv1"):
        count_macs(DigitsCNN(), torch.zeros(1, 3, 8, 8))


def test_non_module_is_rejected():
    with pytest.raises(ConfigError, match="nn.Module"):
        count_macs(lambda x: x, torch.zeros(1))


def test_count_params_counts_tied_weights_once():
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 10, bias=False))
    model[1].weight = model[0].weight
    assert count_params(model) == 40


def test_count_params_nonzero_only_skips_zeros():
    layer = nn.Linear(10, 4)
    with torch.no_grad():
        layer.weight[:2] = 0
        layer.bias.zero_()
    assert count_params(layer) == 44
    assert count_params(layer, nonzero_only=True) == 20


def test_report_is_a_frozen_dataclass():
    report = count_macs(nn.Linear(2, 2), torch.zeros(1, 2))
    assert isinstance(report, MacsReport)
    with pytest.raises(AttributeError):
        report.total = 0


def test_lstm_counts_input_and_hidden_products_at_every_step():
    lstm = nn.LSTM(8, 16, batch_first=True)
    # 2 x 5 steps, each (8 inputs + 16 hidden) x 4 gates x 16 units
    assert count_macs(lstm, torch.zeros(2, 5, 8)).total == 10 * (8 + 16) * 64


def test_gru_counts_input_and_hidden_products_at_every_step():
    gru = nn.GRU(8, 16, batch_first=True)
    assert count_macs(gru, torch.zeros(2, 5, 8)).total == 10 * (8 + 16) * 48


def test_counting_in_training_mode_leaves_batchnorm_statistics_unchanged():
    model = DigitsCNN().train()
    before = {name: buffer.clone() for name, buffer in model.named_buffers()}
    count_macs(model, torch.randn(2, 1, 8, 8))
    for name, buffer in model.named_buffers():
        assert torch.equal(buffer, before[name]), name


class DataDependent(nn.Module):
    """Branches on a tensor's value and caches a tensor on itself, as some real models do."""

    def __init__(self):
        super().__init__()
        self.small = nn.Linear(4, 2)
        self.large = nn.Linear(4, 8)

    def forward(self, x):
        self.last_input = x.detach()
        return self.large(x) if x.sum() > 0 else self.small(x)


def test_data_dependent_model_is_counted_on_the_branch_its_inputs_take():
    assert count_macs(DataDependent(), torch.ones(3, 4)).total == 3 * 4 * 8
    assert count_macs(DataDependent(), -torch.ones(3, 4)).total == 3 * 4 * 2


def test_attributes_set_during_counting_are_removed_afterwards():
    model = DataDependent()
    count_macs(model, torch.ones(3, 4))
    assert not hasattr(model, "last_input")


def test_model_on_meta_device_is_counted_without_weights():
    with torch.device("meta"):
        model = DigitsCNN()
    report = count_macs(model, torch.zeros(1, 1, 8, 8, device="meta"))
    assert report.total == 1_330_432


class PlainTensorAttribute(nn.Module):
    """Keeps a weight as a plain tensor attribute (neither parameter nor buffer)."""

    def __init__(self):
        super().__init__()
        self.projection = torch.randn(4, 6)

    def forward(self, x):
        return x @ self.projection


def test_tensors_held_outside_parameters_and_buffers_are_counted():
    assert count_macs(PlainTensorAttribute(), torch.ones(3, 4)).total == 3 * 4 * 6
