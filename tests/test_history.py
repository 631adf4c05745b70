"""pipeline.history: the history.csv rows every stage and module shares."""

from __future__ import annotations

import math

from pipeline import diagnosis, history


def _row(epoch, loss=1.0, val_loss=1.0):
    return {"epoch": epoch, "loss": loss, "accuracy": 0.5, "val_loss": val_loss,
            "val_accuracy": 0.25, "learning_rate": 0.001, "epoch_seconds": 0.1}  # fmt: skip


def test_rows_round_trip_exactly(tmp_path):
    rows = [_row(1, loss=0.1 + 0.2), _row(2, val_loss=1 / 3)]
    path = tmp_path / "history.csv"
    path.write_text(history.history_text(rows))
    assert path.read_text().splitlines()[0] == ",".join(history.HISTORY_COLUMNS)
    assert history.read_history(path) == rows
    assert history.read_history(tmp_path / "missing.csv") == []


def test_best_row_and_first_non_finite():
    rows = [_row(1, val_loss=0.5), _row(2, val_loss=0.4), _row(3, val_loss=0.4)]
    assert history.best_row(rows)["epoch"] == 2  # the first of a tie
    assert history.first_non_finite(rows) is None
    assert history.first_non_finite([*rows, _row(4, loss=math.nan)])["epoch"] == 4


def test_epoch_metrics_add_the_gaps():
    metrics = history.epoch_metrics(_row(1, loss=0.2, val_loss=0.5))
    assert set(metrics) == {*history.EPOCH_METRICS, "gap_accuracy", "gap_loss"}
    assert metrics["gap_accuracy"] == 0.25 and math.isclose(metrics["gap_loss"], 0.3)


def test_diagnosis_requires_the_history_curve_columns():
    assert diagnosis.HISTORY_COLUMNS == history.CURVE_COLUMNS == history.HISTORY_COLUMNS[:5]
