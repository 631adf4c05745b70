"""The evaluation payload: every variant's scores diagnosed, compared and advised on.

Inputs: what the train stages left (pipeline.catalog.training: each variant's
models/<variant>/, the learning_curve stages' results via
`learning_curve_points`), reports/validation.json, and what evaluate measured
on each saved model (pipeline.scoring.VariantEvaluation).

Output: the reports/evaluation.json payload (`build_evaluation`, then
`add_learning_curve`): per variant train/val/test scores (accuracy, loss,
macro precision/recall/F1, `n`), gap, best and run epochs, onset epoch,
verdict, evidence, MLflow run id, `training_behaviour`, per-class metrics
(with each class's train-vs-val recall gap) and confusion matrices; plus
best_variant, effects (each variant vs the baseline) and recommendations.
Under each variant, `seeds`: every training seed's verdict (diagnosis.diagnose
on that seed's history and scores), val accuracy and gap, and their aggregate
(pipeline.seeds: mean, sd, Student-t 95% interval, verdict agreement).
`learning_curve` (when models/learning_curve/<fraction>/ exist): "would more
data help?" from the learning_curve stages' scores plus evaluate's own scores
of `learning_curve.variant` as the full-data point (learning_curve.analyse);
"Get more training data" joins the recommendations only when val accuracy
still rises beyond noise.

Nothing here imports TensorFlow or MLflow; only the input readers touch files.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from pipeline import diagnosis, seeds
from pipeline import learning_curve as lc
from pipeline.catalog.training import TrainOutputs, read_fraction_result, read_train_outputs
from pipeline.catalog.validation import Validation
from pipeline.cli import StageError
from pipeline.config import Config, EvaluateConfig
from pipeline.paths import Paths, fraction_key
from pipeline.prepared import SPLITS
from pipeline.scoring import VariantEvaluation, confusion_entry

log = logging.getLogger(__name__)

# diagnose_run with everything but the run bound: (variant, history, scores, train metrics).
RunDiagnoser = Callable[[str, pd.DataFrame, Mapping[str, Any], Mapping[str, Any]], Any]


# --------------------------------------------------------------------------- inputs


def load_variant_artifacts(paths: Paths, variant: str) -> TrainOutputs:
    """models/<variant>/ with its history checked; StageError naming the variant."""
    outputs = read_train_outputs(paths, variant)
    try:
        history = diagnosis.check_history(outputs.history)
    except ValueError as exc:
        raise StageError(f"variant {variant!r}: unreadable training output: {exc}") from None
    return dataclasses.replace(outputs, history=history)


def learning_curve_points(
    paths: Paths,
    cfg: Config,
    n_train: int,
    full_scores: Mapping[str, Mapping[str, Any]],
    full_run_id: str | None,
    data_version: str,
) -> list[lc.CurvePoint] | None:
    """The learning_curve stages' points plus the full-data point from evaluate's scores.

    None when no fraction was trained (the stages have not run); StageError when
    only some were, or when one was trained on other data or another variant.
    """
    fractions = cfg.learning_curve.fractions
    found = [f for f in fractions if paths.fraction_result(f).exists()]
    if not found:
        log.info("no learning-curve outputs in %s; skipping it", paths.learning_curve_dir)
        return None
    points = [
        fraction_point(paths, fraction, cfg.learning_curve.variant, data_version)
        for fraction in fractions
    ]
    points.append(
        lc.CurvePoint(
            n_train=n_train,
            train_accuracy=float(full_scores["train"]["accuracy"]),
            val_accuracy=float(full_scores["val"]["accuracy"]),
            n_val=int(full_scores["val"]["n"]),
            n_train_scored=int(full_scores["train"]["n"]),
            mlflow_run_id=full_run_id,
        )
    )
    return points


def fraction_point(paths: Paths, fraction: float, variant: str, data_version: str) -> lc.CurvePoint:
    """One learning_curve stage's point; StageError when it was trained for other inputs."""
    stage = f"learning_curve@{fraction_key(fraction)}"
    result = read_fraction_result(paths, fraction)
    if result.get("variant") != variant or result.get("data_version") != data_version:
        raise StageError(
            f"{paths.fraction_result(fraction)} was trained for variant "
            f"{result.get('variant')!r} on data {result.get('data_version')}, not "
            f"{variant!r} on {data_version}; run dvc repro {stage}"
        )
    return lc.CurvePoint(
        n_train=int(result["n_train"]),
        train_accuracy=float(result["train"]["accuracy"]),
        val_accuracy=float(result["val"]["accuracy"]),
        n_val=int(result["val"]["n"]),
        n_train_scored=int(result["train"]["n"]),
        mlflow_run_id=result.get("mlflow_run_id"),
    )


# --------------------------------------------------------------------------- facts


def public_scores(scores: Mapping[str, Any]) -> dict[str, Any]:
    """A split's scores without the arrays kept for tables (`_per_class`, `_confusion`)."""
    return {k: v for k, v in scores.items() if not k.startswith("_")}


def chance_accuracy(scores: Mapping[str, Any]) -> float | None:
    """Accuracy of always answering the split's most common class (None: unknown)."""
    support = scores.get("_per_class", {}).get("support") or []
    total = sum(support)
    return max(support) / total if total else None


def majority_share(labels: np.ndarray) -> float | None:
    """Accuracy of always answering the most common label (None for no labels)."""
    labels = np.asarray(labels)
    return float(np.bincount(labels).max() / len(labels)) if len(labels) else None


def split_facts(scores: Mapping[str, Any], chance: float | None = None) -> diagnosis.SplitScores:
    """The saved model's scores on one split, with its size and chance level.

    `chance` is the split's majority-class share; None reads it off the scored
    rows (for train those are a sample, so the caller passes the full split's).
    """
    return diagnosis.SplitScores(
        accuracy=scores["accuracy"],
        loss=scores["loss"],
        n=int(scores.get("n", 0)),
        chance=chance if chance is not None else chance_accuracy(scores),
    )


def run_facts(
    history: pd.DataFrame, train_metrics: Mapping[str, Any], n_train: int
) -> diagnosis.RunFacts:
    """How the run ended, from metrics.json or a seeds.json entry (stopped_epoch > 0:
    early stopping ended it)."""
    best_epoch = train_metrics.get("best_epoch")
    stopped = train_metrics.get("stopped_epoch")
    return diagnosis.RunFacts(
        best_epoch=best_epoch if best_epoch in set(history["epoch"]) else None,
        stopped_early=None if stopped is None else int(stopped) > 0,
        n_train=n_train,
    )


def per_class_table(
    scores: Mapping[str, Mapping[str, Any]], classes: Sequence[str], cfg: EvaluateConfig
) -> list[dict]:
    """One row per class: precision/recall/F1 per split and the train-vs-val recall gap.

    `gap_material` flags a class the model overfits: its gap passes the rule a
    saved model's gap is judged by (diagnosis.material_gap: mild or clear as an
    effect size, beyond the noise of that class's own image counts, `gap_noise`),
    so 2 val images flag nothing.
    """
    rows = []
    for i, name in enumerate(classes):
        row: dict[str, Any] = {"class": name}
        for split in SPLITS:
            pc = scores[split]["_per_class"]
            for metric in ("precision", "recall", "f1", "support"):
                row[f"{split}_{metric}"] = pc[metric][i]
        # Recall of a class = accuracy on that class's images.
        row["accuracy_gap"] = row["train_recall"] - row["val_recall"]
        row["gap_noise"] = diagnosis.gap_noise(
            row["train_recall"], int(row["train_support"]),
            row["val_recall"], int(row["val_support"]), cfg,
        )  # fmt: skip
        row["gap_material"] = diagnosis.material_gap(
            row["train_recall"], int(row["train_support"]),
            row["val_recall"], int(row["val_support"]), cfg,
        )  # fmt: skip
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- diagnosis


def diagnose_run(
    name: str,
    history: pd.DataFrame,
    scores: Mapping[str, Any],
    train_metrics: Mapping[str, Any],
    *,
    cfg: Config,
    n_classes: int,
    reference: diagnosis.Reference,
    chance: Mapping[str, float | None],
    n_train: int,
) -> diagnosis.Diagnosis:
    """diagnosis.diagnose of one training run (a variant's, or one of its seeds')."""
    return diagnosis.diagnose(
        name,
        history,
        split_facts(scores["train"], chance.get("train")),
        split_facts(scores["val"], chance.get("val")),
        n_classes=n_classes,
        cfg=cfg.evaluate,
        reference=reference,
        run=run_facts(history, train_metrics, n_train),
    )


def build_evaluation(
    cfg: Config,
    classes: Sequence[str],
    artifacts: Mapping[str, TrainOutputs],
    evaluations: Mapping[str, VariantEvaluation],
    validation: Validation,
    n_train: int = 0,
    chance: Mapping[str, float | None] | None = None,
    seed_records: Mapping[str, Mapping[str, Any] | None] | None = None,
) -> dict[str, Any]:
    """The evaluation.json payload (without the registry part), from pure inputs.

    `n_train` is the size of the train split (the history's train accuracy is
    measured over it); 0 falls back to the scored train sample's size.
    `chance` maps a split to its majority-class share (majority_share of the
    full split); missing splits read it off the scored rows. `seed_records`
    maps a variant to its seeds.json: every extra training seed is diagnosed
    with the same facts as seed 0 (whose saved model is model.keras), and the
    seed-to-seed spread widens the noise of the comparison.
    """
    seed_records = seed_records or {}
    diagnose = functools.partial(
        diagnose_run,
        cfg=cfg,
        n_classes=len(classes),
        reference=diagnosis.Reference(
            train_accuracy=max(e.scores["train"]["accuracy"] for e in evaluations.values()),
            val_accuracy=max(e.scores["val"]["accuracy"] for e in evaluations.values()),
        ),
        chance=chance or {},
        n_train=n_train,
    )
    variants: dict[str, Any] = {}
    summaries = []
    for name, ev in evaluations.items():
        art = artifacts[name]
        diag = diagnose(name, art.history, ev.scores, art.train_metrics)
        seed_summary = summarize_seeds(name, cfg, diag, art, ev, seed_records.get(name), diagnose)
        variants[name] = variant_entry(diag, art, ev, seed_summary, classes, cfg)
        summaries.append(variant_summary(name, cfg, diag, ev, seed_summary))
    effects = diagnosis.compare_to_baseline(summaries, cfg.evaluate.min_effect)
    best, reason = diagnosis.choose_best(summaries, effects)
    reference_name = diagnosis.reference_variant([s.name for s in summaries])
    return {
        "answer": variants[reference_name]["summary"],
        "variants": variants,
        "best_variant": best,
        "best_variant_reason": reason,
        "reference_variant": reference_name,
        "effects": effects,
        "recommendations": diagnosis.recommend(
            summaries, effects, best, validation.failed_checks()
        ),
        "validation_success": validation.success,
        "classes": list(classes),
    }


def variant_entry(
    diag: diagnosis.Diagnosis,
    art: TrainOutputs,
    ev: VariantEvaluation,
    seed_summary: Mapping[str, Any],
    classes: Sequence[str],
    cfg: Config,
) -> dict[str, Any]:
    """One variant's block of evaluation.json (key order is the file's)."""
    entry = {
        **{split: public_scores(ev.scores[split]) for split in SPLITS},
        "gap": diag.gap,
        "best_epoch": diag.best_epoch,
        "epochs_run": diag.epochs_run,
        "onset_epoch": diag.onset_epoch,
        "max_generalization_loss": diag.max_generalization_loss,
        "verdict": diag.verdict,
        "model_verdict": diag.model_verdict,
        "grade": diag.grade,
        "label": diag.label,
        "model_label": diag.model_label,
        "score": diag.score,
        "too_early": diag.too_early,
        "summary": diag.summary,
        "evidence": diag.evidence,
        "training": diag.training,
        "memorization": diag.memorization,
        "rules": diag.rules,
        "mlflow_run_id": art.run_info.get("run_id"),
        "model_uri": art.run_info.get("model_uri"),
        "training_behaviour": ev.behaviour,
        "seeds": seed_summary,
        "per_class": per_class_table(ev.scores, classes, cfg.evaluate),
        "confusion": confusion_entry(classes, {s: ev.scores[s]["_confusion"] for s in SPLITS}),
    }
    if seed_summary["n_seeds"] > 1:
        # The verdict is seed 0's (its saved model is the one served); say how the others agree.
        entry["evidence"].append(f"across training seeds: {seed_summary['summary']}")
    return entry


def variant_summary(
    name: str,
    cfg: Config,
    diag: diagnosis.Diagnosis,
    ev: VariantEvaluation,
    seed_summary: Mapping[str, Any],
) -> diagnosis.VariantSummary:
    """What the comparison across variants needs of one variant."""
    model_cfg = cfg.variant(name).model
    correct = ev.correct or {}
    return diagnosis.VariantSummary(
        name=name,
        verdict=diag.verdict,
        train_accuracy=ev.scores["train"]["accuracy"],
        val_accuracy=ev.scores["val"]["accuracy"],
        test_accuracy=ev.scores["test"]["accuracy"],
        gap=diag.gap["accuracy"],
        onset_epoch=diag.onset_epoch,
        n_val=int(ev.scores["val"]["n"]),
        augmented=model_cfg.augmentation.enabled,
        model_verdict=diag.model_verdict,
        n_train=int(ev.scores["train"]["n"]),
        memorizing=bool(diag.rules["memorization"]),
        train_peak=diag.memorization["train_peak"],
        val_peak=diag.memorization["val_peak"],
        val_correct=correct.get("val"),
        train_correct=correct.get("train"),
        seed_var_val=_sd_squared(seed_summary["val_accuracy"]),
        seed_var_gap=_sd_squared(seed_summary["gap"]),
        diverged=bool(diag.training.get("diverged")),
        gap_widening=diag.training.get("gap_widening"),
        gap_widening_noise=diag.training.get("gap_widening_noise"),
        too_early=diag.too_early,
        still_improving=bool(diag.training.get("still_improving")),
        label=diag.label,
        model_label=diag.model_label,
        regularized=bool(
            model_cfg.dropout > 0
            or model_cfg.conv_dropout > 0
            or model_cfg.l2 > 0
            or model_cfg.augmentation.enabled
        ),
    )


def _sd_squared(spread: Mapping[str, Any]) -> float:
    """Seed-to-seed variance of one draw (seed 0's) for the comparison's noise; 0 for one seed."""
    sd = spread.get("sd")
    return float(sd) ** 2 if sd is not None else 0.0


# --------------------------------------------------------------------------- seeds


def summarize_seeds(
    name: str,
    cfg: Config,
    diag: diagnosis.Diagnosis,
    art: TrainOutputs,
    ev: VariantEvaluation,
    record: Mapping[str, Any] | None,
    diagnose: RunDiagnoser,
) -> dict[str, Any]:
    """Each training seed's verdict, val accuracy and gap, and their aggregate (pipeline.seeds).

    Seed 0 is the variant's own diagnosis; the other seeds' saved models were
    scored by the train stage on the same rows with the same formula
    (pipeline.scoring). A model trained before train.seeds existed is one seed.
    """
    per_seed = [
        seed_row(
            0,
            cfg.variant(name).train.seed,
            diag,
            float(ev.scores["train"]["accuracy"]),
            float(ev.scores["val"]["accuracy"]),
            art.run_info.get("run_id"),
        )
    ]
    for entry in (record or {}).get("seeds") or []:
        if int(entry["index"]) != 0:
            per_seed.append(extra_seed_row(name, entry, diagnose))
    summary = seeds.summarize_seeds(
        [p["val_accuracy"] for p in per_seed],
        [p["gap"] for p in per_seed],
        [p["verdict"] for p in per_seed],
    )
    return {**summary, "summary": seeds.describe(summary), "per_seed": per_seed}


def extra_seed_row(name: str, entry: Mapping[str, Any], diagnose: RunDiagnoser) -> dict[str, Any]:
    """seed_row of a seeds.json entry, diagnosed from its own history and scores."""
    try:
        history = diagnosis.check_history(pd.DataFrame(entry["history"]))
        seed_diag = diagnose(name, history, entry["scores"], entry)
    except (KeyError, TypeError, ValueError) as exc:
        raise StageError(
            f"variant {name!r} seed {entry.get('seed')}: unusable seeds.json entry ({exc}); "
            f"retrain it (dvc repro -f train@{name})"
        ) from None
    return seed_row(
        int(entry["index"]),
        int(entry["seed"]),
        seed_diag,
        float(entry["scores"]["train"]["accuracy"]),
        float(entry["scores"]["val"]["accuracy"]),
        entry.get("mlflow_run_id"),
    )


def seed_row(
    index: int,
    seed: int,
    diag: diagnosis.Diagnosis,
    train_accuracy: float,
    val_accuracy: float,
    run_id: str | None,
) -> dict[str, Any]:
    """One training seed's line of `seeds.per_seed`."""
    return {
        "index": index,
        "seed": seed,
        "verdict": diag.verdict,
        "model_verdict": diag.model_verdict,
        "grade": diag.grade,
        "label": diag.label,
        "train_accuracy": train_accuracy,
        "val_accuracy": val_accuracy,
        "gap": float(diag.gap["accuracy"]),
        "best_epoch": diag.best_epoch,
        "epochs_run": diag.epochs_run,
        "mlflow_run_id": run_id,
    }


# --------------------------------------------------------------------------- learning curve


def add_learning_curve(
    evaluation: dict[str, Any], points: Sequence[lc.CurvePoint] | None, variant: str
) -> None:
    """evaluation["learning_curve"], and "Get more training data" when the curve still rises."""
    if points is None:
        return
    try:
        curve = lc.analyse(points, variant)
    except ValueError as exc:
        raise StageError(f"learning curve of {variant!r}: {exc}") from None
    evaluation["learning_curve"] = curve
    # Curves that have not settled say nothing yet about what more data would do.
    entry = evaluation.get("variants", {}).get(variant, {})
    settled = not (entry.get("training") or {}).get("still_improving", False)
    if curve["still_rising"] and settled:
        recs = evaluation["recommendations"]
        # Before the closing "Use <best>" item: a measured reason to collect data.
        recs.insert(
            max(len(recs) - 1, 0),
            {
                "action": "Get more training data",
                "reason": f"learning curve of {variant}: {curve['summary']}",
                "source": "learning_curve",
            },
        )
        for rank, rec in enumerate(recs, start=1):
            rec["rank"] = str(rank)
