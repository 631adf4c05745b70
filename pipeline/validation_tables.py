"""The in-memory tables the validate checks run on (project code derives, GX checks).

Inputs: a `PreparedDataset` and params.yaml `validate`. Outputs: a
`ValidationTables` value; nothing is written.

- `manifest`: every row (path, status, error, split).
- `images`: rows in train/val/test (unused and unusable rows are left out),
  with derived `size`, `duplicate_key`, `hash_label_count` and the leak
  columns (`leaked_from`, `leak_phash_distance`, `leak_pixel_diff`).
- `split_classes`: one row per split and class: count, share.
- `splits`: one row per split: imbalance ratio, Jensen-Shannon distance of
  its label distribution to train's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from pipeline.config import ValidateConfig
from pipeline.leakage import Leaks, find_leaks
from pipeline.prepared import SPLITS, STATUS_OK, PreparedDataset


@dataclass(frozen=True)
class ValidationTables:
    """The four tables GX validates, plus what the observations need besides."""

    manifest: pd.DataFrame
    images: pd.DataFrame
    split_classes: pd.DataFrame
    splits: pd.DataFrame
    classes: list[str]
    leaks: Leaks
    # one row per class, plus one per folder in a clash (see class_folders_table)
    class_folders: pd.DataFrame

    def frames(self) -> dict[str, pd.DataFrame]:
        """Table name -> table, the names the checks' expectations refer to."""
        return {
            "manifest": self.manifest,
            "images": self.images,
            "split_classes": self.split_classes,
            "splits": self.splits,
            "class_folders": self.class_folders,
        }


def build_tables(dataset: PreparedDataset, vcfg: ValidateConfig) -> ValidationTables:
    """Every derived table of a prepared dataset (loads pixels only for leak candidates)."""
    manifest = dataset.manifest
    images = split_images(manifest)
    cache: dict[str, np.ndarray] = {}

    def pixels(split: str, rows: np.ndarray) -> np.ndarray:
        if split not in cache:
            cache[split] = dataset.x(split)
        return np.asarray(cache[split][rows])

    leaks = find_leaks(images, vcfg, pixels)
    split_classes, splits = class_tables(images, dataset.classes)
    return ValidationTables(
        manifest=manifest[["path", "status", "error", "split"]].reset_index(drop=True),
        images=images_table(images, leaks),
        split_classes=split_classes,
        splits=splits,
        classes=dataset.classes,
        leaks=leaks,
        class_folders=class_folders_table(dataset.classes, dataset.meta.get("class_clashes", [])),
    )


def class_folders_table(classes: list[str], clashes: list[dict[str, Any]]) -> pd.DataFrame:
    """A row per class (clash 0), and a row per folder of each clash that prepare
    found (clash 1: folders that give one class, or look identical): `path` is the
    folder as prepare showed it, so the failure lists it as an example."""
    rows = [{"path": name, "label": name, "clash": 0, "why": ""} for name in classes]
    for group in clashes:
        for folder in group["folders"]:
            rows.append({"path": folder, "label": group["class"], "clash": 1, "why": group["why"]})
    return pd.DataFrame(rows, columns=["path", "label", "clash", "why"])


def split_images(manifest: pd.DataFrame) -> pd.DataFrame:
    """Rows in train/val/test: split checks ignore unused and unusable rows."""
    rows = manifest[manifest["split"].isin(SPLITS) & (manifest["status"] == STATUS_OK)]
    return rows.reset_index(drop=True)


def js_distance(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon distance (base 2, in [0, 1]) between two count vectors."""
    p = np.asarray(p, dtype=float)
    q = np.asarray(q, dtype=float)
    if p.sum() == 0 or q.sum() == 0:
        return 1.0
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / m[nz])))

    return float(np.sqrt(max(0.0, (kl(p) + kl(q)) / 2)))


def class_tables(images: pd.DataFrame, classes: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The per-class and per-split tables.

    split_classes: split, label, count, share. splits: split, images,
    imbalance_ratio, js_distance.

    Every split x class appears, with count 0 when the class is missing. The
    imbalance ratio is over the classes present (a missing class is
    label_set's finding); the JS distance compares with train's distribution.
    """
    counts = (
        images.groupby(["split", "label"], observed=True).size().astype("int64")
        if len(images)
        else pd.Series(dtype="int64")
    )
    grid = pd.MultiIndex.from_product([list(SPLITS), classes], names=["split", "label"])
    table = counts.reindex(grid, fill_value=0).rename("count").reset_index()
    totals = table.groupby("split")["count"].transform("sum")
    table["share"] = np.where(totals > 0, table["count"] / totals.where(totals > 0, 1), 0.0)
    train_counts = table.loc[table["split"] == "train", "count"].to_numpy()
    rows = []
    for split in SPLITS:
        c = table.loc[table["split"] == split, "count"].to_numpy()
        present = c[c > 0]
        rows.append(
            {
                "split": split,
                "images": int(c.sum()),
                "imbalance_ratio": float(present.max() / present.min()) if len(present) else None,
                "js_distance": round(js_distance(c, train_counts), 6),
            }
        )
    table = table.astype({"split": "string", "label": "string"})
    return table, pd.DataFrame(rows).astype({"split": "string", "imbalance_ratio": "float64"})


def images_table(images: pd.DataFrame, leaks: Leaks) -> pd.DataFrame:
    """`images` with the derived columns GX validates."""
    table = images[["path", "split", "label", "pixel_hash", "pixel_std", "mode"]].copy()
    table["size"] = images["width"].astype(str) + "x" + images["height"].astype(str)
    # Exact duplicates within a split share split + pixel_hash.
    table["duplicate_key"] = images["split"] + ":" + images["pixel_hash"]
    table["hash_label_count"] = (
        images.groupby("pixel_hash")["label"].transform("nunique").astype("int64")
    )
    table["leaked_from"] = leaks.leaked_from
    table["leak_phash_distance"] = leaks.phash_distance
    table["leak_pixel_diff"] = leaks.pixel_diff
    return table
