"""What the evaluate stage records in MLflow (through pipeline.tracking).

Inputs: the evaluation payload (pipeline.assessment), reports/figures/,
reports/comparison.{csv,md} and reports/validation.json's payload.
Outputs, all in the tracking backend:
- each variant's own train run: eval_* metrics, `verdict` and `model_verdict`
  tags, the answer and its evidence as the run's description,
  evaluation/diagnosis.json and the variant's figures; with several seeds also
  seeds_* metrics, a `verdict_agreement` tag, and each extra seed's verdict on
  that seed's run;
- an `evaluate` run holding the comparison, evaluation.json and the figures;
- the best variant's model as a new version of registry.model_name with the
  alias the stage names ("challenger"; "champion" is never touched here:
  only the retrain gate moves it).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline import plots, tracking, trained_on
from pipeline.catalog.validation import Validation
from pipeline.cli import StageError
from pipeline.config import Config
from pipeline.paths import Paths
from pipeline.prepared import SPLITS

log = logging.getLogger(__name__)

# The diagnosis fields logged as evaluation/diagnosis.json on a variant's run.
DIAGNOSIS_KEYS = (
    "verdict",
    "model_verdict",
    "grade",
    "label",
    "model_label",
    "score",
    "too_early",
    "summary",
    "evidence",
    "gap",
    "onset_epoch",
    "training",
    "memorization",
    "rules",
)


def require_variant_runs(paths: Paths, run_ids: Mapping[str, str | None]) -> None:
    """Raise StageError unless every variant's train run (run.json) is in the tracking backend.

    Called before any inference or write: a stale run.json or the wrong
    MLFLOW_TRACKING_URI must not leave reports/ half updated.
    """
    for name, run_id in run_ids.items():
        if not run_id:
            raise StageError(f"{paths.run_info(name)} has no run_id; retrain variant {name!r}")
        if not tracking.run_exists(run_id):
            raise StageError(
                f"variant {name!r}: MLflow run {run_id} from {paths.run_info(name)} is not in the "
                "tracking backend (MLFLOW_TRACKING_URI or ./mlflow.db); retrain the variant"
            )


def variant_run_metrics(v: Mapping[str, Any]) -> dict[str, float]:
    """One variant's evaluation as `eval/` metrics of its train run (extra seeds log the
    same names): accuracy and loss per split, the test set's precision, recall and F1,
    the gaps and the diagnosis's numbers. Per-split precision/recall/F1 of train and val
    stay in evaluation.json, so the chart view holds what a comparison needs."""
    metrics = {f"{split}_{m}": v[split][m] for split in SPLITS for m in ("accuracy", "loss")}
    metrics.update({f"test_{m}": v["test"][m] for m in ("precision", "recall", "f1")})
    metrics["gap_accuracy"] = v["gap"]["accuracy"]
    metrics["gap_relative"] = v["gap"]["relative"]
    metrics["gap_loss"] = v["gap"]["loss"]
    metrics["max_generalization_loss"] = v["max_generalization_loss"]
    metrics["diverged"] = float(bool(v["training"]["diverged"]))
    metrics["val_loss_rise"] = finite(v["training"]["val_loss_rise"])
    # The graded verdict's scores (1 = clear overfitting, 0.5 = mild): chart them across runs.
    metrics["overfit_score"] = finite(v["score"])
    metrics["gap_score"] = finite(v["gap"]["score"])
    metrics["run_score"] = finite(v["training"]["score"])
    if v["onset_epoch"] is not None:
        metrics["onset_epoch"] = v["onset_epoch"]
    return tracking.sectioned(tracking.SECTION_EVAL, metrics)


def finite(value: float, cap: float = 1e6) -> float:
    """MLflow metrics must be finite: an unbounded share (nothing gained) is capped."""
    return float(min(value, cap)) if math.isfinite(value) or value > 0 else 0.0


def log_to_variant_runs(evaluation: Mapping[str, Any], figures_dir: Path) -> None:
    """Evaluation metrics, verdict tags, evidence and figures into each variant's train run."""
    for name, v in evaluation["variants"].items():
        figures = [
            figures_dir / fig
            for fig in (
                plots.curves_name(name),
                plots.confusion_name(name),
                plots.feature_maps_name(name),
            )
        ]
        tracking.log_to_run(
            v["mlflow_run_id"],
            metrics=variant_run_metrics(v),
            tags={
                **tracking.verdict_tags(v),
                tracking.NOTE_TAG: tracking.verdict_note(v),
                "evaluated": "true",
            },
            texts={
                "evaluation/diagnosis.json": json.dumps({k: v[k] for k in DIAGNOSIS_KEYS}, indent=2)
            },
            artifacts={"evaluation": [f for f in figures if f.exists()]},
        )


def log_seeds_to_variant_runs(evaluation: Mapping[str, Any]) -> None:
    """Across-seed aggregate on each variant's run, and each extra seed's verdict on its own."""
    for v in evaluation["variants"].values():
        s = v.get("seeds")
        if not s or s["n_seeds"] < 2:
            continue
        metrics = {
            f"{metric}_{stat}": s[metric][stat]
            for metric in ("val_accuracy", "gap")
            for stat in ("mean", "ci95", "sd")
        }
        metrics["n"] = s["n_seeds"]
        tracking.log_to_run(
            v["mlflow_run_id"],
            metrics=tracking.sectioned(tracking.SECTION_SEEDS, metrics),
            tags={"verdict_agreement": s["agreement"]},
        )
        for seed in s["per_seed"]:
            if seed["index"] > 0 and seed["mlflow_run_id"]:
                tracking.log_to_run(seed["mlflow_run_id"], tags={"verdict": seed["verdict"]})


EXPERIMENT_ENV = "DVC_EXP_NAME"  # set by DVC in the stages of `dvc exp run`


def experiment_not_registered(cfg: Config) -> str | None:
    """Why this evaluate registers nothing: it runs inside `dvc exp run` and
    registry.register_experiments is off; None when it registers."""
    experiment = os.environ.get(EXPERIMENT_ENV, "").strip()
    if not experiment or cfg.registry.register_experiments:
        return None
    return (
        f"dvc experiment {experiment!r}: no model version registered "
        "(registry.register_experiments: false; `dvc repro` or retrain registers)"
    )


def register_best(
    paths: Paths,
    cfg: Config,
    evaluation: Mapping[str, Any],
    validation: Validation,
    alias: str,
    run_id: str | None = None,
) -> dict[str, Any]:
    """The best variant's model as a new registry version under `alias`, with tags.

    With `run_id` (the evaluate run), the record of the images the model was
    trained and validated on (pipeline.trained_on) is logged there and the version
    points at it (tag `trained_on`), for the retrain gate.
    """
    best = evaluation["best_variant"]
    v = evaluation["variants"][best]
    uri = v.get("model_uri")
    if not uri:
        raise StageError(f"{paths.run_info(best)} has no model_uri; retrain variant {best!r}")
    name = cfg.registry.model_name
    tags = {
        "variant": best,
        "test_accuracy": f"{v['test']['accuracy']:.6f}",
        "val_accuracy": f"{v['val']['accuracy']:.6f}",
        "train_accuracy": f"{v['train']['accuracy']:.6f}",
        "gap_accuracy": f"{v['gap']['accuracy']:.6f}",
        **tracking.verdict_tags(v),
        "validation_success": "true" if validation.success else "false",
        "data_version": tracking.data_version(paths),
        "repro_id": tracking.repro_id(paths, cfg),
        **schema_tags(paths),
    }
    if run_id is not None:
        tags[trained_on.TAG] = log_trained_on(paths, run_id)
    version = tracking.register_model_version(uri, name, tags, alias)
    log.info("registered %s version %s (%s) as %s", name, version, best, alias)
    return {"model_name": name, "version": version, "alias": alias, "tags": tags}


def log_trained_on(paths: Paths, run_id: str) -> str:
    """Log the record of the prepared train and val images to the run; its URI."""
    import tempfile

    from pipeline.prepared import load_prepared

    manifest = load_prepared(paths.prepared_dir).manifest
    record = trained_on.record_of(manifest, tracking.data_version(paths))
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / trained_on.RECORD_FILE
        file.write_bytes(trained_on.to_bytes(record))
        tracking.log_to_run(run_id, artifacts={"registry": [file]})
    return f"runs:/{run_id}/registry/{trained_on.RECORD_FILE}"


# MLflow keeps a tag value up to 5,000 characters (older servers); longer class
# lists are recorded by count only.
MAX_TAG_CHARS = 5000


def schema_tags(paths: Paths) -> dict[str, str]:
    """What the model reads and answers, for the retrain gate's schema check:
    input_shape ("16x16x1"), n_classes and the class names in label order (JSON)."""
    meta = json.loads(paths.prepared_meta.read_text())
    height, width = meta["image_size"]
    classes = json.dumps(list(meta["classes"]), ensure_ascii=False)
    tags = {
        "input_shape": f"{height}x{width}x{meta['channels']}",
        "n_classes": str(len(meta["classes"])),
    }
    if len(classes) <= MAX_TAG_CHARS:
        tags["classes"] = classes
    return tags


def pipeline_metrics(evaluation: Mapping[str, Any]) -> dict[str, float]:
    """The evaluate run's own metrics: the pipeline's answer, not a copy of each variant's
    numbers (those are on the variant's own run, where the UI compares them)."""
    variants = evaluation["variants"]
    best = variants[evaluation["best_variant"]]
    verdicts = [v["verdict"] for v in variants.values()]
    return tracking.sectioned(
        tracking.SECTION_PIPELINE,
        {
            "best_test_accuracy": best["test"]["accuracy"],
            "best_val_accuracy": best["val"]["accuracy"],
            "best_gap_accuracy": best["gap"]["accuracy"],
            "variants": len(variants),
            "variants_overfitting": verdicts.count("overfitting"),
            "variants_underfitting": verdicts.count("underfitting"),
        },
    )


def log_evaluate_run(
    paths: Paths,
    cfg: Config,
    evaluation: dict[str, Any],
    validation: Validation,
    alias: str,
) -> None:
    """The evaluate stage's own run: comparison, figures, and the registration.

    Adds `registered` (register_best) and `evaluate_run_id` to `evaluation`.
    """
    with tracking.stage_run(
        paths, cfg, "evaluate", extra_tags={"best_variant": evaluation["best_variant"]}
    ) as run:
        run_id = run.info.run_id
        tracking.log_to_run(run_id, metrics=pipeline_metrics(evaluation))
        skipped = experiment_not_registered(cfg)
        if skipped:
            log.info("%s", skipped)
            evaluation["registered"] = None
            evaluation["registration_skipped"] = skipped
        else:
            evaluation["registered"] = register_best(
                paths, cfg, evaluation, validation, alias, run_id
            )
        evaluation["evaluate_run_id"] = run_id
        tracking.log_to_run(
            run_id,
            texts={"evaluation.json": json.dumps(evaluation, indent=2, default=str)},
            artifacts={
                "comparison": [paths.comparison_csv, paths.comparison_md],
                "figures": [paths.figures_dir],
            },
        )
