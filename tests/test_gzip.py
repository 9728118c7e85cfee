"""The streamed gzip size of a file equals the in-memory one, across chunk boundaries."""

import numpy as np
import pytest

from prunekit.core.gzip import gzip_file_size, gzip_size


@pytest.mark.parametrize("size", [0, 1000, 3 * (1 << 20) + 17])  # empty, one chunk, several 1 MiB chunks
def test_streamed_file_size_equals_the_in_memory_size(tmp_path, size):
    data = np.random.default_rng(size).integers(0, 4, size).astype(np.uint8).tobytes()
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    assert gzip_file_size(path) == gzip_size(data)
    assert 0 < gzip_size(data) < max(size, 1000)
