"""What a training history says on its own: validated curves, gaps, GL and onset.

Input: a training history (a pandas DataFrame, or a mapping of columns, with
one row per epoch, as in models/<variant>/history.csv). Outputs: numbers and
small frozen dataclasses; no verdict, no words, no I/O.

Definitions (knobs in params.yaml `evaluate`):

- accuracy gap = train accuracy - val accuracy; relative gap = gap / train
  accuracy; loss gap = val loss - train loss.
- Generalization loss (Prechelt 1998, "Early stopping - but when?", the GL
  criterion): GL(t) = 100 * (E_va(t) / E_opt(t) - 1), where E_va is the
  validation loss and E_opt(t) the lowest validation loss up to epoch t.
- Smoothing: GL and onset read the val and train loss averaged over a centred window of
  `smoothing_window` epochs, because a small validation set's loss jumps
  10-30% between epochs and would trip GL on noise alone.
- Onset epoch: the first epoch from which the val loss stays above its
  running minimum by more than `onset_tolerance` (relative) until the last
  epoch, while the train loss keeps falling (train loss at the last epoch is
  below its value at the epoch of that val minimum). None when that never
  happens.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipeline.history import CURVE_COLUMNS

# The columns a diagnosis needs; history.csv has more (pipeline.history).
HISTORY_COLUMNS = CURVE_COLUMNS


# --------------------------------------------------------------------------- history


def check_history(history: pd.DataFrame | Mapping[str, Sequence[float]]) -> pd.DataFrame:
    """A validated copy of a history: required columns, finite, sorted by epoch.

    Raises:
        ValueError: empty history, a missing column, non-finite values, or
            repeated epochs.
    """
    frame = pd.DataFrame(history).copy()
    if frame.empty:
        raise ValueError("history is empty: at least one epoch is needed to diagnose a run")
    if "epoch" not in frame.columns:
        frame["epoch"] = np.arange(1, len(frame) + 1)
    missing = [c for c in HISTORY_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(
            f"history lacks column(s) {missing}; expected {list(HISTORY_COLUMNS)} "
            "(models/<variant>/history.csv)"
        )
    frame = frame.loc[
        :, [*HISTORY_COLUMNS, *[c for c in frame.columns if c not in HISTORY_COLUMNS]]
    ]
    values = frame[list(HISTORY_COLUMNS)].to_numpy(dtype=float)
    if not np.isfinite(values).all():
        bad = frame.loc[~np.isfinite(values).all(axis=1), "epoch"].tolist()
        raise ValueError(f"history has NaN or infinite values at epoch(s) {bad}")
    frame["epoch"] = frame["epoch"].astype(int)
    if frame["epoch"].duplicated().any():
        raise ValueError("history has repeated epochs")
    return frame.sort_values("epoch").reset_index(drop=True)


def best_epoch_of(history: pd.DataFrame) -> int:
    """The epoch with the lowest val loss (what early stopping restores); first on ties."""
    frame = check_history(history)
    return int(frame.loc[frame["val_loss"].idxmin(), "epoch"])


# --------------------------------------------------------------------------- gaps


@dataclass(frozen=True)
class Gaps:
    """Train-vs-val gaps from a history, at the best epoch, the last and the worst."""

    best_epoch: int
    last_epoch: int
    accuracy_best: float
    loss_best: float
    relative_best: float
    accuracy_last: float
    loss_last: float
    relative_last: float
    max_accuracy: float
    max_accuracy_epoch: int


def relative_gap(train_accuracy: float, val_accuracy: float) -> float:
    """(train - val) / train; 0 when train accuracy is 0 (nothing learned, no gap to speak of)."""
    if train_accuracy <= 0:
        return 0.0
    return (train_accuracy - val_accuracy) / train_accuracy


def compute_gaps(history: pd.DataFrame, best_epoch: int | None = None) -> Gaps:
    """Accuracy and loss gaps at the best epoch (default: min val loss) and the last."""
    frame = check_history(history)
    if best_epoch is None:
        best_epoch = best_epoch_of(frame)
    if best_epoch not in set(frame["epoch"]):
        raise ValueError(
            f"best_epoch {best_epoch} is not in the history (epochs "
            f"{frame['epoch'].min()}..{frame['epoch'].max()})"
        )
    acc_gap = frame["accuracy"] - frame["val_accuracy"]
    loss_gap = frame["val_loss"] - frame["loss"]
    best = frame.index[frame["epoch"] == best_epoch][0]
    last = frame.index[-1]
    worst = int(acc_gap.idxmax())
    return Gaps(
        best_epoch=int(best_epoch),
        last_epoch=int(frame.loc[last, "epoch"]),
        accuracy_best=float(acc_gap[best]),
        loss_best=float(loss_gap[best]),
        relative_best=relative_gap(frame.loc[best, "accuracy"], frame.loc[best, "val_accuracy"]),
        accuracy_last=float(acc_gap[last]),
        loss_last=float(loss_gap[last]),
        relative_last=relative_gap(frame.loc[last, "accuracy"], frame.loc[last, "val_accuracy"]),
        max_accuracy=float(acc_gap[worst]),
        max_accuracy_epoch=int(frame.loc[worst, "epoch"]),
    )


# --------------------------------------------------------------------------- GL and onset


def smoothed(values: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average over `window` epochs (1 = unchanged).

    A validation set of a few hundred images gives a val loss that jumps
    10-30% from one epoch to the next; without smoothing, GL and onset fire on
    that noise. The window is centred because the diagnosis is made after the
    run: a trailing window would place the onset late by half a window.
    """
    if window < 1:
        raise ValueError(f"smoothing window must be >= 1, got {window}")
    series = pd.Series(np.asarray(values, dtype=float))
    return series.rolling(window, min_periods=1, center=True).mean().to_numpy()


def generalization_loss(history: pd.DataFrame, window: int = 1) -> np.ndarray:
    """Prechelt's GL(t) = 100 * (E_va(t) / E_opt(t) - 1) for every epoch, in percent.

    E_opt(t) is the lowest val loss up to epoch t. The val loss is first
    smoothed over `window` epochs. A non-positive minimum (a perfect val loss
    of 0) gives GL 0 rather than dividing by zero.
    """
    frame = check_history(history)
    val = smoothed(frame["val_loss"].to_numpy(dtype=float), window)
    running_min = np.minimum.accumulate(val)
    with np.errstate(divide="ignore", invalid="ignore"):
        gl = np.where(running_min > 0, 100.0 * (val / running_min - 1.0), 0.0)
    return gl


@dataclass(frozen=True)
class GeneralizationLoss:
    """The run's worst GL and the facts needed to explain it."""

    max_gl: float
    epoch: int  # epoch of the maximum GL
    min_epoch: int  # epoch of the val-loss minimum it is measured against
    train_loss_change: float  # relative train-loss change from min_epoch to epoch (negative = fell)
    # The rise of the (smoothed) val loss over its minimum, in units of the
    # smoothed curve's own noise; inf for a noiseless curve.
    noise_z: float = math.inf


def smoothed_noise(raw: np.ndarray, smooth: np.ndarray, from_pos: int, window: int) -> float:
    """Epoch-to-epoch noise of a smoothed curve: the raw values' standard deviation
    around it from `from_pos` on (the whole run when that stretch is shorter than
    4 epochs), divided by sqrt(window)."""
    residual = (raw - smooth)[from_pos:] if len(raw) - from_pos >= 4 else raw - smooth
    return float(residual.std()) / math.sqrt(window)


def max_generalization_loss(history: pd.DataFrame, window: int = 1) -> GeneralizationLoss:
    """The largest GL of the (smoothed) run, the train-loss change behind it, and
    how far the rise stands above the val loss's epoch-to-epoch noise.

    The noise is the standard deviation of the raw val loss around its
    smoothed curve from the minimum on (the whole run when that stretch is
    shorter than 4 epochs), divided by sqrt(window) for the smoothed curve.
    """
    frame = check_history(history)
    gl = generalization_loss(frame, window)
    worst = int(np.argmax(gl))
    raw = frame["val_loss"].to_numpy(dtype=float)
    val = smoothed(raw, window)
    min_pos = int(np.argmin(val[: worst + 1]))
    loss = smoothed(frame["loss"].to_numpy(dtype=float), window)
    noise = smoothed_noise(raw, val, min_pos, window)
    rise = float(val[worst] - val[min_pos])
    return GeneralizationLoss(
        max_gl=float(gl[worst]),
        epoch=int(frame.loc[worst, "epoch"]),
        min_epoch=int(frame.loc[min_pos, "epoch"]),
        train_loss_change=_relative_change(loss[min_pos], loss[worst]),
        noise_z=rise / noise if noise > 0 else (math.inf if rise > 0 else 0.0),
    )


def onset_epoch(history: pd.DataFrame, tolerance: float, window: int = 1) -> int | None:
    """First epoch from which val loss stays > (1 + tolerance) x its running minimum.

    Only counted while the train loss keeps falling: the train loss at the last
    epoch must be below its value at the epoch of the val minimum, so a run
    that is merely diverging (train loss rising too) has no overfitting onset.
    Both losses are smoothed over `window` epochs to decide whether the rise
    is sustained; the onset reported is then the epoch after the raw val-loss
    minimum that precedes it. Returns None when there is no such epoch.
    """
    if tolerance < 0:
        raise ValueError(f"onset tolerance must be >= 0, got {tolerance}")
    frame = check_history(history)
    val = smoothed(frame["val_loss"].to_numpy(dtype=float), window)
    loss = smoothed(frame["loss"].to_numpy(dtype=float), window)
    running_min = np.minimum.accumulate(val)
    above = val > running_min * (1.0 + tolerance)
    if not above[-1]:
        return None
    # Walk back from the end over the trailing run of epochs that stay above.
    start = len(above) - 1
    while start > 0 and above[start - 1]:
        start -= 1
    if window > 1 and len(above) - start < window:
        return None  # a rise shorter than the smoothing window is not yet sustained
    min_pos = int(np.argmin(val[: start + 1]))
    if not loss[-1] < loss[min_pos]:
        return None
    if window == 1:
        return int(frame.loc[start, "epoch"])
    # Smoothing decided that the rise is sustained; locate where it began at
    # full resolution: the epoch after the raw val-loss minimum before it.
    raw_val = frame["val_loss"].to_numpy(dtype=float)
    raw_min = int(np.argmin(raw_val[: start + 1]))
    return int(frame.loc[min(raw_min + 1, len(frame) - 1), "epoch"])


def _relative_change(before: float, after: float) -> float:
    if before == 0:
        return 0.0
    return (after - before) / abs(before)
