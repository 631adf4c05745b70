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

Verdict rules, in order of precedence (the first that matches wins):

1. underfitting: the train accuracy of the saved model is within
   `underfit_chance_margin` of chance (1 / n_classes) or below, or it is below
   (1 - `underfit_relative_to_best`) x the best variant's train accuracy. A
   model that has not learned its training set cannot be memorising it, so
   this is checked first.
2. overfitting: the relative accuracy gap of the saved model is at least
   `overfit_relative_gap`, or the run's maximum GL reached
   `generalization_loss_threshold` while the train loss was still below its
   value at the val-loss minimum, and the rise is at least `min_noise_z`
   times the smoothed val loss's own epoch-to-epoch noise (a few hundred
   validation images make a 10-20% wobble of a small loss common). The GL
   rule reads the whole history, so early stopping restoring the best epoch
   does not hide a val loss that turned up afterwards.
3. good_fit: everything else. A gap above `good_fit_max_gap` (but below the
   overfitting threshold) is reported in the evidence as borderline.

Best variant (documented rule): the highest val accuracy among variants that
are neither overfitting nor underfitting (ties: smaller gap, then name); when
every variant is, the highest val accuracy overall, and the result says so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from pipeline.config import EvaluateConfig

OVERFITTING = "overfitting"
UNDERFITTING = "underfitting"
GOOD_FIT = "good_fit"
VERDICTS = (OVERFITTING, UNDERFITTING, GOOD_FIT)
HISTORY_COLUMNS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy")
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
    residual = (raw - val)[min_pos:] if len(raw) - min_pos >= 4 else raw - val
    noise = float(residual.std()) / math.sqrt(window)
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


# --------------------------------------------------------------------------- verdict


@dataclass(frozen=True)
class SplitScores:
    """What evaluate measured on one split with the saved model."""

    accuracy: float
    loss: float


@dataclass
class Diagnosis:
    """One variant's diagnosis, ready to serialise into evaluation.json."""

    variant: str
    verdict: str
    evidence: list[str]
    gap: dict[str, Any]
    best_epoch: int
    epochs_run: int
    onset_epoch: int | None
    max_generalization_loss: float
    rules: dict[str, bool] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def diagnose(
    variant: str,
    history: pd.DataFrame,
    train: SplitScores,
    val: SplitScores,
    n_classes: int,
    cfg: EvaluateConfig,
    best_train_accuracy: float | None = None,
    best_epoch: int | None = None,
) -> Diagnosis:
    """Verdict and evidence for one variant (rules and precedence: module docstring).

    Args:
        history: the variant's per-epoch history.
        train, val: accuracy and loss of the saved model (the restored best
            epoch) measured by evaluate in inference mode.
        n_classes: number of classes; chance accuracy is 1 / n_classes.
        best_train_accuracy: the highest train accuracy among all variants
            compared; None compares the variant with itself only.
        best_epoch: the epoch whose weights were saved (metrics.json); default
            the epoch of minimum val loss.
    """
    if n_classes < 2:
        raise ValueError(f"n_classes must be >= 2, got {n_classes}")
    for name, scores in (("train", train), ("val", val)):
        if not (0.0 <= scores.accuracy <= 1.0) or not math.isfinite(scores.loss):
            raise ValueError(f"{name} scores out of range: {scores}")
    frame = check_history(history)
    gaps = compute_gaps(frame, best_epoch)
    gl = max_generalization_loss(frame, cfg.smoothing_window)
    onset = onset_epoch(frame, cfg.onset_tolerance, cfg.smoothing_window)
    if gl.noise_z < cfg.min_noise_z:
        onset = None  # a rise inside the val loss's own noise has no onset either
    chance = 1.0 / n_classes
    reference = max(best_train_accuracy or 0.0, train.accuracy)

    acc_gap = train.accuracy - val.accuracy
    rel_gap = relative_gap(train.accuracy, val.accuracy)
    near_chance = train.accuracy <= chance + cfg.underfit_chance_margin
    behind_best = train.accuracy < (1.0 - cfg.underfit_relative_to_best) * reference
    gap_rule = rel_gap >= cfg.overfit_relative_gap
    gl_rule = (
        gl.max_gl >= cfg.generalization_loss_threshold
        and gl.train_loss_change < 0
        and gl.noise_z >= cfg.min_noise_z
    )

    evidence: list[str] = []
    if near_chance:
        evidence.append(
            f"train accuracy {train.accuracy:.1%} is within {cfg.underfit_chance_margin:.0%} of "
            f"chance ({chance:.1%} for {n_classes} classes): the model has not learned the "
            "training set"
        )
    if behind_best:
        evidence.append(
            f"train accuracy {train.accuracy:.1%} is more than {cfg.underfit_relative_to_best:.0%} "
            f"below the best variant's {reference:.1%}"
        )
    if gap_rule:
        evidence.append(
            f"train accuracy {train.accuracy:.1%} vs val {val.accuracy:.1%}: relative gap "
            f"{rel_gap:.1%} >= overfit_relative_gap {cfg.overfit_relative_gap:.0%}"
        )
    if gl_rule:
        evidence.append(
            f"val loss ({cfg.smoothing_window}-epoch mean) rose {gl.max_gl:.0f}% above its "
            f"minimum (epoch {gl.min_epoch}) by epoch {gl.epoch} while train loss fell "
            f"{-gl.train_loss_change:.0%} (generalization loss GL >= "
            f"{cfg.generalization_loss_threshold:g})"
        )
    elif gl.max_gl >= cfg.generalization_loss_threshold and gl.noise_z < cfg.min_noise_z:
        evidence.append(
            f"val loss ({cfg.smoothing_window}-epoch mean) rose {gl.max_gl:.0f}% above its "
            f"minimum by epoch {gl.epoch}, but only {gl.noise_z:.1f}x its epoch-to-epoch noise "
            f"(< min_noise_z {cfg.min_noise_z:g}): too small to call on this validation set"
        )
    elif gl.max_gl >= cfg.generalization_loss_threshold:
        evidence.append(
            f"val loss ({cfg.smoothing_window}-epoch mean) rose {gl.max_gl:.0f}% above its "
            f"minimum by epoch {gl.epoch}, but train loss rose too "
            f"({gl.train_loss_change:+.0%}): unstable training, not memorisation"
        )
    if onset is not None:
        evidence.append(
            f"overfitting onset at epoch {onset}: val loss stayed more than "
            f"{cfg.onset_tolerance:.0%} above its running minimum from then on"
        )

    if near_chance or behind_best:
        verdict = UNDERFITTING
    elif gap_rule or gl_rule:
        verdict = OVERFITTING
    else:
        verdict = GOOD_FIT
        gl_note = (
            f"max GL {gl.max_gl:.1f} < {cfg.generalization_loss_threshold:g}"
            if gl.max_gl < cfg.generalization_loss_threshold
            else f"max GL {gl.max_gl:.1f}, not a sustained divergence (see above)"
        )
        evidence.append(
            f"train {train.accuracy:.1%} vs val {val.accuracy:.1%} (relative gap {rel_gap:.1%} < "
            f"{cfg.overfit_relative_gap:.0%}); {gl_note}"
        )
        if acc_gap > cfg.good_fit_max_gap:
            evidence.append(
                f"borderline: accuracy gap {acc_gap:.1%} exceeds good_fit_max_gap "
                f"{cfg.good_fit_max_gap:.0%}; watch it as data or epochs change"
            )

    return Diagnosis(
        variant=variant,
        verdict=verdict,
        evidence=evidence,
        gap={
            "accuracy": acc_gap,
            "relative": rel_gap,
            "loss": val.loss - train.loss,
            "history_accuracy_best": gaps.accuracy_best,
            "history_loss_best": gaps.loss_best,
            "history_relative_best": gaps.relative_best,
            "history_accuracy_last": gaps.accuracy_last,
            "history_loss_last": gaps.loss_last,
            "history_relative_last": gaps.relative_last,
            "history_max_accuracy": gaps.max_accuracy,
            "history_max_accuracy_epoch": gaps.max_accuracy_epoch,
        },
        best_epoch=gaps.best_epoch,
        epochs_run=int(len(frame)),
        onset_epoch=onset,
        max_generalization_loss=gl.max_gl,
        rules={
            "near_chance": bool(near_chance),
            "behind_best": bool(behind_best),
            "relative_gap": bool(gap_rule),
            "generalization_loss": bool(gl_rule),
        },
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


def accuracy_ci95(accuracy: float, n: int) -> float:
    """Half-width of the normal-approximation 95% interval of an accuracy on n images.

    With a few hundred validation images this is 1-3 points: differences
    between variants smaller than that are noise, and the advice says so.
    """
    if n <= 0:
        return float("nan")
    return 1.96 * math.sqrt(max(accuracy * (1.0 - accuracy), 0.25 / n) / n)


def difference_ci95(a: VariantSummary, b: VariantSummary) -> float:
    """Half-width of the 95% interval of a.val_accuracy - b.val_accuracy.

    Treats the two as independent samples, which overstates the noise a little
    for two models scored on the same images: conservative on purpose.
    """
    if a.n_val <= 0 or b.n_val <= 0:
        return float("nan")
    return math.hypot(
        accuracy_ci95(a.val_accuracy, a.n_val), accuracy_ci95(b.val_accuracy, b.n_val)
    )


def reference_variant(names: Sequence[str]) -> str:
    """`baseline` when present, else the first variant in params order."""
    if not names:
        raise ValueError("no variants to compare")
    return BASELINE if BASELINE in names else names[0]


def compare_to_baseline(summaries: Sequence[VariantSummary]) -> dict[str, dict[str, Any]]:
    """Each variant's effect vs the reference: deltas of val/test accuracy and gap.

    `delta_val_ci95` is the half-width of the 95% interval of the val-accuracy
    difference, and `within_noise` says whether the difference is inside it
    (always false when the validation size is unknown).
    """
    by_name = {s.name: s for s in summaries}
    ref = by_name[reference_variant([s.name for s in summaries])]
    effects = {}
    for s in summaries:
        delta_val = s.val_accuracy - ref.val_accuracy
        noise = difference_ci95(s, ref)
        effects[s.name] = {
            "reference": ref.name,
            "delta_val_accuracy": delta_val,
            "delta_test_accuracy": s.test_accuracy - ref.test_accuracy,
            "delta_gap": s.gap - ref.gap,
            "val_accuracy_ci95": accuracy_ci95(s.val_accuracy, s.n_val),
            "delta_val_ci95": noise,
            "within_noise": bool(math.isfinite(noise) and abs(delta_val) <= noise),
        }
    return effects


def choose_best(summaries: Sequence[VariantSummary]) -> tuple[str, str]:
    """(best variant, the reason in words); rule in the module docstring."""
    if not summaries:
        raise ValueError("no variants to choose from")
    fit = [s for s in summaries if s.verdict == GOOD_FIT]

    def key(s: VariantSummary) -> tuple[float, float, str]:
        return (-s.val_accuracy, s.gap, s.name)

    if fit:
        best = min(fit, key=key)
        return best.name, (
            f"{best.name}: highest val accuracy ({best.val_accuracy:.1%}) among variants "
            "diagnosed good_fit"
        )
    best = min(summaries, key=key)
    return best.name, (
        f"{best.name}: no variant was diagnosed good_fit, so this is simply the highest val "
        f"accuracy ({best.val_accuracy:.1%}); it is {best.verdict}"
    )


def recommend(
    summaries: Sequence[VariantSummary],
    effects: Mapping[str, Mapping[str, Any]],
    best_variant: str,
    validation: Mapping[str, Any] | None = None,
) -> list[dict[str, str]]:
    """Ranked advice, each item grounded in a number or a failed data check.

    Data problems come first (no model change fixes a leaking split), then the
    mitigation that closed the gap most, then capacity for underfit variants.

    Returns:
        [{"action", "reason", "source"}], most important first; source is
        "validation", "comparison" or "diagnosis".
    """
    recs: list[dict[str, str]] = []
    failed = _failed_checks(validation or {})
    by_name = {s.name: s for s in summaries}

    if "split_leakage" in failed or "duplicates" in failed:
        which = [c for c in ("split_leakage", "duplicates") if c in failed]
        recs.append(
            {
                "action": "Fix the split: remove duplicate and leaked images before trusting any "
                "val/test number",
                "reason": f"data validation failed {', '.join(which)}: identical images in "
                "train and val/test inflate validation accuracy and hide overfitting",
                "source": "validation",
            }
        )
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

    ref = reference_variant([s.name for s in summaries])
    ref_summary = by_name[ref]
    mitigations = [s for s in summaries if s.name != ref]

    # A mitigation worth adopting closes the gap, is itself a good fit (an
    # underfit variant "closes" the gap by learning nothing), and does not cost
    # validation accuracy beyond the noise of the validation set.
    def not_worse(s: VariantSummary) -> bool:
        eff = effects[s.name]
        return eff["delta_val_accuracy"] >= 0 or bool(eff["within_noise"])

    closing = [
        s
        for s in mitigations
        if effects[s.name]["delta_gap"] < 0 and s.verdict == GOOD_FIT and not_worse(s)
    ]
    if closing:
        top = min(closing, key=lambda s: (effects[s.name]["delta_gap"], s.name))
        eff = effects[top.name]
        noise = (
            f" (val differences under ±{eff['delta_val_ci95']:.1%} are within the noise of "
            f"{top.n_val} validation images)"
            if math.isfinite(eff["delta_val_ci95"])
            else ""
        )
        if ref_summary.verdict == OVERFITTING:
            action = f"Adopt the `{top.name}` mitigation"
            lead = f"{ref} is overfitting (gap {ref_summary.gap:.1%}); {top.name}"
        else:
            action = f"Consider `{top.name}` if a smaller train/val gap matters"
            lead = f"{ref} is {ref_summary.verdict} (gap {ref_summary.gap:.1%}); {top.name}"
        recs.append(
            {
                "action": action,
                "reason": f"{lead} reduced the gap most ({eff['delta_gap']:+.1%}) with val "
                f"accuracy {eff['delta_val_accuracy']:+.1%} and test accuracy "
                f"{eff['delta_test_accuracy']:+.1%} vs {ref}{noise}",
                "source": "comparison",
            }
        )
    elif ref_summary.verdict == OVERFITTING:
        recs.append(
            {
                "action": "No mitigation tried here fixed the overfitting: try stronger "
                "regularisation, more data, or a smaller model",
                "reason": f"{ref} is overfitting (gap {ref_summary.gap:.1%}) and no variant both "
                "reduced the gap and came out good_fit without losing val accuracy",
                "source": "comparison",
            }
        )
    aug = [s for s in mitigations if s.augmented and s.verdict != UNDERFITTING]
    if (
        "min_images_per_class" not in failed
        and ref_summary.verdict == OVERFITTING
        and aug
        and all(effects[s.name]["delta_val_accuracy"] > 0 for s in aug)
    ):
        recs.append(
            {
                "action": "Get more training data (augmentation already helps)",
                "reason": ", ".join(
                    f"{s.name} changed val accuracy by {_delta_val(effects, s.name):+.1%}"
                    for s in aug
                ),
                "source": "comparison",
            }
        )
    for s in summaries:
        if s.verdict == UNDERFITTING:
            recs.append(
                {
                    "action": f"Give `{s.name}` more capacity or more epochs (or less "
                    "regularisation)",
                    "reason": f"{s.name} is underfitting: train accuracy {s.train_accuracy:.1%}",
                    "source": "diagnosis",
                }
            )
    best = by_name[best_variant]
    recs.append(
        {
            "action": f"Use `{best.name}` (registered as challenger)",
            "reason": f"{best.name} is {best.verdict} with val accuracy {best.val_accuracy:.1%}, "
            f"test accuracy {best.test_accuracy:.1%}, gap {best.gap:.1%}",
            "source": "comparison",
        }
    )
    for rank, rec in enumerate(recs, start=1):
        rec["rank"] = str(rank)
    return recs


def _failed_checks(validation: Mapping[str, Any]) -> set[str]:
    failed = set(validation.get("warnings", [])) | set(validation.get("errors", []))
    for check in validation.get("checks", []):
        if isinstance(check, Mapping) and not check.get("success", True):
            failed.add(str(check.get("name")))
    return failed


def _delta_val(effects: Mapping[str, Mapping[str, Any]], name: str) -> float:
    return float(effects[name]["delta_val_accuracy"])


def _relative_change(before: float, after: float) -> float:
    if before == 0:
        return 0.0
    return (after - before) / abs(before)
