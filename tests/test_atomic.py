"""Atomic writes: the temporary path fits picky writers, and a failure leaves the old file as it was."""

import os
import stat

import pytest

from prunekit._atomic import atomic_path, atomic_write_text


def test_temporary_path_keeps_the_suffixes_and_does_not_exist_yet(tmp_path):
    with atomic_path(tmp_path / "model.weights.h5") as tmp:
        assert tmp.name.endswith(".weights.h5") and tmp.parent == tmp_path
        assert not tmp.exists()
        tmp.write_bytes(b"new")
    assert (tmp_path / "model.weights.h5").read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["model.weights.h5"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "results.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("writer failed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_replacing_a_file_keeps_its_permissions(tmp_path):
    target = tmp_path / "notes.md"
    target.write_text("old")
    os.chmod(target, 0o640)
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640


def test_a_new_file_is_readable_by_others(tmp_path):
    atomic_write_text(tmp_path / "report.md", "hello")
    assert stat.S_IMODE((tmp_path / "report.md").stat().st_mode) == 0o644
