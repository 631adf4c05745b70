"""Does the training setup overfit if left running? The run's trajectory, as facts.

Input: a training history (pipeline.curves), how the run ended (`RunFacts`,
from the train stage's metrics.json), the val split's size and params.yaml
`evaluate`. Output: a `Trajectory`, the numbers of evaluation.json's
`training` block; no verdict and no words (pipeline.verdict_words says them).

The run is read as a practitioner reads its curves, from the smoothed val-loss
minimum on: is the train side still improving while the val side has
plateaued or degraded? Two readings, each against the noise of the split
sizes, put on one overfitting score (1 = clear):

- the train - val accuracy gap widening from the minimum to the end of the
  run, scored as a saved gap is (pipeline.verdicts.gap_score: the smaller of
  its effect size over `clear_overfit_effect` and its points over
  `clear_overfit_gap`), counted when the effect is beyond the noise of the two
  splits and the train loss fell: val accuracy stalls while train climbs;
- the val loss's rise above its minimum, in nats, over `clear_loss_rise`,
  counted when it stands `min_noise_z` above the val loss's epoch-to-epoch
  noise and the train loss fell: val degrades. Nats, not a share of the
  minimum: 0.04 -> 0.05 is +25% of a tiny loss but 0.01 nats (the model's
  average probability on the true class down 1%), while 0.5 -> 0.6 is 0.1
  nats (down 10%).

The run diverged when the score reaches `mild_overfit_effect /
clear_overfit_effect` (mild). A rise with the train loss rising too is
unstable training, not overfitting. (The rise used to be weighed as a share of
what training had gained since ln K, which let the easy first epochs drown out
everything after them.)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from pipeline.config import EvaluateConfig
from pipeline.curves import (
    best_epoch_of,
    check_history,
    generalization_loss,
    onset_epoch,
    smoothed,
    smoothed_noise,
)
from pipeline.noise import binomial_se, effect_noise, effect_size

# What ended the run (`Trajectory.stopped_by`).
EARLY_STOPPING = "early_stopping"
EPOCH_LIMIT = "epoch_limit"
UNKNOWN = "unknown"

# Which reading gave the run's score (`Trajectory.reading`).
WIDENING = "gap_widening"  # train accuracy climbed while val stalled
LOSS_RISE = "val_loss_rise"  # val loss rose while the train loss fell

# Why a rise after the val-loss minimum is no divergence (`why_not_diverged`).
WITHIN_NOISE = "within_noise"
TRAIN_LOSS_ROSE = "train_loss_rose"
IMMATERIAL = "immaterial"


@dataclass(frozen=True)
class RunFacts:
    """How the training run ended, from the train stage's metrics.json."""

    best_epoch: int | None = None  # the epoch whose weights were saved
    stopped_early: bool | None = None  # early stopping ended the run (None: unknown)
    n_train: int = 0  # images per training epoch (the history's train accuracy is over them)


@dataclass(frozen=True)
class Trajectory:
    """How the run behaved after its best epoch: the numbers of evaluation.json's `training`
    block (pipeline.verdict_words.trajectory_summary adds its `summary`)."""

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
    rise_relative: float  # val_loss_rise / val_loss_min
    noise_z: float  # the rise in units of the val loss's epoch-to-epoch noise
    train_loss_fell: bool  # the smoothed train loss is lower at the peak than at the minimum
    gap_at_best: float  # history accuracy gap (smoothed) at the minimum
    gap_at_end: float  # ... at the last epoch
    gap_widening: float  # gap_at_end - gap_at_best, accuracy points (fraction)
    gap_widening_noise: float  # noise_z x the val split's standard error (for comparisons)
    widening_effect: float  # the same as Cohen's h: h at the end - h at the minimum
    widening_noise: float  # noise_z standard errors of an h on the history's split sizes
    score: float  # the run's overfitting score (module docstring): 1 = clear, 0 = none
    reading: str | None  # the reading that gave it: WIDENING, LOSS_RISE, None (score 0)
    max_generalization_loss: float  # Prechelt's GL in percent, for reference

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_trajectory(
    history: pd.DataFrame, run: RunFacts, n_val: int, cfg: EvaluateConfig, n_classes: int = 0
) -> Trajectory:
    """Whether and how far the run diverged after its val-loss minimum (no verdict;
    the readings and the score: module docstring)."""
    frame = check_history(history)
    window = cfg.smoothing_window
    best_epoch = run.best_epoch if run.best_epoch in set(frame["epoch"]) else best_epoch_of(frame)
    rise = _val_loss_rise(frame, window, run.n_train, n_val)
    widening_noise = effect_noise(run.n_train, n_val, cfg)
    score, reading = _run_score(rise, widening_noise, cfg)
    diverged = score >= cfg.mild_score
    onset = _divergence_onset(frame, rise, cfg) if diverged else None
    stopped_by = _stopped_by(run)
    epochs = frame["epoch"].to_numpy()
    return Trajectory(
        best_epoch=int(best_epoch),
        epochs_run=int(len(frame)),
        stopped_by=stopped_by,
        still_improving=_still_improving(frame, rise, stopped_by, cfg),
        diverged=diverged,
        unstable=bool(
            not rise.train_fell
            and rise.noise_z >= cfg.min_noise_z
            and rise.rise >= cfg.mild_score * cfg.clear_loss_rise
        ),
        onset_epoch=onset,
        min_epoch=int(epochs[rise.min_pos]),
        peak_epoch=int(epochs[rise.peak_pos]),
        val_loss_min=rise.val_min,
        val_loss_rise=rise.rise,
        rise_relative=rise.relative,
        noise_z=rise.noise_z,
        train_loss_fell=rise.train_fell,
        gap_at_best=rise.gap_at_min,
        gap_at_end=rise.gap_at_end,
        gap_widening=rise.gap_at_end - rise.gap_at_min,
        gap_widening_noise=cfg.noise_z
        * binomial_se(float(frame["val_accuracy"].iloc[rise.min_pos]), n_val),
        widening_effect=rise.widening_effect,
        widening_noise=widening_noise,
        score=score,
        reading=reading,
        max_generalization_loss=float(generalization_loss(frame, window).max()),
    )


def why_not_diverged(t: Trajectory, cfg: EvaluateConfig) -> str:
    """Why a run whose val loss rose after its minimum did not diverge: the rise stands
    within the epoch-to-epoch noise, the train loss rose too (unstable, not overfitting), or
    it is too small to count (IMMATERIAL)."""
    if not t.train_loss_fell and t.noise_z >= cfg.min_noise_z:
        return TRAIN_LOSS_ROSE
    if t.noise_z < cfg.min_noise_z and t.widening_effect <= t.widening_noise:
        return WITHIN_NOISE
    return IMMATERIAL


@dataclass(frozen=True)
class _Rise:
    """The smoothed curves from the val-loss minimum on: the val loss's climb to its peak,
    and the accuracy gap at the minimum and at the end."""

    min_pos: int  # row of the smoothed val-loss minimum
    peak_pos: int  # row of the smoothed val-loss peak from the minimum on
    val_min: float
    rise: float  # smoothed peak - smoothed minimum
    relative: float  # rise / val_min
    noise_z: float  # rise in units of the val loss's epoch-to-epoch noise
    train_fell: bool  # the smoothed train loss is lower at the peak than at the minimum
    train_fell_to_end: bool  # ... at the last epoch than at the minimum
    gap_at_min: float  # smoothed train - val accuracy gap at the minimum
    gap_at_end: float
    widening_effect: float  # Cohen's h of the smoothed accuracies: at the end - at the minimum


def _val_loss_rise(frame: pd.DataFrame, window: int, n_train: int, n_val: int) -> _Rise:
    """The smoothed curves after the val-loss minimum (see `run_trajectory`)."""
    raw_val = frame["val_loss"].to_numpy(dtype=float)
    val = smoothed(raw_val, window)
    loss = smoothed(frame["loss"].to_numpy(dtype=float), window)
    train_acc = smoothed(frame["accuracy"].to_numpy(dtype=float), window)
    val_acc = smoothed(frame["val_accuracy"].to_numpy(dtype=float), window)
    min_pos = int(np.argmin(val))
    peak_pos = min_pos + int(np.argmax(val[min_pos:]))
    end = len(val) - 1
    rise = float(val[peak_pos] - val[min_pos])
    noise = smoothed_noise(raw_val, val, min_pos, window)

    def h(pos: int) -> float:
        return effect_size(float(train_acc[pos]), n_train, float(val_acc[pos]), n_val)

    return _Rise(
        min_pos=min_pos,
        peak_pos=peak_pos,
        val_min=float(val[min_pos]),
        rise=rise,
        relative=rise / float(val[min_pos]) if val[min_pos] > 0 else 0.0,
        noise_z=rise / noise if noise > 0 else (math.inf if rise > 0 else 0.0),
        train_fell=bool(loss[peak_pos] < loss[min_pos]),
        train_fell_to_end=bool(loss[end] < loss[min_pos]),
        gap_at_min=float(train_acc[min_pos] - val_acc[min_pos]),
        gap_at_end=float(train_acc[end] - val_acc[end]),
        widening_effect=h(end) - h(min_pos),
    )


def _still_improving(
    frame: pd.DataFrame, rise: _Rise, stopped_by: str, cfg: EvaluateConfig
) -> bool:
    """The epoch limit cut a run still improving: its val loss is at its minimum in the last
    max(window, 2) epochs AND fell over them by at least `onset_tolerance` of itself (what
    counts as a material change of the val loss). A run creeping down by 1% after 100
    epochs has converged: it is not too early to judge it. A one-epoch run has no trend
    to read: too early by definition."""
    if stopped_by == EARLY_STOPPING:
        return False
    if len(frame) < 2:
        return True
    last = max(cfg.smoothing_window, 2)
    if rise.min_pos < len(frame) - last:
        return False
    raw = frame["val_loss"].to_numpy(dtype=float)
    before = raw[max(0, len(raw) - 1 - last)]
    return bool(raw[-1] > 0 and before - raw[-1] >= cfg.onset_tolerance * raw[-1])


def _run_score(rise: _Rise, widening_noise: float, cfg: EvaluateConfig) -> tuple[float, str | None]:
    """The run's overfitting score and the reading that gave it: the larger reading that
    counts (module docstring), in units of its clear threshold; (0, None) when neither does."""
    readings: list[tuple[float, str | None]] = [(0.0, None)]
    if rise.train_fell_to_end and rise.widening_effect > widening_noise:
        widening = rise.gap_at_end - rise.gap_at_min
        score = min(
            rise.widening_effect / cfg.clear_overfit_effect, widening / cfg.clear_overfit_gap
        )
        readings.append((score, WIDENING))
    if rise.train_fell and rise.rise > 0 and rise.noise_z >= cfg.min_noise_z:
        readings.append((rise.rise / cfg.clear_loss_rise, LOSS_RISE))
    return max(readings, key=lambda r: r[0])


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
        return UNKNOWN
    return EARLY_STOPPING if run.stopped_early else EPOCH_LIMIT
