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
    WIDENING,
    WITHIN_NOISE,
    Trajectory,
    why_not_diverged,
)
from pipeline.verdicts import (
    CLEAR,
    GOOD_FIT,
    MEMORIZATION_RULE,
    MILD,
    OVERFITTING,
    TENTATIVE,
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


def verdict_label(verdict: str, grade: str, too_early: bool = False) -> str:
    """The verdict as every surface shows it (badge, table, MLflow tag): 'overfitting
    (mild)', 'good fit', 'cannot tell yet', 'too early to tell', 'underfitting'. A
    tentative good fit never reads 'good fit'."""
    if verdict == OVERFITTING:
        return f"overfitting ({grade})" if grade in (CLEAR, MILD) else "overfitting"
    if verdict == GOOD_FIT and grade == TENTATIVE:
        return "too early to tell" if too_early else "cannot tell yet"
    return verdict.replace("_", " ")


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
        summary = _fit_summary(variant, facts, finding)
        evidence = _saved_gap_evidence(facts.saved_gap, cfg, finding.too_early)
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
    if facts.saved_gap.material:
        evidence.append(
            f"its own gap is material too ({facts.saved_gap.grade}): it is overfit as well, "
            f"but what it lacks on train ({points(under.train_behind)}) is the larger problem"
        )
    return summary, evidence


def score_words(score: float, effect: float, gap: float, cfg: EvaluateConfig) -> str:
    """'overfitting score 0.86 (the smaller of effect 0.17 / 0.20 and 5.7 / 5.0 points; mild
    from 0.50, clear from 1)'."""
    return (
        f"overfitting score {score:.2f} (the smaller of effect {effect:.2f} / "
        f"{cfg.clear_overfit_effect:.2f} and {gap * 100:.1f} / {cfg.clear_overfit_gap * 100:.1f} "
        f"points; mild from {cfg.mild_score:.2f}, clear from 1)"
    )


def _saved_gap_evidence(saved: SavedGap, cfg: EvaluateConfig, too_early: bool) -> list[str]:
    """How far the saved model's gap is, and what that makes it (nothing final for a run
    cut while still improving)."""
    noise = "beyond noise" if saved.beyond_noise else "within noise"
    head = (
        f"{saved_gap_sentence(saved)}, {noise}; "
        f"{score_words(saved.score, saved.effect, saved.accuracy, cfg)}"
    )
    if saved.grade in (CLEAR, MILD):
        return [f"{head}: the saved model is overfit ({saved.grade})"]
    if saved.grade == TENTATIVE:
        return [f"{head}: cannot tell whether the saved model is overfit"]
    if too_early:
        return [f"{head}: not final, the run was still improving when it was cut"]
    return [f"{head}: the saved model generalizes"]


def _fit_summary(variant: str, facts: VerdictFacts, finding: Finding) -> str:
    """One sentence answering "is it overfitting?" when it neither memorizes nor underfits:
    the finding's verdict and grade, and the reading behind them."""
    saved, t = facts.saved_gap, facts.trajectory
    gap = points(saved.accuracy)
    behind = _behind_words(facts)
    if finding.verdict == OVERFITTING:
        grade = f"overfits, {'clearly' if finding.grade == CLEAR else 'mildly'}"
        if saved.material and t.diverged:
            return (
                f"Yes, `{variant}` {grade}: its saved model's gap is {gap} and its curves part "
                f"from epoch {t.onset_epoch}{behind}."
            )
        if saved.material:
            return f"Yes, `{variant}` {grade}: its saved model's gap is {gap}{behind}."
        if t.reading == WIDENING:
            parted = "its train accuracy kept climbing while val did not"
        else:
            parted = (
                f"its val loss rose {t.val_loss_rise:.3f} nats while the train loss kept falling"
            )
        return (
            f"Yes, `{variant}`'s training {grade}: from epoch {t.onset_epoch} {parted}; the saved "
            f"model (epoch {t.best_epoch}) has a gap of {gap}{behind}."
        )
    if finding.too_early:
        ended = "the epoch limit ended the run" if t.stopped_by == EPOCH_LIMIT else "the run ended"
        return (
            f"Too early to tell: `{variant}` was still improving when {ended} after "
            f"{epochs(t.epochs_run)}; train longer, then judge."
        )
    if finding.grade == TENTATIVE:
        return (
            f"Cannot tell yet: `{variant}`'s gap is {gap}, but that is within the noise of "
            f"{facts.val.n} validation images ({noise_words(saved)}); more validation images "
            "would settle it."
        )
    if t.unstable:
        return (
            f"`{variant}`'s training is unstable: after epoch {t.min_epoch} the train "
            "and val loss both rose (check the learning rate); the saved model (epoch "
            f"{t.best_epoch}) has a gap of {gap}."
        )
    return (
        f"No, `{variant}` generalizes: gap {gap} ({noise_words(saved)}), and its curves did "
        "not part after the best epoch."
    )


def _behind_words(facts: VerdictFacts) -> str:
    """', and it is also behind the best variant on both splits' when it is (an overfit
    variant is never called underfit for that alone)."""
    under = facts.underfitting
    if not under.behind_best:
        return ""
    return (
        f", and it is also {points(under.train_behind)} behind the best variant on train and "
        f"{points(under.val_behind)} on val"
    )


def epochs(n: int) -> str:
    """'1 epoch', '12 epochs'."""
    return f"{n} epoch" if n == 1 else f"{n} epochs"


def trajectory_summary(t: Trajectory, cfg: EvaluateConfig) -> str:
    """How the run behaved after its best epoch, and what ended it (the `training`
    block's `summary`)."""
    stop = {
        EARLY_STOPPING: f"Early stopping ended the run at epoch {t.epochs_run} and restored "
        f"epoch {t.best_epoch}.",
        EPOCH_LIMIT: f"The run used all {epochs(t.epochs_run)}; the weights of epoch "
        f"{t.best_epoch} were kept.",
        UNKNOWN: f"Epoch {t.best_epoch} of {t.epochs_run} was kept.",
    }[t.stopped_by]
    if t.still_improving:
        return (
            f"The val loss was still falling when the run ended after {epochs(t.epochs_run)}: "
            f"more epochs may help. {stop}"
        )
    if t.min_epoch == t.epochs_run or (t.val_loss_rise <= 0 and t.gap_widening <= 0):
        return f"The val loss did not turn up after its minimum (epoch {t.min_epoch}). {stop}"
    curves = (
        f"From epoch {t.min_epoch} (the val-loss minimum, {cfg.smoothing_window}-epoch mean) "
        f"to the end, the accuracy gap moved {signed_points(t.gap_widening)} (effect "
        f"{t.widening_effect:+.2f}, noise ±{t.widening_noise:.2f}) and the val loss rose up to "
        f"{t.val_loss_rise:.3f} nats above its minimum of {t.val_loss_min:.3f} "
        f"({t.noise_z:.1f}x its epoch-to-epoch noise)"
    )
    if t.diverged:
        grade = CLEAR if t.score >= 1.0 else MILD
        return (
            f"{curves}: the run diverged ({grade}, score {t.score:.2f}; overfitting onset at "
            f"epoch {t.onset_epoch}). {stop}"
        )
    return f"{curves}: {_calm_words(why_not_diverged(t, cfg), t, cfg)}. {stop}"


def _calm_words(reason: str, t: Trajectory, cfg: EvaluateConfig) -> str:
    """Why the curves after the minimum are no divergence (`why_not_diverged`), in words."""
    if reason == WITHIN_NOISE:
        return f"within noise (a val-loss rise counts from {cfg.min_noise_z:g}x)"
    if reason == TRAIN_LOSS_ROSE:
        return "while the train loss rose too: unstable training, not overfitting"
    return (
        f"below mild (score {t.score:.2f}; mild from {cfg.mild_score:.2f}: a widening of "
        f"effect {cfg.mild_overfit_effect:.2f} and "
        f"{cfg.mild_score * cfg.clear_overfit_gap * 100:.1f} points, or a val-loss rise of "
        f"{cfg.mild_score * cfg.clear_loss_rise:.2f})"
    )
