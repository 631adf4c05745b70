"""The variants side by side: each one's effect against the reference, and the best.

Input: one `VariantSummary` per evaluated variant (the numbers of its
diagnosis, its scores and, when known, its per-image correctness on val and
train). Outputs: the `effects` of evaluation.json (`compare_to_baseline`:
numbers and flags, no words) and the best variant with what set it apart
(`pick_best`); pipeline.advice says both in words.

Best variant: the highest val accuracy among variants that are neither
underfitting nor memorizing; among those within the noise of the top, a sound
saved model (model_verdict good_fit) first, then the smaller gap. A run that
diverged after the restored epoch never excludes a variant.

Mitigations are ranked by what they measurably did against the reference
variant: val accuracy up beyond the noise of the difference, or the gap down
beyond its noise without losing val accuracy beyond noise. A change inside
the noise is no reason to adopt anything.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.noise import accuracy_ci95, binomial_se, paired_variance
from pipeline.verdicts import GOOD_FIT, UNDERFITTING

BASELINE = "baseline"

# What set the best variant apart from the others within noise of it (`BestChoice.tie_break`).
ONLY_SOUND = "only_sound"  # the only sound saved model (model_verdict good_fit) among them
STEADY_RUN = "steady_run"  # a run that does not diverge if left running
SMALLEST_GAP = "smallest_gap"
# Nothing within noise of it earned its place: the reference, or the mitigation that helped.
EARNED = "earned"


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
    model_verdict: str | None = None  # the saved model's own verdict (None: same as verdict)
    n_train: int = 0  # train images behind train_accuracy
    memorizing: bool = False
    # The history's highest (smoothed) train and val accuracy, for memorization's words.
    train_peak: float | None = None
    val_peak: float | None = None
    regularized: bool = False  # dropout, L2 or augmentation on
    # Extra variance of val accuracy and gap from training seeds (0: one seed).
    seed_var_val: float = 0.0
    seed_var_gap: float = 0.0
    # Per-image correctness of the saved model on the val split and on the
    # scored train rows (the same rows for every variant): differences between
    # variants are then paired. None: unknown, the comparison is unpaired.
    val_correct: np.ndarray | None = field(default=None, compare=False, repr=False)
    train_correct: np.ndarray | None = field(default=None, compare=False, repr=False)
    # The run's own behaviour (the `training` block): did it diverge, and how far
    # did the accuracy gap widen after the best epoch, with its noise half-width.
    diverged: bool = False
    gap_widening: float | None = None
    gap_widening_noise: float | None = None
    # The epoch limit cut a run still improving: too early to judge it, or compare it.
    too_early: bool = False
    still_improving: bool = False  # its val loss was still falling when the run ended
    label: str | None = None  # the verdict as the page shows it (None: the verdict's name)
    model_label: str | None = None  # the saved model's, likewise

    @property
    def saved_verdict(self) -> str:
        return self.model_verdict or self.verdict

    @property
    def shown(self) -> str:
        """The verdict as the page shows it ("overfitting (mild)", "cannot tell yet")."""
        return self.label or self.verdict.replace("_", " ")

    @property
    def saved_label(self) -> str:
        """The saved model's verdict as the page shows it."""
        return self.model_label or self.saved_verdict.replace("_", " ")


def difference_ci95(a: VariantSummary, b: VariantSummary) -> float:
    """Half-width of the 95% interval of a.val_accuracy - b.val_accuracy.

    Paired when both carry per-image correctness on the same val images (the
    usual case: every variant is scored on the same split), else as two
    independent samples (conservative). Seed variance, when known, is added.
    """
    if a.n_val <= 0 or b.n_val <= 0:
        return float("nan")
    paired = paired_variance(a.val_correct, b.val_correct)
    if paired is None:
        paired = (
            binomial_se(a.val_accuracy, a.n_val) ** 2 + binomial_se(b.val_accuracy, b.n_val) ** 2
        )
    return 1.96 * math.sqrt(paired + a.seed_var_val + b.seed_var_val)


def gap_difference_ci95(a: VariantSummary, b: VariantSummary) -> float:
    """Half-width of the 95% interval of a.gap - b.gap (train and val noise of both,
    paired per split when the per-image correctness is known)."""
    if a.n_val <= 0 or b.n_val <= 0:
        return float("nan")
    n_train_a = a.n_train or a.n_val
    n_train_b = b.n_train or b.n_val
    val_var = paired_variance(a.val_correct, b.val_correct)
    if val_var is None:
        val_var = (
            binomial_se(a.val_accuracy, a.n_val) ** 2 + binomial_se(b.val_accuracy, b.n_val) ** 2
        )
    train_var = paired_variance(a.train_correct, b.train_correct)
    if train_var is None:
        train_var = (
            binomial_se(a.train_accuracy, n_train_a) ** 2
            + binomial_se(b.train_accuracy, n_train_b) ** 2
        )
    return 1.96 * math.sqrt(val_var + train_var + a.seed_var_gap + b.seed_var_gap)


def reference_variant(names: Sequence[str]) -> str:
    """`baseline` when present, else the first variant in params order."""
    if not names:
        raise ValueError("no variants to compare")
    return BASELINE if BASELINE in names else names[0]


def compare_to_baseline(
    summaries: Sequence[VariantSummary], min_effect: float = 0.0
) -> dict[str, dict[str, Any]]:
    """Each variant's effect vs the reference: deltas of val/test accuracy and gap.

    `delta_val_ci95` and `delta_gap_ci95` are the half-widths of the 95%
    intervals of the differences; `within_noise` says whether the val-accuracy
    difference is inside its interval and `gap_within_noise` the same for the
    gap (always false when the validation size is unknown). `helped` says
    whether the variant measurably helped: val accuracy up beyond noise, or the
    gap down beyond noise without losing val accuracy beyond noise, by at least
    `min_effect` (accuracy points; on millions of images a 0.2-point change is
    beyond noise yet no reason to change anything). An underfit or memorizing
    variant never "helps"; one that helped yet is still overfit is advised as
    a step, not a fix.

    `steadied` is the run-level effect: the reference's run diverged and this
    variant's did not, its accuracy gap widening after the best epoch smaller by
    more than the two runs' noise (and `min_effect`), without losing val accuracy
    beyond noise. The saved models of both are their best epochs, so a
    regularizer's typical effect on a few hundred images per class shows here:
    the run no longer overfits if left running. It also counts as `helped`.
    """
    by_name = {s.name: s for s in summaries}
    ref = by_name[reference_variant([s.name for s in summaries])]
    effects = {}
    for s in summaries:
        delta_val = s.val_accuracy - ref.val_accuracy
        delta_gap = s.gap - ref.gap
        noise = difference_ci95(s, ref)
        gap_noise = gap_difference_ci95(s, ref)
        known = math.isfinite(noise)
        val_up = known and delta_val > noise
        val_down = known and delta_val < -noise
        gap_down = known and delta_gap < -gap_noise
        widening = _widening_difference(s, ref)
        steadied = _steadied(s, ref, widening, min_effect) and not val_down
        sound = s.name != ref.name and s.saved_verdict != UNDERFITTING and not s.memorizing
        effects[s.name] = {
            "reference": ref.name,
            "delta_val_accuracy": delta_val,
            "delta_test_accuracy": s.test_accuracy - ref.test_accuracy,
            "delta_gap": delta_gap,
            "val_accuracy_ci95": accuracy_ci95(s.val_accuracy, s.n_val),
            "delta_val_ci95": noise,
            "delta_gap_ci95": gap_noise,
            "within_noise": bool(known and abs(delta_val) <= noise),
            "gap_within_noise": bool(known and abs(delta_gap) <= gap_noise),
            **widening,
            "steadied": bool(sound and steadied),
            "helped": bool(
                sound
                and (
                    (val_up and delta_val >= min_effect)
                    or (gap_down and -delta_gap >= min_effect and not val_down)
                    or steadied
                )
            ),
        }
    return effects


def _widening_difference(s: VariantSummary, ref: VariantSummary) -> dict[str, float | None]:
    """How much less the gap widened after the best epoch than the reference's, ± noise."""
    if None in (s.gap_widening, ref.gap_widening, s.gap_widening_noise, ref.gap_widening_noise):
        return {"delta_gap_widening": None, "delta_gap_widening_ci95": None}
    return {
        "delta_gap_widening": s.gap_widening - ref.gap_widening,
        # Each noise is already a z-scaled half-width of an independent run.
        "delta_gap_widening_ci95": math.hypot(s.gap_widening_noise, ref.gap_widening_noise),
    }


def _steadied(
    s: VariantSummary, ref: VariantSummary, diff: Mapping[str, float | None], min_effect: float
) -> bool:
    """The reference's run diverged, this one's did not, and its gap widened measurably less
    (`diff`: _widening_difference of the two)."""
    # A run cut while still improving was never watched past its minimum: nothing steadied.
    if not ref.diverged or s.diverged or s.still_improving or diff["delta_gap_widening"] is None:
        return False
    narrower = -diff["delta_gap_widening"]
    return narrower > diff["delta_gap_widening_ci95"] and narrower >= min_effect


@dataclass(frozen=True)
class BestChoice:
    """The best variant (`pick_best`) and what set it apart."""

    best: VariantSummary
    others: list[str]  # the other variants within noise of the top on val
    nothing_generalizes: bool  # every variant underfits or memorizes
    tie_break: str  # EARNED, ONLY_SOUND, STEADY_RUN or SMALLEST_GAP: why best beat `others`
    reference: str | None = None  # the reference variant, when the ranking knew it
    top_val_accuracy: float | None = None  # the highest val accuracy among the usable


def pick_best(
    summaries: Sequence[VariantSummary],
    reference: str | None = None,
    helped: Collection[str] = (),
) -> BestChoice:
    """Ranks the saved models by what they do on val.

    The highest val accuracy among variants that learned something that
    generalizes (not underfitting, not memorizing); among those within the
    noise of the top (the 95% interval of the difference), a sound saved model
    (model_verdict good_fit) first, then a run that did not diverge, then the
    smaller gap, then the name. A run that diverged after the epoch early
    stopping restored never excludes a variant; it only breaks a tie.

    With the `reference` named, a variant must earn its place first: among those
    within noise, the reference or a mitigation that measurably `helped` (the
    comparison's verdict) comes before one that did not, so the page never says "no
    mitigation measurably helped" and then "use" one.
    """
    if not summaries:
        raise ValueError("no variants to choose from")
    usable = [s for s in summaries if s.saved_verdict != UNDERFITTING and not s.memorizing] or list(
        summaries
    )
    top = max(usable, key=lambda s: (s.val_accuracy, -s.gap))

    def tied(s: VariantSummary) -> bool:
        noise = difference_ci95(s, top)
        return s is top or (math.isfinite(noise) and top.val_accuracy - s.val_accuracy <= noise)

    contenders = [s for s in usable if tied(s)]

    def unearned(s: VariantSummary) -> bool:
        return reference is not None and s.name != reference and s.name not in helped

    best = min(
        contenders,
        key=lambda s: (
            unearned(s), s.saved_verdict != GOOD_FIT, s.diverged, s.gap, -s.val_accuracy, s.name
        ),
    )  # fmt: skip
    others = [s.name for s in contenders if s is not best]
    unsound = [s for s in contenders if s is not best and s.saved_verdict != GOOD_FIT]
    peers = [s for s in contenders if s is not best and s.saved_verdict == best.saved_verdict]
    if any(unearned(s) and not unearned(best) for s in contenders):
        tie_break = EARNED
    elif best.saved_verdict == GOOD_FIT and len(unsound) == len(others):
        tie_break = ONLY_SOUND
    elif not best.diverged and any(s.diverged for s in peers):
        tie_break = STEADY_RUN
    else:
        tie_break = SMALLEST_GAP
    return BestChoice(
        best=best,
        others=others,
        nothing_generalizes=all(s.saved_verdict == UNDERFITTING or s.memorizing for s in summaries),
        tie_break=tie_break,
        reference=reference,
        top_val_accuracy=top.val_accuracy,
    )
