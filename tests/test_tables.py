"""pipeline.tables: comparison.csv/.md and metrics.json from an evaluation payload."""

from __future__ import annotations

import pandas as pd

from pipeline import tables


def variant(verdict: str, val: float, gap: float, seeds: dict | None = None) -> dict:
    return {
        "verdict": verdict,
        "model_verdict": verdict,
        "grade": "clear",
        "label": verdict.replace("_", " ") + (" (clear)" if verdict == "overfitting" else ""),
        "model_label": verdict.replace("_", " "),
        "score": 1.5 if verdict == "overfitting" else 0.2,
        "training": {"diverged": False},
        "train": {"accuracy": val + gap},
        "val": {"accuracy": val},
        "test": {"accuracy": val - 0.01},
        "gap": {"accuracy": gap},
        "onset_epoch": None,
        "best_epoch": 3,
        "epochs_run": 5,
        "seeds": seeds,
    }


def effect(delta_val: float, helped: bool) -> dict:
    return {
        "delta_val_accuracy": delta_val,
        "delta_test_accuracy": delta_val,
        "delta_gap": -delta_val,
        "delta_val_ci95": 0.02,
        "delta_gap_ci95": 0.03,
        "delta_gap_widening": None,  # the runs' widening unknown (no history)
        "delta_gap_widening_ci95": None,
        "steadied": False,
        "helped": helped,
    }


def one_seed() -> dict:
    return {"n_seeds": 1}


def three_seeds() -> dict:
    return {
        "n_seeds": 3,
        "val_accuracy": {"mean": 0.9, "ci95": 0.01, "sd": 0.004},
        "gap": {"mean": 0.02, "ci95": 0.005, "sd": 0.002},
        "agreement": "good_fit in 3 of 3 seeds",
    }


def evaluation(dropout_seeds: dict) -> dict:
    return {
        "variants": {
            "baseline": variant("overfitting", 0.8, 0.2, one_seed()),
            "dropout": variant("good_fit", 0.9, 0.02, dropout_seeds),
        },
        "effects": {"baseline": effect(0.0, False), "dropout": effect(0.1, True)},
        "best_variant": "dropout",
        "reference_variant": "baseline",
    }


def test_comparison_with_one_seed_has_no_seed_columns_or_section():
    frame, markdown = tables.comparison(evaluation(one_seed()))
    assert list(frame.columns) == tables.COMPARISON_COLUMNS
    assert frame["variant"].tolist() == ["baseline", "dropout"]
    assert str(frame["onset_epoch"].dtype) == "Int64"
    assert "Δ columns are relative to `baseline`" in markdown
    assert "| **dropout** (best) | good fit | good fit |" in markdown
    assert "| baseline | overfitting (clear) |" in markdown
    assert "| +10.0 (±2.0) |" in markdown and "| yes |" in markdown
    assert "Across training seeds" not in markdown


def test_comparison_with_several_seeds_adds_columns_and_a_section():
    frame, markdown = tables.comparison(evaluation(three_seeds()))
    assert frame.columns[: len(tables.COMPARISON_COLUMNS)].tolist() == tables.COMPARISON_COLUMNS
    rows = frame.set_index("variant")
    assert rows.loc["dropout", "n_seeds"] == 3 and rows.loc["baseline", "n_seeds"] == 1
    assert rows.loc["dropout", "seeds_val_accuracy_ci95"] == 0.01
    assert pd.isna(rows.loc["baseline", "seeds_val_accuracy_mean"])
    assert rows.loc["dropout", "verdict_agreement"] == "good_fit in 3 of 3 seeds"
    assert "## Across training seeds" in markdown
    assert "| dropout | 3 | 90.0% ± 1.0 pts | +2.0 ± 0.5 | good_fit in 3 of 3 seeds |" in markdown
    assert "| baseline | 1 |" not in markdown


def test_flat_metrics_are_per_variant():
    metrics = tables.flat_metrics(evaluation(one_seed()))
    assert metrics["dropout"] == {
        "test_accuracy": 0.89,
        "val_accuracy": 0.9,
        "train_accuracy": 0.92,
        "gap": 0.02,
        "verdict": "good_fit",
        "label": "good fit",
        "overfit_score": 0.2,
    }
