"""Scoring a saved model in inference mode: which rows, and accuracy and loss.

Shared by evaluate (every variant's model.keras), the learning curve (each
fraction's best epoch) and train (the extra seeds of `train.seeds`, scored
before their weights are dropped), so all measure the same rows with the same
formula and their numbers compare like for like.

Train-split scores use a fixed random sample of the train split no larger than
the bigger of val and test (all of it when it is smaller): the train accuracy
then has the same statistical precision as the val accuracy it is compared
with, and scoring cost stops growing with the training set.

Loss is plain cross-entropy of the model's probabilities (clipped as Keras
clips), without the L2 penalty Keras adds during training, so train and val
losses compare like for like.

Evaluate scores every split of each variant's saved model (`score_model`:
macro precision/recall/F1, per-class arrays and the confusion matrix too, and
each row's correctness for paired comparisons) and notes which training-only
behaviour the model has (`training_behaviour`), since Keras measured the
history's train curves with it active.

Inputs: a Keras-like model (anything with `predict_on_batch`) and a split's
pixels and labels as the prepared dataset stores them. Outputs: plain dicts
and `VariantEvaluation`; nothing is written. Importing this module does not
import TensorFlow.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.cli import StageError
from pipeline.prepared import MODEL_INPUT_BATCH, SPLITS, PreparedDataset, predict_in_batches

# The train-split sample is fixed, not a knob: the same rows for every variant, seed and run.
TRAIN_SAMPLE_SEED = 0
EPS = 1e-7  # same clipping as Keras' cross-entropy
# Keras layer classes that act only while training (the per-epoch train metrics include them).
AUGMENTATION_PREFIX = "Random"


@dataclass
class VariantEvaluation:
    """What evaluate measured on one variant's saved model."""

    name: str
    scores: dict[str, dict[str, Any]]  # split -> split_scores()
    feature_maps: dict[str, np.ndarray]
    behaviour: dict[str, bool] | None = None  # training_behaviour(); None when unknown
    # split -> per-row correctness of the saved model (for paired comparisons)
    correct: dict[str, np.ndarray] | None = None


def evaluation_indices(
    data: PreparedDataset, seed: int = TRAIN_SAMPLE_SEED
) -> dict[str, np.ndarray]:
    """Rows scored per split: all of val and test, a fixed sample of train (module doc)."""
    sizes = {split: len(data.y(split)) for split in SPLITS}
    cap = max(sizes["val"], sizes["test"])
    indices = {split: np.arange(n) for split, n in sizes.items()}
    if sizes["train"] > cap:
        rng = np.random.default_rng(seed)
        indices["train"] = np.sort(rng.choice(sizes["train"], size=cap, replace=False))
    return indices


def predict_proba(model: Any, x: np.ndarray, batch_size: int = MODEL_INPUT_BATCH) -> np.ndarray:
    """Class probabilities in batches; `x` may be a uint8 memmap (cast per batch)."""
    if len(x) == 0:
        raise StageError("cannot evaluate on an empty split")
    return predict_in_batches(model.predict_on_batch, x, batch_size)


def accuracy_and_loss(y_true: np.ndarray, proba: np.ndarray) -> dict[str, Any]:
    """{"accuracy", "loss", "n"} of class probabilities against integer labels."""
    y_true = np.asarray(y_true, dtype=np.int64)
    if len(y_true) == 0 or proba.shape[0] != len(y_true):
        raise ValueError(f"probabilities shape {proba.shape} for {len(y_true)} labels")
    picked = np.clip(proba[np.arange(len(y_true)), y_true], EPS, 1.0)
    return {
        "accuracy": float((proba.argmax(axis=1) == y_true).mean()),
        "loss": float(-np.log(picked).mean()),
        "n": int(len(y_true)),
    }


def model_accuracy_and_loss(model: Any, x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """{"accuracy", "loss", "n"} of `model` on (x, y), in inference mode."""
    return accuracy_and_loss(y, predict_proba(model, x))


def split_scores(y_true: np.ndarray, proba: np.ndarray, n_classes: int) -> dict[str, Any]:
    """Accuracy, cross-entropy, macro precision/recall/F1, per-class arrays, confusion."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    y_true = np.asarray(y_true, dtype=np.int64)
    if proba.shape != (len(y_true), n_classes):
        raise ValueError(f"probabilities shape {proba.shape} != ({len(y_true)}, {n_classes})")
    pred = proba.argmax(axis=1)
    labels = list(range(n_classes))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, pred, labels=labels, average=None, zero_division=0
    )
    present = support > 0  # macro over the classes this split has
    return {
        **accuracy_and_loss(y_true, proba),
        "precision": float(precision[present].mean()),
        "recall": float(recall[present].mean()),
        "f1": float(f1[present].mean()),
        "_per_class": {
            "precision": precision.tolist(),
            "recall": recall.tolist(),
            "f1": f1.tolist(),
            "support": support.tolist(),
        },
        "_confusion": confusion_matrix(y_true, pred, labels=labels).tolist(),
    }


def score_splits(
    model: Any,
    data: PreparedDataset,
    indices: Mapping[str, np.ndarray],
    splits: Sequence[str] = ("train", "val"),
) -> dict[str, dict[str, Any]]:
    """accuracy_and_loss of `model` on each split's `indices` rows."""
    return {
        split: model_accuracy_and_loss(
            model, split_rows(data, split, indices[split]), data.y(split)[indices[split]]
        )
        for split in splits
    }


def split_rows(data: PreparedDataset, split: str, idx: np.ndarray) -> np.ndarray:
    """The split's pixels at `idx`: the split itself when `idx` covers it, else those rows."""
    x = data.x(split)
    return x if len(idx) == len(x) else x[idx]  # fancy indexing copies only the sample


def score_model(
    model: Any, data: PreparedDataset, indices: Mapping[str, np.ndarray]
) -> tuple[dict[str, dict[str, Any]], dict[str, np.ndarray]]:
    """split_scores of `model` on every split's `indices` rows, and each row's correctness.

    Returns:
        (split -> split_scores(), split -> per-row bool: the prediction was right).
    """
    scores, correct = {}, {}
    for split in SPLITS:
        idx = indices[split]
        labels = data.y(split)[idx]
        proba = predict_proba(model, split_rows(data, split, idx))
        scores[split] = split_scores(labels, proba, len(data.classes))
        correct[split] = proba.argmax(axis=1) == np.asarray(labels)
    return scores, correct


def training_behaviour(model: Any) -> dict[str, bool]:
    """Which training-only behaviour the model has: dropout, augmentation, an L2 penalty.

    Keras reports the per-epoch train loss and accuracy with these active, so
    they make the history's train curves differ from an inference-mode score.
    """
    import keras

    layers = list(getattr(model, "layers", []))
    return {
        "dropout": any(
            isinstance(layer, keras.layers.Dropout) and float(layer.rate) > 0 for layer in layers
        ),
        "augmentation": any(
            type(layer).__name__.startswith(AUGMENTATION_PREFIX) for layer in layers
        ),
        "l2": any(getattr(layer, "kernel_regularizer", None) is not None for layer in layers),
    }


def accuracy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Share of rows whose highest-probability class is the label (retrain's test score)."""
    probabilities = np.asarray(probabilities)
    if probabilities.ndim != 2 or len(probabilities) != len(labels):
        raise ValueError(
            f"predictions of shape {probabilities.shape} do not match {len(labels)} labels"
        )
    return float(np.mean(np.argmax(probabilities, axis=1) == np.asarray(labels)))


# Up to this many classes evaluation.json holds each split's confusion matrix whole;
# beyond, only its non-zero cells as [true, predicted, count] (1,000 classes would
# be 3 million numbers per variant, 45 MB for seven: git and the report choke).
DENSE_CONFUSION_MAX_CLASSES = 100


def confusion_entry(
    classes: Sequence[str], matrices: Mapping[str, list[list[int]]]
) -> dict[str, Any]:
    """The `confusion` entry: labels, and per split the matrix, dense or sparse."""
    if len(classes) <= DENSE_CONFUSION_MAX_CLASSES:
        return {"labels": list(classes), **matrices}
    sparse = {
        split: [
            [i, j, int(count)]
            for i, row in enumerate(matrix)
            for j, count in enumerate(row)
            if count
        ]
        for split, matrix in matrices.items()
    }
    return {"labels": list(classes), "format": "sparse", **sparse}


def dense_confusion(entry: Mapping[str, Any], split: str) -> list[list[int]]:
    """A split's confusion matrix from a `confusion` entry, dense or sparse."""
    if entry.get("format") != "sparse":
        return entry[split]
    n = len(entry["labels"])
    matrix = [[0] * n for _ in range(n)]
    for i, j, count in entry[split]:
        matrix[i][j] = count
    return matrix
