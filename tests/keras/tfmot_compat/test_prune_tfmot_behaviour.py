"""prune_low_magnitude behaves as TF MOT's where a tfmot script relies on it (issue #21)."""

import keras
import numpy as np
import pytest

import prunekit.keras as pk
from prunekit import ConfigError
from prunekit.keras.unstructured.state import get_pruning

EVERY_STEP_HALF = pk.ConstantSparsity(0.5, begin_step=1, frequency=1)


def _fit(model, x, y, epochs=1, batch_size=4, lr=0.01):
    model.compile(keras.optimizers.SGD(lr), "mse")
    model.fit(x, y, batch_size=batch_size, epochs=epochs, verbose=0, shuffle=False, callbacks=[pk.UpdatePruningStep()])


def _zeros(array) -> int:
    return int((np.asarray(array) == 0).sum())


def test_an_unbuilt_sequential_is_pruned_once_fit_builds_it_and_pruned_weights_stay_zero():
    model = pk.prune_low_magnitude(
        keras.Sequential([keras.layers.Dense(10, name="a"), keras.layers.Dropout(0.1), keras.layers.Dense(6, name="b")]),
        pruning_schedule=pk.ConstantSparsity(0.5, begin_step=1, end_step=1, frequency=1),
    )
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(16, 5)).astype("float32"), rng.normal(size=(16, 6)).astype("float32")
    _fit(model, x, y, epochs=3, lr=0.5)  # pruned at step 1 only; 11 more large SGD steps follow
    masks = pk.get_masks(model)
    assert len(masks) == 2
    for layer in ("a", "b"):
        variable = model.get_layer(layer).kernel
        kernel = variable.numpy()
        assert _zeros(kernel) == kernel.size // 2
        assert (kernel[~masks[variable.path]] == 0).all()


def test_input_shape_keyword_makes_the_pruned_layer_the_input_of_a_sequential():
    model = keras.Sequential([pk.prune_low_magnitude(keras.layers.Dense(10), input_shape=(5,)), keras.layers.Dense(2)])
    assert model.built and model.input_shape == (None, 5)
    assert get_pruning(model.layers[0]) is not None


def test_unknown_layer_keywords_are_refused_naming_them():
    with pytest.raises(ConfigError, match=r"\['units'\]"):
        pk.prune_low_magnitude(keras.layers.Dense(10), units=4)


@pytest.mark.parametrize("layer", [keras.layers.Dropout(0.5), keras.layers.Flatten(), keras.layers.MaxPooling2D()])
def test_a_built_weightless_layer_is_marked_as_a_no_op_like_tfmot(layer):
    layer.build((None, 4, 4, 3))
    assert pk.prune_low_magnitude(layer, pruning_schedule=EVERY_STEP_HALF) is layer
    assert get_pruning(layer).spec.schedule == EVERY_STEP_HALF and pk.get_masks(layer) == {}


def test_layers_pruned_beforehand_keep_their_own_settings_when_the_model_is_pruned():
    inputs = keras.Input((20,))
    fc1 = pk.prune_low_magnitude(keras.layers.Dense(20, name="fc1"), pruning_schedule=pk.ConstantSparsity(0.9, 1, frequency=1))
    model = keras.Model(inputs, keras.layers.Dense(10, name="fc2")(fc1(inputs)))
    pruned = pk.prune_low_magnitude(model, pruning_schedule=pk.ConstantSparsity(0.2, 1, frequency=1))
    x = np.random.default_rng(1).normal(size=(8, 20)).astype("float32")
    _fit(pruned, x, x[:, :10])
    assert _zeros(pruned.get_layer("fc1").kernel) == 360  # 0.9 of 400, its own schedule
    assert _zeros(pruned.get_layer("fc2").kernel) == 40  # 0.2 of 200


def test_on_epoch_end_with_batch_minus_one_remasks_in_a_custom_loop():
    model = pk.prune_low_magnitude(keras.Sequential([keras.Input((4,)), keras.layers.Dense(4, name="fc")]), EVERY_STEP_HALF)
    callback = pk.UpdatePruningStep()
    callback.set_model(model)
    callback.on_train_begin()
    callback.on_train_batch_begin(batch=-1)
    kernel = model.get_layer("fc").kernel
    kernel.assign(np.ones((4, 4), "float32"))  # e.g. a write outside the optimizer
    callback.on_epoch_end(batch=-1)
    assert _zeros(kernel) == 8


def test_prune_scope_is_a_context_in_which_pruned_models_load(tmp_path):
    model = pk.prune_low_magnitude(keras.Sequential([keras.Input((4,)), keras.layers.Dense(4, name="fc")]), EVERY_STEP_HALF)
    model.save(tmp_path / "pruned.keras")
    with pk.prune_scope():
        loaded = pk.load_model(tmp_path / "pruned.keras")
    assert pk.pruned_layers(loaded) == ["fc"]


def test_ninety_nine_percent_of_forty_weights_keeps_one_like_tfmot():
    model = pk.prune_low_magnitude(
        keras.Sequential([keras.Input((8,)), keras.layers.Dense(5, name="fc")]), pk.ConstantSparsity(0.99, 1, frequency=1)
    )
    x = np.random.default_rng(2).normal(size=(4, 8)).astype("float32")
    _fit(model, x, x[:, :5])
    assert _zeros(model.get_layer("fc").kernel) == 39


def test_two_by_four_on_seven_input_channels_pads_the_last_group_like_tfmot():
    conv = keras.layers.Conv2D(3, 1, name="conv")
    model = pk.prune_low_magnitude(keras.Sequential([keras.Input((4, 4, 7)), conv]), EVERY_STEP_HALF, sparsity_m_by_n=(2, 4))
    x = np.random.default_rng(3).normal(size=(4, 4, 4, 7)).astype("float32")
    _fit(model, x, x[..., :3])
    kernel = model.get_layer("conv").kernel.numpy()[0, 0]  # (7 in, 3 out)
    assert (kernel[:4] == 0).sum(axis=0).tolist() == [2, 2, 2]  # a full group: 2 of 4
    assert (kernel[4:] == 0).sum(axis=0).tolist() == [1, 1, 1]  # 3 channels + 1 padding: the padding is one of the 2


@pytest.mark.parametrize("pooling", ["AVG", "MAX"])
def test_a_block_that_does_not_tile_the_kernel_is_padded_like_tfmot(pooling):
    model = pk.prune_low_magnitude(
        keras.Sequential([keras.Input((20,)), keras.layers.Dense(20, name="fc")]),
        EVERY_STEP_HALF,
        block_size=(1, 16),
        block_pooling_type=pooling,
    )
    x = np.random.default_rng(4).normal(size=(4, 20)).astype("float32")
    _fit(model, x, x)
    zero = model.get_layer("fc").kernel.numpy() == 0
    wide, edge = zero[:, :16], zero[:, 16:]  # 20 rows x 2 blocks: 16 wide and a 4-wide edge block
    assert (wide.all(axis=1) | ~wide.any(axis=1)).all() and (edge.all(axis=1) | ~edge.any(axis=1)).all()
    assert int(wide.all(axis=1).sum() + edge.all(axis=1).sum()) == 20  # half of the 40 blocks


def test_saving_a_pruned_model_as_legacy_h5_is_refused_and_a_stripped_one_saves(tmp_path):
    model = pk.prune_low_magnitude(keras.Sequential([keras.Input((4,)), keras.layers.Dense(4, name="fc")]), EVERY_STEP_HALF)
    with pytest.raises(ConfigError, match=r"layer 'fc' is being pruned.*legacy \.h5.*\.keras.*strip_pruning"):
        model.save(tmp_path / "ckpt.h5")
    with pytest.raises(ConfigError, match="layer 'fc' is being pruned"):
        keras.saving.save_model(model, tmp_path / "ckpt.hdf5")
    # the .keras checkpoint keeps the state; a restored model refuses .h5 the same way
    model.save(tmp_path / "ckpt.keras")
    restored = pk.load_model(tmp_path / "ckpt.keras")
    assert pk.pruned_layers(restored) == ["fc"]
    with pytest.raises(ConfigError, match="layer 'fc' is being pruned"):
        restored.save(tmp_path / "restored.h5")
    # config-driven Keras paths other than .h5 still get the layer's own config
    assert keras.models.clone_model(model).get_layer("fc").get_config()["units"] == 4
    stripped = pk.strip_pruning(model)
    stripped.save(tmp_path / "final.h5")
    loaded = keras.saving.load_model(tmp_path / "final.h5")
    np.testing.assert_array_equal(loaded.get_layer("fc").kernel.numpy(), stripped.get_layer("fc").kernel.numpy())
    with pytest.raises(ConfigError, match=r"holds no pruning state.*\.keras"):
        pk.load_model(tmp_path / "final.h5")


def test_a_layer_pruned_layer_wise_refuses_h5_until_stripped(tmp_path):
    layer = pk.prune_low_magnitude(keras.layers.Dense(4, name="fc"), pruning_schedule=EVERY_STEP_HALF)
    model = keras.Sequential([keras.Input((4,)), layer, keras.layers.Dense(2, name="out")])
    with pytest.raises(ConfigError, match="layer 'fc' is being pruned"):
        model.save(tmp_path / "a.h5")
    pk.strip_pruning(layer)  # a single layer is stripped in place
    model.save(tmp_path / "a.h5")
    assert keras.saving.load_model(tmp_path / "a.h5").get_layer("fc").units == 4


@pytest.mark.parametrize(
    "make",
    [
        lambda: keras.layers.LSTM(4, name="rnn"),
        lambda: keras.layers.GRU(4, name="rnn"),
        lambda: keras.layers.SimpleRNN(4, name="rnn"),
        lambda: keras.layers.RNN(keras.layers.LSTMCell(4), name="rnn"),
        lambda: keras.layers.Bidirectional(keras.layers.GRU(3), name="rnn"),
    ],
    ids=["lstm", "gru", "simple-rnn", "rnn-of-a-cell", "bidirectional-gru"],
)
def test_a_recurrent_layer_pruned_layer_wise_prunes_its_cells_kernels_like_tfmot(make):
    layer = pk.prune_low_magnitude(make(), pruning_schedule=EVERY_STEP_HALF)
    model = keras.Sequential([keras.Input((5, 6)), layer, keras.layers.Dense(2, name="out")])
    rng = np.random.default_rng(5)
    _fit(model, rng.normal(size=(8, 5, 6)).astype("float32"), rng.normal(size=(8, 2)).astype("float32"))
    masks = pk.get_masks(layer)
    cell_kernels = [w for w in layer.weights if w.path.endswith("kernel")]
    assert sorted(masks) == sorted(w.path for w in cell_kernels) and len(masks) in (2, 4)  # kernel + recurrent, per cell
    for weight in cell_kernels:
        assert _zeros(weight) == round(0.5 * weight.numpy().size)
    assert _zeros(model.get_layer("out").kernel) == 0


def test_multi_head_attention_pruned_layer_wise_prunes_its_projection_kernels_like_tfmot():
    attention = pk.prune_low_magnitude(keras.layers.MultiHeadAttention(2, 4, name="mha"), pruning_schedule=EVERY_STEP_HALF)
    inputs = keras.Input((5, 6))
    model = keras.Model(inputs, keras.layers.Dense(2, name="out")(keras.layers.Flatten()(attention(inputs, inputs))))
    rng = np.random.default_rng(7)
    _fit(model, rng.normal(size=(8, 5, 6)).astype("float32"), rng.normal(size=(8, 2)).astype("float32"))
    kernels = [w for w in attention.weights if w.path.endswith("kernel")]
    assert sorted(pk.get_masks(attention)) == sorted(w.path for w in kernels) and len(kernels) == 4  # query, key, value, output
    for weight in kernels:
        assert _zeros(weight) == round(0.5 * weight.numpy().size)
    assert _zeros(model.get_layer("out").kernel) == 0


def test_m_by_n_leaves_weights_that_are_not_rank_2_or_4_dense_like_tfmot():
    model = pk.prune_low_magnitude(
        keras.Sequential([keras.Input((4, 4, 4, 1)), keras.layers.Conv3D(2, 3, name="conv3d")]),
        EVERY_STEP_HALF,
        sparsity_m_by_n=(2, 4),
    )
    x = np.random.default_rng(6).normal(size=(4, 4, 4, 4, 1)).astype("float32")
    _fit(model, x, np.zeros((4, 2, 2, 2, 2), "float32"))
    assert pk.get_masks(model) == {} and _zeros(model.get_layer("conv3d").kernel) == 0


def test_no_op_marks_on_weightless_layers_leave_erdos_renyi_shares_over_the_weighted_layers_only():
    from prunekit.keras.unstructured.layers import prunable_weights
    from prunekit.keras.unstructured.state import prunings

    model = pk.prune_sparse(pk.digits_cnn(), 0.9, distribution="erdos_renyi_kernel")
    weighted = [state for state in prunings(model) if prunable_weights(state.target_layer())]
    assert [state.layer_name for state in weighted] == pk.pruned_layers(model) == ["conv1", "conv2", "fc1", "fc2"]
    sizes = [int(np.prod(state.target_layer().kernel.shape)) for state in weighted]
    kept = sum((1 - state.spec.schedule.final_sparsity) * size for state, size in zip(weighted, sizes))
    assert kept == pytest.approx(0.1 * sum(sizes))


def test_a_model_whose_custom_layer_cannot_be_cloned_raises_a_config_error_saying_how_to_fix_it():
    class NoConfig(keras.layers.Layer):
        def __init__(self):  # takes none of Keras's keyword arguments back
            super().__init__()
            self.dense = keras.layers.Dense(3)

        def call(self, inputs):
            return self.dense(inputs)

    inputs = keras.Input((4,))
    model = keras.Model(inputs, NoConfig()(inputs), name="custom")
    with pytest.raises(ConfigError, match=r"(?s)model .custom. cannot be cloned for pruning.*get_config.*inplace=True"):
        pk.prune_low_magnitude(model, EVERY_STEP_HALF)
    pruned = pk.prune_low_magnitude(model, EVERY_STEP_HALF, inplace=True)  # the way out the message names
    assert pruned is model and len(pk.pruned_layers(model)) == 1


def test_a_subclass_of_dense_without_get_prunable_weights_is_refused_naming_the_layer_and_the_fix_like_tfmot():
    class MyDense(keras.layers.Dense):  # may use its kernel differently: it must say what to prune
        pass

    class MyPrunableDense(keras.layers.Dense):
        def get_prunable_weights(self):
            return [self.kernel]

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="plain"), MyDense(2, name="mine")])
    with pytest.raises(
        ConfigError, match=r"layer 'mine' is a MyDense, a subclass of Dense.*exclude=\['mine'\].*get_prunable_weights"
    ):
        pk.prune_low_magnitude(model, EVERY_STEP_HALF)
    with pytest.raises(ConfigError, match="layer 'unbuilt' is a MyDense, a subclass of Dense"):
        pk.prune_low_magnitude(MyDense(2, name="unbuilt"), EVERY_STEP_HALF)
    assert pk.pruned_layers(pk.prune_low_magnitude(model, EVERY_STEP_HALF, exclude=["mine"])) == ["plain"]
    opted_in = keras.Sequential([keras.Input((4,)), MyPrunableDense(2, name="opted_in")])
    assert pk.pruned_layers(pk.prune_low_magnitude(opted_in, EVERY_STEP_HALF)) == ["opted_in"]


def test_after_the_guides_clone_function_pattern_the_original_model_shares_the_pruned_layers_and_says_so():
    import tensorflow as tf

    base = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4, name="fc"), keras.layers.Flatten()])

    def prune_dense(layer):
        return pk.prune_low_magnitude(layer, EVERY_STEP_HALF) if isinstance(layer, keras.layers.Dense) else layer

    clone = keras.models.clone_model(base, clone_function=prune_dense)
    assert clone.get_layer("fc") is base.get_layer("fc")  # as tfmot's wrapper wraps the original layer object
    x = np.random.default_rng(8).normal(size=(8, 4)).astype("float32")
    base.compile(keras.optimizers.SGD(0.01), "mse")
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"(?s)pruning step did not advance.*clone_function.*callback too"):
        base.fit(x, x, batch_size=4, epochs=1, verbose=0)
    _fit(base, x, x)  # with UpdatePruningStep, as the message says: the shared layer is pruned
    assert _zeros(base.get_layer("fc").kernel) == 8
