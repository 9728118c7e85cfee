"""Bundled data: scikit-learn's digits (8x8 grey images, 10 classes), no downloads.

Arrays are framework-free numpy; the backends wrap them in their own loaders.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DatasetSplit:
    """Train/validation/test arrays: images are float32 ``(N, 1, 8, 8)`` in [0, 1], labels int64."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    @property
    def num_classes(self) -> int:
        return 10


def load_digits(seed: int = 0, val_fraction: float = 0.15, test_fraction: float = 0.2) -> DatasetSplit:
    """Load scikit-learn's bundled digits as a stratified, seeded train/val/test split.

    Example::

        split = load_digits()
        split.x_train.shape  # (1221, 1, 8, 8)
    """
    if not 0 < test_fraction < 1 or not 0 <= val_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ValueError(
            f"val_fraction={val_fraction} and test_fraction={test_fraction} must be in [0, 1) and sum to less than 1"
        )
    from sklearn.datasets import load_digits as _sk_load_digits
    from sklearn.model_selection import train_test_split

    bunch = _sk_load_digits()
    images = (bunch.images / 16.0).astype(np.float32)[:, None, :, :]
    labels = bunch.target.astype(np.int64)
    x_rest, x_test, y_rest, y_test = train_test_split(images, labels, test_size=test_fraction, random_state=seed, stratify=labels)
    if val_fraction == 0:
        empty_x = np.zeros((0, *images.shape[1:]), np.float32)
        return DatasetSplit(x_rest, y_rest, empty_x, np.zeros(0, np.int64), x_test, y_test)
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest, y_rest, test_size=val_fraction / (1 - test_fraction), random_state=seed, stratify=y_rest
    )
    return DatasetSplit(x_train, y_train, x_val, y_val, x_test, y_test)
