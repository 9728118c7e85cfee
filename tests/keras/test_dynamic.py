"""Keras DynamicSparsity (SET, RigL): same masks as PyTorch on the same weights and gradients, fixed nonzeros, zeroed regrowth."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")
torch = pytest.importorskip("torch")

from prunekit import ConfigError, PolynomialDecay  # noqa: E402
from prunekit.keras import get_masks, prune_low_magnitude  # noqa: E402
from prunekit.keras.unstructured.dynamic import DynamicSparsity, prune_sparse  # noqa: E402
from prunekit.methods.run import run_method  # noqa: E402
from prunekit.torch import NM  # noqa: E402
from prunekit.torch.unstructured.dynamic import DynamicPruner  # noqa: E402
from tests.keras.helpers import compile_classifier, random_digits  # noqa: E402

IN, OUT = 16, 8


def _keras_layer(kernel: np.ndarray, m_by_n=None):
    model = keras.Sequential([keras.Input((IN,)), keras.layers.Dense(OUT, use_bias=False, name="fc")])
    model.get_layer("fc").kernel.assign(kernel)
    sparse = prune_sparse(model, 0.5, sparsity_m_by_n=m_by_n)
    sparse.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    return sparse


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_keras_rigl_matches_torch_on_the_same_weights_masks_and_gradients(pattern):
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((OUT, IN)).astype(np.float32)  # torch layout (out, in); Keras's kernel is its transpose
    grad = rng.random((OUT, IN)).astype(np.float32)

    torch_model = torch.nn.Sequential(torch.nn.Linear(IN, OUT, bias=False))
    with torch.no_grad():
        torch_model[0].weight.copy_(torch.from_numpy(weight))
    optimizer = torch.optim.SGD(torch_model.parameters(), lr=0.0)
    options = {"pattern": NM(2, 4)} if pattern == "2:4" else {}
    pruner = DynamicPruner(
        torch_model, 0.5, regrow="rigl", begin_step=1, end_step=11, update_interval=10, optimizer=optimizer, **options
    )
    pruner.prune()
    for _ in range(2):
        torch_model[0].weight.grad = torch.from_numpy(grad.copy())
        optimizer.step()
        pruner.step()  # the update runs after step 1

    sparse = _keras_layer(weight.T, m_by_n=(2, 4) if pattern == "2:4" else None)
    callback = DynamicSparsity(
        "rigl", begin_step=1, end_step=11, update_interval=10, data=(np.zeros((1, IN)), np.zeros((1, OUT)))
    )
    callback.set_model(sparse)
    callback.on_train_begin()
    callback.on_train_batch_begin(0)  # step 0: pruned to 50 %
    [path] = get_masks(sparse)
    keras_before = get_masks(sparse)[path].copy()
    callback.update(1, gradients={path: grad.T})

    torch_mask = pruner.masks["0.weight"].numpy()
    assert keras_before.sum() == torch_mask.sum() == OUT * IN // 2
    assert np.array_equal(get_masks(sparse)[path], torch_mask.T)
    assert not np.array_equal(keras_before, get_masks(sparse)[path])  # something moved
    kernel = sparse.get_layer("fc").kernel.numpy()
    assert np.array_equal(kernel, torch_model[0].weight.detach().numpy().T)  # regrown at 0 in both
    assert callback.history[0]["regrown"][path] == pruner.history[0]["regrown"]["0.weight"] > 0


def _trained(callback, steps: int = 16, extra=()):
    x, y = random_digits(8 * steps, seed=1)
    keras.utils.set_random_seed(0)
    sparse = prune_sparse(
        keras.Sequential(
            [
                keras.Input((8, 8, 1)),
                keras.layers.Flatten(),
                keras.layers.Dense(32, name="fc1"),
                keras.layers.Dense(10, name="fc2"),
            ]
        ),
        0.8,
    )
    compile_classifier(sparse, eager=True)
    history = sparse.fit(x, y, batch_size=8, epochs=1, callbacks=[callback, *extra], verbose=0)
    return sparse, history


@pytest.mark.parametrize("regrow", ["set", "rigl"])
def test_nonzeros_of_every_weight_stay_fixed_and_history_logs_turnover(regrow):
    x, y = random_digits(64, seed=2)
    callback = DynamicSparsity(regrow, end_step=16, update_interval=4, data=(x, y), batch_size=8)
    sparse, history = _trained(callback)
    assert [r["step"] for r in callback.history] == [4, 8, 12]
    expected = dict(zip(get_masks(sparse), [2048 - round(0.8 * 2048), 320 - round(0.8 * 320)]))  # fc1, fc2
    for record in callback.history:
        assert record["nonzeros"] == expected
        assert record["dropped"] == record["regrown"]
    assert {path: int(mask.sum()) for path, mask in get_masks(sparse).items()} == expected
    assert history.history["turnover"] == [pytest.approx(callback.history[-1]["turnover"])]
    assert history.history["regrown"] == [sum(sum(r["regrown"].values()) for r in callback.history)]
    assert 0 < callback.history[-1]["turnover"] < 1


class _CheckRegrown(keras.callbacks.Callback):
    """After the DynamicSparsity update of step 4: regrown kernel entries and their Adam slots are 0."""

    def __init__(self, dynamic):
        super().__init__()
        self.dynamic, self.previous, self.checked = dynamic, None, 0

    def on_train_batch_begin(self, batch, logs=None):
        masks = get_masks(self.model)
        if self.dynamic.step == 4:
            for layer in ("fc1", "fc2"):
                kernel = self.model.get_layer(layer).kernel
                grown = masks[kernel.path] & ~self.previous[kernel.path]
                assert grown.any()
                assert (kernel.numpy()[grown] == 0).all()
                slots = [v for v in self.model.optimizer.variables if v.name.startswith(kernel.path.replace("/", "_") + "_")]
                assert len(slots) == 2  # Adam's momentum and velocity
                for slot in slots:
                    assert (slot.numpy()[grown] == 0).all()
                self.checked += 1
        self.previous = masks


def test_regrown_weights_and_their_adam_slots_start_at_zero():
    callback = DynamicSparsity("set", begin_step=4, end_step=5, update_interval=1)
    checker = _CheckRegrown(callback)
    _trained(callback, steps=6, extra=[checker])
    assert checker.checked == 2


def test_rigl_without_data_and_a_schedule_pruning_during_regrowth_are_refused():
    with pytest.raises(ConfigError, match="regrow='rigl' computes the dense gradient on update steps from a batch of data"):
        DynamicSparsity("rigl", end_step=100)
    x, y = random_digits(32)
    model = prune_low_magnitude(
        keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(10, name="fc")]),
        pruning_schedule=PolynomialDecay(0.0, 0.8, begin_step=0, end_step=20, frequency=5),
    )
    compile_classifier(model, eager=True)
    with pytest.raises(ConfigError, match="the schedule of layer 'fc' changes sparsity during the regrowth phase"):
        model.fit(
            x, y, batch_size=8, callbacks=[DynamicSparsity("set", begin_step=10, end_step=40, update_interval=5)], verbose=0
        )


def test_erdos_renyi_kernel_gives_the_small_head_more_density():
    model = prune_sparse(
        keras.Sequential([keras.Input((64,)), keras.layers.Dense(128), keras.layers.Dense(10)]),
        0.9,
        distribution="erdos_renyi_kernel",
    )
    from prunekit.keras.unstructured.state import prunings

    finals = [state.spec.schedule.final_sparsity for state in prunings(model)]
    sizes = [64 * 128, 128 * 10]
    assert finals[1] < 0.9 < finals[0]
    assert sum((1 - s) * n for s, n in zip(finals, sizes)) == pytest.approx(0.1 * sum(sizes))


def test_rigl_method_runs_on_keras_through_the_registry():
    x, y = random_digits(128, seed=3)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(32), keras.layers.Dense(10)])
    run = run_method("rigl", "keras", model, x, y, 0.75, epochs=2, update_interval=2, batch_size=32)
    assert run.sparsity >= 0.75
    assert [r["epoch"] for r in run.history] == [1, 2]
    assert run.history[0]["regrown"] > 0 and run.history[-1]["turnover"] > 0
    assert not hasattr(run.model.layers[-1], "_prunekit_pruning")


def test_keras_train_sparse_from_dense_prunes_gradually_then_regrows():
    from prunekit.keras.unstructured.dynamic import train_sparse

    x, y = random_digits(128, seed=4)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(32), keras.layers.Dense(10)])
    run = train_sparse(model, x, y, 0.8, regrow="set", epochs=3, batch_size=16, gradual_epochs=1, update_interval=2)
    # 8 steps an epoch: pruning every 2 steps up to step 8, the first update at step 10, the last before 0.75 * 24 = 18
    assert [r["regrown"] > 0 for r in run.history] == [False, True, True]
    kernels = [layer.kernel.numpy() for layer in run.model.layers if hasattr(layer, "kernel")]
    assert all((k != 0).sum() <= k.size - round(0.8 * k.size) for k in kernels)
