"""Pure overfitting diagnosis: gaps, onset epoch, verdict, evidence, advice.

No TensorFlow, no files, no MLflow: inputs are a training history (a pandas
DataFrame with one row per epoch, as in models/<variant>/history.csv), the
metrics evaluate measured on the saved model, and `EvaluateConfig`. Outputs
are plain dataclasses and dicts that evaluate writes to reports/.

Definitions (all configurable in params.yaml `evaluate`):

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

Two questions are kept apart (Zhang et al. 2017 and Prechelt 1998 behind them):

1. Is the saved model overfit? The saved weights are what the registry
   serves: their train-val accuracy gap, scored by evaluate in inference mode,
   is material when it is at least `overfit_gap` accuracy points AND beyond
   `noise_z` standard errors of the two split sizes (binomial).
2. Does the training setup overfit if left running? The `training` block:
   the run diverged when, after its minimum, the smoothed val loss climbed
   back by `divergence_share` of what training had gained (or the accuracy
   gap widened by `divergence_gap_widening` points beyond the val noise),
   standing `min_noise_z` above its own epoch-to-epoch noise, while the train
   loss kept falling. A percentage of a tiny loss is never material on its own.

Verdict rules, in order of precedence (the first that matches wins):

1. overfitting (memorization): the history's train accuracy climbs more than
   max(`memorization_min_rise`, noise) above chance while val accuracy stays
   within noise of chance (chance = the split's most common class). Labels
   that carry no signal look like this; early stopping restoring an epoch-1
   model still at chance does not hide it, since the whole history is read.
2. underfitting: the saved model's train accuracy is within
   `underfit_chance_margin` of chance, or it is at least
   `underfit_gap_to_best` points below the best variant on BOTH train and val
   (each beyond noise): over-regularized, or too small, for what this model
   family reaches on this data.
3. overfitting: the saved model's gap is material (question 1), or the run
   diverged materially (question 2).
4. good_fit: everything else. A gap above `good_fit_max_gap` is flagged as
   borderline in the evidence.

`model_verdict` answers question 1 alone (memorization and underfitting
included); the best variant and the retrain gate read it.

Best variant: the highest val accuracy among variants that are neither
underfitting nor memorizing; among those within the noise of the top, a sound
saved model (model_verdict good_fit) first, then the smaller gap. A run that
diverged after the restored epoch never excludes a variant.

Mitigations are ranked by what they measurably did against the reference
variant: val accuracy up beyond the noise of the difference, or the gap down
beyond its noise without losing val accuracy beyond noise. A change inside
the noise is no reason to adopt anything.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from pipeline.config import EvaluateConfig
from pipeline.history import CURVE_COLUMNS

OVERFITTING = "overfitting"
UNDERFITTING = "underfitting"
GOOD_FIT = "good_fit"
# The columns a diagnosis needs; history.csv has more (pipeline.history).
HISTORY_COLUMNS = CURVE_COLUMNS
BASELINE = "baseline"


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


# --------------------------------------------------------------------------- noise


def binomial_se(accuracy: float, n: int) -> float:
    """Standard error of an accuracy measured on `n` images (0 when n is unknown).

    Agresti-Coull: the proportion is shrunk by two successes and two failures
    (p~ = (k + 2) / (n + 4)), so 100% on 269 images still carries about 0.5
    points of noise instead of none, and small samples are not overconfident.
    """
    if n <= 0:
        return 0.0
    shrunk = (accuracy * n + 2.0) / (n + 4.0)
    return math.sqrt(shrunk * (1.0 - shrunk) / (n + 4.0))


def accuracy_ci95(accuracy: float, n: int) -> float:
    """Half-width of the normal-approximation 95% interval of an accuracy on n images.

    With a few hundred validation images this is 1-3 points: differences
    between variants smaller than that are noise, and the advice says so.
    NaN when n is unknown.
    """
    if n <= 0:
        return float("nan")
    return 1.96 * binomial_se(accuracy, n)


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class SplitScores:
    """What evaluate measured on one split with the saved model.

    `n` is the number of images scored (0 = unknown: no noise estimate) and
    `chance` the accuracy of always answering the split's most common class
    (None = 1 / n_classes).
    """

    accuracy: float
    loss: float
    n: int = 0
    chance: float | None = None


@dataclass(frozen=True)
class RunFacts:
    """How the training run ended, from the train stage's metrics.json."""

    best_epoch: int | None = None  # the epoch whose weights were saved
    stopped_early: bool | None = None  # early stopping ended the run (None: unknown)
    n_train: int = 0  # images per training epoch (the history's train accuracy is over them)


@dataclass(frozen=True)
class Reference:
    """The best saved-model scores among the variants compared (for 'underfitting')."""

    train_accuracy: float
    val_accuracy: float


# --------------------------------------------------------------------------- the run


@dataclass(frozen=True)
class Trajectory:
    """How the run behaved after its best epoch: the `training` block of evaluation.json."""

    best_epoch: int  # saved (restored) epoch
    epochs_run: int
    stopped_by: str  # early_stopping | epoch_limit | unknown
    still_improving: bool  # the epoch limit ended a run whose val loss was at its minimum
    diverged: bool  # the val loss turned up materially and beyond noise
    unstable: bool  # val loss rose materially while the train loss rose too
    onset_epoch: int | None
    min_epoch: int  # epoch of the (smoothed) val-loss minimum
    peak_epoch: int  # epoch of the (smoothed) val-loss peak after it
    val_loss_min: float
    val_loss_rise: float  # smoothed peak after the minimum - smoothed minimum
    rise_share: float  # val_loss_rise / (first-epoch val loss - minimum): what was given back
    noise_z: float  # the rise in units of the val loss's epoch-to-epoch noise
    train_loss_fell: bool
    gap_at_best: float  # history accuracy gap (smoothed) at the minimum
    gap_at_peak: float  # ... at the val-loss peak after it
    gap_widening: float  # gap_at_peak - gap_at_best, accuracy points (fraction)
    gap_widening_noise: float  # noise_z x the val split's standard error
    max_generalization_loss: float  # Prechelt's GL in percent, for reference
    summary: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_trajectory(
    history: pd.DataFrame, run: RunFacts, n_val: int, cfg: EvaluateConfig, n_classes: int = 0
) -> Trajectory:
    """Whether and how far the run diverged after its val-loss minimum (no verdict).

    Divergence is material when the smoothed val loss, after its minimum,
    climbs back by at least `divergence_share` of what training had gained
    (first-epoch val loss -> minimum), or the smoothed train-val accuracy gap
    widens by at least `divergence_gap_widening` points beyond the val split's
    noise; and in either case the rise stands `min_noise_z` above the val
    loss's own epoch-to-epoch noise while the train loss kept falling. A
    percentage of a tiny loss (0.04 -> 0.05 is +25%) is not material.
    """
    frame = check_history(history)
    window = cfg.smoothing_window
    best_epoch = run.best_epoch if run.best_epoch in set(frame["epoch"]) else best_epoch_of(frame)
    rise = _val_loss_rise(frame, window, n_classes)
    val_acc_at_min = float(frame["val_accuracy"].iloc[rise.min_pos])
    widening_noise = cfg.noise_z * binomial_se(val_acc_at_min, n_val)
    diverged, unstable = _divergence(rise, widening_noise, cfg)
    onset = _divergence_onset(frame, rise, cfg) if diverged else None
    stopped_by = _stopped_by(run)
    epochs = frame["epoch"].to_numpy()
    trajectory = Trajectory(
        best_epoch=int(best_epoch),
        epochs_run=int(len(frame)),
        stopped_by=stopped_by,
        still_improving=bool(
            stopped_by != "early_stopping" and rise.min_pos >= len(frame) - max(window, 2)
        ),
        diverged=diverged,
        unstable=unstable,
        onset_epoch=onset,
        min_epoch=int(epochs[rise.min_pos]),
        peak_epoch=int(epochs[rise.peak_pos]),
        val_loss_min=rise.val_min,
        val_loss_rise=rise.rise,
        rise_share=rise.share,
        noise_z=rise.noise_z,
        train_loss_fell=rise.train_fell,
        gap_at_best=rise.gap_at_min,
        gap_at_peak=rise.gap_at_peak,
        gap_widening=rise.gap_widening,
        gap_widening_noise=widening_noise,
        max_generalization_loss=float(generalization_loss(frame, window).max()),
        summary="",
    )
    return Trajectory(**{**asdict(trajectory), "summary": _trajectory_words(trajectory, cfg)})


@dataclass(frozen=True)
class _Rise:
    """The smoothed val loss's climb from its minimum to its peak after it, and its context."""

    min_pos: int  # row of the smoothed val-loss minimum
    peak_pos: int  # row of the smoothed val-loss peak from the minimum on
    val_min: float
    rise: float  # smoothed peak - smoothed minimum
    share: float  # rise / what training had gained down to the minimum
    noise_z: float  # rise in units of the val loss's epoch-to-epoch noise
    train_fell: bool  # the smoothed train loss is lower at the peak than at the minimum
    gap_at_min: float  # smoothed train-val accuracy gap at the minimum
    gap_at_peak: float
    gap_widening: float  # gap_at_peak - gap_at_min


def _val_loss_rise(frame: pd.DataFrame, window: int, n_classes: int) -> _Rise:
    """How far the smoothed val loss climbed back after its minimum (see `run_trajectory`)."""
    raw_val = frame["val_loss"].to_numpy(dtype=float)
    val = smoothed(raw_val, window)
    loss = smoothed(frame["loss"].to_numpy(dtype=float), window)
    gap = smoothed((frame["accuracy"] - frame["val_accuracy"]).to_numpy(dtype=float), window)
    min_pos = int(np.argmin(val))
    peak_pos = min_pos + int(np.argmax(val[min_pos:]))
    rise = float(val[peak_pos] - val[min_pos])
    # What training gained: from the loss of a uniform guess over the classes
    # (ln K) to the minimum. Anchoring on the first epoch instead would make a
    # small rise look large on big data, where epoch 1 already does most of the work.
    start = math.log(n_classes) if n_classes >= 2 else float(max(raw_val[0], val[0]))
    gained = float(start - val[min_pos])
    noise = smoothed_noise(raw_val, val, min_pos, window)
    return _Rise(
        min_pos=min_pos,
        peak_pos=peak_pos,
        val_min=float(val[min_pos]),
        rise=rise,
        share=rise / gained if gained > 0 else (math.inf if rise > 0 else 0.0),
        noise_z=rise / noise if noise > 0 else (math.inf if rise > 0 else 0.0),
        train_fell=bool(loss[peak_pos] < loss[min_pos]),
        gap_at_min=float(gap[min_pos]),
        gap_at_peak=float(gap[peak_pos]),
        gap_widening=float(gap[peak_pos] - gap[min_pos]),
    )


def _divergence(rise: _Rise, widening_noise: float, cfg: EvaluateConfig) -> tuple[bool, bool]:
    """(diverged, unstable): a material rise beyond noise, with the train loss falling or not."""
    beyond_noise = rise.rise > 0 and rise.noise_z >= cfg.min_noise_z
    material = rise.share >= cfg.divergence_share or (
        rise.gap_widening >= cfg.divergence_gap_widening and rise.gap_widening > widening_noise
    )
    diverged = bool(beyond_noise and rise.train_fell and material)
    unstable = bool(beyond_noise and not rise.train_fell and material)
    return diverged, unstable


def _divergence_onset(frame: pd.DataFrame, rise: _Rise, cfg: EvaluateConfig) -> int:
    """The overfitting onset of a diverged run: `onset_epoch`, else the epoch after the minimum.

    `onset_epoch` asks that the rise last to the final epoch while divergence
    reads the peak, so a diverged run can lack that onset; it still names
    where its val loss began to climb.
    """
    onset = onset_epoch(frame, cfg.onset_tolerance, cfg.smoothing_window)
    if onset is None:
        epochs = frame["epoch"].to_numpy()
        onset = int(epochs[min(rise.min_pos + 1, len(epochs) - 1)])
    return onset


def _stopped_by(run: RunFacts) -> str:
    """What ended the run: early_stopping, epoch_limit, or unknown."""
    if run.stopped_early is None:
        return "unknown"
    return "early_stopping" if run.stopped_early else "epoch_limit"


def _share(value: float) -> str:
    return "all of it and more" if value > 1 else f"{value:.1%}"


def _trajectory_words(t: Trajectory, cfg: EvaluateConfig) -> str:
    stop = {
        "early_stopping": f"Early stopping ended the run at epoch {t.epochs_run} and restored "
        f"epoch {t.best_epoch}.",
        "epoch_limit": f"The run used all {t.epochs_run} epochs; the weights of epoch "
        f"{t.best_epoch} were kept.",
        "unknown": f"Epoch {t.best_epoch} of {t.epochs_run} was kept.",
    }[t.stopped_by]
    if t.still_improving:
        return (
            f"The val loss was still at its minimum (epoch {t.min_epoch}) when the run ended "
            f"after {t.epochs_run} epochs: more epochs may help. {stop}"
        )
    if t.val_loss_rise <= 0 or t.peak_epoch == t.min_epoch:
        if t.stopped_by == "early_stopping" and t.min_epoch > t.best_epoch:
            # The raw minimum came first; the smoothed curve only drifted within its noise.
            return (
                f"After epoch {t.best_epoch} the val loss stopped improving but did not turn "
                f"up ({cfg.smoothing_window}-epoch mean). {stop}"
            )
        return f"The val loss did not turn up after its minimum (epoch {t.min_epoch}). {stop}"
    rise = (
        f"After epoch {t.min_epoch} the val loss ({cfg.smoothing_window}-epoch mean) rose by "
        f"{t.val_loss_rise:.3g} to epoch {t.peak_epoch}, {_share(t.rise_share)} of what training "
        f"had gained, and the accuracy gap moved {t.gap_widening * 100:+.1f} points"
    )
    if t.diverged:
        return (
            f"{rise}: the run diverged (overfitting onset at epoch {t.onset_epoch}, "
            f"{t.noise_z:.0f}x the val loss's epoch-to-epoch noise). {stop}"
        )
    if t.noise_z < cfg.min_noise_z:
        why = f"within noise ({t.noise_z:.1f}x the epoch-to-epoch noise, < {cfg.min_noise_z:g})"
    elif not t.train_loss_fell:
        why = "while the train loss rose too: unstable training, not memorization"
    else:
        why = (
            f"immaterial (< {cfg.divergence_share:.0%} of the gain and "
            f"< {cfg.divergence_gap_widening * 100:.0f} points of gap)"
        )
    return f"{rise}: {why}. {stop}"


# --------------------------------------------------------------------------- memorization


@dataclass(frozen=True)
class Memorization:
    """Train accuracy climbing far above chance while val accuracy stays at chance."""

    detected: bool
    train_start: float  # history train accuracy at epoch 1
    train_peak: float  # highest (smoothed) history train accuracy
    train_peak_epoch: int
    val_peak: float  # highest (smoothed) history val accuracy
    chance_train: float
    chance_val: float
    train_margin: float  # how far above chance train must climb: max(material, noise)
    val_margin: float  # how close to chance val must stay: noise of the val split

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def memorization(
    history: pd.DataFrame,
    val: SplitScores,
    n_train: int,
    chance_train: float,
    chance_val: float,
    cfg: EvaluateConfig,
) -> Memorization:
    """Did the network learn its training set while learning nothing that generalizes?

    "Above chance" and "at chance" are judged against the binomial noise of
    each split's size at chance level (noise_z standard errors), so 24% on
    1,400 training images is far above a 10% chance while 11% on 300 val
    images is not. The train climb must also be material
    (`memorization_min_rise` points). The whole history is read, so early
    stopping restoring an epoch-1 model still at chance does not hide it.
    """
    frame = check_history(history)
    window = cfg.smoothing_window
    train_acc = smoothed(frame["accuracy"].to_numpy(dtype=float), window)
    val_acc = smoothed(frame["val_accuracy"].to_numpy(dtype=float), window)
    peak = int(np.argmax(train_acc))
    train_margin = max(cfg.memorization_min_rise, cfg.noise_z * binomial_se(chance_train, n_train))
    val_margin = cfg.noise_z * binomial_se(chance_val, val.n) if val.n > 0 else 0.0
    val_peak = float(val_acc.max())
    climbed = train_acc[peak] - chance_train >= train_margin
    # The climb must also open a gap to val at that epoch: a model just starting
    # to learn real signal (train 15%, val 14%) is not memorizing.
    gap_margin = max(
        cfg.memorization_min_rise,
        cfg.noise_z
        * math.hypot(
            binomial_se(float(train_acc[peak]), n_train), binomial_se(float(val_acc[peak]), val.n)
        ),
    )
    opened = train_acc[peak] - val_acc[peak] >= gap_margin
    at_chance = (
        val.n > 0
        and val_peak - chance_val <= val_margin
        and val.accuracy - chance_val <= val_margin
    )
    return Memorization(
        detected=bool(climbed and opened and at_chance),
        train_start=float(frame["accuracy"].iloc[0]),
        train_peak=float(train_acc[peak]),
        train_peak_epoch=int(frame["epoch"].iloc[peak]),
        val_peak=val_peak,
        chance_train=chance_train,
        chance_val=chance_val,
        train_margin=train_margin,
        val_margin=val_margin,
    )


# --------------------------------------------------------------------------- verdict


@dataclass
class Diagnosis:
    """One variant's diagnosis, ready to serialise into evaluation.json."""

    variant: str
    verdict: str  # overall: the saved model and the run together
    model_verdict: str  # the saved model alone (what the registry serves)
    summary: str  # one sentence answering "is it overfitting?"
    evidence: list[str]
    gap: dict[str, Any]
    best_epoch: int
    epochs_run: int
    onset_epoch: int | None
    max_generalization_loss: float
    training: dict[str, Any]
    memorization: dict[str, Any]
    rules: dict[str, bool] = field(default_factory=dict)


def _pts(value: float) -> str:
    return f"{value * 100:.1f} points"


def diagnose(
    variant: str,
    history: pd.DataFrame,
    train: SplitScores,
    val: SplitScores,
    n_classes: int,
    cfg: EvaluateConfig,
    reference: Reference | None = None,
    run: RunFacts | None = None,
) -> Diagnosis:
    """Verdict, summary and evidence for one variant (rules and precedence: module docstring).

    Args:
        history: the variant's per-epoch history.
        train, val: the saved model's scores, measured by evaluate in inference mode.
        n_classes: number of classes; chance defaults to 1 / n_classes.
        reference: the best train and val accuracy among the variants compared;
            None compares the variant with itself only.
        run: how the run ended (best epoch, early stopping, images per epoch).
    """
    _check_scores(train, val, n_classes)
    run = run or RunFacts()
    frame = check_history(history)
    gaps = compute_gaps(frame, run.best_epoch if run.best_epoch in set(frame["epoch"]) else None)
    run = RunFacts(gaps.best_epoch, run.stopped_early, run.n_train or train.n)
    trajectory = run_trajectory(frame, run, val.n, cfg, n_classes)
    chance_train = _chance(train, n_classes)
    memo = memorization(frame, val, run.n_train, chance_train, _chance(val, n_classes), cfg)
    saved = _saved_gap(train, val, gaps.best_epoch, cfg)
    under = _underfitting(train, val, chance_train, reference, cfg)

    # The verdict rules in their order of precedence: the first that matches wins.
    if memo.detected:
        finding = _memorizing(variant, memo, saved, run.n_train, val.n)
    elif under.near_chance or under.behind_best:
        finding = _underfit(variant, under, saved, train, val, n_classes, cfg)
    else:
        finding = _overfit_or_good_fit(variant, saved, trajectory, val.n, cfg)

    return Diagnosis(
        variant=variant,
        verdict=finding.verdict,
        model_verdict=finding.model_verdict,
        summary=finding.summary,
        evidence=[*finding.evidence, f"training: {trajectory.summary}"],
        gap=_gap_record(saved, train, val, gaps),
        best_epoch=gaps.best_epoch,
        epochs_run=int(len(frame)),
        onset_epoch=trajectory.onset_epoch,
        max_generalization_loss=trajectory.max_generalization_loss,
        training=trajectory.to_dict(),
        memorization=memo.to_dict(),
        rules={
            "memorization": memo.detected,
            "near_chance": bool(under.near_chance),
            "behind_best": bool(under.behind_best),
            "gap_material": bool(saved.material),
            "diverged": trajectory.diverged,
        },
    )


def _check_scores(train: SplitScores, val: SplitScores, n_classes: int) -> None:
    """ValueError on fewer than 2 classes or scores that no model can have."""
    if n_classes < 2:
        raise ValueError(f"n_classes must be >= 2, got {n_classes}")
    for name, scores in (("train", train), ("val", val)):
        if not (0.0 <= scores.accuracy <= 1.0) or not math.isfinite(scores.loss):
            raise ValueError(f"{name} scores out of range: {scores}")
        if scores.n < 0:
            raise ValueError(f"{name} n must be >= 0, got {scores.n}")


def _chance(scores: SplitScores, n_classes: int) -> float:
    """The split's chance accuracy: its most common class when known, else 1 / n_classes."""
    return scores.chance if scores.chance is not None else 1.0 / n_classes


@dataclass(frozen=True)
class _SavedGap:
    """The saved model's train-val accuracy gap (question 1) and the words for it."""

    accuracy: float  # train - val accuracy
    noise: float  # noise_z standard errors of the two split sizes
    material: bool  # >= overfit_gap and beyond noise
    noise_words: str  # "±x points" or "noise unknown"
    sentence: str  # "the saved model (epoch n) scores train ... vs val ...: gap ..."


def gap_noise(
    train_accuracy: float, n_train: int, val_accuracy: float, n_val: int, cfg: EvaluateConfig
) -> float:
    """`noise_z` standard errors of a train - val accuracy gap measured on these many images."""
    return cfg.noise_z * math.hypot(
        binomial_se(train_accuracy, n_train), binomial_se(val_accuracy, n_val)
    )


def material_gap(gap: float, noise: float, cfg: EvaluateConfig) -> bool:
    """A train - val accuracy gap that counts: at least `overfit_gap` and beyond its noise.

    The same rule judges a saved model and, in the per-class table, each class.
    """
    return gap >= cfg.overfit_gap and gap > noise


def _saved_gap(
    train: SplitScores, val: SplitScores, best_epoch: int, cfg: EvaluateConfig
) -> _SavedGap:
    """Is the saved model's gap material: at least `overfit_gap` and beyond noise?"""
    acc_gap = train.accuracy - val.accuracy
    noise = gap_noise(train.accuracy, train.n, val.accuracy, val.n, cfg)
    noise_words = f"±{_pts(noise)}" if noise > 0 else "noise unknown"
    return _SavedGap(
        accuracy=acc_gap,
        noise=noise,
        material=material_gap(acc_gap, noise, cfg),
        noise_words=noise_words,
        sentence=f"the saved model (epoch {best_epoch}) scores train {train.accuracy:.1%} vs val "
        f"{val.accuracy:.1%}: gap {_pts(acc_gap)} ({noise_words})",
    )


def _gap_record(
    saved: _SavedGap, train: SplitScores, val: SplitScores, gaps: Gaps
) -> dict[str, Any]:
    """The `gap` block of a diagnosis: the saved model's gaps, then the history's."""
    return {
        "accuracy": saved.accuracy,
        "accuracy_noise": saved.noise,
        "relative": relative_gap(train.accuracy, val.accuracy),
        "loss": val.loss - train.loss,
        "material": bool(saved.material),
        "history_accuracy_best": gaps.accuracy_best,
        "history_loss_best": gaps.loss_best,
        "history_relative_best": gaps.relative_best,
        "history_accuracy_last": gaps.accuracy_last,
        "history_loss_last": gaps.loss_last,
        "history_relative_last": gaps.relative_last,
        "history_max_accuracy": gaps.max_accuracy,
        "history_max_accuracy_epoch": gaps.max_accuracy_epoch,
    }


@dataclass(frozen=True)
class _Underfitting:
    """The underfitting rule's facts: near chance, or behind the best variant on both splits."""

    chance: float  # chance on the train split
    chance_margin: float  # accuracy points above chance that still count as "near"
    near_chance: bool
    reference: Reference
    train_behind: float  # reference train accuracy - this train accuracy
    val_behind: float
    behind_best: bool  # both behind by underfit_gap_to_best and beyond noise


def _underfitting(
    train: SplitScores,
    val: SplitScores,
    chance_train: float,
    reference: Reference | None,
    cfg: EvaluateConfig,
) -> _Underfitting:
    """Rule 2's facts (module docstring): near chance, or far below the best variant."""
    # The margin is a share of the way from chance to 100%: with a 90% majority
    # class, 99% is far from chance though only 9 points above it.
    chance_margin = cfg.underfit_chance_margin * (1.0 - chance_train)
    ref = reference or Reference(train.accuracy, val.accuracy)
    train_behind = ref.train_accuracy - train.accuracy
    val_behind = ref.val_accuracy - val.accuracy
    train_behind_noise = cfg.noise_z * math.hypot(
        binomial_se(train.accuracy, train.n), binomial_se(ref.train_accuracy, train.n)
    )
    val_behind_noise = cfg.noise_z * math.hypot(
        binomial_se(val.accuracy, val.n), binomial_se(ref.val_accuracy, val.n)
    )
    return _Underfitting(
        chance=chance_train,
        chance_margin=chance_margin,
        near_chance=train.accuracy - chance_train <= chance_margin,
        reference=ref,
        train_behind=train_behind,
        val_behind=val_behind,
        behind_best=(
            train_behind >= cfg.underfit_gap_to_best
            and train_behind > train_behind_noise
            and val_behind >= cfg.underfit_gap_to_best
            and val_behind > val_behind_noise
        ),
    )


@dataclass(frozen=True)
class _Finding:
    """What one verdict rule concluded, in words."""

    verdict: str
    model_verdict: str
    summary: str
    evidence: list[str]


def _memorizing(
    variant: str, memo: Memorization, saved: _SavedGap, n_train: int, n_val: int
) -> _Finding:
    """Rule 1: the network memorizes (overfitting, whatever the saved model's gap)."""
    return _Finding(
        verdict=OVERFITTING,
        model_verdict=OVERFITTING,
        summary=(
            f"`{variant}` memorizes: train accuracy climbed {memo.train_start:.0%} → "
            f"{memo.train_peak:.0%} while val stayed at chance ({memo.val_peak:.0%}, chance "
            f"{memo.chance_val:.0%}): nothing it learned generalizes, so check the labels."
        ),
        evidence=[
            f"memorization: train accuracy {memo.train_start:.0%} → {memo.train_peak:.0%} by epoch "
            f"{memo.train_peak_epoch} (chance {memo.chance_train:.0%}; more than "
            f"{_pts(memo.train_margin)} above it is beyond noise on {n_train} images), "
            f"val stays {memo.val_peak:.0%} (within {_pts(memo.val_margin)} of chance on "
            f"{n_val} images)",
            saved.sentence,
        ],
    )


def _underfit(
    variant: str,
    under: _Underfitting,
    saved: _SavedGap,
    train: SplitScores,
    val: SplitScores,
    n_classes: int,
    cfg: EvaluateConfig,
) -> _Finding:
    """Rule 2: near chance, or far behind the best variant on both splits."""
    evidence = []
    if under.near_chance:
        summary = (
            f"`{variant}` underfits: train accuracy {train.accuracy:.1%} is within "
            f"{_pts(under.chance_margin)} of chance ({under.chance:.1%})."
        )
        evidence.append(
            f"train accuracy {train.accuracy:.1%} is within {_pts(under.chance_margin)} of "
            f"chance ({under.chance:.1%}, the most common class, {n_classes} classes): the model "
            "has not learned the training set"
        )
    else:
        summary = (
            f"`{variant}` underfits: {_pts(under.train_behind)} below the best variant on train "
            f"and {_pts(under.val_behind)} on val."
        )
    if under.behind_best:
        ref = under.reference
        evidence.append(
            f"below the best variant on both splits: train {train.accuracy:.1%} vs "
            f"{ref.train_accuracy:.1%} ({_pts(under.train_behind)}), val {val.accuracy:.1%} vs "
            f"{ref.val_accuracy:.1%} ({_pts(under.val_behind)}); each beyond noise and "
            f"≥ {_pts(cfg.underfit_gap_to_best)}"
        )
    evidence.append(saved.sentence)
    return _Finding(UNDERFITTING, UNDERFITTING, summary, evidence)


def _overfit_or_good_fit(
    variant: str, saved: _SavedGap, trajectory: Trajectory, n_val: int, cfg: EvaluateConfig
) -> _Finding:
    """Rules 3 and 4: overfitting when the saved gap is material or the run diverged."""
    model_verdict = OVERFITTING if saved.material else GOOD_FIT
    return _Finding(
        verdict=OVERFITTING if saved.material or trajectory.diverged else GOOD_FIT,
        model_verdict=model_verdict,
        summary=_fit_summary(variant, saved, trajectory, n_val, cfg),
        evidence=_saved_gap_evidence(saved, cfg),
    )


def _saved_gap_evidence(saved: _SavedGap, cfg: EvaluateConfig) -> list[str]:
    """Whether the saved model is overfit, and a borderline gap flagged."""
    if saved.material:
        return [
            f"{saved.sentence}, ≥ overfit_gap {_pts(cfg.overfit_gap)} and beyond noise: the saved "
            "model is overfit"
        ]
    why = (
        "within noise"
        if saved.accuracy <= saved.noise
        else f"below overfit_gap {_pts(cfg.overfit_gap)}"
    )
    evidence = [f"{saved.sentence}, {why}: the saved model generalizes"]
    if cfg.good_fit_max_gap < saved.accuracy:
        evidence.append(
            f"borderline: the gap exceeds good_fit_max_gap {_pts(cfg.good_fit_max_gap)}; "
            "watch it as data or epochs change"
        )
    return evidence


def _fit_summary(
    variant: str, saved: _SavedGap, trajectory: Trajectory, n_val: int, cfg: EvaluateConfig
) -> str:
    """One sentence answering "is it overfitting?" when it neither memorizes nor underfits."""
    gap = _pts(saved.accuracy)
    if saved.material and trajectory.diverged:
        return (
            f"Yes, `{variant}` overfits: its saved model's gap is {gap} and its val "
            f"loss turned up after epoch {trajectory.min_epoch}."
        )
    if saved.material:
        return f"Yes, `{variant}` overfits: its saved model's gap is {gap}."
    if trajectory.diverged:
        return (
            f"Its training overfits: `{variant}`'s val loss turned up materially after epoch "
            f"{trajectory.min_epoch}; the saved model (epoch {trajectory.best_epoch}) has a gap of "
            f"{gap}."
        )
    if saved.accuracy >= cfg.overfit_gap:
        return (
            f"Cannot tell yet: `{variant}`'s gap is {gap}, but that is within the "
            f"noise of {n_val} validation images ({saved.noise_words}); more validation images "
            "would settle it."
        )
    if trajectory.unstable:
        return (
            f"`{variant}`'s training is unstable: after epoch {trajectory.min_epoch} the train "
            "and val loss both rose (check the learning rate); the saved model (epoch "
            f"{trajectory.best_epoch}) has a gap of {gap}."
        )
    return (
        f"No, `{variant}` generalizes: gap {gap} ({saved.noise_words}), and its val "
        "loss did not turn up materially."
    )


# --------------------------------------------------------------------------- comparison


@dataclass(frozen=True)
class VariantSummary:
    """The numbers the comparison needs from one evaluated variant."""

    name: str
    verdict: str
    train_accuracy: float
    val_accuracy: float
    test_accuracy: float
    gap: float  # train - val accuracy of the saved model
    onset_epoch: int | None = None
    n_val: int = 0  # validation images behind val_accuracy (0: unknown, no interval)
    augmented: bool = False  # the variant trains with data augmentation
    model_verdict: str | None = None  # the saved model's own verdict (None: same as verdict)
    n_train: int = 0  # train images behind train_accuracy
    memorizing: bool = False
    # The history's highest (smoothed) train and val accuracy, for memorization's words.
    train_peak: float | None = None
    val_peak: float | None = None
    regularized: bool = False  # dropout, L2 or augmentation on
    # Extra variance of val accuracy and gap from training seeds (0: one seed).
    seed_var_val: float = 0.0
    seed_var_gap: float = 0.0
    # Per-image correctness of the saved model on the val split and on the
    # scored train rows (the same rows for every variant): differences between
    # variants are then paired. None: unknown, the comparison is unpaired.
    val_correct: np.ndarray | None = field(default=None, compare=False, repr=False)
    train_correct: np.ndarray | None = field(default=None, compare=False, repr=False)
    # The run's own behaviour (the `training` block): did it diverge, and how far
    # did the accuracy gap widen after the best epoch, with its noise half-width.
    diverged: bool = False
    gap_widening: float | None = None
    gap_widening_noise: float | None = None

    @property
    def saved_verdict(self) -> str:
        return self.model_verdict or self.verdict


def paired_variance(a: np.ndarray | None, b: np.ndarray | None) -> float | None:
    """Variance of the difference of two accuracies measured on the same images.

    Only the images the two models disagree on carry noise (McNemar's view):
    the variance of the per-image difference over n, divided by n. Floored at
    one disagreement (1/n^2), so two identical models are not infinitely sure.
    None when either vector is missing or they cover different images.
    """
    if a is None or b is None or len(a) != len(b) or len(a) == 0:
        return None
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    n = len(d)
    return max(float(d.var()) / n, 1.0 / n**2)


def difference_ci95(a: VariantSummary, b: VariantSummary) -> float:
    """Half-width of the 95% interval of a.val_accuracy - b.val_accuracy.

    Paired when both carry per-image correctness on the same val images (the
    usual case: every variant is scored on the same split), else as two
    independent samples (conservative). Seed variance, when known, is added.
    """
    if a.n_val <= 0 or b.n_val <= 0:
        return float("nan")
    paired = paired_variance(a.val_correct, b.val_correct)
    if paired is None:
        paired = (
            binomial_se(a.val_accuracy, a.n_val) ** 2 + binomial_se(b.val_accuracy, b.n_val) ** 2
        )
    return 1.96 * math.sqrt(paired + a.seed_var_val + b.seed_var_val)


def gap_difference_ci95(a: VariantSummary, b: VariantSummary) -> float:
    """Half-width of the 95% interval of a.gap - b.gap (train and val noise of both,
    paired per split when the per-image correctness is known)."""
    if a.n_val <= 0 or b.n_val <= 0:
        return float("nan")
    n_train_a = a.n_train or a.n_val
    n_train_b = b.n_train or b.n_val
    val_var = paired_variance(a.val_correct, b.val_correct)
    if val_var is None:
        val_var = (
            binomial_se(a.val_accuracy, a.n_val) ** 2 + binomial_se(b.val_accuracy, b.n_val) ** 2
        )
    train_var = paired_variance(a.train_correct, b.train_correct)
    if train_var is None:
        train_var = (
            binomial_se(a.train_accuracy, n_train_a) ** 2
            + binomial_se(b.train_accuracy, n_train_b) ** 2
        )
    return 1.96 * math.sqrt(val_var + train_var + a.seed_var_gap + b.seed_var_gap)


def reference_variant(names: Sequence[str]) -> str:
    """`baseline` when present, else the first variant in params order."""
    if not names:
        raise ValueError("no variants to compare")
    return BASELINE if BASELINE in names else names[0]


def compare_to_baseline(
    summaries: Sequence[VariantSummary], min_effect: float = 0.0
) -> dict[str, dict[str, Any]]:
    """Each variant's effect vs the reference: deltas of val/test accuracy and gap.

    `delta_val_ci95` and `delta_gap_ci95` are the half-widths of the 95%
    intervals of the differences; `within_noise` says whether the val-accuracy
    difference is inside its interval and `gap_within_noise` the same for the
    gap (always false when the validation size is unknown). `helped` says
    whether the variant measurably helped: val accuracy up beyond noise, or the
    gap down beyond noise without losing val accuracy beyond noise, by at least
    `min_effect` (accuracy points; on millions of images a 0.2-point change is
    beyond noise yet no reason to change anything). An underfit or memorizing
    variant never "helps"; one that helped yet is still overfit is advised as
    a step, not a fix.

    `steadied` is the run-level effect: the reference's run diverged and this
    variant's did not, its accuracy gap widening after the best epoch smaller by
    more than the two runs' noise (and `min_effect`), without losing val accuracy
    beyond noise. The saved models of both are their best epochs, so a
    regularizer's typical effect on a few hundred images per class shows here:
    the run no longer overfits if left running. It also counts as `helped`.
    """
    by_name = {s.name: s for s in summaries}
    ref = by_name[reference_variant([s.name for s in summaries])]
    effects = {}
    for s in summaries:
        delta_val = s.val_accuracy - ref.val_accuracy
        delta_gap = s.gap - ref.gap
        noise = difference_ci95(s, ref)
        gap_noise = gap_difference_ci95(s, ref)
        known = math.isfinite(noise)
        val_up = known and delta_val > noise
        val_down = known and delta_val < -noise
        gap_down = known and delta_gap < -gap_noise
        widening = _widening_difference(s, ref)
        steadied = _steadied(s, ref, widening, min_effect) and not val_down
        sound = s.name != ref.name and s.saved_verdict != UNDERFITTING and not s.memorizing
        effects[s.name] = {
            "reference": ref.name,
            "delta_val_accuracy": delta_val,
            "delta_test_accuracy": s.test_accuracy - ref.test_accuracy,
            "delta_gap": delta_gap,
            "val_accuracy_ci95": accuracy_ci95(s.val_accuracy, s.n_val),
            "delta_val_ci95": noise,
            "delta_gap_ci95": gap_noise,
            "within_noise": bool(known and abs(delta_val) <= noise),
            "gap_within_noise": bool(known and abs(delta_gap) <= gap_noise),
            **widening,
            "steadied": bool(sound and steadied),
            "helped": bool(
                sound
                and (
                    (val_up and delta_val >= min_effect)
                    or (gap_down and -delta_gap >= min_effect and not val_down)
                    or steadied
                )
            ),
        }
    return effects


def _widening_difference(s: VariantSummary, ref: VariantSummary) -> dict[str, float | None]:
    """How much less the gap widened after the best epoch than the reference's, ± noise."""
    if None in (s.gap_widening, ref.gap_widening, s.gap_widening_noise, ref.gap_widening_noise):
        return {"delta_gap_widening": None, "delta_gap_widening_ci95": None}
    return {
        "delta_gap_widening": s.gap_widening - ref.gap_widening,
        # Each noise is already a z-scaled half-width of an independent run.
        "delta_gap_widening_ci95": math.hypot(s.gap_widening_noise, ref.gap_widening_noise),
    }


def _steadied(
    s: VariantSummary, ref: VariantSummary, diff: Mapping[str, float | None], min_effect: float
) -> bool:
    """The reference's run diverged, this one's did not, and its gap widened measurably less
    (`diff`: _widening_difference of the two)."""
    if not ref.diverged or s.diverged or diff["delta_gap_widening"] is None:
        return False
    narrower = -diff["delta_gap_widening"]
    return narrower > diff["delta_gap_widening_ci95"] and narrower >= min_effect


def choose_best(summaries: Sequence[VariantSummary]) -> tuple[str, str]:
    """(best variant, the reason in words): ranks the saved models by what they do on val.

    The highest val accuracy among variants that learned something that
    generalizes (not underfitting, not memorizing); among those within the
    noise of the top (the 95% interval of the difference), a sound saved model
    (model_verdict good_fit) first, then a run that did not diverge, then the
    smaller gap, then the name. A run that diverged after the epoch early
    stopping restored never excludes a variant; it only breaks a tie.
    """
    if not summaries:
        raise ValueError("no variants to choose from")
    usable = [s for s in summaries if s.saved_verdict != UNDERFITTING and not s.memorizing] or list(
        summaries
    )
    top = max(usable, key=lambda s: (s.val_accuracy, -s.gap))

    def tied(s: VariantSummary) -> bool:
        noise = difference_ci95(s, top)
        return s is top or (math.isfinite(noise) and top.val_accuracy - s.val_accuracy <= noise)

    contenders = [s for s in usable if tied(s)]
    best = min(
        contenders,
        key=lambda s: (s.saved_verdict != GOOD_FIT, s.diverged, s.gap, -s.val_accuracy, s.name),
    )
    if all(s.saved_verdict == UNDERFITTING or s.memorizing for s in summaries):
        return best.name, (
            f"{best.name}: no variant learned something that generalizes, so this is simply the "
            f"highest val accuracy ({best.val_accuracy:.1%}); it is {best.saved_verdict}"
        )
    others = [s.name for s in contenders if s is not best]
    unsound = [s for s in contenders if s is not best and s.saved_verdict != GOOD_FIT]
    peers = [s for s in contenders if s is not best and s.saved_verdict == best.saved_verdict]
    if best.saved_verdict == GOOD_FIT and len(unsound) == len(others):
        why = "the only sound saved model among them"
    elif not best.diverged and any(s.diverged for s in peers):
        why = "a run that does not diverge if left running"
    else:
        why = "the smallest gap"
    tie = (
        f"; {', '.join(others)} within noise of it on val, and {best.name} has {why}"
        if others
        else ""
    )
    caveat = (
        f" (its saved model is {best.saved_verdict}: gap {best.gap:.1%})"
        if best.saved_verdict != GOOD_FIT
        else ""
    )
    return best.name, (
        f"{best.name}: highest val accuracy ({best.val_accuracy:.1%}) among variants that are "
        f"neither underfitting nor memorizing{tie}{caveat}"
    )


def recommend(
    summaries: Sequence[VariantSummary],
    effects: Mapping[str, Mapping[str, Any]],
    best_variant: str,
    failed_checks: Collection[str] = (),
) -> list[dict[str, str]]:
    """Ranked advice, each item grounded in a number or a failed data check.

    Data problems come first (no model change fixes a leaking split or labels
    that carry no signal), then the mitigations that measurably helped,
    ranked by their effect beyond noise on val accuracy and the gap, then what
    to do about underfit variants.

    Args:
        failed_checks: names of the data checks that failed (catalog.Validation).

    Returns:
        [{"action", "reason", "source", "rank"}], most important first; source
        is "validation", "comparison" or "diagnosis".
    """
    failed = set(failed_checks)
    by_name = {s.name: s for s in summaries}
    ref = by_name[reference_variant([s.name for s in summaries])]
    memorizing = [s for s in summaries if s.memorizing]
    recs = [*_split_advice(failed), *_label_advice(memorizing), *_data_advice(failed)]
    # When labels carry no signal, mitigation, capacity or regularization advice is moot.
    if not memorizing:
        recs.extend(_mitigation_advice(summaries, effects, ref))
        recs.extend(_underfit_advice(summaries, ref))
    recs.append(_deployment_advice(summaries, by_name[best_variant]))
    for rank, rec in enumerate(recs, start=1):
        rec["rank"] = str(rank)
    return recs


def _split_advice(failed: Collection[str]) -> list[dict[str, str]]:
    """Fix a split that leaks or repeats images: every val/test number depends on it."""
    which = [c for c in ("split_leakage", "duplicates") if c in failed]
    if not which:
        return []
    return [
        {
            "action": "Fix the split: remove duplicate and leaked images before trusting any "
            "val/test number",
            "reason": f"data validation failed {', '.join(which)}: identical images in "
            "train and val/test inflate validation accuracy and hide overfitting",
            "source": "validation",
        }
    ]


def _label_advice(memorizing: Sequence[VariantSummary]) -> list[dict[str, str]]:
    """Check the labels when any variant memorizes: no regularizer creates signal."""
    if not memorizing:
        return []
    return [
        {
            "action": "Check the labels: nothing the network learns generalizes, and no "
            "regularizer can create signal that the labels do not carry",
            "reason": ", ".join(
                f"{s.name}: train accuracy climbed to "
                f"{s.train_peak if s.train_peak is not None else s.train_accuracy:.0%}, val "
                f"peaked at {s.val_peak if s.val_peak is not None else s.val_accuracy:.0%}"
                for s in memorizing
            )
            + ": val accuracy stays at chance while the network memorizes the training set "
            "(more capacity or epochs would only memorize faster)",
            "source": "diagnosis",
        }
    ]


def _data_advice(failed: Collection[str]) -> list[dict[str, str]]:
    """Class imbalance and too few images, as the data checks found them."""
    recs = []
    if "class_balance" in failed:
        recs.append(
            {
                "action": "Use class weights (train.class_weight: on, or auto) or collect more "
                "images of the rare classes",
                "reason": "data validation flagged class imbalance (class_balance)",
                "source": "validation",
            }
        )
    if "min_images_per_class" in failed:
        recs.append(
            {
                "action": "Add data or enable augmentation (model.augmentation.enabled: true)",
                "reason": "data validation found classes with too few images "
                "(min_images_per_class)",
                "source": "validation",
            }
        )
    return recs


def _underfit_advice(
    summaries: Sequence[VariantSummary], ref: VariantSummary
) -> list[dict[str, str]]:
    """For each underfit variant: regularize less (when the reference fits), else grow it."""
    recs = []
    for s in summaries:
        if s.verdict != UNDERFITTING:
            continue
        if s.regularized and ref.verdict != UNDERFITTING and s.name != ref.name:
            recs.append(
                {
                    "action": f"Regularize `{s.name}` less (or drop it): it is over-regularized",
                    "reason": f"{s.name} reaches train {s.train_accuracy:.1%} and val "
                    f"{s.val_accuracy:.1%}, far below what this model family reaches here",
                    "source": "diagnosis",
                }
            )
        else:
            recs.append(
                {
                    "action": f"Give `{s.name}` more capacity or more epochs (or less "
                    "regularisation)",
                    "reason": f"{s.name} is underfitting: train accuracy {s.train_accuracy:.1%}",
                    "source": "diagnosis",
                }
            )
    return recs


def _deployment_advice(summaries: Sequence[VariantSummary], best: VariantSummary) -> dict[str, str]:
    """Use the best variant, or do not deploy it when no variant generalizes."""
    nothing_generalizes = all(s.saved_verdict == UNDERFITTING or s.memorizing for s in summaries)
    return {
        "action": (
            f"Do not deploy `{best.name}`: no variant generalizes (it is registered as "
            "challenger for the record only)"
            if nothing_generalizes
            else f"Use `{best.name}` (registered as challenger)"
        ),
        "reason": f"{best.name}'s saved model is {best.saved_verdict} with val accuracy "
        f"{best.val_accuracy:.1%}, test accuracy {best.test_accuracy:.1%}, gap {best.gap:.1%}",
        "source": "comparison",
    }


# At most this many mitigations are recommended: beyond that the list stops reading as advice.
MAX_MITIGATIONS = 3


def _mitigation_advice(
    summaries: Sequence[VariantSummary],
    effects: Mapping[str, Mapping[str, Any]],
    ref: VariantSummary,
) -> list[dict[str, str]]:
    """Mitigations that measurably helped, ranked by effect beyond noise; or that none did."""
    helped = [s for s in summaries if effects[s.name].get("helped")]
    ranked = sorted(helped, key=lambda s: _mitigation_rank(effects[s.name], s.name))
    recs = [_adopt_advice(s, effects[s.name], ref) for s in ranked[:MAX_MITIGATIONS]]
    if not recs and len(summaries) > 1:
        recs.append(_no_mitigation_advice(summaries, effects, ref))
    return recs


def _mitigation_rank(eff: Mapping[str, Any], name: str) -> tuple[float, float, str]:
    """Sort key, strongest first: total excess over noise, then val accuracy gained, then name."""
    # Excess over the noise band, in points, on val accuracy (up) and gap (down).
    val_excess = max(0.0, eff["delta_val_accuracy"] - eff["delta_val_ci95"])
    gap_excess = max(0.0, -eff["delta_gap"] - eff["delta_gap_ci95"])
    run_excess = (
        max(0.0, -eff["delta_gap_widening"] - eff["delta_gap_widening_ci95"])
        if eff.get("steadied")
        else 0.0
    )
    return (-(val_excess + gap_excess + run_excess), -eff["delta_val_accuracy"], name)


def _adopt_advice(s: VariantSummary, eff: Mapping[str, Any], ref: VariantSummary) -> dict[str, str]:
    """Adopt (or consider) one mitigation, with its effects and their noise."""
    verb = "Adopt" if ref.verdict == OVERFITTING else "Consider"
    still = (
        ", and strengthen or combine it: its own saved model is still overfit"
        if s.saved_verdict == OVERFITTING
        else ""
    )
    steadied = ""
    if eff.get("steadied"):
        steadied = (
            f"its run no longer overfits if left running: after its best epoch the gap "
            f"widened {_signed_pts(s.gap_widening)} vs {_signed_pts(ref.gap_widening)} "
            f"(difference {_signed_pts(eff['delta_gap_widening'])}, noise "
            f"±{_pts(eff['delta_gap_widening_ci95'])}); "
        )
    return {
        "action": f"{verb} the `{s.name}` mitigation{still}",
        "reason": f"vs {ref.name} ({ref.verdict}, gap {ref.gap:.1%}): {steadied}"
        f"val accuracy "
        f"{_signed_pts(eff['delta_val_accuracy'])} (noise ±{_pts(eff['delta_val_ci95'])}), "
        f"gap {_signed_pts(eff['delta_gap'])} (noise ±{_pts(eff['delta_gap_ci95'])}), "
        f"test accuracy {_signed_pts(eff['delta_test_accuracy'])}",
        "source": "comparison",
    }


def _no_mitigation_advice(
    summaries: Sequence[VariantSummary],
    effects: Mapping[str, Mapping[str, Any]],
    ref: VariantSummary,
) -> dict[str, str]:
    """No variant helped beyond noise: say so, with the widest val noise among them."""
    known = [effects[s.name] for s in summaries if s.name != ref.name]
    band = max(
        (e["delta_val_ci95"] for e in known if math.isfinite(e["delta_val_ci95"])),
        default=float("nan"),
    )
    noise = f" (val noise up to ±{_pts(band)})" if math.isfinite(band) else ""
    overfitting = ref.verdict == OVERFITTING
    lead = (
        f"{ref.name} is overfitting (gap {ref.gap:.1%})"
        if overfitting
        else f"{ref.name} is {ref.verdict} (gap {ref.gap:.1%})"
    )
    return {
        "action": "No mitigation measurably helped"
        + (": try stronger regularisation, more data, or a smaller model" if overfitting else ""),
        "reason": f"{lead}; no variant raised val accuracy, cut the gap, or stopped "
        "the run from diverging without losing val accuracy, beyond the noise of the "
        f"split sizes{noise}",
        "source": "comparison",
    }


def _signed_pts(value: float) -> str:
    return f"{value * 100:+.1f} points"


def _relative_change(before: float, after: float) -> float:
    if before == 0:
        return 0.0
    return (after - before) / abs(before)
