"""Scores of a model on prepared pixels, shared by evaluate and the learning curve.

Inputs: a Keras-like model (anything with `predict_on_batch`) and a split's
pixels and labels as the prepared dataset stores them. Outputs: plain dicts;
nothing is written. Importing this module does not import TensorFlow.

Loss is plain cross-entropy of the model in inference mode, without the L2
penalty Keras adds during training, so train and val losses compare like for
like.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.cli import StageError
from pipeline.prepared import MODEL_INPUT_BATCH, predict_in_batches

EPS = 1e-7  # same clipping as Keras' cross-entropy


def predict_proba(model: Any, x: np.ndarray, batch_size: int = MODEL_INPUT_BATCH) -> np.ndarray:
    """Class probabilities in batches; `x` may be a uint8 memmap (cast per batch)."""
    if len(x) == 0:
        raise StageError("cannot evaluate on an empty split")
    return predict_in_batches(model.predict_on_batch, x, batch_size)


def split_scores(y_true: np.ndarray, proba: np.ndarray, n_classes: int) -> dict[str, Any]:
    """Accuracy, cross-entropy, macro precision/recall/F1, per-class arrays, confusion."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    y_true = np.asarray(y_true, dtype=np.int64)
    if proba.shape != (len(y_true), n_classes):
        raise ValueError(f"probabilities shape {proba.shape} != ({len(y_true)}, {n_classes})")
    pred = proba.argmax(axis=1)
    labels = list(range(n_classes))
    picked = np.clip(proba[np.arange(len(y_true)), y_true], EPS, 1.0)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, pred, labels=labels, average=None, zero_division=0
    )
    present = support > 0  # macro over the classes this split has
    return {
        "accuracy": float((pred == y_true).mean()),
        "loss": float(-np.log(picked).mean()),
        "precision": float(precision[present].mean()),
        "recall": float(recall[present].mean()),
        "f1": float(f1[present].mean()),
        "n": int(len(y_true)),
        "_per_class": {
            "precision": precision.tolist(),
            "recall": recall.tolist(),
            "f1": f1.tolist(),
            "support": support.tolist(),
        },
        "_confusion": confusion_matrix(y_true, pred, labels=labels).tolist(),
    }


def accuracy_and_loss(model: Any, x: np.ndarray, y: np.ndarray, n_classes: int) -> dict[str, Any]:
    """{"accuracy", "loss", "n"} of `model` on (x, y), in inference mode."""
    scores = split_scores(y, predict_proba(model, x), n_classes)
    return {key: scores[key] for key in ("accuracy", "loss", "n")}
