"""Which split each usable image goes to: stratified, deterministic and stable.

Splits are stratified by class and deterministic for `data.seed`, and stable:
within a class, images are ordered by a hash of (seed, image id), so adding or
removing images leaves the others in their split (see `split_rank`).

- image folders: test = `test_fraction`, val = `val_fraction` of all usable
  images, the rest is train;
- IDX sources with a t10k part: test = the source's test images, val =
  `val_fraction` of the source's train images (`test_fraction` is ignored);
- then `train_fraction` < 1 keeps a stratified subsample of train; the rest
  gets split "unused".

A class too small to contribute to a split (one image, or fewer than
1 / fraction) keeps its images in train, with a warning; validate's label_set
check then reports the class missing from val or test.

Pure: arrays in, arrays out.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence

import numpy as np

from pipeline.config import DataConfig
from pipeline.prepared import SPLITS

log = logging.getLogger(__name__)


def split_rank(keys: Sequence[str], seed: int, what: str) -> np.ndarray:
    """A pseudo-random but stable sort key per item: sha256(seed, what, key).

    An item's rank depends only on its own key (its id in the source), not on
    which other items exist, so adding or removing images leaves every other
    image's relative order, and so its split, as it was (give or take the one
    image at each class's boundary). A retrained challenger and the champion
    can then be compared on a test set the champion never trained on.
    """
    return np.array(
        [
            int.from_bytes(hashlib.sha256(f"{seed}:{what}:{key}".encode()).digest()[:8], "big")
            for key in keys
        ],
        dtype=np.uint64,
    )


def stratified_take(
    indices: np.ndarray,
    labels: np.ndarray,
    fraction: float,
    seed: int,
    what: str,
    keys: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Split `indices` into (taken ~fraction, kept), stratified by `labels[indices]`.

    Per class, the images are ordered by `split_rank` of their key and the
    first round(n * fraction) are taken, always keeping at least one image of
    the class in the larger part (a class too small to split warns).

    Args:
        keys: a stable identifier per item of `labels` (the record ids); the
            position is used when omitted.
    """
    if fraction <= 0 or len(indices) == 0:
        return indices[:0], indices
    all_keys = [str(i) for i in range(len(labels))] if keys is None else keys
    rank = split_rank([all_keys[i] for i in indices], seed, what)
    strata = labels[indices]
    taken_parts, kept_parts, too_small = [], [], []
    for label in sorted(set(strata.tolist())):
        in_class = strata == label
        members = indices[in_class][np.argsort(rank[in_class], kind="stable")]
        n_take = min(int(round(len(members) * fraction)), len(members) - 1)
        if n_take == 0:
            too_small.append(label)
        taken_parts.append(members[:n_take])
        kept_parts.append(members[n_take:])
    if too_small:
        log.warning(
            "%s: stratified split not possible for class index(es) %s (too few images): "
            "none of their images go to %s",
            what,
            too_small,
            what,
        )
    return np.sort(np.concatenate(taken_parts)), np.sort(np.concatenate(kept_parts))


def assign_splits(
    labels: np.ndarray,
    source_split: np.ndarray,
    data: DataConfig,
    keys: Sequence[str] | None = None,
) -> np.ndarray:
    """Split names for usable images (parallel arrays of label index and source split).

    Args:
        keys: a stable id per image (the manifest id), so that an image keeps
            its split when others are added or removed; default: position.
    """
    n = len(labels)
    out = np.full(n, "train", dtype=object)
    everything = np.arange(n)
    own_test = source_split == "test"
    if own_test.any():
        test = everything[own_test]
        val, train = stratified_take(
            everything[~own_test], labels, data.val_fraction, data.seed, "val", keys
        )
    else:
        test, rest = stratified_take(
            everything, labels, data.test_fraction, data.seed, "test", keys
        )
        val_share = data.val_fraction / (1.0 - data.test_fraction)
        val, train = stratified_take(rest, labels, val_share, data.seed, "val", keys)
    out[test] = "test"
    out[val] = "val"
    if data.train_fraction < 1.0:
        unused, _ = stratified_take(
            train, labels, 1.0 - data.train_fraction, data.seed, "train_fraction", keys
        )
        out[unused] = "unused"
    for split in SPLITS:
        if not (out == split).any():
            log.warning("split %r is empty: too few usable images (%d) for the fractions", split, n)
    return out
