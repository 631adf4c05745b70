"""How much an accuracy measured on n images can move by chance alone.

Pure arithmetic, no I/O: the binomial standard error of an accuracy, its 95%
interval, the noise of a train - val gap, the effect size of a gap (Cohen's h)
and its noise, and the variance of a difference of two accuracies scored on
the same images. The diagnosis judges every gap and every difference between
variants against these.
"""

from __future__ import annotations

import math

import numpy as np

from pipeline.config import EvaluateConfig


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


def gap_noise(
    train_accuracy: float, n_train: int, val_accuracy: float, n_val: int, cfg: EvaluateConfig
) -> float:
    """`noise_z` standard errors of a train - val accuracy gap measured on these many images."""
    return cfg.noise_z * math.hypot(
        binomial_se(train_accuracy, n_train), binomial_se(val_accuracy, n_val)
    )


def _shrunk(accuracy: float, n: int) -> float:
    """The accuracy shrunk by two successes and two failures (as `binomial_se`); itself
    when n is unknown."""
    return (accuracy * n + 2.0) / (n + 4.0) if n > 0 else accuracy


def effect_size(a: float, n_a: int, b: float, n_b: int) -> float:
    """Cohen's h of accuracy `a` (on n_a images) over `b` (on n_b): 2 asin sqrt(a) -
    2 asin sqrt(b), each shrunk as in `binomial_se`.

    The arcsine makes an accuracy's binomial noise the same at every level (its
    standard error is about 1 / sqrt(n)), so one threshold means the same at 60% as at
    99%: a gap of 8 points is h 0.16 from 60%, 0.24 from 91% and 0.41 from 99%, where
    the model makes nine times as many errors on new images as on its own. The
    shrinkage keeps 100% on a few hundred images from reading as infinitely far.
    """
    return 2.0 * (math.asin(math.sqrt(_shrunk(a, n_a))) - math.asin(math.sqrt(_shrunk(b, n_b))))


def effect_noise(n_a: int, n_b: int, cfg: EvaluateConfig) -> float:
    """`noise_z` standard errors of an `effect_size` between accuracies on n_a and n_b
    images (a side with unknown n adds nothing, as in `gap_noise`)."""
    variance = sum(1.0 / (n + 4.0) for n in (n_a, n_b) if n > 0)
    return cfg.noise_z * math.sqrt(variance)


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
