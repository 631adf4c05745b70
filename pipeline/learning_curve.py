"""Would more data help? The learning curve's numbers and its one-sentence answer.

Pure: no TensorFlow, no files. Input: points measured by training one variant
on nested subsets of the train split (the last point is the full split), each
with the saved model's inference-mode accuracy on the images it trained on and
on the whole validation split. Output: the `learning_curve` block of
reports/evaluation.json.

Statistics (95%, z = 1.96):
- an accuracy on n images: Wilson's score interval, which stays inside [0, 1]
  at the 97-100% accuracies small CNNs reach (the normal approximation gives
  zero width at 100% and upper bounds above 1);
- a difference of two accuracies (the gap train - val; the change of val
  accuracy between two points): Newcombe's hybrid score interval, the
  difference-of-two-binomial-proportions interval built from the two Wilson
  intervals (MOVER). The samples are treated as independent; the val images
  are the same at every point, so this is conservative (wider than needed).
- the change of the gap between the smallest and the full point: MOVER again,
  from the two gaps' intervals.

"Beyond noise" means the interval of the last step (second-largest to full)
excludes zero: that step says whether the curve is still rising where it
matters, at the data size the user has.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

Z95 = 1.96
RISING, FLAT, FALLING = "rising", "flat", "falling"
INCONCLUSIVE = "inconclusive"
# "Flat" claims a plateau: only when the step's interval rules out a gain of
# more than this (1 accuracy point). Otherwise a step within noise is
# inconclusive: absence of evidence, not evidence that more data won't help.
PLATEAU_GAIN = 0.01
SHRINKING, GROWING = "shrinking", "growing"


@dataclass(frozen=True)
class CurvePoint:
    """One training-set size and the saved model's scores.

    Attributes:
        n_train: images the model trained on.
        train_accuracy: inference-mode accuracy on (a sample of) those images.
        val_accuracy: accuracy on the validation split.
        n_val: validation images behind val_accuracy.
        n_train_scored: images behind train_accuracy (evaluate scores a sample
            of a large train split); defaults to n_train.
        mlflow_run_id: the run that trained it, carried into the output.
    """

    n_train: int
    train_accuracy: float
    val_accuracy: float
    n_val: int
    n_train_scored: int | None = None
    mlflow_run_id: str | None = None


def wilson_interval(accuracy: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion observed on n trials."""
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    denom = 1.0 + z * z / n
    centre = (accuracy + z * z / (2 * n)) / denom
    half = z * math.sqrt(accuracy * (1 - accuracy) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def difference_interval(
    a: float, a_ci: tuple[float, float], b: float, b_ci: tuple[float, float]
) -> tuple[float, float]:
    """Interval of a - b from the two estimates' own intervals (MOVER / Newcombe)."""
    d = a - b
    lower = d - math.hypot(a - a_ci[0], b_ci[1] - b)
    upper = d + math.hypot(a_ci[1] - a, b - b_ci[0])
    return lower, upper


def _trend(ci: tuple[float, float], up: str, down: str) -> str:
    if ci[0] > 0:
        return up
    if ci[1] < 0:
        return down
    return FLAT


def _step_trend(ci: tuple[float, float]) -> str:
    trend = _trend(ci, RISING, FALLING)
    if trend == FLAT and ci[1] > PLATEAU_GAIN:
        return INCONCLUSIVE
    return trend


def check_points(points: Sequence[CurvePoint]) -> list[CurvePoint]:
    """The points sorted by n_train; ValueError on anything unusable."""
    if len(points) < 2:
        raise ValueError(f"a learning curve needs at least 2 points, got {len(points)}")
    for p in points:
        if p.n_train <= 0 or p.n_val <= 0 or (p.n_train_scored or p.n_train) <= 0:
            raise ValueError(f"image counts must be positive: {p}")
        for name in ("train_accuracy", "val_accuracy"):
            value = getattr(p, name)
            if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
                raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    ordered = sorted(points, key=lambda p: p.n_train)
    sizes = [p.n_train for p in ordered]
    if len(set(sizes)) != len(sizes):
        raise ValueError(f"two points have the same n_train: {sizes}")
    return ordered


def _percent(n: int, full: int) -> str:
    return f"{100.0 * n / full:.0f}%"


def analyse(points: Sequence[CurvePoint], variant: str = "") -> dict[str, Any]:
    """The learning_curve block of evaluation.json.

    Returns:
        {"variant", "points": [{fraction, n_train, train/val accuracy with
        95% intervals, gap with interval, n_val, n_train_scored,
        mlflow_run_id}], "last_step": {from/to fraction and n, delta_val_accuracy,
        ci95, trend}, "still_rising", "gap_change": {..., trend}, "gap_shrinks",
        "summary", "gap_summary"}; accuracies and deltas are fractions (0-1).

    Raises:
        ValueError: fewer than 2 points, a repeated size, a non-positive count
            or an accuracy outside [0, 1].
    """
    ordered = check_points(points)
    full = ordered[-1].n_train
    rows = [_point_row(p, full) for p in ordered]
    first, before, last = rows[0], rows[-2], rows[-1]
    step = _last_step(before, last)
    gap_change = _gap_change(first, last)
    return {
        "variant": variant,
        "points": rows,
        "last_step": step,
        "still_rising": step["trend"] == RISING,
        "gap_change": gap_change,
        "gap_shrinks": gap_change["trend"] == SHRINKING,
        "summary": step_sentence(step, full),
        "gap_summary": gap_sentence(gap_change, first["gap"], last["gap"], full, first["n_train"]),
    }


def _point_row(p: CurvePoint, full: int) -> dict[str, Any]:
    """One point's accuracies and gap with their 95% intervals; `full` is the largest n_train."""
    n_scored = p.n_train_scored or p.n_train
    train_ci = wilson_interval(p.train_accuracy, n_scored)
    val_ci = wilson_interval(p.val_accuracy, p.n_val)
    return {
        "fraction": p.n_train / full,
        "n_train": p.n_train,
        "train_accuracy": p.train_accuracy,
        "train_ci95": list(train_ci),
        "n_train_scored": n_scored,
        "val_accuracy": p.val_accuracy,
        "val_ci95": list(val_ci),
        "n_val": p.n_val,
        "gap": p.train_accuracy - p.val_accuracy,
        "gap_ci95": list(difference_interval(p.train_accuracy, train_ci, p.val_accuracy, val_ci)),
        "mlflow_run_id": p.mlflow_run_id,
    }


def _last_step(before: dict[str, Any], last: dict[str, Any]) -> dict[str, Any]:
    """The change of val accuracy from the second-largest point to the full one, and its trend."""
    step_ci = difference_interval(
        last["val_accuracy"],
        tuple(last["val_ci95"]),
        before["val_accuracy"],
        tuple(before["val_ci95"]),
    )
    return {
        "from_fraction": before["fraction"],
        "to_fraction": last["fraction"],
        "from_n_train": before["n_train"],
        "to_n_train": last["n_train"],
        "delta_val_accuracy": last["val_accuracy"] - before["val_accuracy"],
        "ci95": list(step_ci),
        "trend": _step_trend(step_ci),
    }


def _gap_change(first: dict[str, Any], last: dict[str, Any]) -> dict[str, Any]:
    """The change of the train-val gap from the smallest point to the full one, and its trend."""
    gap_ci = difference_interval(
        last["gap"], tuple(last["gap_ci95"]), first["gap"], tuple(first["gap_ci95"])
    )
    return {
        "from_fraction": first["fraction"],
        "to_fraction": last["fraction"],
        "delta_gap": last["gap"] - first["gap"],
        "ci95": list(gap_ci),
        "trend": _trend(gap_ci, GROWING, SHRINKING),
    }


def _points(x: float) -> str:
    return f"{100.0 * x:+.1f}"


def _interval(ci: Sequence[float]) -> str:
    return f"95% interval {_points(ci[0])} to {_points(ci[1])}"


def step_sentence(step: dict[str, Any], full: int) -> str:
    """One sentence: is val accuracy still rising between the two largest sizes?"""
    span = (
        f"from {_percent(step['from_n_train'], full)} to {_percent(step['to_n_train'], full)} "
        f"of the training data ({step['from_n_train']} -> {step['to_n_train']} images; "
        f"{_interval(step['ci95'])})"
    )
    delta = _points(step["delta_val_accuracy"])
    if step["trend"] == RISING:
        return (
            f"rising: {delta} points of val accuracy {span}: beyond noise, "
            "more data of the same kind is likely to help"
        )
    if step["trend"] == FALLING:
        return (
            f"falling: {delta} points of val accuracy {span}: beyond noise, the larger "
            "training set did worse; check the added images and the training run "
            "before collecting more of the same"
        )
    if step["trend"] == INCONCLUSIVE:
        return (
            f"inconclusive: {delta} points of val accuracy {span}, within noise: this "
            "validation set cannot tell whether more data would help (the curve may still "
            "be rising; more validation images, or more seeds, would settle it)"
        )
    return (
        f"flat: {delta} points of val accuracy {span}, and the interval rules out a gain of "
        f"more than {100 * PLATEAU_GAIN:.0f} point: more data of the same kind is unlikely "
        "to help much"
    )


def gap_sentence(
    change: dict[str, Any], first_gap: float, last_gap: float, full: int, first_n: int
) -> str:
    """One sentence: does the train-val gap shrink with more data?"""
    span = (
        f"the train-val accuracy gap went from {_points(first_gap)} points at "
        f"{_percent(first_n, full)} of the data to {_points(last_gap)} at 100% "
        f"(change {_points(change['delta_gap'])}, {_interval(change['ci95'])})"
    )
    if change["trend"] == SHRINKING:
        return f"{span}: it shrinks with more data, as expected when overfitting is data-limited"
    if change["trend"] == GROWING:
        return f"{span}: it grows with more data"
    return f"{span}: no change beyond noise"
