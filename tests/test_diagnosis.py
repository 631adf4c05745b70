"""pipeline.diagnosis on hand-built histories: pure, fast, no TensorFlow."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from pipeline import diagnosis as dg
from pipeline.config import EvaluateConfig

from .conftest import REPO

CFG = EvaluateConfig()


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


def test_early_stopped_run_with_rising_val_loss_is_overfitting():
    """Early stopping restored epoch 4 (small gap) but the history shows the turn."""
    d = dg.diagnose("baseline", turned_up(), S(0.97, 0.1), S(0.93, 0.25), 10, CFG, best_epoch=4)
    assert d.verdict == dg.OVERFITTING
    assert d.rules["generalization_loss"] and not d.rules["relative_gap"]
    assert d.onset_epoch == 5 and d.best_epoch == 4 and d.epochs_run == 12
    text = " ".join(d.evidence)
    assert re.search(r"val loss \(5-epoch mean\) rose \d+% above its minimum \(epoch [45]\)", text)
    assert re.search(r"train loss fell [6-9]\d%", text)
    assert "onset at epoch 5" in text


def test_large_relative_gap_is_overfitting():
    d = dg.diagnose("big", flat(), S(1.0, 0.01), S(0.8, 0.9), 10, CFG)
    assert d.verdict == dg.OVERFITTING
    assert d.gap["relative"] == pytest.approx(0.2)
    assert any("relative gap 20.0%" in e for e in d.evidence)


def test_threshold_is_configurable():
    lenient = EvaluateConfig(overfit_relative_gap=0.5)
    assert dg.diagnose("big", flat(), S(1.0, 0.01), S(0.8, 0.9), 10, lenient).verdict == dg.GOOD_FIT
    high_gl = EvaluateConfig(generalization_loss_threshold=50.0)
    d = dg.diagnose("b", turned_up(), S(0.97, 0.1), S(0.93, 0.25), 10, high_gl)
    assert d.verdict == dg.GOOD_FIT


def test_near_chance_is_underfitting_and_wins_over_overfitting():
    h = history([2.3, 2.2, 2.1, 2.0], [2.3, 2.25, 2.5, 2.8])
    d = dg.diagnose("tiny", h, S(0.15, 2.1), S(0.10, 2.8), 10, CFG)
    assert d.verdict == dg.UNDERFITTING
    assert d.rules["near_chance"]
    assert any("chance (10.0% for 10 classes)" in e for e in d.evidence)


def test_far_behind_best_variant_is_underfitting():
    d = dg.diagnose("small", flat(), S(0.7, 0.8), S(0.68, 0.85), 10, CFG, best_train_accuracy=0.99)
    assert d.verdict == dg.UNDERFITTING
    assert d.rules["behind_best"] and not d.rules["near_chance"]
    # The same numbers alone (no better variant) are a good fit.
    assert dg.diagnose("small", flat(), S(0.7, 0.8), S(0.68, 0.85), 10, CFG).verdict == dg.GOOD_FIT


def test_good_fit_with_borderline_gap_says_so():
    d = dg.diagnose("ok", flat(), S(0.95, 0.2), S(0.88, 0.3), 10, CFG)
    assert d.verdict == dg.GOOD_FIT
    assert any(e.startswith("borderline: accuracy gap 7.0%") for e in d.evidence)
    d2 = dg.diagnose("ok", flat(), S(0.95, 0.2), S(0.93, 0.3), 10, CFG)
    assert not any(e.startswith("borderline") for e in d2.evidence)


def test_diagnose_rejects_bad_inputs():
    with pytest.raises(ValueError, match="n_classes"):
        dg.diagnose("x", flat(), S(0.9, 0.1), S(0.9, 0.1), 1, CFG)
    with pytest.raises(ValueError, match="train scores"):
        dg.diagnose("x", flat(), S(1.5, 0.1), S(0.9, 0.1), 10, CFG)
    with pytest.raises(ValueError, match="empty"):
        dg.diagnose("x", history([], []), S(0.9, 0.1), S(0.9, 0.1), 10, CFG)


# --------------------------------------------------------------------------- comparison


def summaries() -> list[dg.VariantSummary]:
    V = dg.VariantSummary
    return [
        V("baseline", dg.OVERFITTING, 1.0, 0.80, 0.79, 0.20),
        V("dropout", dg.GOOD_FIT, 0.95, 0.88, 0.87, 0.07),
        V("l2", dg.GOOD_FIT, 0.97, 0.86, 0.86, 0.11),
        V("augmentation", dg.GOOD_FIT, 0.92, 0.89, 0.88, 0.03),
        V("small", dg.UNDERFITTING, 0.40, 0.38, 0.39, 0.02),
    ]


def test_effects_are_deltas_vs_baseline():
    eff = dg.compare_to_baseline(summaries())
    assert eff["baseline"]["delta_val_accuracy"] == 0
    assert eff["dropout"]["delta_val_accuracy"] == pytest.approx(0.08)
    assert eff["augmentation"]["delta_gap"] == pytest.approx(-0.17)
    assert eff["l2"]["reference"] == "baseline"


def test_reference_falls_back_to_first_variant():
    assert dg.reference_variant(["a", "b"]) == "a"
    with pytest.raises(ValueError):
        dg.reference_variant([])


def test_best_is_highest_val_accuracy_among_good_fits():
    best, reason = dg.choose_best(summaries())
    assert best == "augmentation"
    assert "good_fit" in reason


def test_best_falls_back_to_highest_val_accuracy_and_says_so():
    only_bad = [s for s in summaries() if s.verdict != dg.GOOD_FIT]
    best, reason = dg.choose_best(only_bad)
    assert best == "baseline"
    assert "no variant was diagnosed good_fit" in reason and "overfitting" in reason
    with pytest.raises(ValueError):
        dg.choose_best([])


def test_recommendations_ranked_and_grounded():
    s = summaries()
    eff = dg.compare_to_baseline(s)
    validation = {
        "success": False,
        "warnings": ["class_balance"],
        "errors": ["split_leakage"],
        "checks": [{"name": "min_images_per_class", "success": False}],
    }
    recs = dg.recommend(s, eff, "augmentation", validation)
    actions = [r["action"] for r in recs]
    assert actions[0].startswith("Fix the split")
    assert any("class weights" in a for a in actions)
    assert any("augmentation" in a.lower() for a in actions if "Add data" in a)
    adopt = next(r for r in recs if r["action"].startswith("Adopt"))
    assert "`augmentation`" in adopt["action"] and "-17.0%" in adopt["reason"]
    assert any("`small`" in a and "capacity" in a for a in actions)
    assert actions[-1].startswith("Use `augmentation`")
    assert [r["rank"] for r in recs] == [str(i) for i in range(1, len(recs) + 1)]


def test_clean_data_gives_no_data_advice():
    s = summaries()
    recs = dg.recommend(
        s, dg.compare_to_baseline(s), "augmentation", {"success": True, "checks": []}
    )
    assert all(r["source"] != "validation" for r in recs)


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
    result = dg.diagnose(
        "baseline", history, dg.SplitScores(1.0, 0.002), dg.SplitScores(0.974, 0.06), 10, cfg
    )
    assert result.verdict == dg.GOOD_FIT, result.evidence


def test_smoothing_still_sees_a_sustained_rise():
    history = noisy_but_improving()
    rise = [0.058 * (1.0 + 0.08 * k) for k in range(1, 11)]
    history = pd.concat(
        [
            history,
            pd.DataFrame(
                {
                    "epoch": range(31, 41),
                    "loss": [0.003 * 0.9**k for k in range(10)],
                    "accuracy": [1.0] * 10,
                    "val_loss": rise,
                    "val_accuracy": [0.96] * 10,
                }
            ),
        ],
        ignore_index=True,
    )
    cfg = CFG.model_copy(update={"smoothing_window": 5})
    result = dg.diagnose(
        "baseline", history, dg.SplitScores(1.0, 0.001), dg.SplitScores(0.96, 0.1), 10, cfg
    )
    assert result.verdict == dg.OVERFITTING
    assert result.onset_epoch is not None and 30 <= result.onset_epoch <= 36


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
    assert eff["dropout"]["within_noise"]  # +1.1 points on 270 images is noise
    assert not eff["big_win"]["within_noise"]
    recs = dg.recommend(s, eff, "dropout", {"success": True, "checks": []})
    consider = next(r for r in recs if r["action"].startswith("Consider"))
    assert "within the noise of 270 validation images" in consider["reason"]


def test_an_overfitting_or_worse_variant_is_never_the_adopted_mitigation():
    V = dg.VariantSummary
    s = [
        V("baseline", dg.OVERFITTING, 1.0, 0.80, 0.79, 0.20, n_val=2000),
        # closes the gap most, but is itself overfitting
        V("l2", dg.OVERFITTING, 0.95, 0.83, 0.82, 0.12, n_val=2000),
        # closes the gap, good fit, but loses 10 points of val accuracy (far beyond noise)
        V("tiny", dg.GOOD_FIT, 0.72, 0.70, 0.70, 0.02, n_val=2000),
    ]
    recs = dg.recommend(s, dg.compare_to_baseline(s), "l2", {"success": True, "checks": []})
    assert not any(r["action"].startswith("Adopt") for r in recs)
    assert recs[0]["action"].startswith("No mitigation tried here fixed the overfitting")


def test_augmentation_advice_reads_the_variant_config_not_its_name():
    V = dg.VariantSummary
    s = [
        V("baseline", dg.OVERFITTING, 1.0, 0.80, 0.79, 0.20),
        V("rotations", dg.GOOD_FIT, 0.95, 0.86, 0.85, 0.09, augmented=True),
        V("augment_named_but_not", dg.GOOD_FIT, 0.97, 0.70, 0.70, 0.27),
    ]
    recs = dg.recommend(s, dg.compare_to_baseline(s), "rotations", {"success": True})
    more_data = next(r for r in recs if r["action"].startswith("Get more training data"))
    assert "rotations" in more_data["reason"]
    assert "augment_named_but_not" not in more_data["reason"]


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
    # With the noise test off, the same history reads as overfitting: the test has teeth.
    loose = cfg.model_copy(update={"min_noise_z": 0.0})
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
