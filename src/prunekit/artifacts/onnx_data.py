"""Which files an ONNX model is made of: the ``.onnx`` and the external-data files its weights live in.

Framework-free (only ``onnx``), so the PyTorch export helpers and the model server share it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from prunekit.errors import ConfigError


def external_data_files(path: str | os.PathLike) -> tuple[Path, ...]:
    """The files beside an ONNX model that hold its external data (weights of models over 2 GiB), checked to exist.

    Empty for a self-contained file. Raises :class:`~prunekit.errors.ConfigError` naming a data
    file the model refers to that is missing.
    """
    import onnx

    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    locations = dict.fromkeys(
        entry.value
        for tensor in _tensors(model.graph)
        for entry in tensor.external_data
        if tensor.data_location == onnx.TensorProto.EXTERNAL and entry.key == "location"
    )
    files = tuple(path.parent / location for location in locations)
    missing = [file.name for file in files if not file.is_file()]
    if missing:
        raise ConfigError(
            f"{path} keeps its weights in {missing}, which is missing from {path.parent}; keep the "
            "data file(s) next to the .onnx file (copy or move them together)"
        )
    return files


def _tensors(graph: Any) -> Iterable[Any]:
    """Every tensor stored in an ONNX graph: initializers and tensor attributes, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            for subgraph in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                yield from _tensors(subgraph)
