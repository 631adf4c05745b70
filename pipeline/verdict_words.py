"""The diagnosis in words: a run's verdict facts in, English sentences out.

Input: the typed facts of pipeline.verdicts (`VerdictFacts`, and the `Finding`
that `decide` drew from them), a `Trajectory` (pipeline.trajectory) and
params.yaml `evaluate` (thresholds quoted in the sentences). Output: the
one-sentence answer to "is it overfitting?", the evidence list and the
`training` block's summary of evaluation.json. No rule is decided here: every
branch reads a fact the rules already settled, and picks its sentence.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.config import EvaluateConfig
from pipeline.trajectory import (
    EARLY_STOPPING,
    EPOCH_LIMIT,
    TRAIN_LOSS_ROSE,
    UNKNOWN,
    WITHIN_NOISE,
    Trajectory,
    why_not_diverged,
)
from pipeline.verdicts import (
    MEMORIZATION_RULE,
    UNDERFITTING_RULE,
    Finding,
    SavedGap,
    VerdictFacts,
)


def points(value: float) -> str:
    """A share as accuracy points: 0.0523 -> '5.2 points'."""
    return f"{value * 100:.1f} points"


def signed_points(value: float) -> str:
    """A change as accuracy points: 0.0523 -> '+5.2 points'."""
    return f"{value * 100:+.1f} points"


@dataclass(frozen=True)
class VerdictWords:
    """One run's diagnosis in words."""

    summary: str  # one sentence answering "is it overfitting?"
    evidence: list[str]  # the numbers behind the verdict, one sentence each
    training: str  # how the run behaved (the `training` block's summary)


def describe(
    variant: str, facts: VerdictFacts, finding: Finding, cfg: EvaluateConfig
) -> VerdictWords:
    """The summary and evidence of the rule that decided, then the run in words."""
    if finding.rule == MEMORIZATION_RULE:
        summary, evidence = _memorizing(variant, facts)
    elif finding.rule == UNDERFITTING_RULE:
        summary, evidence = _underfit(variant, facts, cfg)
    else:
        summary = _fit_summary(variant, facts.saved_gap, facts.trajectory, facts.val.n, cfg)
        evidence = _saved_gap_evidence(facts.saved_gap, cfg)
    training = trajectory_summary(facts.trajectory, cfg)
    return VerdictWords(summary, [*evidence, f"training: {training}"], training)


def noise_words(saved: SavedGap) -> str:
    """The saved gap's noise: '±x points', or 'noise unknown' when the split sizes are."""
    return f"±{points(saved.noise)}" if saved.noise > 0 else "noise unknown"


def saved_gap_sentence(saved: SavedGap) -> str:
    """'the saved model (epoch n) scores train ... vs val ...: gap ... (±...)'."""
    return (
        f"the saved model (epoch {saved.best_epoch}) scores train {saved.train_accuracy:.1%} vs "
        f"val {saved.val_accuracy:.1%}: gap {points(saved.accuracy)} ({noise_words(saved)})"
    )


def _memorizing(variant: str, facts: VerdictFacts) -> tuple[str, list[str]]:
    """Rule 1: the network memorizes (overfitting, whatever the saved model's gap)."""
    memo = facts.memorization
    summary = (
        f"`{variant}` memorizes: train accuracy climbed {memo.train_start:.0%} → "
        f"{memo.train_peak:.0%} while val stayed at chance ({memo.val_peak:.0%}, chance "
        f"{memo.chance_val:.0%}): nothing it learned generalizes, so check the labels."
    )
    evidence = [
        f"memorization: train accuracy {memo.train_start:.0%} → {memo.train_peak:.0%} by epoch "
        f"{memo.train_peak_epoch} (chance {memo.chance_train:.0%}; more than "
        f"{points(memo.train_margin)} above it is beyond noise on {facts.n_train} images), "
        f"val stays {memo.val_peak:.0%} (within {points(memo.val_margin)} of chance on "
        f"{facts.val.n} images)",
        saved_gap_sentence(facts.saved_gap),
    ]
    return summary, evidence


def _underfit(variant: str, facts: VerdictFacts, cfg: EvaluateConfig) -> tuple[str, list[str]]:
    """Rule 2: near chance, or far behind the best variant on both splits."""
    under, train, val = facts.underfitting, facts.train, facts.val
    evidence = []
    if under.near_chance:
        summary = (
            f"`{variant}` underfits: train accuracy {train.accuracy:.1%} is within "
            f"{points(under.chance_margin)} of chance ({under.chance:.1%})."
        )
        evidence.append(
            f"train accuracy {train.accuracy:.1%} is within {points(under.chance_margin)} of "
            f"chance ({under.chance:.1%}, the most common class, {facts.n_classes} classes): the "
            "model has not learned the training set"
        )
    else:
        summary = (
            f"`{variant}` underfits: {points(under.train_behind)} below the best variant on train "
            f"and {points(under.val_behind)} on val."
        )
    if under.behind_best:
        ref = under.reference
        evidence.append(
            f"below the best variant on both splits: train {train.accuracy:.1%} vs "
            f"{ref.train_accuracy:.1%} ({points(under.train_behind)}), val {val.accuracy:.1%} vs "
            f"{ref.val_accuracy:.1%} ({points(under.val_behind)}); each beyond noise and "
            f"≥ {points(cfg.underfit_gap_to_best)}"
        )
    evidence.append(saved_gap_sentence(facts.saved_gap))
    return summary, evidence


def _saved_gap_evidence(saved: SavedGap, cfg: EvaluateConfig) -> list[str]:
    """Whether the saved model is overfit, and a borderline gap flagged."""
    if saved.material:
        return [
            f"{saved_gap_sentence(saved)}, ≥ overfit_gap {points(cfg.overfit_gap)} and beyond "
            "noise: the saved model is overfit"
        ]
    why = f"below overfit_gap {points(cfg.overfit_gap)}" if saved.beyond_noise else "within noise"
    evidence = [f"{saved_gap_sentence(saved)}, {why}: the saved model generalizes"]
    if saved.borderline:
        evidence.append(
            f"borderline: the gap exceeds good_fit_max_gap {points(cfg.good_fit_max_gap)}; "
            "watch it as data or epochs change"
        )
    return evidence


def _fit_summary(
    variant: str, saved: SavedGap, trajectory: Trajectory, n_val: int, cfg: EvaluateConfig
) -> str:
    """One sentence answering "is it overfitting?" when it neither memorizes nor underfits."""
    gap = points(saved.accuracy)
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
    if saved.reaches_overfit_gap:
        return (
            f"Cannot tell yet: `{variant}`'s gap is {gap}, but that is within the "
            f"noise of {n_val} validation images ({noise_words(saved)}); more validation images "
            "would settle it."
        )
    if trajectory.unstable:
        return (
            f"`{variant}`'s training is unstable: after epoch {trajectory.min_epoch} the train "
            "and val loss both rose (check the learning rate); the saved model (epoch "
            f"{trajectory.best_epoch}) has a gap of {gap}."
        )
    return (
        f"No, `{variant}` generalizes: gap {gap} ({noise_words(saved)}), and its val "
        "loss did not turn up materially."
    )


def _share(value: float) -> str:
    return "all of it and more" if value > 1 else f"{value:.1%}"


def trajectory_summary(t: Trajectory, cfg: EvaluateConfig) -> str:
    """How the run behaved after its best epoch, and what ended it (the `training`
    block's `summary`)."""
    stop = {
        EARLY_STOPPING: f"Early stopping ended the run at epoch {t.epochs_run} and restored "
        f"epoch {t.best_epoch}.",
        EPOCH_LIMIT: f"The run used all {t.epochs_run} epochs; the weights of epoch "
        f"{t.best_epoch} were kept.",
        UNKNOWN: f"Epoch {t.best_epoch} of {t.epochs_run} was kept.",
    }[t.stopped_by]
    if t.still_improving:
        return (
            f"The val loss was still at its minimum (epoch {t.min_epoch}) when the run ended "
            f"after {t.epochs_run} epochs: more epochs may help. {stop}"
        )
    if t.val_loss_rise <= 0 or t.peak_epoch == t.min_epoch:
        if t.stopped_by == EARLY_STOPPING and t.min_epoch > t.best_epoch:
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
    return f"{rise}: {_calm_words(why_not_diverged(t, cfg), t, cfg)}. {stop}"


def _calm_words(reason: str, t: Trajectory, cfg: EvaluateConfig) -> str:
    """Why a rise after the minimum is no divergence (`why_not_diverged`), in words."""
    if reason == WITHIN_NOISE:
        return f"within noise ({t.noise_z:.1f}x the epoch-to-epoch noise, < {cfg.min_noise_z:g})"
    if reason == TRAIN_LOSS_ROSE:
        return "while the train loss rose too: unstable training, not memorization"
    return (
        f"immaterial (< {cfg.divergence_share:.0%} of the gain and "
        f"< {cfg.divergence_gap_widening * 100:.0f} points of gap)"
    )
