"""Warnings that TF MOT's own test code causes, filtered for these ported files only.

The tests here are TF MOT's tests and guides kept as TF MOT wrote them (see each module's docstring), so the
Keras 2 habits in that code stay, and Keras 3's complaints about them are ignored here and nowhere else:
the same warning from any other test still fails (pyproject.toml's ``filterwarnings`` starts with ``error``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent

TFMOT_CODE_WARNINGS = (
    # TF MOT builds Sequential models with `input_shape=` on the first layer (Keras 2 style); Keras 3 warns.
    "ignore:Do not pass an `input_shape`/`input_dim` argument to a layer:UserWarning",
    "ignore:Argument `input_shape` is deprecated:UserWarning",
    # The on-device inference guide passes shuffle=True with a tf.data.Dataset; Keras ignores it and says so.
    "ignore:`shuffle=True` was passed, but will be ignored:UserWarning",
    # tf.test.TestCase has a method named test_session (a context manager, not a test) that pytest collects
    # from TF MOT's test classes; unittest warns that a test returned a value.
    r"ignore:It is deprecated to return a value that is not None from a test case \(<bound method "
    r"TensorFlowTestCase.test_session:DeprecationWarning",
    # TF MOT's tests stop mid-schedule on purpose (a few batches of a long PolynomialDecay) and TF MOT never
    # warns; prunekit's end-of-fit / strip_pruning SparsityWarning is tested in tests/keras/test_schedule_warning.py.
    "ignore::prunekit.errors.SparsityWarning",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Add the filters above to every test collected from this directory (only there)."""
    for item in items:
        if HERE in item.path.resolve().parents:
            for entry in TFMOT_CODE_WARNINGS:
                item.add_marker(pytest.mark.filterwarnings(entry))
