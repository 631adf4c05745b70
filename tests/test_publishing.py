"""pipeline.publishing: what evaluate records on the variants' runs, in a real MLflow backend."""

from __future__ import annotations

import json
import math

import pytest

from pipeline import plots, publishing, tracking
from pipeline.catalog.validation import Validation
from pipeline.cli import StageError

from .conftest import small_params

SPLIT = {"accuracy": 0.9, "loss": 0.3, "precision": 0.9, "recall": 0.9, "f1": 0.9}


def entry(run_id: str, onset_epoch: int | None = None, rise: float = 0.1) -> dict:
    """A variant's evaluation.json block, as much of it as publishing reads."""
    return {
        "train": SPLIT,
        "val": SPLIT,
        "test": SPLIT,
        "gap": {"accuracy": 0.05, "relative": 0.06, "loss": 0.1, "score": 0.3},
        "max_generalization_loss": 2.0,
        "training": {"diverged": False, "val_loss_rise": rise, "score": 0.2},
        "score": 0.3,
        "grade": "clear",
        "label": "good fit",
        "model_label": "good fit",
        "too_early": False,
        "onset_epoch": onset_epoch,
        "verdict": "good_fit",
        "model_verdict": "good_fit",
        "summary": "No, it generalizes.",
        "evidence": ["gap 5.0 points", "no rise"],
        "memorization": {},
        "rules": {"memorization": False},
        "mlflow_run_id": run_id,
    }


def test_mlflow_metrics_are_finite():
    assert publishing.finite(0.25) == 0.25
    assert publishing.finite(math.inf) == 1e6
    assert publishing.finite(-math.inf) == 0.0 and publishing.finite(math.nan) == 0.0
    metrics = publishing.variant_run_metrics(entry("r", rise=math.inf))
    assert metrics["eval/val_loss_rise"] == 1e6
    assert (metrics["eval/overfit_score"], metrics["eval/run_score"]) == (0.3, 0.2)
    assert "eval/onset_epoch" not in metrics
    assert publishing.variant_run_metrics(entry("r", onset_epoch=4))["eval/onset_epoch"] == 4.0
    assert {"eval/test_f1", "eval/gap_relative", "eval/diverged"} <= set(metrics)
    # train and val precision/recall/F1 stay in evaluation.json, out of the chart view
    assert "eval/train_f1" not in metrics and "eval/val_precision" not in metrics
    assert all(key.startswith("eval/") for key in metrics)


def test_variant_runs_get_the_verdict_evidence_figures_and_seed_aggregate(project, tmp_path):
    import mlflow
    from mlflow.tracking import MlflowClient

    cfg = project.write_params(small_params())
    with tracking.stage_run(project.paths, cfg, "train", "baseline") as run:
        run_id = run.info.run_id
    with tracking.stage_run(project.paths, cfg, "train", "baseline") as seed_run:
        seed_run_id = seed_run.info.run_id
    figures_dir = tmp_path / "figures"
    figures_dir.mkdir()
    (figures_dir / plots.curves_name("baseline")).write_bytes(b"png")  # the others are absent
    v = entry(run_id)
    v["seeds"] = {
        "n_seeds": 2,
        "val_accuracy": {"mean": 0.88, "ci95": 0.05, "sd": 0.01},
        "gap": {"mean": 0.04, "ci95": 0.02, "sd": 0.005},
        "agreement": "good_fit in 2 of 2 seeds",
        "per_seed": [
            {"index": 0, "verdict": "good_fit", "mlflow_run_id": run_id},
            {"index": 1, "verdict": "overfitting", "mlflow_run_id": seed_run_id},
        ],
    }
    evaluation = {"variants": {"baseline": v}}
    publishing.log_to_variant_runs(evaluation, figures_dir)
    publishing.log_seeds_to_variant_runs(evaluation)

    client = MlflowClient(project.tracking_uri)
    logged = client.get_run(run_id).data
    assert logged.tags["verdict"] == "good_fit" and logged.tags["evaluated"] == "true"
    assert (logged.tags["verdict_label"], logged.tags["verdict_grade"]) == ("good fit", "clear")
    assert (
        logged.tags["mlflow.note.content"]
        == "**No, it generalizes.**\n\n- gap 5.0 points\n- no rise"
    )
    assert logged.tags["verdict_agreement"] == "good_fit in 2 of 2 seeds"
    assert logged.metrics["eval/val_accuracy"] == 0.9 and logged.metrics["seeds/n"] == 2
    assert logged.metrics["seeds/gap_sd"] == 0.005
    arts = {a.path for a in client.list_artifacts(run_id, "evaluation")}
    assert arts == {"evaluation/diagnosis.json", "evaluation/curves_baseline.png"}
    diag = json.loads(mlflow.artifacts.load_text(f"runs:/{run_id}/evaluation/diagnosis.json"))
    assert list(diag) == list(publishing.DIAGNOSIS_KEYS)
    assert client.get_run(seed_run_id).data.tags["verdict"] == "overfitting"


def test_registering_needs_a_model_uri(project):
    cfg = project.write_params(small_params())
    evaluation = {"best_variant": "baseline", "variants": {"baseline": entry("r")}}
    with pytest.raises(StageError, match=r"run\.json has no model_uri; retrain variant 'baseline'"):
        publishing.register_best(
            project.paths, cfg, evaluation, Validation(success=True), "challenger"
        )
