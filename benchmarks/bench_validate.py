"""Benchmark: the validate stage's checks on Fashion-MNIST (70,000 images).

Inputs: /usr/share/datasets/fashion-mnist (the Debian dataset-fashion-mnist
package) and the repo's params.yaml. The prepared dataset comes from
pipeline.prepare (or, with --own-hashes, from hashes computed here straight
from the IDX arrays); it goes to a temp dir that is deleted afterwards unless
--keep DIR is given (a kept DIR is reused by the next run).
Outputs: timings on stdout. Target: all checks under 30 s on 2 cores.

It also times a brute-force all-pairs phash leakage search on a subsample and
prints how much faster the banded search is.

Run: .venv/bin/python benchmarks/bench_validate.py [--keep /tmp/fashion_prepared]
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

import numpy as np  # noqa: E402
import yaml  # noqa: E402

from pipeline.config import parse_config  # noqa: E402
from pipeline.leakage import brute_force_pairs, near_pairs, phash_to_uint64  # noqa: E402
from pipeline.paths import Paths  # noqa: E402
from pipeline.prepared import SPLITS, load_prepared, manifest_frame, write_prepared  # noqa: E402
from pipeline.validate import validate_dataset  # noqa: E402
from pipeline.validation_tables import split_images  # noqa: E402

FASHION = Path("/usr/share/datasets/fashion-mnist")
SUBSAMPLE = 10_000


def fashion_config():
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"].update(source=str(FASHION), format="auto")
    return parse_config(params)


def prepare_with_stage(root: Path) -> None:
    """data/prepared under `root` via the real prepare stage."""
    from pipeline.prepare import prepare_dataset

    prepare_dataset(fashion_config(), Paths(root), progress=False)


def load_idx(path: Path) -> np.ndarray:
    """The pipeline's own IDX reader (images or labels, by the file name)."""
    from pipeline.datasets import IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC, read_idx

    return read_idx(path, IDX_IMAGES_MAGIC if "images" in path.name else IDX_LABELS_MAGIC)


def prepare_own(root: Path) -> None:
    """A prepared dataset built here: 28x28 pixels, sha256 and imagehash phash."""
    import imagehash
    from PIL import Image

    parts = {
        "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
        "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
    }
    rng = np.random.default_rng(0)
    arrays, rows = {}, []
    xs, ys = {}, {}
    for name, (images, labels) in parts.items():
        xs[name] = load_idx(FASHION / images)
        ys[name] = load_idx(FASHION / labels).astype(np.int64)
    val_mask = rng.random(len(ys["train"])) < 0.15
    members = {
        "train": ("train", np.flatnonzero(~val_mask)),
        "val": ("train", np.flatnonzero(val_mask)),
        "test": ("test", np.arange(len(ys["test"]))),
    }
    for split in SPLITS:
        source, idx = members[split]
        x, y = xs[source][idx][..., None], ys[source][idx]
        arrays[split] = (x, y)
        for pos, (i, pixels, label) in enumerate(zip(idx, x, y, strict=True)):
            rows.append(
                {
                    "id": f"{source}#{i}",
                    "path": f"{FASHION}/{parts[source][0]}#{i}",
                    "label": str(label),
                    "label_index": int(label),
                    "split": split,
                    "source_split": source,
                    "width": 28,
                    "height": 28,
                    "mode": "L",
                    "bytes": 784,
                    "pixel_hash": hashlib.sha256(pixels.tobytes()).hexdigest(),
                    "phash": str(imagehash.phash(Image.fromarray(pixels[..., 0]))),
                    "pixel_mean": float(pixels.mean()),
                    "pixel_std": float(pixels.std()),
                    "status": "ok",
                    "error": "",
                    "array_index": pos,
                }
            )
    meta = {"classes": [str(c) for c in range(10)], "image_size": [28, 28], "channels": 1}
    write_prepared(root / "data" / "prepared", manifest_frame(rows), arrays, meta)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--keep", type=Path, help="project dir that keeps (and reuses) the prepared data"
    )
    parser.add_argument("--own-hashes", action="store_true", help="skip pipeline.prepare")
    args = parser.parse_args()
    if not FASHION.is_dir():
        print(f"skipped: {FASHION} is absent (install the dataset-fashion-mnist package)")
        return 0
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="bench_validate.") as tmp:
        root = args.keep or Path(tmp)
        prepared = Paths(root).prepared_dir
        if not (prepared / "meta.json").exists():
            start = time.perf_counter()
            if args.own_hashes:
                prepare_own(root)
            else:
                prepare_with_stage(root)
            took = time.perf_counter() - start
            print(f"prepared Fashion-MNIST in {took:.1f} s (not part of validate)")
        vcfg = fashion_config().validate_

        start = time.perf_counter()
        dataset = load_prepared(prepared)
        report = validate_dataset(dataset, vcfg, docs_dir=Path(tmp) / "data_docs")
        seconds = time.perf_counter() - start
        n = len(dataset.manifest)
        print(
            f"validate: {n} manifest rows, all checks + Data Docs in {seconds:.1f} s "
            f"(target < 30 s); success={report['success']}, errors={report['errors']}, "
            f"warnings={report['warnings']}"
        )
        leakage = next(c for c in report["checks"] if c["name"] == "split_leakage")["observed"]
        print(
            f"split_leakage: {leakage['leaking_images']} leaking val/test images "
            f"({leakage['exact']} exact, {leakage['near']} near); "
            f"{leakage['pixel_comparisons']} pixel comparisons of phash candidates"
        )

        images = split_images(dataset.manifest)
        train = phash_to_uint64(images.loc[images["split"] == "train", "phash"])
        other = phash_to_uint64(images.loc[images["split"] != "train", "phash"])
        d = vcfg.near_duplicate_distance
        start = time.perf_counter()
        banded = near_pairs(other, train, d)
        t_banded = time.perf_counter() - start
        print(
            f"banded phash search, all {len(other)} val/test x {len(train)} train: "
            f"{t_banded:.2f} s, {len(banded[0])} pairs within distance {d}"
        )

        sub = other[: SUBSAMPLE // 5], train[:SUBSAMPLE]
        start = time.perf_counter()
        brute = brute_force_pairs(*sub, d)
        t_brute = time.perf_counter() - start
        start = time.perf_counter()
        fast = near_pairs(*sub, d)
        t_fast = time.perf_counter() - start
        assert all(np.array_equal(a, b) for a, b in zip(brute, fast, strict=True))
        print(
            f"subsample {len(sub[0])} x {len(sub[1])}: brute force {t_brute:.2f} s, "
            f"banded {t_fast:.3f} s, ratio {t_brute / max(t_fast, 1e-9):.0f}x (same pairs)"
        )
        full_brute = t_brute * (len(other) * len(train)) / (len(sub[0]) * len(sub[1]))
        print(
            f"brute force on the full split extrapolates to {full_brute:.1f} s "
            f"= {full_brute / max(t_banded, 1e-9):.0f}x the banded search"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
