"""Tests for pipeline/validation_tables.py: the derived tables GX validates,
on tiny hand-made frames."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline import validation_tables
from pipeline.leakage import Leaks


def test_js_distance() -> None:
    assert validation_tables.js_distance([5, 5], [10, 10]) == pytest.approx(0.0)
    assert validation_tables.js_distance([1, 0], [0, 1]) == pytest.approx(1.0)
    assert 0 < validation_tables.js_distance([6, 4], [5, 5]) < 0.1


def test_derived_tables_cover_every_split_and_class() -> None:
    images = pd.DataFrame({"split": ["train", "train", "val"], "label": ["a", "b", "a"]})
    table, splits = validation_tables.class_tables(images, ["a", "b"])
    assert len(table) == 6
    assert table.loc[(table["split"] == "test"), "count"].tolist() == [0, 0]
    assert splits.set_index("split").loc["train", "imbalance_ratio"] == 1.0
    assert pd.isna(splits.set_index("split").loc["test", "imbalance_ratio"])


def test_split_images_leaves_out_unused_and_unusable_rows() -> None:
    manifest = pd.DataFrame(
        {
            "path": ["a", "b", "c", "d"],
            "split": ["train", "unused", "val", ""],
            "status": ["ok", "ok", "ok", "truncated"],
        },
        index=[10, 11, 12, 13],
    )
    images = validation_tables.split_images(manifest)
    assert images["path"].tolist() == ["a", "c"]
    assert images.index.tolist() == [0, 1]


def test_images_table_derives_duplicate_and_conflict_columns() -> None:
    images = pd.DataFrame(
        {
            "path": ["p0", "p1", "p2", "p3"],
            "split": ["train", "train", "val", "val"],
            "label": ["a", "b", "a", "a"],
            "pixel_hash": ["h", "h", "h", "k"],
            "pixel_std": [1.0, 2.0, 3.0, 4.0],
            "mode": ["L"] * 4,
            "width": [8, 8, 32, 8],
            "height": [8, 8, 24, 8],
        }
    )
    none = pd.Series(pd.NA, index=images.index, dtype="string")
    leaks = Leaks(
        none, pd.Series(pd.NA, index=images.index, dtype="Int64"), pd.Series(np.nan), 0, 0
    )
    table = validation_tables.images_table(images, leaks)
    assert table["size"].tolist() == ["8x8", "8x8", "32x24", "8x8"]
    assert table["duplicate_key"].tolist() == ["train:h", "train:h", "val:h", "val:k"]
    # h carries labels a and b anywhere in the dataset: a label conflict
    assert table["hash_label_count"].tolist() == [2, 2, 2, 1]
    assert table["leaked_from"].isna().all()
