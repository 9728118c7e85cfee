"""Run a stretch of many small tensor ops on one thread: on a few contended cores, handing each tiny op
to the intra-op pool costs more than the op."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def one_thread() -> Iterator[None]:
    """Torch's intra-op threads set to one inside the block, restored after it.

    Example::

        with one_thread():
            for part in x.split(64):
                total += part.square().sum()
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
