"""Atomic writes: the temporary path fits picky writers, and a failure leaves the old file as it was."""

import os
import stat

import pytest
import torch

from prunekit.core import atomic as _atomic
from prunekit.core.atomic import atomic_path, atomic_paths, atomic_write_text, new_file_mode


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


def _group(folder, onnx: bytes, data: bytes) -> None:
    (folder / "model.onnx").write_bytes(onnx)
    (folder / "model.onnx.data").write_bytes(data)


def _contents(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_a_group_is_written_under_the_final_names_and_replaces_the_old_group(tmp_path):
    _group(tmp_path, b"old graph", b"old weights")
    with atomic_paths(tmp_path / "model.onnx", tmp_path / "model.onnx.data") as (onnx, data):
        assert (onnx.name, data.name) == ("model.onnx", "model.onnx.data")
        assert onnx.parent == data.parent and onnx.parent.parent == tmp_path and onnx.parent.name.startswith(".")
        onnx.write_bytes(b"new graph")
        data.write_bytes(b"new weights")
    assert _contents(tmp_path) == {"model.onnx": b"new graph", "model.onnx.data": b"new weights"}


def test_a_failed_group_write_leaves_the_old_group_and_no_temporary_folder(tmp_path):
    _group(tmp_path, b"old graph", b"old weights")
    with pytest.raises(RuntimeError, match="writer failed"):
        with atomic_paths(tmp_path / "model.onnx", tmp_path / "model.onnx.data") as (onnx, data):
            data.write_bytes(b"new weights")
            raise RuntimeError("writer failed")
    assert _contents(tmp_path) == {"model.onnx": b"old graph", "model.onnx.data": b"old weights"}


def test_a_companion_left_unwritten_is_removed_with_the_old_group(tmp_path):
    _group(tmp_path, b"old graph", b"old weights")
    with atomic_paths(tmp_path / "model.onnx", tmp_path / "model.onnx.data") as (onnx, _):
        onnx.write_bytes(b"self-contained")
    assert _contents(tmp_path) == {"model.onnx": b"self-contained"}


def test_a_swap_that_fails_midway_puts_the_old_group_back(tmp_path, monkeypatch):
    _group(tmp_path, b"old graph", b"old weights")
    replace = os.replace

    def failing_replace(src, dst):
        if str(dst) == str(tmp_path / "model.onnx") and "replaced" not in str(src):
            raise OSError("disk full")  # the new model.onnx cannot be moved in, after the new data was
        replace(src, dst)

    monkeypatch.setattr(_atomic.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        with atomic_paths(tmp_path / "model.onnx", tmp_path / "model.onnx.data") as (onnx, data):
            onnx.write_bytes(b"new graph")
            data.write_bytes(b"new weights")
    assert _contents(tmp_path) == {"model.onnx": b"old graph", "model.onnx.data": b"old weights"}


def test_a_file_the_group_does_not_name_is_refused_and_the_old_group_kept(tmp_path):
    _group(tmp_path, b"old graph", b"old weights")
    with pytest.raises(RuntimeError, match=r"also wrote \['model.onnx.weights'\]"):
        with atomic_paths(tmp_path / "model.onnx", tmp_path / "model.onnx.data") as (onnx, _):
            onnx.write_bytes(b"new graph")
            (onnx.parent / "model.onnx.weights").write_bytes(b"new weights")
    assert _contents(tmp_path) == {"model.onnx": b"old graph", "model.onnx.data": b"old weights"}


def test_a_new_group_is_readable_by_others(tmp_path):
    with atomic_paths(tmp_path / "model.onnx", tmp_path / "model.onnx.data") as (onnx, data):
        onnx.write_bytes(b"graph")
        data.write_bytes(b"weights")
    assert [stat.S_IMODE(p.stat().st_mode) for p in sorted(tmp_path.iterdir())] == [0o644, 0o644]


def test_a_group_whose_first_file_was_not_written_fails_and_keeps_the_old_group(tmp_path):
    _group(tmp_path, b"old graph", b"old weights")
    with pytest.raises(FileNotFoundError):
        with atomic_paths(tmp_path / "model.onnx", tmp_path / "model.onnx.data") as (_, data):
            data.write_bytes(b"new weights")
    assert _contents(tmp_path) == {"model.onnx": b"old graph", "model.onnx.data": b"old weights"}


@pytest.fixture
def umask():
    """Set the process umask for one test and restore it after."""
    previous = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(previous)


@pytest.mark.parametrize(("mask", "file_mode", "dir_mode"), [(0o002, 0o664, 0o775), (0o077, 0o600, 0o700), (0o022, 0o644, 0o755)])
def test_new_files_and_folders_follow_the_umask(tmp_path, umask, mask, file_mode, dir_mode):
    umask(mask)
    atomic_write_text(tmp_path / "results.json", "{}")
    assert stat.S_IMODE((tmp_path / "results.json").stat().st_mode) == file_mode
    assert new_file_mode(directory=True) == dir_mode


def test_save_pruned_artifacts_get_the_umask_mode_not_the_temp_file_mode(tmp_path, umask):
    from prunekit.torch import save_pruned

    umask(0o002)
    path = save_pruned(torch.nn.Linear(3, 2), tmp_path / "pruned.safetensors")
    assert stat.S_IMODE(path.stat().st_mode) == 0o664
