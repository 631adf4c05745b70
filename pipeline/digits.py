"""Stage `digits`: the embedded default dataset, written as an image folder.

Inputs: scikit-learn's bundled digits (1,797 real 8x8 grayscale scans of
handwritten digits, 10 classes, pixel values 0..16; no download). Outputs:
data/digits/<class>/<NNNN>.png, pixel values scaled to 0..255, NNNN being the
image's index in the scikit-learn dataset.

Written as PNGs so the default path through the pipeline is the same one a
user's own folder of images takes. The bytes are deterministic (same pixels,
no timestamps in the PNGs), so a rerun changes nothing DVC can see, and the
folder is built beside the target and swapped in whole.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.cli import run_stage
from pipeline.paths import Paths
from pipeline.prepared import staging_dir


def digits_images() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as uint8 (n, 8, 8) in 0..255 and int labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.clip(np.round(digits.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    return images, digits.target.astype(np.int64)


def write_digits(out_dir: Path) -> int:
    """Write the PNG folder atomically; returns the number of images."""
    images, labels = digits_images()
    with staging_dir(out_dir) as tmp:
        for label in sorted(set(labels.tolist())):
            (tmp / str(label)).mkdir()
        for index, (pixels, label) in enumerate(zip(images, labels, strict=True)):
            # optimize=False and no metadata: identical bytes on every run.
            Image.fromarray(pixels, mode="L").save(
                tmp / str(label) / f"{index:04d}.png", format="PNG"
            )
    return len(images)


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    paths = Paths.here()
    count = write_digits(paths.digits_dir)
    print(f"digits: wrote {count} PNGs (10 classes, 8x8) to {paths.digits_dir}")
    return 0


if __name__ == "__main__":
    run_stage(main)
