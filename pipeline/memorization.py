"""Memorization: a network that learns its training set while learning nothing that
generalizes (verdict rule 1, pipeline.verdicts), as facts; and the saved model's scores on
one split that the rules read (`SplitScores`). No words (pipeline.verdict_words)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from pipeline.config import EvaluateConfig
from pipeline.curves import check_history, smoothed
from pipeline.noise import binomial_se


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
