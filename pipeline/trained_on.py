"""What a registered model was trained on, and which test images neither model saw.

The retrain gate compares champion and challenger on the current test split. When
the split changed since the champion was trained (a new `data.seed`, more images,
another `val_fraction`), some of today's test images were in the champion's
train or val split: scored on them, the champion "wins" on images it learned.
So each registered version carries a record of its train and val images, and
the gate scores both models only on test images in neither record.

An image is known by two keys, each the first 64 bits of a SHA-256:
- its manifest `id` (the file below the source root, or the IDX file and
  index), which survives a change of `data.image_size`;
- its `pixel_hash` (the prepared pixels), which survives a renamed or moved
  file and catches the same picture under another name.
A test image matching either key of either record is excluded.

Pure (NumPy and pandas): no MLflow, no TensorFlow. `pipeline.publishing` writes
the record when it registers a version; `pipeline.promotion` reads it.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipeline.prepared import STATUS_OK

TRAINED_SPLITS = ("train", "val")
RECORD_FILE = "trained_on.npz"  # the artifact's name, under registry/ of the evaluate run
TAG = "trained_on"  # the model version's tag: runs:/<evaluate run>/registry/trained_on.npz


@dataclass(frozen=True)
class TrainedOn:
    """The keys of every image a model was trained or validated on."""

    ids: np.ndarray  # uint64, sorted
    pixels: np.ndarray  # uint64, sorted
    data_version: str

    def __len__(self) -> int:
        return len(self.ids)


def _key(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()[:8])


def _pixel_key(pixel_hash: str) -> int:
    """A sha256 hex digest's first 64 bits (the hash of no pixels: 0)."""
    try:
        return int(pixel_hash[:16], 16)
    except ValueError:
        return 0


def image_keys(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(id keys, pixel keys) of manifest rows, in row order, as uint64."""
    ids = np.fromiter((_key(str(i)) for i in rows["id"]), dtype=np.uint64, count=len(rows))
    pixels = np.fromiter(
        (_pixel_key(str(h)) for h in rows["pixel_hash"]), dtype=np.uint64, count=len(rows)
    )
    return ids, pixels


def record_of(manifest: pd.DataFrame, data_version: str) -> TrainedOn:
    """The record of a model trained on this manifest's train and val splits."""
    used = manifest[manifest["split"].isin(TRAINED_SPLITS) & (manifest["status"] == STATUS_OK)]
    ids, pixels = image_keys(used)
    return TrainedOn(np.unique(ids), np.unique(pixels[pixels != 0]), data_version)


def to_bytes(record: TrainedOn) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer, ids=record.ids, pixels=record.pixels, data_version=np.array(record.data_version)
    )
    return buffer.getvalue()


def from_bytes(data: bytes) -> TrainedOn:
    """A record written by `to_bytes`; ValueError when it is not one."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return TrainedOn(
                ids=np.asarray(npz["ids"], dtype=np.uint64),
                pixels=np.asarray(npz["pixels"], dtype=np.uint64),
                data_version=str(npz["data_version"]),
            )
    except (OSError, KeyError, ValueError, EOFError) as exc:
        raise ValueError(f"not a trained-on record: {exc}") from None


def rows_of_test_split(manifest: pd.DataFrame) -> pd.DataFrame:
    """The test split's manifest rows in the order of test_x.npy."""
    rows = manifest[(manifest["split"] == "test") & (manifest["array_index"] >= 0)]
    return rows.sort_values("array_index")


def unseen(test: pd.DataFrame, records: list[TrainedOn]) -> np.ndarray:
    """Boolean mask over `test` rows: True where no record holds the image's id or pixels."""
    ids, pixels = image_keys(test)
    seen = np.zeros(len(test), dtype=bool)
    for record in records:
        seen |= np.isin(ids, record.ids) | ((pixels != 0) & np.isin(pixels, record.pixels))
    return ~seen
