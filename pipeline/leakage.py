"""Split leakage: val/test images that are the same picture as a train image.

Inputs: the `images` rows (path, split, pixel_hash, phash, array_index) and a
loader of prepared pixels. Outputs: a `Leaks` value per row; nothing is
written.

A val/test image leaks when its prepared pixels equal a train image's
(pixel_hash), or when its 64-bit phash is within near_duplicate_distance of one
(found by hash-band bucketing, not all pairs) *and* its prepared pixels differ
by at most near_duplicate_max_pixel_diff on average: phashes of small images
collide across different pictures (24 candidate pairs in the digits, none of
them copies), so the phash alone would flag clean data.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipeline.config import ValidateConfig
from pipeline.prepared import SPLITS

log = logging.getLogger(__name__)

HASH_BITS = 64
# Candidate pairs handled per numpy step: bounds memory whatever the bucket sizes.
PAIR_CHUNK = 2_000_000
# Pixel comparisons beyond this many are skipped (logged), so a degenerate
# dataset (thousands of blank images sharing one phash) cannot stall the stage.
MAX_PIXEL_COMPARISONS = 5_000_000
EVAL_SPLITS = tuple(s for s in SPLITS if s != "train")


# --------------------------------------------------------------------------
# Near-duplicate search on 64-bit perceptual hashes


def phash_to_uint64(hexes: Iterable[str]) -> np.ndarray:
    """16-hex-digit phashes -> uint64 array (vectorised via one bytes.fromhex)."""
    values = list(hexes)
    if not values:
        return np.zeros(0, dtype=np.uint64)
    bad = [h for h in values if not isinstance(h, str) or len(h) != 16]
    if bad:
        raise ValueError(f"phash must be 16 hex digits, got {bad[0]!r}")
    return np.frombuffer(bytes.fromhex("".join(values)), dtype=">u8").astype(np.uint64)


def hash_bands(max_distance: int, bits: int = HASH_BITS) -> list[tuple[int, int]]:
    """(shift, width) of max_distance + 1 disjoint bands covering all bits.

    Pigeonhole: two hashes within Hamming distance d differ in at most d bits,
    so at least one of d + 1 disjoint bands is identical in both.
    """
    n = max_distance + 1
    if n > bits:
        raise ValueError(f"max_distance {max_distance} needs more bands than {bits} bits")
    widths = [bits // n + (1 if i < bits % n else 0) for i in range(n)]
    shifts = np.concatenate([[0], np.cumsum(widths)[:-1]])
    return [(int(s), int(w)) for s, w in zip(shifts, widths, strict=True)]


def _band(values: np.ndarray, shift: int, width: int) -> np.ndarray:
    mask = np.uint64((1 << width) - 1) if width < 64 else np.uint64(0xFFFFFFFFFFFFFFFF)
    return (values >> np.uint64(shift)) & mask


def near_pairs(
    query: np.ndarray, reference: np.ndarray, max_distance: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (i, j) with popcount(query[i] ^ reference[j]) <= max_distance.

    Bucketed by hash bands instead of comparing all pairs: candidates share
    one band exactly, are verified with numpy bit counts, and a pair found in
    an earlier band is not reported again. Work is chunked so one huge bucket
    (many images with the same band, e.g. blank-ish images) only costs time,
    never unbounded memory.

    Returns:
        (query indices, reference indices, distances), sorted by query index,
        then distance, then reference index.
    """
    query = np.asarray(query, dtype=np.uint64)
    reference = np.asarray(reference, dtype=np.uint64)
    found_q, found_r, found_d = [], [], []
    if len(query) and len(reference):
        bands = hash_bands(max_distance)
        q_bands = [_band(query, s, w) for s, w in bands]
        r_bands = [_band(reference, s, w) for s, w in bands]
        for b in range(len(bands)):
            order = np.argsort(r_bands[b], kind="stable")
            sorted_band = r_bands[b][order]
            lo = np.searchsorted(sorted_band, q_bands[b], side="left")
            counts = np.searchsorted(sorted_band, q_bands[b], side="right") - lo
            for qi, ri in _expand_buckets(lo, counts, order):
                dist = np.bitwise_count(query[qi] ^ reference[ri])
                close = dist <= max_distance
                qi, ri, dist = qi[close], ri[close], dist[close]
                # a pair sharing an earlier band was reported there (checked
                # on the few close pairs only: cheaper than on all candidates)
                keep = np.ones(len(qi), dtype=bool)
                for e in range(b):
                    keep &= q_bands[e][qi] != r_bands[e][ri]
                found_q.append(qi[keep])
                found_r.append(ri[keep])
                found_d.append(dist[keep].astype(np.int64))
    if not found_q:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty.copy(), empty.copy()
    qi, ri, dist = (np.concatenate(a).astype(np.int64) for a in (found_q, found_r, found_d))
    order = np.lexsort((ri, dist, qi))
    return qi[order], ri[order], dist[order]


def _expand_buckets(lo: np.ndarray, counts: np.ndarray, order: np.ndarray):
    """Yield (query idx, reference idx) candidate arrays of about PAIR_CHUNK pairs."""
    nonzero = np.flatnonzero(counts)
    if not len(nonzero):
        return
    ends = np.cumsum(counts[nonzero])
    start = 0
    while start < len(nonzero):
        base = ends[start - 1] if start else 0
        stop = int(np.searchsorted(ends, base + PAIR_CHUNK, side="right"))
        stop = max(stop, start + 1)
        idx = nonzero[start:stop]
        c = counts[idx]
        qi = np.repeat(idx, c)
        within = np.arange(int(c.sum())) - np.repeat(np.cumsum(c) - c, c)
        ri = order[np.repeat(lo[idx], c) + within]
        yield qi, ri
        start = stop


def brute_force_pairs(
    query: np.ndarray, reference: np.ndarray, max_distance: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All-pairs reference implementation of near_pairs (tests, benchmark)."""
    query = np.asarray(query, dtype=np.uint64)
    reference = np.asarray(reference, dtype=np.uint64)
    found = []
    for start in range(0, len(query), 256):
        block = np.bitwise_count(query[start : start + 256, None] ^ reference[None, :])
        qi, ri = np.nonzero(block <= max_distance)
        found.append((qi + start, ri, block[qi, ri].astype(np.int64)))
    if not found:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty.copy(), empty.copy()
    qi, ri, dist = (np.concatenate([f[k] for f in found]).astype(np.int64) for k in range(3))
    order = np.lexsort((ri, dist, qi))
    return qi[order], ri[order], dist[order]


# --------------------------------------------------------------------------
# Train images found again in val/test

# (split, array rows) -> those rows' prepared pixels
PixelLoader = Callable[[str, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Leaks:
    """Per row of `images`: the train image it duplicates (or NA) and how close."""

    leaked_from: pd.Series  # train path, <NA> when the row does not leak
    phash_distance: pd.Series  # Int64, <NA> when no leak
    pixel_diff: pd.Series  # float, NaN when no leak
    pixel_comparisons: int
    skipped_comparisons: int


def find_leaks(images: pd.DataFrame, vcfg: ValidateConfig, pixels: PixelLoader | None) -> Leaks:
    """Val/test rows that are the same image as a train row.

    Exact: identical prepared pixels (pixel_hash). Near: phash within
    near_duplicate_distance, confirmed when the prepared pixels' mean absolute
    difference is <= near_duplicate_max_pixel_diff (without `pixels`, the
    phash alone decides).
    """
    n = len(images)
    leaked_from = pd.Series(pd.NA, index=images.index, dtype="string")
    phash_dist = pd.Series(pd.NA, index=images.index, dtype="Int64")
    pixel_diff = pd.Series(np.nan, index=images.index, dtype="float64")
    if n == 0:
        return Leaks(leaked_from, phash_dist, pixel_diff, 0, 0)
    split = images["split"].to_numpy(dtype=object)
    is_train = split == "train"
    is_other = np.isin(split, EVAL_SPLITS)

    # Exact copies: first train row per pixel_hash.
    train_rows = images[is_train]
    first_train = train_rows.drop_duplicates("pixel_hash")
    by_hash = pd.Series(first_train["path"].to_numpy(), index=first_train["pixel_hash"].to_numpy())
    exact_partner = images["pixel_hash"].map(by_hash)
    exact = is_other & exact_partner.notna().to_numpy()
    leaked_from[exact] = exact_partner[exact].astype("string")
    phash_dist[exact] = 0
    pixel_diff[exact] = 0.0

    # Near copies among the rest; train deduplicated by pixels (identical
    # images need comparing once).
    q_rows = np.flatnonzero(is_other & ~exact)
    r_rows = first_train.index.to_numpy()
    compared = skipped = 0
    if len(q_rows) and len(r_rows):
        ph = phash_to_uint64(
            images["phash"].to_numpy(dtype=object)[np.concatenate([q_rows, r_rows])]
        )
        qi, ri, dist = near_pairs(
            ph[: len(q_rows)], ph[len(q_rows) :], vcfg.near_duplicate_distance
        )
        qrow, rrow = q_rows[qi], r_rows[ri]
        if pixels is not None and len(qrow):
            diff, compared, skipped = _pixel_diffs(images, qrow, rrow, pixels)
            ok = diff <= vcfg.near_duplicate_max_pixel_diff
        else:
            diff = np.full(len(qrow), np.nan)
            ok = np.ones(len(qrow), dtype=bool)
        qrow, rrow, dist, diff = qrow[ok], rrow[ok], dist[ok], diff[ok]
        # pairs are sorted by query then phash distance: the first is the closest
        _, first = np.unique(qrow, return_index=True)
        qrow, rrow, dist, diff = qrow[first], rrow[first], dist[first], diff[first]
        leaked_from.iloc[qrow] = images["path"].to_numpy(dtype=object)[rrow]
        phash_dist.iloc[qrow] = dist
        pixel_diff.iloc[qrow] = np.round(diff, 4)
    return Leaks(leaked_from, phash_dist, pixel_diff, compared, skipped)


def _pixel_diffs(
    images: pd.DataFrame, qrow: np.ndarray, rrow: np.ndarray, pixels: PixelLoader
) -> tuple[np.ndarray, int, int]:
    """Mean absolute pixel difference per candidate pair (inf when not compared)."""
    diff = np.full(len(qrow), np.inf)
    todo = min(len(qrow), MAX_PIXEL_COMPARISONS)
    if todo < len(qrow):
        log.warning(
            "split_leakage: %d perceptual-hash candidates; comparing pixels of the first %d",
            len(qrow),
            todo,
        )
    split = images["split"].to_numpy(dtype=object)
    index = images["array_index"].to_numpy()
    step = 20_000  # pairs per numpy step: two (step, h, w, c) blocks stay small
    for start in range(0, todo, step):
        stop = min(start + step, todo)  # never past the cap, whatever step divides
        q, r = qrow[start:stop], rrow[start:stop]
        a = _gather(q, split, index, pixels)
        b = _gather(r, split, index, pixels)
        diff[start : start + len(q)] = (
            np.abs(a.astype(np.int16) - b).reshape(len(q), -1).mean(axis=1)
        )
    return diff, todo, len(qrow) - todo


def _gather(
    rows: np.ndarray, split: np.ndarray, index: np.ndarray, pixels: PixelLoader
) -> np.ndarray:
    out = None
    for name in np.unique(split[rows]):
        mask = split[rows] == name
        block = pixels(str(name), index[rows[mask]])
        if out is None:
            out = np.empty((len(rows), *block.shape[1:]), dtype=np.uint8)
        out[mask] = block
    return out
