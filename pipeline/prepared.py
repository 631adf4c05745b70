"""The prepared dataset on disk: what `prepare` writes and later stages read.

Layout of `data/prepared/`:

- `manifest.parquet`: one row per source file (usable or not), columns
  `MANIFEST_COLUMNS` below.
- `<split>_x.npy`: uint8 pixels, shape (n, height, width, channels), read
  memory-mapped so a dataset larger than RAM still trains.
- `<split>_y.npy`: int64 class indices, shape (n,).
- `meta.json`: classes (index order), image size, channels, counts per split,
  the source, and `manifest_hash`, the data version.

Rows with `status == "ok"` have a split (train, val, test, or `unused` when
`data.train_fraction` left them out) and an `array_index` into that split's
arrays; other rows have split "" and array_index -1.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.cli import UserError
from pipeline.processes import pid_alive

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
STATUS_OK = "ok"
# Why a file is unusable; validate's corrupt_images check reports these.
BAD_STATUSES = (
    "empty_file",
    "truncated",
    "corrupt",
    "not_image",
    "decompression_bomb",
    "symlink_outside",
    "empty_class",
)
MANIFEST_COLUMNS: dict[str, str] = {
    "id": "string",  # stable id, e.g. "cat/001.png" or "train-images-idx3-ubyte.gz#17"
    "path": "string",  # the file as found (absolute), or the IDX file with #index
    "label": "string",  # class name (folder name, or the IDX label as text)
    "label_index": "int64",  # index into meta.json's classes
    "split": "string",  # train | val | test | unused | "" (unusable)
    "source_split": "string",  # split the source defined (IDX train/test), else ""
    "width": "int64",  # original size and mode; 0 / "" when undecodable
    "height": "int64",
    "mode": "string",
    "bytes": "int64",  # file size in bytes (IDX: bytes of one image record)
    "pixel_hash": "string",  # sha256 of the prepared (converted, resized) pixels
    "phash": "string",  # 64-bit perceptual hash as 16 hex digits
    "pixel_mean": "float64",  # of the prepared pixels, for blank-image checks
    "pixel_std": "float64",
    "status": "string",  # "ok" or one of BAD_STATUSES
    "error": "string",  # the reason, for unusable rows
    "array_index": "int64",  # row in <split>_x.npy, -1 when not in an array
}


def manifest_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Rows -> a manifest DataFrame with the contract's columns and dtypes."""
    frame = pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))
    return frame.astype(MANIFEST_COLUMNS)


def frame_hash(frame: pd.DataFrame) -> str:
    """A content hash of a manifest, independent of parquet encoding details."""
    digest = hashlib.sha256()
    digest.update(pd.util.hash_pandas_object(frame, index=False).values.tobytes())
    digest.update(",".join(frame.columns).encode())
    return digest.hexdigest()[:12]


class PreparedDataError(UserError, ValueError):
    """A file of data/prepared/ is missing, truncated or not what prepare writes."""


def load_array(path: Path, **options: Any) -> np.ndarray:
    """np.load, with a damaged or missing file reported as one clear PreparedDataError."""
    try:
        return np.load(path, **options)
    except (ValueError, OSError, EOFError) as exc:
        raise PreparedDataError(
            f"{path} is damaged or missing ({type(exc).__name__}: {exc}); rebuild "
            "data/prepared/ with `dvc repro -f prepare` (or `dvc checkout data/prepared`)"
        ) from None


@dataclass(frozen=True)
class PreparedDataset:
    """Read access to data/prepared/."""

    root: Path
    manifest: pd.DataFrame
    meta: dict[str, Any]

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        height, width = self.meta["image_size"]
        return int(height), int(width), int(self.meta["channels"])

    def x(self, split: str) -> np.ndarray:
        return load_array(self.root / f"{split}_x.npy", mmap_mode="r")

    def y(self, split: str) -> np.ndarray:
        return load_array(self.root / f"{split}_y.npy")


MODEL_INPUT_BATCH = 1024


def predict_in_batches(
    predict: Callable[[np.ndarray], Any], x: np.ndarray, batch: int = MODEL_INPUT_BATCH
) -> np.ndarray:
    """Class probabilities for prepared pixels, a batch at a time.

    Models take float32 raw pixels; `x` is usually a uint8 memmap, so each
    batch is cast as it is read and the whole split never sits in RAM as
    float32. Shared by evaluate (Keras models) and retrain (MLflow models).
    """
    parts = [
        np.asarray(predict(np.asarray(x[i : i + batch], dtype=np.float32)), dtype=np.float64)
        for i in range(0, len(x), batch)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, 0))


def load_prepared(root: Path) -> PreparedDataset:
    """Open a prepared dataset; raises FileNotFoundError naming what is missing."""
    manifest_path = root / "manifest.parquet"
    meta_path = root / "meta.json"
    for needed in (manifest_path, meta_path):
        if not needed.exists():
            raise FileNotFoundError(f"{needed} is missing; run the prepare stage first")
    return PreparedDataset(
        root=root, manifest=pd.read_parquet(manifest_path), meta=json.loads(meta_path.read_text())
    )


def write_prepared(
    out_dir: Path,
    manifest: pd.DataFrame,
    arrays: Mapping[str, tuple[np.ndarray, np.ndarray]],
    meta: Mapping[str, Any],
) -> None:
    """Write a whole prepared dataset atomically (build in a temp dir, then swap).

    Args:
        arrays: split -> (x uint8 (n, h, w, c), y int (n,)), for every split in SPLITS.
        meta: must hold classes, image_size and channels; counts and
            manifest_hash are filled in here.
    """
    with staging_dir(out_dir) as tmp:
        for split in SPLITS:
            x, y = arrays[split]
            np.save(tmp / f"{split}_x.npy", np.asarray(x, dtype=np.uint8))
            np.save(tmp / f"{split}_y.npy", np.asarray(y, dtype=np.int64))
        finish_prepared(tmp, manifest, meta)


def finish_prepared(tmp: Path, manifest: pd.DataFrame, meta: Mapping[str, Any]) -> None:
    """Write manifest.parquet and meta.json into a staging dir whose arrays exist."""
    manifest = manifest.astype(MANIFEST_COLUMNS)
    manifest.to_parquet(tmp / "manifest.parquet", index=False)
    full_meta = dict(meta)
    full_meta["counts"] = {
        split: int((manifest["split"] == split).sum()) for split in (*SPLITS, "unused")
    }
    full_meta["unusable"] = int((manifest["status"] != STATUS_OK).sum())
    full_meta["manifest_hash"] = frame_hash(manifest)
    (tmp / "meta.json").write_text(json.dumps(full_meta, indent=2, sort_keys=True))


def _staging_owner(entry: Path, target: Path) -> tuple[int, bool] | None:
    """(owner pid, is the moved-aside old target) of a staging folder of `target`, else None.

    Staging folders are named `.<target>.<pid>.<random>` and `.<target>.<pid>.old`.
    """
    match = re.fullmatch(rf"\.{re.escape(target.name)}\.(\d+)\.(old|[a-z0-9_]+)", entry.name)
    if match is None or entry.is_symlink() or not entry.is_dir():
        return None
    return int(match[1]), match[2] == "old"


def remove_stale_staging(target: Path) -> list[Path]:
    """Remove the staging folders beside `target` whose owner process is gone.

    A killed run cannot clean up after itself, so the next run does. A folder
    whose owner is alive is left alone: another run may be writing it. A dead
    run's `.old` folder while `target` is missing means it died between its
    two renames; that folder is the previous `target` and is put back.

    Returns:
        The folders removed or put back.
    """
    if not target.parent.is_dir():
        return []
    handled = []
    for entry in sorted(target.parent.iterdir()):
        owner = _staging_owner(entry, target)
        if owner is None or pid_alive(owner[0]):
            continue
        if owner[1] and not target.exists():
            log.warning("putting back %s as %s: its run (pid %d) died", entry, target, owner[0])
            os.replace(entry, target)
        else:
            log.warning("removing %s, left by a run (pid %d) that is gone", entry, owner[0])
            shutil.rmtree(entry, ignore_errors=True)
        handled.append(entry)
    return handled


# Files others keep in an output folder: DVC's .gitignore for a cached output inside it
# (models/<variant>/.gitignore lists model.keras). Swapping the folder must keep them, or a
# stage run outside `dvc repro` (`mlflow run -e train`) would let git add the model.
CARRIED_OVER = (".gitignore",)


def _carry_over(target: Path, tmp: Path) -> None:
    for name in CARRIED_OVER:
        if (target / name).is_file() and not (tmp / name).exists():
            shutil.copy2(target / name, tmp / name)


@contextlib.contextmanager
def staging_dir(target: Path) -> Iterator[Path]:
    """A temp dir beside `target` that replaces it when the block succeeds.

    On an exception the temp dir is removed and `target` is left as it was,
    so a killed or failed stage never leaves a half-written dataset. The temp
    dir's name holds this process's pid, so that the next run removes it when
    this one is killed (`remove_stale_staging`).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(target)
    pid = os.getpid()
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.{pid}.", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp makes it owner-only; the result is ordinary data
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if target.exists():
        _carry_over(target, tmp)
        old = target.with_name(f".{target.name}.{pid}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
