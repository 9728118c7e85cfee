"""Keras QAT/PQAT checkpoints: ``model.save`` mid-training and ``keras.models.load_model`` resume exactly."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import prunekit.keras as pk  # noqa: E402
from prunekit.keras.deploy.tflite import TFLiteModel  # noqa: E402
from prunekit.keras.recover import export_tflite, quantize_model, strip_qat  # noqa: E402


def _pruned_small_cnn():
    """The small digits CNN with a third of each fc1/conv2 kernel zeroed (a pruned model for PQAT)."""
    model = pk.digits_cnn(channels=(4, 8), hidden=16)
    for name in ("conv2", "fc1"):
        kernel = model.get_layer(name).kernel.numpy()
        kernel[..., : kernel.shape[-1] // 3] = 0.0
        model.get_layer(name).kernel.assign(kernel)
    return model


def _weights(model):
    return {weight.path: np.array(weight.numpy()) for weight in model.weights}


def _assert_same_weights(a, b):
    got, expected = _weights(b), _weights(a)
    assert list(got) == list(expected)
    for path, value in expected.items():
        np.testing.assert_array_equal(got[path], value, err_msg=path)


def test_keras_pqat_model_saved_mid_training_loads_and_resumes_exactly(digits, tmp_path):
    run = quantize_model(_pruned_small_cnn(), masks="zeros", freeze_ranges_after=5, freeze_bn_after=4)
    model = run.model
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(digits.x_train[:96], digits.y_train[:96], batch_size=32, epochs=1, verbose=0, shuffle=False)
    assert float(model.get_layer("conv1").observed) == 3.0  # mid-training: ranges and BN statistics still moving
    model.save(tmp_path / "qat.keras")

    loaded = keras.models.load_model(tmp_path / "qat.keras")
    assert [type(layer) for layer in loaded.layers] == [type(layer) for layer in model.layers]
    _assert_same_weights(model, loaded)  # kernels, observed ranges, step counters, masks, BN statistics
    assert int(loaded.optimizer.iterations) == int(model.optimizer.iterations) == 3
    x = digits.x_val[:64]
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))

    batch = digits.x_train[96:128], digits.y_train[96:128]
    conv1_mean = model.get_layer("conv1").bn_mean.numpy().copy()
    model.train_on_batch(*batch)
    loaded.train_on_batch(*batch)
    assert not np.array_equal(model.get_layer("conv1").bn_mean.numpy(), conv1_mean)  # batch 4 still updated them
    _assert_same_weights(model, loaded)
    for name, zeros in run.mask_zeros.items():
        assert int((loaded.get_layer(name).pqat_mask.numpy() == 0).sum()) == zeros, name
        assert int((strip_qat(loaded).get_layer(name).kernel.numpy() == 0).sum()) == zeros, name

    calibration = digits.x_val[:64]
    original, original_zeros = export_tflite(model, calibration)
    reloaded, reloaded_zeros = export_tflite(loaded, calibration)
    assert reloaded_zeros == original_zeros
    assert {name: reloaded_zeros[name] for name in run.mask_zeros} == run.mask_zeros == {"conv2": 72, "fc1": 640}
    np.testing.assert_array_equal(TFLiteModel(reloaded).predict(x), TFLiteModel(original).predict(x))


def test_keras_qat_layer_config_round_trips_its_options():
    model = quantize_model(pk.digits_cnn(channels=(4, 8), hidden=16), freeze_ranges_after=7, freeze_bn_after=None).model
    conv1 = model.get_layer("conv1")
    clone = type(conv1).from_config(conv1.get_config())
    assert (clone.freeze_ranges_after, clone.freeze_bn_after, clone.masked) == (7, None, False)
    assert clone.batchnorm == conv1.batchnorm is not None
    assert keras.saving.get_registered_name(type(conv1)) == "prunekit>QuantConv2D"
