"""pipeline.prepared: staging folders, including the ones killed runs leave behind."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from pipeline.prepared import PreparedDataError, load_array, remove_stale_staging, staging_dir

from .conftest import dead_pid


def _leftover(parent: Path, name: str) -> Path:
    folder = parent / name
    folder.mkdir(parents=True)
    (folder / "train_x.npy").write_bytes(b"half written")
    return folder


def test_staging_folders_of_dead_runs_are_removed_live_ones_kept(tmp_path: Path) -> None:
    target = tmp_path / "data" / "prepared"
    target.mkdir(parents=True)
    dead, live = dead_pid(), os.getpid()
    stale = _leftover(tmp_path / "data", f".prepared.{dead}.k3x_9a2q")
    stale_old = _leftover(tmp_path / "data", f".prepared.{dead}.old")
    running = _leftover(tmp_path / "data", f".prepared.{live}.ab12cd34")
    other = _leftover(tmp_path / "data", f".digits.{dead}.ab12cd34")  # another target's
    with staging_dir(target) as tmp:
        assert tmp.name.startswith(f".prepared.{live}.")
        (tmp / "meta.json").write_text("{}")
    assert not stale.exists() and not stale_old.exists()
    assert running.exists() and other.exists()
    assert (target / "meta.json").exists()
    assert {p.name for p in target.parent.iterdir()} == {other.name, running.name, "prepared"}


def test_old_target_of_a_run_killed_mid_swap_is_put_back(tmp_path: Path) -> None:
    target = tmp_path / "prepared"
    old = _leftover(tmp_path, f".prepared.{dead_pid()}.old")
    assert remove_stale_staging(target) == [old]
    assert (target / "train_x.npy").read_bytes() == b"half written"


def test_staging_of_a_failed_block_is_removed_and_target_kept(tmp_path: Path) -> None:
    target = tmp_path / "prepared"
    target.mkdir()
    (target / "keep").write_text("x")
    with pytest.raises(RuntimeError), staging_dir(target) as tmp:
        (tmp / "partial").write_text("y")
        raise RuntimeError("killed")
    assert [p.name for p in tmp_path.iterdir()] == ["prepared"]
    assert (target / "keep").read_text() == "x"


def test_a_truncated_or_missing_array_is_one_clear_error(tmp_path: Path) -> None:
    """A truncated .npy once ended in numpy's `mmap length is greater than file size`."""
    path = tmp_path / "train_x.npy"
    np.save(path, np.zeros((100, 8, 8, 1), dtype=np.uint8))
    assert load_array(path, mmap_mode="r").shape == (100, 8, 8, 1)
    path.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(PreparedDataError, match=r"train_x.npy is damaged or missing.*-f prepare"):
        load_array(path, mmap_mode="r")
    with pytest.raises(PreparedDataError, match="val_x.npy is damaged or missing"):
        load_array(tmp_path / "val_x.npy")


def test_a_swapped_folder_keeps_dvcs_gitignore(tmp_path: Path) -> None:
    """models/<variant>/.gitignore (DVC's, listing model.keras) once vanished when a stage
    ran outside `dvc repro`, and `git add -A` then added the model to git."""
    target = tmp_path / "models" / "baseline"
    target.mkdir(parents=True)
    (target / ".gitignore").write_text("/model.keras\n")
    (target / "model.keras").write_bytes(b"old")
    with staging_dir(target) as tmp:
        (tmp / "model.keras").write_bytes(b"new")
    assert (target / "model.keras").read_bytes() == b"new"
    assert (target / ".gitignore").read_text() == "/model.keras\n"
