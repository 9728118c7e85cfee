"""Load a ``.keras`` file saved in the middle of pruning, with its masks and pruning step.

``model.save("x.keras")`` on a pruned model writes each layer's pruning state into the file's
``model.weights.h5`` (next to the layer's weights). ``keras.saving.load_model`` reads the file as
a plain model (the pruning state is ignored, the zeros stay); :func:`load_model` reattaches it.
"""

from __future__ import annotations

import io
import os
import zipfile
from typing import Any

import h5py
import keras
import numpy as np

from prunekit.errors import ConfigError, CorruptFileError, LayerNotFoundError, StateMismatchError
from prunekit.keras.unstructured.layers import iter_layers
from prunekit.keras.unstructured.state import (
    ATTRIBUTE,
    LayerPruning,
    PruningSpec,
    get_pruning,
    new_step_variable,
    read_config,
    set_pruning,
)

WEIGHTS_FILE = "model.weights.h5"


def _saved_states(path: str | os.PathLike) -> list[dict[str, np.ndarray]]:
    try:
        with zipfile.ZipFile(path) as archive:
            payload = archive.read(WEIGHTS_FILE)
    except (zipfile.BadZipFile, KeyError) as exc:
        raise CorruptFileError(f"{os.fspath(path)!r} is not a .keras archive with {WEIGHTS_FILE}: {exc}") from None
    states: list[dict[str, np.ndarray]] = []
    with h5py.File(io.BytesIO(payload), "r") as weights:
        groups: list[Any] = []
        weights.visititems(lambda name, item: groups.append(item) if name.endswith(f"{ATTRIBUTE}/vars") else None)
        for group in groups:
            states.append({key: np.asarray(group[key]) for key in group.keys()})
    return states


def load_model(path: str | os.PathLike, custom_objects: dict[str, Any] | None = None, compile: bool = True) -> Any:
    """``keras.saving.load_model`` plus the pruning state (masks, step, schedule) saved in the file.

    Training continues where it stopped: fit again with ``callbacks=[UpdatePruningStep()]``.

    Example::

        pruned.save("checkpoint.keras")
        pruned = load_model("checkpoint.keras")
        pruned.fit(x, y, callbacks=[UpdatePruningStep()])
    """
    if os.fspath(path).lower().endswith((".h5", ".hdf5")):
        raise ConfigError(
            f"{os.fspath(path)!r} is a legacy HDF5 file: Keras 3 writes only the layers' own weights there, so it "
            "holds no pruning state (masks, step, schedule) to restore. Save pruning checkpoints as .keras "
            "(model.save('ckpt.keras')) and load them with prunekit.keras.load_model; load a plain .h5 model "
            "with keras.saving.load_model"
        )
    model = keras.saving.load_model(path, custom_objects=custom_objects, compile=compile)
    saved = _saved_states(path)
    if not saved:
        return model
    layers: dict[str, list[Any]] = {}
    for layer in iter_layers(model):
        layers.setdefault(layer.name, []).append(layer)
    step = new_step_variable()
    for store in saved:
        config = read_config(store, "?")
        name = config["layer"]
        matches = layers.get(name, [])
        if not matches:
            raise LayerNotFoundError(
                f"{os.fspath(path)!r} holds a pruning state for layer {name!r}, which the loaded model lacks"
            )
        if len(matches) > 1:
            raise StateMismatchError(
                f"{os.fspath(path)!r}: several layers are named {name!r}, so its pruning state is ambiguous; "
                "give nested models' layers unique names"
            )
        layer = matches[0]
        if get_pruning(layer) is not None:  # a subclassed model re-marked it and Keras restored it already
            continue
        state = LayerPruning(layer, PruningSpec.from_config(config), step)
        state.load_own_variables(store)
        set_pruning(layer, state)
    model.train_function = None
    return model
