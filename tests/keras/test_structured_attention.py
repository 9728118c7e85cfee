"""Structured pruning of Keras transformer blocks: whole MultiHeadAttention heads, FFN neurons, and the oracle."""

import keras
import numpy as np
import pytest

import prunekit.keras as pk
from prunekit import ConfigError, LayerNotFoundError
from tests.assertions import assert_same_outputs

L = keras.layers
DIM, HEADS, KEY_DIM, HIDDEN, CLASSES = 16, 4, 8, 64, 3
DEAD_HEADS, DEAD_UNITS = [1, 3], list(range(0, HIDDEN, 2))


def transformer_block():
    """Input (6, 16) -> MHA(4 heads, key_dim 8) -> Add -> LayerNorm -> FFN 64 -> Add -> LayerNorm -> GAP -> Dense(3)."""
    tokens = keras.Input((6, DIM), name="tokens")
    attended = L.MultiHeadAttention(HEADS, KEY_DIM, name="attention")(tokens, tokens)
    x = L.LayerNormalization(name="norm1")(L.Add(name="residual1")([tokens, attended]))
    hidden = L.Dense(HIDDEN, activation="relu", name="ffn_in")(x)
    x = L.LayerNormalization(name="norm2")(L.Add(name="residual2")([x, L.Dense(DIM, name="ffn_out")(hidden)]))
    outputs = L.Dense(CLASSES, name="classifier")(L.GlobalAveragePooling1D(name="gap")(x))
    return keras.Model(tokens, outputs, name="transformer")


def cross_attention_model():
    """Queries (5, 16) attend to a projected context (7, 12); the attention output feeds GAP -> Dense, no residual."""
    queries, context = keras.Input((5, DIM), name="queries"), keras.Input((7, 10), name="context")
    projected = L.Dense(12, name="context_proj")(context)
    attended = L.MultiHeadAttention(HEADS, 4, value_dim=6, name="cross")(query=queries, value=projected, key=projected)
    outputs = L.Dense(CLASSES, name="classifier")(L.GlobalAveragePooling1D(name="gap")(attended))
    return keras.Model([queries, context], outputs, name="cross_attention")


def _tokens(shape, count=4, seed=0):
    return np.random.default_rng(seed).normal(size=(count, *shape)).astype(np.float32)


def _zero(weight, positions, axis):
    values = np.moveaxis(weight.numpy(), axis, 0)
    values[positions] = 0
    weight.assign(np.moveaxis(values, 0, axis))


def silenced_transformer():
    """The block with heads 1 and 3 (their output-projection slices) and every other FFN unit contributing nothing."""
    model = transformer_block()
    _zero(model.get_layer("attention").output_dense.kernel, DEAD_HEADS, axis=0)
    _zero(model.get_layer("ffn_out").kernel, DEAD_UNITS, axis=0)
    return model


def _silent_last(group):
    """Importance ranking the silenced heads and FFN units lowest, every other channel equal."""
    dead = DEAD_HEADS if group.kind == "heads" else DEAD_UNITS
    return np.where(np.isin(group.channels[group.producers[0]], dead), 0.0, 1.0)


@pytest.fixture(scope="module")
def pruned_pair():
    keras.utils.set_random_seed(0)
    model = silenced_transformer()
    return model, pk.prune_channels(model, ratio=0.5, importance=_silent_last).model


def test_heads_are_a_group_and_the_ffn_is_free_while_the_residual_stream_stays_locked():
    groups = {(group.producers, group.kind): group for group in pk.channel_groups(transformer_block())}
    heads, ffn_in = groups[("attention",), "heads"], groups[("ffn_in",), "channels"]
    row = 3 * DIM * KEY_DIM + KEY_DIM * DIM  # a head's query, key and value columns, and its output rows
    assert (heads.size, heads.locked, heads.filters["attention"].shape) == (4, 0, (4, row))
    assert (ffn_in.size, ffn_in.locked) == (HIDDEN, 0)
    assert groups[("attention",), "channels"].locked_reason == "it is a model input"
    assert groups[("ffn_out",), "channels"].locked_reason == (
        "it feeds LayerNormalization layer 'norm1', whose mean and variance mix the channels it normalises"
    )


def test_oracle_removing_silent_heads_and_ffn_units_keeps_the_transformer_outputs(pruned_pair):
    model, small = pruned_pair
    x = _tokens((6, DIM))
    assert_same_outputs(small(x), model(x), atol=1e-5)
    assert small.get_layer("attention").num_heads == 2
    assert small.get_layer("attention").output_dense.kernel.shape == (2, KEY_DIM, DIM)
    assert small.get_layer("ffn_in").units == 32 and small.get_layer("ffn_out").kernel.shape == (32, DIM)


def test_the_pruned_transformer_has_the_hand_counted_parameters(pruned_pair):
    model, small = pruned_pair
    attention = 3 * (DIM * 2 * KEY_DIM + 2 * KEY_DIM) + (2 * KEY_DIM * DIM + DIM)  # q/k/v of 2 heads, output
    ffn = (DIM * 32 + 32) + (32 * DIM + DIM)
    norms_and_classifier = 2 * 2 * DIM + DIM * CLASSES + CLASSES
    assert model.count_params() == 4403
    assert small.count_params() == attention + ffn + norms_and_classifier == 2275


def test_the_pruned_transformer_saves_and_reloads_with_equal_outputs(pruned_pair, tmp_path):
    _, small = pruned_pair
    small.save(tmp_path / "small.keras")
    reloaded = keras.saving.load_model(tmp_path / "small.keras")
    x = _tokens((6, DIM))
    assert reloaded.get_layer("attention").num_heads == 2
    assert_same_outputs(reloaded(x), small(x), atol=1e-6)


def test_the_pruned_transformer_converts_to_tflite_with_matching_outputs(pruned_pair):
    _, small = pruned_pair
    x = _tokens((6, DIM))
    tflite = pk.TFLiteModel(pk.convert_to_tflite(small))
    assert_same_outputs(tflite.predict(x), small(x), atol=1e-4)


def test_l1_importance_removes_the_heads_with_the_smallest_weights():
    model = transformer_block()
    attention = model.get_layer("attention")
    scale = np.array([1, 1, 1e-3, 1], dtype=np.float32)  # head 2 is a thousand times smaller
    for dense in (attention.query_dense, attention.key_dense, attention.value_dense):
        dense.kernel.assign(dense.kernel.numpy() * scale[:, None])
    attention.output_dense.kernel.assign(attention.output_dense.kernel.numpy() * scale[:, None, None])
    small = pk.prune_channels(model, ratio=0.25, layers=["attention"]).model
    kept = small.get_layer("attention").output_dense.kernel.numpy()
    np.testing.assert_array_equal(kept, attention.output_dense.kernel.numpy()[[0, 1, 3]])


def test_a_sparsity_that_would_remove_every_head_keeps_one():
    small = pk.prune_channels(transformer_block(), ratio=0.99, layers=["attention"]).model
    assert small.get_layer("attention").num_heads == 1


def test_removing_every_head_is_refused():
    with pytest.raises(ConfigError, match="removing every head of layer 'attention' would leave it empty"):
        pk.remove_channels(transformer_block(), heads={"attention": [0, 1, 2, 3]})


def test_heads_of_a_layer_that_is_not_an_attention_are_refused():
    with pytest.raises(LayerNotFoundError, match="'ffn_in' is not a layer whose heads can be removed"):
        pk.remove_channels(transformer_block(), heads={"ffn_in": [0]})


def test_oracle_cross_attention_loses_heads_context_channels_and_output_channels():
    model = cross_attention_model()
    cross = model.get_layer("cross")
    dead_context, dead_outputs = [1, 5, 7], [2, 9]
    _zero(cross.key_dense.kernel, dead_context, axis=0)
    _zero(cross.value_dense.kernel, dead_context, axis=0)
    _zero(cross.output_dense.kernel, [0], axis=0)
    _zero(model.get_layer("classifier").kernel, dead_outputs, axis=0)
    small = pk.remove_channels(model, channels={"context_proj": dead_context, "cross": dead_outputs}, heads={"cross": [0]}).model
    x = [_tokens((5, DIM)), _tokens((7, 10), seed=1)]
    assert_same_outputs(small(x), model(x), atol=1e-5)
    pruned = small.get_layer("cross")
    assert pruned.num_heads == 3 and pruned.get_config()["output_shape"] == (14,)
    assert pruned.query_dense.kernel.shape == (DIM, 3, 4) and pruned.key_dense.kernel.shape == (9, 3, 4)
    assert pruned.value_dense.kernel.shape == (9, 3, 6) and pruned.output_dense.kernel.shape == (3, 6, 14)


def test_attention_that_returns_its_scores_keeps_its_heads():
    tokens = keras.Input((6, DIM))
    attended, scores = L.MultiHeadAttention(2, 4, name="attention")(tokens, tokens, return_attention_scores=True)
    model = keras.Model(tokens, [L.Dense(3, name="out")(attended), scores])
    kinds = {(group.producers, group.kind) for group in pk.channel_groups(model)}
    assert kinds == {(("out",), "channels")}
    with pytest.raises(LayerNotFoundError, match="'attention' is not a layer whose heads can be removed"):
        pk.remove_channels(model, heads={"attention": [0]})


def test_oracle_a_free_residual_stream_couples_the_attention_output_with_its_producer():
    tokens = keras.Input((6, 10), name="tokens")
    stream = L.Dense(DIM, name="embed")(tokens)
    summed = L.Add(name="residual")([stream, L.MultiHeadAttention(2, 4, name="attention")(stream, stream)])
    model = keras.Model(tokens, L.Dense(CLASSES, name="classifier")(L.GlobalAveragePooling1D(name="gap")(summed)))
    attention, dead = model.get_layer("attention"), [0, 7, 12]
    for dense in (attention.query_dense, attention.key_dense, attention.value_dense):
        _zero(dense.kernel, dead, axis=0)
    _zero(model.get_layer("classifier").kernel, dead, axis=0)
    assert {group.producers for group in pk.channel_groups(model)} >= {("embed", "attention")}
    small = pk.remove_channels(model, channels={"embed": dead}).model
    x = _tokens((6, 10))
    assert_same_outputs(small(x), model(x), atol=1e-5)
    pruned = small.get_layer("attention")
    assert pruned.query_dense.kernel.shape == (13, 2, 4) and pruned.output_dense.kernel.shape == (2, 4, 13)
    assert pruned.get_config()["output_shape"] is None


def test_oracle_a_masked_attention_loses_a_silent_head_and_keeps_its_mask():
    tokens, mask = keras.Input((6, DIM), name="tokens"), keras.Input((6, 6), dtype="bool", name="mask")
    attended = L.MultiHeadAttention(HEADS, 4, name="attention")(tokens, tokens, attention_mask=mask)
    model = keras.Model([tokens, mask], L.Dense(CLASSES, name="classifier")(L.GlobalAveragePooling1D()(attended)))
    _zero(model.get_layer("attention").output_dense.kernel, [2], axis=0)
    small = pk.remove_channels(model, heads={"attention": [2]}).model
    x = [_tokens((6, DIM)), np.broadcast_to(np.tril(np.ones((6, 6), bool)), (4, 6, 6))]
    assert_same_outputs(small(x), model(x), atol=1e-5)
    assert small.get_layer("attention").num_heads == 3
