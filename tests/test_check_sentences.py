"""pipeline.check_sentences: each data check in a sentence with its numbers.

The observed dicts come from the real checks (pipeline.checks) on real tables:
the digits, which pass every check, and a small crafted dataset that fails
most of them (missing classes, a corrupt file, a blank image, duplicates and a
val image leaked from train).
"""

from __future__ import annotations

import pandas as pd
import pytest

from pipeline import check_sentences, checks
from pipeline.leakage import find_leaks
from pipeline.prepared import load_prepared
from pipeline.validation_tables import (
    ValidationTables,
    build_tables,
    class_folders_table,
    class_tables,
    images_table,
)

from .conftest import shipped

BY_NAME = {c.name: c for c in checks.CHECKS}


def found(tables: ValidationTables, vcfg) -> dict[str, tuple[dict, dict, str]]:
    """check name -> (observed, limits, sentence), as validate and the report make them."""
    out = {}
    for check in checks.CHECKS:
        observed, limits = check.observe(tables, vcfg), check.limits(vcfg)
        out[check.name] = (observed, limits, check_sentences.describe(check.name, observed, limits))
    return out


@pytest.fixture
def digits(digits_prepared):
    vcfg = shipped("validate")
    tables = build_tables(load_prepared(digits_prepared.paths.prepared_dir), vcfg)
    return found(tables, vcfg), vcfg


def faulty_tables() -> ValidationTables:
    """Classes a, b, c: c has no image, b lacks val; t4 is t0's pixels (a duplicate in
    train), v0 is t1's pixels (leaked into val), t3 is blank, one file is corrupt."""
    images = pd.DataFrame(
        {
            "path": ["t0", "t1", "t2", "t3", "t4", "v0"],
            "split": ["train"] * 5 + ["val"],
            "label": ["a", "a", "b", "b", "a", "a"],
            "pixel_hash": ["h0", "h1", "h2", "h3", "h0", "h1"],
            "phash": ["0000000000000000", "00000000ffffffff", "ffffffff00000000",
                      "ffffffffffffffff", "0000000000000000", "00000000ffffffff"],
            "pixel_std": [10.0, 10.0, 10.0, 0.5, 10.0, 10.0],
            "mode": ["L", "L", "RGB", "L", "L", "L"],
            "width": [8, 8, 16, 8, 8, 8],
            "height": [8, 8, 16, 8, 8, 8],
        }
    )  # fmt: skip
    manifest = pd.DataFrame(
        {
            "path": [*images["path"], "bad"],
            "status": ["ok"] * 6 + ["truncated"],
            "error": [""] * 6 + ["cut short"],
            "split": [*images["split"], ""],
        }
    )
    leaks = find_leaks(images, shipped("validate"), pixels=None)
    split_classes, splits = class_tables(images, ["a", "b", "c"])
    return ValidationTables(
        manifest=manifest,
        images=images_table(images, leaks),
        split_classes=split_classes,
        splits=splits,
        classes=["a", "b", "c"],
        leaks=leaks,
        class_folders=class_folders_table(["a", "b", "c"], []),
    )


@pytest.fixture
def faulty():
    vcfg = shipped("validate", min_images_per_class=3)
    return found(faulty_tables(), vcfg), vcfg


def test_every_shipped_check_has_a_sentence():
    assert set(check_sentences.SENTENCES) == set(checks.CHECK_NAMES)


def test_label_set(digits, faulty):
    observed, _, sentence = digits[0]["label_set"]
    assert sentence == f"All {observed['classes']} classes appear in train, val and test."
    observed, _, sentence = faulty[0]["label_set"]
    assert observed["missing"]  # the real check found them
    assert sentence.startswith("Classes missing from ")
    for split, names in observed["missing"].items():
        assert f"{split}: {', '.join(names)}" in sentence
    assert "(of 3;" in sentence


def test_class_balance_gives_each_ratio_and_the_worst_label_mix_with_limits(digits):
    (observed, _, sentence), vcfg = digits[0]["class_balance"], digits[1]
    for split in ("train", "val", "test"):
        assert f"{observed[f'{split}_imbalance_ratio']:.2f} in {split}" in sentence
    assert f"(allowed up to {vcfg.max_imbalance_ratio:g})" in sentence
    worst = max(observed["val_js_distance"], observed["test_js_distance"])
    assert f"val and test label mix within {worst:.2g} of train's" in sentence
    assert f"allowed up to {vcfg.max_label_divergence:g}" in sentence
    assert "{" not in sentence and "_" not in sentence  # no raw dict, no key names


def test_class_balance_of_an_empty_split_says_the_ratio_is_undefined(faulty):
    observed, _, sentence = faulty[0]["class_balance"]
    assert observed["test_imbalance_ratio"] is None  # the crafted test split is empty
    assert f"{observed['train_imbalance_ratio']:.2f} in train" in sentence
    assert "undefined in test (the split has no images)" in sentence


def test_min_images_per_class(digits, faulty):
    observed, limits, sentence = digits[0]["min_images_per_class"]
    assert sentence == (
        f"Fewest training images in a class: {observed['train_min_count']:,}"
        f" (at least {limits['min_images_per_class']} required)."
    )
    observed, _, sentence = faulty[0]["min_images_per_class"]
    assert observed["classes_below"] == {"b": 2, "c": 0}
    assert "(at least 3 required); below it: " in sentence
    for name, count in observed["classes_below"].items():
        assert f"{name} ({count})" in sentence


def test_corrupt_images(digits, faulty):
    assert digits[0]["corrupt_images"][2] == (
        "No unusable file: prepare decoded every one (allowed 0%)."
    )
    observed, _, sentence = faulty[0]["corrupt_images"]
    assert observed["unusable"] == 1
    pct = observed["fraction"] * 100
    assert (
        sentence == f"1 files prepare could not use, {pct:.2g}% of all (allowed 0%): 1 truncated."
    )


def test_image_properties(digits, faulty):
    observed, limits, sentence = digits[0]["image_properties"]
    assert sentence.startswith(
        f"No blank or near-constant image (pixel std below {limits['blank_std_threshold']:g};"
    )
    assert f"original sizes 8x8 ({observed['sizes']['8x8']:,})" in sentence
    observed, _, sentence = faulty[0]["image_properties"]
    assert observed["blank"] == 1
    assert sentence.startswith("1 blank or near-constant images, ")
    assert "8x8 (5), 16x16 (1)" in sentence and "modes L (5), RGB (1)" in sentence


def test_duplicates(digits, faulty):
    assert digits[0]["duplicates"][2] == (
        "No image appears twice within a split (allowed 0%); none appears under two labels."
    )
    observed, _, sentence = faulty[0]["duplicates"]
    assert observed["duplicate_images"] == 2 and observed["redundant_copies"] == 1
    assert sentence.startswith(
        "2 images share their pixels with another in the same split (1 redundant copies, "
    )


def test_split_leakage(digits, faulty):
    observed, limits, sentence = digits[0]["split_leakage"]
    assert sentence.startswith("No val or test image is the same image as a train image")
    assert f"within {limits['near_duplicate_distance']} bits" in sentence
    assert f"{observed['pixel_comparisons']:,} candidate pairs compared" in sentence
    observed, _, sentence = faulty[0]["split_leakage"]
    assert observed["leaking_images"] == 1
    assert sentence.startswith("1 val/test images are the same image as a train image")
    assert "val 1, test 0; 1 exact, 0 near" in sentence


def test_without_recorded_limits_the_sentence_leaves_them_out(digits):
    observed, _, _ = digits[0]["class_balance"]
    sentence = check_sentences.describe("class_balance", observed, None)
    assert "allowed" not in sentence and sentence.startswith("Largest class / smallest class: ")


def test_unknown_check_or_unexpected_shape_falls_back_to_compact_key_value_text():
    observed = {"ratio": 4.23456, "per_split": {"train": 2, "val": 1}, "pairs": [1, 2, 3]}
    text = check_sentences.describe("brand_new_check", {**observed, "offending_files": 0})
    assert text == "ratio: 4.235; per_split: train 2, val 1; pairs: 3 items"
    # A known check whose observed dict lacks what its sentence reads: the same fallback.
    assert check_sentences.describe("class_balance", {"ratio": 4.2}) == "ratio: 4.2"
    assert check_sentences.describe("label_set", "not a dict") == "not a dict"
