"""The verdict rules: the facts of one run in, a typed finding out; no words.

Inputs: the run's history (pipeline.curves), the saved model's scores on
train and val (`SplitScores`, measured by evaluate in inference mode), how
the run ended (`RunFacts`), the best scores among the variants compared
(`Reference`) and params.yaml `evaluate`. Outputs: `VerdictFacts` (`assess`:
every number a rule reads) and a `Finding` (`decide`: the verdict and the rule
that gave it). pipeline.verdict_words says them in English.

Two questions are kept apart (Zhang et al. 2017 and Prechelt 1998 behind them):

1. Is the saved model overfit? The saved weights are what the registry
   serves: their train - val accuracy gap, scored by evaluate in inference
   mode. Its overfitting score (`gap_score`, 1 = clear) is the smaller of its
   effect size (Cohen's h, pipeline.noise.effect_size) over
   `clear_overfit_effect`, which makes one threshold fit every accuracy
   level, and its points over `clear_overfit_gap`; it counts when the gap is
   beyond `noise_z` standard errors of the two split sizes (binomial).
2. Does the training setup overfit if left running? The `training` block
   (pipeline.trajectory): the run's own overfitting score, from the curves
   after the val-loss minimum.

Verdict rules, in order of precedence (the first that matches wins):

1. overfitting (memorization), clear: the history's train accuracy climbs more
   than max(`memorization_min_rise`, noise) above chance while val accuracy
   stays within noise of chance (chance = the split's most common class).
   Labels that carry no signal look like this; early stopping restoring an
   epoch-1 model still at chance does not hide it, since the whole history is read.
2. underfitting: the saved model's train accuracy is within
   `underfit_chance_margin` of chance, or it is at least
   `underfit_gap_to_best` points below the best variant on BOTH train and val
   (each beyond noise), and its own gap is not material: a model less
   accurate than another AND overfit is overfitting, and the words say it is
   also behind. Never for a run the epoch limit cut while still improving.
3. overfitting, graded by the larger of the two scores that counts: clear
   from 1, mild from `mild_overfit_effect / clear_overfit_effect`. Neighbouring
   gaps get neighbouring grades, never opposite answers: a 7.7-point gap is
   mild or clear overfitting exactly as 8.1 is, with no cliff at 8.
4. good_fit, tentative: the saved gap reaches the mild level but is within
   the noise of the split sizes ("cannot tell yet": more validation images
   would settle it), or the epoch limit cut a run still improving ("too early
   to tell": train longer).
5. good_fit, clear: everything else.

`model_verdict` answers question 1 alone (memorization and underfitting
included); the best variant and the retrain gate read it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from pipeline.config import EvaluateConfig
from pipeline.curves import Gaps, check_history, compute_gaps
from pipeline.memorization import Memorization, SplitScores, memorization
from pipeline.noise import binomial_se, effect_noise, effect_size, gap_noise
from pipeline.trajectory import RunFacts, Trajectory, run_trajectory

OVERFITTING = "overfitting"
UNDERFITTING = "underfitting"
GOOD_FIT = "good_fit"

# How sure and how strong (`Finding.grade`).
CLEAR = "clear"  # overfitting from score 1; any other verdict with nothing in doubt
MILD = "mild"  # overfitting between the mild and the clear score
TENTATIVE = "tentative"  # good_fit not established: a large gap within noise, or too early
GRADES = (CLEAR, MILD, TENTATIVE)

# Which rule gave the verdict (`Finding.rule`), in their order of precedence.
MEMORIZATION_RULE = "memorization"  # rule 1
UNDERFITTING_RULE = "underfitting"  # rule 2
GAP_AND_RUN_RULE = "gap_and_run"  # rules 3 and 4: the saved model's gap and the run


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Reference:
    """The best saved-model scores among the variants compared (for 'underfitting')."""

    train_accuracy: float
    val_accuracy: float


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
    effect: float  # Cohen's h of train over val
    effect_noise: float  # noise_z standard errors of that h: the score's interval is ± it / clear
    score: float  # `gap_score`: 1 = clear, mild_score = mild
    grade: str | None  # CLEAR, MILD (beyond noise), TENTATIVE (clear but within noise), None
    material: bool  # grade CLEAR or MILD: the saved model is overfit


def gap_score(
    train_accuracy: float, n_train: int, val_accuracy: float, n_val: int, cfg: EvaluateConfig
) -> tuple[float, float]:
    """(effect size, overfitting score) of a train - val gap. The score is the smaller of
    the effect over `clear_overfit_effect` and the gap over `clear_overfit_gap`: clear (1)
    only when the gap is large for its accuracy level AND in accuracy points. The effect
    alone would call 100% vs 97.4% on 10,000 images clear (h 0.30: 130 times the errors);
    points alone would miss that 8 points from 99% are worse than 8 from 60%."""
    effect = effect_size(train_accuracy, n_train, val_accuracy, n_val)
    gap = train_accuracy - val_accuracy
    return effect, min(effect / cfg.clear_overfit_effect, gap / cfg.clear_overfit_gap)


def gap_grade(score: float, beyond_noise: bool, cfg: EvaluateConfig) -> str | None:
    """The grade of a gap's overfitting score: CLEAR from 1 and MILD from `mild_score`
    when beyond noise; TENTATIVE when it reaches mild within noise (one threshold: at
    `mild_score` the noise decides between "overfitting (mild)" and "cannot tell yet");
    None below."""
    if score < cfg.mild_score:
        return None
    if not beyond_noise:
        return TENTATIVE
    return CLEAR if score >= 1.0 else MILD


def material_gap(
    train_accuracy: float, n_train: int, val_accuracy: float, n_val: int, cfg: EvaluateConfig
) -> bool:
    """A train - val accuracy gap that counts as overfitting: mild or clear and beyond noise.

    The same rule judges a saved model and, in the per-class table, each class.
    """
    gap = train_accuracy - val_accuracy
    noise = gap_noise(train_accuracy, n_train, val_accuracy, n_val, cfg)
    _, score = gap_score(train_accuracy, n_train, val_accuracy, n_val, cfg)
    return gap_grade(score, gap > noise, cfg) in (CLEAR, MILD)


def saved_gap(
    train: SplitScores, val: SplitScores, best_epoch: int, cfg: EvaluateConfig
) -> SavedGap:
    """How far the saved model's gap is: its effect size, score and grade."""
    acc_gap = train.accuracy - val.accuracy
    noise = gap_noise(train.accuracy, train.n, val.accuracy, val.n, cfg)
    effect, score = gap_score(train.accuracy, train.n, val.accuracy, val.n, cfg)
    grade = gap_grade(score, acc_gap > noise, cfg)
    return SavedGap(
        best_epoch=best_epoch,
        train_accuracy=train.accuracy,
        val_accuracy=val.accuracy,
        accuracy=acc_gap,
        noise=noise,
        beyond_noise=acc_gap > noise,
        effect=effect,
        effect_noise=effect_noise(train.n, val.n, cfg),
        score=score,
        grade=grade,
        material=grade in (CLEAR, MILD),
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
            "gap_tentative": self.saved_gap.grade == TENTATIVE,
            "diverged": self.trajectory.diverged,
        }


@dataclass(frozen=True)
class Finding:
    """What the verdict rules concluded about one run."""

    verdict: str  # overall: the saved model and the run together
    model_verdict: str  # the saved model alone (what the registry serves)
    rule: str  # the rule that decided: MEMORIZATION_RULE, UNDERFITTING_RULE, GAP_AND_RUN_RULE
    grade: str = CLEAR  # GRADES: how strong (overfitting) or how settled (good_fit)
    score: float = 0.0  # the overfitting score behind it: max of the saved gap's and the run's
    too_early: bool = False  # tentative because the epoch limit cut a run still improving
    model_grade: str = CLEAR  # the grade of model_verdict (the saved model alone)


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
    saved, run = facts.saved_gap, facts.trajectory
    score = max(saved.score, run.score)  # the label says whether it stands beyond noise
    if facts.memorization.detected:
        # Overfitting, whatever the saved model's gap: nothing learned generalizes.
        return Finding(OVERFITTING, OVERFITTING, MEMORIZATION_RULE, CLEAR, score)
    under = facts.underfitting
    # Behind the best on both splits is underfitting only when its own gap is not material
    # (a variant both less accurate and overfit is overfitting, and its words say it is
    # also behind), and never for a run the epoch limit cut while it still improved:
    # converging more slowly is not underfitting.
    if not run.still_improving and (
        under.near_chance or (under.behind_best and not saved.material)
    ):
        return Finding(UNDERFITTING, UNDERFITTING, UNDERFITTING_RULE, CLEAR, score)
    run_grade = CLEAR if run.score >= 1.0 else MILD if run.diverged else None
    too_early = run.still_improving and saved.grade != TENTATIVE
    if saved.material:
        model_verdict, model_grade = OVERFITTING, str(saved.grade)
    else:
        unsettled = saved.grade == TENTATIVE or too_early
        model_verdict, model_grade = GOOD_FIT, TENTATIVE if unsettled else CLEAR
    grades = {saved.grade, run_grade}
    for grade in (CLEAR, MILD):
        if grade in grades:
            return Finding(
                OVERFITTING, model_verdict, GAP_AND_RUN_RULE, grade, score,
                model_grade=model_grade,
            )  # fmt: skip
    if saved.grade == TENTATIVE or run.still_improving:
        return Finding(
            GOOD_FIT, GOOD_FIT, GAP_AND_RUN_RULE, TENTATIVE, score,
            too_early=too_early, model_grade=model_grade,
        )  # fmt: skip
    return Finding(GOOD_FIT, GOOD_FIT, GAP_AND_RUN_RULE, CLEAR, score)


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
