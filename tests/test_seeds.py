"""pipeline.seeds: aggregation across training seeds, on hand-made numbers."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from pipeline import seeds

from .conftest import REPO


def test_mean_sd_and_student_t_interval():
    # mean 0.90, deviations -0.02, 0, +0.02 -> sd 0.02; t(0.975, 2) = 4.302653
    out = seeds.spread([0.88, 0.90, 0.92])
    assert out["mean"] == pytest.approx(0.90)
    assert out["sd"] == pytest.approx(0.02)
    assert out["ci95"] == pytest.approx(4.302653 * 0.02 / math.sqrt(3), rel=1e-6)
    assert (out["low"], out["high"]) == pytest.approx((0.90 - out["ci95"], 0.90 + out["ci95"]))


def test_t_quantile_matches_the_table_and_approaches_the_normal():
    assert seeds.t_quantile(1) == pytest.approx(12.7062, rel=1e-4)
    assert seeds.t_quantile(4) == pytest.approx(2.7764, rel=1e-4)
    assert seeds.t_quantile(10_000) == pytest.approx(1.96, abs=1e-3)
    with pytest.raises(ValueError, match="degrees of freedom"):
        seeds.t_quantile(0)


def test_one_seed_has_a_mean_but_no_spread():
    out = seeds.spread([0.9])
    assert out == {"mean": 0.9, "sd": None, "ci95": None, "low": None, "high": None}


def test_identical_seeds_give_a_zero_width_interval():
    out = seeds.spread([0.5, 0.5])
    assert out["sd"] == 0.0 and out["ci95"] == 0.0


def test_summary_of_three_agreeing_seeds():
    out = seeds.summarize_seeds([0.90, 0.92, 0.91], [0.05, 0.03, 0.04], ["overfitting"] * 3)
    assert out["n_seeds"] == 3
    assert out["val_accuracy"]["mean"] == pytest.approx(0.91)
    assert out["gap"]["mean"] == pytest.approx(0.04)
    assert out["gap"]["sd"] == pytest.approx(0.01)
    assert out["counts"] == {"overfitting": 3}
    assert out["majority"] == "overfitting"
    assert out["agreement"] == "overfitting in 3 of 3 seeds"
    assert seeds.describe(out) == (
        f"gap 4.0 ± {out['gap']['ci95'] * 100:.1f} points over 3 seeds; overfitting in 3 of 3 seeds"
    )


def test_agreement_majority_and_tie():
    out = seeds.verdict_agreement(["good_fit", "overfitting", "good_fit"])
    assert out["counts"] == {"good_fit": 2, "overfitting": 1}
    assert out["majority"] == "good_fit"
    assert out["agreement"] == "good_fit in 2 of 3 seeds"
    tie = seeds.verdict_agreement(["overfitting", "good_fit"])
    assert tie["majority"] is None
    assert tie["agreement"] == "no majority: good_fit in 1, overfitting in 1 of 2 seeds"
    assert seeds.verdict_agreement(["good_fit"])["agreement"] == "good_fit in 1 of 1 seed"


def test_seed_variance_of_a_difference():
    a = seeds.summarize_seeds([0.88, 0.90, 0.92], [0, 0, 0], ["good_fit"] * 3)  # sd 0.02
    b = seeds.summarize_seeds([0.80, 0.84], [0, 0], ["good_fit"] * 2)  # sd 0.02828...
    expected = 0.02**2 / 3 + (0.04 * math.sqrt(2) / 2) ** 2 / 2
    assert seeds.seed_variance_of_difference(a, b) == pytest.approx(expected)
    single = seeds.summarize_seeds([0.85], [0.01], ["good_fit"])
    # One seed measures no spread: it adds nothing (today's binomial-only noise).
    assert seeds.seed_variance_of_difference(a, single) == pytest.approx(0.02**2 / 3)
    assert seeds.seed_variance_of_difference(single, single) == 0.0


def test_empty_input_is_a_value_error():
    with pytest.raises(ValueError, match="at least one seed"):
        seeds.summarize_seeds([], [], [])
    with pytest.raises(ValueError, match="at least one seed"):
        seeds.verdict_agreement([])


def test_mismatched_lengths_are_a_value_error():
    with pytest.raises(ValueError, match="2 val accuracies, 1 gaps, 2 verdicts"):
        seeds.summarize_seeds([0.9, 0.8], [0.1], ["good_fit", "good_fit"])


def test_non_finite_values_are_a_value_error():
    with pytest.raises(ValueError, match="non-finite"):
        seeds.spread([0.9, float("nan")])


def test_module_imports_no_tensorflow():
    code = (
        "import sys, pipeline.seeds; print('tensorflow' in sys.modules or 'keras' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"
