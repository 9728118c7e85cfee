"""Keras 3 recovery: distillation on keras.distillation with width projections, QAT/PQAT with int8 TFLite export."""

import math

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import prunekit.keras as pk  # noqa: E402
from prunekit import ConfigError, LayerNotFoundError  # noqa: E402
from prunekit.keras.deploy.tflite import TFLiteModel  # noqa: E402
from prunekit.keras.recover import Distiller, distill, export_tflite, kernel_codes, pqat, qat, quantize_model, strip_qat  # noqa: E402
from prunekit.keras.recover.fold import FoldedAway, FoldedChain, fold_plan, folded_weights  # noqa: E402
from tests.keras.helpers import accuracy, compile_classifier  # noqa: E402

SQNR_FLOOR_DB = 30.0  # TFLite int8 logits vs the fake-quant model's (about 37 dB measured on the digits CNN)


def clone_of(model):
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone


def test_keras_distillation_loss_equals_the_hand_computation(digits):
    teacher, student = pk.digits_cnn(channels=(4, 8), hidden=16), pk.digits_cnn(channels=(4, 8), hidden=16)
    distiller = Distiller(teacher, student, temperature=2.0, alpha=0.7)
    distiller.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = digits.x_train[:6], digits.y_train[:6]
    got = float(distiller.compute_loss(x, y, student(x, training=False), training=False))
    s, t = np.asarray(student(x), np.float64), np.asarray(teacher(x), np.float64)

    def softmax(z):
        e = np.exp(z - z.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    p_t, p_s = softmax(t / 2.0), softmax(s / 2.0)
    kl = float(np.mean(np.sum(p_t * np.log(p_t / p_s), -1))) * 4.0
    ce = float(np.mean([-math.log(softmax(row)[label]) for row, label in zip(s, y)]))
    assert got == pytest.approx(0.3 * ce + 0.7 * kl, rel=1e-4)


def test_keras_projection_only_where_widths_differ_and_it_trains(digits):
    teacher, student = pk.digits_cnn(), pk.digits_cnn(channels=(16, 32))
    distiller = Distiller(teacher, student, features=["conv2", "fc1"], alpha=0.5)
    assert list(distiller.projections) == ["conv2"]
    assert tuple(distiller.projections["conv2"].kernel.shape) == (32, 64)
    before = np.array(distiller.projections["conv2"].kernel.numpy())
    distiller.compile(optimizer=keras.optimizers.Adam(1e-3), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    distiller.fit(digits.x_train[:256], digits.y_train[:256], epochs=1, batch_size=64, verbose=0)
    assert not np.allclose(before, distiller.projections["conv2"].kernel.numpy())
    assert len(student.layers) == len(pk.digits_cnn().layers)  # nothing added to the student


def test_keras_distill_keeps_pruning_on_schedule_and_gives_the_teacher_back(dense_cnn, digits):
    teacher = clone_of(dense_cnn)
    pruned = pk.prune_low_magnitude(clone_of(dense_cnn), pruning_schedule=pk.ConstantSparsity(0.8, begin_step=0, frequency=5))
    distill(pruned, teacher, digits.x_train, digits.y_train, epochs=2, lr=1e-3, alpha=0.7)
    assert teacher.trainable
    final = pk.strip_pruning(pruned)
    for layer in final.layers:
        if layer.name in ("conv2", "fc1", "fc2"):
            kernel = layer.kernel.numpy()
            assert int((kernel == 0).sum()) == round(0.8 * kernel.size), layer.name
    assert accuracy(final, digits.x_test, digits.y_test) > 0.9


def test_keras_distill_bad_input_is_named():
    teacher = pk.digits_cnn(channels=(4, 8), hidden=16)
    with pytest.raises(LayerNotFoundError, match="conv9"):
        Distiller(teacher, pk.digits_cnn(channels=(4, 8), hidden=16), features=["conv9"])
    with pytest.raises(ConfigError, match="differ in shape"):
        Distiller(teacher, pk.digits_cnn(channels=(4, 8), hidden=16, num_classes=5))
    with pytest.raises(ConfigError, match="last \\(channel\\) axis"):
        Distiller(teacher, pk.digits_cnn(channels=(4, 8), hidden=16), features={"conv2": "pool"})


def test_kernel_codes_hand_computation_and_forced_nonzeros():
    kernel = np.array([[0.5, 0.2], [-1.0, 0.1], [0.001, -0.05], [0.3, 0.0]], np.float32)  # (in, out)
    codes, scale = kernel_codes(kernel, None, axes=(0,))
    assert scale.ravel().tolist() == pytest.approx([1 / 127, 0.2 / 127])
    assert codes[:, 0].tolist() == [64, -127, 0, 38]
    mask = np.array([[True, True], [True, True], [True, True], [False, True]])
    codes, _ = kernel_codes(kernel, mask, axes=(0,))
    assert codes[:, 0].tolist() == [64, -127, 1, 0] and codes[3, 1] == 1  # zeros exactly where the mask is False


def test_keras_qat_tflite_accuracy_within_one_point_of_the_fake_quant_model(dense_cnn, digits):
    run = qat(dense_cnn, digits.x_train, digits.y_train, epochs=1, lr=1e-4)
    assert run.quantized == ("conv1", "conv2", "fc1", "fc2") and run.float_layers == {}
    assert [type(layer).__name__ for layer in run.model.layers if layer.name == "fc1"] == ["QuantDense"]
    fake = accuracy(run.model, digits.x_test, digits.y_test)
    flatbuffer, _ = export_tflite(run.model, digits.x_val)
    tflite = float((TFLiteModel(flatbuffer).predict(digits.x_test).argmax(-1) == digits.y_test).mean())
    assert abs(tflite - fake) <= 0.01, (tflite, fake)
    assert fake > 0.9
    plain = strip_qat(run.model)
    folded = {"bn1", "relu1", "bn2", "relu2"}  # folded into conv1/conv2 as the converter folds them
    assert [type(layer) for layer in plain.layers if layer.name not in folded] == [
        type(layer) for layer in dense_cnn.layers if layer.name not in folded
    ]
    kernel = plain.get_layer("fc1").kernel.numpy()
    steps = kernel / (np.abs(kernel).max(axis=0, keepdims=True) / 127)
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-3)  # weights sit on the int8 grid


def test_keras_pqat_tflite_has_exactly_the_masked_zeros(pruned_90, digits):
    pruned = pruned_90.model
    masks = {layer.name: layer.kernel.numpy() != 0 for layer in pruned.layers if hasattr(layer, "kernel")}
    run = pqat(pruned, digits.x_train, digits.y_train, epochs=1, lr=1e-4)
    assert run.mask_zeros == {name: int((~mask).sum()) for name, mask in masks.items()}
    _, zeros = export_tflite(run.model, digits.x_val)
    assert zeros == run.mask_zeros
    plain = strip_qat(run.model)
    for name, mask in masks.items():
        assert np.array_equal(plain.get_layer(name).kernel.numpy() == 0, ~mask), name


def test_keras_pqat_without_masks_is_an_error(digits):
    with pytest.raises(ConfigError, match="prune first, or use qat"):
        pqat(pk.digits_cnn(channels=(4, 8), hidden=16), digits.x_train[:64], digits.y_train[:64], epochs=1)


def test_keras_qat_covers_depthwise_convolutions_and_names_float_layers(digits):
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="stem")(inputs)
    x = keras.layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2, activation="relu", name="dw")(x)
    x = keras.layers.Conv2DTranspose(4, 2, name="up")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(10, name="head")(x)
    model = compile_classifier(keras.Model(inputs, outputs))
    model.fit(digits.x_train, digits.y_train, epochs=3, batch_size=64, verbose=0)
    run = qat(model, digits.x_train, digits.y_train, epochs=1, lr=1e-4)
    assert run.quantized == ("stem", "dw", "head")
    assert set(run.float_layers) == {"up"}
    fake = accuracy(run.model, digits.x_test, digits.y_test)
    flatbuffer, _ = export_tflite(run.model, digits.x_val)
    tflite = float((TFLiteModel(flatbuffer).predict(digits.x_test).argmax(-1) == digits.y_test).mean())
    assert abs(tflite - fake) <= 0.03, (tflite, fake)
    codes, _ = kernel_codes(run.model.get_layer("dw").kernel.numpy(), None, axes=(0, 1))
    assert codes.shape == (3, 3, 8, 2)


def test_quantize_model_rejects_bad_masks():
    model = pk.digits_cnn(channels=(4, 8), hidden=16)
    with pytest.raises(ConfigError, match="does not have"):
        quantize_model(model, masks={"nope": np.ones((2, 2), bool)})
    with pytest.raises(ConfigError, match="shape"):
        quantize_model(model, masks={"fc2": np.ones((2, 2), bool)})
    with pytest.raises(ConfigError, match="'zeros'"):
        quantize_model(model, masks="ones")


def test_keras_recover_handlers_run_through_the_registry(pruned_90, digits, tmp_path):
    from prunekit.methods import get_method
    from prunekit.methods.recover import RecoverJob

    method = get_method("pqat")
    model = clone_of(pruned_90.model)
    zeros = {layer.name: int((layer.kernel.numpy() == 0).sum()) for layer in model.layers if hasattr(layer, "kernel")}
    job = RecoverJob(model, digits.x_train, digits.y_train, method.options("keras", epochs=1), export_path=tmp_path / "m.tflite")
    run = method.handler("keras")(job)
    assert run.artifact.is_file() and run.zeros == zeros and len(run.history) == 1
    folded = {"bn1", "relu1", "bn2", "relu2"}  # folded into conv1/conv2: pass-throughs of the same names
    assert [type(layer) for layer in run.model.layers if layer.name not in folded] == [
        type(layer) for layer in model.layers if layer.name not in folded
    ]  # stripped, plain
    assert {type(run.model.get_layer(name)) for name in folded} == {FoldedAway}
    with pytest.raises(ConfigError, match="teacher"):
        get_method("distill").handler("keras")(RecoverJob(model, digits.x_train, digits.y_train, get_method("distill").options()))


def test_quantize_model_rejects_subclassed_models_and_live_pruning_state():
    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.head = keras.layers.Dense(3)

        def call(self, x):
            return self.head(x)

    model = Subclassed()
    model(np.zeros((1, 4), "float32"))
    with pytest.raises(ConfigError, match="Sequential and Functional"):
        quantize_model(model)
    pruned = pk.prune_low_magnitude(pk.digits_cnn(channels=(4, 8), hidden=16), pruning_schedule=pk.ConstantSparsity(0.5, 1))
    with pytest.raises(ConfigError, match="strip_pruning"):
        quantize_model(pruned)


def _with_random_statistics(model, seed=0):
    """Random BatchNormalization statistics and affine terms, so that folding them is not the identity."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            size = layer.moving_mean.shape
            layer.gamma.assign(rng.uniform(-1.5, 1.5, size).astype("float32"))
            layer.beta.assign(rng.normal(0, 0.5, size).astype("float32"))
            layer.moving_mean.assign(rng.normal(0, 0.5, size).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.2, 3.0, size).astype("float32"))
    return model


def test_fold_plan_takes_single_consumer_conv_bn_relu_chains_only():
    inputs = keras.Input((8, 8, 1))
    a = keras.layers.Conv2D(4, 3, padding="same", name="a")(inputs)
    a = keras.layers.ReLU(name="a_relu")(keras.layers.BatchNormalization(name="a_bn")(a))
    b = keras.layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2, use_bias=False, name="b")(a)
    b = keras.layers.BatchNormalization(name="b_bn")(b)  # folded, no ReLU after it
    c = keras.layers.Conv2D(8, 1, name="c")(b)  # two consumers: not folded
    d = keras.layers.Add(name="add")([keras.layers.BatchNormalization(name="c_bn")(c), c])
    outputs = keras.layers.Dense(10, name="head")(keras.layers.GlobalAveragePooling2D(name="gap")(d))
    plan = fold_plan(keras.Model(inputs, outputs), lambda layer: hasattr(layer, "kernel"))
    assert plan == {"a": FoldedChain("a", "a_bn", "a_relu"), "b": FoldedChain("b", "b_bn", None)}


def test_folded_weights_reproduce_conv_batchnorm_relu_at_inference(digits):
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(6, 3, padding="same", name="conv")(inputs)
    x = keras.layers.ReLU(name="relu")(keras.layers.BatchNormalization(name="bn")(x))
    x = keras.layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2, name="dw")(x)
    outputs = keras.layers.BatchNormalization(name="dw_bn")(x)
    model = _with_random_statistics(keras.Model(inputs, outputs))
    x = digits.x_val[:16]
    conv, dw = model.get_layer("conv"), model.get_layer("dw")
    kernel, bias = folded_weights(conv, model.get_layer("bn"))
    hidden = np.maximum(np.asarray(keras.ops.conv(x, kernel, padding="same")) + bias, 0)
    np.testing.assert_allclose(hidden, keras.Model(inputs, model.get_layer("relu").output)(x), rtol=1e-4, atol=1e-4)
    kernel, bias = folded_weights(dw, model.get_layer("dw_bn"))
    folded = np.asarray(keras.ops.depthwise_conv(hidden, kernel, padding="same")) + bias
    np.testing.assert_allclose(folded, model(x, training=False), rtol=1e-4, atol=1e-4)


def test_keras_qat_fake_quantizes_after_batchnorm_as_tflite_does(dense_cnn, digits):
    run = qat(dense_cnn, digits.x_train, digits.y_train, epochs=1, lr=1e-4)
    assert run.folded == (FoldedChain("conv1", "bn1", "relu1"), FoldedChain("conv2", "bn2", "relu2"))
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in run.model.layers)
    fake = np.asarray(run.model.predict(digits.x_test, verbose=0))
    flatbuffer, _ = export_tflite(run.model, digits.x_val)
    tflite = TFLiteModel(flatbuffer).predict(digits.x_test)
    sqnr = 10 * np.log10((fake**2).sum() / ((fake - tflite) ** 2).sum())
    assert sqnr >= SQNR_FLOOR_DB, sqnr
    assert (fake.argmax(-1) == tflite.argmax(-1)).mean() >= 0.99


def test_keras_distill_handler_refuses_the_torch_only_feature_options(digits):
    from prunekit.methods import get_method
    from prunekit.methods.recover import RecoverJob

    method = get_method("distill")
    teacher, student = pk.digits_cnn(), pk.digits_cnn()
    for options in (method.options(feature_loss="cosine"), method.options(features="penultimate")):
        with pytest.raises(ConfigError, match="PyTorch-only"):
            method.handler("keras")(RecoverJob(student, digits.x_train, digits.y_train, options, teacher=teacher))


def _quant_ranges(model):
    names = ("input_low", "input_high", "output_low", "output_high")
    return {layer.name: [float(getattr(layer, n)) for n in names] for layer in model.layers if hasattr(layer, "observed")}


def test_keras_activation_ranges_frozen_after_n_training_batches_are_exactly_constant(digits):
    model = _with_random_statistics(pk.digits_cnn(channels=(4, 8), hidden=16))
    frozen = quantize_model(model, freeze_ranges_after=2).model
    moving = quantize_model(model).model
    x = digits.x_val[:32]
    for run in (frozen, moving):
        run(x, training=True)
        run(x * 0.5, training=True)
    reached = _quant_ranges(frozen)
    assert reached == _quant_ranges(moving)  # the same EMA until the freeze
    for run in (frozen, moving):
        for _ in range(3):
            run(x * 4.0, training=True)  # a much wider batch range
    assert _quant_ranges(frozen) == reached
    assert _quant_ranges(moving) != reached
    assert float(frozen.get_layer("conv1").observed) == 5.0


def test_keras_qat_trains_the_conv_kernel_and_batchnorm_parameters_not_a_baked_fold(digits):
    model = _with_random_statistics(pk.digits_cnn(channels=(4, 8), hidden=16))
    run = quantize_model(model)
    conv1 = run.model.get_layer("conv1")
    np.testing.assert_array_equal(conv1.kernel.numpy(), model.get_layer("conv1").kernel.numpy())  # not pre-multiplied
    np.testing.assert_array_equal(conv1.bn_gamma.numpy(), model.get_layer("bn1").gamma.numpy())
    trainable = {w.path.split("/")[-1] for w in conv1.trainable_weights}
    assert trainable == {"kernel", "bias", "bn_gamma", "bn_beta"}
    # at inference conv1 computes the folded arithmetic of the stripped model (what the converter gets), fake-quantized
    x = digits.x_val[:32]
    run.model(x, training=True)  # observe the ranges once
    plain = strip_qat(run.model).get_layer("conv1")
    fq = keras.quantizers.fake_quant_with_min_max_vars
    expected = fq(plain(fq(x, conv1.input_low, conv1.input_high)), conv1.output_low, conv1.output_high)
    got = keras.Model(run.model.input, conv1.output)(x, training=False)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_keras_folded_batchnorm_statistics_frozen_after_n_training_batches(digits):
    model = _with_random_statistics(pk.digits_cnn(channels=(4, 8), hidden=16))
    qat_model = quantize_model(model, freeze_bn_after=1).model
    conv1, x = qat_model.get_layer("conv1"), digits.x_val[:32]
    before = conv1.bn_mean.numpy().copy()
    qat_model(x, training=True)  # batch 1 updates the moving statistics
    after_first = conv1.bn_mean.numpy().copy()
    assert not np.array_equal(after_first, before)
    out = qat_model(x * 2.0, training=True)
    np.testing.assert_array_equal(conv1.bn_mean.numpy(), after_first)
    np.testing.assert_allclose(out, qat_model(x * 2.0, training=False), rtol=1e-5, atol=1e-5)  # frozen: as at inference
    never = quantize_model(model, freeze_bn_after=0).model
    never(x, training=True)
    np.testing.assert_array_equal(never.get_layer("conv1").bn_mean.numpy(), model.get_layer("bn1").moving_mean.numpy())


def test_keras_freeze_options_are_validated_by_name():
    with pytest.raises(ConfigError, match="freeze_ranges_after should be None or an integer >= 1"):
        quantize_model(pk.digits_cnn(channels=(4, 8), hidden=16), freeze_ranges_after=0)
    with pytest.raises(ConfigError, match="freeze_bn_after should be None or an integer >= 0"):
        quantize_model(pk.digits_cnn(channels=(4, 8), hidden=16), freeze_bn_after=-1)


def test_keras_qat_registry_options_carry_the_freezes_to_the_layers(pruned_90, digits, monkeypatch):
    import prunekit.keras.recover.handlers as handlers
    from prunekit.keras.recover.qat import FREEZE_BN_AFTER
    from prunekit.methods import get_method
    from prunekit.methods.recover import RecoverJob

    method = get_method("pqat")
    assert method.options("keras")["freeze_bn_after"] == FREEZE_BN_AFTER == 0
    assert method.options("torch")["freeze_bn_after"] is None
    seen = {}

    def spy(*args, **kwargs):
        run = pqat(*args, **kwargs)
        seen.update({layer.name: (layer.freeze_ranges_after, layer.freeze_bn_after) for layer in run.model.layers
                     if hasattr(layer, "observed")})  # fmt: skip
        return run

    monkeypatch.setattr(handlers, "pqat", spy)
    options = method.options("keras", epochs=1, freeze_ranges_after=3, freeze_bn_after=2)
    method.handler("keras")(RecoverJob(clone_of(pruned_90.model), digits.x_train[:256], digits.y_train[:256], options))
    # every quantized layer freezes its ranges; only those that absorbed a BatchNormalization have statistics to freeze
    assert seen == {"conv1": (3, 2), "conv2": (3, 2), "fc1": (3, None), "fc2": (3, None)}
