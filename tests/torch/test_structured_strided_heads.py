"""Heads followed through the ops longformer's attention uses: writes into a buffer (``setitem``,
``index_put_``, ``slice_scatter``, ``copy_`` into a slice), sliding windows (``unfold``,
``as_strided``) scored by ``einsum``, a ``diagonal`` of scores; and the warning where they cannot be."""

from __future__ import annotations

import pytest
import torch

from prunekit.errors import ConfigError
from prunekit.torch import analyze_dependencies, prune_channels
from prunekit.torch.structured.prune import HeadsNotFollowedWarning
from tests.torch.strided_patterns import BufferWriteAttention, StackedHeadsAttention, WindowedAttention
from tests.torch.structured_helpers import one_torch_thread, run_oracle  # noqa: F401
from tests.torch.zoo_patterns import build_pattern

BLOCKS = [BufferWriteAttention(m) for m in ("setitem", "index_put", "slice_scatter", "copy")]
BLOCKS += [WindowedAttention(m) for m in ("unfold", "as_strided", "diagonal")]
IDS = [f"{type(b).__name__}-{b.mode}" for b in BLOCKS]


@pytest.mark.parametrize("block", BLOCKS, ids=IDS)
def test_heads_written_into_buffers_or_windows_form_one_heads_group(block):
    model, inputs = build_pattern(block)
    graph = analyze_dependencies(model, inputs)
    assert graph.unsupported == [] and graph.head_problems == []
    assert [(g.name, g.kind, g.size) for g in graph.groups if g.kind == "heads"] == [("attention.q", "heads", 4)]


@pytest.mark.parametrize("block", BLOCKS, ids=IDS)
def test_heads_written_into_buffers_or_windows_pass_the_oracle(block):
    model, inputs = build_pattern(block)
    expected, actual, result = run_oracle(model, inputs)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)
    attention = result.model.attention
    assert attention.num_heads == 2 and attention.head_dim == 8  # the oracle silenced half of the heads
    assert attention.q.out_features == attention.k.out_features == attention.v.out_features == 16


@pytest.mark.parametrize("block", BLOCKS, ids=IDS)
def test_heads_written_into_buffers_or_windows_are_pruned_whole(block, recwarn):
    model, inputs = build_pattern(block)
    result = prune_channels(model, inputs, 0.5)
    attention = result.model.attention
    assert (attention.num_heads, attention.head_dim, attention.o.in_features) == (2, 8, 16)
    assert result.report.macs_ratio >= 1.6
    assert not [w for w in recwarn if issubclass(w.category, HeadsNotFollowedWarning)]
    with torch.no_grad():
        assert result.model(*inputs).shape == model(*inputs).shape


def test_heads_stacked_from_per_head_projections_are_kept_with_a_warning_and_strict_raises():
    model, inputs = build_pattern(StackedHeadsAttention())
    graph = analyze_dependencies(model, inputs)
    assert [label for label, _ in graph.head_problems] == ["attention:matmul", "attention:matmul"]
    assert "could not be followed back past attention:stack" in graph.head_problems[0][1]
    with pytest.warns(HeadsNotFollowedWarning):
        expected, actual, _ = run_oracle(model, inputs)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)
    with pytest.warns(HeadsNotFollowedWarning, match=r"2 attention product\(s\) keep all their heads"):
        pruned = prune_channels(model, inputs, 0.5)
    assert [len(p) for p in (pruned.model.attention.q, pruned.model.attention.k)] == [4, 4]  # every head kept
    assert pruned.model.attention.q[0].out_features == 4  # the width inside each head is pruned alike
    with pytest.raises(ConfigError, match=r"strict=True: .*head structure not understood: the heads of attention:matmul"):
        prune_channels(model, inputs, 0.5, strict=True)
