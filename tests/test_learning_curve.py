"""pipeline.learning_curve: intervals, trend and sentences from hand-made points."""

from __future__ import annotations

import pytest

from pipeline import learning_curve as lc
from pipeline.learning_curve import CurvePoint


def test_wilson_interval_matches_the_textbook_and_stays_in_range():
    low, high = lc.wilson_interval(0.5, 100)
    assert (round(low, 4), round(high, 4)) == (0.4038, 0.5962)
    assert lc.wilson_interval(1.0, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert lc.wilson_interval(0.0, 10)[0] == 0.0


def test_difference_interval_is_newcombes_hybrid_score():
    # Newcombe (1998), Stat. Med. 17:873, example (a): 56/70 vs 48/80 -> 0.0524 to 0.3339.
    a, b = 56 / 70, 48 / 80
    low, high = lc.difference_interval(a, lc.wilson_interval(a, 70), b, lc.wilson_interval(b, 80))
    assert (round(low, 4), round(high, 4)) == (0.0524, 0.3339)


def test_rising_curve_beyond_noise_says_more_data_helps():
    points = [
        CurvePoint(600, 1.0, 0.93, 270, mlflow_run_id="r2"),
        CurvePoint(300, 1.0, 0.90, 270, mlflow_run_id="r1"),  # order does not matter
        CurvePoint(1200, 0.99, 0.97, 270, n_train_scored=270, mlflow_run_id="full"),
    ]
    result = lc.analyse(points, "baseline")
    assert [p["n_train"] for p in result["points"]] == [300, 600, 1200]
    assert [p["fraction"] for p in result["points"]] == [0.25, 0.5, 1.0]
    assert result["points"][0]["mlflow_run_id"] == "r1"
    assert result["points"][2]["n_train_scored"] == 270
    step = result["last_step"]
    assert step["delta_val_accuracy"] == pytest.approx(0.04)
    assert step["ci95"][0] > 0 and step["trend"] == "rising"
    assert result["still_rising"] is True
    assert result["summary"].startswith("rising: +4.0 points of val accuracy from 50% to 100%")
    assert "beyond noise, more data of the same kind is likely to help" in result["summary"]
    # Gap 10 points at 25% -> 2 points at full data: shrinking beyond noise.
    assert result["gap_change"]["delta_gap"] == pytest.approx(-0.08)
    assert result["gap_shrinks"] is True
    assert "+10.0 points at 25%" in result["gap_summary"] and "shrinks" in result["gap_summary"]
    for p in result["points"]:
        assert p["val_ci95"][0] <= p["val_accuracy"] <= p["val_ci95"][1]
        assert p["gap_ci95"][0] <= p["gap"] <= p["gap_ci95"][1]


def test_a_step_within_noise_on_a_small_val_set_is_inconclusive_not_flat():
    points = [CurvePoint(300, 1.0, 0.95, 270), CurvePoint(600, 1.0, 0.96, 270)]
    points.append(CurvePoint(1200, 1.0, 0.963, 270))
    result = lc.analyse(points)
    assert result["last_step"]["trend"] == "inconclusive" and result["still_rising"] is False
    low, high = result["last_step"]["ci95"]
    assert low < 0 < high and high > lc.PLATEAU_GAIN
    assert result["summary"].startswith("inconclusive: +0.3 points of val accuracy from 50%")
    assert "cannot tell whether more data would help" in result["summary"]
    assert result["gap_change"]["trend"] == "flat" and result["gap_shrinks"] is False


def test_flat_only_when_the_interval_rules_out_a_real_gain():
    points = [CurvePoint(30_000, 1.0, 0.930, 50_000), CurvePoint(60_000, 1.0, 0.931, 50_000)]
    result = lc.analyse(points)
    assert result["last_step"]["trend"] == "flat" and result["last_step"]["ci95"][1] < 0.01
    assert "more data of the same kind is unlikely to help much" in result["summary"]


def test_a_big_validation_set_makes_a_small_rise_significant():
    # The same +1 point is noise on 270 val images and signal on 20,000.
    small = lc.analyse([CurvePoint(500, 1.0, 0.95, 270), CurvePoint(1000, 1.0, 0.96, 270)])
    big = lc.analyse([CurvePoint(500, 1.0, 0.95, 20000), CurvePoint(1000, 1.0, 0.96, 20000)])
    assert not small["still_rising"] and big["still_rising"]


def test_falling_curve_is_reported_as_falling():
    result = lc.analyse([CurvePoint(500, 1.0, 0.97, 5000), CurvePoint(1000, 1.0, 0.90, 5000)])
    assert result["last_step"]["trend"] == "falling" and not result["still_rising"]
    assert result["summary"].startswith("falling: -7.0 points")


@pytest.mark.parametrize(
    "points, message",
    [
        ([CurvePoint(100, 1.0, 0.9, 50)], "at least 2 points"),
        ([CurvePoint(100, 1.0, 0.9, 50), CurvePoint(100, 1.0, 0.95, 50)], "same n_train"),
        ([CurvePoint(100, 1.0, 0.9, 0), CurvePoint(200, 1.0, 0.95, 50)], "positive"),
        ([CurvePoint(100, 1.0, 0.9, 50), CurvePoint(200, 1.2, 0.95, 50)], "train_accuracy"),
        ([CurvePoint(100, 1.0, -0.1, 50), CurvePoint(200, 1.0, 0.95, 50)], "val_accuracy"),
    ],
)
def test_bad_points_raise_value_error(points, message):
    with pytest.raises(ValueError, match=message):
        lc.analyse(points)


def test_the_module_does_not_import_tensorflow():
    import subprocess
    import sys

    code = "import sys, pipeline.learning_curve; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
