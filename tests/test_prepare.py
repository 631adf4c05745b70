"""pipeline.prepare: splits, the stage end to end, and failure without side effects."""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.cli import EXIT_USER_ERROR, run_stage
from pipeline.config import parse_config
from pipeline.decoding import resolve_workers
from pipeline.io import DiskFullError, open_reserved_npy
from pipeline.prepare import main, prepare_dataset
from pipeline.prepared import MANIFEST_COLUMNS, SPLITS, load_prepared
from pipeline.splitting import assign_splits, stratified_take

from .conftest import Project, idx_folder, make_prepared, small_params, write_png_folder


def _data(**overrides):
    params = small_params(data=overrides)
    return parse_config(params).data


# ---------------------------------------------------------------- splitting


def _labels(per_class=(100, 60, 40)) -> np.ndarray:
    return np.concatenate([np.full(n, c) for c, n in enumerate(per_class)])


def test_splits_are_stratified_disjoint_and_cover_everything() -> None:
    labels = _labels()
    splits = assign_splits(labels, np.full(len(labels), "", dtype=object), _data())
    assert set(splits) == set(SPLITS)  # disjoint by construction: one name per image
    for c, n in enumerate((100, 60, 40)):
        in_class = splits[labels == c]
        assert abs((in_class == "test").sum() - 0.15 * n) <= 1
        assert abs((in_class == "val").sum() - 0.15 * n) <= 1


def test_splits_deterministic_for_seed_and_vary_with_it() -> None:
    labels = _labels()
    none = np.full(len(labels), "", dtype=object)
    a = assign_splits(labels, none, _data(seed=7))
    b = assign_splits(labels, none, _data(seed=7))
    c = assign_splits(labels, none, _data(seed=8))
    assert a.tolist() == b.tolist()
    assert a.tolist() != c.tolist()


def test_source_test_split_is_kept_and_val_comes_from_train() -> None:
    labels = _labels((50, 50))
    source_split = np.array(["train"] * 80 + ["test"] * 20, dtype=object)
    labels = np.concatenate([labels[:80] % 2, labels[80:] % 2])
    splits = assign_splits(labels, source_split, _data(val_fraction=0.25))
    assert (splits[80:] == "test").all()
    assert (splits[:80] == "val").sum() == 20
    assert "test" not in set(splits[:80])


def test_train_fraction_subsamples_train_stratified() -> None:
    labels = _labels((200, 100))
    none = np.full(len(labels), "", dtype=object)
    full = assign_splits(labels, none, _data())
    half = assign_splits(labels, none, _data(train_fraction=0.5))
    # val and test do not move when train is subsampled
    assert ((full == "val") == (half == "val")).all()
    assert ((full == "test") == (half == "test")).all()
    for c in (0, 1):
        train = (full[labels == c] == "train").sum()
        kept = (half[labels == c] == "train").sum()
        assert abs(kept - train / 2) <= 1
    assert ((half == "unused") <= (full == "train")).all()


def test_tiny_class_falls_back_with_warning(caplog: pytest.LogCaptureFixture) -> None:
    labels = np.array([0] * 20 + [1] * 20 + [2])  # class 2 has one image
    with caplog.at_level(logging.WARNING):
        splits = assign_splits(labels, np.full(len(labels), "", dtype=object), _data())
    assert splits[-1] == "train"
    assert "stratified split not possible" in caplog.text
    assert (splits[labels == 0] == "test").sum() == 3


def test_stratified_take_edge_cases() -> None:
    idx = np.arange(4)
    labels = np.array([0, 0, 1, 1])
    taken, kept = stratified_take(idx, labels, 0.0, 0, "x")
    assert len(taken) == 0 and kept.tolist() == [0, 1, 2, 3]
    taken, kept = stratified_take(idx[:0], labels, 0.5, 0, "x")
    assert len(taken) == 0 and len(kept) == 0
    taken, kept = stratified_take(np.arange(2), np.array([0, 1]), 0.9, 0, "x")
    assert len(kept) == 2  # every class keeps an image


# ---------------------------------------------------------------- the stage


def _folder_project(project: Project, **data) -> Path:
    root = write_png_folder(project.root / "images", per_class=12, classes=("cat", "dog", "owl"))
    project.write_params(
        small_params(data={"source": "images", "image_size": [8, 8], "workers": 1, **data})
    )
    return root


def _tree_bytes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_stage_end_to_end_on_png_folder(project: Project, capsys: pytest.CaptureFixture) -> None:
    root = _folder_project(project)
    (root / "cat" / "broken.png").write_bytes(b"")
    (root / "dog" / "notes.txt").write_text("hi")
    assert main([]) == 0
    assert "prepare:" in capsys.readouterr().out

    data = load_prepared(project.paths.prepared_dir)
    m = data.manifest
    assert list(m.columns) == list(MANIFEST_COLUMNS)
    assert data.classes == ["cat", "dog", "owl"]
    assert data.image_shape == (8, 8, 1)
    assert data.meta["format"] == "folder" and data.meta["source"] == "images"
    assert (
        data.meta["counts"]["train"] + data.meta["counts"]["val"] + data.meta["counts"]["test"]
        == 36
    )
    assert data.meta["unusable"] == 2
    bad = m[m.status != "ok"].set_index("id")
    assert bad.loc["cat/broken.png", "status"] == "empty_file"
    assert bad.loc["dog/notes.txt", "status"] == "not_image"
    assert (bad.split == "").all() and (bad.array_index == -1).all()
    assert not any(p.name.startswith(".") for p in project.paths.prepared_dir.parent.iterdir())

    for split in SPLITS:
        x, y = data.x(split), data.y(split)
        rows = m[m.split == split].sort_values("array_index")
        assert x.dtype == np.uint8 and x.shape == (len(rows), 8, 8, 1)
        assert rows.array_index.tolist() == list(range(len(rows)))
        assert y.tolist() == rows.label_index.tolist()
        # each array row is the image its manifest row describes
        for i, pixel_hash in enumerate(rows.pixel_hash):
            assert hashlib.sha256(np.ascontiguousarray(x[i]).tobytes()).hexdigest() == pixel_hash
    assert set(m.id[m.split == "train"]).isdisjoint(m.id[m.split == "test"])


def test_stage_is_byte_identical_on_rerun_and_across_worker_counts(project: Project) -> None:
    _folder_project(project)
    assert main([]) == 0
    first = _tree_bytes(project.paths.prepared_dir)
    assert main([]) == 0
    assert _tree_bytes(project.paths.prepared_dir) == first
    project.write_params(
        small_params(data={"source": "images", "image_size": [8, 8], "workers": 2})
    )
    assert main([]) == 0
    assert _tree_bytes(project.paths.prepared_dir) == first


def test_stage_rgb_and_train_fraction(project: Project) -> None:
    _folder_project(project, color_mode="rgb", train_fraction=0.5, image_size=[6, 10])
    assert main([]) == 0
    data = load_prepared(project.paths.prepared_dir)
    assert data.x("train").shape[1:] == (6, 10, 3)
    assert data.meta["counts"]["unused"] > 0
    assert (data.manifest.split == "unused").sum() == data.meta["counts"]["unused"]


def test_stage_on_idx_source_keeps_its_test_split(project: Project) -> None:
    idx_folder(project.root / "idx", gz=True, n_train=30, n_test=9)
    config = project.write_params(
        small_params(data={"source": "idx", "image_size": [8, 8], "workers": 2})
    )
    summary = prepare_dataset(config, project.paths, progress=False)
    assert summary["format"] == "idx" and summary["classes"] == ["0", "1", "2"]
    m = load_prepared(project.paths.prepared_dir).manifest
    assert (m.split[m.source_split == "test"] == "test").all()
    assert (m.split[m.source_split == "train"] != "test").all()
    assert m["mode"].unique().tolist() == ["L"] and m.width.unique().tolist() == [4]


def _run_stage_exit(capsys: pytest.CaptureFixture) -> tuple[int, str]:
    with pytest.raises(SystemExit) as info:
        run_stage(main, [])
    return info.value.code, capsys.readouterr().err


def test_bad_only_input_fails_cleanly_and_keeps_old_output(
    project: Project, capsys: pytest.CaptureFixture
) -> None:
    x = np.zeros((20, 8, 8, 1), dtype=np.uint8)
    make_prepared(project.paths.prepared_dir, x, np.arange(20) % 2, ["a", "b"])
    before = _tree_bytes(project.paths.prepared_dir)

    root = project.root / "bad"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        (root / name / "x.png").write_bytes(b"\x00\x01 not an image \xff")
        (root / name / "y.jpg").write_bytes(b"")
    project.write_params(small_params(data={"source": "bad", "image_size": [8, 8], "workers": 1}))
    code, err = _run_stage_exit(capsys)
    assert code == EXIT_USER_ERROR
    assert "0 class(es) with usable images" in err and "at least 2" in err
    assert "corrupt: 2" in err and "empty_file: 2" in err
    assert _tree_bytes(project.paths.prepared_dir) == before
    assert [p.name for p in project.paths.prepared_dir.parent.iterdir()] == ["prepared"]


def test_single_usable_class_fails(project: Project, capsys: pytest.CaptureFixture) -> None:
    root = write_png_folder(project.root / "one", per_class=4, classes=("only",))
    (root / "empty").mkdir()
    project.write_params(small_params(data={"source": "one", "image_size": [8, 8], "workers": 1}))
    code, err = _run_stage_exit(capsys)
    assert code == EXIT_USER_ERROR
    assert "1 class(es) with usable images (only)" in err
    assert "empty_class: 1" in err
    assert not project.paths.prepared_dir.exists()


def test_missing_source_fails_naming_it(project: Project, capsys: pytest.CaptureFixture) -> None:
    project.write_params(small_params(data={"source": "no/such/dir"}))
    code, err = _run_stage_exit(capsys)
    assert code == EXIT_USER_ERROR
    assert "no/such/dir does not exist" in err and "allowed layouts" in err


@pytest.mark.parametrize("source", [".", ".."])
def test_a_source_holding_the_project_is_refused(
    project: Project, capsys: pytest.CaptureFixture, source: str
) -> None:
    """`data.source: .` once read the project's own models and figures as classes."""
    project.write_params(small_params(data={"source": source}))
    code, err = _run_stage_exit(capsys)
    assert code == EXIT_USER_ERROR
    assert "holds this project" in err and "Point data.source at" in err
    assert not project.paths.prepared_dir.exists()


def test_source_without_class_folders_fails(
    project: Project, capsys: pytest.CaptureFixture
) -> None:
    (project.root / "flat").mkdir()
    (project.root / "flat" / "a.png").write_bytes(b"x")
    project.write_params(small_params(data={"source": "flat"}))
    code, err = _run_stage_exit(capsys)
    assert code == EXIT_USER_ERROR
    assert "holds no class folders" in err


def test_loose_images_without_class_folders_say_what_was_found(
    project: Project, capsys: pytest.CaptureFixture
) -> None:
    flat = write_png_folder(project.root / "src", per_class=12, classes=("flat",)) / "flat"
    (flat / "notes.txt").write_text("x")
    project.write_params(small_params(data={"source": "src/flat"}))
    code, err = _run_stage_exit(capsys)
    assert code == EXIT_USER_ERROR
    assert f"12 image files directly in {flat} (e.g. 000.png) and no class folders" in err
    assert "<source>/<class>/<image files>" in err  # the layout expected


def test_idx_folder_with_only_a_labels_file_names_the_missing_images_file(
    project: Project, capsys: pytest.CaptureFixture
) -> None:
    root = idx_folder(project.root / "idx", gz=True, n_test=0)
    (root / "train-images-idx3-ubyte.gz").unlink()
    project.write_params(small_params(data={"source": "idx"}))
    code, err = _run_stage_exit(capsys)
    assert code == EXIT_USER_ERROR
    assert "IDX labels file train-labels-idx1-ubyte.gz but no train-images-idx3-ubyte" in err
    assert "allowed layouts" in err


def test_empty_source_says_it_is_empty(project: Project, capsys: pytest.CaptureFixture) -> None:
    (project.root / "void" / ".cache").mkdir(parents=True)
    project.write_params(small_params(data={"source": "void"}))
    code, err = _run_stage_exit(capsys)
    assert code == EXIT_USER_ERROR
    assert "void is empty (hidden entries, names starting with '.', are ignored)" in err


def test_resolve_workers() -> None:
    assert resolve_workers(3) == 3
    assert 1 <= resolve_workers(0) <= (os.cpu_count() or 1)


def test_adding_images_leaves_existing_images_in_their_split() -> None:
    """A retrain's new test set must not contain what the champion trained on."""
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 5, size=600)
    ids = [f"c{label}/{i:04d}.png" for i, label in enumerate(labels)]
    none = np.full(len(labels), "", dtype=object)
    before = assign_splits(labels, none, _data(), keys=ids)
    more = rng.integers(0, 5, size=60)
    labels2 = np.concatenate([labels, more])
    ids2 = ids + [f"c{label}/new{i:03d}.png" for i, label in enumerate(more)]
    after = assign_splits(labels2, np.full(len(labels2), "", dtype=object), _data(), keys=ids2)
    moved = int((before != after[: len(labels)]).sum())
    # Only images at a class's boundary may move: at most a few per class and split.
    assert moved <= 5 * 2 * 2, moved
    was_train_now_test = int(((before == "train") & (after[: len(labels)] == "test")).sum())
    assert was_train_now_test <= 5
    # A shuffled listing order changes nothing: the split follows ids, not positions.
    order = rng.permutation(len(labels))
    shuffled = assign_splits(labels[order], none, _data(), keys=[ids[i] for i in order])
    assert (shuffled == before[order]).all()


def test_non_utf8_file_name_prepares_and_is_in_the_manifest(project: Project) -> None:
    """Linux allows any bytes in a name; the id escapes the ones UTF-8 cannot hold."""
    from PIL import Image

    root = _folder_project(project)
    name = os.fsdecode(b"caf\xe9.png")  # latin-1 bytes: a surrogate escape in Python
    Image.new("L", (8, 8), 200).save(root / "cat" / name)
    assert main([]) == 0
    data = load_prepared(project.paths.prepared_dir)
    row = data.manifest.set_index("id").loc["cat/caf\\xe9.png"]
    assert row.status == "ok" and row.split in SPLITS
    assert row.path.endswith("images/cat/caf\\xe9.png")
    # ASCII names keep their ids, so existing splits do not move.
    assert "cat/000.png" in set(data.manifest.id)
    # The same file gets the same id, and so the same split, on every run.
    assert main([]) == 0
    again = load_prepared(project.paths.prepared_dir).manifest.set_index("id")
    assert again.loc["cat/caf\\xe9.png", "split"] == row.split


# --------------------------------------------------------------------------- full disk


def test_a_full_disk_is_one_clear_error_and_keeps_the_previous_dataset(small_disk, tmp_path):
    """Once prepare died with SIGBUS (exit 135, no message) and left its staging folder."""
    source = write_png_folder(tmp_path / "images", per_class=200, classes=("a", "b", "c"))
    project = Project(small_disk)
    params = small_params(data={"source": str(source), "image_size": [8, 8]})
    project.write_params(params)
    cwd = os.getcwd()
    os.chdir(small_disk)
    try:
        assert main([]) == 0  # 600 images at 8x8: fits
        before = project.paths.manifest.read_bytes()
        params["data"]["image_size"] = [64, 64]  # about 2 x 7.4 MB: does not fit in 3 MB
        project.write_params(params)
        done = subprocess.run(
            [sys.executable, "-m", "pipeline.prepare"], capture_output=True, text=True
        )
    finally:
        os.chdir(cwd)
    assert done.returncode == 2, done.stderr
    assert "not enough disk space in" in done.stderr and "MB needed" in done.stderr
    assert "Traceback" not in done.stderr
    assert project.paths.manifest.read_bytes() == before
    assert not [p for p in (small_disk / "data").iterdir() if p.name.startswith(".")]


def test_a_reserved_array_fails_with_enospc_instead_of_sigbus(small_disk):
    """A plain memory map on a full disk dies at the first unstorable page; reserved, it
    raises DiskFullError before any page is written, and leaves no file behind."""
    with pytest.raises(DiskFullError, match="not enough disk space"):
        open_reserved_npy(small_disk / "big.npy", (8 * 2**20,))
    assert list(small_disk.iterdir()) == []
    small = open_reserved_npy(small_disk / "small.npy", (1000,))
    small[:] = 7
    small.flush()
    assert np.load(small_disk / "small.npy").sum() == 7000
