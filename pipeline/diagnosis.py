"""Pure overfitting diagnosis: gaps, onset epoch, verdict, evidence, advice.

No TensorFlow, no files, no MLflow: inputs are a training history (a pandas
DataFrame with one row per epoch, as in models/<variant>/history.csv), the
metrics evaluate measured on the saved model, and `EvaluateConfig`. Outputs
are plain dataclasses and dicts that evaluate writes to reports/.

This module is the public face: `diagnose` joins the rules to their words,
`choose_best` the ranking to its reason, and every name other code imports is
re-exported here. The logic lives apart, numbers in and typed facts out, with
the English in modules of its own (as pipeline.checks and
pipeline.check_sentences are split):

- pipeline.curves: the history checked; gaps, smoothing, Prechelt's GL and the
  onset epoch (their definitions are that module's docstring).
- pipeline.noise: binomial standard errors, 95% intervals, the noise of a gap.
- pipeline.trajectory: does the training setup overfit if left running?
- pipeline.verdicts: is the saved model overfit? The verdict rules and their
  order of precedence (that module's docstring), `assess` and `decide`.
- pipeline.verdict_words: the summary, evidence and training sentences.
- pipeline.comparison: each variant against the reference; the best variant.
- pipeline.advice: the best variant's reason and the ranked recommendations.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd

from pipeline.advice import MAX_MITIGATIONS, best_reason, recommend
from pipeline.comparison import (
    BASELINE,
    VariantSummary,
    compare_to_baseline,
    difference_ci95,
    gap_difference_ci95,
    pick_best,
    reference_variant,
)
from pipeline.config import EvaluateConfig
from pipeline.curves import (
    HISTORY_COLUMNS,
    Gaps,
    GeneralizationLoss,
    best_epoch_of,
    check_history,
    compute_gaps,
    generalization_loss,
    max_generalization_loss,
    onset_epoch,
    relative_gap,
    smoothed,
    smoothed_noise,
)
from pipeline.noise import accuracy_ci95, binomial_se, gap_noise, paired_variance
from pipeline.trajectory import RunFacts, Trajectory, run_trajectory
from pipeline.verdict_words import describe, verdict_label
from pipeline.verdicts import (
    GOOD_FIT,
    OVERFITTING,
    UNDERFITTING,
    Memorization,
    Reference,
    SplitScores,
    VerdictFacts,
    assess,
    decide,
    material_gap,
    memorization,
)

__all__ = [
    "BASELINE",
    "GOOD_FIT",
    "HISTORY_COLUMNS",
    "MAX_MITIGATIONS",
    "OVERFITTING",
    "UNDERFITTING",
    "Diagnosis",
    "Gaps",
    "GeneralizationLoss",
    "Memorization",
    "Reference",
    "RunFacts",
    "SplitScores",
    "Trajectory",
    "VariantSummary",
    "accuracy_ci95",
    "best_epoch_of",
    "binomial_se",
    "check_history",
    "choose_best",
    "compare_to_baseline",
    "compute_gaps",
    "diagnose",
    "difference_ci95",
    "gap_difference_ci95",
    "gap_noise",
    "generalization_loss",
    "material_gap",
    "max_generalization_loss",
    "memorization",
    "onset_epoch",
    "paired_variance",
    "recommend",
    "reference_variant",
    "relative_gap",
    "run_trajectory",
    "smoothed",
    "smoothed_noise",
]


@dataclass
class Diagnosis:
    """One variant's diagnosis, ready to serialise into evaluation.json."""

    variant: str
    verdict: str  # overall: the saved model and the run together
    model_verdict: str  # the saved model alone (what the registry serves)
    grade: str  # clear | mild | tentative (pipeline.verdicts.GRADES)
    label: str  # the verdict as every surface shows it: "overfitting (mild)", "cannot tell yet"
    model_label: str  # model_verdict the same way
    score: float  # the overfitting score behind it (1 = clear; the larger of gap's and run's)
    too_early: bool  # tentative because the epoch limit cut a run still improving
    summary: str  # one sentence answering "is it overfitting?"
    evidence: list[str]
    gap: dict[str, Any]
    best_epoch: int
    epochs_run: int
    onset_epoch: int | None
    max_generalization_loss: float
    training: dict[str, Any]
    memorization: dict[str, Any]
    rules: dict[str, bool] = field(default_factory=dict)

    @property
    def answer(self) -> str:
        """The verdict and its sentence on one line ("overfitting (mild): Yes, ...")."""
        if self.summary.lower().startswith(self.label.lower()):
            return self.summary  # "Too early to tell: ..." says its label already
        return f"{self.label}: {self.summary}"

    def __repr__(self) -> str:
        # What a notebook shows for `diagnose(...)`: the answer, not 18 fields.
        return f"<Diagnosis {self.answer}>"

    def to_dict(self) -> dict[str, Any]:
        """The fields as plain JSON-ready values (evaluation.json's names)."""
        return asdict(self)


def diagnose(
    variant: str,
    history: pd.DataFrame,
    train: SplitScores,
    val: SplitScores,
    n_classes: int,
    cfg: EvaluateConfig,
    reference: Reference | None = None,
    run: RunFacts | None = None,
) -> Diagnosis:
    """Verdict, summary and evidence for one variant (rules and precedence: pipeline.verdicts).

    Args:
        history: the variant's per-epoch history.
        train, val: the saved model's scores, measured by evaluate in inference mode.
        n_classes: number of classes; chance defaults to 1 / n_classes.
        reference: the best train and val accuracy among the variants compared;
            None compares the variant with itself only.
        run: how the run ended (best epoch, early stopping, images per epoch).
    """
    facts = assess(history, train, val, n_classes, cfg, reference, run)
    finding = decide(facts)
    words = describe(variant, facts, finding, cfg)
    trajectory = facts.trajectory
    return Diagnosis(
        variant=variant,
        verdict=finding.verdict,
        model_verdict=finding.model_verdict,
        grade=finding.grade,
        label=verdict_label(finding.verdict, finding.grade, finding.too_early),
        model_label=verdict_label(finding.model_verdict, finding.model_grade, finding.too_early),
        score=finding.score,
        too_early=finding.too_early,
        summary=words.summary,
        evidence=words.evidence,
        gap=_gap_record(facts),
        best_epoch=facts.gaps.best_epoch,
        epochs_run=trajectory.epochs_run,
        onset_epoch=trajectory.onset_epoch,
        max_generalization_loss=trajectory.max_generalization_loss,
        training={**trajectory.to_dict(), "summary": words.training},
        memorization=facts.memorization.to_dict(),
        rules=facts.rules(),
    )


def _gap_record(facts: VerdictFacts) -> dict[str, Any]:
    """The `gap` block of a diagnosis: the saved model's gaps, then the history's."""
    saved, train, val, gaps = facts.saved_gap, facts.train, facts.val, facts.gaps
    return {
        "accuracy": saved.accuracy,
        "accuracy_noise": saved.noise,
        "relative": relative_gap(train.accuracy, val.accuracy),
        "loss": val.loss - train.loss,
        "material": bool(saved.material),
        "effect": saved.effect,
        "effect_noise": saved.effect_noise,
        "score": saved.score,
        "grade": saved.grade,
        "history_accuracy_best": gaps.accuracy_best,
        "history_loss_best": gaps.loss_best,
        "history_relative_best": gaps.relative_best,
        "history_accuracy_last": gaps.accuracy_last,
        "history_loss_last": gaps.loss_last,
        "history_relative_last": gaps.relative_last,
        "history_max_accuracy": gaps.max_accuracy,
        "history_max_accuracy_epoch": gaps.max_accuracy_epoch,
    }


def choose_best(
    summaries: Sequence[VariantSummary],
    effects: Mapping[str, Mapping[str, Any]] | None = None,
) -> tuple[str, str]:
    """(best variant, the reason in words): `comparison.pick_best`, said by `advice`. With
    the comparison's `effects`, the reference or a mitigation that helped comes first."""
    if effects is None:
        choice = pick_best(summaries)
    else:
        helped = {name for name, e in effects.items() if e.get("helped")}
        choice = pick_best(summaries, reference_variant([s.name for s in summaries]), helped)
    return choice.best.name, best_reason(choice)
