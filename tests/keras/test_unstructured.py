"""prune_low_magnitude / UpdatePruningStep / strip_pruning on Keras 3: exact, wrapper-free, loud."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import prunekit.keras as pk
from prunekit import ConfigError, ConstantSparsity, LayerNotFoundError, PolynomialDecay
from prunekit.keras.unstructured.state import MaskConstraint, get_pruning
from tests.assertions import assert_sparsity, assert_zero_count
from tests.keras.helpers import compile_classifier, random_digits, tiny_cnn

KERNELS = ("conv1", "conv2", "fc1", "fc2")


def _fit(model, epochs=1, batch_size=8, callbacks=None, count=64):
    x, y = random_digits(count)
    callbacks = [pk.UpdatePruningStep()] if callbacks is None else callbacks
    return model.fit(x, y, epochs=epochs, batch_size=batch_size, verbose=0, callbacks=callbacks, shuffle=False)


def test_each_kernel_has_exactly_round_s_times_numel_zeros_at_end_step():
    schedule = PolynomialDecay(0.0, 0.8, begin_step=0, end_step=6, frequency=2)
    pruned = compile_classifier(pk.prune_low_magnitude(tiny_cnn(), pruning_schedule=schedule))
    _fit(pruned)  # 8 batches: steps 1..8 (TF MOT), the last pruning at step 6
    for name in KERNELS:
        kernel = pruned.get_layer(name).kernel.numpy()
        assert_sparsity(kernel, 0.8, name)
        assert_zero_count(pruned.get_layer(name).bias.numpy(), 0, f"{name} bias")


def test_masks_change_only_at_the_schedules_pruning_steps():
    schedule = PolynomialDecay(0.0, 0.8, begin_step=1, end_step=7, frequency=3)
    pruned = compile_classifier(pk.prune_low_magnitude(tiny_cnn(), pruning_schedule=schedule), eager=True)
    seen = []
    recorder = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: seen.append(int((pruned.get_layer("fc1").kernel.numpy() == 0).sum()))
    )
    _fit(pruned, callbacks=[pk.UpdatePruningStep(), recorder])
    numel = pruned.get_layer("fc1").kernel.numpy().size
    expected, current = [], 0
    for step in range(1, 9):  # TF MOT numbering: the first batch is step 1
        if schedule.should_prune(step):
            current = round(schedule.sparsity_at(step) * numel)
        expected.append(current)
    assert seen == expected
    assert expected[-1] == round(0.8 * numel)


def test_pruned_model_has_the_same_classes_layer_names_and_variables():
    model = tiny_cnn()
    pruned = pk.prune_low_magnitude(model, pruning_schedule=ConstantSparsity(0.5, 1))
    assert type(pruned) is type(model)
    assert [(type(a), a.name) for a in pruned.layers] == [(type(b), b.name) for b in model.layers]
    assert [w.path for w in pruned.weights] == [w.path for w in model.weights]
    assert pk.pruned_layers(pruned) == list(KERNELS)


def test_original_model_is_left_untouched():
    model = tiny_cnn()
    before = [w.numpy().copy() for w in model.weights]
    pruned = compile_classifier(pk.prune_low_magnitude(model, pruning_schedule=ConstantSparsity(0.5, 1)), eager=True)
    _fit(pruned)
    assert all(get_pruning(layer) is None for layer in model.layers)
    for old, weight in zip(before, model.weights):
        np.testing.assert_array_equal(old, weight.numpy())


def test_strip_pruning_returns_a_plain_model_with_the_same_names_and_zeros(tmp_path):
    pruned = compile_classifier(pk.prune_low_magnitude(tiny_cnn(), pruning_schedule=ConstantSparsity(0.75, 1)), eager=True)
    _fit(pruned)
    plain = pk.strip_pruning(pruned)
    assert [layer.name for layer in plain.layers] == [layer.name for layer in pruned.layers]
    assert all(get_pruning(layer) is None for layer in plain.layers)
    assert not any(isinstance(w.constraint, MaskConstraint) for w in plain.weights)
    for name in KERNELS:
        assert_sparsity(plain.get_layer(name).kernel.numpy(), 0.75, name)
    plain.save(tmp_path / "plain.keras")
    reloaded = keras.saving.load_model(tmp_path / "plain.keras")
    assert [layer.name for layer in reloaded.layers] == [layer.name for layer in plain.layers]
    assert pk.get_masks(pk.load_model(tmp_path / "plain.keras")) == {}


def test_fit_without_update_pruning_step_raises_naming_the_callback():
    pruned = compile_classifier(pk.prune_low_magnitude(tiny_cnn(), pruning_schedule=ConstantSparsity(0.5, 1)))
    with pytest.raises(tf.errors.InvalidArgumentError, match="UpdatePruningStep"):
        _fit(pruned, callbacks=[])


def test_a_later_fit_without_the_callback_also_raises():
    pruned = compile_classifier(pk.prune_low_magnitude(tiny_cnn(), pruning_schedule=ConstantSparsity(0.5, 1)))
    _fit(pruned)
    with pytest.raises(tf.errors.InvalidArgumentError, match="pruning step did not advance"):
        _fit(pruned, callbacks=[])


def test_adam_momentum_cannot_revive_pruned_weights():
    once = ConstantSparsity(0.5, begin_step=1, end_step=1, frequency=1)
    pruned = compile_classifier(pk.prune_low_magnitude(tiny_cnn(), pruning_schedule=once), lr=0.05)
    first = {}
    remember = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: first or first.update(pk.get_masks(pruned)))
    _fit(pruned, epochs=5, batch_size=16, callbacks=[pk.UpdatePruningStep(), remember])  # large steps, momentum
    for name in KERNELS:
        kernel = pruned.get_layer(name).kernel.numpy()
        keep = first[pruned.get_layer(name).kernel.path]
        assert_sparsity(keep, 0.5, f"{name} mask after step 1")
        assert (kernel[~keep] == 0).all() and (kernel[keep] != 0).all(), name


def test_a_layers_own_kernel_constraint_still_applies():
    inputs = keras.Input((8, 8, 1))
    hidden = keras.layers.Dense(16, kernel_constraint=keras.constraints.NonNeg(), name="fc")(keras.layers.Flatten()(inputs))
    model = keras.Model(inputs, keras.layers.Dense(10, name="out")(hidden))
    pruned = compile_classifier(pk.prune_low_magnitude(model, pruning_schedule=ConstantSparsity(0.5, 1)), lr=0.05, eager=True)
    _fit(pruned, epochs=2)
    kernel, keep = pruned.get_layer("fc").kernel.numpy(), pk.get_masks(pruned)["fc/kernel"]
    assert kernel.min() >= 0  # NonNeg ran (and may add zeros of its own)
    assert_sparsity(keep, 0.5, "fc mask")
    assert (kernel[~keep] == 0).all()


@pytest.mark.parametrize("pooling", ["AVG", "MAX"])
def test_block_sparsity_prunes_whole_blocks_of_dense_kernels(pooling):
    pruned = pk.prune_low_magnitude(
        pk.digits_mlp(), pruning_schedule=ConstantSparsity(0.5, 1, 1, 1), block_size=(4, 2), block_pooling_type=pooling
    )
    compile_classifier(pruned, eager=True)
    _fit(pruned, batch_size=64)
    kernel = pruned.get_layer("fc1").kernel.numpy()  # (64, 128): 16 x 64 blocks of 4 x 2
    blocks = (kernel.reshape(16, 4, 64, 2) == 0).transpose(0, 2, 1, 3).reshape(1024, 8)
    assert (blocks.all(axis=1) | ~blocks.any(axis=1)).all()
    assert int(blocks.all(axis=1).sum()) == 512


def test_m_by_n_sparsity_leaves_m_zeros_in_every_n_input_weights():
    pruned = pk.prune_low_magnitude(pk.digits_mlp(), pruning_schedule=ConstantSparsity(0.5, 1, 1, 1), sparsity_m_by_n=(2, 4))
    compile_classifier(pruned, eager=True)
    _fit(pruned, batch_size=64)
    for name in ("fc1", "fc2", "fc3"):
        kernel = pruned.get_layer(name).kernel.numpy()  # (inputs, outputs): groups run along the inputs
        zeros = (kernel.reshape(-1, 4, kernel.shape[1]) == 0).sum(axis=1)
        assert (zeros == 2).all(), name


def test_block_size_on_a_conv_kernel_is_refused_naming_the_layer():
    with pytest.raises(ConfigError, match=r"conv1.*2-D weights"):
        pk.prune_low_magnitude(tiny_cnn(), pruning_schedule=ConstantSparsity(0.5, 1), block_size=(2, 2))


class _Scale(keras.layers.Layer):
    def build(self, shape):
        self.scale = self.add_weight(shape=shape[-1:], initializer="ones")

    def call(self, x):
        return x * self.scale


class _PrunableScale(_Scale, pk.PrunableLayer):
    def get_prunable_weights(self):
        return [self.scale]


def _model_with(layer):
    inputs = keras.Input((8, 8, 1))
    x = layer(keras.layers.Dense(8, name="fc")(keras.layers.Flatten()(inputs)))
    return keras.Model(inputs, keras.layers.Dense(10, name="out")(x))


def test_unsupported_layer_error_names_the_layer_and_how_to_exclude_it():
    model = _model_with(_Scale(name="scale"))
    with pytest.raises(ConfigError, match=r"'scale' is a _Scale.*exclude=\['scale'\].*get_prunable_weights"):
        pk.prune_low_magnitude(model)
    pruned = pk.prune_low_magnitude(model, exclude=["scale"])
    assert pk.pruned_layers(pruned) == ["fc", "out"]


def test_custom_layer_with_get_prunable_weights_is_pruned():
    pruned = compile_classifier(
        pk.prune_low_magnitude(_model_with(_PrunableScale(name="scale")), ConstantSparsity(0.5, 1)), eager=True
    )
    _fit(pruned)
    assert_zero_count(pruned.get_layer("scale").scale.numpy(), 4, "scale")


def test_model_without_prunable_layers_is_refused():
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.BatchNormalization(), keras.layers.Flatten()])
    with pytest.raises(ConfigError, match="no prunable layers"):
        pk.prune_low_magnitude(model)


def test_exclude_pattern_matching_nothing_is_refused():
    with pytest.raises(LayerNotFoundError, match="'head_\\*' matches no layer"):
        pk.prune_low_magnitude(tiny_cnn(), exclude=["head_*"])


def test_excluded_layers_stay_dense():
    pruned = compile_classifier(pk.prune_low_magnitude(tiny_cnn(), ConstantSparsity(0.5, 1), exclude=["conv*"]), eager=True)
    _fit(pruned)
    assert pk.pruned_layers(pruned) == ["fc1", "fc2"]
    assert_zero_count(pruned.get_layer("conv1").kernel.numpy(), 0, "conv1")
    assert_sparsity(pruned.get_layer("fc1").kernel.numpy(), 0.5, "fc1")


def test_pruning_policy_is_refused():
    with pytest.raises(ConfigError, match="pruning_policy"):
        pk.prune_low_magnitude(tiny_cnn(), pruning_policy=object())


def test_a_legacy_or_foreign_model_is_refused():
    with pytest.raises(ConfigError, match="can only prune an object of the following types.*type: object"):  # tfmot.s words
        pk.prune_low_magnitude(object())


class SubclassedNet(keras.Model):
    def __init__(self, schedule=None, **kwargs):
        super().__init__(**kwargs)
        self.flatten = keras.layers.Flatten()
        self.fc1 = keras.layers.Dense(32, activation="relu", name="fc1")
        self.fc2 = keras.layers.Dense(10, name="fc2")
        if schedule is not None:
            pk.prune_low_magnitude(self.fc1, pruning_schedule=schedule)

    def call(self, x):
        return self.fc2(self.fc1(self.flatten(x)))


def test_subclassed_model_prunes_the_layers_marked_layer_wise():
    model = SubclassedNet(ConstantSparsity(0.75, 1))
    model(np.zeros((1, 8, 8, 1), np.float32))
    compile_classifier(model, eager=True)
    _fit(model)
    assert_sparsity(model.fc1.kernel.numpy(), 0.75, "fc1")
    assert_zero_count(model.fc2.kernel.numpy(), 0, "fc2")
    plain = pk.strip_pruning(model)
    assert plain is model and get_pruning(model.fc1) is None and model.fc1.kernel.constraint is None


def test_subclassed_model_as_a_whole_is_refused_with_the_layer_wise_hint():
    with pytest.raises(ConfigError, match="prune its layers instead"):
        pk.prune_low_magnitude(SubclassedNet())


def test_unbuilt_subclassed_model_is_pruned_once_fit_builds_it():
    model = compile_classifier(SubclassedNet(ConstantSparsity(0.5, 1)), eager=True)
    _fit(model)  # Keras builds the layers in the first train step; the masks are attached before the second
    assert_sparsity(model.fc1.kernel.numpy(), 0.5, "fc1")
    assert_zero_count(model.fc2.kernel.numpy(), 0, "fc2")


def _tape_loop(model, steps, callback, compiled=True):
    x, y = random_digits(8 * steps)
    optimizer = keras.optimizers.Adam(1e-2)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def train_step(xb, yb):
        with tf.GradientTape() as tape:
            loss = loss_fn(yb, model(xb, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))

    step_fn = tf.function(train_step) if compiled else train_step
    if callback is not None:
        callback.set_model(model)
        callback.on_train_begin()
    for i in range(steps):
        if callback is not None:
            callback.on_train_batch_begin(batch=i)
        step_fn(x[8 * i : 8 * i + 8], y[8 * i : 8 * i + 8])
    if callback is not None:
        callback.on_train_end()


@pytest.mark.parametrize("compiled", [True, False], ids=["tf.function", "eager"])
def test_custom_gradient_tape_loop_reaches_exact_sparsity(compiled):
    schedule = PolynomialDecay(0.0, 0.6, begin_step=0, end_step=4, frequency=2)
    pruned = pk.prune_low_magnitude(tiny_cnn(), pruning_schedule=schedule)
    _tape_loop(pruned, steps=6, callback=pk.UpdatePruningStep(), compiled=compiled)
    for name in KERNELS:
        assert_sparsity(pruned.get_layer(name).kernel.numpy(), 0.6, name)


def test_eager_loop_without_the_callback_raises_a_prunekit_error():
    pruned = pk.prune_low_magnitude(tiny_cnn(), pruning_schedule=ConstantSparsity(0.5, 1))
    with pytest.raises(ConfigError, match=r"layer 'conv1'.*UpdatePruningStep"):
        _tape_loop(pruned, steps=1, callback=None, compiled=False)


def test_get_masks_marks_exactly_the_zero_weights():
    pruned = compile_classifier(pk.prune_low_magnitude(tiny_cnn(), pruning_schedule=ConstantSparsity(0.5, 1)), eager=True)
    _fit(pruned)
    masks = pk.get_masks(pruned)
    assert sorted(masks) == sorted(pruned.get_layer(name).kernel.path for name in KERNELS)
    for name in KERNELS:
        kernel = pruned.get_layer(name).kernel
        np.testing.assert_array_equal(masks[kernel.path], kernel.numpy() != 0)


def test_sequential_model_stays_sequential_through_prune_and_strip():
    model = pk.digits_mlp()
    pruned = compile_classifier(pk.prune_low_magnitude(model, ConstantSparsity(0.5, 1)), eager=True)
    _fit(pruned)
    plain = pk.strip_pruning(pruned)
    assert isinstance(plain, keras.Sequential)
    assert [layer.name for layer in plain.layers] == ["flatten", "fc1", "fc2", "fc3"]
    for name in ("fc1", "fc2", "fc3"):
        assert_sparsity(plain.get_layer(name).kernel.numpy(), 0.5, name)
