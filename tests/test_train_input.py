"""pipeline.train_input: epoch order, tf.data batches, learning-curve subsets, class weights."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from pipeline import train_input
from pipeline.catalog.validation import ValidationFlags


def test_epoch_order_is_a_function_of_seed_and_epoch():
    a = train_input.epoch_order(50, seed=3, epoch=1)
    np.testing.assert_array_equal(a, train_input.epoch_order(50, seed=3, epoch=1))
    assert sorted(a) == list(range(50))
    assert not np.array_equal(a, train_input.epoch_order(50, seed=3, epoch=2))
    assert not np.array_equal(a, train_input.epoch_order(50, seed=4, epoch=1))


def test_train_dataset_batches_each_epoch_separately_and_resumes_mid_stream():
    x = np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1)
    y = np.arange(10, dtype=np.int64)
    stream = train_input.train_dataset(x, y, batch_size=4, seed=5, first_epoch=0, epochs=3)
    full = [(xb.numpy(), yb.numpy()) for xb, yb in stream]
    assert [len(yb) for _, yb in full] == [4, 4, 2] * 3  # no batch straddles two epochs
    for epoch in range(3):
        seen = np.concatenate([yb for _, yb in full[3 * epoch : 3 * epoch + 3]])
        np.testing.assert_array_equal(seen, train_input.epoch_order(10, 5, epoch))
    xb, yb = full[0]
    assert xb.dtype == np.float32 and xb.shape == (4, 1, 1, 1)
    np.testing.assert_array_equal(xb[:, 0, 0, 0], yb.astype(np.float32))
    resumed = [
        yb.numpy() for _, yb in train_input.train_dataset(x, y, 4, 5, first_epoch=2, epochs=3)
    ]
    for got, want in zip(resumed, [yb for _, yb in full[6:]], strict=True):
        np.testing.assert_array_equal(got, want)


def test_eval_dataset_keeps_file_order():
    x = np.arange(5, dtype=np.uint8).reshape(5, 1, 1, 1)
    labels = [yb.numpy() for _, yb in train_input.eval_dataset(x, np.arange(5), batch_size=2)]
    np.testing.assert_array_equal(np.concatenate(labels), np.arange(5))


def test_balanced_class_weights():
    weights = train_input.balanced_class_weights(np.array([0, 0, 0, 1]), n_classes=3)
    assert weights[0] == pytest.approx(4 / (2 * 3))
    assert weights[1] == pytest.approx(4 / (2 * 1))
    assert weights[2] == 1.0  # absent class


def test_class_weight_auto_follows_the_class_balance_check(caplog):
    y = np.array([0, 0, 0, 1])
    failed, passed = ValidationFlags(class_balance_failed=True), ValidationFlags(False)
    balanced = train_input.balanced_class_weights(y, 2)
    assert train_input.resolve_class_weights("auto", y, 2, failed) == balanced
    assert train_input.resolve_class_weights("auto", y, 2, passed) is None
    with caplog.at_level(logging.INFO, logger="pipeline.train_input"):
        assert train_input.resolve_class_weights("auto", y, 2, None) is None
    assert "validate has not run): class weights off" in caplog.text
    assert train_input.resolve_class_weights("on", y, 2, passed) == balanced
    assert train_input.resolve_class_weights("off", y, 2, failed) is None


def test_train_subset_is_stratified_nested_and_deterministic():
    y = np.repeat(np.arange(4), [40, 20, 100, 8])
    quarter = train_input.train_subset(y, 0.25, seed=42)
    half = train_input.train_subset(y, 0.5, seed=42)
    np.testing.assert_array_equal(quarter, train_input.train_subset(y, 0.25, seed=42))
    assert np.all(np.diff(quarter) > 0)  # sorted, unique rows
    assert set(quarter) < set(half)  # nested
    assert np.bincount(y[quarter]).tolist() == [10, 5, 25, 2]  # every class keeps its share
    assert np.bincount(y[half]).tolist() == [20, 10, 50, 4]
    assert not np.array_equal(quarter, train_input.train_subset(y, 0.25, seed=43))
    # A class too small for the fraction keeps one image rather than vanishing.
    assert np.bincount(y[train_input.train_subset(y, 0.01, seed=42)]).tolist() == [1, 1, 1, 1]
    with pytest.raises(ValueError, match="fraction"):
        train_input.train_subset(y, 0.0, seed=42)


def test_fraction_subset_cuts_only_the_train_split(tmp_path):
    from pipeline.prepared import load_prepared

    from .conftest import make_prepared

    x = np.arange(40, dtype=np.uint8).reshape(40, 1, 1, 1)
    y = np.repeat(np.arange(2), 20)
    make_prepared(tmp_path / "prepared", x, y, ["a", "b"], seed=0, fractions=(0.5, 0.25))
    full = load_prepared(tmp_path / "prepared")
    half = train_input.fraction_subset(full, 0.5, seed=42)
    rows = train_input.train_subset(full.y("train"), 0.5, seed=42)
    np.testing.assert_array_equal(half.rows, rows)
    np.testing.assert_array_equal(half.y("train"), full.y("train")[rows])
    np.testing.assert_array_equal(half.x("train"), np.asarray(full.x("train"))[rows])
    for split in ("val", "test"):
        np.testing.assert_array_equal(half.y(split), full.y(split))
    assert half.subset_hash == train_input.fraction_subset(full, 0.5, seed=42).subset_hash
    assert half.subset_hash != train_input.fraction_subset(full, 0.5, seed=43).subset_hash
