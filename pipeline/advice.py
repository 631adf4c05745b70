"""What to tell the user across variants, in words: why the best one, and what to do.

Inputs: the variants' `VariantSummary` (pipeline.comparison), their `effects`
against the reference (`compare_to_baseline`), the best variant (`pick_best`)
and the names of the data checks that failed (catalog.Validation). Outputs:
the best variant's reason (`best_reason`) and the ranked recommendations of
evaluation.json (`recommend`), each grounded in a number or a failed check.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from pipeline.comparison import (
    EARNED,
    ONLY_SOUND,
    SMALLEST_GAP,
    STEADY_RUN,
    BestChoice,
    VariantSummary,
    reference_variant,
)
from pipeline.verdict_words import points, signed_points
from pipeline.verdicts import OVERFITTING, UNDERFITTING

# The words of `BestChoice.tie_break`.
TIE_BREAK_WORDS = {
    ONLY_SOUND: "the only sound saved model among them",
    STEADY_RUN: "a run that does not diverge if left running",
    SMALLEST_GAP: "the smallest gap",
    EARNED: "",  # worded by `best_reason`: it depends on whether best is the reference
}


def best_reason(choice: BestChoice) -> str:
    """Why `pick_best` chose its variant, in one sentence."""
    best, others = choice.best, choice.others
    if choice.nothing_generalizes:
        return (
            f"{best.name}: no variant learned something that generalizes, so this is simply the "
            f"highest val accuracy ({best.val_accuracy:.1%}); it is {best.saved_label}"
        )
    why = TIE_BREAK_WORDS[choice.tie_break]
    if choice.tie_break == EARNED and best.name == choice.reference:
        why = "none of them measurably helped, so the reference stays"
    elif choice.tie_break == EARNED:
        why = f"{best.name} measurably helped against the reference and they did not"
    else:
        why = f"{best.name} has {why}"
    tie = f"; {', '.join(others)} within noise of it on val, and {why}" if others else ""
    caveat = (
        f" (its saved model is {best.saved_label}: gap {points(best.gap)})"
        if best.saved_label != "good fit"
        else ""
    )
    top = choice.top_val_accuracy
    if top is not None and best.val_accuracy < top:
        lead = (
            f"{best.name}: val accuracy {best.val_accuracy:.1%}, within noise of the highest "
            f"({top:.1%})"
        )
    else:
        lead = f"{best.name}: highest val accuracy ({best.val_accuracy:.1%})"
    return f"{lead} among variants that are neither underfitting nor memorizing{tie}{caveat}"


def recommend(
    summaries: Sequence[VariantSummary],
    effects: Mapping[str, Mapping[str, Any]],
    best_variant: str,
    failed_checks: Collection[str] = (),
) -> list[dict[str, str]]:
    """Ranked advice, each item grounded in a number or a failed data check.

    Data problems come first (no model change fixes a leaking split or labels
    that carry no signal), then the mitigations that measurably helped,
    ranked by their effect beyond noise on val accuracy and the gap, then what
    to do about underfit variants.

    Args:
        failed_checks: names of the data checks that failed (catalog.Validation).

    Returns:
        [{"action", "reason", "source", "rank"}], most important first; source
        is "validation", "comparison" or "diagnosis".
    """
    failed = set(failed_checks)
    by_name = {s.name: s for s in summaries}
    ref = by_name[reference_variant([s.name for s in summaries])]
    memorizing = [s for s in summaries if s.memorizing]
    recs = [*_split_advice(failed), *_label_advice(memorizing), *_data_advice(failed)]
    early = [s for s in summaries if s.too_early]
    recs.extend(_train_longer_advice(early, ref))
    # When labels carry no signal, mitigation, capacity or regularization advice is moot;
    # when the reference run was cut while still improving, comparing mitigations is too.
    if not memorizing and not ref.too_early:
        recs.extend(_mitigation_advice(summaries, effects, ref))
        recs.extend(_underfit_advice(summaries, ref))
    recs.append(_deployment_advice(summaries, by_name[best_variant]))
    for rank, rec in enumerate(recs, start=1):
        rec["rank"] = str(rank)
    return recs


def _train_longer_advice(
    early: Sequence[VariantSummary], ref: VariantSummary
) -> list[dict[str, str]]:
    """Train longer, when the epoch limit cut runs that were still improving: no verdict on
    them, and no comparison against them, is settled yet."""
    if not early:
        return []
    names = ", ".join(f"`{s.name}`" for s in early)
    moot = "; until then no mitigation is compared against it" if ref in early else ""
    return [
        {
            "action": "Train longer: raise train.epochs",
            "reason": f"{names} {'was' if len(early) == 1 else 'were'} still improving when the "
            f"epoch limit ended {'its run' if len(early) == 1 else 'their runs'}: too early to "
            f"tell whether {'it overfits' if len(early) == 1 else 'they overfit'}{moot}",
            "source": "diagnosis",
        }
    ]


def _split_advice(failed: Collection[str]) -> list[dict[str, str]]:
    """Fix a split that leaks or repeats images: every val/test number depends on it."""
    which = [c for c in ("split_leakage", "duplicates") if c in failed]
    if not which:
        return []
    return [
        {
            "action": "Fix the split: remove duplicate and leaked images before trusting any "
            "val/test number",
            "reason": f"data validation flagged {', '.join(which)}: images repeated within "
            "a split, or (near-)copies shared by train and val/test, inflate validation "
            "accuracy and hide overfitting",
            "source": "validation",
        }
    ]


def _label_advice(memorizing: Sequence[VariantSummary]) -> list[dict[str, str]]:
    """Check the labels when any variant memorizes: no regularizer creates signal."""
    if not memorizing:
        return []
    return [
        {
            "action": "Check the labels: nothing the network learns generalizes, and no "
            "regularizer can create signal that the labels do not carry",
            "reason": ", ".join(
                f"{s.name}: train accuracy climbed to "
                f"{s.train_peak if s.train_peak is not None else s.train_accuracy:.0%}, val "
                f"peaked at {s.val_peak if s.val_peak is not None else s.val_accuracy:.0%}"
                for s in memorizing
            )
            + ": val accuracy stays at chance while the network memorizes the training set "
            "(more capacity or epochs would only memorize faster)",
            "source": "diagnosis",
        }
    ]


def _data_advice(failed: Collection[str]) -> list[dict[str, str]]:
    """Class imbalance and too few images, as the data checks found them."""
    recs = []
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
    return recs


def _underfit_advice(
    summaries: Sequence[VariantSummary], ref: VariantSummary
) -> list[dict[str, str]]:
    """For each underfit variant: regularize less (when the reference fits), else grow it."""
    recs = []
    for s in summaries:
        if s.verdict != UNDERFITTING:
            continue
        if s.regularized and ref.verdict != UNDERFITTING and s.name != ref.name:
            recs.append(
                {
                    "action": f"Regularize `{s.name}` less (or drop it): it is over-regularized",
                    "reason": f"{s.name} reaches train {s.train_accuracy:.1%} and val "
                    f"{s.val_accuracy:.1%}, far below what this model family reaches here",
                    "source": "diagnosis",
                }
            )
        else:
            recs.append(
                {
                    "action": f"Give `{s.name}` more capacity or more epochs (or less "
                    "regularization)",
                    "reason": f"{s.name} is underfitting: train accuracy {s.train_accuracy:.1%}",
                    "source": "diagnosis",
                }
            )
    return recs


def _deployment_advice(summaries: Sequence[VariantSummary], best: VariantSummary) -> dict[str, str]:
    """Use the best variant, or do not deploy it when no variant generalizes."""
    nothing_generalizes = all(s.saved_verdict == UNDERFITTING or s.memorizing for s in summaries)
    return {
        "action": (
            f"Do not deploy `{best.name}`: no variant generalizes (it is registered as "
            "challenger for the record only)"
            if nothing_generalizes
            else f"Use `{best.name}` (registered as challenger)"
        ),
        "reason": f"{best.name}'s saved model ({best.saved_label}): val accuracy "
        f"{best.val_accuracy:.1%}, test accuracy {best.test_accuracy:.1%}, gap {points(best.gap)}",
        "source": "comparison",
    }


# At most this many mitigations are recommended: beyond that the list stops reading as advice.
MAX_MITIGATIONS = 3


def _mitigation_advice(
    summaries: Sequence[VariantSummary],
    effects: Mapping[str, Mapping[str, Any]],
    ref: VariantSummary,
) -> list[dict[str, str]]:
    """Mitigations that measurably helped, ranked by effect beyond noise; or that none did."""
    helped = [s for s in summaries if effects[s.name].get("helped")]
    ranked = sorted(helped, key=lambda s: _mitigation_rank(effects[s.name], s.name))
    recs = [_adopt_advice(s, effects[s.name], ref) for s in ranked[:MAX_MITIGATIONS]]
    if not recs and len(summaries) > 1:
        recs.append(_no_mitigation_advice(summaries, effects, ref))
    return recs


def _mitigation_rank(eff: Mapping[str, Any], name: str) -> tuple[float, float, str]:
    """Sort key, strongest first: total excess over noise, then val accuracy gained, then name."""
    # Excess over the noise band, in points, on val accuracy (up) and gap (down).
    val_excess = max(0.0, eff["delta_val_accuracy"] - eff["delta_val_ci95"])
    gap_excess = max(0.0, -eff["delta_gap"] - eff["delta_gap_ci95"])
    run_excess = (
        max(0.0, -eff["delta_gap_widening"] - eff["delta_gap_widening_ci95"])
        if eff.get("steadied")
        else 0.0
    )
    return (-(val_excess + gap_excess + run_excess), -eff["delta_val_accuracy"], name)


def _adopt_advice(s: VariantSummary, eff: Mapping[str, Any], ref: VariantSummary) -> dict[str, str]:
    """Adopt (or consider) one mitigation, with its effects and their noise."""
    verb = "Adopt" if ref.verdict == OVERFITTING else "Consider"
    still = (
        ", and strengthen or combine it: its own saved model is still overfit"
        if s.saved_verdict == OVERFITTING
        else ""
    )
    steadied = ""
    if eff.get("steadied"):
        steadied = (
            f"its run no longer overfits if left running: after its best epoch the gap "
            f"widened {signed_points(s.gap_widening)} vs {signed_points(ref.gap_widening)} "
            f"(difference {signed_points(eff['delta_gap_widening'])}, noise "
            f"±{points(eff['delta_gap_widening_ci95'])}); "
        )
    return {
        "action": f"{verb} the `{s.name}` mitigation{still}",
        "reason": f"vs {ref.name} ({ref.shown}, gap {points(ref.gap)}): {steadied}"
        f"val accuracy "
        f"{signed_points(eff['delta_val_accuracy'])} (noise ±{points(eff['delta_val_ci95'])}), "
        f"gap {signed_points(eff['delta_gap'])} (noise ±{points(eff['delta_gap_ci95'])}), "
        f"test accuracy {signed_points(eff['delta_test_accuracy'])}",
        "source": "comparison",
    }


def _no_mitigation_advice(
    summaries: Sequence[VariantSummary],
    effects: Mapping[str, Mapping[str, Any]],
    ref: VariantSummary,
) -> dict[str, str]:
    """No variant helped beyond noise: say so, with the widest val noise among them."""
    known = [effects[s.name] for s in summaries if s.name != ref.name]
    band = max(
        (e["delta_val_ci95"] for e in known if math.isfinite(e["delta_val_ci95"])),
        default=float("nan"),
    )
    noise = f" (val noise up to ±{points(band)})" if math.isfinite(band) else ""
    overfitting = ref.verdict == OVERFITTING
    lead = f"{ref.name} ({ref.shown}, gap {points(ref.gap)})"
    return {
        "action": "No mitigation measurably helped"
        + (": try stronger regularization, more data, or a smaller model" if overfitting else ""),
        "reason": f"{lead}; no variant raised val accuracy, cut the gap, or stopped "
        "the run from diverging without losing val accuracy, beyond the noise of the "
        f"split sizes{noise}",
        "source": "comparison",
    }
