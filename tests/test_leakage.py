"""Tests for pipeline/leakage.py: the near-duplicate search against brute force,
and find_leaks on tiny hand-made `images` tables (exact copies, near copies
confirmed or rejected by their pixels)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline import leakage

from .conftest import shipped


def clustered_hashes(rng: np.random.Generator, base: np.ndarray, n: int, flips: int) -> np.ndarray:
    """n hashes near the `base` centres: a few random bits flipped each."""
    values = base[rng.integers(0, len(base), size=n)]
    for _ in range(flips):
        bit = rng.integers(0, 64, size=n).astype(np.uint64)
        values = values ^ np.where(rng.random(n) < 0.5, np.uint64(1) << bit, np.uint64(0))
    return values


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("distance", [0, 1, 3, 4, 7])
def test_near_pairs_matches_brute_force(seed: int, distance: int) -> None:
    rng = np.random.default_rng(seed)
    centres = rng.integers(0, 2**64 - 1, size=12, dtype=np.uint64, endpoint=True)
    query = clustered_hashes(rng, centres, 300, flips=5)
    reference = np.concatenate(
        [
            clustered_hashes(rng, centres, 400, flips=5),
            rng.integers(0, 2**64 - 1, size=50, dtype=np.uint64, endpoint=True),
        ]
    )
    fast = leakage.near_pairs(query, reference, distance)
    slow = leakage.brute_force_pairs(query, reference, distance)
    assert len(slow[0]) > 0
    for a, b in zip(fast, slow, strict=True):
        np.testing.assert_array_equal(a, b)


def test_near_pairs_degenerate_bucket_in_small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    # Many images with one phash (blank-ish images): one huge bucket, chunked.
    monkeypatch.setattr(leakage, "PAIR_CHUNK", 97)
    query = np.full(60, 7, dtype=np.uint64)
    reference = np.concatenate([np.full(80, 7, dtype=np.uint64), np.array([7 ^ 0b111], np.uint64)])
    fast = leakage.near_pairs(query, reference, 2)
    slow = leakage.brute_force_pairs(query, reference, 2)
    assert len(fast[0]) == 60 * 80
    for a, b in zip(fast, slow, strict=True):
        np.testing.assert_array_equal(a, b)


def test_near_pairs_empty_inputs() -> None:
    empty = np.zeros(0, dtype=np.uint64)
    assert all(len(a) == 0 for a in leakage.near_pairs(empty, np.ones(3, np.uint64), 4))
    assert all(len(a) == 0 for a in leakage.near_pairs(np.ones(3, np.uint64), empty, 4))


def test_hash_bands_partition_the_bits() -> None:
    for d in range(0, 33):
        bands = leakage.hash_bands(d)
        assert len(bands) == d + 1
        assert sum(w for _, w in bands) == 64
        assert [s for s, _ in bands] == list(np.cumsum([0] + [w for _, w in bands])[:-1])
    with pytest.raises(ValueError):
        leakage.hash_bands(64)


def test_phash_to_uint64() -> None:
    values = leakage.phash_to_uint64(["0000000000000001", "ffffffffffffffff", "8000000000000000"])
    assert values.tolist() == [1, 2**64 - 1, 2**63]
    with pytest.raises(ValueError, match="16 hex digits"):
        leakage.phash_to_uint64(["abc"])


# ---------------------------------------------------------------- find_leaks

SIZE = 4


def images_frame(rows: list[tuple[str, str, str, int]]) -> pd.DataFrame:
    """(split, pixel_hash, phash, array_index) rows -> an `images` table."""
    return pd.DataFrame(
        {
            "path": [f"/d/{i}.png" for i in range(len(rows))],
            "split": [r[0] for r in rows],
            "pixel_hash": [r[1] for r in rows],
            "phash": [r[2] for r in rows],
            "array_index": [r[3] for r in rows],
        }
    )


def loader(arrays: dict[str, np.ndarray]):
    return lambda split, rows: arrays[split][rows]


def test_find_leaks_exact_copy_by_pixel_hash() -> None:
    images = images_frame(
        [("train", "h1", "0" * 16, 0), ("train", "h2", "f" * 16, 1), ("test", "h2", "1" * 16, 0)]
    )
    leaks = leakage.find_leaks(images, shipped("validate"), pixels=None)
    assert leaks.leaked_from.isna().tolist() == [True, True, False]
    assert leaks.leaked_from.iloc[2] == "/d/1.png"
    assert leaks.phash_distance.iloc[2] == 0 and leaks.pixel_diff.iloc[2] == 0.0


def test_find_leaks_near_copy_needs_close_pixels() -> None:
    rng = np.random.default_rng(0)
    train = rng.integers(0, 200, size=(1, SIZE, SIZE, 1), dtype=np.uint8)
    near = train + 2  # mean absolute difference 2 <= the default 4
    far = 255 - train
    images = images_frame(
        [
            ("train", "t", "00000000000000ff", 0),
            ("val", "v", "00000000000000fe", 0),  # 1 bit away, pixels close
            ("test", "x", "00000000000000fc", 0),  # 2 bits away, pixels far
        ]
    )
    arrays = {"train": train, "val": near, "test": far}
    leaks = leakage.find_leaks(images, shipped("validate"), loader(arrays))
    assert leaks.leaked_from.iloc[1] == "/d/0.png"
    assert leaks.phash_distance.iloc[1] == 1 and leaks.pixel_diff.iloc[1] == 2.0
    assert pd.isna(leaks.leaked_from.iloc[2])  # a phash collision, not a copy
    assert leaks.pixel_comparisons == 2 and leaks.skipped_comparisons == 0
    # without pixels the phash alone decides
    assert leakage.find_leaks(images, shipped("validate"), None).leaked_from.notna().sum() == 2


def test_find_leaks_caps_pixel_comparisons(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(leakage, "MAX_PIXEL_COMPARISONS", 1)
    same = np.zeros((1, SIZE, SIZE, 1), np.uint8)
    images = images_frame(
        [("train", "t", "0" * 16, 0), ("val", "v", "0" * 15 + "1", 0), ("test", "x", "0" * 16, 0)]
    )
    arrays = {"train": same, "val": same + 1, "test": same + 1}
    leaks = leakage.find_leaks(images, shipped("validate"), loader(arrays))
    assert (leaks.pixel_comparisons, leaks.skipped_comparisons) == (1, 1)
    # the skipped pair counts as not compared, so not confirmed
    assert leaks.leaked_from.notna().sum() == 1


def test_find_leaks_empty_and_train_only() -> None:
    empty = leakage.find_leaks(images_frame([]), shipped("validate"), None)
    assert len(empty.leaked_from) == 0 and empty.pixel_comparisons == 0
    train_only = images_frame([("train", "h", "0" * 16, 0), ("train", "h", "0" * 16, 1)])
    assert leakage.find_leaks(train_only, shipped("validate"), None).leaked_from.isna().all()
