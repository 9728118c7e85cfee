"""The context-mixing coders' output pinned byte for byte: a file written today must read the same bytes
on any later version, so a refactor of the kernels may not change a single coded byte.

The digests were computed from the kernels before they shared their arithmetic-coder step; every input is
generated from a fixed seed. A failing digest here means the coded format changed: that needs a new
format version, never a new digest.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from safetensors.numpy import load as load_st

from prunekit.artifacts import cm_codec
from prunekit.artifacts.cm_codec import cm_decode, cm_encode
from prunekit.artifacts.compact import load_compact, save_compact
from prunekit.artifacts.compact_codecs import unpack
from prunekit.artifacts.compact_container import DATA_TENSOR, TABLE_TENSOR


def _inputs() -> dict[str, tuple[str, bytes, np.ndarray | None]]:
    rng = np.random.default_rng(20261207)
    density = rng.random((48, 1)) * 0.4  # rows of different density, as magnitude pruning leaves
    mask = np.packbits((rng.random((48, 200)) < density).reshape(-1), bitorder="little").tobytes()
    laplace = np.clip(np.rint(rng.laplace(0, 12, 3000)), -127, 127).astype(np.int8).tobytes()
    floats = (rng.standard_normal(800) * 0.05).astype(np.float32).tobytes()
    side = rng.permutation(np.repeat(np.arange(16), 120))
    keyed = np.clip(np.rint(rng.laplace(0, 1, side.size) * (side + 1) * 4), -127, 127).astype(np.int8).tobytes()
    return {
        "mask": ("cmm200", mask, None),
        "int8 bytes": ("cmb1", laplace, None),
        "int8 bytes as 2-byte words": ("cmb2", laplace, None),
        "float32 bytes": ("cmb4", floats, None),
        "int8 keyed by row scale": ("cms1", keyed, side),
    }


STREAM_SHA256 = {
    "mask": "8d4877270bcc9f0bf152446e28921c07059a9b1ee566bfe7b663997b474ac47a",
    "int8 bytes": "c16850b0a19f4b76947c5f9e97c36473872fb47d8563552190133d8d1f83da6f",
    "int8 bytes as 2-byte words": "8752f1d47a6d4f767cd8a8b2b0afd5e92a8a9ff84185b165709e63f698f1dcef",
    "float32 bytes": "1d6683e0c43883e1e8fa5f4969b37ab4f720f01918901393054136ef3dc07bd7",
    "int8 keyed by row scale": "9fa3b41ecae536b0eb661db1ce5c930c681c640d41807a80453a7e913288ab02",
}


@pytest.mark.parametrize("name", list(STREAM_SHA256))
def test_a_coded_stream_keeps_its_exact_bytes(name):
    codec, data, side = _inputs()[name]
    coded = cm_encode(codec, data, side)
    assert coded is not None and len(coded) < len(data)
    assert hashlib.sha256(coded).hexdigest() == STREAM_SHA256[name]
    assert cm_decode(codec, coded, len(data), side) == data


def test_the_plain_python_kernels_keep_the_same_exact_bytes(monkeypatch):
    plain = cm_codec._kernels(False)
    monkeypatch.setattr(cm_codec, "_kernels", lambda _compiled: plain)
    for name, (codec, data, side) in _inputs().items():
        coded = cm_encode(codec, data, side)
        assert coded is not None and hashlib.sha256(coded).hexdigest() == STREAM_SHA256[name], name
        assert cm_decode(codec, coded, len(data), side) == data, name


def _pruned_layer() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    weights = rng.standard_normal((96, 160)).astype(np.float32) * np.geomspace(0.02, 1, 96, dtype=np.float32)[:, None]
    weights[np.abs(weights) < np.quantile(np.abs(weights), 0.85)] = 0
    return {"layer.weight": weights, "layer.bias": rng.standard_normal(96).astype(np.float32)}


FILE_SHA256 = {
    "int8": "a94aada8cffc7c68065046bf36ed610477ed93546f6bf0055ff68c86d457fe01",
    "fp32": "c191e5e5b25602a29e3b279d2d6120c6598f9f7ae24a8f91b2428a3e6cb1946b",
}
#: The codecs those files' streams chose: the digests above pin the context-mixing coders only while they are used.
FILE_CODECS = {"int8": ["cmb1", "cmm160", "cmb4"], "fp32": ["lzma020", "cmm160", "cmb4"]}


@pytest.mark.parametrize("dtype", list(FILE_SHA256))
def test_the_compact_writer_keeps_its_exact_bytes(dtype, tmp_path):
    path = tmp_path / f"{dtype}.safetensors"
    arrays = _pruned_layer()
    save_compact(arrays, path, dtype=dtype, entropy="best")
    blobs = load_st(path.read_bytes())
    digest = hashlib.sha256(blobs[TABLE_TENSOR].tobytes() + blobs[DATA_TENSOR].tobytes()).hexdigest()
    assert _stream_codecs(path) == FILE_CODECS[dtype]
    assert digest == FILE_SHA256[dtype]
    loaded, _ = load_compact(path)
    if dtype == "fp32":
        assert loaded["layer.weight"].tobytes() == arrays["layer.weight"].tobytes()


def _stream_codecs(path):
    raw = path.read_bytes()
    summary = json.loads(json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])["__metadata__"]["prunekit"])
    codec, _, size, _ = summary["table"]
    table = json.loads(unpack(codec, load_st(raw)[TABLE_TENSOR].tobytes(), size, "test"))
    return [stream[0] for stream in table["streams"]]
