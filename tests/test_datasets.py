"""pipeline.datasets: image folders and MNIST-style IDX files -> records."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from pipeline.cli import StageError
from pipeline.datasets import (
    IDX_IMAGES_MAGIC,
    class_sort_key,
    detect_format,
    explain_empty_source,
    folder_records,
    load_source,
    printable_name,
    read_idx,
)

from .conftest import idx_folder, write_idx, write_png_folder

FASHION = Path("/usr/share/datasets/fashion-mnist")


def _by_id(records):
    return {r.id: r for r in records}


# ---------------------------------------------------------------- folders


def test_folder_records_sorted_with_labels(tmp_path: Path) -> None:
    root = write_png_folder(tmp_path / "src", per_class=3, classes=("b", "a"))
    records = folder_records(root)
    assert [r.id for r in records] == [f"{c}/{i:03d}.png" for c in "ab" for i in range(3)]
    assert {r.label for r in records} == {"a", "b"}
    assert all(r.status == "" and Path(r.path).is_absolute() for r in records)


def test_extensions_case_insensitive_and_other_files_not_image(tmp_path: Path) -> None:
    root = write_png_folder(tmp_path / "src", per_class=1, classes=("a",))
    (root / "a" / "000.png").rename(root / "a" / "UP.PNG")
    (root / "a" / "notes.txt").write_text("hello")
    (root / "a" / "noext").write_bytes(b"x")
    records = _by_id(folder_records(root))
    assert records["a/UP.PNG"].status == ""
    assert records["a/notes.txt"].status == "not_image"
    assert ".txt" in records["a/notes.txt"].error
    assert records["a/noext"].status == "not_image"


def test_hidden_files_root_files_ignored(tmp_path: Path) -> None:
    root = write_png_folder(tmp_path / "src", per_class=1, classes=("a",))
    (root / "a" / ".DS_Store").write_bytes(b"junk")
    (root / ".hidden_class").mkdir()
    (root / ".hidden_class" / "x.png").write_bytes(b"x")
    (root / "README.md").write_text("about")
    assert [r.id for r in folder_records(root)] == ["a/000.png"]


def test_nested_files_belong_to_top_level_class(tmp_path: Path) -> None:
    root = write_png_folder(tmp_path / "src", per_class=1, classes=("a",))
    write_png_folder(root / "a" / "batch2", per_class=1, classes=("deeper",))
    records = _by_id(folder_records(root))
    assert records["a/batch2/deeper/000.png"].label == "a"


def test_empty_class_folder_gets_a_row(tmp_path: Path) -> None:
    root = write_png_folder(tmp_path / "src", per_class=1, classes=("a",))
    (root / "empty").mkdir()
    (root / "textonly").mkdir()
    (root / "textonly" / "readme.txt").write_text("no images")
    records = _by_id(folder_records(root))
    assert records["empty/"].status == "empty_class"
    assert records["textonly/"].status == "empty_class"
    assert records["textonly/readme.txt"].status == "not_image"


def test_symlinks_outside_root_not_followed(tmp_path: Path) -> None:
    outside = write_png_folder(tmp_path / "elsewhere", per_class=2, classes=("x",))
    root = write_png_folder(tmp_path / "src", per_class=1, classes=("a", "b"))
    os.symlink(outside / "x" / "000.png", root / "a" / "link.png")
    os.symlink(outside / "x", root / "b" / "linked_dir")
    os.symlink(outside / "x", root / "c")  # a whole class folder outside
    os.symlink(root / "b" / "000.png", root / "a" / "inside.png")  # inside: followed
    records = _by_id(folder_records(root))
    assert records["a/link.png"].status == "symlink_outside"
    assert str(outside) in records["a/link.png"].error
    assert records["b/linked_dir/"].status == "symlink_outside"
    assert records["c/"].status == "symlink_outside"
    assert not any(r.id.startswith("b/linked_dir/0") for r in records.values())
    assert records["a/inside.png"].status == ""


def test_broken_symlink_inside_is_corrupt(tmp_path: Path) -> None:
    root = write_png_folder(tmp_path / "src", per_class=1, classes=("a",))
    os.symlink(root / "a" / "gone.png", root / "a" / "dangling.png")
    assert _by_id(folder_records(root))["a/dangling.png"].status == "corrupt"


def test_non_utf8_names_get_stable_printable_ids(tmp_path: Path) -> None:
    root = write_png_folder(tmp_path / "src", per_class=1, classes=("a",))
    klass = root / os.fsdecode(b"\xe9t\xe9")  # a latin-1 class folder
    klass.mkdir()
    (root / "a" / "000.png").rename(root / "a" / os.fsdecode(b"caf\xe9.png"))
    (root / "a" / "z.png").write_bytes(b"x")
    (klass / os.fsdecode(b"x\\\xff.png")).write_bytes(b"x")
    records = folder_records(root)
    assert [r.id for r in records] == ["a/caf\\xe9.png", "a/z.png", "\\xe9t\\xe9/x\\\\\\xff.png"]
    assert records[2].label == "\\xe9t\\xe9"
    assert all(Path(r.path).is_file() for r in records)  # the path still opens the file
    assert [r.id for r in folder_records(root)] == [r.id for r in records]
    for r in records:
        r.id.encode("utf-8")  # no surrogates left


def test_printable_name_keeps_utf8_names_exactly() -> None:
    for name in ("cat/001.png", "café/ü.png", "a\\b.png", "日本.jpg"):
        assert printable_name(name) == name
    assert printable_name(os.fsdecode(b"caf\xe9.png")) == "caf\\xe9.png"


def test_symlink_loop_is_reported_as_a_loop_not_broken(tmp_path: Path) -> None:
    root = write_png_folder(tmp_path / "src", per_class=1, classes=("a",))
    os.symlink("self.png", root / "a" / "self.png")
    os.symlink("two.png", root / "a" / "one.png")
    os.symlink("one.png", root / "a" / "two.png")
    os.symlink("gone.png", root / "a" / "dangling.png")
    records = _by_id(folder_records(root))
    for name in ("self.png", "one.png", "two.png"):
        row = records[f"a/{name}"]
        assert row.status == "corrupt"
        assert row.error.startswith("symlink loop") and "broken" not in row.error, row.error
    assert "one.png -> two.png" in records["a/one.png"].error
    assert records["a/dangling.png"].error == "broken symlink: its target gone.png does not exist"


def test_numeric_classes_sort_as_numbers() -> None:
    assert sorted(["10", "2", "b", "1", "a"], key=class_sort_key) == ["1", "2", "10", "a", "b"]


def test_missing_source_names_path_and_layouts(tmp_path: Path) -> None:
    with pytest.raises(StageError, match=r"does not exist.*allowed layouts"):
        load_source(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(StageError, match="not a folder"):
        load_source(tmp_path / "file")


# ---------------------------------------------------------------- IDX


@pytest.mark.parametrize("gz", [True, False], ids=["gzip", "plain"])
def test_idx_source_records_and_arrays(tmp_path: Path, gz: bool) -> None:
    root = idx_folder(tmp_path / "idx", gz)
    assert detect_format(root) == "idx"
    source = load_source(root)
    assert source.format == "idx"
    assert len(source.records) == 16
    first, last = source.records[0], source.records[-1]
    suffix = ".gz" if gz else ""
    assert first.id == f"train-images-idx3-ubyte{suffix}#0"
    assert first.source_split == "train" and last.source_split == "test"
    assert last.label == "0"  # 3 % 3, label number as text
    assert first.path.endswith("#0") and Path(first.path.split("#")[0]).is_absolute()
    images = source.arrays[first.idx_file]
    assert images.shape == (12, 5, 4)


def test_idx_classes_txt_names_labels(tmp_path: Path) -> None:
    root = idx_folder(tmp_path / "idx", gz=True)
    (root / "classes.txt").write_text("T-shirt/top\nTrouser\nPullover\n")
    labels = {r.label for r in load_source(root).records}
    assert labels == {"T-shirt/top", "Trouser", "Pullover"}


def test_idx_classes_txt_too_short(tmp_path: Path) -> None:
    root = idx_folder(tmp_path / "idx", gz=True)
    (root / "classes.txt").write_text("only\none\n")
    with pytest.raises(StageError, match=r"classes.txt names 2 classes .* label 2"):
        load_source(root)


def test_idx_without_t10k_is_train_only(tmp_path: Path) -> None:
    root = idx_folder(tmp_path / "idx", gz=False, n_test=0)
    assert {r.source_split for r in load_source(root).records} == {"train"}


def test_format_folder_forced_on_idx_folder_yields_no_classes(tmp_path: Path) -> None:
    root = idx_folder(tmp_path / "idx", gz=False)
    assert load_source(root, "folder").records == []


def test_empty_source_explained(tmp_path: Path) -> None:
    root = idx_folder(tmp_path / "idx", gz=False)
    assert "read as an image folder; set data.format to idx" in explain_empty_source(root)
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "a.PNG").write_bytes(b"x")
    assert "found 1 image file directly in" in explain_empty_source(tmp_path / "one")
    (tmp_path / "one" / "a.PNG").rename(tmp_path / "one" / "a.csv")
    message = explain_empty_source(tmp_path / "one")
    assert "found 1 file (e.g. a.csv), no class folders and no images" in message


def test_idx_bad_magic_names_file(tmp_path: Path) -> None:
    root = idx_folder(tmp_path / "idx", gz=False)
    path = root / "train-images-idx3-ubyte"
    data = bytearray(path.read_bytes())
    data[3] = 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(StageError, match=r"train-images-idx3-ubyte: bad IDX magic number"):
        load_source(root)


def test_idx_count_mismatch_names_both_files(tmp_path: Path) -> None:
    root = tmp_path / "idx"
    write_idx(root, "train", np.zeros((5, 4, 4)), np.zeros(4), gz=True)
    with pytest.raises(StageError, match=r"holds 5 images but .*labels-idx1-ubyte.gz holds 4"):
        load_source(root)


def test_idx_truncated_data_names_file(tmp_path: Path) -> None:
    root = idx_folder(tmp_path / "idx", gz=False)
    path = root / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(StageError, match=r"t10k-images-idx3-ubyte: header says 4 items"):
        load_source(root)


def test_idx_missing_labels_file(tmp_path: Path) -> None:
    root = idx_folder(tmp_path / "idx", gz=True)
    (root / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(StageError, match="train-labels-idx1-ubyte.* is missing"):
        load_source(root)


def test_idx_bad_gzip_names_file(tmp_path: Path) -> None:
    root = tmp_path / "idx"
    root.mkdir()
    (root / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(StageError, match=r"train-images-idx3-ubyte.gz: cannot read"):
        read_idx(root / "train-images-idx3-ubyte.gz", IDX_IMAGES_MAGIC)


@pytest.mark.fashion
@pytest.mark.skipif(not FASHION.is_dir(), reason="dataset-fashion-mnist is not installed")
def test_real_fashion_mnist() -> None:
    source = load_source(FASHION)
    assert source.format == "idx"
    assert len(source.records) == 70_000
    splits = [r.source_split for r in source.records]
    assert splits.count("test") == 10_000
    assert {r.label for r in source.records} == {str(i) for i in range(10)}
    assert all(a.shape[1:] == (28, 28) for a in source.arrays.values())


def test_format_idx_forced_on_image_folder_fails_clearly(tmp_path: Path) -> None:
    root = write_png_folder(tmp_path / "src", per_class=1, classes=("a",))
    with pytest.raises(StageError, match=r"no train-images-idx3-ubyte.* allowed layouts"):
        load_source(root, "idx")
