"""The verdict rules: the facts of one run in, a typed finding out; no words.

Inputs: the run's history (pipeline.curves), the saved model's scores on
train and val (`SplitScores`, measured by evaluate in inference mode), how
the run ended (`RunFacts`), the best scores among the variants compared
(`Reference`) and params.yaml `evaluate`. Outputs: `VerdictFacts` (`assess`:
every number a rule reads) and a `Finding` (`decide`: the verdict and the rule
that gave it). pipeline.verdict_words says them in English.

Two questions are kept apart (Zhang et al. 2017 and Prechelt 1998 behind them):

1. Is the saved model overfit? The saved weights are what the registry
   serves: their train-val accuracy gap, scored by evaluate in inference mode,
   is material when it is at least `overfit_gap` accuracy points AND beyond
   `noise_z` standard errors of the two split sizes (binomial).
2. Does the training setup overfit if left running? The `training` block
   (pipeline.trajectory): whether the run diverged after its val-loss minimum.

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
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from pipeline.config import EvaluateConfig
from pipeline.curves import Gaps, check_history, compute_gaps, smoothed
from pipeline.noise import binomial_se, gap_noise
from pipeline.trajectory import RunFacts, Trajectory, run_trajectory

OVERFITTING = "overfitting"
UNDERFITTING = "underfitting"
GOOD_FIT = "good_fit"

# Which rule gave the verdict (`Finding.rule`), in their order of precedence.
MEMORIZATION_RULE = "memorization"  # rule 1
UNDERFITTING_RULE = "underfitting"  # rule 2
GAP_AND_RUN_RULE = "gap_and_run"  # rules 3 and 4: the saved model's gap and the run


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
class Reference:
    """The best saved-model scores among the variants compared (for 'underfitting')."""

    train_accuracy: float
    val_accuracy: float


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


# --------------------------------------------------------------------------- saved gap


@dataclass(frozen=True)
class SavedGap:
    """The saved model's train-val accuracy gap (question 1)."""

    best_epoch: int  # the epoch whose weights were saved
    train_accuracy: float
    val_accuracy: float
    accuracy: float  # train - val accuracy
    noise: float  # noise_z standard errors of the two split sizes
    beyond_noise: bool  # accuracy > noise
    reaches_overfit_gap: bool  # accuracy >= overfit_gap (material only when beyond noise too)
    material: bool  # >= overfit_gap and beyond noise
    borderline: bool  # above good_fit_max_gap: flagged in the evidence, whatever the verdict


def material_gap(gap: float, noise: float, cfg: EvaluateConfig) -> bool:
    """A train - val accuracy gap that counts: at least `overfit_gap` and beyond its noise.

    The same rule judges a saved model and, in the per-class table, each class.
    """
    return gap >= cfg.overfit_gap and gap > noise


def saved_gap(
    train: SplitScores, val: SplitScores, best_epoch: int, cfg: EvaluateConfig
) -> SavedGap:
    """Is the saved model's gap material: at least `overfit_gap` and beyond noise?"""
    acc_gap = train.accuracy - val.accuracy
    noise = gap_noise(train.accuracy, train.n, val.accuracy, val.n, cfg)
    return SavedGap(
        best_epoch=best_epoch,
        train_accuracy=train.accuracy,
        val_accuracy=val.accuracy,
        accuracy=acc_gap,
        noise=noise,
        beyond_noise=acc_gap > noise,
        reaches_overfit_gap=acc_gap >= cfg.overfit_gap,
        material=material_gap(acc_gap, noise, cfg),
        borderline=cfg.good_fit_max_gap < acc_gap,
    )


# --------------------------------------------------------------------------- underfitting


@dataclass(frozen=True)
class Underfitting:
    """The underfitting rule's facts: near chance, or behind the best variant on both splits."""

    chance: float  # chance on the train split
    chance_margin: float  # accuracy points above chance that still count as "near"
    near_chance: bool
    reference: Reference
    train_behind: float  # reference train accuracy - this train accuracy
    val_behind: float
    behind_best: bool  # both behind by underfit_gap_to_best and beyond noise


def underfitting(
    train: SplitScores,
    val: SplitScores,
    chance_train: float,
    reference: Reference | None,
    cfg: EvaluateConfig,
) -> Underfitting:
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
    return Underfitting(
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


# --------------------------------------------------------------------------- the verdict


@dataclass(frozen=True)
class VerdictFacts:
    """Everything the verdict rules read about one run (`assess`), and its words say."""

    train: SplitScores
    val: SplitScores
    n_classes: int
    n_train: int  # images per training epoch (the history's train accuracy is over them)
    gaps: Gaps  # the history's gaps, at the saved (best) epoch and the last
    trajectory: Trajectory  # question 2: how the run behaved after its best epoch
    memorization: Memorization  # rule 1
    underfitting: Underfitting  # rule 2
    saved_gap: SavedGap  # question 1, rule 3

    def rules(self) -> dict[str, bool]:
        """Each rule's condition on its own, whichever rule decided (evaluation.json `rules`)."""
        return {
            "memorization": self.memorization.detected,
            "near_chance": bool(self.underfitting.near_chance),
            "behind_best": bool(self.underfitting.behind_best),
            "gap_material": bool(self.saved_gap.material),
            "diverged": self.trajectory.diverged,
        }


@dataclass(frozen=True)
class Finding:
    """What the verdict rules concluded about one run."""

    verdict: str  # overall: the saved model and the run together
    model_verdict: str  # the saved model alone (what the registry serves)
    rule: str  # the rule that decided: MEMORIZATION_RULE, UNDERFITTING_RULE, GAP_AND_RUN_RULE


def assess(
    history: pd.DataFrame,
    train: SplitScores,
    val: SplitScores,
    n_classes: int,
    cfg: EvaluateConfig,
    reference: Reference | None = None,
    run: RunFacts | None = None,
) -> VerdictFacts:
    """The facts every verdict rule reads, for one run (arguments: `pipeline.diagnosis.diagnose`).

    Raises:
        ValueError: fewer than 2 classes, impossible scores, or an unusable history.
    """
    _check_scores(train, val, n_classes)
    run = run or RunFacts()
    frame = check_history(history)
    gaps = compute_gaps(frame, run.best_epoch if run.best_epoch in set(frame["epoch"]) else None)
    run = RunFacts(gaps.best_epoch, run.stopped_early, run.n_train or train.n)
    chance_train = _chance(train, n_classes)
    return VerdictFacts(
        train=train,
        val=val,
        n_classes=n_classes,
        n_train=run.n_train,
        gaps=gaps,
        trajectory=run_trajectory(frame, run, val.n, cfg, n_classes),
        memorization=memorization(
            frame, val, run.n_train, chance_train, _chance(val, n_classes), cfg
        ),
        underfitting=underfitting(train, val, chance_train, reference, cfg),
        saved_gap=saved_gap(train, val, gaps.best_epoch, cfg),
    )


def decide(facts: VerdictFacts) -> Finding:
    """The verdict rules in their order of precedence (module docstring): the first that
    matches wins."""
    if facts.memorization.detected:
        # Overfitting, whatever the saved model's gap: nothing learned generalizes.
        return Finding(OVERFITTING, OVERFITTING, MEMORIZATION_RULE)
    if facts.underfitting.near_chance or facts.underfitting.behind_best:
        return Finding(UNDERFITTING, UNDERFITTING, UNDERFITTING_RULE)
    material, diverged = facts.saved_gap.material, facts.trajectory.diverged
    return Finding(
        verdict=OVERFITTING if material or diverged else GOOD_FIT,
        model_verdict=OVERFITTING if material else GOOD_FIT,
        rule=GAP_AND_RUN_RULE,
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
