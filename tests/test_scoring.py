"""pipeline.scoring: the rows scored and every split's scores of a saved model."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline import scoring
from pipeline.prepared import SPLITS, load_prepared


class LabelEcho:
    """A 'model' that answers class 0 for dark images and class 1 otherwise."""

    def __init__(self, n_classes: int) -> None:
        self.n_classes = n_classes

    def predict_on_batch(self, batch: np.ndarray) -> np.ndarray:
        proba = np.full((len(batch), self.n_classes), 0.01)
        bright = batch.reshape(len(batch), -1).mean(axis=1) > 40
        proba[np.arange(len(batch)), bright.astype(int)] = 0.9
        return proba / proba.sum(axis=1, keepdims=True)


def test_score_model_scores_every_split_on_its_rows(digits_prepared):
    data = load_prepared(digits_prepared.paths.prepared_dir)
    indices = scoring.evaluation_indices(data)
    scores, correct = scoring.score_model(LabelEcho(len(data.classes)), data, indices)
    assert list(scores) == list(SPLITS) == list(correct)
    for split in SPLITS:
        labels = data.y(split)[indices[split]]
        assert scores[split]["n"] == len(indices[split]) == len(correct[split])
        # The per-row correctness is what the accuracy averages.
        assert scores[split]["accuracy"] == pytest.approx(correct[split].mean())
        assert np.asarray(scores[split]["_confusion"]).sum() == len(labels)
    # Only classes 0 and 1 are ever answered: every other row is wrong.
    assert not correct["val"][data.y("val") > 1].any()


def test_score_model_refuses_probabilities_of_the_wrong_width(digits_prepared):
    data = load_prepared(digits_prepared.paths.prepared_dir)
    with pytest.raises(ValueError, match="shape"):
        scoring.score_model(LabelEcho(3), data, scoring.evaluation_indices(data))


def test_split_rows_copies_only_a_sample(digits_prepared):
    data = load_prepared(digits_prepared.paths.prepared_dir)
    x = data.x("val")
    # The whole split stays a memory map (read per batch); a sample is copied into memory.
    whole = scoring.split_rows(data, "val", np.arange(len(x)))
    assert isinstance(whole, np.memmap) and np.array_equal(whole, x)
    rows = scoring.split_rows(data, "val", np.array([3, 1]))
    assert not isinstance(rows, np.memmap) and np.array_equal(rows, x[[3, 1]])
