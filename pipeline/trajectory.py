"""Does the training setup overfit if left running? The run's trajectory, as facts.

Input: a training history (pipeline.curves), how the run ended (`RunFacts`,
from the train stage's metrics.json), the val split's size and params.yaml
`evaluate`. Output: a `Trajectory`, the numbers of evaluation.json's
`training` block; no verdict and no words (pipeline.verdict_words says them).

The run diverged when, after its minimum, the smoothed val loss climbed back
by `divergence_share` of what training had gained (or the accuracy gap
widened by `divergence_gap_widening` points beyond the val noise), standing
`min_noise_z` above its own epoch-to-epoch noise, while the train loss kept
falling. A percentage of a tiny loss is never material on its own.
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
from pipeline.noise import binomial_se

# What ended the run (`Trajectory.stopped_by`).
EARLY_STOPPING = "early_stopping"
EPOCH_LIMIT = "epoch_limit"
UNKNOWN = "unknown"

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
    rise_share: float  # val_loss_rise / (first-epoch val loss - minimum): what was given back
    noise_z: float  # the rise in units of the val loss's epoch-to-epoch noise
    train_loss_fell: bool
    gap_at_best: float  # history accuracy gap (smoothed) at the minimum
    gap_at_peak: float  # ... at the val-loss peak after it
    gap_widening: float  # gap_at_peak - gap_at_best, accuracy points (fraction)
    gap_widening_noise: float  # noise_z x the val split's standard error
    max_generalization_loss: float  # Prechelt's GL in percent, for reference

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
    return Trajectory(
        best_epoch=int(best_epoch),
        epochs_run=int(len(frame)),
        stopped_by=stopped_by,
        still_improving=bool(
            stopped_by != EARLY_STOPPING and rise.min_pos >= len(frame) - max(window, 2)
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
    )


def why_not_diverged(t: Trajectory, cfg: EvaluateConfig) -> str:
    """Why a run whose val loss rose after its minimum did not diverge: the rise stands
    within the epoch-to-epoch noise, the train loss rose too (unstable, not overfitting), or
    it gave back too little (IMMATERIAL)."""
    if t.noise_z < cfg.min_noise_z:
        return WITHIN_NOISE
    if not t.train_loss_fell:
        return TRAIN_LOSS_ROSE
    return IMMATERIAL


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
        return UNKNOWN
    return EARLY_STOPPING if run.stopped_early else EPOCH_LIMIT
