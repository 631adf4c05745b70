"""pipeline.diagnosis on hand-built histories: pure, fast, no TensorFlow."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from pipeline import diagnosis as dg
from pipeline.config import parse_config

from .conftest import REPO, real_params

# The thresholds the product ships (params.yaml), not numbers of the test's own.
CFG = parse_config(real_params()).evaluate


def history(loss, val_loss, acc=None, val_acc=None) -> pd.DataFrame:
    n = len(loss)
    acc = acc if acc is not None else np.linspace(0.5, 0.95, n)
    val_acc = val_acc if val_acc is not None else np.linspace(0.45, 0.9, n)
    return pd.DataFrame(
        {
            "epoch": np.arange(1, n + 1),
            "loss": loss,
            "accuracy": acc,
            "val_loss": val_loss,
            "val_accuracy": val_acc,
        }
    )


def turned_up() -> pd.DataFrame:
    """Val loss bottoms at epoch 4 then climbs 30% while train loss keeps falling."""
    loss = [1.0, 0.7, 0.5, 0.4, 0.32, 0.26, 0.21, 0.17, 0.14, 0.12, 0.1, 0.08]
    val = [1.0, 0.75, 0.6, 0.5, 0.53, 0.56, 0.58, 0.6, 0.61, 0.63, 0.64, 0.65]
    return history(loss, val)


def flat() -> pd.DataFrame:
    return history([0.5] * 6, [0.55] * 6, [0.9] * 6, [0.88] * 6)


S = dg.SplitScores


# --------------------------------------------------------------------------- import hygiene


def test_import_does_not_pull_tensorflow():
    code = (
        "import sys, pipeline.diagnosis; "
        "bad = [m for m in ('tensorflow', 'keras', 'mlflow') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)


# --------------------------------------------------------------------------- history checks


def test_empty_history_raises():
    with pytest.raises(ValueError, match="empty"):
        dg.check_history(pd.DataFrame(columns=list(dg.HISTORY_COLUMNS)))


def test_missing_column_raises_naming_it():
    frame = turned_up().drop(columns=["val_loss"])
    with pytest.raises(ValueError, match="val_loss"):
        dg.check_history(frame)


def test_nan_in_history_raises_with_epoch():
    frame = turned_up()
    frame.loc[2, "val_loss"] = np.nan
    with pytest.raises(ValueError, match=r"epoch\(s\) \[3\]"):
        dg.check_history(frame)


def test_repeated_epochs_raise():
    frame = pd.concat([turned_up().head(2), turned_up().head(1)])
    with pytest.raises(ValueError, match="repeated"):
        dg.check_history(frame)


def test_history_from_columns_and_sorted():
    frame = dg.check_history(
        {
            "epoch": [2, 1],
            "loss": [0.5, 1.0],
            "accuracy": [0.8, 0.5],
            "val_loss": [0.6, 1.1],
            "val_accuracy": [0.7, 0.4],
        }
    )
    assert frame["epoch"].tolist() == [1, 2]


# --------------------------------------------------------------------------- gaps, GL, onset


def test_gaps_at_best_last_and_max():
    h = history([1.0, 0.5, 0.2], [1.1, 0.6, 0.9], [0.5, 0.8, 1.0], [0.4, 0.75, 0.7])
    gaps = dg.compute_gaps(h)
    assert gaps.best_epoch == 2
    assert gaps.accuracy_best == pytest.approx(0.05)
    assert gaps.loss_best == pytest.approx(0.1)
    assert gaps.relative_best == pytest.approx(0.05 / 0.8)
    assert gaps.accuracy_last == pytest.approx(0.3)
    assert gaps.relative_last == pytest.approx(0.3)
    assert gaps.max_accuracy == pytest.approx(0.3) and gaps.max_accuracy_epoch == 3


def test_gaps_reject_best_epoch_outside_history():
    with pytest.raises(ValueError, match="best_epoch 99"):
        dg.compute_gaps(turned_up(), best_epoch=99)


def test_generalization_loss_is_prechelts_gl():
    h = history([1.0, 0.9, 0.8], [1.0, 0.8, 0.88])
    assert dg.generalization_loss(h) == pytest.approx([0.0, 0.0, 10.0])


def test_max_generalization_loss_explains_itself():
    gl = dg.max_generalization_loss(turned_up())
    assert gl.max_gl == pytest.approx(30.0)
    assert (gl.min_epoch, gl.epoch) == (4, 12)
    assert gl.train_loss_change == pytest.approx(-0.8)


def test_onset_of_a_run_whose_val_loss_turned_up():
    assert dg.onset_epoch(turned_up(), tolerance=0.05) == 5
    # A larger tolerance moves the onset later: 0.58 is the first above 1.15 x 0.5.
    assert dg.onset_epoch(turned_up(), tolerance=0.15) == 7


def test_flat_run_has_no_onset_and_no_gl():
    assert dg.onset_epoch(flat(), CFG.onset_tolerance) is None
    assert dg.max_generalization_loss(flat()).max_gl == 0.0


def test_no_onset_when_val_loss_recovers_to_a_new_minimum():
    h = history([1.0, 0.8, 0.6, 0.5, 0.4], [1.0, 0.7, 0.9, 0.6, 0.55])
    assert dg.onset_epoch(h, 0.05) is None


def test_no_onset_when_train_loss_rises_too():
    """Divergence (both losses up) is a training problem, not overfitting."""
    h = history([1.0, 0.6, 0.7, 0.9, 1.2], [1.0, 0.6, 0.8, 1.0, 1.3])
    assert dg.onset_epoch(h, 0.05) is None


def test_negative_tolerance_rejected():
    with pytest.raises(ValueError, match="tolerance"):
        dg.onset_epoch(turned_up(), -0.1)


# --------------------------------------------------------------------------- verdicts


def falls_then(rise_to: float, n: int = 40, start: float = 2.3, floor: float = 0.04):
    """A val loss that falls from `start` to `floor` by epoch 20, then drifts to `rise_to`.

    The train loss keeps falling and the train accuracy reaches 1.0; val
    accuracy sits at 0.99. The rise is smooth, so it stands far above noise.
    """
    e = np.arange(1, n + 1)
    val = np.where(
        e <= 20,
        floor + (start - floor) * np.exp(-(e - 1) / 3.0),
        floor + (rise_to - floor) * (e - 20) / (n - 20),
    )
    loss = start * np.exp(-(e - 1) / 3.0) + 1e-4
    acc = np.minimum(1.0, 0.3 + 0.05 * e)
    val_acc = np.minimum(0.99, 0.3 + 0.05 * e)
    return history(loss, val, acc, val_acc)


def test_a_material_saved_model_gap_is_overfitting():
    d = dg.diagnose("big", flat(), S(1.0, 0.01, n=2000), S(0.80, 0.9, n=2000), 10, CFG)
    assert d.verdict == d.model_verdict == dg.OVERFITTING
    assert d.rules["gap_material"] and not d.rules["diverged"]
    assert d.gap["accuracy"] == pytest.approx(0.2)
    assert any("gap 20.0 points" in e and "saved model is overfit" in e for e in d.evidence)
    assert d.summary.startswith("Yes, `big` overfits")


def test_the_same_gap_on_a_tiny_split_is_within_noise():
    # 13 points on 20 images is inside the noise (±15.6 points); on 2,000 it is not.
    small = dg.diagnose("x", flat(), S(1.0, 0.01, n=20), S(0.87, 0.4, n=20), 10, CFG)
    assert small.verdict == dg.GOOD_FIT and not small.rules["gap_material"]
    assert any("within noise" in e for e in small.evidence)
    large = dg.diagnose("x", flat(), S(1.0, 0.01, n=2000), S(0.87, 0.4, n=2000), 10, CFG)
    assert large.verdict == dg.OVERFITTING and large.rules["gap_material"]


def test_an_immaterial_rise_after_the_saved_epoch_is_not_overfitting():
    """The digits `dropout` case: val loss 0.04 -> 0.05 after its best epoch (+25%, tiny)."""
    h = falls_then(rise_to=0.05)
    assert dg.max_generalization_loss(h, window=5).max_gl > 10  # Prechelt's GL alone would fire
    d = dg.diagnose(
        "dropout",
        h,
        S(1.0, 0.01, n=270),
        S(0.993, 0.05, n=269),
        10,
        CFG,
        run=dg.RunFacts(best_epoch=20, stopped_early=True, n_train=1257),
    )
    assert d.verdict == d.model_verdict == dg.GOOD_FIT, d.evidence
    t = d.training
    assert not t["diverged"] and t["noise_z"] > CFG.min_noise_z  # real, but immaterial
    # 0.01 nats: the model's average probability on the true class down 1%.
    assert t["val_loss_rise"] < CFG.mild_score * CFG.clear_loss_rise / 4
    assert t["stopped_by"] == "early_stopping" and t["best_epoch"] == 20
    assert re.search(
        r"rose up to 0\.0\d+ nats above its minimum.*below mild.*restored epoch 20", t["summary"]
    )
    assert d.onset_epoch is None
    assert d.summary.startswith("No, `dropout` generalizes")


def test_a_material_divergence_is_overfitting_even_when_the_saved_model_is_sound():
    # Val loss falls from about ln 10 to 0.5 (epoch 4), then climbs back more than half of it.
    loss = [2.2, 1.1, 0.6, 0.4, 0.32, 0.26, 0.21, 0.17, 0.14, 0.12, 0.1, 0.08]
    val = [2.3, 1.2, 0.7, 0.5, 0.6, 0.75, 0.9, 1.05, 1.2, 1.35, 1.5, 1.65]
    d = dg.diagnose(
        "baseline",
        history(loss, val),
        S(0.95, 0.1, n=1000),
        S(0.93, 0.25, n=1000),
        10,
        CFG,
        run=dg.RunFacts(best_epoch=4, stopped_early=True, n_train=5000),
    )
    assert d.verdict == dg.OVERFITTING and d.model_verdict == dg.GOOD_FIT
    assert d.rules["diverged"] and not d.rules["gap_material"]
    t = d.training
    assert t["val_loss_rise"] > 2 * CFG.clear_loss_rise and t["reading"] == "val_loss_rise"
    assert t["train_loss_fell"] and t["noise_z"] > CFG.min_noise_z
    assert d.onset_epoch == 5 and d.best_epoch == 4 and d.epochs_run == 12
    assert "the run diverged (clear" in t["summary"] and "restored epoch 4" in t["summary"]
    assert d.summary.startswith("Yes, `baseline`'s training overfits, clearly: from epoch 5")
    assert "val loss rose" in d.summary and d.label == "overfitting (clear)"
    assert any("the saved model generalizes" in e for e in d.evidence)


def test_a_rise_with_the_train_loss_rising_too_is_not_overfitting():
    h = history(
        [1.0, 0.8, 0.7, 0.75, 0.85, 0.95, 1.05, 1.15], [1.0, 0.8, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2]
    )
    d = dg.diagnose("unstable", h, S(0.9, 0.3, n=500), S(0.89, 0.35, n=500), 10, CFG)
    assert not d.rules["diverged"] and d.verdict == dg.GOOD_FIT
    assert "train loss rose too" in d.training["summary"]


def memorizing_history(train_peak: float = 0.30, n: int = 17) -> pd.DataFrame:
    """Shuffled labels: train accuracy climbs from chance, val stays at chance, val loss rises."""
    e = np.arange(n)
    return pd.DataFrame(
        {
            "epoch": e + 1,
            "loss": 2.31 - 0.01 * e,
            "accuracy": 0.10 + (train_peak - 0.10) * e / (n - 1),
            "val_loss": 2.30 + 0.005 * e,
            "val_accuracy": 0.10 + 0.01 * np.sin(e),
        }
    )


def test_memorization_is_overfitting_even_when_an_early_epoch_was_restored():
    run = dg.RunFacts(best_epoch=1, stopped_early=True, n_train=1400)
    d = dg.diagnose(
        "baseline",
        memorizing_history(),
        S(0.11, 2.30, n=300),
        S(0.10, 2.30, n=300),
        10,
        CFG,
        run=run,
    )
    assert d.verdict == d.model_verdict == dg.OVERFITTING
    # The restored epoch-1 model is still at chance, yet memorization wins over underfitting.
    assert d.rules["memorization"] and d.rules["near_chance"]
    assert d.memorization["train_peak"] > 0.10 + 3 * CFG.memorization_min_rise
    assert any(
        re.search(r"memorization: train accuracy 10% → 2\d% .*val stays 1[01]%", e)
        for e in d.evidence
    )
    assert "check the labels" in d.summary


def test_memorization_needs_val_at_chance_and_a_climb_beyond_noise():
    run = dg.RunFacts(best_epoch=1, n_train=1400)
    learning = memorizing_history().assign(val_accuracy=np.linspace(0.1, 0.5, 17))
    d = dg.diagnose("x", learning, S(0.3, 1.9, n=300), S(0.45, 1.9, n=300), 10, CFG, run=run)
    assert not d.rules["memorization"]
    # 7 points above chance is beyond noise on 1,400 images but not on 50.
    h = memorizing_history(train_peak=0.17)
    big = dg.diagnose("x", h, S(0.11, 2.3, n=300), S(0.10, 2.3, n=300), 10, CFG, run=run)
    assert big.rules["memorization"]
    few = dg.RunFacts(best_epoch=1, n_train=50)
    small = dg.diagnose("x", h, S(0.11, 2.3, n=300), S(0.10, 2.3, n=300), 10, CFG, run=few)
    assert not small.rules["memorization"] and small.verdict == dg.UNDERFITTING


def test_near_chance_is_underfitting():
    h = history(
        [2.3, 2.2, 2.1, 2.0],
        [2.3, 2.25, 2.2, 2.15],
        [0.1, 0.12, 0.13, 0.14],
        [0.1, 0.11, 0.12, 0.13],
    )
    converged = dg.RunFacts(stopped_early=True)
    d = dg.diagnose("tiny", h, S(0.15, 2.1, n=300), S(0.13, 2.15, n=300), 10, CFG, run=converged)
    assert d.verdict == d.model_verdict == dg.UNDERFITTING
    assert d.rules["near_chance"]
    assert any("of chance (10.0%, the most common class, 10 classes)" in e for e in d.evidence)
    # The same curves cut by the epoch limit while the val loss still fell 7% in the last
    # epochs: too early to tell, not underfitting for converging slowly.
    cut = dg.RunFacts(stopped_early=False)
    early = dg.diagnose("tiny", h, S(0.15, 2.1, n=300), S(0.13, 2.15, n=300), 10, CFG, run=cut)
    assert early.training["still_improving"] and early.too_early
    assert early.label == "too early to tell" and early.summary.startswith("Too early to tell")
    assert not any("generalizes" in e for e in early.evidence)


def test_far_below_the_best_on_train_and_val_is_underfitting():
    """Fashion-MNIST `combined`: train 84.9%, val 85.1% vs the best 96% / 93%."""
    best = dg.Reference(train_accuracy=0.96, val_accuracy=0.93)
    d = dg.diagnose("combined", flat(), S(0.849, 0.4, n=9000), S(0.851, 0.4, n=9000), 10, CFG, best)
    assert d.verdict == dg.UNDERFITTING and d.rules["behind_best"]
    assert any("below the best variant on both splits" in e for e in d.evidence)
    # Below the best on train only (a well-regularized variant with the best val) is fine.
    d2 = dg.diagnose("dropout", flat(), S(0.90, 0.3, n=9000), S(0.925, 0.3, n=9000), 10, CFG, best)
    assert d2.verdict == dg.GOOD_FIT
    # The same numbers alone (no better variant) are a good fit.
    alone = dg.diagnose("combined", flat(), S(0.849, 0.4, n=9000), S(0.851, 0.4, n=9000), 10, CFG)
    assert alone.verdict == dg.GOOD_FIT


def saved_only(train: float, val: float, n: int = 2000) -> dg.Diagnosis:
    """A run whose curves never part: the saved model's gap alone decides."""
    return dg.diagnose("b", flat(), S(train, 0.2, n=n), S(val, 0.5, n=n), 10, CFG)


def test_neighbouring_gaps_get_neighbouring_grades_never_opposite_answers():
    """The issue's cliff: 7.7 and 8.1 points (train 91.3%) read as opposite answers either
    side of an 8-point threshold. Now both are overfitting, with scores 0.05 apart."""
    below, above = saved_only(0.913, 0.913 - 0.077), saved_only(0.913, 0.913 - 0.081)
    assert below.verdict == above.verdict == dg.OVERFITTING
    assert abs(below.gap["score"] - above.gap["score"]) < 0.1
    # As the gap grows the score grows without a jump, and the label walks good fit ->
    # mild -> clear once each, never back.
    gaps = np.arange(0.0, 0.16, 0.0025)
    runs = [saved_only(0.913, 0.913 - g) for g in gaps]
    scores = [d.gap["score"] for d in runs]
    assert all(b > a for a, b in zip(scores, scores[1:], strict=False))
    assert max(np.diff(scores)) < 0.1
    labels = [d.label for d in runs]
    order = ["good fit", "overfitting (mild)", "overfitting (clear)"]
    assert [lab for i, lab in enumerate(labels) if i == 0 or lab != labels[i - 1]] == order


def test_the_gap_is_scale_aware_8_points_from_99_is_not_8_points_from_60():
    high, low = saved_only(0.99, 0.91), saved_only(0.60, 0.52)
    assert high.gap["effect"] > 2 * low.gap["effect"]
    assert high.label == "overfitting (clear)" and low.label == "overfitting (mild)"
    # ...and large for its level is not enough: 100% vs 97.4% is a large effect (the model
    # errs 130 times as often on new images) but 2.6 points, so mild, not clear.
    ceiling = saved_only(1.0, 0.974, n=10_000)
    assert ceiling.gap["effect"] > CFG.clear_overfit_effect
    assert ceiling.label == "overfitting (mild)"


def test_thresholds_are_read_from_the_config():
    lenient = CFG.model_copy(update={"clear_overfit_gap": 0.5})
    d = dg.diagnose("big", flat(), S(1.0, 0.01, n=2000), S(0.8, 0.9, n=2000), 10, lenient)
    assert d.verdict == dg.GOOD_FIT
    strict = CFG.model_copy(update={"clear_loss_rise": 50.0, "clear_overfit_gap": 0.9})
    run = dg.RunFacts(best_epoch=4, n_train=5000)
    d = dg.diagnose(
        "b", turned_up(), S(0.95, 0.1, n=1000), S(0.93, 0.25, n=1000), 10, strict, run=run
    )
    assert d.verdict == dg.GOOD_FIT


def test_diagnose_rejects_bad_inputs():
    with pytest.raises(ValueError, match="n_classes"):
        dg.diagnose("x", flat(), S(0.9, 0.1), S(0.9, 0.1), 1, CFG)
    with pytest.raises(ValueError, match="train scores"):
        dg.diagnose("x", flat(), S(1.5, 0.1), S(0.9, 0.1), 10, CFG)
    with pytest.raises(ValueError, match="val n"):
        dg.diagnose("x", flat(), S(0.9, 0.1), S(0.9, 0.1, n=-1), 10, CFG)
    with pytest.raises(ValueError, match="empty"):
        dg.diagnose("x", history([], []), S(0.9, 0.1), S(0.9, 0.1), 10, CFG)


# --------------------------------------------------------------------------- comparison


def summaries() -> list[dg.VariantSummary]:
    V = dg.VariantSummary
    return [
        V("baseline", dg.OVERFITTING, 1.0, 0.80, 0.79, 0.20, n_val=2000, n_train=2000),
        V(
            "dropout",
            dg.GOOD_FIT,
            0.95,
            0.88,
            0.87,
            0.07,
            n_val=2000,
            n_train=2000,
            regularized=True,
        ),
        V(
            "l2",
            dg.OVERFITTING,
            0.97,
            0.86,
            0.86,
            0.11,
            n_val=2000,
            n_train=2000,
            regularized=True,
            model_verdict=dg.OVERFITTING,
        ),
        V(
            "augmentation",
            dg.GOOD_FIT,
            0.92,
            0.89,
            0.88,
            0.03,
            n_val=2000,
            n_train=2000,
            regularized=True,
        ),
        V("small", dg.UNDERFITTING, 0.40, 0.38, 0.39, 0.02, n_val=2000, n_train=2000),
    ]


def test_effects_are_deltas_vs_baseline():
    eff = dg.compare_to_baseline(summaries())
    assert eff["baseline"]["delta_val_accuracy"] == 0
    assert eff["dropout"]["delta_val_accuracy"] == pytest.approx(0.08)
    assert eff["augmentation"]["delta_gap"] == pytest.approx(-0.17)
    assert eff["l2"]["reference"] == "baseline"
    assert eff["augmentation"]["helped"] and not eff["small"]["helped"]
    assert not eff["baseline"]["helped"]


def test_reference_falls_back_to_first_variant():
    assert dg.reference_variant(["a", "b"]) == "a"
    with pytest.raises(ValueError):
        dg.reference_variant([])


def test_best_is_the_highest_val_accuracy_and_a_tie_goes_to_the_smaller_gap():
    best, reason = dg.choose_best(summaries())
    # augmentation (89%) and dropout (88%) are within noise on 2,000 images: the smaller gap wins.
    assert best == "augmentation"
    assert "neither underfitting nor memorizing" in reason and "dropout within noise" in reason
    assert "augmentation has the smallest gap" in reason


def test_with_the_comparison_a_variant_must_earn_its_place_before_a_smaller_gap():
    """The issue's page: "No mitigation measurably helped", then "Use `dropout`" picked on a
    difference within noise. With the comparison's effects, the reference stays unless a
    mitigation measurably helped; one that did wins its tie."""
    V = dg.VariantSummary
    s = [
        V("baseline", dg.GOOD_FIT, 0.99, 0.95, 0.95, 0.04, n_val=270),
        V("dropout", dg.GOOD_FIT, 0.98, 0.96, 0.96, 0.02, n_val=270),  # within noise
    ]
    assert dg.choose_best(s)[0] == "dropout"  # alone, the smaller gap breaks the tie
    effects = dg.compare_to_baseline(s, CFG.min_effect)
    assert not effects["dropout"]["helped"]
    best, reason = dg.choose_best(s, effects)
    assert best == "baseline" and "none of them measurably helped" in reason
    recs = dg.recommend(s, effects, best)
    assert recs[0]["action"].startswith("No mitigation measurably helped")
    assert recs[-1]["action"].startswith("Use `baseline`")
    helped = {**effects, "dropout": {**effects["dropout"], "helped": True}}
    best, reason = dg.choose_best(s, helped)
    assert best == "dropout" and "smallest gap" in reason  # both earned: the old tie-break


def test_too_early_no_variant_is_underfit_for_converging_more_slowly():
    """Two variants cut by a 3-epoch limit while both still improve; the regularized one
    learns more slowly, so it is far behind the other on both splits. That is no verdict on
    it: both read "too early to tell", the advice is to train longer, and nothing is
    compared or called over-regularized."""

    def cut(train_acc, val_loss):
        return history([2.0, 1.5, 1.1], val_loss, train_acc, [a - 0.02 for a in train_acc])

    fast = cut([0.6, 0.75, 0.85], [1.9, 1.4, 1.0])
    slow = cut([0.3, 0.45, 0.55], [2.2, 1.9, 1.6])
    run = dg.RunFacts(stopped_early=False, n_train=2000)
    ref = dg.Reference(train_accuracy=0.86, val_accuracy=0.84)
    d_fast = dg.diagnose(
        "baseline", fast, S(0.86, 0.9, n=2000), S(0.84, 1.0, n=2000), 10, CFG, ref, run
    )
    d_slow = dg.diagnose(
        "dropout", slow, S(0.56, 1.5, n=2000), S(0.54, 1.6, n=2000), 10, CFG, ref, run
    )
    assert d_slow.training["still_improving"]
    for d in (d_fast, d_slow):
        assert d.verdict == dg.GOOD_FIT and d.label == "too early to tell", d.evidence
    V = dg.VariantSummary
    s = [
        V("baseline", d_fast.verdict, 0.86, 0.84, 0.84, 0.02, n_val=2000, too_early=True,
          still_improving=True, label=d_fast.label, model_label=d_fast.model_label),
        V("dropout", d_slow.verdict, 0.56, 0.54, 0.54, 0.02, n_val=2000, regularized=True,
          too_early=True, still_improving=True, label=d_slow.label, model_label=d_slow.model_label),
    ]  # fmt: skip
    effects = dg.compare_to_baseline(s, CFG.min_effect)
    best, _ = dg.choose_best(s, effects)
    actions = [r["action"] for r in dg.recommend(s, effects, best)]
    assert actions[0].startswith("Train longer"), actions
    assert not any(
        a.startswith(("Regularize", "Give", "Adopt", "Consider", "No mitigation")) for a in actions
    )


def test_a_diverged_run_with_a_sound_saved_model_can_be_best():
    V = dg.VariantSummary
    s = [
        V("baseline", dg.GOOD_FIT, 0.99, 0.97, 0.97, 0.02, n_val=270),
        # Its run diverged after the restored epoch; the saved model is the best one.
        V("dropout", dg.OVERFITTING, 1.0, 0.993, 0.99, 0.007, n_val=270, model_verdict=dg.GOOD_FIT),
    ]
    assert dg.choose_best(s)[0] == "dropout"


def test_an_overfit_saved_model_wins_on_val_only_beyond_noise():
    V = dg.VariantSummary

    def pair(n_val):
        return [
            V("baseline", dg.GOOD_FIT, 0.99, 0.95, 0.95, 0.04, n_val=n_val),
            V(
                "dropout",
                dg.OVERFITTING,
                1.0,
                0.965,
                0.96,
                0.035,
                n_val=n_val,
                model_verdict=dg.OVERFITTING,
            ),
        ]

    # +1.5 points on 270 images is a tie: the sound saved model is preferred...
    best, reason = dg.choose_best(pair(270))
    assert best == "baseline" and "the only sound saved model among them" in reason
    # ...on 100,000 images it is real, and the better model wins, with the caveat said.
    best, reason = dg.choose_best(pair(100_000))
    assert best == "dropout" and "its saved model is overfitting" in reason


def test_best_skips_underfit_and_memorizing_variants_and_says_when_all_are():
    only_bad = [s for s in summaries() if s.name in ("baseline", "small")]
    best, reason = dg.choose_best(only_bad)
    assert best == "baseline"  # overfit, yet the highest val of what generalizes at all
    assert "its saved model is overfitting" in reason
    V = dg.VariantSummary
    hopeless = [
        V("baseline", dg.OVERFITTING, 0.2, 0.11, 0.1, 0.09, memorizing=True),
        V("small", dg.UNDERFITTING, 0.12, 0.12, 0.1, 0.0),
    ]
    best, reason = dg.choose_best(hopeless)
    assert "no variant learned something that generalizes" in reason
    with pytest.raises(ValueError):
        dg.choose_best([])


def test_recommendations_ranked_and_grounded():
    s = summaries()
    eff = dg.compare_to_baseline(s)
    failed = {"class_balance", "split_leakage", "min_images_per_class"}
    recs = dg.recommend(s, eff, "augmentation", failed)
    actions = [r["action"] for r in recs]
    assert actions[0].startswith("Fix the split")
    # A check at severity warning did not fail the run: the advice says flagged.
    assert recs[0]["reason"].startswith("data validation flagged split_leakage:")
    assert any("class weights" in a for a in actions)
    adopt = [r for r in recs if r["action"].startswith("Adopt")]
    # Ranked by effect beyond noise on val accuracy and the gap together.
    assert [r["action"] for r in adopt] == [
        "Adopt the `augmentation` mitigation",
        "Adopt the `dropout` mitigation",
        "Adopt the `l2` mitigation, and strengthen or combine it: its own saved model is still "
        "overfit",
    ]
    assert (
        "gap -17.0 points" in adopt[0]["reason"]
        and "val accuracy +9.0 points" in adopt[0]["reason"]
    )
    assert any("`small`" in a and "capacity" in a for a in actions)
    assert actions[-1].startswith("Use `augmentation`")
    assert [r["rank"] for r in recs] == [str(i) for i in range(1, len(recs) + 1)]


def test_clean_data_gives_no_data_advice():
    s = summaries()
    recs = dg.recommend(s, dg.compare_to_baseline(s), "augmentation", set())
    assert all(r["source"] != "validation" for r in recs)


def test_effects_inside_the_noise_are_no_reason_to_adopt_anything():
    """All 70,000 Fashion-MNIST images: l2 cut the gap 0.1 and added 0.2 val points, ±0.8 noise."""
    V = dg.VariantSummary
    s = [
        V("baseline", dg.OVERFITTING, 0.96, 0.920, 0.911, 0.040, n_val=9000, n_train=9000),
        V(
            "l2",
            dg.GOOD_FIT,
            0.961,
            0.922,
            0.914,
            0.039,
            n_val=9000,
            n_train=9000,
            regularized=True,
        ),
    ]
    eff = dg.compare_to_baseline(s)
    assert eff["l2"]["within_noise"] and eff["l2"]["gap_within_noise"] and not eff["l2"]["helped"]
    recs = dg.recommend(s, eff, "l2", set())
    assert not any(r["action"].startswith(("Adopt", "Consider")) for r in recs)
    assert recs[0]["action"].startswith("No mitigation measurably helped")
    # The same deltas on far more images would be beyond noise: the test has teeth.
    big = [
        V("baseline", dg.OVERFITTING, 0.96, 0.900, 0.9, 0.060, n_val=10**7, n_train=10**7),
        V("l2", dg.GOOD_FIT, 0.961, 0.922, 0.92, 0.039, n_val=10**7, n_train=10**7),
    ]
    assert dg.compare_to_baseline(big)["l2"]["helped"]


def test_memorization_puts_the_labels_first_and_never_advises_capacity():
    V = dg.VariantSummary
    s = [
        # Early stopping kept an epoch-1 model at chance; the history climbed to 24%.
        V(
            "baseline",
            dg.OVERFITTING,
            0.11,
            0.10,
            0.10,
            0.01,
            n_val=300,
            memorizing=True,
            train_peak=0.24,
            val_peak=0.11,
        ),
        V("dropout", dg.UNDERFITTING, 0.12, 0.10, 0.10, 0.02, n_val=300, regularized=True),
        V("small", dg.UNDERFITTING, 0.11, 0.10, 0.10, 0.01, n_val=300),
    ]
    recs = dg.recommend(s, dg.compare_to_baseline(s), "baseline", set())
    assert recs[0]["action"].startswith("Check the labels")
    assert "baseline: train accuracy climbed to 24%, val peaked at 11%" in recs[0]["reason"]
    assert not any("capacity" in r["action"] or "Regularize" in r["action"] for r in recs)
    assert recs[-1]["action"].startswith("Do not deploy `baseline`: no variant generalizes")


def test_an_over_regularized_variant_is_told_to_regularize_less():
    V = dg.VariantSummary
    s = [
        V("baseline", dg.GOOD_FIT, 0.96, 0.93, 0.92, 0.03, n_val=9000),
        V("combined", dg.UNDERFITTING, 0.849, 0.851, 0.843, -0.002, n_val=9000, regularized=True),
    ]
    recs = dg.recommend(s, dg.compare_to_baseline(s), "baseline", set())
    assert any(r["action"].startswith("Regularize `combined` less") for r in recs)


# The baseline's real val loss on the embedded digits (270 val images): it keeps
# falling overall, but jumps 20% between neighbouring epochs. Smoothing must
# keep that noise from reading as overfitting; unsmoothed GL trips on it.
DIGITS_TRAIN_LOSS = [
    2.136,
    1.078,
    0.401,
    0.265,
    0.176,
    0.120,
    0.114,
    0.097,
    0.085,
    0.076,
    0.055,
    0.053,
    0.046,
    0.033,
    0.026,
    0.019,
    0.015,
    0.016,
    0.013,
    0.011,
    0.010,
    0.011,
    0.010,
    0.009,
    0.010,
    0.010,
    0.007,
    0.004,
    0.004,
    0.003,
]
DIGITS_VAL_LOSS = [
    1.731,
    0.590,
    0.331,
    0.321,
    0.241,
    0.223,
    0.225,
    0.199,
    0.179,
    0.150,
    0.108,
    0.114,
    0.127,
    0.103,
    0.094,
    0.085,
    0.086,
    0.071,
    0.078,
    0.081,
    0.061,
    0.062,
    0.070,
    0.074,
    0.075,
    0.061,
    0.064,
    0.059,
    0.058,
    0.063,
]


def noisy_but_improving() -> pd.DataFrame:
    n = len(DIGITS_VAL_LOSS)
    return pd.DataFrame(
        {
            "epoch": range(1, n + 1),
            "loss": DIGITS_TRAIN_LOSS,
            "accuracy": [min(1.0, 0.5 + 0.05 * i) for i in range(n)],
            "val_loss": DIGITS_VAL_LOSS,
            "val_accuracy": [min(0.97, 0.5 + 0.05 * i) for i in range(n)],
        }
    )


def test_smoothing_keeps_val_noise_from_reading_as_overfitting():
    history = noisy_but_improving()
    assert dg.max_generalization_loss(history, window=1).max_gl > 10  # raw noise trips GL
    assert dg.max_generalization_loss(history, window=5).max_gl < 10
    assert dg.onset_epoch(history, 0.05, window=5) is None
    cfg = CFG.model_copy(update={"smoothing_window": 5})
    result = dg.diagnose("baseline", history, S(1.0, 0.002, n=270), S(0.985, 0.06, n=270), 10, cfg)
    assert result.verdict == dg.GOOD_FIT, result.evidence


def sustained_rise(val_accuracy_after: float) -> pd.DataFrame:
    history = noisy_but_improving()
    rise = [0.058 * (1.0 + 0.08 * k) for k in range(1, 11)]
    return pd.concat(
        [
            history,
            pd.DataFrame(
                {
                    "epoch": range(31, 41),
                    "loss": [0.003 * 0.9**k for k in range(10)],
                    "accuracy": [1.0] * 10,
                    "val_loss": rise,
                    "val_accuracy": [val_accuracy_after] * 10,
                }
            ),
        ],
        ignore_index=True,
    )


def test_smoothing_still_sees_a_sustained_rise_and_weighs_it_by_magnitude():
    # The val loss climbs 0.058 -> 0.10 over the last 10 epochs, far above its noise.
    # Under 0.05 nats that is below mild while val accuracy holds...
    holds = dg.diagnose(
        "baseline", sustained_rise(0.96), S(1.0, 0.001, n=270), S(0.98, 0.1, n=270), 10, CFG
    )
    assert holds.training["noise_z"] > CFG.min_noise_z and holds.training["train_loss_fell"]
    assert not holds.training["diverged"] and holds.verdict == dg.GOOD_FIT
    # ...and clear when the accuracy gap widens by 9 points with it (an effect beyond noise).
    drops = dg.diagnose(
        "baseline", sustained_rise(0.88), S(1.0, 0.001, n=270), S(0.98, 0.1, n=270), 10, CFG
    )
    assert drops.training["diverged"] and drops.verdict == dg.OVERFITTING
    assert drops.training["reading"] == "gap_widening" and drops.grade == "clear"
    assert drops.training["gap_widening"] > 1.5 * CFG.clear_overfit_gap
    assert drops.onset_epoch is not None and 29 <= drops.onset_epoch <= 36


def test_smoothing_window_must_be_positive():
    with pytest.raises(ValueError, match="window"):
        dg.smoothed(np.ones(3), 0)


def test_effects_carry_the_noise_of_the_validation_set():
    V = dg.VariantSummary
    s = [
        V("baseline", dg.GOOD_FIT, 1.0, 0.974, 0.98, 0.026, n_val=270),
        V("dropout", dg.GOOD_FIT, 1.0, 0.985, 0.98, 0.015, n_val=270),
        V("big_win", dg.GOOD_FIT, 1.0, 0.80 + 0.2, 0.98, 0.0, n_val=270),
    ]
    eff = dg.compare_to_baseline(s)
    # 270 images at ~97% accuracy: each interval is about +-2 points.
    assert 0.015 < eff["baseline"]["val_accuracy_ci95"] < 0.025
    assert eff["dropout"]["within_noise"] and not eff["dropout"]["helped"]
    assert not eff["big_win"]["within_noise"] and eff["big_win"]["helped"]
    recs = dg.recommend(s, eff, "dropout", set())
    consider = [r for r in recs if r["action"].startswith("Consider")]
    assert [r["action"] for r in consider] == ["Consider the `big_win` mitigation"]


def test_a_mitigation_that_helped_but_is_still_overfit_is_a_step_not_a_fix():
    V = dg.VariantSummary
    s = [
        V("baseline", dg.OVERFITTING, 1.0, 0.70, 0.69, 0.30, n_val=2000),
        # +10 val points and -12 gap points, far beyond noise, but still overfit itself
        V(
            "dropout",
            dg.OVERFITTING,
            0.98,
            0.80,
            0.79,
            0.18,
            n_val=2000,
            model_verdict=dg.OVERFITTING,
        ),
        # closes the gap, but loses 10 points of val accuracy (far beyond noise)
        V("tiny", dg.GOOD_FIT, 0.62, 0.60, 0.60, 0.02, n_val=2000),
    ]
    eff = dg.compare_to_baseline(s, CFG.min_effect)
    assert eff["dropout"]["helped"] and not eff["tiny"]["helped"]
    recs = dg.recommend(s, eff, "dropout", set())
    adopt = [r for r in recs if r["action"].startswith("Adopt")]
    assert [r["action"] for r in adopt] == [
        "Adopt the `dropout` mitigation, and strengthen or combine it: its own saved model "
        "is still overfit"
    ]
    assert not any(r["action"].startswith("No mitigation") for r in recs)


def test_an_effect_beyond_noise_but_below_min_effect_is_no_reason_to_change():
    V = dg.VariantSummary
    s = [
        V("baseline", dg.GOOD_FIT, 0.95, 0.920, 0.92, 0.030, n_val=2_000_000, n_train=2_000_000),
        V("l2", dg.GOOD_FIT, 0.95, 0.922, 0.92, 0.028, n_val=2_000_000, n_train=2_000_000),
    ]
    eff = dg.compare_to_baseline(s, CFG.min_effect)["l2"]
    assert not eff["within_noise"] and not eff["helped"]  # real, but 0.2 points
    assert dg.compare_to_baseline(s, 0.0)["l2"]["helped"]


def test_onset_needs_a_rise_as_long_as_the_smoothing_window():
    h = history(
        [1.0, 0.8, 0.6, 0.5, 0.4, 0.35, 0.3, 0.25], [1.0, 0.8, 0.6, 0.5, 0.45, 0.42, 0.40, 0.60]
    )
    assert dg.onset_epoch(h, 0.05, window=1) == 8  # unsmoothed: the last epoch alone
    assert dg.onset_epoch(h, 0.05, window=5) is None  # one bad epoch is not a trend


# The dropout variant's real val-loss tail on digits: ~0.05, wobbling by 20%.
DROPOUT_VAL_TAIL = [
    0.051,
    0.048,
    0.053,
    0.047,
    0.050,
    0.050,
    0.051,
    0.043,
    0.040,
    0.040,
    0.047,
    0.041,
    0.039,
    0.045,
    0.050,
    0.051,
    0.052,
    0.043,
    0.044,
    0.055,
    0.058,
    0.041,
    0.043,
    0.058,
    0.048,
]


def test_a_rise_within_the_val_noise_is_not_called_overfitting():
    """The dropout variant's real tail on digits: val loss ~0.05 wobbling by 20%."""
    val = DROPOUT_VAL_TAIL
    train = [
        0.043,
        0.051,
        0.065,
        0.054,
        0.052,
        0.046,
        0.044,
        0.042,
        0.044,
        0.037,
        0.042,
        0.037,
        0.038,
        0.043,
        0.029,
        0.043,
        0.037,
        0.040,
        0.042,
        0.028,
        0.041,
        0.034,
        0.033,
        0.033,
        0.031,
    ]
    h = history(train, val, [0.99] * len(val), [0.99] * len(val))
    gl = dg.max_generalization_loss(h, window=5)
    assert gl.max_gl >= 10 and gl.noise_z < 4
    cfg = CFG.model_copy(update={"smoothing_window": 5})
    d = dg.diagnose("dropout", h, S(1.0, 0.03), S(0.993, 0.05), 10, cfg)
    assert d.verdict == dg.GOOD_FIT
    assert any("epoch-to-epoch noise" in e for e in d.evidence)
    # With the noise test off (and any rise material), it reads as overfitting: the test has teeth.
    loose = cfg.model_copy(update={"min_noise_z": 0.0, "clear_loss_rise": 0.001})
    assert dg.diagnose("dropout", h, S(1.0, 0.03), S(0.993, 0.05), 10, loose).verdict == (
        dg.OVERFITTING
    )


def test_no_onset_is_reported_for_a_rise_within_the_noise():
    val = DROPOUT_VAL_TAIL
    train = [0.04 - 0.0004 * i for i in range(len(val))]
    h = history(train, val, [0.99] * len(val), [0.99] * len(val))
    cfg = CFG.model_copy(update={"smoothing_window": 5})
    assert dg.onset_epoch(h, 0.05, window=5) is not None  # the raw rule alone finds one
    d = dg.diagnose("dropout", h, S(1.0, 0.03), S(0.993, 0.05), 10, cfg)
    assert d.onset_epoch is None
    assert not any("onset" in e for e in d.evidence)


def test_seed_variance_widens_the_noise_of_a_difference():
    """+2 points on 9,000 images is beyond binomial noise, not beyond a 2-point seed spread."""
    V = dg.VariantSummary
    one = [
        V("baseline", dg.GOOD_FIT, 0.95, 0.90, 0.9, 0.05, n_val=9000, n_train=9000),
        V("dropout", dg.GOOD_FIT, 0.94, 0.92, 0.92, 0.02, n_val=9000, n_train=9000),
    ]
    assert dg.compare_to_baseline(one)["dropout"]["helped"]
    spread = 0.02**2  # seed-to-seed standard deviation of 2 points, val and gap
    seeds = [
        V(
            "baseline",
            dg.GOOD_FIT,
            0.95,
            0.90,
            0.9,
            0.05,
            n_val=9000,
            n_train=9000,
            seed_var_val=spread,
            seed_var_gap=spread,
        ),
        V(
            "dropout",
            dg.GOOD_FIT,
            0.94,
            0.92,
            0.92,
            0.02,
            n_val=9000,
            n_train=9000,
            seed_var_val=spread,
            seed_var_gap=spread,
        ),
    ]
    eff = dg.compare_to_baseline(seeds)["dropout"]
    assert eff["delta_val_ci95"] > 2 * dg.compare_to_baseline(one)["dropout"]["delta_val_ci95"]
    assert eff["within_noise"] and not eff["helped"]


def test_a_dominant_class_does_not_make_a_good_model_underfit():
    """Binary data, 90% majority: 99% train is far from chance though 9 points above it."""
    d = dg.diagnose(
        "b", flat(), S(0.99, 0.05, n=5000, chance=0.9), S(0.98, 0.06, n=5000, chance=0.9), 2, CFG
    )
    assert not d.rules["near_chance"] and d.verdict == dg.GOOD_FIT
    # Answering the majority class every time is still underfitting.
    d = dg.diagnose(
        "b", flat(), S(0.905, 0.3, n=5000, chance=0.9), S(0.9, 0.3, n=5000, chance=0.9), 2, CFG
    )
    assert d.rules["near_chance"] and d.verdict == dg.UNDERFITTING


def test_unstable_training_is_said_in_the_answer():
    h = history(
        [1.0, 0.8, 0.7, 1.0, 1.4, 1.8, 2.2, 2.6, 3.0, 3.4],
        [1.1, 0.9, 0.8, 1.1, 1.5, 1.9, 2.3, 2.7, 3.1, 3.5],
        [0.5, 0.6, 0.7, 0.6, 0.5, 0.45, 0.4, 0.35, 0.3, 0.3],
        [0.5, 0.6, 0.7, 0.6, 0.5, 0.45, 0.4, 0.35, 0.3, 0.3],
    )
    d = dg.diagnose("lr", h, S(0.7, 0.8, n=500), S(0.69, 0.8, n=500), 10, CFG)
    assert d.training["unstable"] and not d.training["diverged"]
    assert "training is unstable" in d.summary and "learning rate" in d.summary


def test_a_large_gap_within_noise_is_inconclusive_not_a_clean_bill():
    d = dg.diagnose("x", flat(), S(1.0, 0.01, n=20), S(0.87, 0.4, n=20), 10, CFG)
    assert d.verdict == dg.GOOD_FIT and not d.rules["gap_material"]
    assert d.summary.startswith("Cannot tell yet") and "20 validation images" in d.summary


def test_a_small_rise_on_big_data_is_not_material_in_nats():
    """A 0.03-nat rise from 0.23, far above its noise on 10,000 images: the model's average
    probability on the true class down 3%, below mild."""
    e = np.arange(1, 31)
    val = np.where(e <= 10, 0.23 + 0.12 * np.exp(-(e - 1) / 2.0), 0.23 + 0.0015 * (e - 10))
    h = history(2.0 * np.exp(-e / 5.0), val, np.full(30, 0.95), np.full(30, 0.93))
    run = dg.RunFacts(best_epoch=10, stopped_early=True, n_train=50_000)
    d = dg.diagnose("b", h, S(0.95, 0.15, n=10_000), S(0.93, 0.23, n=10_000), 10, CFG, run=run)
    t = d.training
    assert t["noise_z"] > CFG.min_noise_z and t["train_loss_fell"]  # a real rise
    assert t["val_loss_rise"] < CFG.mild_score * CFG.clear_loss_rise and not t["diverged"]
    assert d.label == "good fit"


def test_paired_comparison_counts_only_the_images_the_models_disagree_on():
    """Same 1,000 val images: B fixes 25 of A's errors and breaks 5 -> +2.0 points."""
    rng = np.random.default_rng(0)
    a = rng.random(1000) < 0.90
    b = a.copy()
    wrong, right = np.flatnonzero(~a), np.flatnonzero(a)
    b[wrong[:25]] = True
    b[right[:5]] = False
    V = dg.VariantSummary

    def pair(paired: bool):
        return [
            V(
                name,
                dg.GOOD_FIT,
                0.95,
                c.mean(),
                0.9,
                0.95 - c.mean(),
                n_val=1000,
                val_correct=c if paired else None,
            )
            for name, c in (("baseline", a), ("dropout", b))
        ]

    paired = dg.compare_to_baseline(pair(True), CFG.min_effect)["dropout"]
    unpaired = dg.compare_to_baseline(pair(False), CFG.min_effect)["dropout"]
    assert paired["delta_val_accuracy"] == pytest.approx(0.020)
    # 30 disagreements out of 1,000: about +-1.1 points paired, +-2.6 unpaired.
    assert paired["delta_val_ci95"] < 0.5 * unpaired["delta_val_ci95"]
    assert not paired["within_noise"] and unpaired["within_noise"]
    assert dg.paired_variance(a, a) == pytest.approx(1 / 1000**2)  # identical: floored
    assert dg.paired_variance(a, b[:500]) is None  # different images: unpaired


def _run_pair(drop_widening: float, *, drop_diverged: bool = False, drop_val: float = 0.86):
    """Baseline diverged (gap widened 8 points after its best epoch); dropout as given."""
    V = dg.VariantSummary
    run = {"n_val": 2000, "n_train": 2000, "gap_widening_noise": 0.016}
    return [
        V("baseline", dg.OVERFITTING, 0.93, 0.855, 0.85, 0.075, diverged=True, **run,
          gap_widening=0.08, model_verdict=dg.GOOD_FIT),
        V("dropout", dg.GOOD_FIT, 0.93, drop_val, 0.85, 0.93 - drop_val,
          diverged=drop_diverged, gap_widening=drop_widening, **run),
    ]  # fmt: skip


def test_a_mitigation_whose_run_stops_diverging_steadied_it_and_is_adopted():
    """Best epochs restored: saved gaps alike; the run left running is what changed."""
    s = _run_pair(0.01)
    eff = dg.compare_to_baseline(s, CFG.min_effect)
    drop = eff["dropout"]
    assert drop["gap_within_noise"] and drop["within_noise"]  # saved models: no difference
    assert drop["delta_gap_widening"] == pytest.approx(-0.07)
    assert drop["delta_gap_widening_ci95"] == pytest.approx(0.016 * 2**0.5)
    assert drop["steadied"] and drop["helped"]
    recs = dg.recommend(s, eff, "dropout", set())
    assert recs[0]["action"] == "Adopt the `dropout` mitigation"
    assert "no longer overfits if left running" in recs[0]["reason"]
    assert "+1.0 points vs +8.0 points" in recs[0]["reason"]
    assert dg.choose_best(s)[0] == "dropout"


@pytest.mark.parametrize(
    ("widening", "diverged", "val", "why"),
    [
        (0.06, False, 0.86, "2 points narrower: inside the 2.3-point noise"),
        (0.01, True, 0.86, "its own run diverged too"),
        (0.01, False, 0.80, "lost val accuracy beyond noise"),
    ],
)
def test_a_run_is_not_steadied_without_a_difference_beyond_noise(widening, diverged, val, why):
    eff = dg.compare_to_baseline(
        _run_pair(widening, drop_diverged=diverged, drop_val=val), CFG.min_effect
    )
    assert not eff["dropout"]["steadied"], why


def test_a_run_is_not_steadied_when_the_reference_never_diverged():
    s = _run_pair(0.01)
    s[0] = dataclasses.replace(s[0], diverged=False, verdict=dg.GOOD_FIT)
    assert not dg.compare_to_baseline(s, CFG.min_effect)["dropout"]["steadied"]


def test_among_tied_models_a_run_that_does_not_diverge_wins_before_the_smaller_gap():
    V = dg.VariantSummary
    s = [
        V("baseline", dg.OVERFITTING, 0.944, 0.855, 0.86, 0.089, n_val=2000, diverged=True),
        V("dropout", dg.OVERFITTING, 0.955, 0.860, 0.86, 0.095, n_val=2000),
    ]
    best, reason = dg.choose_best(s)
    assert best == "dropout"
    assert "a run that does not diverge if left running" in reason
