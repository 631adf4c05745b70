"""history.csv: one row per completed epoch, the train stage's record of its curves.

Columns (HISTORY_COLUMNS): epoch (1-based), loss, accuracy, val_loss,
val_accuracy, learning_rate, epoch_seconds. The train stage writes it to
models/<variant>/, models/learning_curve/<F>/ and its resume state; diagnosis
needs the first five (CURVE_COLUMNS). Pure: no TensorFlow, no MLflow.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path

METRIC_COLUMNS = ("loss", "accuracy", "val_loss", "val_accuracy")
CURVE_COLUMNS = ("epoch", *METRIC_COLUMNS)
HISTORY_COLUMNS = (*CURVE_COLUMNS, "learning_rate", "epoch_seconds")
# Logged to MLflow at each epoch (step = epoch), with the two gaps.
EPOCH_METRICS = (*METRIC_COLUMNS, "learning_rate")


def read_history(path: Path) -> list[dict[str, float]]:
    """history.csv rows as floats (epoch as int); [] when the file is missing."""
    if not path.exists():
        return []
    with path.open(newline="") as handle:
        rows = []
        for raw in csv.DictReader(handle):
            row = {key: float(raw[key]) for key in HISTORY_COLUMNS}
            row["epoch"] = int(row["epoch"])
            rows.append(row)
    return rows


def history_text(rows: Sequence[dict[str, float]]) -> str:
    """The CSV text of `rows`, header first."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(HISTORY_COLUMNS)
    for row in rows:
        # repr round-trips floats exactly, so a resumed run's rows compare equal.
        writer.writerow([row["epoch"], *(repr(float(row[c])) for c in HISTORY_COLUMNS[1:])])
    return buffer.getvalue()


def best_row(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    """The epoch with the lowest val_loss (the first one on ties)."""
    return min(rows, key=lambda row: (row["val_loss"], row["epoch"]))


def first_non_finite(rows: Sequence[dict[str, float]]) -> dict[str, float] | None:
    """The first row whose loss or val_loss is NaN or infinite, if any."""
    for row in rows:
        if not (math.isfinite(row["loss"]) and math.isfinite(row["val_loss"])):
            return row
    return None


def epoch_metrics(row: dict[str, float]) -> dict[str, float]:
    """The per-epoch MLflow metrics of one history row, with the gaps."""
    metrics = {key: float(row[key]) for key in EPOCH_METRICS}
    metrics["gap_accuracy"] = row["accuracy"] - row["val_accuracy"]
    metrics["gap_loss"] = row["val_loss"] - row["loss"]
    return metrics
