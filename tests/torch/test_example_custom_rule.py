"""examples/structured_custom_layer.py runs and prunes through its custom layer only with the rule."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

from tests.torch.structured_helpers import one_torch_thread  # noqa: F401  (autouse: one torch thread per test)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "structured_custom_layer.py"


def test_custom_layer_example_prunes_half_the_channels_only_with_the_rule():
    numbers = runpy.run_path(str(EXAMPLE), run_name="example")["main"](verbose=False)
    assert numbers["groups_without_rule"] == 0
    assert numbers["unpruned_without_rule"] == ["act1:scaled_gelu.default", "act2:scaled_gelu.default"]
    assert numbers["channels_after"] == (32, 32, 32)
    # conv1 16x64x5 and conv2 64x64x5 over 50 frames, head 64x10 -> half of every width
    before = 16 * 64 * 5 * 50 + 64 * 64 * 5 * 50 + 64 * 10
    after = 16 * 32 * 5 * 50 + 32 * 32 * 5 * 50 + 32 * 10
    assert numbers["macs_ratio"] == pytest.approx(before / after, rel=1e-3)
    assert numbers["reloaded_equal"] is True
